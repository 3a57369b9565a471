//! `dfsctl admin health`: is the cluster healthy? One line per problem, then the overall
//! verdict, like `ceph health`: OK (exit 0), WARN (exit 1) or ERR (exit 2).
//!
//! How it finds out, without needing a leader:
//! - every `--meta` address is asked for `ClusterStatus` directly (stale, short timeouts, in
//!   parallel); each node answers from its own view, pinging the other members. The answer from
//!   the node that knows a leader in the highest term is used. No answer at all is ERR.
//! - when a leader is known, its `fsck` counts chunks with too few (WARN) or no good (ERR)
//!   replicas, so `health` and `admin fsck` judge a chunk the same way (a replica reported
//!   corrupt, or on a server that is not live, is not good: fsck's CORRUPT is health's ERR).
//!   Without a leader, and only when a chunk server is down, the files the caller can see are
//!   checked instead (one stale `stat` per file, at most `--check-files` files).
//!
//! What is judged: no leader or no quorum (ERR); members down, candidates, or lagging the leader
//! (WARN); chunk servers down or reported stalled (WARN; all of them down ERR); under-replicated
//! chunks (WARN) and chunks with no live replica (ERR); chunk server disks over `--warn-full`
//! (WARN) or `--err-full` percent (ERR).
use crate::client::MetaConn;
use crate::output::{human_bytes, print_json, status_line};
use crate::rpc;
use crate::Ctx;
use clap::Args;
use dfs_proto::*;
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// Longest one metadata node may take to answer the status request.
const PER_NODE_TIMEOUT: Duration = Duration::from_millis(2500);
/// Concurrent `stat` calls of the chunk check.
const CHECK_CONCURRENCY: usize = 16;

#[derive(Args, Debug, Clone)]
pub struct HealthArgs {
    /// Warn when a chunk server's used bytes reach this percentage of its capacity.
    #[arg(long, default_value_t = 85.0, value_name = "PERCENT")]
    pub warn_full: f64,
    /// Error when a chunk server's used bytes reach this percentage of its capacity.
    #[arg(long, default_value_t = 95.0, value_name = "PERCENT")]
    pub err_full: f64,
    /// Warn when a member's applied index is this many entries behind the leader's log.
    #[arg(long, default_value_t = 1000, value_name = "ENTRIES")]
    pub max_lag: u64,
    /// Most files checked one by one (when no leader runs the check and a chunk server is
    /// down); 0: no chunk check at all.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub check_files: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    Warn,
    Err,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "OK",
            Severity::Warn => "WARN",
            Severity::Err => "ERR",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Severity::Ok => 0,
            Severity::Warn => 1,
            Severity::Err => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub message: String,
}

/// What the chunk check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkCheck {
    pub files: usize,
    pub under_replicated: u64,
    pub missing: u64,
    pub files_with_missing: u64,
    pub first_missing: Option<String>,
    /// Files not checked (more than `--check-files`), or why the check failed.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub summary: String,
}

impl Report {
    pub fn severity(&self) -> Severity {
        self.problems
            .iter()
            .map(|p| p.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }
}

fn problem(out: &mut Vec<Problem>, severity: Severity, message: String) {
    out.push(Problem { severity, message });
}

/// Chunk servers registered but not live (the check is needed only then).
fn dead_servers(s: &ClusterStatusReply) -> usize {
    s.chunk_servers.iter().filter(|c| !c.live).count()
}

/// Judge one status answer (and the chunk check, when it ran). Pure, for tests.
pub fn assess(s: &ClusterStatusReply, a: &HealthArgs, chunks: Option<&ChunkCheck>) -> Report {
    let mut p = Vec::new();
    // Metadata group.
    let reachable = s.members.iter().filter(|m| m.reachable).count();
    // Unreachable members are counted as voters: their role cannot be known.
    let voters = s.members.iter().filter(|m| m.role != "learner").count();
    let reachable_voters = s
        .members
        .iter()
        .filter(|m| m.reachable && m.role != "learner")
        .count();
    let quorum = voters / 2 + 1;
    let leader = s.members.iter().find(|m| m.id == s.leader);
    if s.leader == 0 {
        problem(
            &mut p,
            Severity::Err,
            format!(
                "no metadata leader (term {}): writes and linearizable reads stop until a majority of members is up",
                s.term
            ),
        );
    } else if !leader.is_some_and(|l| l.reachable) {
        problem(
            &mut p,
            Severity::Err,
            format!(
                "the leader, member {}, is not reachable; an election should follow",
                s.leader
            ),
        );
    }
    if voters > 0 && reachable_voters < quorum {
        problem(
            &mut p,
            Severity::Err,
            format!(
                "only {reachable_voters} of {voters} metadata members are reachable, {quorum} are needed: the cluster cannot commit"
            ),
        );
    }
    for m in s.members.iter().filter(|m| !m.reachable) {
        problem(
            &mut p,
            Severity::Warn,
            format!(
                "metadata member {} ({}) is down or unreachable",
                m.id, m.addr
            ),
        );
    }
    let leader_log = leader
        .filter(|l| l.reachable)
        .map(|l| l.last_log_index)
        .unwrap_or(0);
    for m in s.members.iter().filter(|m| m.reachable) {
        if m.role == "candidate" {
            problem(
                &mut p,
                Severity::Warn,
                format!(
                    "metadata member {} ({}) is a candidate: an election is under way",
                    m.id, m.addr
                ),
            );
        }
        let lag = leader_log.saturating_sub(m.applied);
        if m.id != s.leader && leader_log > 0 && lag > a.max_lag {
            problem(
                &mut p,
                Severity::Warn,
                format!(
                    "metadata member {} ({}) lags the leader by {lag} log entries (applied {}, leader's log {leader_log})",
                    m.id, m.addr, m.applied
                ),
            );
        }
    }
    // Chunk servers.
    let live = s.chunk_servers.iter().filter(|c| c.live).count();
    if s.chunk_servers.is_empty() {
        problem(
            &mut p,
            Severity::Warn,
            "no chunk server is registered: nothing can be stored (start one with `chunksrv --meta ...`)".into(),
        );
    } else if live == 0 {
        problem(
            &mut p,
            Severity::Err,
            format!(
                "none of the {} chunk servers is live: files can be neither read nor written",
                s.chunk_servers.len()
            ),
        );
    }
    for c in s.chunk_servers.iter().filter(|c| !c.live) {
        let seen = if c.last_seen_ms == u64::MAX {
            "not heard from since this metadata node started".to_string()
        } else {
            format!("not heard from for {} s", c.last_seen_ms / 1000)
        };
        problem(
            &mut p,
            Severity::Warn,
            format!("chunk server {} ({}) is down: {seen}", c.id, c.addr),
        );
    }
    for c in s.chunk_servers.iter().filter(|c| c.live && c.stalled) {
        problem(
            &mut p,
            Severity::Warn,
            format!(
                "chunk server {} ({}) stalls writes: a writer saw it make no progress in the last 30 s, so it gets no new chunks (check its disks)",
                c.id, c.addr
            ),
        );
    }
    for c in s
        .chunk_servers
        .iter()
        .filter(|c| c.live && c.capacity_bytes > 0)
    {
        let pct = c.used_bytes as f64 * 100.0 / c.capacity_bytes as f64;
        let sev = if pct >= a.err_full {
            Severity::Err
        } else if pct >= a.warn_full {
            Severity::Warn
        } else {
            continue;
        };
        problem(
            &mut p,
            sev,
            format!(
                "chunk server {} ({}) is {pct:.1}% full ({} of {})",
                c.id,
                c.addr,
                human_bytes(c.used_bytes),
                human_bytes(c.capacity_bytes)
            ),
        );
    }
    // Chunks.
    if s.under_replicated_files > 0 {
        problem(
            &mut p,
            Severity::Warn,
            format!(
                "{} file(s) have chunks written to fewer chunk servers than their replication factor",
                s.under_replicated_files
            ),
        );
    }
    if let Some(c) = chunks {
        if c.missing > 0 {
            problem(
                &mut p,
                Severity::Err,
                format!(
                    "{} chunk(s) of {} file(s) have no good replica on a live chunk server: those files cannot be read (e.g. {}; `dfsctl admin fsck` says CORRUPT)",
                    c.missing,
                    c.files_with_missing,
                    c.first_missing.as_deref().unwrap_or("?")
                ),
            );
        }
        if c.under_replicated > c.missing {
            problem(
                &mut p,
                Severity::Warn,
                format!(
                    "{} chunk(s) have fewer live replicas than their replication factor",
                    c.under_replicated - c.missing
                ),
            );
        }
        if let Some(why) = &c.skipped {
            problem(
                &mut p,
                Severity::Warn,
                format!("chunks were not checked for live replicas: {why}"),
            );
        }
    }
    let summary = format!(
        "leader {}, term {}, {reachable}/{} metadata members reachable, {live}/{} chunk servers live, {} files",
        if s.leader == 0 {
            "none".to_string()
        } else {
            s.leader.to_string()
        },
        s.term,
        s.members.len(),
        s.chunk_servers.len(),
        s.files
    );
    Report {
        problems: p,
        summary,
    }
}

/// Ask every address for its view; the best answer, or every node's error.
async fn best_status(ctx: &Ctx) -> Result<ClusterStatusReply, Vec<String>> {
    let per_node = PER_NODE_TIMEOUT.min(ctx.timeout);
    let asks = ctx.meta.iter().map(|addr| async move {
        let conn = MetaConn::connect(
            std::slice::from_ref(addr),
            ctx.auth_file.as_deref(),
            per_node,
        )
        .map_err(|e| format!("{addr}: {e:#}"))?;
        rpc!(conn, cluster_status, StatusRequest { stale: true })
            .map_err(|s| format!("{addr}: {}", status_line(&s)))
    });
    let answers = futures::future::join_all(asks).await;
    let mut errors = Vec::new();
    let mut best: Option<ClusterStatusReply> = None;
    let rank = |s: &ClusterStatusReply| {
        (
            s.leader != 0,
            s.term,
            s.members.iter().filter(|m| m.reachable).count(),
        )
    };
    for a in answers {
        match a {
            Ok(s) if best.as_ref().is_none_or(|b| rank(&s) > rank(b)) => best = Some(s),
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    best.ok_or(errors)
}

/// The chunk check by the leader's `fsck` (the same verdict as `admin fsck`); None when no
/// leader answers within a short deadline (the caller then falls back to `check_chunks`).
async fn fsck_chunks(ctx: &Ctx) -> Option<ChunkCheck> {
    let per_node = (PER_NODE_TIMEOUT * 2).min(ctx.timeout);
    let conn = MetaConn::connect(&ctx.meta, ctx.auth_file.as_deref(), per_node).ok()?;
    let r = tokio::time::timeout(per_node + Duration::from_millis(500), async {
        rpc!(conn, fsck, FsckRequest { path: "/".into() })
    })
    .await
    .ok()?
    .ok()?;
    let mut out = ChunkCheck {
        files: r.files as usize,
        missing: r.missing_chunks,
        under_replicated: r.under_replicated_chunks + r.missing_chunks,
        ..Default::default()
    };
    for f in r.problems.iter().filter(|f| f.status == "missing") {
        out.files_with_missing += 1;
        if out.first_missing.as_ref().is_none_or(|p| f.path < *p) {
            out.first_missing = Some(f.path.clone());
        }
    }
    Some(out)
}

/// Count chunks of the visible files with too few or no replicas on live chunk servers.
async fn check_chunks(ctx: &Ctx, live: &BTreeSet<u64>, max_files: usize) -> ChunkCheck {
    let mut out = ChunkCheck::default();
    let conn = match ctx.client() {
        Ok(c) => c,
        Err(e) => {
            out.skipped = Some(format!("{e:#}"));
            return out;
        }
    };
    let list = match conn.list_all("/", true, true).await {
        Ok(l) => l,
        Err(s) => {
            out.skipped = Some(format!("listing failed: {}", status_line(&s)));
            return out;
        }
    };
    let files: Vec<String> = list
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.path)
        .collect();
    if files.len() > max_files {
        out.skipped = Some(format!(
            "{} files, more than --check-files {max_files}",
            files.len()
        ));
        return out;
    }
    out.files = files.len();
    let conn = &conn;
    let mut stats = futures::stream::iter(files.into_iter().map(|path| async move {
        let r = rpc!(
            conn,
            stat,
            StatRequest {
                path: path.clone(),
                stale: true
            }
        );
        (path, r)
    }))
    .buffer_unordered(CHECK_CONCURRENCY);
    while let Some((path, r)) = stats.next().await {
        let f = match r {
            Ok(f) => f,
            // Removed since the listing.
            Err(s) if s.code() == tonic::Code::NotFound => continue,
            Err(s) => {
                out.skipped = Some(format!("stat {path} failed: {}", status_line(&s)));
                return out;
            }
        };
        let mut file_missing = false;
        for c in &f.chunks {
            let copies = c.replicas.iter().filter(|r| live.contains(r)).count() as u32;
            if copies < f.replication {
                out.under_replicated += 1;
            }
            if copies == 0 {
                out.missing += 1;
                file_missing = true;
            }
        }
        if file_missing {
            out.files_with_missing += 1;
            if out.first_missing.as_ref().is_none_or(|p| path < *p) {
                out.first_missing = Some(path);
            }
        }
    }
    out
}

pub async fn run(ctx: &Ctx, a: HealthArgs) -> anyhow::Result<i32> {
    if ctx.meta.iter().all(|m| m.trim().is_empty()) {
        anyhow::bail!("no metadata node given: pass --meta host:port,... or set DFS_META (`dfsctl local up` prints it)");
    }
    let report = match best_status(ctx).await {
        Ok(s) => {
            let leader_up = s.members.iter().any(|m| m.id == s.leader && m.reachable);
            let fsck = if s.leader != 0 && leader_up && s.files > 0 && a.check_files > 0 {
                fsck_chunks(ctx).await
            } else {
                None
            };
            let chunks = if fsck.is_some() {
                fsck
            } else if dead_servers(&s) > 0 && s.files > 0 && a.check_files > 0 {
                let live: BTreeSet<u64> = s
                    .chunk_servers
                    .iter()
                    .filter(|c| c.live)
                    .map(|c| c.id)
                    .collect();
                Some(check_chunks(ctx, &live, a.check_files).await)
            } else {
                None
            };
            assess(&s, &a, chunks.as_ref())
        }
        Err(errors) => Report {
            problems: vec![Problem {
                severity: Severity::Err,
                message: format!(
                    "no metadata node answered, so there is no reachable leader: {}",
                    errors.join("; ")
                ),
            }],
            summary: format!("0/{} metadata nodes answered", ctx.meta.len()),
        },
    };
    let sev = report.severity();
    if ctx.json {
        print_json(&json!({
            "status": sev.as_str(),
            "problems": report.problems.iter().map(|p| json!({
                "severity": p.severity.as_str(), "message": p.message,
            })).collect::<Vec<_>>(),
            "summary": report.summary,
        }));
    } else {
        for p in &report.problems {
            println!("{:<5}{}", p.severity.as_str(), p.message);
        }
        println!("{} ({})", sev.as_str(), report.summary);
    }
    Ok(sev.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> HealthArgs {
        HealthArgs {
            warn_full: 85.0,
            err_full: 95.0,
            max_lag: 1000,
            check_files: 10_000,
        }
    }

    fn member(id: u64, role: &str, reachable: bool, log: u64) -> MemberStatus {
        MemberStatus {
            id,
            addr: format!("10.0.0.{id}:7001"),
            role: role.into(),
            term: 3,
            last_log_index: log,
            applied: log,
            reachable,
            commit: log,
        }
    }

    fn server(id: u64, live: bool, used: u64, cap: u64) -> ChunkServerStatus {
        ChunkServerStatus {
            id,
            addr: format!("10.0.1.{id}:7101"),
            live,
            capacity_bytes: cap,
            used_bytes: used,
            chunks: 1,
            stalled: false,
            last_seen_ms: if live { 300 } else { 12_000 },
        }
    }

    fn healthy() -> ClusterStatusReply {
        ClusterStatusReply {
            leader: 1,
            term: 3,
            members: vec![
                member(1, "leader", true, 100),
                member(2, "follower", true, 100),
                member(3, "follower", true, 99),
            ],
            chunk_servers: vec![
                server(1, true, 10, 100),
                server(2, true, 10, 100),
                server(3, true, 10, 100),
            ],
            cluster_id: "c".into(),
            files: 5,
            under_replicated_files: 0,
            ..Default::default()
        }
    }

    #[test]
    fn healthy_is_ok() {
        let r = assess(&healthy(), &args(), None);
        assert_eq!(r.problems, vec![]);
        assert_eq!(r.severity(), Severity::Ok);
        assert_eq!(r.severity().exit_code(), 0);
        assert!(r.summary.contains("leader 1"), "{}", r.summary);
    }

    #[test]
    fn a_dead_chunk_server_warns_and_missing_chunks_are_errors() {
        let mut s = healthy();
        s.chunk_servers[2].live = false;
        let r = assess(&s, &args(), None);
        assert_eq!(r.severity(), Severity::Warn);
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].message.contains("chunk server 3"));
        let check = ChunkCheck {
            files: 5,
            under_replicated: 4,
            missing: 1,
            files_with_missing: 1,
            first_missing: Some("/a".into()),
            skipped: None,
        };
        let r = assess(&s, &args(), Some(&check));
        assert_eq!(r.severity(), Severity::Err);
        assert!(r
            .problems
            .iter()
            .any(|p| p.message.contains("3 chunk(s) have fewer")));
        for c in &mut s.chunk_servers {
            c.live = false;
        }
        assert_eq!(assess(&s, &args(), None).severity(), Severity::Err);
    }

    #[test]
    fn a_stalled_chunk_server_warns() {
        let mut s = healthy();
        s.chunk_servers[0].stalled = true;
        let r = assess(&s, &args(), None);
        assert_eq!(r.severity(), Severity::Warn, "{:?}", r.problems);
        assert!(r
            .problems
            .iter()
            .any(|p| p.message.contains("stalls writes")));
    }

    #[test]
    fn losing_the_majority_is_an_error_and_one_member_a_warning() {
        let mut s = healthy();
        s.members[2] = member(3, "unreachable", false, 0);
        let r = assess(&s, &args(), None);
        assert_eq!(r.severity(), Severity::Warn, "{:?}", r.problems);
        s.members[1] = member(2, "unreachable", false, 0);
        s.leader = 0;
        let r = assess(&s, &args(), None);
        assert_eq!(r.severity(), Severity::Err);
        assert!(r
            .problems
            .iter()
            .any(|p| p.message.contains("no metadata leader")));
        assert!(r.problems.iter().any(|p| p.message.contains("only 1 of 3")));
        // A leader that still believes it leads without a majority is an error too.
        s.leader = 1;
        assert_eq!(assess(&s, &args(), None).severity(), Severity::Err);
    }

    #[test]
    fn lag_and_full_disks() {
        let mut s = healthy();
        s.members[2].applied = 10;
        s.members[0].last_log_index = 5000;
        s.chunk_servers[0].used_bytes = 90;
        let r = assess(&s, &args(), None);
        assert_eq!(r.severity(), Severity::Warn);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        s.chunk_servers[1].used_bytes = 99;
        assert_eq!(assess(&s, &args(), None).severity(), Severity::Err);
        s.chunk_servers.clear();
        s.chunk_servers.push(server(1, true, 0, 0));
        s.members[2].applied = 5000;
        s.members[1].applied = 5000;
        assert_eq!(assess(&s, &args(), None).problems, vec![]);
    }
}
