//! Crash-safe file writes: temp file, fsync, rename, directory fsync.
//! After `write_atomic` returns, either the old or the new content is on disk, never a mix.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// fsync a directory so a rename or create inside it survives power loss.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replace `path` with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_inner(path, bytes, false)
}

fn write_atomic_inner(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    // A bare file name ("alice.auth") has the parent "", which names no directory to open.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        // `mode` applies only to a new file: a leftover temp file keeps its mode unless reset
        // here, before any secret byte is written.
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        // A large file is synced piece by piece, so its writeback never floods the disk queue
        // ahead of the small fsyncs that Raft waits for (a snapshot is ~100 MB at 1M entries).
        let mut pieces = bytes.chunks(SYNC_STEP).peekable();
        while let Some(piece) = pieces.next() {
            f.write_all(piece)?;
            // The last piece is covered by the sync_all below.
            if pieces.peek().is_some() {
                f.sync_data()?;
            }
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Piece size of `write_atomic`'s paced syncing.
const SYNC_STEP: usize = 4 << 20;

/// Create `path` with mode 0600 (for secrets), atomically.
/// The temp file is 0600 from its creation, so the secret is never readable by others,
/// not even for a moment or after a failure part way.
pub fn write_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_inner(path, bytes, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two!").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two!");
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    /// Issue 26: `--out alice.auth` (a bare file name) failed after writing, and the key was
    /// left 0644. A secret is 0600 whatever path form is given.
    #[cfg(unix)]
    #[test]
    fn secret_with_bare_file_name_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // The relative name must be resolved against the process's directory, so run the
        // write in a child with that directory instead of changing this process's (tests run
        // in parallel threads).
        if std::env::var_os("DFS_DURABLE_CHILD").is_some() {
            write_secret(Path::new("alice.auth"), b"alice/key").unwrap();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let st = std::process::Command::new(exe)
            .args([
                "--exact",
                "durable::tests::secret_with_bare_file_name_is_0600",
                "--nocapture",
            ])
            .env("DFS_DURABLE_CHILD", "1")
            .current_dir(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "writing a secret to a bare file name failed");
        let p = d.path().join("alice.auth");
        assert_eq!(fs::read(&p).unwrap(), b"alice/key");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "secret written {mode:o}");
    }
}
