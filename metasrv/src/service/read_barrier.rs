//! Linearizable reads in batches: one leadership check (`ensure_linearizable`, a heartbeat round
//! to a quorum) serves every read that arrived before it started. A read that arrives while a
//! check is in flight waits for the next one, so it never rides on a check that began before it.
use crate::types::{NodeId, Raft};
use openraft::error::{CheckIsLeaderError, RaftError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

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

pub struct ReadBarrier {
    raft: Raft,
    queue: Arc<Mutex<Queue>>,
}

impl ReadBarrier {
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            queue: Default::default(),
        }
    }

    /// Returns once this node was confirmed leader after the call began and has applied
    /// everything committed before that.
    pub async fn wait(&self) -> Result<(), ReadCheck> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push(tx);
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let (raft, queue) = (self.raft.clone(), self.queue.clone());
            tokio::spawn(drive(raft, queue));
        }
        rx.await
            .unwrap_or_else(|_| Err(ReadCheck::Unavailable("read check was dropped".into())))
    }
}

async fn drive(raft: Raft, queue: Arc<Mutex<Queue>>) {
    loop {
        let batch = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.is_empty() {
                q.running = false;
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let result = match raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
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
