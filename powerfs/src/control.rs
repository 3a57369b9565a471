//! The control socket of a running powerfs: one line in, one line out.
//! `cut` drops every pending byte (a power cut) and answers `ok <bytes> <files>` (what was
//! pending); `cut torn` first puts part of each file's pending bytes on the disk (a torn
//! write); `pending` answers the same figures without dropping anything; `fail <fault>`
//! (`eio-read`, `eio-write`, `enospc`) makes the disk fail until `heal`; both answer `ok`.
//!
//! What must stay true: a command has taken effect when its answer is sent, so a node started
//! after a `cut` sees only what was synced (and torn), and a call made after `fail` fails.
use crate::faults::DiskFault;
use crate::fs::Backing;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

/// Answer one command line.
pub fn answer(disk: &Backing, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["cut"] | ["cut", "torn"] => {
            let torn = words.len() == 2;
            let (bytes, files) = disk.cut(torn);
            tracing::info!(bytes, files, torn, "power cut: unsynced writes dropped");
            format!("ok {bytes} {files}")
        }
        ["pending"] => {
            let (bytes, files) = disk
                .cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending();
            format!("ok {bytes} {files}")
        }
        ["fail", name] => match DiskFault::parse(name) {
            Some(f) => {
                disk.faults.set(Some(f));
                tracing::info!(fault = name, "disk fault on");
                "ok".to_string()
            }
            None => format!("error unknown fault {name:?} (eio-read, eio-write, enospc)"),
        },
        ["heal"] => {
            disk.faults.set(None);
            tracing::info!("disk healed");
            "ok".to_string()
        }
        _ => format!(
            "error unknown command {:?} (cut [torn], pending, fail <fault>, heal)",
            line.trim()
        ),
    }
}

/// Serve the control socket at `path` in a thread of its own.
pub fn serve(path: &Path, disk: Arc<Backing>) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(&conn);
            if r.read_line(&mut line).is_ok() {
                let mut w = &conn;
                let _ = writeln!(w, "{}", answer(&disk, &line));
            }
        }
    });
    Ok(())
}

/// Send `command` to the powerfs at `path`; its answer.
pub fn send(path: &Path, command: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    writeln!(s, "{command}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_answer_what_they_did_and_unknown_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Backing::new(dir.path().to_path_buf()).unwrap();
        disk.cache.lock().unwrap().write(7, 0, 0, b"abc");
        assert_eq!(answer(&disk, "pending\n"), "ok 3 1");
        assert_eq!(answer(&disk, "cut\n"), "ok 3 1");
        assert_eq!(answer(&disk, "pending"), "ok 0 0");
        assert_eq!(answer(&disk, "fail enospc"), "ok");
        assert_eq!(disk.faults.get(), Some(DiskFault::Full));
        assert!(answer(&disk, "fail melted").starts_with("error unknown fault"));
        assert_eq!(disk.faults.get(), Some(DiskFault::Full));
        assert_eq!(answer(&disk, "heal"), "ok");
        assert_eq!(disk.faults.get(), None);
        assert!(answer(&disk, "explode").starts_with("error unknown command"));
        assert!(answer(&disk, "cut sideways").starts_with("error unknown command"));
    }
}
