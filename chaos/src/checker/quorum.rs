//! Quorum: while two of three metadata nodes are dead, nothing may be acknowledged that needs
//! a quorum (a write, or a linearizable read invoked after both died and answered before either
//! came back); afterwards the cluster must take writes again.
use crate::history::{Fault, FaultKind, Op, Outcome};

/// How long after the majority came back a write must have been acknowledged, provided the run
/// went on that long.
const RECOVERY_US: u64 = 20_000_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumReport {
    pub windows: usize,
    /// Operations acknowledged while a majority was down.
    pub served_without_quorum: Vec<u64>,
    /// Majority kills after which no write was acknowledged again.
    pub not_recovered: usize,
}

impl QuorumReport {
    pub fn pass(&self) -> bool {
        self.served_without_quorum.is_empty() && self.not_recovered == 0
    }
}

pub fn check(ops: &[Op], faults: &[Fault]) -> QuorumReport {
    let mut r = QuorumReport::default();
    let last_invoke = ops
        .iter()
        .filter(|o| !o.final_read)
        .map(|o| o.invoke_us)
        .max()
        .unwrap_or(0);
    for (i, f) in faults.iter().enumerate() {
        if f.kind != FaultKind::KillMajority {
            continue;
        }
        let start = f.at_us;
        let end = faults[i + 1..]
            .iter()
            .find(|g| g.kind == FaultKind::Restart && g.nodes.iter().any(|n| f.nodes.contains(n)))
            .map(|g| g.at_us)
            .unwrap_or(u64::MAX);
        r.windows += 1;
        for o in ops
            .iter()
            .filter(|o| !o.final_read && o.outcome == Outcome::Ok)
        {
            if o.invoke_us >= start && o.complete_us <= end {
                r.served_without_quorum.push(o.id);
            }
        }
        let recovered = ops.iter().any(|o| {
            o.kind.is_write() && o.outcome == Outcome::Ok && !o.final_read && o.complete_us > end
        });
        if !recovered && end != u64::MAX && last_invoke > end.saturating_add(RECOVERY_US) {
            r.not_recovered += 1;
        }
    }
    r
}
