//! A writer's side of a write lease: a write still open `lease_after` after its first
//! allocation takes a lease and renews it until the commit, so its chunks are never collected
//! however long it takes (hours: a 1 TB put, a log file open in a mount, a slow link). Short
//! writes never take one and cost nothing.
//!
//! What must stay true: every chunk is added to the lease while its write token is still in
//! the commit window (the lease is taken at a third of that window, then each renewal adds the
//! chunks allocated since the last); a renewal that fails for good (the lease expired) is
//! remembered and the commit then fails rather than being acknowledged; dropping the lease
//! stops the renewals (the lease expires on its own).
use crate::meta::MetaConn;
use crate::rpc;
use dfs_proto::{AllocateReply, AllocatedChunk, LeasedChunk, RenewLeaseRequest};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// Chunks allocated since the last successful renewal.
    pending: Vec<LeasedChunk>,
    /// The lease was taken (later renewals must find it).
    taken: bool,
    /// Why the lease is lost, when it is.
    lost: Option<String>,
}

/// The lease of one write; renewed in the background while it lives.
pub struct WriteLease {
    id: String,
    shared: Arc<Mutex<Shared>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WriteLease {
    /// Start the clock for the write to `path` from its first allocation's reply (a leader
    /// that keeps no leases says 0: then nothing is ever renewed).
    pub fn start(conn: &MetaConn, path: &str, first: &AllocateReply) -> WriteLease {
        let id = crate::meta::new_request_id();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = (first.lease_after_ms > 0).then(|| {
            let after = Duration::from_millis(first.lease_after_ms);
            let every = Duration::from_millis(first.lease_renew_ms.max(100));
            tokio::spawn(renew_loop(
                conn.fork(),
                id.clone(),
                path.to_string(),
                shared.clone(),
                after,
                every,
            ))
        });
        let lease = WriteLease { id, shared, task };
        lease.add(&first.chunks);
        lease
    }

    /// Chunks just allocated to this write.
    pub fn add(&self, chunks: &[AllocatedChunk]) {
        if self.task.is_none() {
            return;
        }
        lock(&self.shared)
            .pending
            .extend(chunks.iter().map(|c| LeasedChunk {
                chunk_id: c.chunk_id.clone(),
                token: c.token.clone(),
            }));
    }

    /// The lease id to send with the commit (empty when none was taken), or why the write can
    /// no longer be committed.
    pub fn for_commit(&self) -> Result<String, crate::Error> {
        let s = lock(&self.shared);
        match (&s.lost, s.taken) {
            (Some(why), _) => Err(crate::Error::Other(why.clone())),
            (None, true) => Ok(self.id.clone()),
            (None, false) => Ok(String::new()),
        }
    }
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn renew_loop(
    conn: MetaConn,
    id: String,
    path: String,
    shared: Arc<Mutex<Shared>>,
    after: Duration,
    every: Duration,
) {
    tokio::time::sleep(after).await;
    loop {
        let (chunks, create) = {
            let s = lock(&shared);
            (s.pending.clone(), !s.taken)
        };
        let sent = chunks.len();
        let req = RenewLeaseRequest {
            lease_id: id.clone(),
            path: path.clone(),
            create,
            chunks,
        };
        match rpc!(conn, renew_lease, req) {
            Ok(_) => {
                let mut s = lock(&shared);
                s.taken = true;
                s.pending.drain(..sent);
            }
            // Unavailable: tried again at the next tick (the lease outlives two missed ones).
            Err(e) if e.code() == tonic::Code::Unavailable => {}
            Err(e) => {
                lock(&shared).lost = Some(format!(
                    "{path}: the write lease could not be kept ({}); write the file again",
                    crate::error::status_line(&e)
                ));
                return;
            }
        }
        tokio::time::sleep(every).await;
    }
}
