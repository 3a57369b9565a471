//! Raft messages to other metasrv nodes over gRPC (service `RaftTransport`).
//!
//! Openraft requests travel as JSON in `RaftMessage.payload`, with the id of the node they are
//! meant for: a node that receives a message for another id refuses it (openraft misbehaves when
//! a node talks to itself through a stale address). Every call carries the cluster-secret proof.
//! An AppendEntries batch that would not fit in one message is refused before it is sent
//! (`PayloadTooLarge`), and openraft sends fewer entries: a few large commits in a row never
//! stall replication.
use crate::types::{NodeId, TypeConfig};
use dfs_common::headers;
use dfs_common::pki::Role;
use dfs_common::tls::Tls;
use dfs_common::token::ClusterSecret;
use dfs_proto::raft_transport_client::RaftTransportClient;
use dfs_proto::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest gRPC message between metasrv nodes (log batches and snapshot chunks).
pub const MAX_RAFT_MESSAGE: usize = 64 * 1024 * 1024;

/// A lazily connected channel to `addr` (`host:port`), shared by every caller in this process.
/// openraft asks for a new network client for each leadership check (every linearizable read
/// batch) and each election; a channel per call would open a TCP connection each time. A
/// shared channel multiplexes calls on one HTTP/2 connection and reconnects by itself after
/// the peer restarts.
/// `role` is what the server at `addr` must be (TLS checks its certificate says so).
pub fn channel(addr: &str, role: Role) -> Result<Channel, tonic::transport::Error> {
    static CHANNELS: OnceLock<Mutex<HashMap<(String, Role), Channel>>> = OnceLock::new();
    let mut cache = CHANNELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let key = (addr.to_string(), role);
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let c = dfs_common::tls::channel(endpoint, tls(), role);
    cache.insert(key, c.clone());
    Ok(c)
}

/// This process's TLS (`--tls-*`), set once at startup; `None` for a `--insecure` node.
static TLS: OnceLock<Option<Arc<Tls>>> = OnceLock::new();

pub fn set_tls(tls: Option<Arc<Tls>>) {
    let _ = TLS.set(tls);
}

/// The node's TLS, if it runs with TLS (then peers prove who they are with certificates,
/// never with the cluster-secret proof).
pub fn tls() -> Option<&'static Arc<Tls>> {
    TLS.get().and_then(Option::as_ref)
}

pub fn raft_client(addr: &str) -> Result<RaftTransportClient<Channel>, tonic::transport::Error> {
    Ok(RaftTransportClient::new(channel(addr, Role::Meta)?)
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE))
}

/// How many entries to send instead, when a batch of `entries` encodes to `len` bytes, more
/// than a message may hold (with room for the envelope); `None` when it fits (or is one
/// entry, which the proposer keeps under the limit: see `MAX_COMMIT_CHUNKS`).
fn smaller_batch(len: usize, entries: usize) -> Option<u64> {
    (len > MAX_RAFT_MESSAGE - (1 << 20) && entries > 1).then(|| (entries / 2).max(1) as u64)
}

/// A request to a peer: with TLS the node's certificate says who it is; only a `--insecure`
/// node attaches the cluster-secret proof.
pub fn with_node_auth<T>(msg: T, secret: &ClusterSecret) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if tls().is_none() {
        if let Ok(v) = secret.node_proof().parse() {
            req.metadata_mut().insert(headers::NODE_AUTH, v);
        }
    }
    req
}

pub struct NetworkFactory {
    pub secret: ClusterSecret,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            client: raft_client(&node.addr).ok(),
            secret: self.secret.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    client: Option<RaftTransportClient<Channel>>,
    secret: ClusterSecret,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerClient {
    /// Send `req`; `entries` is the number of log entries it carries (AppendEntries): a
    /// batch too large for one message is refused here, and openraft sends fewer at a time.
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        entries: usize,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                "bad peer address",
            ))));
        };
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(hint) = smaller_batch(payload.len(), entries) {
            return Err(PayloadTooLarge::new_entries_hint(hint).into());
        }
        let msg = with_node_auth(
            RaftMessage {
                target: self.target,
                payload,
            },
            &self.secret,
        );
        let fut = async {
            match rpc {
                Rpc::Append => client.append_entries(msg).await,
                Rpc::Vote => client.vote(msg).await,
                Rpc::Snapshot => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len();
        self.call(Rpc::Append, &rpc, entries, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, 0, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, 0, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::{smaller_batch, MAX_RAFT_MESSAGE};

    #[test]
    fn a_batch_too_large_for_one_message_is_halved() {
        assert_eq!(smaller_batch(1000, 32), None);
        assert_eq!(smaller_batch(MAX_RAFT_MESSAGE, 32), Some(16));
        assert_eq!(smaller_batch(MAX_RAFT_MESSAGE, 3), Some(1));
        assert_eq!(
            smaller_batch(MAX_RAFT_MESSAGE, 1),
            None,
            "one entry cannot be split"
        );
    }
}
