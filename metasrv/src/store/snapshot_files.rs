//! The snapshot directory: which file holds the current snapshot, and how a new one replaces it.
//!
//! Layout (everything else in the directory is left alone):
//! - `snap-<uuid>`: the state as JSON, nothing else, so openraft can stream it to a follower
//!   by offset straight from the file (it seeks to the end for the size and reads pieces);
//! - `current.meta`: `{"meta": SnapshotMeta, "data": "snap-<uuid>"}`, the commit record.
//!
//! What must stay true: a data file is only ever named by the one `current.meta` that was
//! written for it (the name is a fresh uuid chosen here, never taken from a peer), so a snapshot
//! is never paired with another snapshot's meta; and `current.meta` only names a data file that
//! is complete and fsynced (with its directory entry) before `current.meta` is replaced.
//!
//! Crash at each step of `new_file` → write → `commit`:
//! - while the data file is written or synced: `current.meta` still names the previous
//!   snapshot; the unnamed `snap-*` is removed by the next `open`;
//! - while `current.meta` is replaced (`durable::write_atomic`: temp file, fsync, rename, fsync
//!   of the directory): either the old or the new meta is there, each naming its own complete
//!   file; the temp `.current.meta.tmp-*` is removed by `open`;
//! - after the rename, before the old data file is removed: `open` removes it.
//!
//! An open data file stays readable after `commit` removes its name (a follower that is
//! being sent the previous snapshot finishes reading it). `current` is locked while a file is
//! opened and while it is replaced, so a reader never opens a name that was just removed.
//!
//! A `current.snap` from the previous version (one line of meta, then the state) is converted
//! once on `open`, streamed, and removed.
use crate::types::SnapshotMeta;
use dfs_common::durable::{fsync_dir, write_atomic};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const META_FILE: &str = "current.meta";
const DATA_PREFIX: &str = "snap-";
/// The previous version's one-file snapshot.
const OLD_FILE: &str = "current.snap";

/// The commit record in `current.meta`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Current {
    pub meta: SnapshotMeta,
    /// File name of the data, inside the snapshot directory.
    pub data: String,
}

/// Files handed out for receiving a snapshot, not yet installed.
#[derive(Default)]
struct Receiving {
    paths: Vec<PathBuf>,
}

pub struct SnapshotFiles {
    dir: PathBuf,
    current: Mutex<Option<Current>>,
    receiving: Mutex<Receiving>,
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// `(device, inode)` of an open file: how a received file is matched to its path.
fn identity(f: &File) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

impl SnapshotFiles {
    /// Open the directory: convert a previous-version snapshot, read `current.meta`, remove
    /// files that no commit names (leftovers of a crash).
    pub fn open(dir: &Path) -> io::Result<SnapshotFiles> {
        fs::create_dir_all(dir)?;
        let files = SnapshotFiles {
            dir: dir.to_path_buf(),
            current: Mutex::new(None),
            receiving: Mutex::new(Receiving::default()),
        };
        let current = match fs::read(dir.join(META_FILE)) {
            Ok(raw) => Some(serde_json::from_slice::<Current>(&raw).map_err(|e| {
                corrupt(format!("{} is corrupt: {e}", dir.join(META_FILE).display()))
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(c) = &current {
            if !valid_data_name(&c.data) || !dir.join(&c.data).is_file() {
                return Err(corrupt(format!(
                    "{} names the snapshot data {:?}, which is missing",
                    dir.join(META_FILE).display(),
                    c.data
                )));
            }
        }
        *files.lock_current() = current;
        files.remove_leftovers()?;
        let old = dir.join(OLD_FILE);
        if old.exists() {
            if files.current_meta().is_some() {
                // Converted already; the crash came before the old file was removed.
                fs::remove_file(&old)?;
            } else {
                files.convert_old(&old)?;
            }
        }
        Ok(files)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_leftovers(&self) -> io::Result<()> {
        let keep = self.lock_current().as_ref().map(|c| c.data.clone());
        for e in fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            let leftover = (name.starts_with(DATA_PREFIX) && Some(name) != keep.as_deref())
                || name.starts_with(&dfs_common::durable::temp_prefix(META_FILE));
            if leftover {
                tracing::info!(file = name, "removing an incomplete snapshot file");
                fs::remove_file(self.dir.join(name))?;
            }
        }
        Ok(())
    }

    /// The previous version's `current.snap`: first line the meta, then the state JSON.
    fn convert_old(&self, old: &Path) -> io::Result<()> {
        let mut r = BufReader::new(File::open(old)?);
        let mut line = String::new();
        // The meta line is small; a file without one is refused rather than read whole.
        (&mut r).take(1 << 20).read_line(&mut line)?;
        let meta: SnapshotMeta = serde_json::from_str(line.trim_end()).map_err(|e| {
            corrupt(format!(
                "{}: the first line is not snapshot meta: {e}",
                old.display()
            ))
        })?;
        let (path, mut f) = self.new_file()?;
        io::copy(&mut r, &mut f)?;
        f.sync_all()?;
        self.commit(&meta, &path, true)?;
        fs::remove_file(old)?;
        fsync_dir(&self.dir)?;
        tracing::info!(
            index = ?meta.last_log_id.map(|l| l.index),
            "converted the previous version's snapshot file to data + current.meta"
        );
        Ok(())
    }

    /// The committed snapshot's meta, if any.
    pub fn current_meta(&self) -> Option<SnapshotMeta> {
        self.current().map(|(m, _)| m)
    }

    /// The current snapshot's meta and data file path, if any.
    pub fn current(&self) -> Option<(SnapshotMeta, PathBuf)> {
        self.lock_current()
            .as_ref()
            .map(|c| (c.meta.clone(), self.dir.join(&c.data)))
    }

    /// A new, empty data file (read + write) and its path. Not the current snapshot until
    /// `commit`; removed by the next `open` if never committed.
    pub fn new_file(&self) -> io::Result<(PathBuf, File)> {
        let path = self
            .dir
            .join(format!("{DATA_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, f))
    }

    /// A file to receive a snapshot into. Any earlier one not installed is abandoned (openraft
    /// receives one snapshot at a time and drops the previous stream when another starts).
    pub fn begin_receiving(&self) -> io::Result<File> {
        let (path, f) = self.new_file()?;
        let mut r = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        for old in r.paths.drain(..) {
            remove_quietly(&old);
        }
        r.paths.push(path);
        Ok(f)
    }

    /// The path of `f` if it is a file from `begin_receiving` (taken off the list); every other
    /// file still on the list is abandoned and removed.
    pub fn take_received(&self, f: &File) -> io::Result<Option<PathBuf>> {
        let id = identity(f)?;
        let mut r = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for p in r.paths.drain(..) {
            let same = File::open(&p)
                .and_then(|g| identity(&g))
                .is_ok_and(|i| i == id);
            if same && found.is_none() {
                found = Some(p);
            } else {
                remove_quietly(&p);
            }
        }
        Ok(found)
    }

    /// Make the complete, fsynced data file at `path` the current snapshot with `meta`.
    /// Unless `replace_newer`, a snapshot older than the current one is not committed (its
    /// file is removed) and `false` is returned.
    pub fn commit(
        &self,
        meta: &SnapshotMeta,
        path: &Path,
        replace_newer: bool,
    ) -> io::Result<bool> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| valid_data_name(n) && path.parent() == Some(self.dir.as_path()))
            .ok_or_else(|| corrupt(format!("{} is not a snapshot data file", path.display())))?
            .to_string();
        let mut current = self.lock_current();
        if let Some(c) = current.as_ref() {
            if !replace_newer && c.meta.last_log_id > meta.last_log_id {
                remove_quietly(path);
                return Ok(false);
            }
        }
        let record = Current {
            meta: meta.clone(),
            data: name,
        };
        // The data file's directory entry is durable before a meta names it.
        let raw = fsync_dir(&self.dir)
            .and_then(|()| serde_json::to_vec(&record).map_err(io::Error::other))
            .inspect_err(|_| remove_quietly(path))?;
        // From here a failure leaves the file: the meta on disk may name it already (the
        // rename done, the directory fsync failed), and `open` keeps it if so.
        write_atomic(&self.dir.join(META_FILE), &raw)?;
        // A committed data file has a fresh name, never the old one's.
        if let Some(old) = current.replace(record) {
            remove_quietly(&self.dir.join(old.data));
        }
        Ok(true)
    }

    /// The current snapshot: its meta and its data file opened for reading, at offset 0.
    pub fn open_current(&self) -> io::Result<Option<(SnapshotMeta, File)>> {
        let current = self.lock_current();
        let Some(c) = current.as_ref() else {
            return Ok(None);
        };
        let f = File::open(self.dir.join(&c.data))?;
        Ok(Some((c.meta.clone(), f)))
    }
}

fn valid_data_name(n: &str) -> bool {
    n.strip_prefix(DATA_PREFIX)
        .is_some_and(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Remove a file nobody needs any more; a failure only leaves garbage for the next `open`.
pub fn remove_quietly(p: &Path) {
    if let Err(e) = fs::remove_file(p) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %p.display(), error = %e, "cannot remove a snapshot file");
        }
    }
}
