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
    /// What its disks can still take, whatever the capacity says (`None`: not reported).
    pub disk_free: Option<u64>,
    pub chunks: u64,
    /// Bytes of chunks placed on it that its heartbeats have not reported as used yet: counted
    /// as used meanwhile, so the puts of one second do not all pick the same servers.
    pub placed: u64,
    /// When a chunk was last placed on it.
    pub placed_at: Instant,
}

impl ServerView {
    /// Bytes of chunk data it can still take: room under its capacity and on its disks, less
    /// what was placed on it since (`None`: no limit known).
    pub fn free(&self) -> Option<u64> {
        let under_capacity = (self.capacity > 0).then(|| self.capacity.saturating_sub(self.used));
        let on_disk = self.disk_free;
        let free = match (under_capacity, on_disk) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(free.saturating_sub(self.placed))
    }
}

/// Placed bytes still unreported after this long are forgotten (their puts failed or were
/// abandoned, or deletes hid their growth).
const PLACED_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Liveness {
    servers: Mutex<HashMap<NodeId, ServerView>>,
}

impl Liveness {
    /// A heartbeat's view of `id`. Growth of its used bytes since the last one is taken off
    /// the bytes placed on it (they have landed).
    pub fn record(&self, id: NodeId, mut view: ServerView) {
        let mut g = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = g.get(&id) {
            if old.placed_at.elapsed() < PLACED_TTL {
                let landed = view.used.saturating_sub(old.used);
                view.placed = old.placed.saturating_sub(landed);
                view.placed_at = old.placed_at;
            }
        }
        g.insert(id, view);
    }

    /// Count `bytes` more as placed on `id` (until its next heartbeat).
    pub fn add_placed(&self, id: NodeId, bytes: u64) {
        if let Some(v) = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            v.placed = v.placed.saturating_add(bytes);
            v.placed_at = Instant::now();
        }
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

/// A live chunk server as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub id: NodeId,
    /// Bytes of chunk data on it, counting what was just placed there.
    pub used: u64,
    /// Bytes it may hold (0: not reported).
    pub capacity: u64,
    /// Bytes it can still take (`None`: no limit known); see [`ServerView::free`].
    pub free: Option<u64>,
}

impl Room {
    pub fn of(id: NodeId, v: &ServerView) -> Room {
        Room {
            id,
            used: v.used.saturating_add(v.placed),
            capacity: v.capacity,
            free: v.free(),
        }
    }

    fn fits(&self, bytes: u64) -> bool {
        self.free.is_none_or(|f| f >= bytes)
    }

    /// Share of its capacity in use (what "least used" compares, so that servers of different
    /// sizes fill up together).
    fn share(&self) -> f64 {
        match self.capacity {
            0 => 0.0,
            c => self.used as f64 / c as f64,
        }
    }
}

/// Choose up to `replication` distinct servers for each of `chunks` chunks of at most
/// `chunk_bytes` bytes: only servers with room for the chunk (counting what this allocation
/// already placed), least used first, never two replicas of a chunk on one server. A chunk
/// no live server has room for gets no server at all.
pub fn place(
    live: &[Room],
    replication: usize,
    chunks: usize,
    chunk_bytes: u64,
) -> Vec<Vec<NodeId>> {
    let mut rooms = live.to_vec();
    let mut out = Vec::with_capacity(chunks);
    for _ in 0..chunks {
        rooms.sort_by(|a, b| a.share().total_cmp(&b.share()).then(a.id.cmp(&b.id)));
        let mut picked = Vec::with_capacity(replication);
        for r in rooms
            .iter_mut()
            .filter(|r| r.fits(chunk_bytes))
            .take(replication)
        {
            r.used = r.used.saturating_add(chunk_bytes);
            r.free = r.free.map(|f| f - chunk_bytes);
            picked.push(r.id);
        }
        out.push(picked);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{place, Liveness, Room, ServerView};
    use std::time::Instant;

    fn heartbeat(l: &Liveness, used: u64) {
        l.record(
            1,
            ServerView {
                last_seen: Instant::now(),
                capacity: 1000,
                used,
                disk_free: None,
                chunks: 0,
                placed: 0,
                placed_at: Instant::now(),
            },
        );
    }

    #[test]
    fn free_is_the_least_of_capacity_and_disk_less_what_was_placed() {
        let v = |capacity, used, disk_free, placed| ServerView {
            last_seen: Instant::now(),
            capacity,
            used,
            disk_free,
            chunks: 0,
            placed,
            placed_at: Instant::now(),
        };
        assert_eq!(v(1000, 100, None, 0).free(), Some(900));
        assert_eq!(
            v(1000, 100, Some(50), 0).free(),
            Some(50),
            "a disk filled by others"
        );
        assert_eq!(v(1000, 100, Some(5000), 300).free(), Some(600));
        assert_eq!(v(0, 100, Some(70), 30).free(), Some(40));
        assert_eq!(v(0, 100, None, 30).free(), None);
        // A server whose disk is full gets nothing, whatever its capacity.
        let full = Room::of(1, &v(1000, 0, Some(0), 0));
        assert_eq!(place(&[full], 1, 1, 1), vec![Vec::<u64>::new()]);
    }

    #[test]
    fn placed_bytes_count_until_heartbeats_report_them() {
        let l = Liveness::default();
        heartbeat(&l, 100);
        l.add_placed(1, 300);
        assert_eq!(l.get(1).unwrap().placed, 300);
        // A heartbeat that does not see the chunk yet keeps it counted.
        heartbeat(&l, 100);
        assert_eq!(l.get(1).unwrap().placed, 300);
        // One that sees part of it, then all of it.
        heartbeat(&l, 250);
        assert_eq!(l.get(1).unwrap().placed, 150);
        heartbeat(&l, 400);
        assert_eq!(l.get(1).unwrap().placed, 0);
    }

    /// (id, used, capacity): free is what the capacity leaves.
    fn rooms(v: &[(u64, u64, u64)]) -> Vec<Room> {
        v.iter()
            .map(|&(id, used, capacity)| Room {
                id,
                used,
                capacity,
                free: (capacity > 0).then(|| capacity.saturating_sub(used)),
            })
            .collect()
    }

    #[test]
    fn spreads_evenly_and_never_doubles_up() {
        let p = place(
            &rooms(&[(1, 0, 1000), (2, 0, 1000), (3, 0, 1000)]),
            2,
            6,
            10,
        );
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
        assert_eq!(place(&rooms(&[(1, 0, 1000)]), 3, 1, 10), vec![vec![1]]);
        // Least used first.
        assert_eq!(
            place(
                &rooms(&[(1, 100, 1000), (2, 0, 1000), (3, 50, 1000)]),
                1,
                1,
                10
            ),
            vec![vec![2]]
        );
    }

    #[test]
    fn servers_without_room_are_skipped_and_sizes_fill_up_together() {
        // Server 1 has room for one more chunk only; 2 and 3 have plenty.
        let live = rooms(&[(1, 0, 15), (2, 0, 1000), (3, 0, 1000)]);
        let p = place(&live, 2, 4, 10);
        assert_eq!(p.iter().filter(|c| c.contains(&1)).count(), 1, "{p:?}");
        assert!(p.iter().all(|c| c.len() == 2), "{p:?}");
        // Room for nobody: no server at all; room for one: an under-replicated chunk.
        assert_eq!(
            place(&rooms(&[(1, 95, 100), (2, 0, 5)]), 2, 1, 10),
            vec![Vec::<u64>::new()]
        );
        assert_eq!(
            place(&rooms(&[(1, 95, 100), (2, 0, 50)]), 2, 1, 10),
            vec![vec![2]]
        );
        // The same bytes fill a small server's share faster: the big one is less used.
        assert_eq!(
            place(&rooms(&[(1, 500, 1000), (2, 600, 10_000)]), 1, 1, 10),
            vec![vec![2]]
        );
        // A server that reported no capacity has no known limit.
        assert_eq!(place(&rooms(&[(7, 1 << 40, 0)]), 1, 1, 10), vec![vec![7]]);
    }
}
