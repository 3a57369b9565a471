//! The checkers, run on a history after the workload stopped and the cluster healed. Each can
//! fail; `check_all` runs them all.
pub mod convergence;
pub mod linear;
pub mod lost;
pub mod model;
pub mod phantom;
pub mod quorum;

use crate::history::{History, Op};
use linear::LinResult;
use std::collections::BTreeMap;

/// Default grace after an unknown operation's completion during which it may take effect in
/// the first (bounded) linearizability search.
pub const DEFAULT_GRACE_US: u64 = 10_000_000;
/// Most configurations one group's search may explore.
pub const DEFAULT_BUDGET: usize = 20_000_000;

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
}

impl Verdicts {
    pub fn pass(&self) -> bool {
        self.lost.pass()
            && self.linear.pass()
            && self.phantom.pass()
            && self.convergence.pass
            && self.replication.pass
            && self.quorum.pass()
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

/// One group: depth-first search with bounded windows for unknown operations; where that fails,
/// again with windows that never close; where that fails too, the exhaustive "just in time"
/// search, which names the first operation that cannot be linearized. Returns the result and
/// whether an unknown operation had to take effect after its grace.
fn check_group(
    ops: &[Op],
    group: &model::Group,
    grace_us: u64,
    budget: usize,
) -> (LinResult, bool) {
    let bounded = linear::check_dfs(group, Some(grace_us), budget);
    if matches!(bounded, LinResult::Ok { .. }) {
        return (bounded, false);
    }
    let unbounded = linear::check_dfs(group, None, budget);
    if matches!(unbounded, LinResult::Ok { .. }) {
        return (unbounded, true);
    }
    match linear::check_jit(group, budget) {
        v @ LinResult::Violation { .. } => (v, false),
        LinResult::Ok { .. } => (
            LinResult::Inconclusive {
                reason: format!(
                    "the two searches disagree (depth-first: {}); please report",
                    violation_text(ops, group, &unbounded)
                ),
            },
            false,
        ),
        LinResult::Inconclusive { reason } => match unbounded {
            v @ LinResult::Violation { .. } => (v, false),
            _ => (
                LinResult::Inconclusive {
                    reason: format!(
                        "{reason}; with unknown operations taking effect within {} s of ending, the depth-first search found: {}",
                        grace_us / 1_000_000,
                        violation_text(ops, group, &bounded)
                    ),
                },
                false,
            ),
        },
    }
}

/// Linearizability of every group: bounded windows for unknown operations first, then (only
/// where that fails) windows that never close.
pub fn check_linear(ops: &[Op], grace_us: u64, budget: usize) -> LinReport {
    let mut by_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, o) in ops.iter().enumerate() {
        by_group.entry(o.group).or_default().push(i);
    }
    let groups: Vec<(u32, model::Group)> = by_group
        .into_iter()
        .map(|(g, idx)| (g, model::Group::build(ops, &idx)))
        .collect();
    let results: Vec<(u32, LinResult, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|(g, group)| s.spawn(move || (*g, check_group(ops, group, grace_us, budget))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (g, (r, late)) = h.join().expect("linearizability search panicked");
                (g, r, late)
            })
            .collect()
    });
    let mut r = LinReport {
        groups: groups.len(),
        ..Default::default()
    };
    for ((g, res, late), (_, group)) in results.into_iter().zip(&groups) {
        r.ops += group.ops.len();
        r.unknown += group.ops.iter().filter(|o| o.unknown).count();
        if late {
            r.needed_late_unknown += 1;
        }
        match &res {
            LinResult::Ok { explored, .. } => r.explored += explored,
            LinResult::Violation { .. } => r
                .violations
                .push(format!("group {g}: {}", violation_text(ops, group, &res))),
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

pub fn check_all(h: &History, grace_us: u64, budget: usize) -> Verdicts {
    let (convergence, replication) = convergence::check(h.convergence.as_ref());
    Verdicts {
        lost: lost::check(&h.ops),
        linear: check_linear(&h.ops, grace_us, budget),
        phantom: phantom::check(&h.ops),
        convergence,
        replication,
        quorum: quorum::check(&h.ops, &h.faults),
    }
}

#[cfg(test)]
mod tests;
