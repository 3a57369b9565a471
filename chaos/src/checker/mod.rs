//! The checkers, run on a history after the workload stopped and the cluster healed. Each can
//! fail; `check_all` runs them all.
pub mod availability;
pub mod convergence;
pub mod linear;
pub mod lost;
pub mod model;
pub mod phantom;
pub mod quorum;

use crate::history::{Fault, FaultKind, History, Op};
use linear::LinResult;
use std::collections::BTreeMap;

/// Default grace after an unknown operation's completion during which it may take effect in
/// the first (bounded) linearizability search.
pub const DEFAULT_GRACE_US: u64 = 10_000_000;
/// Steps of the depth-first search per group (at least 50 per operation), and configurations
/// the exhaustive search may explore to explain one completion.
pub const DEFAULT_BUDGET: usize = 2_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinReport {
    pub groups: usize,
    pub ops: usize,
    pub unknown: usize,
    pub explored: usize,
    /// One line per group that is not linearizable.
    pub violations: Vec<String>,
    /// Groups whose search gave up.
    pub inconclusive: Vec<String>,
    /// Groups that needed an unknown operation to take effect after the grace.
    pub needed_late_unknown: usize,
}

impl LinReport {
    pub fn pass(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    pub lost: lost::LostReport,
    pub linear: LinReport,
    pub phantom: phantom::PhantomReport,
    pub convergence: convergence::ConvergenceReport,
    pub replication: convergence::ReplicationReport,
    pub quorum: quorum::QuorumReport,
    pub availability: availability::AvailReport,
}

impl Verdicts {
    pub fn pass(&self) -> bool {
        self.lost.pass()
            && self.linear.pass()
            && self.phantom.pass()
            && self.convergence.pass
            && self.replication.pass
            && self.quorum.pass()
            && self.availability.pass()
    }
}

fn describe_op(o: &Op) -> String {
    let mut s = format!(
        "op {} (client {}) {} {}",
        o.id,
        o.client,
        o.kind.name(),
        o.path
    );
    if let Some(t) = &o.to {
        s.push_str(&format!(" -> {t}"));
    }
    if o.force {
        s.push_str(" -f");
    }
    if let Some(c) = &o.content {
        s.push_str(&format!(" content {}", &c[..c.len().min(8)]));
    }
    s.push_str(&format!(
        " [{:.3} s .. {:.3} s] {:?} {}",
        o.invoke_us as f64 / 1e6,
        o.complete_us as f64 / 1e6,
        o.outcome,
        o.code
    ));
    if let Some(seen) = &o.seen {
        s.push_str(&format!(
            " saw {}",
            serde_json::to_string(seen).unwrap_or_default()
        ));
    }
    s
}

/// What one group's checks concluded.
struct GroupVerdict {
    result: LinResult,
    /// Passed only by the search that lets unknown operations take effect any time later.
    late: bool,
    /// About a violation: whether a later effect of an unknown operation would explain it.
    caveat: Option<String>,
}

/// One group. An unknown operation may take effect at most `grace_us` after it ended (or
/// never): in dfs an entry the client gave up on can only still commit while it sits in the log
/// of a node that can still become leader, which the next election settles, and every fault is
/// undone within seconds. First the depth-first search (fast when the history is valid); if it
/// gives up or fails, the exhaustive "just in time" search decides (exact, and it names the
/// first operation that no order explains). Only if that one gives up does a pass of the
/// search without any bound count. A violation says whether it would be explained by an
/// unknown operation taking effect later than the grace.
fn check_group(group: &model::Group, grace_us: u64, budget: usize) -> GroupVerdict {
    let steps = budget.max(50 * group.ops.len());
    let ok = |r: &LinResult| matches!(r, LinResult::Ok { .. });
    let fast = linear::check_dfs(group, Some(grace_us), steps);
    if ok(&fast) {
        return GroupVerdict {
            result: fast,
            late: false,
            caveat: None,
        };
    }
    let exact = linear::check_jit(group, Some(grace_us), budget);
    match exact {
        LinResult::Ok { .. } => GroupVerdict {
            result: exact,
            late: false,
            caveat: None,
        },
        LinResult::Violation { .. } => {
            let unbounded = linear::check_dfs(group, None, steps);
            GroupVerdict {
                result: exact,
                late: false,
                caveat: ok(&unbounded).then(|| {
                    format!(
                        "explained only if an unknown operation took effect more than {} s after it ended",
                        grace_us / 1_000_000
                    )
                }),
            }
        }
        LinResult::Inconclusive { .. } => {
            let unbounded = linear::check_dfs(group, None, steps);
            GroupVerdict {
                late: ok(&unbounded),
                result: if ok(&unbounded) { unbounded } else { exact },
                caveat: None,
            }
        }
    }
}

/// Whether a fault record undoes an earlier one (restart, resume, uncut, heal).
fn is_undo(k: FaultKind) -> bool {
    matches!(
        k,
        FaultKind::Restart
            | FaultKind::Resume
            | FaultKind::Uncut
            | FaultKind::Heal
            | FaultKind::DiskHeal
    )
}

fn describe_fault(f: &Fault) -> String {
    format!(
        "{} of {} at {:.3} s{}",
        availability::fault_name(f.kind),
        f.nodes.join(","),
        f.at_us as f64 / 1e6,
        f.note
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    )
}

/// The fault an anomaly at `at_us` followed: the last one that took effect at or before it,
/// and whether it was still in effect then.
pub fn fault_before(faults: &[Fault], at_us: u64) -> String {
    let Some((i, f)) = faults
        .iter()
        .enumerate()
        .rfind(|(_, f)| !is_undo(f.kind) && !f.nodes.is_empty() && f.at_us <= at_us)
    else {
        return "no fault before it".into();
    };
    let undone = faults[i + 1..]
        .iter()
        .find(|g| is_undo(g.kind) && g.nodes.iter().any(|n| f.nodes.contains(n)));
    match undone {
        Some(u) if u.at_us <= at_us => format!(
            "after {}, undone at {:.3} s",
            describe_fault(f),
            u.at_us as f64 / 1e6
        ),
        _ => format!("during {}", describe_fault(f)),
    }
}

/// The first fault that took effect at or after `at_us` (what an acknowledged write that was
/// lost later went through first).
pub fn fault_after(faults: &[Fault], at_us: u64) -> String {
    faults
        .iter()
        .find(|f| !is_undo(f.kind) && !f.nodes.is_empty() && f.at_us >= at_us)
        .map_or_else(
            || "no fault after it".into(),
            |f| format!("the first fault after it: {}", describe_fault(f)),
        )
}

/// Linearizability of every group: bounded windows for unknown operations first, then (only
/// where that fails) windows that never close. Each violation names the fault it followed.
/// Write-once puts (each on a path of its own) are left to the lost-write checker.
pub fn check_linear(ops: &[Op], faults: &[Fault], grace_us: u64, budget: usize) -> LinReport {
    let mut by_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate().filter(|(_, o)| !o.write_once) {
        by_group.entry(o.group).or_default().push(i);
    }
    let groups: Vec<(u32, model::Group)> = by_group
        .into_iter()
        .map(|(g, idx)| (g, model::Group::build(ops, &idx)))
        .collect();
    let results: Vec<(u32, GroupVerdict)> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|(g, group)| s.spawn(move || (*g, check_group(group, grace_us, budget))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("linearizability search panicked"))
            .collect()
    });
    let mut r = LinReport {
        groups: groups.len(),
        ..Default::default()
    };
    for ((g, v), (_, group)) in results.into_iter().zip(&groups) {
        r.ops += group.ops.len();
        r.unknown += group.ops.iter().filter(|o| o.unknown).count();
        match &v.result {
            LinResult::Ok { explored, .. } => {
                r.explored += explored;
                if v.late {
                    r.needed_late_unknown += 1;
                }
            }
            LinResult::Violation { op, .. } => r.violations.push(format!(
                "group {g}: {}{}; {}",
                violation_text(ops, group, &v.result),
                v.caveat.map(|c| format!(" ({c})")).unwrap_or_default(),
                fault_before(faults, ops[*op].invoke_us)
            )),
            LinResult::Inconclusive { reason } => {
                r.inconclusive.push(format!("group {g}: {reason}"))
            }
        }
    }
    r
}

fn violation_text(ops: &[Op], group: &model::Group, res: &LinResult) -> String {
    match res {
        LinResult::Violation { op, states } => format!(
            "{} cannot be linearized; just before it the model could only be in: {} (entries {})",
            describe_op(&ops[*op]),
            if states.is_empty() {
                "(nothing)".to_string()
            } else {
                states.join(" | ")
            },
            group.names.join(",")
        ),
        _ => String::new(),
    }
}

/// The cluster shape the availability checker counts faults against, from the run's settings
/// (3 + 3 with the default replication when the history has none).
pub fn shape_of(h: &History) -> availability::Shape {
    let run = h.run.clone().unwrap_or_default();
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    availability::Shape {
        metas: or(run.metas, 3),
        chunks: or(run.chunks, 3),
        need_chunks: or(run.replication, dfs_common::DEFAULT_REPLICATION),
    }
}

/// Every checker; `avail_bound_us` is the longest healthy window allowed without an
/// acknowledged write.
pub fn check_all(h: &History, grace_us: u64, budget: usize, avail_bound_us: u64) -> Verdicts {
    let (convergence, replication) = convergence::check(h.convergence.as_ref());
    Verdicts {
        lost: lost::check(&h.ops),
        linear: check_linear(&h.ops, &h.faults, grace_us, budget),
        phantom: phantom::check(&h.ops),
        convergence,
        replication,
        quorum: quorum::check(&h.ops, &h.faults),
        availability: availability::check(&h.ops, &h.faults, shape_of(h), avail_bound_us),
    }
}

#[cfg(test)]
mod tests;
