//! The watcher's manifest: relative path → the local size/mtime/ctime and sha256 of the
//! version this watcher uploaded, kept in `STATE/manifest.jsonl`.
//!
//! Format: JSON lines, one per change (`{"p": path, "s", "m", "c", "h"}` sets an entry,
//! `{"p": path, "x": true}` drops it); the last line for a path wins. At open the journal is
//! replayed (a torn last line from a crash is ignored) and rewritten compactly: written to a
//! temp file, fsynced, renamed over the journal, the directory fsynced. A line is appended
//! only after its upload is committed; the journal is fsynced at the end of every pass.
//!
//! What must stay true: the manifest is a cache. A crash loses at most the last lines, which
//! only makes the next pass hash those files again (and find them equal to the remote), never
//! skip a changed file (reconcile trusts an entry only when the remote agrees too). One
//! watcher per state directory (an exclusive flock on `STATE/lock`). `STATE/remote` names the
//! remote directory the manifest is about; another one resets it.
use super::reconcile::Entry;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const JOURNAL: &str = "manifest.jsonl";

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    p: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    x: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
}

impl Line {
    fn set(p: &str, e: &Entry) -> Line {
        Line {
            p: p.to_string(),
            x: false,
            s: Some(e.size),
            m: Some(e.mtime_ns),
            c: Some(e.ctime_ns),
            h: Some(e.sha256.clone()),
        }
    }

    fn entry(&self) -> Option<Entry> {
        Some(Entry {
            size: self.s?,
            mtime_ns: self.m?,
            ctime_ns: self.c?,
            sha256: self.h.clone()?,
        })
    }
}

pub struct Manifest {
    dir: PathBuf,
    pub entries: HashMap<String, Entry>,
    journal: File,
    lines: usize,
    _lock: File,
}

impl Manifest {
    pub fn open(dir: &Path) -> anyhow::Result<Manifest> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(|| format!("cannot write in the state directory {}", dir.display()))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another dfsctl watch uses the state directory {} (stop it, or give --state)",
                dir.display()
            );
        }
        let mut entries = HashMap::new();
        let path = dir.join(JOURNAL);
        match File::open(&path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let Ok(line) = line else { break };
                    // A torn line (crash mid-append) or garbage: skipped; at worst that file
                    // is hashed again.
                    let Ok(l) = serde_json::from_str::<Line>(&line) else {
                        continue;
                    };
                    match l.entry() {
                        Some(e) if !l.x => {
                            entries.insert(l.p, e);
                        }
                        _ => {
                            entries.remove(&l.p);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let journal = Self::rewrite(dir, &entries)?;
        Ok(Manifest {
            dir: dir.to_path_buf(),
            lines: entries.len(),
            entries,
            journal,
            _lock: lock,
        })
    }

    /// Write all entries to a new journal atomically; returns it opened for appending.
    fn rewrite(dir: &Path, entries: &HashMap<String, Entry>) -> anyhow::Result<File> {
        let tmp = dir.join(format!("{JOURNAL}.tmp"));
        let path = dir.join(JOURNAL);
        {
            let mut w = std::io::BufWriter::new(
                File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?,
            );
            for (p, e) in entries {
                let l = Line::set(p, e);
                serde_json::to_writer(&mut w, &l)?;
                w.write_all(b"\n")?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(OpenOptions::new().append(true).open(&path)?)
    }

    fn append(&mut self, l: &Line) -> anyhow::Result<()> {
        let mut s = serde_json::to_string(l)?;
        s.push('\n');
        // One write per line: a crash tears at most the last line.
        self.journal
            .write_all(s.as_bytes())
            .context("cannot write the watch manifest")?;
        self.lines += 1;
        Ok(())
    }

    pub fn set(&mut self, rel: &str, e: Entry) -> anyhow::Result<()> {
        self.append(&Line::set(rel, &e))?;
        self.entries.insert(rel.to_string(), e);
        Ok(())
    }

    pub fn remove(&mut self, rel: &str) -> anyhow::Result<()> {
        if self.entries.remove(rel).is_some() {
            self.append(&Line {
                p: rel.to_string(),
                x: true,
                s: None,
                m: None,
                c: None,
                h: None,
            })?;
        }
        Ok(())
    }

    /// Move the entry at `from`, or every entry below the folder `from`, to `to` (a rename).
    pub fn rename(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|k| *k == from || super::reconcile::under(k, from))
            .cloned()
            .collect();
        for k in keys {
            if let Some(e) = self.entries.get(&k).cloned() {
                self.remove(&k)?;
                self.set(&format!("{to}{}", &k[from.len()..]), e)?;
            }
        }
        Ok(())
    }

    /// Forget everything (the state directory now serves another remote directory).
    pub fn reset(&mut self) -> anyhow::Result<()> {
        self.entries.clear();
        self.journal = Self::rewrite(&self.dir, &self.entries)?;
        self.lines = 0;
        Ok(())
    }

    /// Make the appended lines durable; compact the journal when it is mostly history.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.journal.sync_data()?;
        if self.lines > 2 * self.entries.len() + 1000 {
            self.journal = Self::rewrite(&self.dir, &self.entries)?;
            self.lines = self.entries.len();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(h: &str) -> Entry {
        Entry {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            sha256: h.into(),
        }
    }

    #[test]
    fn replays_survives_a_torn_line_and_locks() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut m = Manifest::open(d.path()).unwrap();
            assert!(Manifest::open(d.path()).is_err(), "second watcher allowed");
            m.set("a", e("1")).unwrap();
            m.set("b", e("2")).unwrap();
            m.set("a", e("3")).unwrap();
            m.remove("b").unwrap();
            m.set("d/e", e("4")).unwrap();
            m.rename("d", "f").unwrap();
            m.sync().unwrap();
        }
        // A crash mid-append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(JOURNAL))
            .unwrap();
        f.write_all(b"{\"p\":\"c\",\"s\":1").unwrap();
        let m = Manifest::open(d.path()).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.entries["a"], e("3"));
        assert_eq!(m.entries["f/e"], e("4"));
    }
}
