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
    let mut f = AtomicFile::create_inner(path, secret)?;
    f.write_all(bytes)?;
    f.commit()
}

/// A file written piece by piece that replaces `path` only on [`AtomicFile::commit`]: a temp
/// file beside it, synced every `SYNC_STEP` bytes (so a large file's writeback never floods the
/// disk queue ahead of the small fsyncs that Raft waits for), then fsync, rename, directory
/// fsync. Dropped without a commit, the temp file is removed and `path` is untouched.
pub struct AtomicFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<File>,
    unsynced: usize,
}

impl AtomicFile {
    pub fn create(path: &Path) -> io::Result<AtomicFile> {
        Self::create_inner(path, false)
    }

    fn create_inner(path: &Path, secret: bool) -> io::Result<AtomicFile> {
        let dir = parent_dir(path);
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            "{}{}",
            temp_prefix(path.file_name().and_then(|n| n.to_str()).unwrap_or("file")),
            std::process::id()
        ));
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let f = opts.open(&tmp)?;
        // `mode` applies only to a new file: a leftover temp file keeps its mode unless reset
        // here, before any secret byte is written.
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(f),
            unsynced: 0,
        })
    }

    /// Make the written content `path`'s, durably.
    pub fn commit(mut self) -> io::Result<()> {
        let f = self.file.take().expect("an AtomicFile is committed once");
        f.sync_all()?;
        drop(f);
        fs::rename(&self.tmp, &self.path)?;
        fsync_dir(parent_dir(&self.path))
    }
}

/// How the temp file of an atomic write of the file named `name` begins (a crash leaves it
/// behind; its owner removes such leftovers on start).
pub fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// The directory `path` is in. A bare file name ("alice.auth") has the parent "", which names
/// no directory to open.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self.file.as_mut().expect("written before commit");
        let n = f.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= SYNC_STEP {
            f.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
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
