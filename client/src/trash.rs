//! The trash, seen from a client: delete (to the trash or for good), list what you deleted,
//! restore it, purge it. The rules live in metasrv; this is the calling side every frontend
//! shares (`dfsctl rm`/`trash`, the mount, the watcher, the gateway).
//!
//! What must stay true: a restore never replaces anything unless asked (`replace`), and then
//! only as an atomic rename (a file, or an empty directory); the parent it recreates for the
//! entry is created, never taken over.
use crate::error::{Error, Result};
use crate::fs::Client;
use crate::meta::new_request_id;
use crate::rpc;
use dfs_common::path;
use dfs_proto::*;
use std::time::Duration;

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Entries moved or removed (a directory counts with everything in it).
    pub count: u64,
    /// Where the entry is now, when it went to the trash.
    pub trashed_to: Option<String>,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub from: String,
    pub to: String,
}

impl Client {
    /// Delete `path` (with `recursive`, a directory and what is in it): into the caller's
    /// trash, or for good with `skip_trash` (or when the cluster keeps no trash).
    pub async fn remove_with(
        &self,
        path: &str,
        recursive: bool,
        skip_trash: bool,
    ) -> Result<Removed> {
        let req = RemoveRequest {
            path: path.to_string(),
            recursive,
            request_id: new_request_id(),
            skip_trash,
        };
        let r = rpc!(self.conn, remove, req)?;
        Ok(Removed {
            count: r.removed,
            trashed_to: Some(r.trashed_to).filter(|t| !t.is_empty()),
        })
    }

    /// One page of the caller's trash (at most `limit` items, 0: as many as the server
    /// gives), after the item `after`; and the cursor of the next page (empty: last page).
    pub async fn trash_page(&self, after: &str, limit: u32) -> Result<(Vec<TrashItem>, String)> {
        let req = TrashListRequest {
            after: after.to_string(),
            limit,
        };
        let r = rpc!(self.conn, trash_list, req)?;
        Ok((r.items, r.next))
    }

    /// Remove for good what the caller deleted at least `older_than` ago (zero: everything).
    /// Returns how many entries went.
    pub async fn trash_purge(&self, older_than: Duration) -> Result<u64> {
        let req = TrashPurgeRequest {
            older_than_ms: older_than.as_millis().min(u64::MAX as u128) as u64,
            request_id: new_request_id(),
        };
        Ok(rpc!(self.conn, trash_purge, req)?.removed)
    }

    /// Put a deleted entry back where it was. `path` is its place in the trash, or the path
    /// it had (then the latest deletion of that path is restored). Its parent directory is
    /// created when it is gone; something at the original path now is an `Exists` error
    /// unless `replace`.
    pub async fn trash_restore(&self, path: &str, replace: bool) -> Result<Restored> {
        let p = path::normalize(path).map_err(|e| Error::InvalidName(e.to_string()))?;
        let from = if path::in_trash(&p) {
            p.clone()
        } else {
            self.latest_deletion_of(&p).await?
        };
        let Some((_, original)) = path::split_trash_path(&from) else {
            return Err(Error::InvalidName(format!(
                "{from} is not a deleted entry (give a path that `dfsctl trash ls` shows)"
            )));
        };
        let to = original.to_string();
        if let Some(parent) = path::parent(&to).filter(|p| *p != "/") {
            match self.mkdir(parent, true).await {
                Ok(()) | Err(Error::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mode = if replace {
            RenameMode::RenameReplace
        } else {
            RenameMode::RenameNoreplace
        };
        match self.rename_with(&from, &to, mode).await {
            Ok(()) => Ok(Restored { from, to }),
            Err(Error::Exists(_)) => Err(Error::Exists(format!(
                "{to} exists now; restore with -f to replace it"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The trash path of the latest deletion of `original`.
    async fn latest_deletion_of(&self, original: &str) -> Result<String> {
        let (mut best, mut after): (Option<TrashItem>, String) = (None, String::new());
        loop {
            let (items, next) = self.trash_page(&after, 0).await?;
            for i in items.into_iter().filter(|i| i.original_path == original) {
                if best
                    .as_ref()
                    .is_none_or(|b| (i.deleted_ms, &i.path) > (b.deleted_ms, &b.path))
                {
                    best = Some(i);
                }
            }
            if next.is_empty() {
                break;
            }
            after = next;
        }
        best.map(|b| b.path).ok_or_else(|| {
            Error::NotFound(format!(
                "{original}: not in your trash (`dfsctl trash ls` lists what is)"
            ))
        })
    }
}
