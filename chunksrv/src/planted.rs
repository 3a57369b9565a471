//! A bug planted on purpose (the hidden `--plant-bug=skip-fsync`), to prove that chaos's
//! power-loss run catches it: chunk writes acknowledged without their fdatasync. Never set in a
//! real cluster; off unless that flag is given.
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static SKIP_FSYNC: AtomicBool = AtomicBool::new(false);

/// Plant the bug for the rest of this process.
pub fn skip_fsync() {
    SKIP_FSYNC.store(true, Ordering::Relaxed);
    tracing::warn!(
        "PLANTED BUG (--plant-bug=skip-fsync): chunk writes are acknowledged without fdatasync; \
         for proving the chaos checkers only"
    );
}

/// fdatasync `f` before a chunk write is acknowledged (skipped with the planted bug).
pub fn sync_chunk(f: &File) -> io::Result<()> {
    if SKIP_FSYNC.load(Ordering::Relaxed) {
        return Ok(());
    }
    f.sync_data()
}
