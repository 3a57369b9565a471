//! `Replicate`: the leader asks this server to copy one of its chunks to another chunk server
//! (re-replication after a server died, or a replication increase). The bytes go chunk server
//! to chunk server through the target's ordinary `Write` RPC, verified on the way out of the
//! local store (block CRCs) and checked by the target (whole-chunk CRC in its reply).
//!
//! Only the metadata group may ask (a metasrv certificate; the cluster-secret proof on an
//! `--insecure` cluster: checked by the service), and the request carries a read token for
//! this server and a write token for the target, both signed by the leader (the read token is
//! checked here with this server's own key; the target checks the write token with its key,
//! and its reply, with its receipt, goes back to the leader unchanged).
use crate::service::store_status;
use crate::service::TokenKey;
use crate::store::{validate_chunk_id, Store};
use dfs_common::token::Op;
use dfs_common::STREAM_PIECE;
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::{ReplicateRequest, WriteChunkReply, WriteChunkRequest};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_stream::StreamExt;
use tonic::Status;

/// Largest gRPC message sent to the target.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Check the caller and the tokens, then stream the chunk to the target.
pub async fn replicate(
    store: &Store,
    key: &TokenKey,
    req: ReplicateRequest,
    stall: std::time::Duration,
) -> Result<WriteChunkReply, Status> {
    validate_chunk_id(&req.chunk_id).map_err(store_status)?;
    key.require()?
        .verify_chunk(&req.read_token, Op::Read, &req.chunk_id, now_ms())
        .map_err(|e| {
            Status::permission_denied(format!(
                "the read token for chunk {} is not valid: {e}",
                req.chunk_id
            ))
        })?;
    if req.target_addr.is_empty() {
        return Err(Status::invalid_argument("replicate needs a target address"));
    }
    let reader = store.open_read(&req.chunk_id).await.map_err(store_status)?;
    let channel = crate::peers::channel(
        tonic::transport::Endpoint::from_shared(format!("http://{}", req.target_addr))
            .map_err(|_| {
                Status::invalid_argument(format!("bad target address {:?}", req.target_addr))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .initial_stream_window_size(4 * 1024 * 1024),
        dfs_common::pki::Role::Chunk,
    );
    let mut client = ChunkClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let header = WriteChunkRequest {
        chunk_id: req.chunk_id.clone(),
        token: req.write_token.clone(),
        data: Default::default(),
    };
    // A local read error must not look like a clean end of the stream (the target would
    // store a short copy): the outgoing stream stalls instead, and the call is dropped, which
    // resets it; the target then abandons the write and nothing becomes visible there.
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<Status>();
    let pieces = futures::stream::unfold(
        (reader.stream(STREAM_PIECE), Some(err_tx)),
        |(mut s, mut tx)| async move {
            match s.next().await {
                Some(Ok(data)) => Some((
                    WriteChunkRequest {
                        chunk_id: String::new(),
                        token: String::new(),
                        data,
                    },
                    (s, tx),
                )),
                Some(Err(e)) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(store_status(e));
                    }
                    std::future::pending::<()>().await;
                    None
                }
                None => None,
            }
        },
    );
    // A target that takes no piece for the stall timeout (frozen, hung disk) is given up, so
    // the repair that asked for this copy can pick another target instead of waiting.
    let progress = dfs_common::stall::Progress::default();
    let mark = progress.clone();
    let outgoing = tokio_stream::iter(std::iter::once(header))
        .chain(pieces)
        .map(move |piece| {
            mark.mark();
            piece
        });
    let result = tokio::select! {
        r = dfs_common::stall::guard(&progress, stall, client.write(outgoing)) => r.map_err(|idle| {
            Status::unavailable(format!(
                "{} made no progress for {:.1} s, copy given up",
                req.target_addr,
                idle.as_secs_f64()
            ))
        })?,
        Ok(status) = err_rx => {
            return Err(Status::new(
                status.code(),
                format!("reading the local copy of chunk {} failed: {}", req.chunk_id, status.message()),
            ));
        }
    };
    let reply = result
        .map_err(|s| {
            Status::new(
                s.code(),
                format!("writing to {} failed: {}", req.target_addr, s.message()),
            )
        })?
        .into_inner();
    tracing::info!(chunk_id = %req.chunk_id, target = %req.target_addr, size = reply.size, "chunk replicated");
    Ok(reply)
}
