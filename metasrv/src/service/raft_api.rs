//! The `RaftTransport` gRPC service: Raft messages from peers, forwarded client requests, and
//! the `Hello` identity check. Every call must carry the cluster-secret proof.
use super::{Caller, MetaNode};
use crate::types::{NodeId, TypeConfig};
use dfs_common::headers;
use dfs_proto::raft_transport_server::RaftTransport;
use dfs_proto::{ForwardReply, ForwardRequest, HelloReply, HelloRequest, RaftMessage};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct RaftApi {
    pub node: Arc<MetaNode>,
}

impl RaftApi {
    /// Check the caller is a metadata node of this cluster: its certificate with TLS (not
    /// revoked), the cluster-secret proof on an `--insecure` cluster. Returns the node id the
    /// certificate names (`None` without TLS).
    fn check_peer<T>(&self, req: &Request<T>) -> Result<Option<NodeId>, Status> {
        if crate::network::tls().is_some() {
            // With TLS only a metasrv certificate from the cluster CA may speak Raft.
            let peer = dfs_common::tls::peer_identity(req);
            if let Some(p) = peer.as_ref().filter(|p| self.node.is_revoked(p)) {
                self.node.metrics.auth_failures.inc();
                tracing::warn!(node = self.node.id, peer = ?req.remote_addr(), identity = %p, "refused a peer message: revoked certificate identity");
                return Err(Status::permission_denied(format!(
                    "{p} is shut out of this cluster (removed from the group, or its certificate revoked)"
                )));
            }
            if let Some(p) = peer
                .as_ref()
                .filter(|p| p.role == dfs_common::pki::Role::Meta)
            {
                return Ok(p.node_id());
            }
            self.node.metrics.auth_failures.inc();
            tracing::warn!(node = self.node.id, peer = ?req.remote_addr(), identity = ?peer.as_ref().map(|p| p.to_string()), "refused a peer message: not a metasrv certificate");
            return Err(Status::permission_denied(match peer {
                Some(p) => format!("Raft and forwarding are for metadata nodes; the caller's certificate is for {p}"),
                None => "Raft and forwarding are for metadata nodes: the caller showed no certificate from the cluster CA".into(),
            }));
        }
        let proof = req
            .metadata()
            .get(headers::NODE_AUTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if self.node.secret.check_node_proof(proof) {
            return Ok(None);
        }
        self.node.metrics.auth_failures.inc();
        tracing::warn!(node = self.node.id, peer = ?req.remote_addr(), "refused a peer message: wrong cluster secret");
        Err(Status::permission_denied("wrong cluster secret: this node belongs to another cluster or was given another --cluster-secret-file"))
    }

    /// A Raft message speaks for its sender (leader or candidate): with TLS that must be the
    /// node its certificate names.
    fn check_sender(&self, peer: Option<NodeId>, claimed: Option<NodeId>) -> Result<(), Status> {
        match (peer, claimed) {
            (Some(p), Some(c)) if p != c => {
                self.node.metrics.auth_failures.inc();
                Err(Status::permission_denied(format!(
                    "metasrv {p}'s certificate cannot speak for node {c}"
                )))
            }
            _ => Ok(()),
        }
    }

    fn check_target(&self, target: NodeId) -> Result<(), Status> {
        if target == self.node.id {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "message for node {target} reached node {}: check the --peers addresses",
                self.node.id
            )))
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
        serde_json::from_slice(payload)
            .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
    }

    fn reply<T: serde::Serialize>(&self, v: &T) -> Result<Response<RaftMessage>, Status> {
        let payload = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftMessage { target: 0, payload }))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftApi {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let peer = self.check_peer(&req)?;
        let m = req.into_inner();
        self.check_target(m.target)?;
        let rpc: AppendEntriesRequest<TypeConfig> = Self::decode(&m.payload)?;
        self.check_sender(peer, rpc.vote.leader_id().voted_for())?;
        self.node
            .leader_watch
            .check_sender(rpc.vote.leader_id().voted_for())?;
        let res = self.node.raft.append_entries(rpc).await;
        self.reply(&res)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let peer = self.check_peer(&req)?;
        let m = req.into_inner();
        self.check_target(m.target)?;
        let rpc: VoteRequest<NodeId> = Self::decode(&m.payload)?;
        let candidate = rpc.vote.leader_id().voted_for();
        self.check_sender(peer, candidate)?;
        self.node.leader_watch.check_sender(candidate)?;
        if self.node.leader_watch.join_give_up(candidate) {
            self.node.metrics.leaders_given_up.inc();
        }
        let res = self.node.raft.vote(rpc).await;
        self.reply(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let peer = self.check_peer(&req)?;
        let m = req.into_inner();
        self.check_target(m.target)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = Self::decode(&m.payload)?;
        self.check_sender(peer, rpc.vote.leader_id().voted_for())?;
        self.node
            .leader_watch
            .check_sender(rpc.vote.leader_id().voted_for())?;
        let res = self.node.raft.install_snapshot(rpc).await;
        self.reply(&res)
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        self.check_peer(&req)?;
        let f = req.into_inner();
        let caller = Caller {
            user: f.user,
            key: f.key,
            node_auth: f.node_auth,
            // A node's word (its certificate or proof was checked above).
            peer: f.peer.parse().ok(),
            addr: f.client_addr.parse().ok(),
        };
        let reply = match self.node.dispatch(&f.method, caller, &f.body, f.hops).await {
            Ok(body) => ForwardReply {
                body,
                code: 0,
                message: String::new(),
            },
            Err(s) => ForwardReply {
                body: Vec::new(),
                code: s.code() as i32,
                message: s.message().to_string(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.check_peer(&req)?;
        let h = req.into_inner();
        self.check_target(h.target)?;
        Ok(Response::new(self.node.hello_reply()))
    }
}
