//! A writer's side of a write lease: a write still open `lease_after` after its first
//! allocation takes a lease and renews it until the commit, so its chunks are never collected
//! however long it takes (hours: a 1 TB put, a log file open in a mount, a slow link). Short
//! writes never take one and cost nothing.
//!
//! What must stay true: every chunk is added to the lease while its write token is still in
//! the commit window (the lease is taken at a third of that window, then each renewal adds the
//! chunks allocated since the last); a renewal that fails for good (the lease expired) is
//! remembered and the commit then fails rather than being acknowledged. The lease outlives
//! commits (a file kept open is committed at each fsync); dropping it stops the renewals and
//! releases it (best effort: otherwise it expires on its own).
use crate::meta::MetaConn;
use crate::rpc;
use dfs_proto::{AllocateReply, AllocatedChunk, LeasedChunk, RenewLeaseRequest};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// When a write must hold a lease and how often it renews it, as the leader said in an
/// allocation (`after_ms` 0: the leader keeps no leases).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseTiming {
    pub after_ms: u64,
    pub renew_ms: u64,
}

impl LeaseTiming {
    pub fn of(reply: &AllocateReply) -> LeaseTiming {
        LeaseTiming {
            after_ms: reply.lease_after_ms,
            renew_ms: reply.lease_renew_ms,
        }
    }
}

#[derive(Default)]
struct Shared {
    id: String,
    /// Chunks added since the last successful renewal.
    pending: Vec<LeasedChunk>,
    /// The lease was taken (later renewals must find it).
    taken: bool,
    /// Why the lease is lost, when it is.
    lost: Option<String>,
}

/// The lease of one write; renewed in the background once the write is old enough.
pub struct WriteLease {
    path: String,
    conn: Arc<MetaConn>,
    shared: Arc<Mutex<Shared>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The runtime it was made in: a lease dropped on another thread (a mount's FUSE thread
    /// closing a file) still tells the leader.
    rt: Option<tokio::runtime::Handle>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WriteLease {
    /// A lease for a write to `path`, taken only once chunks are added and time passes.
    pub fn new(conn: &MetaConn, path: &str) -> WriteLease {
        WriteLease {
            path: path.to_string(),
            conn: Arc::new(conn.fork()),
            shared: Arc::new(Mutex::new(Shared {
                id: crate::meta::new_request_id(),
                ..Default::default()
            })),
            task: Mutex::new(None),
            rt: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The lease of a put whose first allocation is `first`.
    pub fn start(conn: &MetaConn, path: &str, first: &AllocateReply) -> WriteLease {
        let lease = WriteLease::new(conn, path);
        lease.add(&first.chunks, LeaseTiming::of(first));
        lease
    }

    /// Chunks just allocated to this write (call inside the Tokio runtime).
    pub fn add(&self, chunks: &[AllocatedChunk], timing: LeaseTiming) {
        for c in chunks {
            self.add_one(&c.chunk_id, &c.token, timing);
        }
    }

    /// One chunk of this write, with its write token (call inside the Tokio runtime). The
    /// first one starts the clock.
    pub fn add_one(&self, chunk_id: &str, token: &str, timing: LeaseTiming) {
        if timing.after_ms == 0 {
            return;
        }
        lock(&self.shared).pending.push(LeasedChunk {
            chunk_id: chunk_id.to_string(),
            token: token.to_string(),
        });
        let mut task = lock(&self.task);
        if task.is_none() {
            *task = Some(tokio::spawn(renew_loop(
                self.conn.clone(),
                self.path.clone(),
                self.shared.clone(),
                Duration::from_millis(timing.after_ms),
                Duration::from_millis(timing.renew_ms.max(100)),
            )));
        }
    }

    /// The lease id to send with the commit (empty when none was taken), or why the write can
    /// no longer be committed.
    pub fn for_commit(&self) -> Result<String, crate::Error> {
        let s = lock(&self.shared);
        match (&s.lost, s.taken) {
            (Some(why), _) => Err(crate::Error::Other(why.clone())),
            (None, true) => Ok(s.id.clone()),
            (None, false) => Ok(String::new()),
        }
    }
}

impl WriteLease {
    /// The write is over: stop renewing and tell the leader (waits for the answer; errors
    /// are ignored, the lease then expires on its own).
    pub async fn release(self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let (id, taken) = {
            let mut s = lock(&self.shared);
            (s.id.clone(), std::mem::take(&mut s.taken))
        };
        if taken {
            let req = RenewLeaseRequest {
                lease_id: id,
                release: true,
                ..Default::default()
            };
            let _ = rpc!(self.conn, renew_lease, req);
        }
    }
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
        let (id, taken) = {
            let s = lock(&self.shared);
            (s.id.clone(), s.taken)
        };
        // Tell the leader the write is over; if this is lost the lease expires anyway.
        if let (true, Some(rt)) = (taken, &self.rt) {
            let conn = self.conn.clone();
            rt.spawn(async move {
                let req = RenewLeaseRequest {
                    lease_id: id,
                    release: true,
                    ..Default::default()
                };
                let _ = rpc!(conn, renew_lease, req);
            });
        }
    }
}

async fn renew_loop(
    conn: Arc<MetaConn>,
    path: String,
    shared: Arc<Mutex<Shared>>,
    after: Duration,
    every: Duration,
) {
    tokio::time::sleep(after).await;
    loop {
        let (id, chunks, create) = {
            let s = lock(&shared);
            (s.id.clone(), s.pending.clone(), !s.taken)
        };
        let sent = chunks.len();
        let req = RenewLeaseRequest {
            lease_id: id.clone(),
            path: path.clone(),
            create,
            chunks,
            release: false,
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
