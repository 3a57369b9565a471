//! Talking to the metadata group: node identity, registration, heartbeats, delete orders.
//!
//! What must stay true:
//! - `<data-dir>/node.json` (`{"uuid", "node_id", "cluster"}`) is written atomically; the uuid
//!   is made once and never changes, so a restarted server keeps its node id. A data dir made
//!   under another cluster secret is refused.
//! - Registration goes to the metadata nodes in turn (followers forward to the leader) and is
//!   retried with backoff until it succeeds or the process stops. A registration counts only
//!   with the reply's token key (this server's own; the chunk service checks tokens with it
//!   and refuses them until it is set).
//! - Every metadata node gets its own heartbeat every second on its own task with its own
//!   timeout, so a dead node never delays the others; each node gets the full inventory on
//!   its first heartbeats and again 30 s after the previous listing began (or as soon as it
//!   ended, when it took longer).
//! - An inventory goes in pages of at most `--inventory-page` ids, one per heartbeat, each
//!   page the ids after the last one of the page before (from the store's ordered index, no
//!   list of every id is built): a chunk held during the whole listing is in it. A page whose
//!   heartbeat failed is sent again (same round and page number); the receiver merges it
//!   again. Every node has its own listing: a slow or dead node delays no other's.
//! - Deleting is idempotent: ordered deletions run on one background task, and each deleted
//!   id is acknowledged (`deleted`) in the heartbeats of the next ~10 seconds.
//! - Every request carries `x-dfs-node-auth` (proof of the cluster secret).
use crate::metrics::Metrics;
use crate::store::Store;
use dfs_common::headers::NODE_AUTH;
use dfs_common::token::{ChunkServerKey, ClusterSecret};
use dfs_proto::meta_client::MetaClient;
use dfs_proto::{HeartbeatRequest, RegisterChunkServerRequest};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one metadata node's heartbeat answer.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one registration attempt (a Raft commit behind it).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Heartbeats between the starts of two full inventories (30 s).
const INVENTORY_EVERY_BEATS: u32 = 30;
/// Most chunk ids in one heartbeat (about 2 MB of UUIDs, far below the 4 MB gRPC limit).
pub const INVENTORY_PAGE: u32 = 50_000;
/// Heartbeats during which a deleted chunk id keeps being acknowledged.
const ACK_DELETES_BEATS: u32 = 10;
/// Delete orders waiting for the deleter; more are dropped (the leader repeats them).
const DELETE_QUEUE: usize = 100_000;
/// Consecutive "unknown chunk server" answers from one metadata node before re-registering.
const UNKNOWN_BEFORE_REREGISTER: u32 = 10;
/// At most one re-registration per this many heartbeat intervals.
const REREGISTER_EVERY_BEATS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot read node identity file {path}: {source}")]
    ReadIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "node identity file {path} is damaged ({reason}); restore it or move the data dir away"
    )]
    BadIdentity { path: PathBuf, reason: String },
    #[error("cannot write node identity file {path}: {source}")]
    WriteIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {path} belongs to another cluster (it was set up with a different cluster secret)")]
    OtherCluster { path: PathBuf },
    #[error("metadata address {addr:?} is not usable: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("no metadata address given")]
    NoAddress,
    #[error("stopped before registering with the metadata service")]
    Stopped,
}

/// What `<data-dir>/node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Random, made on first start, never changed.
    pub uuid: String,
    /// Given by the metadata group at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Fingerprint of the cluster secret this data dir was set up with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl NodeIdentity {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.json")
    }

    /// Read `node.json`, or make and save a new identity on first start. With a secret
    /// (`--insecure`) a data dir set up with another one is refused; with TLS the metadata
    /// group refuses a data dir whose uuid another chunk server id holds.
    pub fn load_or_create(
        data_dir: &Path,
        secret: Option<&ClusterSecret>,
    ) -> Result<Self, LinkError> {
        let path = Self::path(data_dir);
        let fingerprint = secret.map(ClusterSecret::fingerprint);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut id: NodeIdentity =
                    serde_json::from_slice(&bytes).map_err(|e| LinkError::BadIdentity {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if uuid::Uuid::parse_str(&id.uuid).is_err() {
                    return Err(LinkError::BadIdentity {
                        path,
                        reason: format!("{:?} is not a UUID", id.uuid),
                    });
                }
                match (&id.cluster, fingerprint) {
                    (Some(c), Some(f)) if *c != f => {
                        return Err(LinkError::OtherCluster {
                            path: data_dir.to_path_buf(),
                        })
                    }
                    (None, Some(f)) => {
                        id.cluster = Some(f);
                        id.save(data_dir)?;
                    }
                    _ => {}
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = NodeIdentity {
                    uuid: uuid::Uuid::new_v4().to_string(),
                    node_id: None,
                    cluster: fingerprint,
                };
                id.save(data_dir)?;
                Ok(id)
            }
            Err(source) => Err(LinkError::ReadIdentity { path, source }),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), LinkError> {
        let path = Self::path(data_dir);
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| LinkError::BadIdentity {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push(b'\n');
        dfs_common::durable::write_atomic(&path, &text)
            .map_err(|source| LinkError::WriteIdentity { path, source })
    }
}

/// Turn `host:port` or `http://host:port` into a lazily connected channel.
fn channel(addr: &str) -> Result<Channel, LinkError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| LinkError::BadAddress {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    Ok(crate::peers::channel(
        endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5)),
        dfs_common::pki::Role::Meta,
    ))
}

/// Outcome of one registration round.
enum RoundError {
    /// Nobody answered yes; the last error, for the log.
    Failed(String),
    /// Registered, but the node id cannot be saved.
    Fatal(LinkError),
}

/// Chunks deleted on order, and orders not carried out yet.
struct DeleteLog {
    /// How long a deleted id keeps being acknowledged.
    ack_for: Duration,
    /// Deleted ids with the time of deletion, oldest first.
    recent: VecDeque<(String, Instant)>,
    recent_set: HashSet<String>,
    pending: HashSet<String>,
}

impl DeleteLog {
    fn new(ack_for: Duration) -> Self {
        Self {
            ack_for,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            pending: HashSet::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some((id, at)) = self.recent.front() {
            if now.duration_since(*at) < self.ack_for {
                break;
            }
            self.recent_set.remove(id);
            self.recent.pop_front();
        }
    }

    /// Ids to acknowledge in the next heartbeat.
    fn acks(&mut self) -> Vec<String> {
        self.prune(Instant::now());
        self.recent.iter().map(|(id, _)| id.clone()).collect()
    }

    fn done(&mut self, id: String) {
        self.pending.remove(&id);
        if self.recent_set.insert(id.clone()) {
            self.recent.push_back((id, Instant::now()));
        }
    }
}

struct Target {
    addr: String,
    client: MetaClient<Channel>,
}

/// One page of an inventory listing, as sent in a heartbeat.
struct InventoryPage {
    round: u64,
    page: u32,
    ids: Vec<String>,
    last: bool,
}

impl InventoryPage {
    /// What the listing needs to move on once this page was delivered (its ids go out in the
    /// heartbeat, not copied).
    fn delivered(&self) -> Delivered {
        Delivered {
            last: self.last,
            last_id: self.ids.last().cloned(),
        }
    }
}

/// A page the metadata node answered for.
struct Delivered {
    last: bool,
    last_id: Option<String>,
}

/// Where one metadata node's inventory listing stands (each node has its own).
#[derive(Default)]
struct Listing {
    /// The listing under way: its round, the next page's number and the id it starts after.
    current: Option<(u64, u32, Option<String>)>,
    /// When the last listing began.
    started: Option<Instant>,
}

impl Listing {
    /// The page to send in this heartbeat, if a listing is under way or due.
    fn next(&mut self, store: &Store, page_size: usize, every: Duration) -> Option<InventoryPage> {
        if self.current.is_none() {
            if self.started.is_some_and(|t| t.elapsed() < every) {
                return None;
            }
            self.started = Some(Instant::now());
            self.current = Some((new_round(), 0, None));
        }
        let (round, page, after) = self.current.as_ref()?;
        // One more than a page: whether more follow, without an empty last page.
        let mut ids = store.inventory_page(after.as_deref(), page_size + 1);
        let last = ids.len() <= page_size;
        ids.truncate(page_size);
        Some(InventoryPage {
            round: *round,
            page: *page,
            ids,
            last,
        })
    }

    /// The metadata node answered the heartbeat that carried a page: move on.
    fn sent(&mut self, sent: Delivered) {
        if sent.last {
            self.current = None;
        } else if let Some((_, page, after)) = &mut self.current {
            *page += 1;
            if sent.last_id.is_some() {
                *after = sent.last_id;
            }
        }
    }
}

/// A new listing's round id: random and never 0 (0 marks an older server's single message).
fn new_round() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0.max(1)
}

/// Registration and heartbeats towards every metadata node.
pub struct MetaLink {
    targets: Vec<Target>,
    uuid: String,
    identity: Mutex<NodeIdentity>,
    data_dir: PathBuf,
    last_reregister: tokio::sync::Mutex<Option<Instant>>,
    /// Time between two heartbeats to one metadata node.
    interval: Duration,
    /// Most chunk ids in one heartbeat.
    inventory_page: usize,
    /// The cluster-secret proof (`--insecure` only).
    auth: Option<AsciiMetadataValue>,
    advertise: String,
    store: Store,
    metrics: Arc<Metrics>,
    node_id: Arc<AtomicU64>,
    /// This server's token key, from the last registration reply.
    token_key: Arc<crate::service::TokenKey>,
    deletes: Mutex<DeleteLog>,
    delete_tx: mpsc::Sender<String>,
    delete_rx: Mutex<Option<mpsc::Receiver<String>>>,
}

impl MetaLink {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        meta_addrs: &[String],
        identity: NodeIdentity,
        data_dir: &Path,
        secret: Option<&ClusterSecret>,
        advertise: String,
        store: Store,
        metrics: Arc<Metrics>,
        node_id: Arc<AtomicU64>,
    ) -> Result<Self, LinkError> {
        let mut targets = Vec::new();
        for addr in meta_addrs
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
        {
            targets.push(Target {
                addr: addr.to_string(),
                client: MetaClient::new(channel(addr)?),
            });
        }
        if targets.is_empty() {
            return Err(LinkError::NoAddress);
        }
        let auth = secret
            .map(|s| {
                MetadataValue::try_from(s.node_proof()).map_err(|e| LinkError::BadAddress {
                    addr: NODE_AUTH.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        let (delete_tx, delete_rx) = mpsc::channel(DELETE_QUEUE);
        Ok(Self {
            targets,
            uuid: identity.uuid.clone(),
            identity: Mutex::new(identity),
            data_dir: data_dir.to_path_buf(),
            last_reregister: tokio::sync::Mutex::new(None),
            auth,
            advertise,
            store,
            metrics,
            node_id,
            token_key: Default::default(),
            interval: HEARTBEAT_INTERVAL,
            inventory_page: INVENTORY_PAGE as usize,
            deletes: Mutex::new(DeleteLog::new(HEARTBEAT_INTERVAL * ACK_DELETES_BEATS)),
            delete_tx,
            delete_rx: Mutex::new(Some(delete_rx)),
        })
    }

    /// Heartbeat at another interval (`--heartbeat-ms`); delete acks and inventories keep
    /// their beat counts.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self.deletes = Mutex::new(DeleteLog::new(interval * ACK_DELETES_BEATS));
        self
    }

    /// Send inventories in pages of at most `ids` chunk ids (`--inventory-page`).
    pub fn with_inventory_page(mut self, ids: usize) -> Self {
        self.inventory_page = ids.max(1);
        self
    }

    /// Where registrations put this server's token key (the chunk service reads it there).
    pub fn with_token_key(mut self, key: Arc<crate::service::TokenKey>) -> Self {
        self.token_key = key;
        self
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        // With TLS the certificate says who this server is; the proof only without.
        if let (None, Some(auth)) = (crate::peers::tls(), &self.auth) {
            req.metadata_mut().insert(NODE_AUTH, auth.clone());
        }
        req.set_timeout(timeout);
        req
    }

    fn deletes(&self) -> std::sync::MutexGuard<'_, DeleteLog> {
        self.deletes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register until it works; saves and returns the node id (also published to the
    /// shared node id and the metrics). Returns `Stopped` if `shutdown` fires first.
    pub async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Result<u64, LinkError> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let round = tokio::select! {
                r = self.register_round() => r,
                _ = crate::shutdown::stopped(shutdown) => return Err(LinkError::Stopped),
            };
            let last_error = match round {
                Ok(id) => return Ok(id),
                Err(RoundError::Fatal(e)) => return Err(e),
                Err(RoundError::Failed(msg)) => msg,
            };
            // Quiet while a fresh cluster elects its leader, then say what is wrong.
            if attempt >= 2 {
                tracing::warn!(
                    uuid = %self.uuid,
                    waited_s = started.elapsed().as_secs(),
                    last_error = %last_error,
                    "still trying to register with the metadata service"
                );
            }
            let delay = Duration::from_millis(200)
                .saturating_mul(1u32 << attempt.min(5))
                .min(Duration::from_secs(5));
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::shutdown::stopped(shutdown) => return Err(LinkError::Stopped),
            }
        }
    }

    /// One registration attempt on each metadata node in turn, until one answers.
    async fn register_round(&self) -> Result<u64, RoundError> {
        let mut last_error = String::new();
        for t in &self.targets {
            let req = self.request(
                RegisterChunkServerRequest {
                    uuid: self.uuid.clone(),
                    addr: self.advertise.clone(),
                    capacity_bytes: self.store.capacity(),
                },
                REGISTER_TIMEOUT,
            );
            let mut client = t.client.clone();
            match tokio::time::timeout(REGISTER_TIMEOUT, client.register_chunk_server(req)).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let id = reply.node_id;
                    if id == 0 {
                        last_error = format!("{} answered with node id 0", t.addr);
                        continue;
                    }
                    // Without its key this server could check no token: not registered.
                    let Some(key) = ChunkServerKey::from_bytes(id, &reply.token_key) else {
                        last_error = format!(
                            "{} sent no valid token key ({} bytes; is it an older metasrv? upgrade the metadata nodes first)",
                            t.addr,
                            reply.token_key.len()
                        );
                        continue;
                    };
                    self.adopt_node_id(id).map_err(RoundError::Fatal)?;
                    self.token_key.set(key);
                    return Ok(id);
                }
                Ok(Err(status)) => {
                    last_error = format!("{}: {:?}: {}", t.addr, status.code(), status.message());
                }
                Err(_) => {
                    last_error = format!("{}: no answer within {REGISTER_TIMEOUT:?}", t.addr);
                }
            }
        }
        Err(RoundError::Failed(last_error))
    }

    /// Record the node id given at registration: node.json, shared id, metrics.
    fn adopt_node_id(&self, id: u64) -> Result<(), LinkError> {
        let mut identity = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = identity.node_id.filter(|old| *old != id) {
            tracing::warn!(uuid = %identity.uuid, old_node_id = old, node_id = id, "the metadata service gave this server a new node id");
        }
        if identity.node_id != Some(id) {
            identity.node_id = Some(id);
            identity.save(&self.data_dir)?;
        }
        self.node_id.store(id, Ordering::Relaxed);
        self.metrics.node_id.store(id, Ordering::Relaxed);
        Ok(())
    }

    /// A metadata node keeps answering that it does not know this server (its state was
    /// reset, or it lags far behind): register again, at most once per interval.
    async fn reregister(&self, metasrv: &str) {
        let mut last = self.last_reregister.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.interval * REREGISTER_EVERY_BEATS) {
            return;
        }
        *last = Some(Instant::now());
        let old = self.node_id.load(Ordering::Relaxed);
        match self.register_round().await {
            Ok(id) => {
                tracing::warn!(node_id = id, old_node_id = old, metasrv = %metasrv, "registered again: a metadata node did not know this server")
            }
            Err(RoundError::Failed(e))
            | Err(RoundError::Fatal(LinkError::BadAddress { reason: e, .. })) => {
                tracing::warn!(node_id = old, metasrv = %metasrv, error = %e, "cannot register again")
            }
            Err(RoundError::Fatal(e)) => {
                tracing::error!(node_id = old, error = %e, "cannot register again")
            }
        }
    }

    /// Start the heartbeat task of every metadata node and the deleter.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        let rx = self
            .delete_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            handles.push(tokio::spawn(Arc::clone(self).deleter(rx, shutdown.clone())));
        }
        for i in 0..self.targets.len() {
            handles.push(tokio::spawn(
                Arc::clone(self).heartbeat_loop(i, shutdown.clone()),
            ));
        }
        handles
    }

    fn heartbeat(&self, page: Option<InventoryPage>) -> HeartbeatRequest {
        HeartbeatRequest {
            node_id: self.node_id.load(Ordering::Relaxed),
            addr: self.advertise.clone(),
            capacity_bytes: self.store.capacity(),
            used_bytes: self.store.used_bytes(),
            chunk_count: self.store.chunk_count(),
            active_transfers: u32::try_from(self.metrics.active_transfers.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
            deleted: self.deletes().acks(),
            inventory_included: page.is_some(),
            disk_free_bytes: self.store.disk_free(),
            inventory_round: page.as_ref().map_or(0, |p| p.round),
            inventory_page: page.as_ref().map_or(0, |p| p.page),
            inventory_last: page.as_ref().is_some_and(|p| p.last),
            inventory: page.map(|p| p.ids).unwrap_or_default(),
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, i: usize, mut shutdown: watch::Receiver<bool>) {
        let addr = self.targets[i].addr.clone();
        let mut client = self.targets[i].client.clone();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listing = Listing::default();
        let every = self.interval * INVENTORY_EVERY_BEATS;
        let mut failing_since: Option<Instant> = None;
        let mut unknown_streak = 0u32;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            }
            let page = listing.next(&self.store, self.inventory_page, every);
            let delivered = page.as_ref().map(InventoryPage::delivered);
            let req = self.request(self.heartbeat(page), HEARTBEAT_TIMEOUT);
            let node_id = self.node_id.load(Ordering::Relaxed);
            let outcome = tokio::select! {
                r = tokio::time::timeout(HEARTBEAT_TIMEOUT, client.heartbeat(req)) => r,
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            if matches!(&outcome, Ok(Err(status)) if status.code() == tonic::Code::NotFound) {
                unknown_streak += 1;
                if unknown_streak >= UNKNOWN_BEFORE_REREGISTER {
                    unknown_streak = 0;
                    self.reregister(&addr).await;
                }
            } else {
                unknown_streak = 0;
            }
            let error = match outcome {
                Ok(Ok(reply)) => {
                    Metrics::inc(&self.metrics.heartbeats_total);
                    if let Some(d) = delivered {
                        listing.sent(d);
                    }
                    if let Some(since) = failing_since.take() {
                        tracing::info!(node_id, metasrv = %addr, down_s = since.elapsed().as_secs(), "heartbeats reach the metadata node again");
                    }
                    let reply = reply.into_inner();
                    crate::peers::set_revoked(reply.revoked);
                    self.order_deletes(reply.delete);
                    continue;
                }
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Err(_) => format!("no answer within {HEARTBEAT_TIMEOUT:?}"),
            };
            Metrics::inc(&self.metrics.heartbeat_failures_total);
            if failing_since.is_none() {
                failing_since = Some(Instant::now());
                tracing::warn!(node_id, metasrv = %addr, error = %error, "heartbeat failed");
            }
        }
    }

    /// Queue delete orders not already queued or done.
    fn order_deletes(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let mut log = self.deletes();
        for id in ids {
            if log.recent_set.contains(&id) || log.pending.contains(&id) {
                continue;
            }
            if self.delete_tx.try_send(id.clone()).is_ok() {
                log.pending.insert(id);
            }
        }
    }

    async fn deleter(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<String>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let id = tokio::select! {
                id = rx.recv() => match id { Some(id) => id, None => return },
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            let node_id = self.node_id.load(Ordering::Relaxed);
            match self.store.delete(&id).await {
                Ok(existed) => {
                    tracing::debug!(node_id, chunk_id = %id, existed, "chunk deleted on order");
                    self.deletes().done(id);
                }
                Err(crate::store::StoreError::InvalidChunkId(_)) => {
                    // Nothing by that name can exist here; acknowledge so the order stops.
                    tracing::warn!(node_id, chunk_id = %id.chars().take(64).collect::<String>(), "delete order for an invalid chunk id");
                    self.deletes().done(id);
                }
                Err(e) => {
                    tracing::warn!(node_id, chunk_id = %id, error = %e, "cannot delete chunk; will retry when ordered again");
                    self.deletes().pending.remove(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use dfs_proto::meta_server::{Meta, MetaServer};
    use dfs_proto::*;
    use tonic::{Request, Response, Status};

    #[test]
    fn identity_is_made_once_and_tied_to_the_cluster() {
        let d = tempfile::tempdir().unwrap();
        let s = ClusterSecret::new(b"0123456789abcdef".to_vec());
        let a = NodeIdentity::load_or_create(d.path(), Some(&s)).unwrap();
        assert!(a.node_id.is_none());
        let mut b = NodeIdentity::load_or_create(d.path(), Some(&s)).unwrap();
        assert_eq!(a, b);
        b.node_id = Some(4);
        b.save(d.path()).unwrap();
        let text = std::fs::read_to_string(d.path().join("node.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["node_id"], 4);
        assert_eq!(v["uuid"], a.uuid.as_str());
        assert_eq!(
            NodeIdentity::load_or_create(d.path(), Some(&s))
                .unwrap()
                .node_id,
            Some(4)
        );
        let other = ClusterSecret::new(b"fedcba9876543210".to_vec());
        assert!(matches!(
            NodeIdentity::load_or_create(d.path(), Some(&other)),
            Err(LinkError::OtherCluster { .. })
        ));
        std::fs::write(d.path().join("node.json"), b"{not json").unwrap();
        assert!(matches!(
            NodeIdentity::load_or_create(d.path(), Some(&s)),
            Err(LinkError::BadIdentity { .. })
        ));
    }

    #[test]
    fn delete_acks_expire() {
        let mut log = DeleteLog::new(Duration::from_secs(10));
        log.pending.insert("a".into());
        log.done("a".into());
        log.done("a".into());
        assert_eq!(log.acks(), vec!["a".to_string()]);
        assert!(log.pending.is_empty());
        log.prune(Instant::now() + log.ack_for);
        assert!(log.acks().is_empty());
    }

    fn temp_store(d: &Path) -> Store {
        Store::open(
            StoreConfig {
                data_dir: d.to_path_buf(),
                backup_dir: None,
                capacity: 1 << 30,
                pack_max: crate::store::DEFAULT_PACK_MAX,
            },
            Metrics::new(),
        )
        .unwrap()
    }

    fn chunk_id(i: u32) -> String {
        format!("0a1b2c3d-1111-4222-8333-{i:012}")
    }

    async fn put(store: &Store, id: &str) {
        let mut w = store.begin_write(id).unwrap();
        w.write(vec![1, 2, 3]).await.unwrap();
        w.finish().await.unwrap();
    }

    #[tokio::test]
    async fn inventories_go_in_pages_and_a_failed_page_is_sent_again() {
        let d = tempfile::tempdir().unwrap();
        let store = temp_store(d.path());
        for i in 0..5 {
            put(&store, &chunk_id(i)).await;
        }
        let mut l = Listing::default();
        let every = Duration::from_secs(3600);
        let p0 = l.next(&store, 2, every).unwrap();
        assert_eq!(
            (p0.page, p0.last, p0.ids.clone()),
            (0, false, vec![chunk_id(0), chunk_id(1)])
        );
        assert_ne!(p0.round, 0);
        // Not answered: the same page again.
        let again = l.next(&store, 2, every).unwrap();
        assert_eq!(
            (again.round, again.page, again.ids),
            (p0.round, 0, p0.ids.clone())
        );
        l.sent(p0.delivered());
        // A chunk deleted and one written during the listing: the pages go on from the last
        // id sent.
        store.delete(&chunk_id(2)).await.unwrap();
        put(&store, &chunk_id(7)).await;
        let p1 = l.next(&store, 2, every).unwrap();
        assert_eq!(
            (p1.round, p1.page, p1.last, p1.ids.clone()),
            (p0.round, 1, false, vec![chunk_id(3), chunk_id(4)])
        );
        l.sent(p1.delivered());
        let p2 = l.next(&store, 2, every).unwrap();
        assert_eq!(
            (p2.page, p2.last, p2.ids.clone()),
            (2, true, vec![chunk_id(7)])
        );
        l.sent(p2.delivered());
        // Done: nothing until the next listing is due.
        assert!(l.next(&store, 2, every).is_none());
        // A due listing is a new round from the start; exactly a page's worth is one page.
        let mut l = Listing::default();
        let p = l.next(&store, 5, Duration::ZERO).unwrap();
        assert!(p.last && p.ids.len() == 5 && p.page == 0);
        l.sent(p.delivered());
        let q = l.next(&store, 5, Duration::ZERO).unwrap();
        assert!(q.round != p.round && q.page == 0);
        // An empty store sends one empty last page.
        let e = tempfile::tempdir().unwrap();
        let empty = temp_store(e.path());
        let p = Listing::default().next(&empty, 5, every).unwrap();
        assert!(p.last && p.ids.is_empty());
    }

    /// A fake metadata node recording what it is sent.
    #[derive(Default)]
    struct FakeMeta {
        proof: String,
        registers: Mutex<Vec<RegisterChunkServerRequest>>,
        heartbeats: Mutex<Vec<HeartbeatRequest>>,
        delete: Mutex<Vec<String>>,
        fail_registers: AtomicU64,
        /// Answer heartbeats with "unknown chunk server" (a reset metadata group).
        forgot: std::sync::atomic::AtomicBool,
        next_id: AtomicU64,
    }

    fn unimpl<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("fake"))
    }

    #[tonic::async_trait]
    impl Meta for FakeMeta {
        async fn mkdir(&self, _: Request<MkdirRequest>) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
            unimpl()
        }
        async fn stat(&self, _: Request<StatRequest>) -> Result<Response<FileInfo>, Status> {
            unimpl()
        }
        async fn rename(&self, _: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn symlink(&self, _: Request<SymlinkRequest>) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn set_attr(&self, _: Request<SetAttrRequest>) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn remove(&self, _: Request<RemoveRequest>) -> Result<Response<RemoveReply>, Status> {
            unimpl()
        }
        async fn usage(&self, _: Request<StatRequest>) -> Result<Response<UsageReply>, Status> {
            unimpl()
        }
        async fn renew_lease(
            &self,
            _: Request<RenewLeaseRequest>,
        ) -> Result<Response<RenewLeaseReply>, Status> {
            unimpl()
        }
        async fn trash_list(
            &self,
            _: Request<TrashListRequest>,
        ) -> Result<Response<TrashListReply>, Status> {
            unimpl()
        }
        async fn trash_purge(
            &self,
            _: Request<TrashPurgeRequest>,
        ) -> Result<Response<RemoveReply>, Status> {
            unimpl()
        }
        async fn revoke_certificate(
            &self,
            _: Request<RevokeCertificateRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn allocate_chunks(
            &self,
            _: Request<AllocateRequest>,
        ) -> Result<Response<AllocateReply>, Status> {
            unimpl()
        }
        async fn commit_file(
            &self,
            _: Request<CommitRequest>,
        ) -> Result<Response<FileInfo>, Status> {
            unimpl()
        }
        async fn open_read(
            &self,
            _: Request<StatRequest>,
        ) -> Result<Response<OpenReadReply>, Status> {
            unimpl()
        }
        async fn report_bad_replica(
            &self,
            _: Request<BadReplicaReport>,
        ) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn who_am_i(&self, _: Request<Empty>) -> Result<Response<UserInfo>, Status> {
            unimpl()
        }
        async fn fsck(&self, _: Request<FsckRequest>) -> Result<Response<FsckReply>, Status> {
            unimpl()
        }
        async fn gc(&self, _: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
            unimpl()
        }
        async fn ping(&self, _: Request<Empty>) -> Result<Response<PingReply>, Status> {
            unimpl()
        }
        async fn balance(
            &self,
            _: Request<BalanceRequest>,
        ) -> Result<Response<BalanceReply>, Status> {
            unimpl()
        }
        async fn set_replication(
            &self,
            _: Request<SetReplicationRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn user_add(
            &self,
            _: Request<UserAddRequest>,
        ) -> Result<Response<UserAddReply>, Status> {
            unimpl()
        }
        async fn user_list(&self, _: Request<Empty>) -> Result<Response<UserListReply>, Status> {
            unimpl()
        }
        async fn user_remove(
            &self,
            _: Request<UserRemoveRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn register(
            &self,
            _: Request<UserAddRequest>,
        ) -> Result<Response<UserAddReply>, Status> {
            unimpl()
        }
        async fn cluster_status(
            &self,
            _: Request<StatusRequest>,
        ) -> Result<Response<ClusterStatusReply>, Status> {
            unimpl()
        }
        async fn add_member(
            &self,
            _: Request<AddMemberRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn remove_member(
            &self,
            _: Request<RemoveMemberRequest>,
        ) -> Result<Response<Empty>, Status> {
            unimpl()
        }
        async fn import(&self, _: Request<ImportRequest>) -> Result<Response<ImportReply>, Status> {
            unimpl()
        }
        async fn export(&self, _: Request<ExportRequest>) -> Result<Response<ExportReply>, Status> {
            unimpl()
        }

        async fn register_chunk_server(
            &self,
            req: Request<RegisterChunkServerRequest>,
        ) -> Result<Response<RegisterChunkServerReply>, Status> {
            let proof = req
                .metadata()
                .get(NODE_AUTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if proof != self.proof {
                return Err(Status::unauthenticated("bad node proof"));
            }
            if self.fail_registers.load(Ordering::Relaxed) > 0 {
                self.fail_registers.fetch_sub(1, Ordering::Relaxed);
                return Err(Status::unavailable("electing"));
            }
            self.registers.lock().unwrap().push(req.into_inner());
            self.forgot.store(false, Ordering::Relaxed);
            let node_id = self.next_id.load(Ordering::Relaxed);
            Ok(Response::new(RegisterChunkServerReply {
                node_id,
                token_key: vec![9; 32],
            }))
        }

        async fn heartbeat(
            &self,
            req: Request<HeartbeatRequest>,
        ) -> Result<Response<HeartbeatReply>, Status> {
            let proof = req
                .metadata()
                .get(NODE_AUTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if proof != self.proof {
                return Err(Status::unauthenticated("bad node proof"));
            }
            if self.forgot.load(Ordering::Relaxed) {
                return Err(Status::not_found("unknown chunk server id: register first"));
            }
            self.heartbeats.lock().unwrap().push(req.into_inner());
            let delete = std::mem::take(&mut *self.delete.lock().unwrap());
            Ok(Response::new(HeartbeatReply {
                delete,
                leader: true,
                revoked: vec![],
            }))
        }
    }

    #[tokio::test]
    async fn registers_heartbeats_and_deletes() {
        let secret = ClusterSecret::new(b"0123456789abcdef".to_vec());
        let fake = Arc::new(FakeMeta {
            proof: secret.node_proof(),
            fail_registers: AtomicU64::new(2),
            next_id: AtomicU64::new(3),
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MetaServer::from_arc(Arc::clone(&fake)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        let d = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = Store::open(
            StoreConfig {
                data_dir: d.path().to_path_buf(),
                backup_dir: None,
                capacity: 1 << 30,
                pack_max: crate::store::DEFAULT_PACK_MAX,
            },
            Arc::clone(&metrics),
        )
        .unwrap();
        let id = "0a1b2c3d-1111-4222-8333-444455556666";
        let mut w = store.begin_write(id).unwrap();
        w.write(vec![1, 2, 3]).await.unwrap();
        w.finish().await.unwrap();

        let node_id = Arc::new(AtomicU64::new(0));
        let token_key = Arc::new(crate::service::TokenKey::default());
        // The first address is dead: registration moves on to the next.
        let ident = NodeIdentity::load_or_create(d.path(), Some(&secret)).unwrap();
        let link = Arc::new(
            MetaLink::new(
                &["127.0.0.1:1".to_string(), addr.to_string()],
                ident.clone(),
                d.path(),
                Some(&secret),
                "127.0.0.1:9999".into(),
                store.clone(),
                metrics,
                Arc::clone(&node_id),
            )
            .unwrap()
            .with_interval(Duration::from_millis(50))
            .with_token_key(Arc::clone(&token_key)),
        );
        assert!(token_key.get().is_none());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let got = link.register(&mut stop_rx).await.unwrap();
        assert_eq!(got, 3);
        assert_eq!(
            NodeIdentity::load_or_create(d.path(), Some(&secret))
                .unwrap()
                .node_id,
            Some(3)
        );
        {
            let regs = fake.registers.lock().unwrap();
            assert_eq!(regs[0].uuid, ident.uuid);
            assert_eq!(regs[0].addr, "127.0.0.1:9999");
        }
        assert_eq!(node_id.load(Ordering::Relaxed), 3);
        let key = token_key
            .get()
            .expect("the registration reply's key is kept");
        assert_eq!((key.node_id(), key.as_bytes()), (3, &[9u8; 32][..]));

        fake.delete.lock().unwrap().push(id.to_string());
        let handles = link.spawn(stop_rx.clone());
        tokio::time::sleep(Duration::from_millis(700)).await;
        {
            let beats = fake.heartbeats.lock().unwrap();
            assert!(beats.len() >= 3, "{} heartbeats", beats.len());
            // A small inventory is one listing of one page: page 0, the last.
            assert!(beats[0].inventory_included);
            assert_eq!(beats[0].inventory, vec![id.to_string()]);
            assert_ne!(beats[0].inventory_round, 0);
            assert_eq!(beats[0].inventory_page, 0);
            assert!(beats[0].inventory_last);
            assert_eq!(beats[0].node_id, 3);
            assert!(!beats[1].inventory_included && beats[1].inventory.is_empty());
            assert!(beats[1..].iter().any(|b| b.deleted == vec![id.to_string()]));
            assert_eq!(beats.last().unwrap().chunk_count, 0);
        }
        assert_eq!(store.chunk_count(), 0);

        // The metadata group forgets this server: after ten "unknown" answers it registers
        // again and adopts the new id.
        fake.next_id.store(9, Ordering::Relaxed);
        fake.forgot.store(true, Ordering::Relaxed);
        let mut adopted = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if node_id.load(Ordering::Relaxed) == 9 {
                adopted = true;
                break;
            }
        }
        assert!(adopted, "did not register again");
        assert_eq!(fake.registers.lock().unwrap().len(), 2);
        assert_eq!(
            NodeIdentity::load_or_create(d.path(), Some(&secret))
                .unwrap()
                .node_id,
            Some(9)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.heartbeats.lock().unwrap().last().unwrap().node_id, 9);

        stop_tx.send(true).unwrap();
        for h in handles {
            h.await.unwrap();
        }
    }
}
