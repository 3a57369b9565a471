//! Prometheus metrics of a metasrv node, served on `--metrics` with `/healthz` and `/leader`.
//!
//! What must stay true:
//! - Every family starts with `dfs_`, carries its unit (`_seconds`, `_bytes`, `_total`) and has
//!   `# HELP` and `# TYPE`; `deploy/README.md` lists every one of them.
//! - Recording (`observe_request`, counters) is cheap and never fails; the cost of a scrape is
//!   bounded: the namespace scan (files, chunks, under-replicated and missing chunks) is redone
//!   only when the applied index or the set of live chunk servers changed, and then not sooner
//!   than `SCAN_COST_FACTOR` times its last duration (at most ~2% of a core whatever the
//!   namespace size; a million files: values up to ~5 s old). The Raft log's byte size (a full
//!   pass over the log) is measured at most every `LOG_BYTES_EVERY`.
//! - `/healthz` is 200 only while Raft runs and the data directory is usable; `/leader` is 200
//!   only on the node that is leader now (for load balancers, like HDFS's `/isActive`).
use crate::service::MetaNode;
use crate::store::{Durable, LogStore};
use crate::types::NodeId;
use dfs_common::promtext::{self, counter, escape, float, gauge, header, sample};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the Raft log's size in bytes is measured again (it reads the whole log).
const LOG_BYTES_EVERY: Duration = Duration::from_secs(10);
/// A namespace scan that took `d` is not redone before `d * SCAN_COST_FACTOR` has passed.
const SCAN_COST_FACTOR: u32 = 50;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Cumulative bucket counts, as the text format wants them.
#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What one pass over the namespace found.
#[derive(Default, Clone, Debug, PartialEq)]
struct Scan {
    files: u64,
    dirs: u64,
    file_bytes: u64,
    chunks: u64,
    replica_bytes: u64,
    replicas: u64,
    under_replicated_files: u64,
    under_replicated_chunks: u64,
    missing_chunks: u64,
    trash_files: u64,
    trash_bytes: u64,
}

/// When the scan was made: applied index and live chunk servers.
type ScanKey = (u64, Vec<NodeId>);

struct CachedScan {
    key: ScanKey,
    scan: Scan,
    at: Instant,
    took: Duration,
}

#[derive(Default)]
pub struct Metrics {
    pub auth_failures: Counter,
    pub auth_rate_limited: Counter,
    pub bad_replica_reports: Counter,
    pub stall_reports: Counter,
    pub trash_purged: Counter,
    pub leases_expired: Counter,
    pub lease_chunks_released: Counter,
    pub leader_changes: Counter,
    pub leaders_given_up: Counter,
    requests: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    scan: Mutex<Option<CachedScan>>,
    log_bytes: Mutex<Option<(Instant, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn observe_request(
        &self,
        method: &'static str,
        err: Option<&tonic::Status>,
        elapsed: Duration,
    ) {
        let outcome = match err {
            None => "ok",
            Some(s) => match s.code() {
                tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown => "error",
                _ => "refused",
            },
        };
        let secs = elapsed.as_secs_f64();
        let mut g = lock(&self.requests);
        let h = g.entry((method, outcome)).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
    }
}

/// One pass over the namespace. `live` is the set of chunk servers heard from recently.
fn scan(st: &crate::state::State, live: &BTreeSet<NodeId>) -> Scan {
    let mut s = Scan::default();
    for n in st.nodes.values() {
        let Some(f) = &n.file else {
            s.dirs += 1;
            continue;
        };
        s.files += 1;
        s.file_bytes += f.size;
        let mut file_under = false;
        for c in &f.chunks {
            s.chunks += 1;
            s.replica_bytes += c.size * c.replicas.len() as u64;
            s.replicas += c.replicas.len() as u64;
            file_under |= (c.replicas.len() as u32) < f.replication;
            let live_copies = c.replicas.iter().filter(|r| live.contains(r)).count() as u32;
            if live_copies < f.replication {
                s.under_replicated_chunks += 1;
            }
            if live_copies == 0 {
                s.missing_chunks += 1;
            }
        }
        if file_under {
            s.under_replicated_files += 1;
        }
    }
    (s.trash_files, _, s.trash_bytes) = st.trash_usage(None);
    s
}

/// The namespace scan, redone only when something it depends on changed, and not sooner than
/// `SCAN_COST_FACTOR` times its last duration.
fn cached_scan(node: &MetaNode, applied: u64) -> Scan {
    let live: BTreeSet<NodeId> = node.liveness.live().into_iter().map(|(id, _)| id).collect();
    let key: ScanKey = (applied, live.iter().copied().collect());
    let mut cache = lock(&node.metrics.scan);
    if let Some(c) = cache.as_ref() {
        if c.key == key || c.at.elapsed() < c.took * SCAN_COST_FACTOR {
            return c.scan.clone();
        }
    }
    let started = Instant::now();
    let s = scan(&node.read_state(), &live);
    *cache = Some(CachedScan {
        key,
        scan: s.clone(),
        at: Instant::now(),
        took: started.elapsed(),
    });
    s
}

fn log_bytes(node: &MetaNode, log: &LogStore) -> u64 {
    let mut cache = lock(&node.metrics.log_bytes);
    match *cache {
        Some((at, v)) if at.elapsed() < LOG_BYTES_EVERY => v,
        _ => {
            let v = log.log_size().1;
            *cache = Some((Instant::now(), v));
            v
        }
    }
}

/// Everything `render` reads besides the node itself.
pub struct Sources {
    pub log: LogStore,
    pub durable: Arc<Durable>,
    /// The sled directory (`<data-dir>/raft`).
    pub raft_dir: PathBuf,
}

/// Render everything this node knows as Prometheus text.
pub fn render(node: &MetaNode, src: &Sources) -> String {
    let m = node.raft.metrics().borrow().clone();
    let mut out = String::with_capacity(16 * 1024);
    let o = &mut out;
    promtext::build_info(o, "metasrv", env!("CARGO_PKG_VERSION"));
    gauge(o, "dfs_meta_node_id", "This metasrv node's id.", node.id);

    // Raft.
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let last_log = m.last_log_index.unwrap_or(0);
    let purged = m.purged.map(|l| l.index);
    gauge(o, "dfs_raft_term", "Current Raft term.", m.current_term);
    gauge(
        o,
        "dfs_raft_is_leader",
        "1 if this node is the Raft leader, else 0.",
        u8::from(m.current_leader == Some(node.id)),
    );
    gauge(
        o,
        "dfs_raft_leader_id",
        "Id of the leader this node knows (0 if none).",
        m.current_leader.unwrap_or(0),
    );
    header(
        o,
        "dfs_raft_state",
        "gauge",
        "1 for this node's Raft role (leader, follower, candidate, learner, shutdown).",
    );
    let role = format!("{:?}", m.state).to_lowercase();
    for s in ["leader", "follower", "candidate", "learner", "shutdown"] {
        sample(
            o,
            "dfs_raft_state",
            &format!("state=\"{s}\""),
            u8::from(role == s),
        );
    }
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    gauge(
        o,
        "dfs_raft_voters",
        "Voting members in the membership this node knows.",
        voters.len(),
    );
    gauge(
        o,
        "dfs_raft_members",
        "Members (voters and learners) in the membership this node knows.",
        membership.nodes().count(),
    );
    gauge(
        o,
        "dfs_raft_last_log_index",
        "Index of the last entry in this node's Raft log.",
        last_log,
    );
    // openraft does not publish the commit index: on the leader it is the index a majority
    // of voters has (from replication progress); elsewhere the applied index is the best known.
    let committed = match &m.replication {
        Some(rep) if m.current_leader == Some(node.id) => {
            let mut matched: Vec<u64> = voters
                .iter()
                .map(|v| {
                    if *v == node.id {
                        last_log
                    } else {
                        rep.get(v).copied().flatten().map(|l| l.index).unwrap_or(0)
                    }
                })
                .collect();
            matched.sort_unstable_by(|a, b| b.cmp(a));
            matched
                .get(voters.len() / 2)
                .copied()
                .unwrap_or(applied)
                .max(applied)
        }
        _ => applied,
    };
    gauge(
        o,
        "dfs_raft_committed_index",
        "Highest log index known committed (leader: held by a majority; elsewhere: applied).",
        committed,
    );
    gauge(
        o,
        "dfs_raft_applied_index",
        "Index of the last entry applied to this node's state machine.",
        applied,
    );
    gauge(
        o,
        "dfs_raft_snapshot_index",
        "Last log index covered by this node's latest snapshot.",
        m.snapshot.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        o,
        "dfs_raft_purged_index",
        "Index up to which this node's log was purged.",
        purged.unwrap_or(0),
    );
    let entries = match purged {
        Some(p) => last_log.saturating_sub(p),
        None if m.last_log_index.is_some() => last_log + 1,
        None => 0,
    };
    gauge(
        o,
        "dfs_raft_log_entries",
        "Entries in this node's Raft log on disk (after the purge point).",
        entries,
    );
    gauge(
        o,
        "dfs_raft_log_bytes",
        "Bytes of Raft log entries on disk (measured every 10 s).",
        log_bytes(node, &src.log),
    );
    if let (Some(rep), true) = (&m.replication, m.current_leader == Some(node.id)) {
        header(
            o,
            "dfs_raft_follower_matched_index",
            "gauge",
            "On the leader: last log index each follower or learner is known to hold.",
        );
        for (id, l) in rep.iter().filter(|(id, _)| **id != node.id) {
            let idx = l.map(|l| l.index).unwrap_or(0);
            sample(
                o,
                "dfs_raft_follower_matched_index",
                &format!("follower=\"{id}\""),
                idx,
            );
        }
        header(
            o,
            "dfs_raft_follower_lag_entries",
            "gauge",
            "On the leader: entries each follower or learner is behind the leader's log.",
        );
        for (id, l) in rep.iter().filter(|(id, _)| **id != node.id) {
            let idx = l.map(|l| l.index).unwrap_or(0);
            sample(
                o,
                "dfs_raft_follower_lag_entries",
                &format!("follower=\"{id}\""),
                last_log.saturating_sub(idx),
            );
        }
    }
    if let Some(ms) = m.millis_since_quorum_ack {
        gauge(
            o,
            "dfs_raft_quorum_ack_age_seconds",
            "On the leader: time since a majority last acknowledged it.",
            float(ms as f64 / 1000.0),
        );
    }
    counter(
        o,
        "dfs_raft_leader_changes_total",
        "Times this node saw the known leader change (to another node or to none).",
        node.metrics.leader_changes.get(),
    );
    counter(
        o,
        "dfs_raft_leaders_given_up_total",
        "Times this node gave up a leader that a majority of members could not reach.",
        node.metrics.leaders_given_up.get(),
    );

    // Storage.
    gauge(
        o,
        "dfs_sled_size_bytes",
        "Size on disk of this node's sled database (Raft log and state machine).",
        promtext::dir_size(&src.raft_dir),
    );
    counter(
        o,
        "dfs_sled_syncs_total",
        "Group-commit syncs (sled flush + fdatasync).",
        src.durable.syncs.load(Ordering::Relaxed),
    );
    counter(
        o,
        "dfs_sled_sync_seconds_total",
        "Time spent in group-commit syncs.",
        float(src.durable.sync_nanos.load(Ordering::Relaxed) as f64 / 1e9),
    );
    if let Some(fs) = promtext::fs_stats(&src.raft_dir) {
        gauge(
            o,
            "dfs_meta_fs_size_bytes",
            "Size of the filesystem holding this node's data directory.",
            fs.size_bytes,
        );
        gauge(
            o,
            "dfs_meta_fs_avail_bytes",
            "Free bytes (for unprivileged writers) on the filesystem holding the data directory.",
            fs.avail_bytes,
        );
    }

    // Namespace and chunk servers, from this node's applied state.
    let s = cached_scan(node, applied);
    gauge(o, "dfs_files", "Files in the namespace.", s.files);
    gauge(
        o,
        "dfs_directories",
        "Directories in the namespace.",
        s.dirs,
    );
    gauge(
        o,
        "dfs_file_bytes",
        "Bytes in all files (one copy, before replication).",
        s.file_bytes,
    );
    gauge(
        o,
        "dfs_trash_files",
        "Files (and links) in the trash, part of dfs_files: kept until purged.",
        s.trash_files,
    );
    gauge(
        o,
        "dfs_trash_bytes",
        "Bytes in files in the trash, part of dfs_file_bytes: their chunks stay until purged.",
        s.trash_bytes,
    );
    gauge(o, "dfs_chunks", "Chunks referenced by files.", s.chunks);
    gauge(
        o,
        "dfs_chunk_replicas",
        "Chunk replicas recorded in the chunk map.",
        s.replicas,
    );
    gauge(
        o,
        "dfs_chunk_replica_bytes",
        "Bytes of all recorded chunk replicas (what the chunk servers should hold).",
        s.replica_bytes,
    );
    gauge(
        o,
        "dfs_chunks_under_replicated",
        "Chunks with fewer replicas on live chunk servers than their file's replication factor.",
        s.under_replicated_chunks,
    );
    gauge(
        o,
        "dfs_chunks_missing",
        "Chunks with no replica on a live chunk server (unreadable now).",
        s.missing_chunks,
    );
    gauge(
        o,
        "dfs_under_replicated_files",
        "Files with a chunk that was written to fewer servers than its replication factor.",
        s.under_replicated_files,
    );
    {
        let st = node.read_state();
        gauge(o, "dfs_users", "Known users.", st.users.len());
        let pending: usize = st.pending_deletes.values().map(|s| s.len()).sum();
        gauge(
            o,
            "dfs_chunk_deletes_pending",
            "Chunk replicas waiting to be deleted by their chunk server.",
            pending,
        );
        let h = &node.healing;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        gauge(
            o,
            "dfs_repair_queue",
            "Replica copies waiting in the leader's last repair plan.",
            get(&h.queue),
        );
        gauge(
            o,
            "dfs_repair_lost_chunks",
            "Chunks with no good replica left in the last repair plan.",
            get(&h.lost),
        );
        gauge(
            o,
            "dfs_orphan_chunks_pending",
            "Chunk replicas no file references, seen by the leader's last scan.",
            get(&h.orphans_pending),
        );
        counter(
            o,
            "dfs_repair_copies_total",
            "Replica copies made and recorded by this leader.",
            get(&h.copies_total),
        );
        counter(
            o,
            "dfs_repair_copy_failures_total",
            "Replica copies that failed.",
            get(&h.copy_failures_total),
        );
        counter(
            o,
            "dfs_repair_copied_bytes_total",
            "Bytes copied by re-replication.",
            get(&h.copied_bytes_total),
        );
        counter(
            o,
            "dfs_repair_dropped_replicas_total",
            "Surplus or dead replicas dropped from the metadata.",
            get(&h.dropped_replicas_total),
        );
        // Sizes of what this node keeps in memory besides the namespace (each bounded).
        gauge(
            o,
            "dfs_request_ids_remembered",
            "Request ids remembered so that a retried write is not applied twice.",
            st.recent_requests.len(),
        );
        gauge(
            o,
            "dfs_request_ids_remembered_bytes",
            "Estimated bytes of the remembered request ids (bounded by the byte budget).",
            st.recent_requests.bytes(),
        );
        let (inv, dropped) = h.inventory_sizes();
        gauge(
            o,
            "dfs_inventory_chunks",
            "Chunk ids in the complete chunk-server inventories this node holds.",
            inv.chunks,
        );
        gauge(
            o,
            "dfs_inventories_assembling",
            "Chunk servers whose inventory listing is being assembled from heartbeat pages.",
            inv.assembling,
        );
        gauge(
            o,
            "dfs_inventory_assembling_chunks",
            "Chunk ids in the inventory listings being assembled.",
            inv.assembling_chunks,
        );
        counter(
            o,
            "dfs_inventory_listings_dropped_total",
            "Inventory listings dropped because a page did not follow the one before.",
            dropped,
        );
        let (bad, avoided) = h.remembered();
        gauge(
            o,
            "dfs_bad_replica_reports_remembered",
            "Replicas reported corrupt in the last 10 minutes, as the healer holds them.",
            bad,
        );
        gauge(
            o,
            "dfs_repair_targets_avoided",
            "Chunk servers left out of repair targets after a failed copy (for 30 s).",
            avoided,
        );
        let (charges, charged) = node.liveness.placement_charges();
        gauge(
            o,
            "dfs_placement_charges",
            "Recent chunk placements counted against chunk servers' free space until they land.",
            charges,
        );
        gauge(
            o,
            "dfs_placement_charged_bytes",
            "Bytes those placements charge.",
            charged,
        );
        let servers: Vec<(NodeId, String)> = st
            .chunk_servers
            .values()
            .map(|c| (c.id, c.addr.clone()))
            .collect();
        drop(st);
        let views: BTreeMap<NodeId, crate::liveness::ServerView> = servers
            .iter()
            .filter_map(|(id, _)| node.liveness.get(*id).map(|v| (*id, v)))
            .collect();
        let live = servers
            .iter()
            .filter(|(id, _)| node.liveness.is_live(*id))
            .count();
        gauge(
            o,
            "dfs_chunk_servers_live",
            "Registered chunk servers heard from in the last 4 s.",
            live,
        );
        gauge(
            o,
            "dfs_chunk_servers_dead",
            "Registered chunk servers not heard from in the last 4 s.",
            servers.len() - live,
        );
        gauge(
            o,
            "dfs_chunk_servers_stalled",
            "Registered chunk servers a writer reported stalled in the last 30 s (given no new chunks).",
            servers
                .iter()
                .filter(|(id, _)| node.liveness.is_stalled(*id))
                .count(),
        );
        let per_server: [(&str, &str); 6] = [
            (
                "dfs_chunk_server_live",
                "1 if the chunk server was heard from in the last 4 s (labels: server_id, addr).",
            ),
            (
                "dfs_chunk_server_used_bytes",
                "Chunk bytes a chunk server reported holding in its last heartbeat.",
            ),
            (
                "dfs_chunk_server_capacity_bytes",
                "Chunk bytes a chunk server accepts, from its last heartbeat.",
            ),
            (
                "dfs_chunk_server_chunks",
                "Chunks a chunk server reported holding in its last heartbeat.",
            ),
            (
                "dfs_chunk_server_heartbeat_age_seconds",
                "Time since this node last heard from a chunk server.",
            ),
            (
                "dfs_chunk_server_stalled",
                "1 if a writer reported the chunk server stalled in the last 30 s (labels: server_id, addr).",
            ),
        ];
        for (i, (name, help)) in per_server.iter().enumerate() {
            header(o, name, "gauge", help);
            for (id, addr) in &servers {
                let l = format!("server_id=\"{id}\",addr=\"{}\"", escape(addr));
                let v: Option<&crate::liveness::ServerView> = views.get(id);
                let value = match i {
                    0 => u8::from(node.liveness.is_live(*id)).to_string(),
                    1 => v.map(|v| v.used).unwrap_or(0).to_string(),
                    2 => v.map(|v| v.capacity).unwrap_or(0).to_string(),
                    3 => v.map(|v| v.chunks).unwrap_or(0).to_string(),
                    5 => u8::from(node.liveness.is_stalled(*id)).to_string(),
                    _ => match v {
                        Some(v) => float(v.last_seen.elapsed().as_secs_f64()),
                        None => "+Inf".into(),
                    },
                };
                sample(o, name, &l, value);
            }
        }
    }

    // Requests.
    counter(
        o,
        "dfs_auth_failures_total",
        "Requests refused for bad user or node credentials.",
        node.metrics.auth_failures.get(),
    );
    counter(
        o,
        "dfs_auth_rate_limited_total",
        "Requests refused unchecked: their address failed 20 logins for that user (or made 5 registrations) this minute.",
        node.metrics.auth_rate_limited.get(),
    );
    counter(
        o,
        "dfs_bad_replica_reports_total",
        "Replicas reported corrupt or unreadable by readers.",
        node.metrics.bad_replica_reports.get(),
    );
    counter(
        o,
        "dfs_stall_reports_total",
        "Chunk servers reported stalled by writers (no progress within the stall timeout).",
        node.metrics.stall_reports.get(),
    );
    let (leases, oldest) = node.read_state().lease_stats(crate::service::now_ms());
    gauge(
        o,
        "dfs_write_leases",
        "Write leases now live (writes open longer than their tokens' commit window).",
        leases,
    );
    gauge(
        o,
        "dfs_write_lease_oldest_age_seconds",
        "Age of the oldest live write lease (0: none).",
        float(match oldest {
            0 => 0.0,
            t => (crate::service::now_ms() - t).max(0) as f64 / 1000.0,
        }),
    );
    counter(
        o,
        "dfs_write_leases_expired_total",
        "Write leases this node dropped as leader because their writer went silent.",
        node.metrics.leases_expired.get(),
    );
    counter(
        o,
        "dfs_write_lease_chunks_released_total",
        "Chunks of expired write leases, left to the orphan collector.",
        node.metrics.lease_chunks_released.get(),
    );
    counter(
        o,
        "dfs_trash_purged_total",
        "Entries this node removed for good from the trash as leader (retention purge).",
        node.metrics.trash_purged.get(),
    );
    let reqs = lock(&node.metrics.requests).clone();
    let name = "dfs_meta_request_duration_seconds";
    header(
        o,
        name,
        "histogram",
        "Meta requests served by this node, by method and outcome (ok, refused, error).",
    );
    for ((method, outcome), h) in &reqs {
        let l = format!("method=\"{method}\",outcome=\"{outcome}\"");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "{name}_bucket{{{l},le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(o, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "{name}_sum{{{l}}} {}", float(h.sum));
        let _ = writeln!(o, "{name}_count{{{l}}} {}", h.count);
    }

    promtext::process(o);
    out
}

/// `/healthz`: Raft runs and the data directory can still be written.
pub fn health(node: &MetaNode, raft_dir: &std::path::Path) -> Result<(), String> {
    if let Err(e) = &node.raft.metrics().borrow().running_state {
        return Err(format!("raft stopped: {e}"));
    }
    promtext::dir_usable(raft_dir)
}

/// The handler for the `--metrics` address: `/metrics`, `/healthz`, `/leader`.
pub fn http_handler(node: Arc<MetaNode>, src: Sources) -> dfs_common::http::Handler {
    Arc::new(move |path: &str| match path {
        "/metrics" => (200, dfs_common::http::PROMETHEUS_TEXT, render(&node, &src)),
        "/healthz" => match health(&node, &src.raft_dir) {
            Ok(()) => (200, "text/plain", "ok\n".into()),
            Err(e) => (503, "text/plain", format!("{e}\n")),
        },
        "/leader" if node.is_leader() => (200, "text/plain", "leader\n".into()),
        "/leader" => (503, "text/plain", "not leader\n".into()),
        _ => (
            404,
            "text/plain",
            "try /metrics, /healthz or /leader\n".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChunkRef, FileData, Inode, State};

    fn file(replication: u32, chunks: &[&[NodeId]]) -> Inode {
        Inode {
            id: "x".into(),
            owner: "o".into(),
            created_ms: 0,
            modified_ms: 0,
            file: Some(FileData {
                size: 10 * chunks.len() as u64,
                replication,
                sha256: String::new(),
                chunk_size: 10,
                chunks: chunks
                    .iter()
                    .enumerate()
                    .map(|(i, r)| ChunkRef {
                        id: format!("c{i}"),
                        size: 10,
                        crc32c: 0,
                        replicas: r.to_vec(),
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scan_counts_under_replicated_and_missing_chunks() {
        let mut st = State::default();
        st.nodes.insert("/a".into(), file(2, &[&[1, 2], &[2, 3]]));
        st.nodes.insert("/b".into(), file(2, &[&[1]]));
        st.nodes.insert("/c".into(), file(1, &[&[3]]));
        let mut d = file(1, &[]);
        d.file = None;
        st.nodes.insert("/d".into(), d);
        let live: BTreeSet<NodeId> = [1, 2].into_iter().collect();
        let s = scan(&st, &live);
        assert_eq!((s.files, s.dirs, s.chunks, s.replicas), (3, 1, 4, 6));
        assert_eq!(s.file_bytes, 40);
        // /a c1 (2,3: one live), /b c0 (written once), /c c0 (on dead 3).
        assert_eq!(s.under_replicated_chunks, 3);
        assert_eq!(s.missing_chunks, 1);
        assert_eq!(s.under_replicated_files, 1);
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_request("stat", None, Duration::from_millis(3));
        m.observe_request("stat", None, Duration::from_secs(20));
        m.observe_request(
            "mkdir",
            Some(&tonic::Status::unavailable("x")),
            Duration::ZERO,
        );
        let g = lock(&m.requests);
        let h = &g[&("stat", "ok")];
        assert_eq!(h.count, 2);
        assert_eq!(
            h.counts[BUCKETS.iter().position(|b| *b == 0.005).unwrap()],
            1
        );
        assert_eq!(h.counts[BUCKETS.len() - 1], 1);
        assert_eq!(g[&("mkdir", "error")].count, 1);
    }
}
