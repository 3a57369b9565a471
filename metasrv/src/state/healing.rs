//! Replica bookkeeping for self-healing: replication changes, replicas added by a repair copy,
//! replicas dropped (dead, surplus or corrupt). Pure, like the rest of `State`.
//!
//! Every command names the file by path *and* inode id, so a repair planned against an older
//! version of a file (replaced, removed or renamed since) changes nothing. A replica is never
//! dropped when it is the last one of its chunk, and a server is never added as a replica of a
//! chunk it has been told to delete (the delete order could remove the new copy).
use super::command::{ApplyError, ErrorKind, Reply};
use super::{NodeId, RecordKey, State, MAX_REPLICATION};

/// Remove the replicas `pick` selects; returns them.
fn take_replicas(replicas: &mut Vec<NodeId>, pick: impl Fn(NodeId) -> bool) -> Vec<NodeId> {
    let taken: Vec<NodeId> = replicas.iter().copied().filter(|r| pick(*r)).collect();
    replicas.retain(|r| !pick(*r));
    taken
}

fn precondition(m: String) -> ApplyError {
    ApplyError::new(ErrorKind::FailedPrecondition, m)
}

impl State {
    pub(super) fn set_replication(
        &mut self,
        actor: &str,
        raw: &str,
        replication: u32,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        if replication == 0 || replication > MAX_REPLICATION {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                format!("replication must be between 1 and {MAX_REPLICATION}"),
            ));
        }
        let (p, _) = self.stat(actor, raw)?;
        let admin = self.is_admin(actor);
        let Some(node) = self.nodes.get_mut(&p) else {
            return Err(ApplyError::not_found(&p));
        };
        if node.owner != actor && !admin {
            return Err(ApplyError::denied(format!(
                "permission denied: {p} belongs to another user"
            )));
        }
        let Some(f) = node.file.as_mut() else {
            return Err(precondition(format!(
                "{p} is a directory: replication is set per file"
            )));
        };
        if f.replication != replication {
            f.replication = replication;
            touched.push(RecordKey::Node(p));
        }
        Ok(Reply::Done)
    }

    /// Find chunk `chunk_id` of the file at `path` whose inode id is `file_id`.
    fn chunk_index(&self, path: &str, file_id: &str, chunk_id: &str) -> Result<usize, ApplyError> {
        let stale = || precondition(format!("{path} changed since the repair was planned"));
        let node = self.nodes.get(path).ok_or_else(stale)?;
        if node.id != file_id {
            return Err(stale());
        }
        let f = node.file.as_ref().ok_or_else(stale)?;
        f.chunks
            .iter()
            .position(|c| c.id == chunk_id)
            .ok_or_else(stale)
    }

    /// A verified copy of a chunk now lives on `node`: record it, and drop the replicas in
    /// `drop` (dead or surplus), queueing their deletion.
    pub(super) fn replica_added(
        &mut self,
        path: &str,
        file_id: &str,
        chunk_id: &str,
        node: NodeId,
        drop: &[NodeId],
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let i = self.chunk_index(path, file_id, chunk_id)?;
        if !self.chunk_servers.contains_key(&node) {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                format!("unknown chunk server {node}"),
            ));
        }
        if self
            .pending_deletes
            .get(&node)
            .is_some_and(|s| s.contains(chunk_id))
        {
            return Err(precondition(format!(
                "chunk server {node} is still to delete chunk {chunk_id}"
            )));
        }
        let Some(f) = self.nodes.get_mut(path).and_then(|n| n.file.as_mut()) else {
            return Err(ApplyError::not_found(path));
        };
        let c = &mut f.chunks[i];
        if c.replicas.contains(&node) {
            return Err(ApplyError::new(
                ErrorKind::AlreadyExists,
                format!("chunk server {node} already holds chunk {chunk_id}"),
            ));
        }
        c.replicas.push(node);
        let dropped = take_replicas(&mut c.replicas, |r| r != node && drop.contains(&r));
        c.replicas.sort_unstable();
        touched.push(RecordKey::Node(path.to_string()));
        for d in dropped {
            self.queue_delete(d, chunk_id, touched);
        }
        Ok(Reply::Done)
    }

    /// Remove replicas `nodes` of a chunk (surplus, dead or corrupt) and queue their deletion.
    /// Refused if it would leave the chunk without a replica.
    pub(super) fn drop_replicas(
        &mut self,
        path: &str,
        file_id: &str,
        chunk_id: &str,
        nodes: &[NodeId],
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let i = self.chunk_index(path, file_id, chunk_id)?;
        let Some(f) = self.nodes.get_mut(path).and_then(|n| n.file.as_mut()) else {
            return Err(ApplyError::not_found(path));
        };
        let c = &mut f.chunks[i];
        if c.replicas.iter().all(|r| nodes.contains(r)) {
            return Err(precondition(format!(
                "dropping those replicas would leave chunk {chunk_id} with none"
            )));
        }
        let dropped = take_replicas(&mut c.replicas, |r| nodes.contains(&r));
        if dropped.is_empty() {
            return Ok(Reply::Done);
        }
        touched.push(RecordKey::Node(path.to_string()));
        for d in dropped {
            self.queue_delete(d, chunk_id, touched);
        }
        Ok(Reply::Done)
    }
}

impl State {
    /// Chunks each server holds according to the files' replica lists.
    pub fn referenced_chunks(&self) -> std::collections::HashSet<(&str, NodeId)> {
        let mut out = std::collections::HashSet::new();
        for n in self.nodes.values() {
            if let Some(f) = &n.file {
                for c in &f.chunks {
                    for r in &c.replicas {
                        out.insert((c.id.as_str(), *r));
                    }
                }
            }
        }
        out
    }

    pub(super) fn queue_orphan_deletes(
        &mut self,
        node: NodeId,
        chunks: &[String],
        touched: &mut Vec<RecordKey>,
    ) -> Reply {
        let wanted: std::collections::HashSet<&str> = chunks.iter().map(String::as_str).collect();
        // Fail closed: anything a file lists on this node stays.
        let mut live = std::collections::HashSet::new();
        for n in self.nodes.values() {
            if let Some(f) = &n.file {
                for c in &f.chunks {
                    if wanted.contains(c.id.as_str()) && c.replicas.contains(&node) {
                        live.insert(c.id.clone());
                    }
                }
            }
        }
        let mut count = 0;
        for c in chunks {
            if live.contains(c) || !self.chunk_servers.contains_key(&node) {
                continue;
            }
            if self.queue_delete(node, c, touched) {
                count += 1;
            }
        }
        Reply::Queued { count }
    }
}
