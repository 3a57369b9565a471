//! Repair planning: which chunks lack replicas, in what order to copy them, from where to
//! where, and which replicas to drop. Pure (no IO, no clock): the healer feeds it the applied
//! state and a view of the chunk servers, and executes what it returns.
//!
//! Rules:
//! - A replica counts as *good* when its server is live and nobody reported it bad. A replica
//!   on a server that is silent but not yet declared dead is neither good nor dropped: the
//!   server may come back (a restart is not a death), so no copy is made while good plus silent
//!   replicas reach the replication factor.
//! - A chunk with fewer good (+ silent) replicas than its file's replication factor gets one copy
//!   per missing replica, from a good replica to a live server that holds no replica of it,
//!   has no delete order for it and has room for it, least used first. The copy's record also drops the chunk's
//!   dead and bad replicas (queued for deletion).
//! - Most endangered first: fewer good replicas first, then the larger deficit.
//! - With enough good replicas, dead and bad replicas are dropped; surplus good replicas (after
//!   a replication decrease) are dropped from the most used servers, only while no replica is
//!   silent or dead.
//! - A chunk with no good replica cannot be repaired here (fsck reports it missing).
use crate::state::{ChunkRef, State};
use crate::types::NodeId;
use std::collections::{BTreeMap, HashSet};

/// What the planner knows about one chunk server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHealth {
    /// Heard from recently; `used` bytes of chunk data.
    Live { used: u64 },
    /// Silent, but for less than the dead timeout.
    Silent,
    /// Silent for longer than the dead timeout.
    Dead,
}

/// The servers' view and the replicas reported bad, as of one planning pass.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub servers: BTreeMap<NodeId, ServerHealth>,
    /// (chunk id, server) pairs a reader or scrubber found corrupt.
    pub bad: HashSet<(String, NodeId)>,
    /// Live servers not to copy to for now (a recent copy to them failed).
    pub avoid: HashSet<NodeId>,
    /// Bytes free on live servers that reported a capacity (absent: no limit known).
    pub free: BTreeMap<NodeId, u64>,
}

impl View {
    /// Bytes used on each live server.
    pub fn live_load(&self) -> BTreeMap<NodeId, u64> {
        self.servers
            .iter()
            .filter_map(|(id, h)| match h {
                ServerHealth::Live { used } => Some((*id, *used)),
                _ => None,
            })
            .collect()
    }

    /// Whether `n` has room for `bytes` more, given what `free` (a working copy of
    /// `self.free`) says is left.
    fn fits(free: &BTreeMap<NodeId, u64>, n: NodeId, bytes: u64) -> bool {
        free.get(&n).is_none_or(|f| *f >= bytes)
    }

    fn health(&self, n: NodeId) -> ServerHealth {
        // A replica on an unregistered server can never be read again.
        self.servers.get(&n).copied().unwrap_or(ServerHealth::Dead)
    }
}

/// How one chunk's replicas stand.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkHealth {
    pub good: Vec<NodeId>,
    /// On silent servers (may come back).
    pub silent: Vec<NodeId>,
    /// On dead or unknown servers.
    pub dead: Vec<NodeId>,
    /// Reported bad (on live servers).
    pub bad: Vec<NodeId>,
}

impl ChunkHealth {
    /// Replicas not readable right now (silent or dead).
    pub fn missing(&self) -> Vec<NodeId> {
        let mut m = self.silent.clone();
        m.extend(&self.dead);
        m.sort_unstable();
        m
    }
}

pub fn classify(c: &ChunkRef, view: &View) -> ChunkHealth {
    let mut h = ChunkHealth::default();
    for &r in &c.replicas {
        match view.health(r) {
            ServerHealth::Live { .. } if view.bad.contains(&(c.id.clone(), r)) => h.bad.push(r),
            ServerHealth::Live { .. } => h.good.push(r),
            ServerHealth::Silent => h.silent.push(r),
            ServerHealth::Dead => h.dead.push(r),
        }
    }
    h
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub path: String,
    pub file_id: String,
    pub chunk_id: String,
    pub size: u64,
    pub crc32c: u32,
    /// Good replicas to copy from, in order of preference.
    pub sources: Vec<NodeId>,
    pub target: NodeId,
    /// Replicas to drop once the copy is recorded (dead and bad ones).
    pub drop: Vec<NodeId>,
    /// Good replicas left now (lower is more urgent).
    pub good: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    pub path: String,
    pub file_id: String,
    pub chunk_id: String,
    pub nodes: Vec<NodeId>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Most endangered first.
    pub copies: Vec<Copy>,
    pub drops: Vec<Drop>,
    /// Chunks with no good replica (cannot be copied).
    pub lost: usize,
    /// Chunks with a missing replica that no live server can take.
    pub stuck: usize,
}

/// Plan the repairs for the whole namespace.
pub fn plan(st: &State, view: &View) -> Plan {
    let mut load = view.live_load();
    let mut free = view.free.clone();
    let mut out = Plan::default();
    for (path, node) in &st.nodes {
        let Some(f) = &node.file else { continue };
        let want = f.replication as usize;
        for c in &f.chunks {
            let h = classify(c, view);
            let mut drop = h.dead.clone();
            drop.extend(&h.bad);
            let present = h.good.len() + h.silent.len();
            if present < want {
                if h.good.is_empty() {
                    out.lost += 1;
                    continue;
                }
                let mut sources = h.good.clone();
                sources.sort_by_key(|s| load.get(s).copied().unwrap_or(u64::MAX));
                // Targets already chosen for this chunk (each chunk is visited once, so no
                // other planned copy can be of it: no search of every copy planned so far,
                // which made a plan of 70,000 copies take the leader 20 s of CPU).
                let mut chosen: Vec<NodeId> = Vec::new();
                for _ in present..want {
                    let pending = |n: NodeId| {
                        st.pending_deletes
                            .get(&n)
                            .is_some_and(|s| s.contains(&c.id))
                    };
                    let target = load
                        .iter()
                        .filter(|(n, _)| {
                            !c.replicas.contains(n) && !pending(**n) && !view.avoid.contains(n)
                        })
                        .filter(|(n, _)| !chosen.contains(n))
                        .filter(|(n, _)| View::fits(&free, **n, c.size))
                        .min_by_key(|(n, used)| (**used, **n))
                        .map(|(n, _)| *n);
                    let Some(target) = target else {
                        out.stuck += 1;
                        break;
                    };
                    chosen.push(target);
                    if let Some(l) = load.get_mut(&target) {
                        *l += c.size;
                    }
                    if let Some(f) = free.get_mut(&target) {
                        *f = f.saturating_sub(c.size);
                    }
                    out.copies.push(Copy {
                        path: path.clone(),
                        file_id: node.id.clone(),
                        chunk_id: c.id.clone(),
                        size: c.size,
                        crc32c: c.crc32c,
                        sources: sources.clone(),
                        target,
                        drop: drop.clone(),
                        good: h.good.len(),
                    });
                }
            } else if h.good.len() >= want && !drop.is_empty() {
                drop.sort_unstable();
                out.drops.push(Drop {
                    path: path.clone(),
                    file_id: node.id.clone(),
                    chunk_id: c.id.clone(),
                    nodes: drop,
                });
            } else if h.good.len() > want && h.silent.is_empty() {
                let mut surplus = h.good.clone();
                // Most used first.
                surplus.sort_by_key(|s| std::cmp::Reverse((load.get(s).copied().unwrap_or(0), *s)));
                surplus.truncate(h.good.len() - want);
                for s in &surplus {
                    if let Some(l) = load.get_mut(s) {
                        *l = l.saturating_sub(c.size);
                    }
                }
                surplus.sort_unstable();
                out.drops.push(Drop {
                    path: path.clone(),
                    file_id: node.id.clone(),
                    chunk_id: c.id.clone(),
                    nodes: surplus,
                });
            }
        }
    }
    // Stable: within one urgency, namespace order.
    out.copies
        .sort_by_key(|c| (c.good, std::cmp::Reverse(c.drop.len())));
    out
}

/// One rebalancing move: copy a replica from `from` to `to`, then drop it from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub path: String,
    pub file_id: String,
    pub chunk_id: String,
    pub size: u64,
    pub crc32c: u32,
    pub from: NodeId,
    pub to: NodeId,
}

/// Plan moves from the most used live server to the least used one until their difference is
/// at most `threshold` bytes (or `max_moves` is reached). Only chunks whose replicas are all
/// good and exactly as many as wanted move (repairs come first), each at most once, never to a
/// server that holds it, has a delete order for it or lacks room for it, and only when the
/// move narrows the gap.
pub fn balance(st: &State, view: &View, threshold: u64, max_moves: usize) -> Vec<Move> {
    let mut load = view.live_load();
    let mut free = view.free.clone();
    if load.len() < 2 {
        return Vec::new();
    }
    // Movable chunks per server.
    let mut on: BTreeMap<NodeId, Vec<(&String, &str, &ChunkRef)>> = BTreeMap::new();
    for (path, node) in &st.nodes {
        let Some(f) = &node.file else { continue };
        for c in &f.chunks {
            let h = classify(c, view);
            if h.good.len() != c.replicas.len() || c.replicas.len() != f.replication as usize {
                continue;
            }
            for r in &c.replicas {
                on.entry(*r).or_default().push((path, node.id.as_str(), c));
            }
        }
    }
    let mut moved: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    while out.len() < max_moves {
        let (&hi, &hi_load) = load
            .iter()
            .max_by_key(|(id, l)| (**l, std::cmp::Reverse(**id)))
            .unwrap_or((&0, &0));
        let pending =
            |n: NodeId, id: &str| st.pending_deletes.get(&n).is_some_and(|s| s.contains(id));
        let candidates = on.get(&hi).map(Vec::as_slice).unwrap_or(&[]);
        // The least used server that can take a chunk which narrows the gap; a full one is
        // passed over for the next.
        let mut targets: Vec<(NodeId, u64)> = load
            .iter()
            .filter(|(id, _)| **id != hi)
            .map(|(id, l)| (*id, *l))
            .collect();
        targets.sort_by_key(|(id, l)| (*l, *id));
        // A target without room for even the smallest chunk is not scanned at all.
        let smallest = candidates.iter().map(|(_, _, c)| c.size).min().unwrap_or(0);
        let pick = targets
            .iter()
            .take_while(|(_, lo_load)| hi_load.saturating_sub(*lo_load) > threshold)
            .filter(|(lo, _)| View::fits(&free, *lo, smallest))
            .find_map(|&(lo, lo_load)| {
                let gap = hi_load - lo_load;
                candidates
                    .iter()
                    .find(|(_, _, c)| {
                        !moved.contains(c.id.as_str())
                            && !c.replicas.contains(&lo)
                            && !pending(lo, &c.id)
                            && c.size > 0
                            && c.size < gap
                            && View::fits(&free, lo, c.size)
                    })
                    .map(|m| (lo, m))
            });
        let Some((lo, (path, file_id, c))) = pick else {
            break;
        };
        moved.insert(c.id.as_str());
        if let Some(l) = load.get_mut(&hi) {
            *l = l.saturating_sub(c.size);
        }
        if let Some(l) = load.get_mut(&lo) {
            *l += c.size;
        }
        if let Some(f) = free.get_mut(&lo) {
            *f = f.saturating_sub(c.size);
        }
        if let Some(f) = free.get_mut(&hi) {
            *f = f.saturating_add(c.size);
        }
        out.push(Move {
            path: (*path).clone(),
            file_id: file_id.to_string(),
            chunk_id: c.id.clone(),
            size: c.size,
            crc32c: c.crc32c,
            from: hi,
            to: lo,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChunkServerEntry, FileData, Inode};

    /// (path, replication, [(chunk id, replicas)]).
    type FileSpec<'a> = (&'a str, u32, &'a [(&'a str, &'a [NodeId])]);

    fn st(files: &[FileSpec], servers: u64) -> State {
        let mut s = State::default();
        for id in 1..=servers {
            s.chunk_servers.insert(
                id,
                ChunkServerEntry {
                    id,
                    uuid: format!("u{id}"),
                    addr: format!("a:{id}"),
                    registered_ms: 0,
                },
            );
        }
        for (path, repl, chunks) in files {
            s.nodes.insert(
                path.to_string(),
                Inode {
                    id: format!("id{path}"),
                    owner: "admin".into(),
                    created_ms: 0,
                    modified_ms: 0,
                    file: Some(FileData {
                        size: 10 * chunks.len() as u64,
                        replication: *repl,
                        sha256: String::new(),
                        chunk_size: 10,
                        chunks: chunks
                            .iter()
                            .map(|(id, r)| ChunkRef {
                                id: id.to_string(),
                                size: 10,
                                crc32c: 7,
                                replicas: r.to_vec(),
                            })
                            .collect(),
                    }),
                    ..Default::default()
                },
            );
        }
        s
    }

    fn view(h: &[(NodeId, ServerHealth)]) -> View {
        View {
            servers: h.iter().copied().collect(),
            bad: HashSet::new(),
            avoid: HashSet::new(),
            free: BTreeMap::new(),
        }
    }

    use ServerHealth::*;

    #[test]
    fn healthy_cluster_needs_nothing() {
        let s = st(&[("/a", 2, &[("c1", &[1, 2]), ("c2", &[2, 3])])], 3);
        let v = view(&[
            (1, Live { used: 0 }),
            (2, Live { used: 0 }),
            (3, Live { used: 0 }),
        ]);
        assert_eq!(plan(&s, &v), Plan::default());
    }

    #[test]
    fn silent_server_is_not_dead_yet() {
        let s = st(&[("/a", 2, &[("c1", &[1, 2])])], 3);
        let v = view(&[(1, Silent), (2, Live { used: 0 }), (3, Live { used: 0 })]);
        assert_eq!(plan(&s, &v), Plan::default());
    }

    #[test]
    fn dead_replica_is_copied_to_a_new_server_and_dropped() {
        let s = st(&[("/a", 2, &[("c1", &[1, 2])])], 4);
        let v = view(&[
            (1, Dead),
            (2, Live { used: 0 }),
            (3, Live { used: 50 }),
            (4, Live { used: 5 }),
        ]);
        let p = plan(&s, &v);
        assert_eq!(p.copies.len(), 1);
        let c = &p.copies[0];
        assert_eq!(
            (c.target, c.sources.clone(), c.drop.clone()),
            (4, vec![2], vec![1])
        );
        assert_eq!(
            (c.path.as_str(), c.file_id.as_str(), c.size, c.crc32c),
            ("/a", "id/a", 10, 7)
        );
        assert!(p.drops.is_empty());
    }

    #[test]
    fn most_endangered_first_and_targets_spread() {
        let s = st(
            &[
                ("/a", 3, &[("two-left", &[1, 3, 4])]),
                ("/b", 3, &[("one-left", &[1, 2, 5])]),
            ],
            6,
        );
        let v = view(&[
            (1, Dead),
            (2, Dead),
            (3, Live { used: 0 }),
            (4, Live { used: 0 }),
            (5, Live { used: 0 }),
            (6, Live { used: 0 }),
        ]);
        let p = plan(&s, &v);
        let order: Vec<&str> = p.copies.iter().map(|c| c.chunk_id.as_str()).collect();
        assert_eq!(order, ["one-left", "one-left", "two-left"]);
        // Two copies of one chunk never go to the same server, nor to a holder.
        assert_ne!(p.copies[0].target, p.copies[1].target);
        for c in &p.copies {
            assert!(![1, 2].contains(&c.target));
        }
    }

    #[test]
    fn lost_and_stuck_chunks_are_counted() {
        let s = st(&[("/a", 2, &[("gone", &[1]), ("full", &[2, 1])])], 2);
        let v = view(&[(1, Dead), (2, Live { used: 0 })]);
        let p = plan(&s, &v);
        assert_eq!((p.lost, p.stuck, p.copies.len()), (1, 1, 0));
    }

    #[test]
    fn a_failing_target_is_avoided() {
        let s = st(&[("/a", 2, &[("c1", &[1, 2])])], 4);
        let mut v = view(&[
            (1, Dead),
            (2, Live { used: 0 }),
            (3, Live { used: 0 }),
            (4, Live { used: 9 }),
        ]);
        v.avoid.insert(3);
        assert_eq!(plan(&s, &v).copies[0].target, 4);
    }

    #[test]
    fn copies_go_only_where_there_is_room() {
        // Chunks are 10 bytes: 3 is least used but has 5 bytes free, 4 room for one copy.
        let s = st(&[("/a", 2, &[("c1", &[1, 2]), ("c2", &[1, 2])])], 4);
        let mut v = view(&[
            (1, Dead),
            (2, Live { used: 0 }),
            (3, Live { used: 0 }),
            (4, Live { used: 50 }),
        ]);
        v.free = [(3, 5), (4, 15)].into_iter().collect();
        let p = plan(&s, &v);
        assert_eq!(p.copies.len(), 1);
        assert_eq!((p.copies[0].target, p.stuck), (4, 1));
        // And no move goes to a server without room.
        let s = st(&[("/b", 1, &[("c3", &[1])])], 3);
        let mut v = view(&[(1, Live { used: 90 }), (3, Live { used: 0 })]);
        v.free.insert(3, 5);
        assert!(balance(&s, &v, 0, 10).is_empty());
        v.free.insert(3, 10);
        assert_eq!(balance(&s, &v, 0, 10).len(), 1);
        // The least used server is full: the move goes to the next one with room.
        v.free.insert(3, 5);
        v.servers.insert(2, Live { used: 20 });
        let m = balance(&s, &v, 0, 10);
        assert_eq!((m.len(), m[0].from, m[0].to), (1, 1, 2));
    }

    #[test]
    fn pending_delete_excludes_a_target() {
        let mut s = st(&[("/a", 2, &[("c1", &[1, 2])])], 3);
        s.pending_deletes.entry(3).or_default().insert("c1".into());
        let v = view(&[(1, Dead), (2, Live { used: 0 }), (3, Live { used: 0 })]);
        let p = plan(&s, &v);
        assert_eq!((p.copies.len(), p.stuck), (0, 1));
    }

    #[test]
    fn bad_replicas_are_replaced_and_surplus_dropped() {
        let s = st(
            &[
                ("/a", 2, &[("c1", &[1, 2])]),
                ("/b", 1, &[("c2", &[1, 2, 3])]),
            ],
            3,
        );
        let mut v = view(&[
            (1, Live { used: 9 }),
            (2, Live { used: 1 }),
            (3, Live { used: 5 }),
        ]);
        v.bad.insert(("c1".into(), 1));
        let p = plan(&s, &v);
        assert_eq!(p.copies.len(), 1);
        assert_eq!((p.copies[0].target, p.copies[0].drop.clone()), (3, vec![1]));
        assert_eq!(p.drops.len(), 1);
        assert_eq!(p.drops[0].chunk_id, "c2");
        // The least used server keeps the replica.
        assert_eq!(p.drops[0].nodes, vec![1, 3]);
    }

    #[test]
    fn returning_dead_replica_with_enough_good_ones_is_dropped() {
        let s = st(&[("/a", 2, &[("c1", &[1, 2, 3])])], 3);
        let v = view(&[(1, Dead), (2, Live { used: 0 }), (3, Live { used: 0 })]);
        let p = plan(&s, &v);
        assert!(p.copies.is_empty());
        assert_eq!(p.drops[0].nodes, vec![1]);
    }

    #[test]
    fn balance_moves_from_the_fullest_to_the_emptiest() {
        let s = st(
            &[
                (
                    "/a",
                    2,
                    &[("c1", &[1, 2]), ("c2", &[1, 2]), ("c3", &[1, 2])],
                ),
                ("/b", 1, &[("c4", &[1]), ("c5", &[9])]),
            ],
            3,
        );
        let v = view(&[
            (1, Live { used: 40 }),
            (2, Live { used: 30 }),
            (3, Live { used: 0 }),
        ]);
        let m = balance(&s, &v, 10, 100);
        // 40/30/0 -> moves from 1 and 2 to 3 until within 10 bytes.
        assert!(!m.is_empty());
        assert!(m.iter().all(|m| m.to == 3 && m.from != 3));
        let mut ids: Vec<&str> = m.iter().map(|m| m.chunk_id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), m.len(), "a chunk moves once");
        assert!(!ids.contains(&"c5"), "unhealthy chunks stay");
        let mut load = [0i64, 40, 30, 0];
        for m in &m {
            load[m.from as usize] -= m.size as i64;
            load[m.to as usize] += m.size as i64;
        }
        let (mx, mn) = (
            load[1..].iter().max().unwrap(),
            load[1..].iter().min().unwrap(),
        );
        assert!(mx - mn <= 10, "{load:?}");
        // Already balanced, or a single live server: nothing.
        assert!(balance(&s, &v, 100, 100).is_empty());
        let one = view(&[(1, Live { used: 40 })]);
        assert!(balance(&s, &one, 0, 100).is_empty());
        assert_eq!(balance(&s, &v, 0, 1).len(), 1);
    }

    #[test]
    fn a_large_plan_gives_each_chunk_distinct_targets() {
        // Replication 3 with two of five servers dead: every chunk needs two copies, on two
        // different servers that do not hold it.
        let names: Vec<String> = (0..5000).map(|i| format!("/f{i}")).collect();
        let ids: Vec<String> = (0..5000).map(|i| format!("c{i}")).collect();
        let replicas: [NodeId; 3] = [1, 2, 3];
        let chunks: Vec<[(&str, &[NodeId]); 1]> = ids
            .iter()
            .map(|id| [(id.as_str(), &replicas[..])])
            .collect();
        let files: Vec<FileSpec> = names
            .iter()
            .zip(&chunks)
            .map(|(n, c)| (n.as_str(), 3, &c[..]))
            .collect();
        let s = st(&files, 5);
        let v = view(&[
            (1, Dead),
            (2, Dead),
            (3, Live { used: 0 }),
            (4, Live { used: 0 }),
            (5, Live { used: 0 }),
        ]);
        let p = plan(&s, &v);
        assert_eq!(p.copies.len(), 10_000);
        let mut per_chunk: BTreeMap<&str, Vec<NodeId>> = BTreeMap::new();
        for c in &p.copies {
            per_chunk.entry(&c.chunk_id).or_default().push(c.target);
        }
        for (id, mut t) in per_chunk {
            t.sort_unstable();
            assert_eq!(t, vec![4, 5], "{id}");
        }
    }
}
