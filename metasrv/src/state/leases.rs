//! Write leases: a writer that keeps a file open longer than its write tokens' commit window
//! (token lifetime + commit grace) holds a lease. While it lives, the chunks registered in it
//! are not orphans whatever their age, and a commit naming them is accepted under it. When it
//! is not renewed it expires, and its chunks become ordinary orphans. Pure code on `State`.
//!
//! What must stay true:
//! - A lease protects only chunks whose write tokens the proposer checked, within the commit
//!   window, when they were added: every chunk in a lease is protected without a break, first
//!   by its token's window, then by the lease.
//! - An expired lease never comes back: renewing it is refused (the writer must start again),
//!   so a chunk that the orphan collector may have taken is never accepted under it.
//! - A commit that relies on a lease applies only if the lease is live at the command's time,
//!   belongs to the committer and holds every chunk that relies on it. The lease outlives the
//!   commit (a file kept open is committed at every fsync, its old chunks again each time)
//!   until the writer releases it or stops renewing it.
use super::command::{ApplyError, ErrorKind, Reply};
use super::{RecordKey, State};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// Most chunks one lease holds (a 1 TiB file of 8 MiB chunks is 131,072).
pub const MAX_LEASE_CHUNKS: usize = 1 << 20;
/// Longest lease id (the writer makes it up, like a request id).
pub const MAX_LEASE_ID: usize = 64;

/// One open write: who, where, until when, and the chunks it has written so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub path: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub chunks: BTreeSet<String>,
}

fn expired(id: &str) -> ApplyError {
    ApplyError::new(
        ErrorKind::FailedPrecondition,
        format!("write lease {id} expired (the writer was silent too long); its chunks are no longer kept: write the file again"),
    )
}

impl State {
    /// Create (with `create`) or renew lease `id` until `expires_ms`, adding `chunks`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn renew_lease(
        &mut self,
        actor: &str,
        id: &str,
        path: &str,
        create: bool,
        chunks: &[String],
        now_ms: i64,
        expires_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        if id.is_empty() || id.len() > MAX_LEASE_ID {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                format!("a lease id has 1 to {MAX_LEASE_ID} bytes"),
            ));
        }
        match self.leases.get(id) {
            Some(l) if l.owner != actor => {
                return Err(ApplyError::denied(format!(
                    "write lease {id} belongs to another user"
                )))
            }
            Some(l) if l.expires_ms < now_ms => return Err(expired(id)),
            Some(l) if l.chunks.len() + chunks.len() > MAX_LEASE_CHUNKS => {
                return Err(ApplyError::new(
                    ErrorKind::InvalidArgument,
                    format!("a write lease holds at most {MAX_LEASE_CHUNKS} chunks"),
                ))
            }
            Some(_) => {}
            None if !create => return Err(expired(id)),
            None => {
                self.leases.insert(
                    id.to_string(),
                    Lease {
                        owner: actor.to_string(),
                        path: path.to_string(),
                        created_ms: now_ms,
                        expires_ms,
                        chunks: BTreeSet::new(),
                    },
                );
            }
        }
        if let Some(l) = self.leases.get_mut(id) {
            l.expires_ms = l.expires_ms.max(expires_ms);
            l.chunks.extend(chunks.iter().cloned());
        }
        touched.push(RecordKey::Lease(id.to_string()));
        Ok(Reply::Done)
    }

    /// Forget the leases that expired before `now_ms`; `Removed` says how many.
    pub(super) fn drop_expired_leases(
        &mut self,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Reply {
        let gone: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_ms < now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.leases.remove(k);
            touched.push(RecordKey::Lease(k.clone()));
        }
        Reply::Removed {
            count: gone.len() as u64,
        }
    }

    /// The checks a commit relying on lease `id` for `leased` chunks must pass.
    pub(super) fn check_leased(
        &self,
        actor: &str,
        id: &str,
        leased: &[String],
        now_ms: i64,
    ) -> Result<(), ApplyError> {
        if leased.is_empty() {
            return Ok(());
        }
        let Some(l) = self.leases.get(id) else {
            return Err(expired(id));
        };
        if l.owner != actor {
            return Err(ApplyError::denied(format!(
                "write lease {id} belongs to another user"
            )));
        }
        if l.expires_ms < now_ms {
            return Err(expired(id));
        }
        if let Some(c) = leased.iter().find(|c| !l.chunks.contains(*c)) {
            return Err(ApplyError::new(
                ErrorKind::PermissionDenied,
                format!("chunk {c}: its write token expired and no live lease of yours holds it; write the file again"),
            ));
        }
        Ok(())
    }

    /// The writer of lease `id` is done.
    pub(super) fn release_lease(&mut self, actor: &str, id: &str, touched: &mut Vec<RecordKey>) {
        if self.leases.get(id).is_some_and(|l| l.owner == actor) {
            self.leases.remove(id);
            touched.push(RecordKey::Lease(id.to_string()));
        }
    }

    /// Chunks held by leases live at `now_ms` (never orphans).
    pub fn leased_chunks(&self, now_ms: i64) -> HashSet<&str> {
        self.leases
            .values()
            .filter(|l| l.expires_ms >= now_ms)
            .flat_map(|l| l.chunks.iter().map(String::as_str))
            .collect()
    }

    /// Leases live at `now_ms`: how many, and when the oldest was granted (0: none).
    pub fn lease_stats(&self, now_ms: i64) -> (u64, i64) {
        let live = self.leases.values().filter(|l| l.expires_ms >= now_ms);
        live.fold((0, 0), |(n, oldest), l| {
            let o = if oldest == 0 {
                l.created_ms
            } else {
                oldest.min(l.created_ms)
            };
            (n + 1, o)
        })
    }
}
