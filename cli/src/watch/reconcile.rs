//! The watcher's decision: a pure diff of the local walk, the manifest (what this watcher
//! uploaded, with the local size/mtime/ctime it had then) and the remote listing, into a plan
//! of mkdirs, uploads, deletes and directory removals. No IO here, so every rule is unit-tested.
//!
//! What must stay true:
//! - A file is skipped ("unchanged") only when the manifest says this exact local version
//!   (size, mtime, ctime) was uploaded AND the remote file still has that size and sha256.
//!   Anything else is an upload candidate (the executor still compares sha256 with the remote
//!   before sending bytes), so a stale or lost manifest costs hashing, never a wrong skip.
//! - A file is uploaded only once its mtime is `settle` old (still being written otherwise).
//! - Only files the manifest knows (this watcher put them) are ever deleted remotely, only
//!   with `delete`, never under a local directory that could not be read, never an excluded
//!   name; a remote directory is removed only when this plan empties it.
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A regular file found by the local walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFile {
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// The latest of its mtime, its ctime and the ctime of every folder above it below the
    /// root (a rename of the file or of a folder above it): it is settled once this is
    /// `settle` old. Not part of the manifest.
    pub changed_ns: i64,
}

/// What the manifest remembers of an uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    #[serde(rename = "s")]
    pub size: u64,
    #[serde(rename = "m")]
    pub mtime_ns: i64,
    #[serde(rename = "c")]
    pub ctime_ns: i64,
    #[serde(rename = "h")]
    pub sha256: String,
}

impl Entry {
    pub fn matches(&self, f: &LocalFile) -> bool {
        self.size == f.size && self.mtime_ns == f.mtime_ns && self.ctime_ns == f.ctime_ns
    }
}

/// A remote file under the watched remote directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub size: u64,
    /// Empty when the cluster does not know it (written through the mount).
    pub sha256: String,
}

/// The local tree: relative `/`-separated paths.
#[derive(Debug, Default, Clone)]
pub struct LocalTree {
    pub files: BTreeMap<String, LocalFile>,
    pub dirs: BTreeSet<String>,
    /// For each directory: the latest ctime of it and the folders above it (see
    /// [`LocalFile::changed_ns`]); a missing one counts as settled.
    pub dir_changed_ns: HashMap<String, i64>,
    /// Directories whose contents could not be read: nothing under them is deleted.
    pub unreadable: Vec<String>,
}

/// The remote tree as this watcher knows it (listed at rescans, updated by its own actions).
#[derive(Debug, Default, Clone)]
pub struct RemoteTree {
    pub files: BTreeMap<String, RemoteFile>,
    pub dirs: BTreeSet<String>,
}

impl RemoteTree {
    /// What a remote rename of `from` (a file, or a folder and all below it) to `to` makes.
    pub fn rename(&mut self, from: &str, to: &str) {
        let moved = |k: &str| k == from || under(k, from);
        let new = |k: &str| format!("{to}{}", &k[from.len()..]);
        let files: Vec<String> = self.files.keys().filter(|k| moved(k)).cloned().collect();
        for k in files {
            if let Some(f) = self.files.remove(&k) {
                self.files.insert(new(&k), f);
            }
        }
        let dirs: Vec<String> = self.dirs.iter().filter(|k| moved(k)).cloned().collect();
        for k in dirs {
            self.dirs.remove(&k);
            self.dirs.insert(new(&k));
        }
    }

    /// Whether anything (file or folder) is at or below `rel`.
    pub fn has_under(&self, rel: &str) -> bool {
        self.files.contains_key(rel)
            || self.files.keys().any(|k| under(k, rel))
            || self.dirs.iter().any(|k| under(k, rel))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub rel: String,
    pub local: LocalFile,
    /// The local sha256 when the manifest already knows it (this version was hashed before).
    pub known_sha256: Option<String>,
    /// What is at the remote path now, to compare before sending bytes.
    pub remote: Option<RemoteFile>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Remote directories to create, parents first.
    pub mkdirs: Vec<String>,
    pub uploads: Vec<Upload>,
    /// Files not settled yet: the earliest time (ns since the epoch) one becomes due.
    pub wake_ns: Option<i64>,
    /// How many files wait for their settle time.
    pub unsettled: usize,
    /// Remote files to delete (with `delete`).
    pub deletes: Vec<String>,
    /// Remote directories this plan empties and that are gone locally, deepest first.
    pub rmdirs: Vec<String>,
    /// Manifest entries of files gone locally that are not deleted remotely.
    pub forget: Vec<String>,
    pub unchanged: usize,
}

pub struct Inputs<'a> {
    pub local: &'a LocalTree,
    pub manifest: &'a HashMap<String, Entry>,
    pub remote: &'a RemoteTree,
    /// Local files that failed and have not changed since (retried at the next rescan).
    pub failed: &'a HashMap<String, LocalFile>,
    pub excluded: &'a dyn Fn(&str) -> bool,
    pub now_ns: i64,
    pub settle_ns: i64,
    pub delete: bool,
}

/// `path` is strictly below `dir` ("" is the root: everything is below it).
pub fn under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

fn parents(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

pub fn plan(i: &Inputs) -> Plan {
    let mut p = Plan::default();
    let mut mk: BTreeSet<String> = BTreeSet::new();
    // Whether a change at `changed` is `settle` old; else the wake time is noted.
    let settled = |changed: i64, p: &mut Plan| {
        let age = i.now_ns.saturating_sub(changed);
        // A time in the future (clock skew, `touch -d`) says nothing: treated as settled.
        if age >= 0 && age < i.settle_ns {
            let due = changed + i.settle_ns;
            p.wake_ns = Some(p.wake_ns.map_or(due, |w| w.min(due)));
            false
        } else {
            true
        }
    };
    for d in &i.local.dirs {
        // A folder just made or renamed waits too: a rename is done remotely when its event
        // comes, instead of a new remote folder filled again.
        let changed = i.local.dir_changed_ns.get(d).copied().unwrap_or(0);
        if !i.remote.dirs.contains(d) && settled(changed, &mut p) {
            mk.insert(d.clone());
        }
    }
    for (rel, f) in &i.local.files {
        let m = i.manifest.get(rel);
        let r = i.remote.files.get(rel);
        if let Some(m) = m {
            let remote_same = r
                .is_some_and(|r| r.size == m.size && (r.sha256 == m.sha256 || r.sha256.is_empty()));
            if m.matches(f) && remote_same {
                p.unchanged += 1;
                continue;
            }
        }
        if i.failed.get(rel) == Some(f) {
            continue;
        }
        if !settled(f.changed_ns.max(f.mtime_ns), &mut p) {
            p.unsettled += 1;
            continue;
        }
        for d in parents(rel) {
            if !i.remote.dirs.contains(d) {
                mk.insert(d.to_string());
            }
        }
        p.uploads.push(Upload {
            rel: rel.clone(),
            local: *f,
            known_sha256: m.filter(|m| m.matches(f)).map(|m| m.sha256.clone()),
            remote: r.cloned(),
        });
    }
    // BTreeSet order puts a parent before its children ("a" < "a/b").
    p.mkdirs = mk.into_iter().collect();
    let blocked = |rel: &str| {
        (i.excluded)(rel)
            || i.local.unreadable.iter().any(|d| under(rel, d))
            || i.local.dirs.contains(rel)
    };
    let mut gone: Vec<&String> = i
        .manifest
        .keys()
        .filter(|k| !i.local.files.contains_key(*k))
        .collect();
    gone.sort();
    for rel in gone {
        if i.delete && !blocked(rel) && i.remote.files.contains_key(rel) {
            p.deletes.push(rel.clone());
        } else if !i.local.unreadable.iter().any(|d| under(rel, d)) {
            p.forget.push(rel.clone());
        }
    }
    if !p.deletes.is_empty() {
        let deleted: BTreeSet<&str> = p.deletes.iter().map(String::as_str).collect();
        let touched: BTreeSet<&str> = p.deletes.iter().flat_map(|d| parents(d)).collect();
        let mut rm: Vec<String> = touched
            .into_iter()
            .filter(|d| {
                !d.is_empty()
                    && !i.local.dirs.contains(*d)
                    && !blocked(d)
                    && !i
                        .remote
                        .files
                        .keys()
                        .any(|f| under(f, d) && !deleted.contains(f.as_str()))
                    && !i
                        .remote
                        .dirs
                        .iter()
                        .any(|x| under(x, d) && i.local.dirs.contains(x))
            })
            .map(str::to_string)
            .collect();
        rm.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        p.rmdirs = rm;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn lf(size: u64, mtime_s: i64) -> LocalFile {
        LocalFile {
            size,
            mtime_ns: mtime_s * S,
            ctime_ns: mtime_s * S,
            changed_ns: mtime_s * S,
        }
    }

    fn entry(f: &LocalFile, h: &str) -> Entry {
        Entry {
            size: f.size,
            mtime_ns: f.mtime_ns,
            ctime_ns: f.ctime_ns,
            sha256: h.into(),
        }
    }

    struct W {
        local: LocalTree,
        manifest: HashMap<String, Entry>,
        remote: RemoteTree,
        failed: HashMap<String, LocalFile>,
        delete: bool,
    }

    impl W {
        fn new() -> W {
            W {
                local: LocalTree::default(),
                manifest: HashMap::new(),
                remote: RemoteTree::default(),
                failed: HashMap::new(),
                delete: false,
            }
        }
        fn plan(&self) -> Plan {
            let ex = |p: &str| p.ends_with(".swp");
            plan(&Inputs {
                local: &self.local,
                manifest: &self.manifest,
                remote: &self.remote,
                failed: &self.failed,
                excluded: &ex,
                now_ns: 1000 * S,
                settle_ns: 2 * S,
                delete: self.delete,
            })
        }
        /// A file uploaded earlier: local, manifest and remote agree.
        fn synced(&mut self, rel: &str, f: LocalFile, h: &str) {
            self.local.files.insert(rel.into(), f);
            self.manifest.insert(rel.into(), entry(&f, h));
            self.remote.files.insert(
                rel.into(),
                RemoteFile {
                    size: f.size,
                    sha256: h.into(),
                },
            );
        }
    }

    #[test]
    fn unchanged_needs_manifest_and_remote_agreeing() {
        let mut w = W::new();
        w.synced("a", lf(3, 10), "h1");
        let p = w.plan();
        assert_eq!((p.unchanged, p.uploads.len()), (1, 0));
        // Remote replaced by someone else: uploaded again (the local hash is known).
        w.remote.files.get_mut("a").unwrap().sha256 = "other".into();
        let p = w.plan();
        assert_eq!(p.uploads.len(), 1);
        assert_eq!(p.uploads[0].known_sha256.as_deref(), Some("h1"));
        // Remote gone.
        w.remote.files.clear();
        assert_eq!(w.plan().uploads.len(), 1);
    }

    #[test]
    fn changed_or_unknown_files_are_candidates_with_the_remote_to_compare() {
        let mut w = W::new();
        w.synced("a", lf(3, 10), "h1");
        // Same size and mtime but a new ctime (content rewritten, mtime put back): not trusted.
        w.local.files.get_mut("a").unwrap().ctime_ns += 1;
        let p = w.plan();
        assert_eq!(p.uploads.len(), 1);
        assert_eq!(p.uploads[0].known_sha256, None);
        assert_eq!(p.uploads[0].remote.as_ref().unwrap().sha256, "h1");
        // Lost manifest: every file is a candidate, compared with the remote before any put.
        let mut w2 = W::new();
        w2.synced("b", lf(3, 10), "h");
        w2.manifest.clear();
        let p = w2.plan();
        assert_eq!(p.uploads.len(), 1);
        assert!(p.uploads[0].remote.is_some());
    }

    #[test]
    fn unsettled_files_wait_and_say_when() {
        let mut w = W::new();
        w.local.files.insert("new".into(), lf(1, 999));
        w.local.files.insert("old".into(), lf(1, 500));
        let p = w.plan();
        assert_eq!(p.uploads.len(), 1);
        assert_eq!(p.uploads[0].rel, "old");
        assert_eq!(p.unsettled, 1);
        assert_eq!(p.wake_ns, Some(1001 * S));
        // An mtime in the future is not waited for.
        w.local.files.insert("future".into(), lf(1, 5000));
        assert_eq!(w.plan().uploads.len(), 2);
    }

    #[test]
    fn mkdirs_parents_first_for_dirs_and_uploads() {
        let mut w = W::new();
        w.local.dirs.extend(["x".into(), "x/y".into(), "e".into()]);
        w.local.files.insert("x/y/z/f".into(), lf(1, 1));
        w.remote.dirs.insert("e".into());
        let p = w.plan();
        assert_eq!(p.mkdirs, ["x", "x/y", "x/y/z"]);
        // A folder just renamed or made waits for its settle time, and so do the files in it.
        w.local.dirs.insert("new".into());
        w.local.dir_changed_ns.insert("new".into(), 999 * S);
        let mut f = lf(1, 1);
        f.changed_ns = 999 * S;
        w.local.files.insert("new/f".into(), f);
        let p = w.plan();
        assert_eq!(p.mkdirs, ["x", "x/y", "x/y/z"]);
        assert_eq!((p.uploads.len(), p.unsettled), (1, 1));
        assert_eq!(p.wake_ns, Some(1001 * S));
    }

    #[test]
    fn failed_files_are_skipped_until_they_change() {
        let mut w = W::new();
        w.local.files.insert("bad".into(), lf(1, 1));
        w.failed.insert("bad".into(), lf(1, 1));
        assert!(w.plan().uploads.is_empty());
        w.local.files.insert("bad".into(), lf(2, 2));
        assert_eq!(w.plan().uploads.len(), 1);
    }

    #[test]
    fn deletes_only_known_files_only_with_delete() {
        let mut w = W::new();
        w.synced("d/gone", lf(1, 1), "h");
        w.synced("keep", lf(1, 1), "h");
        w.local.files.remove("d/gone");
        w.remote.files.insert(
            "d/theirs-gone".into(),
            RemoteFile {
                size: 1,
                sha256: "x".into(),
            },
        );
        w.remote.dirs.insert("d".into());
        let p = w.plan();
        assert!(p.deletes.is_empty());
        assert_eq!(p.forget, ["d/gone"]);
        w.delete = true;
        let p = w.plan();
        assert_eq!(p.deletes, ["d/gone"]);
        // d still holds a file this watcher did not put: kept.
        assert!(p.rmdirs.is_empty());
        w.remote.files.remove("d/theirs-gone");
        assert_eq!(w.plan().rmdirs, ["d"]);
    }

    #[test]
    fn nothing_is_deleted_under_an_unreadable_dir_or_an_excluded_name() {
        let mut w = W::new();
        w.delete = true;
        w.synced("locked/f", lf(1, 1), "h");
        w.synced("x.swp", lf(1, 1), "h");
        w.local.files.clear();
        w.local.unreadable.push("locked".into());
        let p = w.plan();
        assert!(p.deletes.is_empty(), "{p:?}");
        assert_eq!(p.forget, ["x.swp"]);
        // The root unreadable ("" is every path): nothing deleted, nothing forgotten.
        w.local.unreadable = vec![String::new()];
        let p = w.plan();
        assert!(p.deletes.is_empty() && p.forget.is_empty());
    }

    #[test]
    fn remote_rename_moves_a_folder_and_what_is_below_it() {
        let mut r = RemoteTree::default();
        let f = RemoteFile {
            size: 1,
            sha256: "h".into(),
        };
        for k in ["a/x", "a/b/y", "ab/z"] {
            r.files.insert(k.into(), f.clone());
        }
        r.dirs.extend(["a".into(), "a/b".into(), "ab".into()]);
        r.rename("a", "c/d");
        let files: Vec<_> = r.files.keys().cloned().collect();
        assert_eq!(files, ["ab/z", "c/d/b/y", "c/d/x"]);
        let dirs: Vec<_> = r.dirs.iter().cloned().collect();
        assert_eq!(dirs, ["ab", "c/d", "c/d/b"]);
        assert!(r.has_under("c") && r.has_under("ab/z") && !r.has_under("a"));
    }

    #[test]
    fn emptied_dirs_are_removed_deepest_first() {
        let mut w = W::new();
        w.delete = true;
        w.synced("a/b/f", lf(1, 1), "h");
        w.synced("a/g", lf(1, 1), "h");
        w.remote.dirs.extend(["a".into(), "a/b".into()]);
        w.local.files.clear();
        let p = w.plan();
        assert_eq!(p.deletes, ["a/b/f", "a/g"]);
        assert_eq!(p.rmdirs, ["a/b", "a"]);
        // A folder that still exists locally stays.
        w.local.dirs.insert("a".into());
        assert_eq!(w.plan().rmdirs, ["a/b"]);
    }
}
