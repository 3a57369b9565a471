//! Cluster membership and status: `cluster status|leader|add-member|remove-member`.
use crate::output::{human_bytes, human_duration, print_json};
use crate::rpc;
use crate::Ctx;
use clap::Subcommand;
use dfs_proto::*;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members (role, term, last log and applied index) and chunk servers.
    #[command(after_help = "Example: dfsctl cluster status --json")]
    Status,
    /// Print the leader's id and address.
    Leader,
    /// Add a metasrv node: as a learner first, made a voter once it has caught up (admin).
    /// When it does not catch up within --timeout, it is removed again and the command fails.
    #[command(after_help = "Example: dfsctl --timeout 60 cluster add-member 4 127.0.0.1:7004")]
    AddMember { id: u64, addr: String },
    /// Remove a metasrv node from the group (admin).
    #[command(after_help = "Example: dfsctl cluster remove-member 4")]
    RemoveMember { id: u64 },
}

pub fn status_json(s: &ClusterStatusReply) -> serde_json::Value {
    json!({
        "cluster_id": s.cluster_id,
        "leader": s.leader,
        "term": s.term,
        "members": s.members.iter().map(|m| json!({
            "id": m.id, "addr": m.addr, "role": m.role, "term": m.term,
            "last_log_index": m.last_log_index, "applied": m.applied, "reachable": m.reachable,
        })).collect::<Vec<_>>(),
        "chunk_servers": s.chunk_servers.iter().map(|c| json!({
            "id": c.id, "addr": c.addr, "live": c.live, "stalled": c.stalled, "capacity_bytes": c.capacity_bytes,
            "used_bytes": c.used_bytes, "chunks": c.chunks,
        })).collect::<Vec<_>>(),
        "files": s.files,
        "under_replicated_files": s.under_replicated_files,
        "trash_files": s.trash_files,
        "trash_bytes": s.trash_bytes,
        "trash_retention_ms": s.trash_retention_ms,
        "open_leases": s.open_leases,
        "oldest_lease_age_ms": s.oldest_lease_age_ms,
        "revoked": s.revoked,
    })
}

pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    match cmd {
        ClusterCmd::Status => {
            let s = rpc!(c, cluster_status, StatusRequest { stale: false })?;
            // Nodes of the local cluster are shown with their local names too (`chunk-2` is
            // not always id 2: chunk server ids are given at registration).
            let names = crate::local::local_names(&ctx.meta);
            let name = |addr: &str| names.get(addr).cloned().unwrap_or_default();
            let shown = |addr: &str| {
                names
                    .get(addr)
                    .map(|n| format!("  {n}"))
                    .unwrap_or_default()
            };
            if ctx.json {
                let mut v = status_json(&s);
                if !names.is_empty() {
                    for key in ["members", "chunk_servers"] {
                        for m in v[key].as_array_mut().into_iter().flatten() {
                            let n = name(m["addr"].as_str().unwrap_or(""));
                            m["local_name"] = json!(n);
                        }
                    }
                }
                print_json(&v);
                return Ok(0);
            }
            println!(
                "cluster {}  leader {}  term {}",
                s.cluster_id, s.leader, s.term
            );
            let local = if names.is_empty() { "" } else { "  LOCAL NAME" };
            println!(
                "{:<4} {:<22} {:<12} {:>6} {:>10} {:>10}{local}",
                "ID", "ADDRESS", "ROLE", "TERM", "LAST LOG", "APPLIED"
            );
            for m in &s.members {
                println!(
                    "{:<4} {:<22} {:<12} {:>6} {:>10} {:>10}{}",
                    m.id,
                    m.addr,
                    m.role,
                    m.term,
                    m.last_log_index,
                    m.applied,
                    shown(&m.addr)
                );
            }
            if !s.chunk_servers.is_empty() {
                println!();
                println!(
                    "{:<4} {:<22} {:<6} {:>12} {:>12} {:>8}{local}",
                    "ID", "CHUNK SERVER", "LIVE", "USED", "CAPACITY", "CHUNKS"
                );
                for cs in &s.chunk_servers {
                    println!(
                        "{:<4} {:<22} {:<6} {:>12} {:>12} {:>8}{}",
                        cs.id,
                        cs.addr,
                        // STALL: live, but a writer saw it make no progress (no new chunks).
                        match (cs.live, cs.stalled) {
                            (false, _) => "NO",
                            (true, true) => "STALL",
                            (true, false) => "yes",
                        },
                        human_bytes(cs.used_bytes),
                        human_bytes(cs.capacity_bytes),
                        cs.chunks,
                        shown(&cs.addr)
                    );
                }
            }
            println!(
                "\n{} files, {} under-replicated",
                s.files, s.under_replicated_files
            );
            if !s.revoked.is_empty() {
                println!("revoked certificates: {}", s.revoked.join(", "));
            }
            if s.open_leases > 0 {
                println!(
                    "write leases: {} open, the oldest {}",
                    s.open_leases,
                    human_duration(s.oldest_lease_age_ms / 1000 * 1000)
                );
            }
            match s.trash_retention_ms {
                0 => println!("trash: off (deletes are for good)"),
                r => println!(
                    "trash: {} files, {} (counted in the files and space above; kept {} after deletion)",
                    s.trash_files,
                    human_bytes(s.trash_bytes),
                    human_duration(r)
                ),
            }
        }
        ClusterCmd::Leader => {
            let s = rpc!(c, cluster_status, StatusRequest { stale: false })?;
            let addr = s
                .members
                .iter()
                .find(|m| m.id == s.leader)
                .map(|m| m.addr.clone())
                .unwrap_or_default();
            if s.leader == 0 {
                anyhow::bail!("no leader is elected right now");
            }
            if ctx.json {
                print_json(&json!({"leader": s.leader, "addr": addr, "term": s.term}));
            } else {
                println!("{} {}", s.leader, addr);
            }
        }
        ClusterCmd::AddMember { id, addr } => {
            let c = c.patient();
            // The leader gets most of --timeout for the catch-up, the rest is left for its
            // answer (and for removing the learner again when it did not catch up).
            let catch_up = ctx
                .timeout
                .saturating_sub(std::time::Duration::from_secs(1))
                .max(ctx.timeout / 2);
            rpc!(
                c,
                add_member,
                AddMemberRequest {
                    id,
                    addr: addr.clone(),
                    catch_up_ms: catch_up.as_millis().max(1) as u64,
                }
            )?;
            if !ctx.quiet {
                eprintln!("node {id} at {addr} caught up and is now a voting member");
            }
        }
        ClusterCmd::RemoveMember { id } => {
            rpc!(c, remove_member, RemoveMemberRequest { id })?;
            if !ctx.quiet {
                eprintln!("node {id} removed");
            }
        }
    }
    Ok(0)
}
