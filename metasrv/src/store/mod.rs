//! Durable storage for one metasrv node: one sled database holding the Raft log, the vote, and
//! the state machine, plus the latest snapshot as a file.
//!
//! Durability (see shared/design.md): sled 0.34's `flush()` writes with `sync_file_range`, which
//! neither flushes the disk cache nor file metadata. `Durable::sync` therefore follows each
//! `flush()` with an `fdatasync` of sled's data file.
//!
//! Group commit: appends and applies do not sync themselves. They hand a waiter to the flusher
//! thread, which takes every waiter queued so far, runs one `sync` (covering every write made
//! before it started), then completes them all in order. So one fdatasync serves many Raft
//! entries, and openraft is told an entry is durable only after a sync that covers it.
// openraft's StorageError is large by design; boxing it at every call would only add noise.
#![allow(clippy::result_large_err)]

mod log_store;
mod snapshot_files;
mod state_machine;

#[cfg(test)]
mod tests;

pub use log_store::LogStore;
pub(crate) use state_machine::blocking;
pub use state_machine::StateMachine;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Tree names inside the one sled database.
const TREE_LOG: &str = "log";
const TREE_RAFT: &str = "raft";
const TREE_SM: &str = "sm";

/// The process-wide sled database and a descriptor of its data file for fdatasync.
pub struct Durable {
    pub db: sled::Db,
    data_file: File,
    /// Syncs done and time spent in them (for metrics).
    pub syncs: std::sync::atomic::AtomicU64,
    pub sync_nanos: std::sync::atomic::AtomicU64,
}

impl Durable {
    pub fn open(dir: &Path) -> io::Result<Arc<Durable>> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            // We flush explicitly before every acknowledgment; the background flush only bounds
            // how much unflushed data can pile up between them.
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(io::Error::other)?;
        let data_file = File::open(dir.join("db"))?;
        Ok(Arc::new(Durable {
            db,
            data_file,
            syncs: Default::default(),
            sync_nanos: Default::default(),
        }))
    }

    /// Make every earlier write durable: sled flush, then fdatasync of its data file.
    /// Blocking: only the flusher thread calls it.
    pub fn sync(&self) -> io::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let t = std::time::Instant::now();
        self.db.flush().map_err(io::Error::other)?;
        let r = if SKIP_LOG_FSYNC.load(Relaxed) {
            Ok(())
        } else {
            self.data_file.sync_data()
        };
        self.syncs.fetch_add(1, Relaxed);
        self.sync_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
        r
    }
}

/// The planted bug `--plant-bug=skip-log-fsync`: sled's flush (to the page cache) without the
/// fdatasync, so Raft entries are acknowledged before they are on the disk. Never in a real
/// cluster; chaos's power cuts must then report lost writes.
static SKIP_LOG_FSYNC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Plant that bug for the rest of this process.
pub fn plant_skip_log_fsync() {
    SKIP_LOG_FSYNC.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(
        "PLANTED BUG (--plant-bug=skip-log-fsync): Raft entries are acknowledged without \
         fdatasync; for proving the chaos checkers only"
    );
}

/// Someone waiting for the next sync.
pub enum Waiter {
    /// Openraft's callback for appended log entries.
    Log(openraft::storage::LogFlushed<crate::types::TypeConfig>),
    Notify(tokio::sync::oneshot::Sender<io::Result<()>>),
}

/// The group-commit thread (see the module doc).
#[derive(Clone)]
pub struct Flusher {
    tx: std::sync::mpsc::Sender<Waiter>,
}

impl Flusher {
    pub fn spawn(durable: Arc<Durable>) -> io::Result<Flusher> {
        let (tx, rx) = std::sync::mpsc::channel::<Waiter>();
        std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = durable.sync();
                    for w in batch {
                        let r = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        match w {
                            Waiter::Log(cb) => cb.log_io_completed(r),
                            Waiter::Notify(tx) => {
                                let _ = tx.send(r);
                            }
                        }
                    }
                }
            })?;
        Ok(Flusher { tx })
    }

    /// Complete `w` after the next sync.
    pub fn enqueue(&self, w: Waiter) -> io::Result<()> {
        self.tx
            .send(w)
            .map_err(|_| io::Error::other("the flusher thread is gone"))
    }

    /// Wait until every write made before this call is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Waiter::Notify(tx))?;
        rx.await
            .map_err(|_| io::Error::other("the flusher thread is gone"))?
    }
}

/// Open the log store and the state machine over one database.
pub fn open(
    dir: &Path,
    snapshot_dir: &Path,
) -> Result<(LogStore, StateMachine, Arc<Durable>), crate::types::StorageError> {
    let durable = Durable::open(dir).map_err(|e| openraft::StorageIOError::read(&e))?;
    let flusher =
        Flusher::spawn(durable.clone()).map_err(|e| openraft::StorageIOError::read(&e))?;
    let log = LogStore::new(durable.clone(), flusher.clone())
        .map_err(|e| openraft::StorageIOError::read(&e))?;
    let sm = StateMachine::open(durable.clone(), flusher, snapshot_dir)?;
    Ok((log, sm, durable))
}
