//! `dfsctl admin fsck [PATH]` (like `hdfs fsck`) and `dfsctl replication PATH N [-w]` (like
//! `hdfs dfs -setrep`).
//!
//! fsck lists, per file, the chunks that are missing (no good replica), under-replicated
//! (fewer good replicas than the file's replication factor; a replica on a server that is not
//! live counts as missing) or that have replicas reported corrupt, and ends with one line:
//! `HEALTHY` (exit 0), `DEGRADED` (under-replicated only, exit 2) or `CORRUPT` (a chunk has no
//! good replica, exit 1). Over-replicated chunks are listed but do not change the verdict.
use crate::output::print_json;
use crate::rpc;
use crate::Ctx;
use clap::Args;
use dfs_proto::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// File or directory to check (recursively).
    #[arg(default_value = "/")]
    pub path: String,
}

#[derive(Args, Debug)]
pub struct ReplicationArgs {
    /// A file, or a directory (every file under it).
    pub path: String,
    /// The new replication factor.
    pub replication: u32,
    /// Wait until every chunk has exactly this many live replicas.
    #[arg(short = 'w', long = "wait")]
    pub wait: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Degraded,
    Corrupt,
}

impl Verdict {
    pub fn of(r: &FsckReply) -> Verdict {
        if r.missing_chunks > 0 {
            Verdict::Corrupt
        } else if r.under_replicated_chunks > 0 || r.corrupt_replicas > 0 {
            Verdict::Degraded
        } else {
            Verdict::Healthy
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "HEALTHY",
            Verdict::Degraded => "DEGRADED",
            Verdict::Corrupt => "CORRUPT",
        }
    }
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Degraded => 2,
            Verdict::Corrupt => 1,
        }
    }
}

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

pub fn to_json(r: &FsckReply) -> serde_json::Value {
    json!({
        "status": Verdict::of(r).as_str(),
        "files": r.files,
        "chunks": r.chunks,
        "missing_chunks": r.missing_chunks,
        "under_replicated_chunks": r.under_replicated_chunks,
        "over_replicated_chunks": r.over_replicated_chunks,
        "corrupt_replicas": r.corrupt_replicas,
        "dead_servers": r.dead_servers,
        "repair_queue": r.repair_queue,
        "problems_left_off": r.problems_left_off,
        "problems": r.problems.iter().map(|f| json!({
            "path": f.path,
            "size": f.size,
            "replication": f.replication,
            "status": f.status,
            "chunks": f.chunks.iter().map(|c| json!({
                "index": c.index,
                "chunk_id": c.chunk_id,
                "live": c.live,
                "expected": c.expected,
                "missing": c.missing,
                "corrupt": c.corrupt,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub async fn fsck(ctx: &Ctx, a: FsckArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let r = rpc!(
        c,
        fsck,
        FsckRequest {
            path: a.path.clone()
        }
    )?;
    let verdict = Verdict::of(&r);
    if ctx.json {
        print_json(&to_json(&r));
        return Ok(verdict.exit_code());
    }
    for f in &r.problems {
        println!(
            "{}: {} ({} bytes, replication {})",
            f.path,
            f.status.to_uppercase(),
            f.size,
            f.replication
        );
        for ch in &f.chunks {
            let mut line = format!(
                "  chunk {} {}: {} of {} live replicas",
                ch.index, ch.chunk_id, ch.live, ch.expected
            );
            if !ch.missing.is_empty() {
                line.push_str(&format!(", missing on {}", ids(&ch.missing)));
            }
            if !ch.corrupt.is_empty() {
                line.push_str(&format!(", corrupt on {}", ids(&ch.corrupt)));
            }
            println!("{line}");
        }
    }
    if r.problems_left_off > 0 {
        println!(
            "... and {} more files with problems, not listed (fsck a subdirectory to see them)",
            r.problems_left_off
        );
    }
    println!(
        "{} files, {} chunks: {} missing, {} under-replicated, {} over-replicated, {} corrupt replicas; dead chunk servers: {}; repair queue: {}",
        r.files,
        r.chunks,
        r.missing_chunks,
        r.under_replicated_chunks,
        r.over_replicated_chunks,
        r.corrupt_replicas,
        if r.dead_servers.is_empty() { "none".to_string() } else { ids(&r.dead_servers) },
        r.repair_queue
    );
    println!("{}", verdict.as_str());
    Ok(verdict.exit_code())
}

pub async fn replication(ctx: &Ctx, a: ReplicationArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let started = Instant::now();
    // Applied to every file under a directory, like `hdfs dfs -setrep`.
    let listing = c.list_all(&a.path, true, false).await?;
    let files: Vec<String> = listing
        .into_iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.path)
        .collect();
    for p in &files {
        let request_id = crate::client::new_request_id();
        rpc!(
            c,
            set_replication,
            SetReplicationRequest {
                path: p.clone(),
                replication: a.replication,
                request_id: request_id.clone(),
            }
        )?;
    }
    // As `put --replication N` says UNDER-REPLICATED: a factor above the live chunk servers
    // cannot be reached until more join (each replica of a chunk needs its own server).
    let warning = live_chunk_servers(&c)
        .await
        .filter(|&live| (a.replication as usize) > live)
        .map(|live| {
            format!(
                "only {live} live chunk server(s): chunks stay UNDER-REPLICATED (at most {live} copies) until more join"
            )
        });
    if !ctx.quiet && !ctx.json {
        println!(
            "replication of {} file(s) under {} set to {}",
            files.len(),
            a.path,
            a.replication
        );
    }
    if let Some(w) = &warning {
        if !ctx.json && !a.wait {
            eprintln!("warning: {w}");
        }
        if a.wait {
            anyhow::bail!(
                "replication {} cannot be reached: {w} (the factor is set; drop -w to not wait)",
                a.replication
            );
        }
    }
    if a.wait {
        loop {
            let r = rpc!(
                c,
                fsck,
                FsckRequest {
                    path: a.path.clone()
                }
            )?;
            if r.problems.is_empty() {
                break;
            }
            if started.elapsed() > ctx.timeout {
                anyhow::bail!(
                    "replication {} not reached within {:.0} s: {} file(s) still differ (see `dfsctl admin fsck {}`)",
                    a.replication,
                    ctx.timeout.as_secs_f64(),
                    r.problems.len(),
                    a.path
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !ctx.quiet && !ctx.json {
            println!(
                "replication {} reached in {:.1} s",
                a.replication,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if ctx.json {
        print_json(
            &json!({"ok": true, "path": a.path, "files": files.len(), "replication": a.replication, "waited": a.wait, "warning": warning}),
        );
    }
    Ok(0)
}

/// Live chunk servers as the cluster status shows them; None when the status is not available
/// (the warning is then left out rather than the command failing).
async fn live_chunk_servers(c: &crate::client::MetaConn) -> Option<usize> {
    let s = rpc!(c, cluster_status, StatusRequest { stale: true }).ok()?;
    Some(s.chunk_servers.iter().filter(|s| s.live).count())
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Remove the orphans past their grace period (otherwise only list them).
    #[arg(long)]
    pub apply: bool,
}

/// `dfsctl admin gc [--apply]`: chunks on chunk servers that no file references.
pub async fn gc(ctx: &Ctx, a: GcArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let r = rpc!(c, gc, GcRequest { apply: a.apply })?;
    let due = r.orphans.iter().filter(|o| o.due).count();
    if ctx.json {
        print_json(&json!({
            "orphans": r.orphans.iter().map(|o| json!({
                "node_id": o.node_id,
                "chunk_id": o.chunk_id,
                "age_ms": o.age_ms,
                "due": o.due,
            })).collect::<Vec<_>>(),
            "due": due,
            "removed": r.removed,
            "applied": a.apply,
            "grace_ms": r.grace_ms,
            "unreported": r.unreported,
            "leased": r.leased,
        }));
        return Ok(0);
    }
    for o in &r.orphans {
        println!(
            "chunk server {} chunk {}: unreferenced for {:.0} s{}",
            o.node_id,
            o.chunk_id,
            o.age_ms as f64 / 1000.0,
            if o.due { ", past the grace period" } else { "" }
        );
    }
    if !r.unreported.is_empty() {
        println!(
            "no chunk report yet from chunk server(s) {} (their orphans are not known yet)",
            ids(&r.unreported)
        );
    }
    if r.leased > 0 {
        println!(
            "{} unreferenced chunk(s) held by writes still open (write leases): kept",
            r.leased
        );
    }
    let grace = r.grace_ms as f64 / 1000.0;
    if a.apply {
        println!(
            "{} orphan chunk(s), {due} past the {grace:.0} s grace period: {} queued for deletion",
            r.orphans.len(),
            r.removed
        );
    } else {
        println!(
            "{} orphan chunk(s), {due} past the {grace:.0} s grace period (remove them with --apply)",
            r.orphans.len()
        );
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct BalanceArgs {
    /// Run the moves (otherwise only show them).
    #[arg(long)]
    pub apply: bool,
    /// Balanced when the most and least used servers differ by at most this % of the mean.
    #[arg(long, default_value_t = 10)]
    pub threshold: u32,
    /// Most moves in one run.
    #[arg(long, default_value_t = 1000)]
    pub max_moves: u32,
}

/// `dfsctl admin balance [--apply]`: move replicas from the most to the least used servers.
pub async fn balance(ctx: &Ctx, a: BalanceArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?.patient();
    let r = rpc!(
        c,
        balance,
        BalanceRequest {
            apply: a.apply,
            threshold_percent: a.threshold.max(1),
            max_moves: a.max_moves.max(1),
        }
    )?;
    let failed = r.moves.iter().filter(|m| a.apply && !m.done).count();
    if ctx.json {
        print_json(&json!({
            "applied": a.apply,
            "moved": r.moved,
            "servers": r.servers.iter().map(|s| json!({"id": s.id, "addr": s.addr, "used_bytes": s.used_bytes})).collect::<Vec<_>>(),
            "moves": r.moves.iter().map(|m| json!({
                "path": m.path,
                "chunk_id": m.chunk_id,
                "from": m.from,
                "to": m.to,
                "size": m.size,
                "done": m.done,
                "error": m.error,
            })).collect::<Vec<_>>(),
        }));
        return Ok(if failed > 0 { 1 } else { 0 });
    }
    for s in &r.servers {
        println!(
            "chunk server {} ({}): {} used",
            s.id,
            s.addr,
            crate::output::human_bytes(s.used_bytes)
        );
    }
    for m in &r.moves {
        let state = if !a.apply {
            String::new()
        } else if m.done {
            ": done".to_string()
        } else {
            format!(": FAILED ({})", m.error)
        };
        println!(
            "move chunk {} of {} ({}): server {} -> {}{state}",
            m.chunk_id,
            m.path,
            crate::output::human_bytes(m.size),
            m.from,
            m.to
        );
    }
    if a.apply {
        println!("{} of {} move(s) done", r.moved, r.moves.len());
    } else if r.moves.is_empty() {
        println!("balanced: nothing to move");
    } else {
        println!("{} move(s) planned (run them with --apply)", r.moves.len());
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
