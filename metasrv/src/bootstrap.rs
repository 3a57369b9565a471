//! Starting a node: checking peers, initializing a fresh cluster exactly once, creating the
//! admin user, and noticing when to stop.
use crate::config::Config;
use crate::service::{now_ms, Caller, MetaNode, OpError};
use crate::state::{Command, CommandV1};
use crate::types::NodeId;
use anyhow::bail;
use dfs_proto::{HelloReply, HelloRequest};
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tonic::Status;

pub(crate) async fn hello(node: &MetaNode, id: NodeId, addr: &str) -> Result<HelloReply, Status> {
    let mut c =
        crate::network::raft_client(addr).map_err(|e| Status::unavailable(e.to_string()))?;
    let req = crate::network::with_node_auth(
        HelloRequest {
            from: node.id,
            target: id,
        },
        &node.secret,
    );
    match tokio::time::timeout(Duration::from_secs(1), c.hello(req)).await {
        Ok(r) => r.map(|r| r.into_inner()),
        Err(_) => Err(Status::unavailable("timed out")),
    }
}

/// Refuse to run beside peers that do not share our cluster secret or cluster id.
pub async fn check_peers(node: &MetaNode, cfg: &Config) -> anyhow::Result<()> {
    let ours = node.read_state().meta.cluster_id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let checks = cfg.peers.iter().filter(|(id, _)| **id != cfg.id).map(|(id, addr)| async move {
        loop {
            match hello(node, *id, addr).await {
                Ok(h) => return Ok(Some(h)),
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    bail!("peer {id} at {addr} refused this node: {} (check --cluster-secret-file and --tls-cert)", s.message())
                }
                // A peer whose certificate this node's CA did not sign (or that refused this
                // node's) is in another cluster, or one of the two has the wrong --tls-ca.
                Err(s) if dfs_common::tls::is_certificate_error(&s) => {
                    bail!("peer {id} at {addr} and this node do not trust each other's certificates: {} (check --tls-ca and --tls-cert)", dfs_common::tls::error_chain(&s))
                }
                Err(_) if tokio::time::Instant::now() >= deadline => return Ok(None),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    for (r, (id, addr)) in futures::future::join_all(checks)
        .await
        .into_iter()
        .zip(cfg.peers.iter().filter(|(id, _)| **id != cfg.id))
    {
        if let Some(h) = r? {
            if !ours.is_empty() && !h.cluster_id.is_empty() && h.cluster_id != ours {
                bail!(
                    "data dir {} belongs to cluster {ours}, but peer {id} at {addr} is in cluster {}",
                    cfg.data_dir.display(),
                    h.cluster_id
                );
            }
        }
    }
    Ok(())
}

/// The lowest-numbered initial member initializes a cluster whose members are all fresh.
pub async fn initialize_if_fresh(node: &MetaNode, cfg: &Config) -> anyhow::Result<()> {
    if cfg.join || node.raft.is_initialized().await? {
        return Ok(());
    }
    if cfg.peers.keys().next() != Some(&cfg.id) {
        tracing::info!(
            node = cfg.id,
            "waiting for node {:?} to initialize the cluster",
            cfg.peers.keys().next()
        );
        return Ok(());
    }
    for (id, addr) in cfg.peers.iter().filter(|(id, _)| **id != cfg.id) {
        if let Ok(h) = hello(node, *id, addr).await {
            if h.initialized {
                tracing::info!(
                    node = cfg.id,
                    peer = id,
                    "peers already form a cluster; not initializing"
                );
                return Ok(());
            }
        }
    }
    let members: BTreeMap<NodeId, BasicNode> = cfg
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    match node.raft.initialize(members).await {
        Ok(()) => tracing::info!(node = cfg.id, members = ?cfg.peers, "cluster initialized"),
        Err(e) => tracing::info!(node = cfg.id, error = %e, "not initializing"),
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct InitRequest {
    cluster_id: String,
    admin_key_hash: String,
}

impl MetaNode {
    /// The `Init` command, run on the leader (reached by forwarding, node-authenticated).
    pub async fn init_cluster(&self, c: &Caller, body: &[u8]) -> Result<Vec<u8>, Status> {
        self.authenticate_node(c).map_err(op_status)?;
        let r: InitRequest =
            serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let cmd = Command::V1(CommandV1::Init {
            cluster_id: r.cluster_id,
            admin_key_hash: r.admin_key_hash,
            now_ms: now_ms(),
        });
        let gate = self.write_gate();
        match gate {
            Ok(()) => match self.propose(cmd).await {
                Ok(_) => Ok(Vec::new()),
                Err(OpError::NotLeader(h)) => {
                    self.forward("init_cluster", c, body.to_vec(), 1, h).await
                }
                Err(OpError::Status(s)) => Err(s),
            },
            Err(OpError::NotLeader(h)) => {
                self.forward("init_cluster", c, body.to_vec(), 1, h).await
            }
            Err(OpError::Status(s)) => Err(s),
        }
    }
}

fn op_status(e: OpError) -> Status {
    match e {
        OpError::Status(s) => s,
        OpError::NotLeader(_) => Status::unavailable("not leader"),
    }
}

/// Create the admin user once and write its auth file to `out`. The key is written to a
/// pending file before it is proposed, so a crash never loses the only admin key.
pub async fn create_admin(node: &MetaNode, out: &Path) -> anyhow::Result<()> {
    let pending = out.with_extension("pending");
    loop {
        let (cluster_id, admin_hash) = {
            let st = node.read_state();
            (
                st.meta.cluster_id.clone(),
                st.users.get("admin").map(|u| u.key_hash.clone()),
            )
        };
        if !cluster_id.is_empty() {
            if let Ok(creds) = dfs_common::auth_file::read(&pending) {
                if admin_hash.is_some_and(|h| dfs_common::keys::key_matches(&creds.key, &h)) {
                    std::fs::rename(&pending, out)?;
                    if let Some(dir) = out.parent() {
                        dfs_common::durable::fsync_dir(dir)?;
                    }
                    tracing::info!(node = node.id, path = %out.display(), "admin user created; its key is in this file");
                } else {
                    let _ = std::fs::remove_file(&pending);
                }
            }
            return Ok(());
        }
        if node.current_leader().is_some() {
            let creds = match dfs_common::auth_file::read(&pending) {
                Ok(c) => c,
                Err(_) => {
                    let c = dfs_common::auth_file::Credentials {
                        user: "admin".into(),
                        key: dfs_common::keys::generate_key(),
                    };
                    dfs_common::auth_file::write(&pending, &c)?;
                    c
                }
            };
            let req = InitRequest {
                cluster_id: uuid::Uuid::new_v4().to_string(),
                admin_key_hash: dfs_common::keys::hash_key(&creds.key),
            };
            let caller = Caller::this_node(node);
            if let Err(e) = node.init_cluster(&caller, &serde_json::to_vec(&req)?).await {
                tracing::debug!(node = node.id, error = %e.message(), "init not done yet");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Count and log leader changes as this node sees them.
pub async fn watch_leader(node: std::sync::Arc<MetaNode>) {
    let mut rx = node.raft.metrics();
    let mut last = None;
    loop {
        let leader = rx.borrow_and_update().current_leader;
        if leader != last {
            if last.is_some() || leader.is_some() {
                node.metrics.leader_changes.inc();
            }
            tracing::info!(node = node.id, leader = ?leader, term = rx.borrow().current_term, "leader changed");
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Wait for SIGTERM/SIGINT (returns None) or for Raft to stop on a storage error (Some(reason)).
pub async fn wait_for_stop(node: &MetaNode) -> Option<String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok()?;
    let mut int = signal(SignalKind::interrupt()).ok()?;
    let mut rx = node.raft.metrics();
    let fatal = async {
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "raft metrics closed".to_string();
            }
        }
    };
    tokio::select! {
        _ = term.recv() => { tracing::info!(node = node.id, "SIGTERM: stopping"); None }
        _ = int.recv() => { tracing::info!(node = node.id, "SIGINT: stopping"); None }
        reason = fatal => Some(reason),
    }
}
