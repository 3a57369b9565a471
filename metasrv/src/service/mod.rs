//! The metasrv node as its gRPC services see it: Raft handle, shared state, soft state, and the
//! rules for where a request runs.
//!
//! Any node accepts any request. A write or a linearizable read that reaches a follower is
//! forwarded to the leader (`RaftTransport.Forward`, at most `MAX_HOPS` hops) with the caller's
//! credentials; the leader authenticates it against its own state. Stale reads (`stale: true`)
//! are answered from the local applied state.
mod auth_limit;
mod handlers;
mod meta_api;
pub mod pre_auth;
mod raft_api;
mod read_barrier;
mod write_batcher;

pub(crate) use handlers::client_write;
pub use read_barrier::ReadBarrier;
pub use write_batcher::WriteBatcher;

pub use meta_api::MetaApi;
pub use raft_api::RaftApi;

use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::state::command::{ApplyError, ErrorKind};
use crate::state::{Command, Reply, State};
use crate::types::{NodeId, Raft};
use dfs_common::headers;
use dfs_common::token::ClusterSecret;
use dfs_proto::ForwardRequest;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::{Code, Status};

/// Most times one request is handed from node to node looking for the leader.
pub const MAX_HOPS: u32 = 3;
/// Longest a forwarded request may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for an election to finish before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// Settings the services need.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub allow_self_register: bool,
    pub chunk_size: u64,
    pub default_replication: u32,
    /// How long chunk tokens stay valid.
    pub token_ttl: Duration,
    /// How long deleted entries stay in the trash (zero: deletes skip it).
    pub trash_retention: Duration,
    /// A write lease not renewed for this long expires.
    pub lease_timeout: Duration,
    /// How far past its lifetime a write token is still accepted at commit without a lease.
    pub commit_grace: Duration,
}

pub struct MetaNode {
    pub id: NodeId,
    pub raft: Raft,
    pub state: Arc<RwLock<State>>,
    pub secret: ClusterSecret,
    pub config: ServiceConfig,
    pub liveness: Liveness,
    pub metrics: Arc<Metrics>,
    pub reads: ReadBarrier,
    pub writes: WriteBatcher,
    /// Self-healing soft state (dead servers, bad replicas, repair counters).
    pub healing: crate::healer::Healing,
    /// Reachability of the leader as seen from this node (see leader_watch).
    pub leader_watch: crate::leader_watch::LeaderWatch,
    /// Failed logins and self-registrations per address.
    pub auth_limit: auth_limit::AuthLimiter,
    /// Held by a membership change on this node from its first step to its last (add-member's
    /// catch-up included), so a second one (a client's retry) starts from the first's result.
    pub membership_change: Arc<tokio::sync::Mutex<()>>,
}

/// Who is calling: a user (name and key) and/or a node (its certificate with TLS, the
/// cluster-secret proof on an `--insecure` cluster).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub user: String,
    pub key: String,
    pub node_auth: String,
    /// The identity in the certificate the caller showed (verified against the cluster CA).
    pub peer: Option<dfs_common::pki::Identity>,
    /// Where the request came from (the client's, also through a forward; `None` inside).
    pub addr: Option<std::net::IpAddr>,
}

impl Caller {
    pub fn from_metadata(m: &tonic::metadata::MetadataMap) -> Caller {
        let get = |k: &str| {
            m.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Caller {
            user: get(headers::USER),
            key: get(headers::KEY),
            node_auth: get(headers::NODE_AUTH),
            peer: None,
            addr: None,
        }
    }

    /// The metadata node itself, calling one of its own handlers.
    pub fn this_node(node: &MetaNode) -> Caller {
        Caller {
            node_auth: node.secret.node_proof(),
            peer: crate::network::tls().and_then(|t| t.identity()),
            ..Default::default()
        }
    }
}

/// A handler's failure: a final status, or "not the leader" (then the request is forwarded).
#[derive(Debug)]
pub enum OpError {
    Status(Status),
    NotLeader(Option<NodeId>),
}

impl From<Status> for OpError {
    fn from(s: Status) -> Self {
        OpError::Status(s)
    }
}

impl From<ApplyError> for OpError {
    fn from(e: ApplyError) -> Self {
        OpError::Status(apply_status(&e))
    }
}

pub type OpResult<T> = Result<T, OpError>;

pub fn apply_status(e: &ApplyError) -> Status {
    let code = match e.kind {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
    };
    Status::new(code, e.message.clone())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl MetaNode {
    pub fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.current_leader() == Some(self.id)
    }

    /// Writes run only on the leader: answer "not leader" early, before any local check.
    pub fn write_gate(&self) -> OpResult<()> {
        match self.current_leader() {
            Some(l) if l == self.id => Ok(()),
            other => Err(OpError::NotLeader(other)),
        }
    }

    /// A linearizable read point (or nothing for a stale read).
    pub async fn read_gate(&self, stale: bool) -> OpResult<()> {
        if stale {
            return Ok(());
        }
        self.write_gate()?;
        match self.reads.wait().await {
            Ok(()) => Ok(()),
            Err(read_barrier::ReadCheck::NotLeader(l)) => Err(OpError::NotLeader(l)),
            Err(read_barrier::ReadCheck::Unavailable(m)) => Err(Status::unavailable(m).into()),
        }
    }

    /// Propose a command through Raft and wait until it is committed and applied.
    /// (Concurrent proposals share one Raft entry; see `write_batcher`.)
    pub async fn propose(&self, cmd: Command) -> OpResult<Reply> {
        self.writes.submit(cmd).await
    }

    /// The authenticated user name, checked against this node's applied state.
    pub fn authenticate(&self, c: &Caller) -> OpResult<(String, bool)> {
        if c.user.is_empty() || c.key.is_empty() {
            return Err(Status::unauthenticated(
                "no credentials: pass an auth file (--auth-file or DFS_AUTH_FILE) with a line user/key",
            )
            .into());
        }
        if let Err(wait) = self.auth_limit.check(c.addr, &c.user) {
            self.metrics.auth_rate_limited.inc();
            return Err(Status::resource_exhausted(format!(
                "too many failed logins for {:?} from this address: try again in {wait} s",
                c.user
            ))
            .into());
        }
        let st = self.read_state();
        match st.users.get(&c.user) {
            Some(u) if dfs_common::keys::key_matches(&c.key, &u.key_hash) => {
                Ok((u.name.clone(), u.role == crate::state::Role::Admin))
            }
            _ => {
                self.metrics.auth_failures.inc();
                let n = self.auth_limit.failed(c.addr, &c.user);
                if n == auth_limit::MAX_FAILURES_PER_ADDR {
                    tracing::warn!(user = %c.user, addr = ?c.addr, "many failed logins for one user name");
                }
                Err(
                    Status::unauthenticated(format!("unknown user {:?} or wrong key", c.user))
                        .into(),
                )
            }
        }
    }

    pub fn authenticate_admin(&self, c: &Caller) -> OpResult<String> {
        let (user, admin) = self.authenticate(c)?;
        if !admin {
            return Err(Status::permission_denied(format!("{user} is not an admin")).into());
        }
        Ok(user)
    }

    /// What a follower checks before it hands a request to the leader: a user it knows must
    /// bring the right key (counted by the failed-login limiter, as on the leader). A user it
    /// does not know yet may have just been created on the leader, so that request goes on
    /// (the leader checks it; unknown callers' requests are small: `pre_auth`).
    pub fn check_before_forwarding(&self, c: &Caller) -> Result<(), Status> {
        if c.user.is_empty() || !self.read_state().users.contains_key(&c.user) {
            return Ok(());
        }
        match self.authenticate(c) {
            Ok(_) => Ok(()),
            Err(OpError::Status(s)) => Err(s),
            Err(OpError::NotLeader(_)) => Ok(()),
        }
    }

    /// Whether `who` was shut out (`dfsctl admin cert revoke`, or removed from the group).
    pub fn is_revoked(&self, who: &dfs_common::pki::Identity) -> bool {
        self.read_state().meta.revoked.contains(&who.to_string())
    }

    /// Check the caller is a cluster node. With TLS: its certificate (a metasrv or chunk
    /// server one, from the cluster CA), returned; on an `--insecure` cluster: the
    /// cluster-secret proof (and `None`).
    pub fn authenticate_node(&self, c: &Caller) -> OpResult<Option<dfs_common::pki::Identity>> {
        use dfs_common::pki::Role;
        if crate::network::tls().is_some() {
            return match &c.peer {
                Some(p) if self.is_revoked(p) => {
                    self.metrics.auth_failures.inc();
                    Err(Status::permission_denied(format!(
                        "the certificate identity {p} is revoked in this cluster (dfsctl admin cert revoke --allow lets it in again)"
                    ))
                    .into())
                }
                Some(p) if matches!(p.role, Role::Meta | Role::Chunk) => Ok(Some(p.clone())),
                other => {
                    self.metrics.auth_failures.inc();
                    Err(Status::permission_denied(match other {
                        Some(p) => format!("this call is for cluster nodes, and the caller's certificate is for {p}"),
                        None => "this call is for cluster nodes: it needs a metasrv or chunk server certificate from the cluster CA".into(),
                    })
                    .into())
                }
            };
        }
        if self.secret.check_node_proof(&c.node_auth) {
            Ok(None)
        } else {
            self.metrics.auth_failures.inc();
            Err(Status::permission_denied(
                "not a cluster node: missing or wrong cluster-secret proof",
            )
            .into())
        }
    }

    /// The current leader's address, when this node is not the leader (a hint for clients).
    pub fn other_leader_addr(&self) -> Option<String> {
        self.current_leader()
            .filter(|l| *l != self.id)
            .and_then(|l| self.member_addr(l))
    }

    fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Wait (bounded) until some node is known as leader.
    async fn wait_for_leader(&self) -> Option<NodeId> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Resolves once a leader other than `old` is known (never, while `old` leads).
    async fn leader_moved_from(&self, old: NodeId) {
        let mut rx = self.raft.metrics();
        loop {
            if rx
                .borrow_and_update()
                .current_leader
                .is_some_and(|l| l != old)
            {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Hand a request to the leader and return its reply, encoded.
    /// Boxed (and `Send`) because forwarding and dispatching call each other.
    pub fn forward<'a>(
        &'a self,
        method: &'a str,
        caller: &'a Caller,
        body: Vec<u8>,
        hops: u32,
        hint: Option<NodeId>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, Status>> + Send + 'a>>
    {
        Box::pin(async move {
            if hops >= MAX_HOPS {
                return Err(Status::unavailable(
                    "no stable leader right now (request went round too many nodes); retry",
                ));
            }
            let leader = match hint {
                Some(l) => Some(l),
                None => self.wait_for_leader().await,
            };
            let Some(leader) = leader else {
                return Err(Status::unavailable(
                    "no metadata leader is elected (is a majority of metasrv nodes up?)",
                ));
            };
            if leader == self.id {
                // We became leader in the meantime: run it here.
                return self.dispatch(method, caller.clone(), &body, hops + 1).await;
            }
            let addr = self.member_addr(leader).ok_or_else(|| {
                Status::unavailable(format!("leader {leader} has no known address"))
            })?;
            let mut client = crate::network::raft_client(&addr)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let req = ForwardRequest {
                method: method.to_string(),
                body: body.clone(),
                hops: hops + 1,
                user: caller.user.clone(),
                key: caller.key.clone(),
                node_auth: caller.node_auth.clone(),
                client_addr: caller.addr.map(|a| a.to_string()).unwrap_or_default(),
                peer: caller
                    .peer
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            };
            // Bounded: a paused leader must not hold a request forever (the client moves on).
            let call = client.forward(crate::network::with_node_auth(req, &self.secret));
            // A leader that loses its place while holding the request (frozen, cut off) does
            // not keep it: once another leader is known the request goes there. (A deposed
            // leader cannot commit it any more; writes carry request ids against doubles.)
            let reply = tokio::select! {
                r = tokio::time::timeout(FORWARD_TIMEOUT, call) => r,
                () = self.leader_moved_from(leader) => {
                    tracing::info!(node = self.id, old = leader, method, "leader changed while a forwarded request waited; sending it to the new one");
                    return self.forward(method, caller, body, hops + 1, None).await;
                }
            };
            let reply = reply
                .map_err(|_| {
                    Status::unavailable(format!("leader {leader} at {addr} did not answer in time"))
                })?
                .map_err(|s| {
                    Status::unavailable(format!(
                        "forwarding to leader {leader} at {addr} failed: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            if reply.code == 0 {
                Ok(reply.body)
            } else {
                Err(Status::new(Code::from_i32(reply.code), reply.message))
            }
        })
    }
}
