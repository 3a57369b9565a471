//! metrics: the gateway's Prometheus families (`dfs_gateway_` prefix), rendered with the
//! shared `promtext` helpers and served by `dfs_common::http` on `--metrics`.
//!
//! What must stay true: every family is written once with HELP and TYPE; recording a request
//! never blocks on I/O (one short mutex, no allocation for a method/status already seen).
use dfs_common::promtext as pt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, seconds (upper bounds).
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// One method's latency histogram: bucket counts, sum of seconds, count.
type Histogram = ([u64; BUCKETS.len()], f64, u64);

#[derive(Default)]
pub struct Metrics {
    /// (method, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// method -> (bucket counts, sum of seconds, count).
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
}

impl Metrics {
    pub fn record(&self, method: &str, status: u16, took: Duration) {
        {
            let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            *r.entry((method.to_string(), status)).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        let mut l = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let e = l
            .entry(method.to_string())
            .or_insert(([0; BUCKETS.len()], 0.0, 0));
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                e.0[i] += 1;
            }
        }
        e.1 += secs;
        e.2 += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        pt::build_info(&mut out, "dfs-gateway", env!("CARGO_PKG_VERSION"));
        pt::header(
            &mut out,
            "dfs_gateway_requests_total",
            "counter",
            "WebDAV requests answered, by method and HTTP status.",
        );
        for ((m, s), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            pt::sample(
                &mut out,
                "dfs_gateway_requests_total",
                &format!("method=\"{}\",status=\"{s}\"", pt::escape(m)),
                n,
            );
        }
        pt::header(
            &mut out,
            "dfs_gateway_request_seconds",
            "histogram",
            "Time from a request's arrival until its response head is ready (a GET's body streams after), by method.",
        );
        for (m, (buckets, sum, count)) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let m = pt::escape(m);
            for (i, b) in BUCKETS.iter().enumerate() {
                pt::sample(
                    &mut out,
                    "dfs_gateway_request_seconds_bucket",
                    &format!("method=\"{m}\",le=\"{}\"", pt::float(*b)),
                    buckets[i],
                );
            }
            pt::sample(
                &mut out,
                "dfs_gateway_request_seconds_bucket",
                &format!("method=\"{m}\",le=\"+Inf\""),
                count,
            );
            pt::sample(
                &mut out,
                "dfs_gateway_request_seconds_sum",
                &format!("method=\"{m}\""),
                pt::float(*sum),
            );
            pt::sample(
                &mut out,
                "dfs_gateway_request_seconds_count",
                &format!("method=\"{m}\""),
                count,
            );
        }
        pt::counter(
            &mut out,
            "dfs_gateway_bytes_in_total",
            "Request body bytes received.",
            self.bytes_in.load(Ordering::Relaxed),
        );
        pt::counter(
            &mut out,
            "dfs_gateway_bytes_out_total",
            "Response body bytes sent.",
            self.bytes_out.load(Ordering::Relaxed),
        );
        pt::counter(
            &mut out,
            "dfs_gateway_auth_failures_total",
            "Requests refused with 401 after metasrv rejected their credentials.",
            self.auth_failures.load(Ordering::Relaxed),
        );
        pt::counter(
            &mut out,
            "dfs_gateway_rate_limited_total",
            "Requests refused with 429: too many failed logins from their address.",
            self.rate_limited.load(Ordering::Relaxed),
        );
        pt::process(&mut out);
        out
    }
}
