//! Which chunk servers are alive, as this node saw from their heartbeats. Soft state: never
//! replicated, rebuilt from heartbeats (chunk servers heartbeat every metasrv node, so a newly
//! elected leader already knows who is alive).
use crate::types::NodeId;
use std::collections::{HashMap, VecDeque};
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
    /// Chunks placed on it that its heartbeats have not reported as used yet: counted as used
    /// meanwhile, so the puts of one second do not all pick the same servers.
    pub placed: Placed,
}

impl ServerView {
    /// Bytes of chunk data it can still take: room under its capacity and on its disks, less
    /// what was placed on it since (`None`: no limit known).
    pub fn free(&self) -> Option<u64> {
        let under_capacity = (self.capacity > 0).then(|| self.capacity.saturating_sub(self.used));
        let free = match (under_capacity, self.disk_free) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(free.saturating_sub(self.placed.bytes()))
    }
}

/// A placement not seen landed by then is forgotten (its put failed or was abandoned, it was
/// smaller than charged, or deletes hid its growth): each charge expires on its own.
const PLACED_TTL: Duration = Duration::from_secs(10);

/// Bytes placed on a server, per second of placement (oldest first), until they land or expire.
#[derive(Debug, Clone, Default)]
pub struct Placed(VecDeque<(Instant, u64)>);

impl Placed {
    fn add(&mut self, bytes: u64) {
        let now = Instant::now();
        match self.0.back_mut() {
            Some((at, b)) if now.duration_since(*at) < Duration::from_secs(1) => *b += bytes,
            _ => self.0.push_back((now, bytes)),
        }
    }

    /// `bytes` of growth in used were reported: they are the oldest placements landing.
    fn landed(&mut self, mut bytes: u64) {
        self.0.retain(|(at, _)| at.elapsed() < PLACED_TTL);
        while let Some((_, b)) = self.0.front_mut() {
            if *b > bytes {
                *b -= bytes;
                return;
            }
            bytes -= *b;
            self.0.pop_front();
        }
    }

    pub fn bytes(&self) -> u64 {
        self.0
            .iter()
            .filter(|(at, _)| at.elapsed() < PLACED_TTL)
            .map(|(_, b)| b)
            .sum()
    }
}

#[derive(Default)]
pub struct Liveness {
    servers: Mutex<HashMap<NodeId, ServerView>>,
    /// Servers a writer reported stalled, and when (see `STALL_QUARANTINE`).
    stalled: Mutex<HashMap<NodeId, Instant>>,
    listening: Mutex<Listening>,
}

/// Heartbeats from chunk servers arrive many times a second in all (each server sends one a
/// second to every metadata node). A longer gap between any two means this node was paused,
/// starved or cut off, and what it saw of the servers during the gap proves nothing.
pub const MAX_HEARTBEAT_GAP: Duration = Duration::from_secs(2);

/// The current run of heartbeats with no gap longer than `MAX_HEARTBEAT_GAP`.
#[derive(Debug, Default, Clone, Copy)]
struct Listening {
    since: Option<Instant>,
    last: Option<Instant>,
}

impl Listening {
    fn heard(&mut self, at: Instant) {
        let gap = self
            .last
            .is_none_or(|l| at.saturating_duration_since(l) > MAX_HEARTBEAT_GAP);
        if gap {
            self.since = Some(at);
        }
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
    }

    fn since(&self, now: Instant) -> Option<Instant> {
        let last = self.last?;
        (now.saturating_duration_since(last) <= MAX_HEARTBEAT_GAP)
            .then_some(self.since)
            .flatten()
    }
}

/// How long after a writer's stall report a server gets no new chunks. Heartbeats cannot end
/// it sooner: a server whose disk hangs may still heartbeat. A new report starts it again.
pub const STALL_QUARANTINE: Duration = Duration::from_secs(30);

impl Liveness {
    /// A heartbeat's view of `id`. Growth of its used bytes since the last one is taken off
    /// the bytes placed on it (they have landed).
    pub fn record(&self, id: NodeId, mut view: ServerView) {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heard(view.last_seen);
        let mut g = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = g.remove(&id) {
            view.placed = old.placed;
            view.placed.landed(view.used.saturating_sub(old.used));
        }
        g.insert(id, view);
    }

    /// Since when this node has been hearing chunk servers without a gap (`None`: not now).
    /// A server silent for the dead timeout within that time was silent while this node was
    /// listening: its silence is the server's, not this node's.
    pub fn listening_since(&self) -> Option<Instant> {
        self.listening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(Instant::now())
    }

    /// Count `bytes` more as placed on `id` (until its next heartbeat).
    pub fn add_placed(&self, id: NodeId, bytes: u64) {
        if let Some(v) = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            v.placed.add(bytes);
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

    /// A writer saw `id` make no progress: place nothing on it for `STALL_QUARANTINE`.
    pub fn report_stall(&self, id: NodeId) {
        self.stalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    pub fn is_stalled(&self, id: NodeId) -> bool {
        let mut g = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|_, at| at.elapsed() < STALL_QUARANTINE);
        g.contains_key(&id)
    }

    /// Live servers that may take new chunks: heard from recently and not reported stalled.
    pub fn placeable(&self) -> Vec<(NodeId, ServerView)> {
        let mut live = self.live();
        live.retain(|(id, _)| !self.is_stalled(*id));
        live
    }

    /// Placement charges held (one per server per second of placements, each gone after
    /// `PLACED_TTL` or when it lands) and the bytes they charge, for metrics. Bounded by
    /// servers × `PLACED_TTL` in seconds.
    pub fn placement_charges(&self) -> (usize, u64) {
        let g = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        g.values().fold((0, 0), |(n, b), v| {
            (n + v.placed.0.len(), b + v.placed.bytes())
        })
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
    /// Bytes it can still take (`None`: no limit known); see [`ServerView::free`].
    pub free: Option<u64>,
}

impl Room {
    pub fn of(id: NodeId, v: &ServerView) -> Room {
        Room {
            id,
            used: v.used.saturating_add(v.placed.bytes()),
            free: v.free(),
        }
    }

    fn fits(&self, bytes: u64) -> bool {
        self.free.is_none_or(|f| f >= bytes)
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
        // Least used in bytes, as repair and balance count it.
        rooms.sort_by_key(|r| (r.used, r.id));
        let mut picked = Vec::with_capacity(replication);
        for r in rooms
            .iter_mut()
            .filter(|r| r.fits(chunk_bytes))
            .take(replication)
        {
            r.used = r.used.saturating_add(chunk_bytes);
            r.free = r.free.map(|f| f.saturating_sub(chunk_bytes));
            picked.push(r.id);
        }
        out.push(picked);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{place, Listening, Liveness, Placed, Room, ServerView, PLACED_TTL};
    use std::time::{Duration, Instant};

    #[test]
    fn listening_starts_again_after_a_gap_and_ends_when_heartbeats_stop() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut l = Listening::default();
        assert_eq!(l.since(s(0.0)), None, "nothing heard yet");
        for at in [0.0, 0.9, 1.5, 3.4] {
            l.heard(s(at));
        }
        assert_eq!(l.since(s(4.0)), Some(s(0.0)), "gaps of 2 s at most");
        l.heard(s(3.0));
        assert_eq!(l.since(s(4.0)), Some(s(0.0)), "a late report is no gap");
        assert_eq!(l.since(s(5.5)), None, "silent for 2.1 s: not listening now");
        l.heard(s(5.5));
        assert_eq!(l.since(s(6.0)), Some(s(5.5)), "a new run after the gap");
    }

    fn view(capacity: u64, used: u64, disk_free: Option<u64>) -> ServerView {
        ServerView {
            last_seen: Instant::now(),
            capacity,
            used,
            disk_free,
            chunks: 0,
            placed: Placed::default(),
        }
    }

    fn placed(l: &Liveness) -> u64 {
        l.get(1).unwrap().placed.bytes()
    }

    #[test]
    fn free_is_the_least_of_capacity_and_disk_less_what_was_placed() {
        assert_eq!(view(1000, 100, None).free(), Some(900));
        assert_eq!(
            view(1000, 100, Some(50)).free(),
            Some(50),
            "a disk filled by others"
        );
        let mut v = view(1000, 100, Some(5000));
        v.placed.add(300);
        assert_eq!(v.free(), Some(600));
        let mut v = view(0, 100, Some(70));
        v.placed.add(30);
        assert_eq!(v.free(), Some(40));
        assert_eq!(view(0, 100, None).free(), None);
        // A server whose disk is full gets nothing, whatever its capacity.
        let full = Room::of(1, &view(1000, 0, Some(0)));
        assert_eq!(place(&[full], 1, 1, 1), vec![Vec::<u64>::new()]);
    }

    #[test]
    fn placed_bytes_count_until_heartbeats_report_them_or_they_expire() {
        let l = Liveness::default();
        l.record(1, view(1000, 100, None));
        l.add_placed(1, 300);
        assert_eq!(placed(&l), 300);
        assert_eq!(Room::of(1, &l.get(1).unwrap()).used, 400);
        // A heartbeat that does not see the chunk yet keeps it counted.
        l.record(1, view(1000, 100, None));
        assert_eq!(placed(&l), 300);
        // One that sees part of it, then all of it.
        l.record(1, view(1000, 250, None));
        assert_eq!(placed(&l), 150);
        l.record(1, view(1000, 400, None));
        assert_eq!(placed(&l), 0);
        // A charge that never lands is forgotten after the TTL, on its own.
        let mut p = Placed::default();
        p.0.push_back((Instant::now() - PLACED_TTL, 500));
        p.add(20);
        assert_eq!(p.bytes(), 20);
        p.landed(5);
        assert_eq!((p.0.len(), p.bytes()), (1, 15));
    }

    /// (id, used, free).
    fn rooms(v: &[(u64, u64, Option<u64>)]) -> Vec<Room> {
        v.iter()
            .map(|&(id, used, free)| Room { id, used, free })
            .collect()
    }

    #[test]
    fn spreads_evenly_and_never_doubles_up() {
        let p = place(
            &rooms(&[(1, 0, None), (2, 0, None), (3, 0, None)]),
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
        assert_eq!(place(&rooms(&[(1, 0, None)]), 3, 1, 10), vec![vec![1]]);
        // Least used first.
        assert_eq!(
            place(
                &rooms(&[(1, 100, None), (2, 0, None), (3, 50, None)]),
                1,
                1,
                10
            ),
            vec![vec![2]]
        );
    }

    #[test]
    fn servers_without_room_are_skipped() {
        // Server 1 has room for one more chunk only; 2 and 3 have plenty.
        let live = rooms(&[(1, 0, Some(15)), (2, 0, Some(1000)), (3, 0, None)]);
        let p = place(&live, 2, 4, 10);
        assert_eq!(p.iter().filter(|c| c.contains(&1)).count(), 1, "{p:?}");
        assert!(p.iter().all(|c| c.len() == 2), "{p:?}");
        // Room for nobody: no server at all; room for one: an under-replicated chunk.
        assert_eq!(
            place(&rooms(&[(1, 95, Some(5)), (2, 0, Some(5))]), 2, 1, 10),
            vec![Vec::<u64>::new()]
        );
        assert_eq!(
            place(&rooms(&[(1, 95, Some(5)), (2, 0, Some(50))]), 2, 1, 10),
            vec![vec![2]]
        );
    }
}
