//! The trash: a delete moves an entry to `/.trash/<owner>/<deletion time>/<original path>`,
//! where it keeps its chunks until a purge (by its owner, or by the leader once it is older
//! than the cluster's retention) removes it for good. Pure code on `State`, no IO.
//!
//! What must stay true:
//! - Nothing but `trash` puts an entry under `/.trash`: creates, mkdirs, symlinks and renames
//!   into it are refused (`check_create_in`). A rename out of it is how a restore works.
//! - The directories `trash` creates (`/.trash`, `/.trash/<user>`, the time directory and the
//!   original path's parents) have an id starting with `TRASH_DIR_ID`; a deleted entry never
//!   does. That is how a listing tells a deleted directory from a parent made to hold one.
//! - A deleted entry never lands on or inside something that exists: the time directory takes
//!   a suffix (`.1`, `.2`, ...) until the destination and every existing parent of it is a
//!   directory made by `trash`.
//! - `/.trash/<user>` belongs to that user (mode 0700): nobody else sees, restores or purges
//!   what is in it; an admin purges everyone's through the retention purge only.
//! - A purge removes at most `limit` entries per command, children before their parents, so a
//!   partly purged subtree is still a tree.
//! - Deleting an empty directory removes it at once: there is nothing in it to get back.
use super::command::{ApplyError, ErrorKind, Reply};
use super::{Inode, RecordKey, State};
use dfs_common::path;

pub use dfs_common::path::{in_trash, split_trash_path, user_trash, TRASH};
/// Id prefix of the directories that `trash` creates.
const TRASH_DIR_ID: &str = "trash-dir:";
/// How many time directories (`<time>`, `<time>.1`, ...) one deletion tries before giving up.
const MAX_TIME_SUFFIX: u32 = 1000;
/// Most entries one page of `trash_items` looks at (items and what is inside them).
const MAX_ITEM_SCAN: usize = 100_000;
/// Most entries one purge command removes (its work and its Raft entry stay small).
pub const PURGE_BATCH: u64 = 1000;
/// Most items in one page of `trash_items`.
pub const MAX_ITEM_PAGE: usize = 1000;

/// One deleted file, link or directory as the trash listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashItem {
    /// Where it is now (`/.trash/<user>/<time>/<original path>`).
    pub path: String,
    /// Where it was.
    pub original: String,
    /// When it was deleted (the time directory's creation).
    pub deleted_ms: i64,
    pub inode: Inode,
    /// Files (links count as files) and bytes in it, itself included.
    pub files: u64,
    pub bytes: u64,
}

/// The time directory name of a deletion at `now_ms` (UTC, no characters that Windows or a
/// shell would trip on, sorts by time).
fn time_dir_name(now_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(now_ms) {
        Some(t) => t.format("%Y-%m-%dT%H-%M-%SZ").to_string(),
        None => format!("{now_ms}"),
    }
}

fn made_by_trash(n: &Inode) -> bool {
    n.is_dir() && n.id.starts_with(TRASH_DIR_ID)
}

impl State {
    /// Move `raw` (and, with `recursive`, what is inside it) to its owner's trash. An entry
    /// already in the trash, or an empty directory, is removed for good instead.
    pub(super) fn trash(
        &mut self,
        actor: &str,
        raw: &str,
        recursive: bool,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let p = super::namespace::checked(raw)?;
        if p == "/" || in_trash(&p) {
            return self.remove(actor, &p, recursive, now_ms, touched);
        }
        let moving = self.deletable(actor, &p, recursive)?;
        let Some(n) = self.nodes.get(&p) else {
            return Err(ApplyError::not_found(&p));
        };
        let (owner, is_dir) = (n.owner.clone(), n.is_dir());
        if is_dir && moving.len() == 1 {
            return self.remove(actor, &p, recursive, now_ms, touched);
        }
        let base = format!("{}/{}", user_trash(&owner), time_dir_name(now_ms));
        let to = (0..MAX_TIME_SUFFIX)
            .map(|i| match i {
                0 => format!("{base}{p}"),
                i => format!("{base}.{i}{p}"),
            })
            .find(|to| self.trash_destination_free(to))
            .ok_or_else(|| {
                ApplyError::new(
                    ErrorKind::FailedPrecondition,
                    format!("{p} was deleted too many times in one second; try again"),
                )
            })?;
        // Every check passed: from here on nothing fails.
        let missing: Vec<String> = path::ancestors(&to)
            .into_iter()
            .filter(|a| !self.nodes.contains_key(*a))
            .map(str::to_string)
            .collect();
        if let Some(first) = missing.first() {
            self.dir_changed(path::parent(first).unwrap_or("/"), now_ms, touched);
        }
        let user_dir = user_trash(&owner);
        for (i, d) in missing.into_iter().enumerate() {
            let (dir_owner, mode) = if d == TRASH {
                ("admin", 0o755)
            } else if d == user_dir {
                (owner.as_str(), 0o700)
            } else {
                (owner.as_str(), 0)
            };
            let inode = Inode {
                id: format!("{TRASH_DIR_ID}{now_ms}.{i}"),
                ino: self.alloc_ino(touched),
                owner: dir_owner.to_string(),
                created_ms: now_ms,
                modified_ms: now_ms,
                ctime_ms: now_ms,
                mode,
                ..Default::default()
            };
            self.nodes.insert(d.clone(), inode);
            touched.push(RecordKey::Node(d));
        }
        let count = moving.len() as u64;
        for old in moving {
            let new = format!("{to}{}", &old[p.len()..]);
            if let Some(mut n) = self.nodes.remove(&old) {
                if old == p {
                    n.ctime_ms = now_ms;
                }
                self.nodes.insert(new.clone(), n);
            }
            touched.push(RecordKey::Node(old));
            touched.push(RecordKey::Node(new));
        }
        self.dir_changed(path::parent(&p).unwrap_or("/"), now_ms, touched);
        self.dir_changed(path::parent(&to).unwrap_or("/"), now_ms, touched);
        Ok(Reply::Trashed { count, to })
    }

    /// Nothing is at `to`, and every parent of it that exists is a directory made by `trash`.
    fn trash_destination_free(&self, to: &str) -> bool {
        !self.nodes.contains_key(to)
            && path::ancestors(to)
                .into_iter()
                .all(|a| self.nodes.get(a).is_none_or(made_by_trash))
    }

    /// Remove for good what was deleted at or before `cutoff_ms` from `user`'s trash (every
    /// user's with `None`): at most `limit` entries, children first. `Removed` says how many.
    pub(super) fn purge_trash(
        &mut self,
        user: Option<&str>,
        cutoff_ms: i64,
        limit: u64,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Reply {
        let root = match user {
            Some(u) => user_trash(u),
            None => TRASH.to_string(),
        };
        // The expired time directories, in path order.
        let expired: Vec<String> = std::iter::once(root.as_str())
            .filter_map(|r| self.nodes.get(r).map(|_| r))
            .flat_map(|r| self.descendants(r))
            // `/.trash/<user>/<time>`: two slashes after the trash's own name.
            .filter(|(k, n)| {
                k[TRASH.len()..].matches('/').count() == 2 && n.created_ms <= cutoff_ms
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut doomed: Vec<String> = Vec::new();
        let mut emptied = Vec::new();
        for t in expired {
            let room = (limit as usize).saturating_sub(doomed.len());
            if room == 0 {
                break;
            }
            let subtree: Vec<String> = std::iter::once(t.clone())
                .chain(self.descendants(&t).map(|(k, _)| k.clone()))
                .collect();
            if subtree.len() <= room {
                emptied.push(t);
            }
            // A suffix of a subtree in path order holds every descendant of what it holds.
            let start = subtree.len().saturating_sub(room);
            doomed.extend(subtree.into_iter().skip(start).rev());
        }
        let count = doomed.len() as u64;
        for k in doomed {
            if let Some(Inode { file: Some(f), .. }) = self.nodes.remove(&k) {
                self.queue_deletes(&f.chunks, touched);
            }
            touched.push(RecordKey::Node(k));
        }
        for t in emptied {
            self.dir_changed(path::parent(&t).unwrap_or("/"), now_ms, touched);
        }
        Reply::Removed { count }
    }

    /// One page (at most `limit` items, 0 or more than `MAX_ITEM_PAGE`: that many) of what `actor` has in its trash: items (deleted entries, not the directories
    /// made to hold them) whose path sorts after `after`, and the cursor of the next page
    /// (empty: this was the last).
    pub fn trash_items(&self, actor: &str, after: &str, limit: usize) -> (Vec<TrashItem>, String) {
        use std::ops::Bound;
        let root = user_trash(actor);
        let limit = match limit {
            0 => MAX_ITEM_PAGE,
            l => l.min(MAX_ITEM_PAGE),
        };
        let prefix = format!("{root}/");
        let from = match after {
            "" => Bound::Included(prefix.clone()),
            a => Bound::Excluded(a.to_string()),
        };
        let (mut out, mut scanned) = (Vec::new(), 0usize);
        for (k, n) in self.nodes.range::<String, _>((from, Bound::Unbounded)) {
            if !k.starts_with(&prefix) {
                return (out, String::new());
            }
            scanned += 1;
            let parent_made = path::parent(k)
                .and_then(|par| self.nodes.get(par))
                .is_some_and(made_by_trash);
            if parent_made && !made_by_trash(n) {
                if let Some((time_dir, original)) = split_trash_path(k) {
                    let deleted_ms = self.nodes.get(time_dir).map_or(0, |t| t.created_ms);
                    let (files, _, bytes) = super::count_inodes(
                        std::iter::once(n).chain(self.descendants(k).map(|(_, c)| c)),
                    );
                    out.push(TrashItem {
                        path: k.clone(),
                        original: original.to_string(),
                        deleted_ms,
                        inode: n.clone(),
                        files,
                        bytes,
                    });
                }
            }
            if out.len() >= limit || scanned >= MAX_ITEM_SCAN {
                return (out, k.clone());
            }
        }
        (out, String::new())
    }

    /// Files (links included), directories and bytes in `user`'s trash (every user's with
    /// `None`), the directories made to hold them included.
    pub fn trash_usage(&self, user: Option<&str>) -> (u64, u64, u64) {
        let root = match user {
            Some(u) => user_trash(u),
            None => TRASH.to_string(),
        };
        super::count_inodes(self.descendants(&root).map(|(_, n)| n))
    }
}
