//! Leader watch: replaces a leader that can send but cannot be reached (a half-reachable
//! leader). openraft 0.9 keeps such a leader forever: its heartbeats still arrive, so the
//! followers' leader lease never expires and they refuse every vote, while nobody can reach it
//! to write.
//!
//! Each node probes the leader it follows (a `Hello` with a short deadline, every
//! `PROBE_EVERY`). A node that has not completed a probe for `GIVE_UP_AFTER` reports the leader
//! as unreachable in its own `Hello` replies and asks the other voters. When a majority of the
//! voters (itself included) cannot reach that leader, the node gives it up: it refuses
//! AppendEntries, InstallSnapshot and Vote sent by that node (so its lease expires and the old
//! leader cannot win again while unreachable, which also keeps the cluster from flapping back to
//! it) and triggers an election (`raft.trigger().elect()`). It keeps probing the given-up node
//! and accepts it again once a probe succeeds.
//!
//! What must stay true: a node gives a leader up only on a majority's word, so one node with a
//! bad link of its own cannot depose a leader the others reach; it starts the election only
//! after the old leader's read lease from its acknowledgments has run out (no stale read);
//! giving up never touches the log or the vote (Raft safety is unchanged, only liveness rules
//! are added); a given-up node is accepted again as soon as this node reaches it.
use crate::service::MetaNode;
use crate::types::NodeId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;

const PROBE_EVERY: Duration = Duration::from_millis(250);
const GIVE_UP_AFTER: Duration = Duration::from_millis(1500);

#[derive(Default)]
pub struct LeaderWatch {
    /// The leader this node cannot reach now (0: none), reported to peers in `Hello`.
    unreachable: AtomicU64,
    /// The node whose Raft messages this node refuses (0: none).
    given_up: AtomicU64,
}

impl LeaderWatch {
    pub fn unreachable_leader(&self) -> u64 {
        self.unreachable.load(Ordering::Relaxed)
    }

    /// A vote request from `candidate` while this node cannot reach its leader either: the
    /// candidate gave that leader up on a majority's word, and this node is part of that
    /// majority, so it gives the leader up now rather than at its next probe round (which
    /// can be a second away, and until then its acknowledgments keep the old leader's lease
    /// alive and its vote refused). Returns whether it did.
    pub fn join_give_up(&self, candidate: Option<NodeId>) -> bool {
        let unreachable = self.unreachable.load(Ordering::Relaxed);
        let joins = unreachable != 0
            && candidate.is_some_and(|c| c != unreachable)
            && self
                .given_up
                .compare_exchange(0, unreachable, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if joins {
            tracing::warn!(
                leader = unreachable,
                candidate = ?candidate,
                "a member campaigns and this node cannot reach the leader either: giving it up"
            );
        }
        joins
    }

    /// Refuse Raft messages from a given-up leader.
    pub fn check_sender(&self, sender: Option<NodeId>) -> Result<(), Status> {
        let given_up = self.given_up.load(Ordering::Relaxed);
        match sender {
            Some(s) if given_up != 0 && s == given_up => Err(Status::unavailable(format!(
                "node {s} is not accepted as leader: a majority of members cannot reach it"
            ))),
            _ => Ok(()),
        }
    }
}

/// The probe loop; runs for the life of the node.
pub async fn run(node: Arc<MetaNode>) {
    let w = &node.leader_watch;
    // The node being probed and when a probe of it last succeeded (or probing started).
    let mut target: Option<(NodeId, Instant)> = None;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let m = node.raft.metrics().borrow().clone();
        let given_up = w.given_up.load(Ordering::Relaxed);
        let want = if given_up != 0 {
            Some(given_up)
        } else {
            m.current_leader.filter(|l| *l != node.id)
        };
        let Some(leader) = want else {
            target = None;
            w.unreachable.store(0, Ordering::Relaxed);
            continue;
        };
        let nodes: Vec<(NodeId, String)> = m
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let Some(addr) = nodes.iter().find(|(id, _)| *id == leader).map(|(_, a)| a) else {
            continue;
        };
        if target.map(|(t, _)| t) != Some(leader) {
            target = Some((leader, Instant::now()));
        }
        if crate::bootstrap::hello(&node, leader, addr).await.is_ok() {
            target = Some((leader, Instant::now()));
            w.unreachable.store(0, Ordering::Relaxed);
            if given_up == leader {
                tracing::info!(node = node.id, leader, "given-up leader is reachable again");
                w.given_up.store(0, Ordering::Relaxed);
            }
            continue;
        }
        let since = target.map(|(_, t)| t).unwrap_or_else(Instant::now);
        if since.elapsed() < GIVE_UP_AFTER {
            continue;
        }
        w.unreachable.store(leader, Ordering::Relaxed);
        if given_up == leader {
            continue;
        }
        // Ask the other voters whether they can reach it.
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        let asks = nodes
            .iter()
            .filter(|(id, _)| *id != node.id && *id != leader && voters.contains(id))
            .map(|(id, addr)| {
                let node = &node;
                async move {
                    matches!(crate::bootstrap::hello(node, *id, addr).await,
                        Ok(h) if h.unreachable_leader == leader)
                }
            });
        let agree = 1 + futures::future::join_all(asks)
            .await
            .into_iter()
            .filter(|b| *b)
            .count();
        if voters.contains(&node.id) && agree > voters.len() / 2 {
            tracing::warn!(
                node = node.id,
                leader,
                agree,
                voters = voters.len(),
                "a majority cannot reach the leader: giving it up and starting an election"
            );
            node.metrics.leaders_given_up.inc();
            w.given_up.store(leader, Ordering::Relaxed);
            // `elect` skips this node's own lease check, and the old leader may hold a read
            // lease earned from this node's last acknowledgment (see read_barrier). Refusing
            // its messages from now on, wait that lease out (it is shorter than the maximum
            // election timeout) before any new leader can commit.
            let lease = Duration::from_millis(node.raft.config().election_timeout_max);
            tokio::time::sleep(lease).await;
            let _ = node.raft.trigger().elect().await;
        }
    }
}
