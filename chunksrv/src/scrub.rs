//! The scrubber: a background pass that re-reads every chunk at a bounded rate and checks its
//! checksums. Reading through the store heals a bad primary from the local backup (and a bad
//! backup from the primary); when no good copy is left the store quarantines the chunk and
//! drops it from the inventory, and the scrubber reports the replica bad to the metadata group,
//! whose leader copies the chunk back from another replica.
//!
//! What must stay true: the scrubber never holds a whole chunk in memory (it streams), never
//! reads faster than its rate, and never stops the server: every error is logged and the pass
//! goes on.
use crate::store::{Store, StoreError};
use dfs_common::headers::NODE_AUTH;
use dfs_common::token::ClusterSecret;
use dfs_common::STREAM_PIECE;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::BadReplicaReport;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Scrubber settings.
#[derive(Debug, Clone)]
pub struct ScrubConfig {
    /// Bytes per second read by the scrubber (0: the scrubber is off).
    pub rate: u64,
    /// Pause between two full passes.
    pub every: Duration,
}

/// What the scrubber has done (logged after every pass).
#[derive(Debug, Default)]
pub struct ScrubStats {
    pub passes: AtomicU64,
    pub chunks: AtomicU64,
    pub bytes: AtomicU64,
    /// Chunks with no good copy left here (reported to the metadata group).
    pub lost: AtomicU64,
}

pub struct Scrubber {
    pub store: Store,
    /// The cluster secret for the node proof (`--insecure` only).
    pub secret: Option<ClusterSecret>,
    pub meta: Vec<String>,
    pub node_id: Arc<AtomicU64>,
    pub config: ScrubConfig,
    pub stats: Arc<ScrubStats>,
}

impl Scrubber {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        if self.config.rate == 0 {
            return;
        }
        loop {
            // Let the server register first (reports need its node id).
            tokio::select! {
                _ = tokio::time::sleep(self.config.every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.node_id.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let started = Instant::now();
            let mut ids = self.store.inventory();
            ids.sort();
            let (mut chunks, mut bytes) = (0u64, 0u64);
            for id in ids {
                if *stop.borrow() {
                    return;
                }
                let n = self.check(&id).await;
                chunks += 1;
                bytes += n;
                self.stats.chunks.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.fetch_add(n, Ordering::Relaxed);
                // Pace: this chunk's bytes at the configured rate.
                let pause = Duration::from_secs_f64(n as f64 / self.config.rate as f64);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            self.stats.passes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                chunks,
                bytes,
                seconds = started.elapsed().as_secs_f64(),
                "scrub pass finished"
            );
        }
    }

    /// Read one chunk through the store (which verifies and heals); returns the bytes read.
    async fn check(&self, id: &str) -> u64 {
        let mut read = 0u64;
        let result: Result<(), StoreError> = async {
            let reader = self.store.open_read(id).await?;
            let mut s = reader.stream(STREAM_PIECE);
            while let Some(piece) = s.next().await {
                read += piece?.len() as u64;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {}
            // Deleted since the inventory was taken.
            Err(StoreError::NotFound(_)) => {}
            Err(e @ StoreError::DataLoss { .. }) => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(chunk_id = %id, error = %e, "scrub: no good copy left here; reporting it");
                self.report(id, &e.to_string()).await;
            }
            Err(e) => tracing::warn!(chunk_id = %id, error = %e, "scrub: cannot check chunk"),
        }
        read
    }

    /// Tell the metadata group this replica is bad (any member: followers forward).
    async fn report(&self, chunk_id: &str, reason: &str) {
        let node_id = self.node_id.load(Ordering::Relaxed);
        for addr in &self.meta {
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
                continue;
            };
            let channel = crate::peers::channel(
                ep.connect_timeout(Duration::from_secs(1)),
                dfs_common::pki::Role::Meta,
            );
            let mut req = tonic::Request::new(BadReplicaReport {
                chunk_id: chunk_id.to_string(),
                node_id,
                reason: format!("scrubber: {reason}"),
            });
            req.set_timeout(Duration::from_secs(5));
            if let (None, Some(secret)) = (crate::peers::tls(), &self.secret) {
                if let Ok(v) = secret.node_proof().parse() {
                    req.metadata_mut().insert(NODE_AUTH, v);
                }
            }
            match MetaClient::new(channel).report_bad_replica(req).await {
                Ok(_) => return,
                Err(s) => {
                    tracing::warn!(meta = %addr, error = %s.message(), "scrub: report refused")
                }
            }
        }
        tracing::warn!(chunk_id = %chunk_id, "scrub: no metadata node took the report");
    }
}
