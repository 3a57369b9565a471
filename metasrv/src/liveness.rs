//! Which chunk servers are alive, as this node saw from their heartbeats. Soft state: never
//! replicated, rebuilt from heartbeats (chunk servers heartbeat every metasrv node, so a newly
//! elected leader already knows who is alive).
use crate::types::NodeId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A chunk server not heard from for this long is not given new chunks.
pub const LIVE_WINDOW: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct ServerView {
    pub last_seen: Instant,
    pub capacity: u64,
    pub used: u64,
    pub chunks: u64,
}

#[derive(Default)]
pub struct Liveness {
    servers: Mutex<HashMap<NodeId, ServerView>>,
}

impl Liveness {
    pub fn record(&self, id: NodeId, view: ServerView) {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, view);
    }

    pub fn get(&self, id: NodeId) -> Option<ServerView> {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn is_live(&self, id: NodeId) -> bool {
        self.get(id)
            .is_some_and(|v| v.last_seen.elapsed() < LIVE_WINDOW)
    }

    /// Live servers with their used bytes.
    pub fn live(&self) -> Vec<(NodeId, ServerView)> {
        let g = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .filter(|(_, v)| v.last_seen.elapsed() < LIVE_WINDOW)
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

/// Choose `replication` distinct servers per chunk, least used first (counting what this
/// allocation already placed), never two replicas of a chunk on one server.
pub fn place(
    live: &[(NodeId, u64)],
    replication: usize,
    chunks: usize,
    chunk_size: u64,
) -> Vec<Vec<NodeId>> {
    let mut load: Vec<(u64, NodeId)> = live.iter().map(|(id, used)| (*used, *id)).collect();
    let mut out = Vec::with_capacity(chunks);
    for _ in 0..chunks {
        load.sort();
        let picked: Vec<NodeId> = load.iter().take(replication).map(|(_, id)| *id).collect();
        for entry in load.iter_mut().take(replication) {
            entry.0 += chunk_size;
        }
        out.push(picked);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::place;

    #[test]
    fn spreads_evenly_and_never_doubles_up() {
        let p = place(&[(1, 0), (2, 0), (3, 0)], 2, 6, 10);
        let mut count = [0; 4];
        for c in &p {
            assert_eq!(c.len(), 2);
            assert_ne!(c[0], c[1]);
            for n in c {
                count[*n as usize] += 1;
            }
        }
        assert_eq!(&count[1..], &[4, 4, 4]);
        // Fewer servers than the replication factor: use all of them.
        assert_eq!(place(&[(1, 0)], 3, 1, 10), vec![vec![1]]);
        // Least used first.
        assert_eq!(place(&[(1, 100), (2, 0), (3, 50)], 1, 1, 10), vec![vec![2]]);
    }
}
