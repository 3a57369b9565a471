//! Availability: the longest stretch of time during which the cluster was healthy and yet no
//! write was acknowledged. Safety checkers pass on a cluster that refuses everything; this one
//! fails the run when a healthy cluster stops taking writes for longer than a bound.
//!
//! What counts, decided from the history alone:
//! - **Acknowledged write**: a put, mv, rm or mkdir of the workload (not a final read) whose
//!   outcome is ok, at its completion time.
//! - **Observed span**: from the first write's invocation to the last write's completion
//!   (writes of the workload, any outcome), so the tail after the clients stopped writing does
//!   not count, but a write stuck at the end does.
//! - **Down or paused**, from the fault records (`at_us` is when the fault took effect): a node
//!   named by `kill_leader`, `kill_majority`, `kill_chunk` or `power_cut` is down until the next `restart`
//!   naming it (recorded when its start is asked for, so its start-up time counts as up); one
//!   named by `lose_chunk` is down for good; one named by `pause` or `freeze_chunk` is paused
//!   until the next `resume` naming it; one named by `cut` (every packet to its listen port
//!   dropped) is unreachable until the next `uncut` naming it. Records naming no node (skipped
//!   faults) change nothing.
//! - **Healthy**: more than half of the metadata nodes up and not paused, and at least
//!   `need_chunks` chunk servers up and not paused (the replication factor: enough to place a
//!   chunk on as many servers as a file asks for). A frozen chunk server does not count as
//!   live, so one frozen server among four with one lost leaves the cluster healthy: a frozen
//!   server must not stop writes.
//! - **A cut metadata node counts as out**, like a paused one: no client can connect to it and
//!   the other members' forwards to it are dropped, so it can acknowledge nothing (it can still
//!   send, and the replies to its own connections arrive, but nobody can hand it a request).
//!   Alone it never excuses anything: the two others are a majority and must elect a leader
//!   among themselves when the cut node led (metasrv's leader watch), so a cut leader's silence
//!   counts against the bound. Only a cut together with another metadata node down or paused
//!   leaves fewer than a majority of usable nodes, and that is excused.
//! - **A partition** counts the nodes it names (those cut off from the side that keeps a
//!   majority of the metadata group: an isolated leader, a minority, chunk servers the
//!   metadata group cannot reach, a chunk server the clients cannot reach) as out until the
//!   `heal` naming them, like a cut: the majority's side must go on acknowledging writes
//!   within the bound whenever what is left is healthy.
//! - **Window**: a maximal interval of the observed span during which the cluster was healthy
//!   the whole time and no write was acknowledged strictly inside it. Unhealthy time splits a
//!   window (the recovery after a majority came back is a window of its own).
//! - **Fault kinds of a window**: every fault whose interval (from taking effect to being
//!   undone; for ever if never undone) overlaps the window, touching its start included
//!   (the recovery right after a fault is undone belongs to that fault); "none" if none did.
//!
//! What must stay true: a window never includes unhealthy time, its length is at most the
//! distance between two consecutive acknowledgements (or a span edge), and the run fails
//! exactly when the longest window exceeds the bound.
use crate::history::{Fault, FaultKind, Op, Outcome};
use std::collections::{BTreeMap, BTreeSet};

/// Default bound on the longest healthy window without an acknowledged write.
pub const DEFAULT_BOUND_US: u64 = 5_000_000;

/// The label of windows during which no fault was active.
pub const NO_FAULT: &str = "none";

/// The shape of the cluster the faults are counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub metas: u32,
    pub chunks: u32,
    /// Live chunk servers needed to store a chunk (the replication factor).
    pub need_chunks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start_us: u64,
    pub end_us: u64,
    /// Fault kinds active during the window (snake_case names), or just "none".
    pub faults: Vec<String>,
}

impl Window {
    pub fn len_us(&self) -> u64 {
        self.end_us - self.start_us
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AvailReport {
    pub bound_us: u64,
    pub acked_writes: usize,
    /// Length of the observed span and how much of it was unhealthy (excused).
    pub span_us: u64,
    pub unhealthy_us: u64,
    pub longest: Option<Window>,
    /// Fault kind (or "none") -> longest window during which it was active.
    pub per_fault: BTreeMap<String, u64>,
    /// Windows longer than the bound, longest first.
    pub over_bound: Vec<Window>,
}

impl AvailReport {
    pub fn pass(&self) -> bool {
        self.over_bound.is_empty()
    }

    pub fn longest_us(&self) -> u64 {
        self.longest.as_ref().map(Window::len_us).unwrap_or(0)
    }
}

pub fn fault_name(k: FaultKind) -> &'static str {
    match k {
        FaultKind::KillLeader => "kill_leader",
        FaultKind::KillMajority => "kill_majority",
        FaultKind::KillChunk => "kill_chunk",
        FaultKind::LoseChunk => "lose_chunk",
        FaultKind::Pause => "pause",
        FaultKind::FreezeChunk => "freeze_chunk",
        FaultKind::Cut => "cut",
        FaultKind::Uncut => "uncut",
        FaultKind::Partition => "partition",
        FaultKind::Heal => "heal",
        FaultKind::PowerCut => "power_cut",
        FaultKind::DiskFault => "disk_fault",
        FaultKind::DiskHeal => "disk_heal",
        FaultKind::Resume => "resume",
        FaultKind::Restart => "restart",
        FaultKind::Unrecovered => "unrecovered",
    }
}

fn is_meta(node: &str) -> bool {
    node.starts_with("meta")
}

/// One fault's interval: [start, end], end u64::MAX when never undone.
struct Active {
    kind: FaultKind,
    start: u64,
    end: u64,
}

/// The intervals of every fault, from the records that undo them.
fn intervals(faults: &[Fault]) -> Vec<Active> {
    let mut out = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        let undo = match f.kind {
            FaultKind::KillLeader
            | FaultKind::KillMajority
            | FaultKind::KillChunk
            | FaultKind::PowerCut => Some(FaultKind::Restart),
            FaultKind::Pause | FaultKind::FreezeChunk => Some(FaultKind::Resume),
            FaultKind::Cut => Some(FaultKind::Uncut),
            FaultKind::Partition => Some(FaultKind::Heal),
            FaultKind::DiskFault => Some(FaultKind::DiskHeal),
            FaultKind::LoseChunk | FaultKind::Unrecovered => None,
            FaultKind::Resume
            | FaultKind::Restart
            | FaultKind::Uncut
            | FaultKind::Heal
            | FaultKind::DiskHeal => continue,
        };
        if f.nodes.is_empty() {
            continue;
        }
        let end = undo
            .and_then(|u| {
                faults[i + 1..]
                    .iter()
                    .find(|g| g.kind == u && g.nodes.iter().any(|n| f.nodes.contains(n)))
                    .map(|g| g.at_us.max(f.at_us))
            })
            .unwrap_or(u64::MAX);
        out.push(Active {
            kind: f.kind,
            start: f.at_us,
            end,
        });
    }
    out
}

/// Unhealthy intervals, as sorted, disjoint [start, end) pairs.
fn unhealthy(faults: &[Fault], shape: Shape) -> Vec<(u64, u64)> {
    let mut events: Vec<&Fault> = faults.iter().collect();
    events.sort_by_key(|f| f.at_us);
    let mut down: BTreeSet<&str> = BTreeSet::new();
    let mut paused: BTreeSet<&str> = BTreeSet::new();
    let mut cut: BTreeSet<&str> = BTreeSet::new();
    let healthy = |down: &BTreeSet<&str>, paused: &BTreeSet<&str>, cut: &BTreeSet<&str>| {
        let out = |m: bool| {
            let all: BTreeSet<&&str> = down.iter().chain(paused).chain(cut).collect();
            all.into_iter().filter(|n| is_meta(n) == m).count() as u32
        };
        let metas_ok = shape.metas.saturating_sub(out(true)) * 2 > shape.metas;
        let chunks_ok = shape.chunks.saturating_sub(out(false)) >= shape.need_chunks;
        metas_ok && chunks_ok
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut since: Option<u64> = None;
    for f in events {
        for n in &f.nodes {
            match f.kind {
                FaultKind::KillLeader
                | FaultKind::KillMajority
                | FaultKind::KillChunk
                | FaultKind::LoseChunk
                | FaultKind::Unrecovered
                | FaultKind::PowerCut => {
                    down.insert(n);
                }
                FaultKind::Pause | FaultKind::FreezeChunk => {
                    paused.insert(n);
                }
                // A node whose disk fails is out like one cut off (until healed and, if it
                // exited, restarted: the heal is recorded after that).
                FaultKind::Cut | FaultKind::Partition | FaultKind::DiskFault => {
                    cut.insert(n);
                }
                FaultKind::Uncut | FaultKind::Heal | FaultKind::DiskHeal => {
                    cut.remove(n.as_str());
                }
                FaultKind::Resume => {
                    paused.remove(n.as_str());
                }
                FaultKind::Restart => {
                    down.remove(n.as_str());
                }
            }
        }
        match (healthy(&down, &paused, &cut), since) {
            (false, None) => since = Some(f.at_us),
            (true, Some(s)) => {
                out.push((s, f.at_us));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        out.push((s, u64::MAX));
    }
    out
}

/// The availability check. `bound_us`: the longest healthy window allowed without an
/// acknowledged write.
pub fn check(ops: &[Op], faults: &[Fault], shape: Shape, bound_us: u64) -> AvailReport {
    let mut r = AvailReport {
        bound_us,
        ..Default::default()
    };
    let writes: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind.is_write() && !o.final_read)
        .collect();
    let (Some(first), Some(last)) = (
        writes.iter().map(|o| o.invoke_us).min(),
        writes.iter().map(|o| o.complete_us).max(),
    ) else {
        return r;
    };
    if last <= first {
        return r;
    }
    r.span_us = last - first;
    let mut acks: Vec<u64> = writes
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.complete_us)
        .collect();
    acks.sort_unstable();
    r.acked_writes = acks.len();
    // Cut points: the span edges and every acknowledgement; between two consecutive ones, no
    // write was acknowledged.
    let mut cuts = vec![first];
    cuts.extend(acks.iter().copied().filter(|t| *t > first && *t < last));
    cuts.push(last);
    let bad = unhealthy(faults, shape);
    for &(s, e) in &bad {
        let (s, e) = (s.max(first), e.min(last));
        if e > s {
            r.unhealthy_us += e - s;
        }
    }
    let active = intervals(faults);
    let mut windows: Vec<Window> = Vec::new();
    for pair in cuts.windows(2) {
        let (gap_start, e) = (pair[0], pair[1]);
        let mut s = gap_start;
        // Subtract the unhealthy intervals from [s, e).
        for &(bs, be) in bad.iter().filter(|(bs, be)| *bs < e && *be > gap_start) {
            if bs > s {
                windows.push(Window {
                    start_us: s,
                    end_us: bs,
                    faults: vec![],
                });
            }
            s = s.max(be);
        }
        if e > s {
            windows.push(Window {
                start_us: s,
                end_us: e,
                faults: vec![],
            });
        }
    }
    for w in &mut windows {
        let mut kinds: BTreeSet<&'static str> = active
            .iter()
            .filter(|a| a.start < w.end_us && a.end >= w.start_us)
            .map(|a| fault_name(a.kind))
            .collect();
        if kinds.is_empty() {
            kinds.insert(NO_FAULT);
        }
        w.faults = kinds.into_iter().map(str::to_string).collect();
        for k in &w.faults {
            let e = r.per_fault.entry(k.clone()).or_default();
            *e = (*e).max(w.len_us());
        }
    }
    windows.sort_by_key(|w| std::cmp::Reverse(w.len_us()));
    r.longest = windows.first().cloned();
    r.over_bound = windows
        .into_iter()
        .take_while(|w| w.len_us() > bound_us)
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{code, Kind};

    const S: u64 = 1_000_000;
    const SHAPE: Shape = Shape {
        metas: 3,
        chunks: 3,
        need_chunks: 2,
    };

    /// One acknowledged mkdir completing at each of `acks` (in seconds), invoked 10 ms before.
    fn acked(acks: &[f64]) -> Vec<Op> {
        acks.iter()
            .enumerate()
            .map(|(i, t)| {
                let mut o = Op::new(i as u64, 0, Kind::Mkdir, 0, "/chaos/g0/d");
                o.complete_us = (t * S as f64) as u64;
                o.invoke_us = o.complete_us.saturating_sub(10_000);
                o.outcome = Outcome::Ok;
                o.code = code::OK.into();
                o
            })
            .collect()
    }

    fn fault(kind: FaultKind, nodes: &[&str], at_s: f64) -> Fault {
        Fault {
            kind,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            at_us: (at_s * S as f64) as u64,
            note: None,
        }
    }

    #[test]
    fn short_gaps_pass_and_are_attributed_to_their_fault() {
        let ops = acked(&[0.5, 1.0, 2.0, 5.0, 5.5, 6.0]);
        let faults = [
            fault(FaultKind::KillLeader, &["meta-1"], 2.1),
            fault(FaultKind::Restart, &["meta-1"], 3.5),
        ];
        let r = check(&ops, &faults, SHAPE, DEFAULT_BOUND_US);
        assert!(r.pass(), "{r:?}");
        let w = r.longest.clone().unwrap();
        assert_eq!((w.start_us, w.end_us), (2 * S, 5 * S));
        assert_eq!(w.faults, vec!["kill_leader".to_string()]);
        assert_eq!(r.per_fault["kill_leader"], 3 * S);
        assert_eq!(r.per_fault[NO_FAULT], S);
        assert_eq!(r.acked_writes, 6);
        assert_eq!(
            r.unhealthy_us, 0,
            "one metadata node down of three is healthy"
        );
    }

    #[test]
    fn a_frozen_chunk_server_that_stops_writes_fails_the_run() {
        // Four chunk servers, one lost for good, one frozen: two live, enough for replication
        // 2, so the silence while it is frozen counts.
        let ops = acked(&[0.0, 1.0, 2.0, 9.5, 10.0]);
        let faults = [
            fault(FaultKind::LoseChunk, &["chunk-4"], 0.5),
            fault(FaultKind::FreezeChunk, &["chunk-2"], 2.5),
            fault(FaultKind::Resume, &["chunk-2"], 8.5),
        ];
        let shape = Shape { chunks: 4, ..SHAPE };
        let r = check(&ops, &faults, shape, DEFAULT_BOUND_US);
        assert!(!r.pass(), "{r:?}");
        assert_eq!(r.over_bound.len(), 1, "{r:?}");
        let w = &r.over_bound[0];
        assert_eq!((w.start_us, w.end_us), (2 * S, 9_500_000));
        assert_eq!(w.faults, vec!["freeze_chunk", "lose_chunk"]);
        assert_eq!(r.per_fault["freeze_chunk"], 7_500_000);
        // The same history with three chunk servers: one lost and one frozen leave one live
        // server, fewer than replication needs, so only the time around the freeze counts.
        let r = check(&ops, &faults, SHAPE, DEFAULT_BOUND_US);
        assert!(r.pass(), "{r:?}");
        assert_eq!(r.unhealthy_us, 6 * S);
        assert_eq!(r.longest_us(), S);
    }

    #[test]
    fn silence_while_a_majority_is_down_is_excused() {
        let ops = acked(&[0.0, 1.0, 2.0, 9.0, 10.0]);
        let faults = [
            fault(FaultKind::KillMajority, &["meta-1", "meta-2"], 2.5),
            fault(FaultKind::Restart, &["meta-1", "meta-2"], 7.5),
        ];
        let r = check(&ops, &faults, SHAPE, DEFAULT_BOUND_US);
        assert!(r.pass(), "{r:?}");
        assert_eq!(r.unhealthy_us, 5 * S);
        // The recovery after the restart is a window of its own, attributed to the fault.
        let w = r.longest.clone().unwrap();
        assert_eq!((w.start_us, w.end_us), (7_500_000, 9 * S));
        assert_eq!(w.faults, vec!["kill_majority"]);
        // Without the fault records the same silence fails the run.
        let r = check(&ops, &[], SHAPE, DEFAULT_BOUND_US);
        assert!(!r.pass(), "{r:?}");
        assert_eq!(r.longest_us(), 7 * S);
        assert_eq!(r.longest.unwrap().faults, vec![NO_FAULT]);
    }

    #[test]
    fn a_paused_majority_is_unhealthy_and_a_paused_leader_alone_is_not() {
        let ops = acked(&[0.0, 1.0, 8.0]);
        let one = [
            fault(FaultKind::Pause, &["meta-3"], 1.5),
            fault(FaultKind::Resume, &["meta-3"], 4.0),
        ];
        let r = check(&ops, &one, SHAPE, DEFAULT_BOUND_US);
        assert!(!r.pass());
        assert_eq!(r.over_bound[0].faults, vec!["pause"]);
        let two = [
            fault(FaultKind::Pause, &["meta-3"], 1.5),
            fault(FaultKind::KillLeader, &["meta-1"], 2.0),
            fault(FaultKind::Restart, &["meta-1"], 6.0),
            fault(FaultKind::Resume, &["meta-3"], 7.0),
        ];
        let r = check(&ops, &two, SHAPE, DEFAULT_BOUND_US);
        assert!(r.pass(), "{r:?}");
        assert_eq!(r.unhealthy_us, 4 * S);
    }

    #[test]
    fn a_cut_leader_is_no_excuse_but_a_cut_with_another_node_down_is() {
        // The leader's inbound traffic cut from 2 s to 8 s; the others never elect: the silence
        // counts (two of three metadata nodes are up and reachable).
        let ops = acked(&[0.0, 1.0, 2.0, 8.5, 9.0]);
        let faults = [
            fault(FaultKind::Cut, &["meta-1"], 2.0),
            fault(FaultKind::Uncut, &["meta-1"], 8.0),
        ];
        let r = check(&ops, &faults, SHAPE, DEFAULT_BOUND_US);
        assert!(!r.pass(), "{r:?}");
        assert_eq!(r.unhealthy_us, 0);
        let w = &r.over_bound[0];
        assert_eq!((w.start_us, w.end_us), (2 * S, 8_500_000));
        assert_eq!(w.faults, vec!["cut"]);
        assert_eq!(r.per_fault["cut"], 6_500_000);
        // A cut node and a paused one: one usable metadata node of three, excused.
        let faults = [
            fault(FaultKind::Cut, &["meta-1"], 2.0),
            fault(FaultKind::Pause, &["meta-2"], 2.5),
            fault(FaultKind::Resume, &["meta-2"], 7.5),
            fault(FaultKind::Uncut, &["meta-1"], 8.0),
        ];
        let r = check(&ops, &faults, SHAPE, DEFAULT_BOUND_US);
        assert!(r.pass(), "{r:?}");
        assert_eq!(r.unhealthy_us, 5 * S);
        // A cut node that is also paused counts once: two others remain, healthy.
        let faults = [
            fault(FaultKind::Cut, &["meta-1"], 2.0),
            fault(FaultKind::Pause, &["meta-1"], 2.5),
            fault(FaultKind::Resume, &["meta-1"], 7.5),
            fault(FaultKind::Uncut, &["meta-1"], 8.0),
        ];
        let r = check(&ops, &faults, SHAPE, DEFAULT_BOUND_US);
        assert_eq!(r.unhealthy_us, 0, "{r:?}");
    }

    #[test]
    fn only_the_span_of_writes_counts_and_failed_writes_are_no_acknowledgement() {
        let mut ops = acked(&[1.0, 2.0]);
        // A failed write at 9 s extends the span but acknowledges nothing.
        let mut f = Op::new(9, 1, Kind::Rm, 0, "/chaos/g0/a");
        f.invoke_us = 3 * S;
        f.complete_us = 9 * S;
        f.outcome = Outcome::Failed;
        ops.push(f);
        // Reads and final reads do not extend it.
        let mut g = Op::new(10, -1, Kind::Get, 0, "/chaos/g0/a");
        g.final_read = true;
        g.invoke_us = 20 * S;
        g.complete_us = 21 * S;
        g.outcome = Outcome::Ok;
        ops.push(g);
        let r = check(&ops, &[], SHAPE, DEFAULT_BOUND_US);
        assert_eq!(r.span_us, 9 * S - 990_000);
        assert_eq!(r.longest_us(), 7 * S);
        assert!(!r.pass());
        assert!(check(&[], &[], SHAPE, DEFAULT_BOUND_US).pass());
    }
}
