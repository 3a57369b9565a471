//! Counters and gauges of this chunk server, and the tiny HTTP server that exposes them.
//!
//! What must stay true:
//! - Every name starts with `dfs_chunk_` and carries its unit (`_bytes`, `_seconds`, `_total`).
//! - Counters only go up; they are plain atomics, so recording never blocks and never fails.
//! - The HTTP side answers `GET /metrics` (Prometheus text format 0.0.4) and `GET /healthz`
//!   (`200 ok` while the data and backup directories can be written, `503` and the reason
//!   otherwise), one request per connection (`Connection: close`), and never lets a slow or
//!   malformed client hold anything but its own task.
//! - Besides the `dfs_chunk_*` families, the process (`dfs_process_*`) and build
//!   (`dfs_build_info`) families shared with metasrv are rendered by `dfs_common::promtext`.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Upper bounds (seconds) of the request-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long one metrics client may take to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head we read; longer requests are answered 400.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The chunk-path RPCs, for the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Read,
    Write,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Read => "read",
            Method::Write => "write",
        }
    }
}

/// A fixed-bucket latency histogram made of atomics.
#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything this process counts. Shared as `Arc<Metrics>`.
#[derive(Default)]
pub struct Metrics {
    // Gauges.
    pub bytes_stored: AtomicU64,
    pub chunks_stored: AtomicU64,
    pub capacity_bytes: AtomicU64,
    pub active_transfers: AtomicU64,
    pub node_id: AtomicU64,
    // Counters.
    pub reads_total: AtomicU64,
    pub writes_total: AtomicU64,
    pub read_bytes_total: AtomicU64,
    pub written_bytes_total: AtomicU64,
    pub deletes_total: AtomicU64,
    pub checksum_failures_total: AtomicU64,
    pub backup_restores_total: AtomicU64,
    pub token_rejections_total: AtomicU64,
    pub heartbeats_total: AtomicU64,
    pub heartbeat_failures_total: AtomicU64,
    // Request latency by method and outcome: [read ok, read error, write ok, write error].
    requests: [Histogram; 4],
    /// The store's directories (`data`, `backup`), for filesystem gauges and `/healthz`.
    dirs: OnceLock<Vec<(&'static str, PathBuf)>>,
    /// What the scrubber has done (it updates these itself).
    pub scrub: Arc<crate::scrub::ScrubStats>,
}

/// Decrements `active_transfers` when dropped.
pub struct TransferGuard {
    metrics: Arc<Metrics>,
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        self.metrics
            .active_transfers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Count one transfer as active until the returned guard is dropped.
    pub fn transfer(self: &Arc<Self>) -> TransferGuard {
        self.active_transfers.fetch_add(1, Ordering::Relaxed);
        TransferGuard {
            metrics: Arc::clone(self),
        }
    }

    /// Record one finished request.
    pub fn observe(&self, method: Method, ok: bool, elapsed: Duration) {
        let idx = match (method, ok) {
            (Method::Read, true) => 0,
            (Method::Read, false) => 1,
            (Method::Write, true) => 2,
            (Method::Write, false) => 3,
        };
        self.requests[idx].observe(elapsed);
    }

    /// Name the store's directories: their filesystems are reported and `/healthz` checks
    /// that they can be written. Only the first call counts.
    pub fn set_dirs(&self, data_dir: &Path, backup_dir: Option<&Path>) {
        let mut dirs = vec![("data", data_dir.to_path_buf())];
        if let Some(b) = backup_dir {
            dirs.push(("backup", b.to_path_buf()));
        }
        let _ = self.dirs.set(dirs);
    }

    /// Is the store usable: every directory exists, is writable and not on a read-only
    /// filesystem.
    pub fn health(&self) -> Result<(), String> {
        for (_, d) in self.dirs.get().map(Vec::as_slice).unwrap_or(&[]) {
            dfs_common::promtext::dir_usable(d)?;
        }
        Ok(())
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        dfs_common::promtext::build_info(&mut out, "chunksrv", env!("CARGO_PKG_VERSION"));
        let gauges: [(&str, &str, u64); 5] = [
            (
                "dfs_chunk_stored_bytes",
                "Bytes of chunk data stored (one copy; backups not counted).",
                get(&self.bytes_stored),
            ),
            (
                "dfs_chunk_stored_chunks",
                "Chunks stored on this server.",
                get(&self.chunks_stored),
            ),
            (
                "dfs_chunk_capacity_bytes",
                "Bytes of chunk data this server accepts (--capacity).",
                get(&self.capacity_bytes),
            ),
            (
                "dfs_chunk_active_transfers",
                "Reads and writes in progress.",
                get(&self.active_transfers),
            ),
            (
                "dfs_chunk_node_id",
                "Node id given by the metadata group (0 until registered).",
                get(&self.node_id),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters: [(&str, &str, u64); 11] = [
            (
                "dfs_chunk_reads_total",
                "Chunk reads served to the end.",
                get(&self.reads_total),
            ),
            (
                "dfs_chunk_writes_total",
                "Chunk writes made durable and acknowledged.",
                get(&self.writes_total),
            ),
            (
                "dfs_chunk_read_bytes_total",
                "Chunk bytes sent to readers.",
                get(&self.read_bytes_total),
            ),
            (
                "dfs_chunk_written_bytes_total",
                "Chunk bytes made durable by acknowledged writes.",
                get(&self.written_bytes_total),
            ),
            (
                "dfs_chunk_deletes_total",
                "Chunks deleted on the metadata group's order.",
                get(&self.deletes_total),
            ),
            (
                "dfs_chunk_checksum_failures_total",
                "Chunk copies found corrupt, truncated or unreadable.",
                get(&self.checksum_failures_total),
            ),
            (
                "dfs_chunk_backup_restores_total",
                "Primary chunk copies restored from the backup copy.",
                get(&self.backup_restores_total),
            ),
            (
                "dfs_chunk_token_rejections_total",
                "Requests refused for a missing, invalid or expired chunk token.",
                get(&self.token_rejections_total),
            ),
            (
                "dfs_chunk_heartbeats_total",
                "Heartbeats answered by a metadata node.",
                get(&self.heartbeats_total),
            ),
            (
                "dfs_chunk_heartbeat_failures_total",
                "Heartbeats that failed or timed out.",
                get(&self.heartbeat_failures_total),
            ),
            (
                "dfs_chunk_request_errors_total",
                "Chunk reads and writes that ended in an error.",
                get(&self.requests[1].count) + get(&self.requests[3].count),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let scrub: [(&str, &str, u64); 4] = [
            (
                "dfs_chunk_scrub_passes_total",
                "Scrub passes completed over every chunk.",
                get(&self.scrub.passes),
            ),
            (
                "dfs_chunk_scrubbed_chunks_total",
                "Chunks re-read and verified by the scrubber.",
                get(&self.scrub.chunks),
            ),
            (
                "dfs_chunk_scrubbed_bytes_total",
                "Bytes re-read and verified by the scrubber.",
                get(&self.scrub.bytes),
            ),
            (
                "dfs_chunk_scrub_lost_total",
                "Chunks the scrubber found with no good local copy (reported for repair).",
                get(&self.scrub.lost),
            ),
        ];
        for (name, help, v) in scrub {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "dfs_chunk_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Duration of chunk reads and writes, by method and outcome.\n# TYPE {name} histogram"
        );
        let labels = [
            (Method::Read, "ok"),
            (Method::Read, "error"),
            (Method::Write, "ok"),
            (Method::Write, "error"),
        ];
        for (h, (method, outcome)) in self.requests.iter().zip(labels) {
            let l = format!("method=\"{}\",outcome=\"{outcome}\"", method.as_str());
            let mut cumulative = 0u64;
            for (i, le) in BUCKETS.iter().enumerate() {
                cumulative += get(&h.buckets[i]);
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
            }
            cumulative += get(&h.buckets[BUCKETS.len()]);
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {cumulative}");
            let sum = get(&h.sum_micros) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{l}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{l}}} {}", get(&h.count));
        }
        let dirs = self.dirs.get().map(Vec::as_slice).unwrap_or(&[]);
        let stats: Vec<_> = dirs
            .iter()
            .filter_map(|(k, d)| dfs_common::promtext::fs_stats(d).map(|s| (k, s)))
            .collect();
        if !stats.is_empty() {
            let fams: [(&str, &str); 2] = [
                (
                    "dfs_chunk_fs_size_bytes",
                    "Size of the filesystem holding the data or backup directory (label dir).",
                ),
                (
                    "dfs_chunk_fs_avail_bytes",
                    "Free bytes (for unprivileged writers) on the filesystem of the data or backup directory.",
                ),
            ];
            for (i, (name, help)) in fams.iter().enumerate() {
                dfs_common::promtext::header(&mut out, name, "gauge", help);
                for (k, s) in &stats {
                    let v = if i == 0 { s.size_bytes } else { s.avail_bytes };
                    let _ = writeln!(out, "{name}{{dir=\"{k}\"}} {v}");
                }
            }
        }
        dfs_common::promtext::process(&mut out);
        out
    }
}

/// A response: status line, content type, body.
struct Reply {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

/// Decide the answer to one request line.
fn route(head: &str, metrics: &Metrics) -> (Reply, bool) {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    let text = "text/plain; charset=utf-8";
    let reply = if method.is_empty() || target.is_empty() {
        Reply {
            status: "400 Bad Request",
            content_type: text,
            body: "bad request\n".into(),
            allow: false,
        }
    } else if method != "GET" && method != "HEAD" {
        Reply {
            status: "405 Method Not Allowed",
            content_type: text,
            body: "only GET and HEAD are served\n".into(),
            allow: true,
        }
    } else {
        match path {
            "/metrics" => Reply {
                status: "200 OK",
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: metrics.render(),
                allow: false,
            },
            "/healthz" => match metrics.health() {
                Ok(()) => Reply {
                    status: "200 OK",
                    content_type: text,
                    body: "ok".into(),
                    allow: false,
                },
                Err(e) => Reply {
                    status: "503 Service Unavailable",
                    content_type: text,
                    body: format!("store not usable: {e}\n"),
                    allow: false,
                },
            },
            _ => Reply {
                status: "404 Not Found",
                content_type: text,
                body: "not found: try /metrics or /healthz\n".into(),
                allow: false,
            },
        }
    };
    (reply, head_only)
}

async fn handle(mut stream: TcpStream, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut len = 0;
    let read_head = async {
        loop {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(REQUEST_READ_TIMEOUT, read_head)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let (reply, head_only) = route(&head, &metrics);
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_type,
        reply.body.len()
    );
    if reply.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&reply.body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// Serve `/metrics` and `/healthz` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let m = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, m).await {
                            tracing::debug!(error = %e, "metrics connection failed");
                        }
                    });
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = crate::shutdown::stopped(&mut shutdown) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        Metrics::add(&m.bytes_stored, 42);
        Metrics::inc(&m.checksum_failures_total);
        m.observe(Method::Read, true, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("\ndfs_chunk_stored_bytes 42\n"));
        assert!(text.contains("\ndfs_chunk_checksum_failures_total 1\n"));
        assert!(text.contains("# TYPE dfs_chunk_reads_total counter"));
        assert!(text.contains(
            "dfs_chunk_request_duration_seconds_bucket{method=\"read\",outcome=\"ok\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "dfs_chunk_request_duration_seconds_bucket{method=\"read\",outcome=\"ok\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "dfs_chunk_request_duration_seconds_count{method=\"read\",outcome=\"ok\"} 1"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("dfs_chunk_")
                    || line.starts_with("dfs_process_")
                    || line.starts_with("dfs_build_info"),
                "{line}"
            );
        }
        assert!(text.contains("# TYPE dfs_process_resident_memory_bytes gauge\n"));
        assert!(!text.contains("dfs_chunk_fs_avail_bytes"));
    }

    #[test]
    fn health_follows_the_store_directories() {
        let d = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        m.set_dirs(d.path(), Some(&d.path().join("backups")));
        let text = m.render();
        assert!(
            text.contains("dfs_chunk_fs_avail_bytes{dir=\"data\"} "),
            "{text}"
        );
        // The backup directory does not exist: not usable.
        let (r, _) = route("GET /healthz HTTP/1.1\r\n\r\n", &m);
        assert_eq!(r.status, "503 Service Unavailable");
        assert!(r.body.contains("backups"), "{}", r.body);
        std::fs::create_dir(d.path().join("backups")).unwrap();
        let (r, _) = route("GET /healthz HTTP/1.1\r\n\r\n", &m);
        assert_eq!((r.status, r.body.as_str()), ("200 OK", "ok"));
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        let (r, _) = route("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &m);
        assert_eq!((r.status, r.body.as_str()), ("200 OK", "ok"));
        let (r, _) = route("GET /metrics?x=1 HTTP/1.1\r\n\r\n", &m);
        assert_eq!(r.status, "200 OK");
        assert!(r.body.contains("dfs_chunk_writes_total"));
        let (r, head_only) = route("HEAD /metrics HTTP/1.1\r\n\r\n", &m);
        assert!(head_only && r.status == "200 OK");
        assert_eq!(
            route("GET /nope HTTP/1.1\r\n\r\n", &m).0.status,
            "404 Not Found"
        );
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n", &m).0.status,
            "405 Method Not Allowed"
        );
        assert_eq!(route("\u{0}garbage", &m).0.status, "400 Bad Request");
        assert_eq!(route("", &m).0.status, "400 Bad Request");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Metrics::new(), rx));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("Content-Length: 2\r\n"));
        assert!(resp.ends_with("\r\n\r\nok"));
        tx.send(true).unwrap();
        server.await.unwrap();
    }
}
