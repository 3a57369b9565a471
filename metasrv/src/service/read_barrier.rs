//! Linearizable reads in batches: one leadership check (`ensure_linearizable`, a heartbeat round
//! to a quorum) serves every read that arrived before it started. A read that arrives while a
//! check is in flight waits for the next one, so it never rides on a check that began before it.
//!
//! A check also gives the leader a lease: it began at `t` and a quorum answered heartbeats sent
//! after `t`, and openraft's followers refuse to vote for anyone else until their leader lease
//! (the maximum election timeout) has passed since they heard from this leader. So no other
//! leader can commit anything before `t` + that lease, and reads that arrive before
//! `t + lease` (a shorter window: the minimum election timeout, leaving the rest for clock
//! rate differences) are served from this node's state without another round. What must stay
//! true: the lease counts from before the check began, on a clock that keeps running while the
//! node does not (CLOCK_BOOTTIME: a node frozen by SIGSTOP or a suspended machine finds its lease
//! expired when it runs again), and only in the term it was earned.
use crate::types::{NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Time since boot, counting time suspended (unlike `Instant`, which is CLOCK_MONOTONIC);
/// None if the clock cannot be read (then no lease is given or used).
fn boot_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[derive(Debug, Clone)]
pub enum ReadCheck {
    NotLeader(Option<NodeId>),
    Unavailable(String),
}

type Waiter = oneshot::Sender<Result<(), ReadCheck>>;

#[derive(Default)]
struct Queue {
    running: bool,
    waiting: Vec<Waiter>,
}

/// Until when reads need no check, and the term the lease was earned in.
#[derive(Clone, Copy)]
struct Lease {
    /// On the `boot_time` clock.
    until: Duration,
    term: u64,
}

pub struct ReadBarrier {
    raft: Raft,
    queue: Arc<Mutex<Queue>>,
    lease: Arc<Mutex<Option<Lease>>>,
    lease_len: Duration,
    /// The planted bug `--plant-bug=skip-read-barrier`: no check at all (chaos proves that its
    /// linearizability checker catches the stale reads this gives).
    unchecked: bool,
}

/// This node's term if it is the leader now, as its Raft core last reported.
fn leader_term(raft: &Raft) -> Option<u64> {
    let m = raft.metrics();
    let m = m.borrow();
    (m.state == ServerState::Leader).then_some(m.current_term)
}

impl ReadBarrier {
    /// `lease_len`: how long after a check began reads are served without another; must be
    /// below openraft's leader lease (the maximum election timeout). Zero: every read checks.
    pub fn new(raft: Raft, lease_len: Duration, unchecked: bool) -> Self {
        if unchecked {
            tracing::warn!(
                "PLANTED BUG (--plant-bug=skip-read-barrier): reads are answered without a \
                 leadership check; for proving the chaos checkers only"
            );
        }
        Self {
            raft,
            queue: Default::default(),
            lease: Default::default(),
            lease_len,
            unchecked,
        }
    }

    fn leased(&self) -> bool {
        let lease = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
        match lease {
            Some(l) if boot_time().is_some_and(|now| now < l.until) => {
                leader_term(&self.raft) == Some(l.term)
            }
            _ => false,
        }
    }

    /// Returns once this node was confirmed leader after the call began (or holds a lease
    /// from such a confirmation) and has applied everything committed before that.
    pub async fn wait(&self) -> Result<(), ReadCheck> {
        if self.unchecked || self.leased() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let (raft, queue) = (self.raft.clone(), self.queue.clone());
            let (lease, lease_len) = (self.lease.clone(), self.lease_len);
            tokio::spawn(drive(raft, queue, lease, lease_len));
        }
        rx.await
            .unwrap_or_else(|_| Err(ReadCheck::Unavailable("read check was dropped".into())))
    }
}

async fn drive(
    raft: Raft,
    queue: Arc<Mutex<Queue>>,
    lease: Arc<Mutex<Option<Lease>>>,
    lease_len: Duration,
) {
    loop {
        let batch = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.is_empty() {
                q.running = false;
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let began = boot_time();
        let term_before = leader_term(&raft);
        let result = match raft.ensure_linearizable().await {
            Ok(_) => {
                // Only a check that stayed within one term as leader earns a lease.
                if let (Some(term), Some(began), false) = (term_before, began, lease_len.is_zero())
                {
                    if leader_term(&raft) == Some(term) {
                        *lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(Lease {
                            until: began + lease_len,
                            term,
                        });
                    }
                }
                Ok(())
            }
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ReadCheck::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(
                ReadCheck::Unavailable(format!("cannot reach a quorum of metadata nodes: {e}")),
            ),
            Err(RaftError::Fatal(f)) => Err(ReadCheck::Unavailable(format!(
                "metadata node stopped: {f}"
            ))),
        };
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::boot_time;
    use std::time::Duration;

    #[test]
    fn the_lease_clock_reads_and_moves_forward() {
        let a = boot_time().expect("CLOCK_BOOTTIME");
        std::thread::sleep(Duration::from_millis(5));
        let b = boot_time().expect("CLOCK_BOOTTIME");
        assert!(b >= a + Duration::from_millis(5), "{a:?} then {b:?}");
    }
}
