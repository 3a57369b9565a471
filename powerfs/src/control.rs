//! The control socket of a running powerfs: one line in, one line out.
//! `cut` drops every pending byte (a power cut) and answers `ok <bytes> <files>` (what was
//! dropped); `pending` answers the same figures without dropping anything.
//!
//! What must stay true: a `cut` has taken effect when its answer is sent, so a node started
//! after it sees only what was synced.
use crate::cache::Cache;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Answer one command line.
pub fn answer(cache: &Mutex<Cache>, line: &str) -> String {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    match line.trim() {
        "cut" => {
            let (bytes, files) = c.cut();
            tracing::info!(bytes, files, "power cut: unsynced writes dropped");
            format!("ok {bytes} {files}")
        }
        "pending" => {
            let (bytes, files) = c.pending();
            format!("ok {bytes} {files}")
        }
        other => format!("error unknown command {other:?} (cut, pending)"),
    }
}

/// Serve the control socket at `path` in a thread of its own.
pub fn serve(path: &Path, cache: Arc<Mutex<Cache>>) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(&conn);
            if r.read_line(&mut line).is_ok() {
                let mut w = &conn;
                let _ = writeln!(w, "{}", answer(&cache, &line));
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
    fn cut_answers_what_it_dropped_and_unknown_commands_are_refused() {
        let cache = Mutex::new(Cache::default());
        cache.lock().unwrap().write(7, 0, 0, b"abc");
        assert_eq!(answer(&cache, "pending\n"), "ok 3 1");
        assert_eq!(answer(&cache, "cut\n"), "ok 3 1");
        assert_eq!(answer(&cache, "pending"), "ok 0 0");
        assert!(answer(&cache, "explode").starts_with("error unknown command"));
    }
}
