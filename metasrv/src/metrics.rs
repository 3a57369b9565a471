//! Prometheus metrics of a metasrv node, rendered as text on `--metrics` (`/metrics`), with
//! `/healthz` (store usable) and `/leader` (200 on the leader, 503 elsewhere).
use crate::service::MetaNode;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    pub auth_failures: Counter,
    pub bad_replica_reports: Counter,
    pub leader_changes: Counter,
    requests: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
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
        let mut g = self.requests.lock().unwrap_or_else(|p| p.into_inner());
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

fn gauge(out: &mut String, name: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// Render everything this node knows as Prometheus text.
pub fn render(node: &MetaNode, log_size: (u64, u64), sled_bytes: u64, syncs: (u64, u64)) -> String {
    let m = node.raft.metrics().borrow().clone();
    let mut out = String::new();
    gauge(
        &mut out,
        "dfs_meta_node_id",
        "This metasrv node's id.",
        node.id,
    );
    gauge(
        &mut out,
        "dfs_raft_term",
        "Current Raft term.",
        m.current_term,
    );
    gauge(
        &mut out,
        "dfs_raft_is_leader",
        "1 if this node is the Raft leader.",
        u8::from(m.current_leader == Some(node.id)),
    );
    gauge(
        &mut out,
        "dfs_raft_leader_id",
        "Id of the leader this node knows (0 if none).",
        m.current_leader.unwrap_or(0),
    );
    gauge(
        &mut out,
        "dfs_raft_last_log_index",
        "Index of the last log entry.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        &mut out,
        "dfs_raft_applied_index",
        "Index of the last applied entry.",
        m.last_applied.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        &mut out,
        "dfs_raft_snapshot_index",
        "Index covered by the latest snapshot.",
        m.snapshot.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        &mut out,
        "dfs_raft_purged_index",
        "Index up to which the log was purged.",
        m.purged.map(|l| l.index).unwrap_or(0),
    );
    gauge(
        &mut out,
        "dfs_raft_log_entries",
        "Entries in the Raft log on disk.",
        log_size.0,
    );
    gauge(
        &mut out,
        "dfs_raft_log_bytes",
        "Bytes of Raft log entries on disk.",
        log_size.1,
    );
    gauge(
        &mut out,
        "dfs_sled_size_bytes",
        "Size of the sled database on disk.",
        sled_bytes,
    );
    counter(
        &mut out,
        "dfs_sled_syncs_total",
        "Group-commit syncs (sled flush + fdatasync).",
        syncs.0,
    );
    let _ = writeln!(out, "# HELP dfs_sled_sync_seconds_total Time spent in syncs.\n# TYPE dfs_sled_sync_seconds_total counter\ndfs_sled_sync_seconds_total {}", syncs.1 as f64 / 1e9);
    counter(
        &mut out,
        "dfs_raft_leader_changes_total",
        "Times this node saw the leader change.",
        node.metrics.leader_changes.get(),
    );
    {
        let st = node.read_state();
        let (files, dirs, bytes) = st.totals();
        gauge(&mut out, "dfs_files", "Files in the namespace.", files);
        gauge(
            &mut out,
            "dfs_directories",
            "Directories in the namespace.",
            dirs,
        );
        gauge(
            &mut out,
            "dfs_file_bytes",
            "Bytes in all files (before replication).",
            bytes,
        );
        gauge(&mut out, "dfs_users", "Known users.", st.users.len());
        gauge(
            &mut out,
            "dfs_under_replicated_files",
            "Files with a chunk below its replication factor.",
            st.under_replicated_files(),
        );
        let live = st
            .chunk_servers
            .keys()
            .filter(|id| node.liveness.is_live(**id))
            .count();
        gauge(
            &mut out,
            "dfs_chunk_servers_live",
            "Registered chunk servers heard from recently.",
            live,
        );
        gauge(
            &mut out,
            "dfs_chunk_servers_dead",
            "Registered chunk servers not heard from recently.",
            st.chunk_servers.len() - live,
        );
        let pending: usize = st.pending_deletes.values().map(|s| s.len()).sum();
        gauge(
            &mut out,
            "dfs_chunk_deletes_pending",
            "Chunk replicas waiting to be deleted.",
            pending,
        );
    }
    counter(
        &mut out,
        "dfs_auth_failures_total",
        "Requests refused for bad credentials.",
        node.metrics.auth_failures.get(),
    );
    counter(
        &mut out,
        "dfs_bad_replica_reports_total",
        "Replicas reported bad by readers.",
        node.metrics.bad_replica_reports.get(),
    );
    let reqs = node
        .metrics
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _ = writeln!(out, "# HELP dfs_request_duration_seconds Meta requests by method and outcome.\n# TYPE dfs_request_duration_seconds histogram");
    for ((method, outcome), h) in &reqs {
        let l = format!("method=\"{method}\",outcome=\"{outcome}\"");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "dfs_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "dfs_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "dfs_request_duration_seconds_sum{{{l}}} {}", h.sum);
        let _ = writeln!(out, "dfs_request_duration_seconds_count{{{l}}} {}", h.count);
    }
    out
}
