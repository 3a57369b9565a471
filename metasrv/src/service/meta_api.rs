//! The `Meta` gRPC service: a thin shell that runs each method's handler here, or forwards the
//! request to the leader when the handler says this node is not it.
use super::{Caller, MetaNode, OpError};
use dfs_proto::meta_server::Meta;
use dfs_proto::*;
use prost::Message;
use std::sync::Arc;
use std::time::Instant;
use tonic::Status;

#[derive(Clone)]
pub struct MetaApi {
    pub node: Arc<MetaNode>,
}

macro_rules! meta_rpcs {
    ($($rpc:ident: $req:ty => $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Meta for MetaApi {
            $(
                async fn $rpc(&self, request: tonic::Request<$req>) -> Result<tonic::Response<$resp>, Status> {
                    let mut caller = Caller::from_metadata(request.metadata());
                    caller.addr = request.remote_addr().map(|a| a.ip());
                    caller.peer = dfs_common::tls::peer_identity(&request);
                    let started = Instant::now();
                    let body = request.into_inner();
                    let mut forwarded = false;
                    let result = match self.node.$rpc(&caller, body.clone()).await {
                        Ok(r) => Ok(r),
                        Err(OpError::Status(s)) => Err(s),
                        Err(OpError::NotLeader(hint)) => match self.node.check_before_forwarding(&caller) {
                            Err(s) => Err(s),
                            Ok(()) => {
                                forwarded = true;
                                self.node
                                    .forward(stringify!($rpc), &caller, body.encode_to_vec(), 0, hint)
                                    .await
                                    .and_then(|b| {
                                        <$resp>::decode(b.as_slice())
                                            .map_err(|e| Status::internal(format!("bad reply from leader: {e}")))
                                    })
                            }
                        },
                    };
                    self.node.metrics.observe_request(stringify!($rpc), result.as_ref().err(), started.elapsed());
                    result.map(|r| {
                        let mut response = tonic::Response::new(r);
                        // Forwarding costs a hop: tell the client where the leader is.
                        if let Some(v) = forwarded
                            .then(|| self.node.other_leader_addr())
                            .flatten()
                            .and_then(|a| a.parse().ok())
                        {
                            response.metadata_mut().insert(dfs_common::headers::LEADER_HINT, v);
                        }
                        response
                    })
                }
            )*
        }

        impl MetaNode {
            /// Run a request handed over by another node (or by ourselves after a leader change).
            pub async fn dispatch(&self, method: &str, caller: Caller, body: &[u8], hops: u32) -> Result<Vec<u8>, Status> {
                if method == "init_cluster" {
                    return self.init_cluster(&caller, body).await;
                }
                match method {
                    $(
                        stringify!($rpc) => {
                            let req = <$req>::decode(body)
                                .map_err(|e| Status::invalid_argument(format!("malformed {method} request: {e}")))?;
                            match self.$rpc(&caller, req).await {
                                Ok(r) => Ok(r.encode_to_vec()),
                                Err(OpError::Status(s)) => Err(s),
                                Err(OpError::NotLeader(hint)) => {
                                    self.forward(method, &caller, body.to_vec(), hops, hint).await
                                }
                            }
                        }
                    )*
                    other => Err(Status::unimplemented(format!("unknown method {other:?}"))),
                }
            }
        }
    };
}

meta_rpcs! {
    mkdir: MkdirRequest => Empty;
    list: ListRequest => ListReply;
    stat: StatRequest => FileInfo;
    rename: RenameRequest => Empty;
    remove: RemoveRequest => RemoveReply;
    usage: StatRequest => UsageReply;
    trash_list: TrashListRequest => TrashListReply;
    trash_purge: TrashPurgeRequest => RemoveReply;
    revoke_certificate: RevokeCertificateRequest => Empty;
    symlink: SymlinkRequest => Empty;
    set_attr: SetAttrRequest => Empty;
    allocate_chunks: AllocateRequest => AllocateReply;
    commit_file: CommitRequest => FileInfo;
    renew_lease: RenewLeaseRequest => RenewLeaseReply;
    open_read: StatRequest => OpenReadReply;
    report_bad_replica: BadReplicaReport => Empty;
    who_am_i: Empty => UserInfo;
    user_add: UserAddRequest => UserAddReply;
    user_list: Empty => UserListReply;
    user_remove: UserRemoveRequest => Empty;
    register: UserAddRequest => UserAddReply;
    cluster_status: StatusRequest => ClusterStatusReply;
    add_member: AddMemberRequest => Empty;
    remove_member: RemoveMemberRequest => Empty;
    import: ImportRequest => ImportReply;
    export: ExportRequest => ExportReply;
    register_chunk_server: RegisterChunkServerRequest => RegisterChunkServerReply;
    heartbeat: HeartbeatRequest => HeartbeatReply;
    fsck: FsckRequest => FsckReply;
    set_replication: SetReplicationRequest => Empty;
    gc: GcRequest => GcReply;
    balance: BalanceRequest => BalanceReply;
    ping: Empty => PingReply;
}
