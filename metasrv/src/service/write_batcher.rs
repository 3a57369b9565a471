//! Concurrent writes in batches: while one Raft entry is being committed, new commands queue up;
//! the next entry carries all of them (`CommandV1::Batch`). One log append, one replication
//! round and one apply then serve many clients, which is what lets the group take thousands of
//! writes per second on a small machine. Each command still gets its own result, in order.
use super::{OpError, OpResult};
use crate::state::command::CommandV1;
use crate::state::{Command, Reply, Request};
use crate::types::Raft;
use openraft::error::{ClientWriteError, RaftError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tonic::Status;

/// Most commands in one entry (bounds entry size and apply time).
const MAX_BATCH: usize = 128;

type Waiter = (Command, oneshot::Sender<OpResult<Reply>>);

#[derive(Default)]
struct Queue {
    running: bool,
    waiting: Vec<Waiter>,
}

pub struct WriteBatcher {
    raft: Raft,
    queue: Arc<Mutex<Queue>>,
}

fn clone_err(e: &OpError) -> OpError {
    match e {
        OpError::Status(s) => OpError::Status(Status::new(s.code(), s.message().to_string())),
        OpError::NotLeader(l) => OpError::NotLeader(*l),
    }
}

impl WriteBatcher {
    pub fn new(raft: Raft) -> Self {
        Self {
            raft,
            queue: Default::default(),
        }
    }

    /// Commit `cmd` (alone or with others) and return its own result.
    pub async fn submit(&self, cmd: Command) -> OpResult<Reply> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((cmd, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            tokio::spawn(drive(self.raft.clone(), self.queue.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("write was dropped").into()))
    }
}

async fn write(raft: &Raft, cmd: Command) -> OpResult<Reply> {
    match raft.client_write(Request { cmd }).await {
        Ok(resp) => resp.data.result.map_err(OpError::from),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(OpError::NotLeader(f.leader_id))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(Status::failed_precondition(e.to_string()).into())
        }
        Err(RaftError::Fatal(f)) => {
            Err(Status::unavailable(format!("metadata node stopped: {f}")).into())
        }
    }
}

async fn drive(raft: Raft, queue: Arc<Mutex<Queue>>) {
    loop {
        let mut batch = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.is_empty() {
                q.running = false;
                return;
            }
            let n = q.waiting.len().min(MAX_BATCH);
            q.waiting.drain(..n).collect::<Vec<_>>()
        };
        if batch.len() == 1 {
            let (cmd, tx) = batch.pop().expect("one waiter");
            let _ = tx.send(write(&raft, cmd).await);
            continue;
        }
        let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        match write(&raft, Command::V1(CommandV1::Batch { cmds })).await {
            Ok(Reply::Batch { results }) if results.len() == txs.len() => {
                for (tx, r) in txs.into_iter().zip(results) {
                    let _ = tx.send(r.map_err(OpError::from));
                }
            }
            Ok(_) => {
                for tx in txs {
                    let _ = tx.send(Err(Status::internal(
                        "batch reply does not match the batch",
                    )
                    .into()));
                }
            }
            Err(e) => {
                for tx in txs {
                    let _ = tx.send(Err(clone_err(&e)));
                }
            }
        }
    }
}
