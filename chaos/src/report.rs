//! The summary: operations by kind and outcome, faults, failover times (gap between a leader's
//! SIGKILL and the next acknowledged write), a verdict per checker; as a table for people and
//! as one JSON object for machines.
use crate::checker::Verdicts;
use crate::history::{FaultKind, History, Kind, Outcome};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failover {
    /// Milliseconds from each leader kill to the next acknowledged write.
    pub gaps_ms: Vec<f64>,
    /// Leader kills after which no write was acknowledged at all.
    pub never: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

impl Failover {
    pub fn p50(&self) -> f64 {
        percentile(&self.gaps_ms, 0.5)
    }
    pub fn p99(&self) -> f64 {
        percentile(&self.gaps_ms, 0.99)
    }
    pub fn max(&self) -> f64 {
        self.gaps_ms.last().copied().unwrap_or(0.0)
    }
}

/// Failover per leader kill: kill (process seen dead) to the next acknowledged write.
pub fn failover(h: &History) -> Failover {
    next_ack_after(h, FaultKind::KillLeader)
}

/// For each fault of `kind` (naming a node): the time to the next acknowledged write.
pub fn next_ack_after(h: &History, kind: FaultKind) -> Failover {
    let mut acks: Vec<u64> = h
        .ops
        .iter()
        .filter(|o| o.kind.is_write() && o.outcome == Outcome::Ok && !o.final_read)
        .map(|o| o.complete_us)
        .collect();
    acks.sort_unstable();
    let mut f = Failover::default();
    for k in h
        .faults
        .iter()
        .filter(|k| k.kind == kind && !k.nodes.is_empty())
    {
        let i = acks.partition_point(|t| *t <= k.at_us);
        match acks.get(i) {
            Some(t) => f.gaps_ms.push((t - k.at_us) as f64 / 1000.0),
            None => f.never += 1,
        }
    }
    f.gaps_ms.sort_by(|a, b| a.total_cmp(b));
    f
}

pub struct Summary {
    pub pass: bool,
    pub json: Value,
    pub table: String,
}

fn count(h: &History, kind: FaultKind) -> usize {
    h.faults
        .iter()
        .filter(|f| f.kind == kind && !f.nodes.is_empty())
        .count()
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

pub fn summarize(h: &History, v: &Verdicts, history_path: &Path) -> Summary {
    let pass = v.pass();
    let mut by_kind: BTreeMap<Kind, [usize; 3]> = BTreeMap::new();
    let (mut ok, mut failed, mut unknown, mut data_errors, mut overtaken) = (0, 0, 0, 0, 0);
    for o in h.ops.iter().filter(|o| !o.final_read) {
        let e = by_kind.entry(o.kind).or_default();
        match o.outcome {
            Outcome::Ok => {
                e[0] += 1;
                ok += 1;
            }
            Outcome::Failed => {
                e[1] += 1;
                failed += 1;
            }
            Outcome::Unknown => {
                e[2] += 1;
                unknown += 1;
            }
        }
        if o.overtaken {
            overtaken += 1;
        } else if o.data_error.is_some() {
            data_errors += 1;
        }
    }
    let fo = failover(h);
    let (parted, healed) = (
        next_ack_after(h, FaultKind::Partition),
        next_ack_after(h, FaultKind::Heal),
    );
    let leader_kills = count(h, FaultKind::KillLeader);
    let majority_kills = count(h, FaultKind::KillMajority);
    let chunk_kills = count(h, FaultKind::KillChunk);
    let chunks_lost = count(h, FaultKind::LoseChunk);
    let pauses = count(h, FaultKind::Pause);
    let freezes = count(h, FaultKind::FreezeChunk);
    let cuts = count(h, FaultKind::Cut);
    let partitions = count(h, FaultKind::Partition);
    let power_cuts = count(h, FaultKind::PowerCut);
    let disk_faults = count(h, FaultKind::DiskFault);
    let run = h.run.clone().unwrap_or_default();

    let mut t = String::new();
    let _ = writeln!(
        t,
        "chaos: {} s, {} clients, {} metasrv + {} chunksrv, {} groups of paths, chunk size {} B",
        run.duration_s, run.clients, run.metas, run.chunks, run.groups, run.chunk_size
    );
    let _ = writeln!(
        t,
        "{:<12} {:>9} {:>9} {:>9}",
        "operation", "ok", "failed", "unknown"
    );
    for k in Kind::ALL {
        let c = by_kind.get(&k).copied().unwrap_or_default();
        let _ = writeln!(t, "{:<12} {:>9} {:>9} {:>9}", k.name(), c[0], c[1], c[2]);
    }
    let _ = writeln!(t, "{:<12} {:>9} {:>9} {:>9}", "total", ok, failed, unknown);
    if data_errors > 0 {
        let _ = writeln!(
            t,
            "gets whose bytes could not be read at the time: {data_errors}"
        );
    }
    if overtaken > 0 {
        let _ = writeln!(
            t,
            "gets whose file was removed or replaced while they read it: {overtaken}"
        );
    }
    let _ = writeln!(
        t,
        "faults: {leader_kills} leader kills, {majority_kills} majority kills, {chunk_kills} chunk-server kills, {chunks_lost} chunk servers lost for good, {pauses} leader pauses, {freezes} chunk-server freezes, {cuts} inbound cuts, {partitions} partitions, {power_cuts} power cuts, {disk_faults} failing disks"
    );
    let _ = writeln!(
        t,
        "failover (leader SIGKILL -> next acknowledged write): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} kills{}",
        fo.p50(),
        fo.p99(),
        fo.max(),
        fo.gaps_ms.len(),
        if fo.never > 0 {
            format!(" ({} kills never followed by an acknowledged write)", fo.never)
        } else {
            String::new()
        }
    );
    if partitions > 0 {
        let _ = writeln!(
            t,
            "partitions -> next acknowledged write: p50 {:.0} ms, max {:.0} ms; heal -> next acknowledged write: p50 {:.0} ms, max {:.0} ms",
            parted.p50(),
            parted.max(),
            healed.p50(),
            healed.max()
        );
    }
    let _ = writeln!(t, "checkers:");
    let _ = writeln!(
        t,
        "  no lost write      {}  {} acknowledged puts checked ({} write-once), {} lost{}",
        verdict(v.lost.pass()),
        v.lost.checked,
        v.lost.write_once,
        v.lost.lost.len(),
        if v.lost.unreadable.is_empty() {
            String::new()
        } else {
            format!(", final state unreadable at {:?}", v.lost.unreadable)
        }
    );
    let _ = writeln!(
        t,
        "  linearizable       {}  {} groups, {} operations ({} unknown), {} configurations explored{}",
        verdict(v.linear.pass()),
        v.linear.groups,
        v.linear.ops,
        v.linear.unknown,
        v.linear.explored,
        if v.linear.needed_late_unknown > 0 {
            format!(
                "; {} group(s) passed only once unknown operations could take effect any time later",
                v.linear.needed_late_unknown
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        t,
        "  no phantom reads   {}  {} reads checked, {} phantom",
        verdict(v.phantom.pass()),
        v.phantom.reads_checked,
        v.phantom.phantoms.len()
    );
    let _ = writeln!(
        t,
        "  convergence        {}  {}",
        verdict(v.convergence.pass),
        match (&v.convergence.applied, v.convergence.problems.is_empty()) {
            (Some(a), true) =>
                format!("every member applied {a}; saved-files.json and namespace identical"),
            _ => v.convergence.problems.join("; "),
        }
    );
    let _ = writeln!(
        t,
        "  replication        {}  {} under-replicated files after healing",
        verdict(v.replication.pass),
        v.replication
            .under_replicated_files
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown number of".into())
    );
    let _ = writeln!(
        t,
        "  quorum             {}  {} majority-down windows, {} ops acknowledged without a quorum, {} not recovered",
        verdict(v.quorum.pass()),
        v.quorum.windows,
        v.quorum.served_without_quorum.len(),
        v.quorum.not_recovered
    );
    let av = &v.availability;
    let secs = |us: u64| us as f64 / 1e6;
    let _ = writeln!(
        t,
        "  availability       {}  longest healthy window without an acknowledged write {:.1} s (bound {:.1} s){}; {:.1} s of {:.1} s excused (majority or chunk servers down)",
        verdict(av.pass()),
        secs(av.longest_us()),
        secs(av.bound_us),
        av.longest
            .as_ref()
            .map(|w| format!(" at {:.1}..{:.1} s", secs(w.start_us), secs(w.end_us)))
            .unwrap_or_default(),
        secs(av.unhealthy_us),
        secs(av.span_us),
    );
    let _ = writeln!(
        t,
        "                     longest per fault active: {}",
        if av.per_fault.is_empty() {
            "(no window)".to_string()
        } else {
            av.per_fault
                .iter()
                .map(|(k, us)| format!("{k} {:.1} s", secs(*us)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let mut details: Vec<String> = Vec::new();
    for l in &v.lost.lost {
        let acked = h.ops.iter().find(|o| o.id == l.op).map(|o| o.complete_us);
        details.push(format!(
            "lost write: op {} put {} content {} -> at the end: {}; {}",
            l.op,
            l.path,
            l.content,
            l.found,
            acked.map_or_else(String::new, |t| crate::checker::fault_after(&h.faults, t))
        ));
    }
    details.extend(
        v.linear
            .violations
            .iter()
            .map(|s| format!("not linearizable: {s}")),
    );
    details.extend(
        v.linear
            .inconclusive
            .iter()
            .map(|s| format!("linearizability inconclusive: {s}")),
    );
    for p in &v.phantom.phantoms {
        details.push(format!(
            "phantom: op {} {} {}: {}",
            p.op, p.path, p.content, p.why
        ));
    }
    for id in v.quorum.served_without_quorum.iter().take(10) {
        details.push(format!("acknowledged while a majority was down: op {id}"));
    }
    for w in av.over_bound.iter().take(10) {
        details.push(format!(
            "no write acknowledged for {:.1} s while healthy: {:.3} s .. {:.3} s, faults active: {}",
            secs(w.len_us()),
            secs(w.start_us),
            secs(w.end_us),
            w.faults.join(", ")
        ));
    }
    if !details.is_empty() {
        let _ = writeln!(t, "violations:");
        for d in details.iter().take(20) {
            let _ = writeln!(t, "  {d}");
        }
        if details.len() > 20 {
            let _ = writeln!(t, "  ... and {} more", details.len() - 20);
        }
    }
    let _ = writeln!(t, "verdict: {}", verdict(pass));
    let _ = writeln!(t, "history: {}", history_path.display());

    let ops: BTreeMap<&str, Value> = by_kind
        .iter()
        .map(|(k, c)| {
            (
                k.name(),
                json!({"ok": c[0], "failed": c[1], "unknown": c[2]}),
            )
        })
        .collect();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let json = json!({
        "verdict": if pass { "pass" } else { "fail" },
        "ops_ok": ok,
        "ops_failed": failed,
        "ops_unknown": unknown,
        "leader_kills": leader_kills,
        "lost_writes": v.lost.lost.len(),
        "write_once_puts_checked": v.lost.write_once,
        "linearizable": v.linear.pass(),
        "failover_ms": {"p50": round(fo.p50()), "p99": round(fo.p99()), "max": round(fo.max()), "kills_measured": fo.gaps_ms.len(), "never": fo.never},
        "majority_kills": majority_kills,
        "chunk_kills": chunk_kills,
        "chunk_servers_lost": chunks_lost,
        "pauses": pauses,
        "chunk_freezes": freezes,
        "cuts": cuts,
        "partitions": partitions,
        "power_cuts": power_cuts,
        "disk_faults": disk_faults,
        "partition_next_ack_ms": {"p50": round(parted.p50()), "max": round(parted.max()), "never": parted.never},
        "heal_next_ack_ms": {"p50": round(healed.p50()), "max": round(healed.max()), "never": healed.never},
        "ops": ops,
        "get_data_errors": data_errors,
        "get_overtaken": overtaken,
        "checkers": {
            "no_lost_write": {"pass": v.lost.pass(), "checked": v.lost.checked, "lost": v.lost.lost.len(), "unreadable": v.lost.unreadable},
            "linearizable": {"pass": v.linear.pass(), "groups": v.linear.groups, "ops": v.linear.ops, "unknown": v.linear.unknown, "violations": v.linear.violations, "inconclusive": v.linear.inconclusive},
            "no_phantom_reads": {"pass": v.phantom.pass(), "reads": v.phantom.reads_checked, "phantoms": v.phantom.phantoms.len()},
            "convergence": {"pass": v.convergence.pass, "applied": v.convergence.applied, "problems": v.convergence.problems},
            "replication": {"pass": v.replication.pass, "under_replicated_files": v.replication.under_replicated_files},
            "quorum": {"pass": v.quorum.pass(), "windows": v.quorum.windows, "served_without_quorum": v.quorum.served_without_quorum.len(), "not_recovered": v.quorum.not_recovered},
            "availability": {
                "pass": av.pass(),
                "bound_ms": av.bound_us / 1000,
                "longest_ms": av.longest_us() / 1000,
                "longest_window": av.longest.as_ref().map(|w| json!({"start_ms": w.start_us / 1000, "end_ms": w.end_us / 1000, "faults": w.faults})),
                "longest_per_fault_ms": av.per_fault.iter().map(|(k, us)| (k.clone(), json!(us / 1000))).collect::<serde_json::Map<_, _>>(),
                "excused_ms": av.unhealthy_us / 1000,
                "span_ms": av.span_us / 1000,
                "over_bound": av.over_bound.len(),
            },
        },
        "duration_s": run.duration_s,
        "clients": run.clients,
        "history": history_path.display().to_string(),
    });
    Summary {
        pass,
        json,
        table: t,
    }
}
