//! The gRPC `Chunk` service: token-checked chunk writes and reads over the store.
//!
//! What must stay true:
//! - No byte is written or read before the request's chunk token is verified for that chunk
//!   and operation (`Op::Write` / `Op::Read`) with this server's own key (given at
//!   registration; until then every token-checked call is refused): a token issued for other
//!   chunk servers is refused, and a write stores at most the bytes its token allows (more
//!   and the write fails, nothing stored).
//! - A reply's receipt (signed with this server's key) is made only once the chunk is durable.
//! - `Write` answers only after the chunk (and its backup) is durable; a stream that breaks,
//!   stalls or ends in an error leaves nothing visible.
//! - `Read` streams only verified bytes; every failure is a `Status` with a meaningful code and
//!   a sentence a person can act on, never a panic.
use crate::metrics::{Method, Metrics};
use crate::store::{validate_chunk_id, ChunkMeta, ChunkStream, Store, StoreError};
use dfs_common::token::{ChunkServerKey, ClusterSecret, Op, TokenError};
use dfs_common::STREAM_PIECE;
use dfs_proto::chunk_server::{Chunk, ChunkServer};
use dfs_proto::{ReadChunkReply, ReadChunkRequest, WriteChunkReply, WriteChunkRequest};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status, Streaming};

/// Largest gRPC message accepted or sent: one 1 MiB piece plus generous overhead.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// A write whose client sends nothing for this long is abandoned.
const WRITE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// This server's token key, set at every (re)registration; empty until the first.
#[derive(Default)]
pub struct TokenKey(std::sync::RwLock<Option<ChunkServerKey>>);

impl TokenKey {
    pub fn set(&self, key: ChunkServerKey) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    #[cfg(test)]
    fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn get(&self) -> Option<ChunkServerKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key, or the answer to give while there is none.
    pub fn require(&self) -> Result<ChunkServerKey, Status> {
        self.get().ok_or_else(|| {
            Status::unavailable(
                "this chunk server is not registered with the metadata group yet (it has no token key); retry shortly",
            )
        })
    }
}

/// The `Chunk` service state.
pub struct ChunkService {
    store: Store,
    /// Only for the node proof on `Replicate` of an `--insecure` cluster; tokens are checked
    /// with `key`.
    secret: Option<ClusterSecret>,
    key: Arc<TokenKey>,
    metrics: Arc<Metrics>,
    /// 0 until registered with the metadata group.
    node_id: Arc<AtomicU64>,
    /// How long a copy to another server may make no progress (`--stall-timeout`).
    stall: std::time::Duration,
}

impl ChunkService {
    pub fn new(
        store: Store,
        secret: Option<ClusterSecret>,
        key: Arc<TokenKey>,
        metrics: Arc<Metrics>,
        node_id: Arc<AtomicU64>,
        stall: std::time::Duration,
    ) -> Self {
        Self {
            store,
            secret,
            key,
            metrics,
            node_id,
            stall,
        }
    }

    /// The tonic server with message limits set for 1 MiB pieces.
    pub fn into_server(self) -> ChunkServer<ChunkService> {
        ChunkServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Check `token` with this server's key: the key and the bytes a write may store.
    fn check_token(
        &self,
        token: &str,
        op: Op,
        chunk_id: &str,
    ) -> Result<(ChunkServerKey, u64), Status> {
        let what = match op {
            Op::Read => "read",
            Op::Write => "write",
        };
        let key = self.key.require()?;
        let result = if token.is_empty() {
            Err(Status::unauthenticated(format!(
                "the {what} request for chunk {chunk_id} carries no chunk token; ask the metadata service for one"
            )))
        } else {
            key.verify_chunk(token, op, chunk_id, now_ms())
                .map(|max| (key, max))
                .map_err(|e| token_status(&e, what, chunk_id))
        };
        if result.is_err() {
            Metrics::inc(&self.metrics.token_rejections_total);
        }
        result
    }

    async fn do_write(
        &self,
        mut stream: Streaming<WriteChunkRequest>,
    ) -> Result<WriteChunkReply, Status> {
        // Refuse before reading anything while unregistered.
        self.key.require()?;
        let first = next_message(&mut stream).await?.ok_or_else(|| {
            Status::invalid_argument(
                "the write stream ended before its first message (chunk id and token)",
            )
        })?;
        if first.chunk_id.is_empty() {
            return Err(Status::invalid_argument(
                "the first write message must carry the chunk id and its token",
            ));
        }
        let chunk_id = first.chunk_id;
        validate_chunk_id(&chunk_id).map_err(store_status)?;
        let (key, max_bytes) = self.check_token(&first.token, Op::Write, &chunk_id)?;
        // More bytes than the token allows: refused as they arrive (returning drops the
        // writer, which removes its temp files; nothing is stored).
        let mut received = 0u64;
        let mut allow = |n: usize| {
            received = received.saturating_add(n as u64);
            if received > max_bytes {
                Metrics::inc(&self.metrics.token_rejections_total);
                return Err(Status::invalid_argument(format!(
                    "chunk {chunk_id}: the write token allows at most {max_bytes} bytes and more arrived; nothing was stored"
                )));
            }
            Ok(())
        };

        allow(first.data.len())?;
        let mut writer = self.store.begin_write(&chunk_id).map_err(store_status)?;
        writer.write(first.data).await.map_err(store_status)?;
        while let Some(msg) = next_message(&mut stream).await? {
            if !msg.chunk_id.is_empty() && msg.chunk_id != chunk_id {
                return Err(Status::invalid_argument(format!(
                    "a write stream carries one chunk: got {:?} in the stream of chunk {chunk_id}",
                    msg.chunk_id.chars().take(64).collect::<String>()
                )));
            }
            allow(msg.data.len())?;
            writer.write(msg.data).await.map_err(store_status)?;
        }
        let ChunkMeta { size, crc32c } = writer.finish().await.map_err(store_status)?;
        let node_id = key.node_id();
        Metrics::inc(&self.metrics.writes_total);
        Metrics::add(&self.metrics.written_bytes_total, size);
        tracing::debug!(chunk_id = %chunk_id, size, crc32c, "chunk written");
        Ok(WriteChunkReply {
            size,
            crc32c,
            node_id,
            receipt: key.receipt(&chunk_id, size, crc32c),
        })
    }
}

/// The next client message; `None` at the end of the stream. A broken or stalled stream is
/// an error (dropping the store writer then removes its temp files).
async fn next_message(
    stream: &mut Streaming<WriteChunkRequest>,
) -> Result<Option<WriteChunkRequest>, Status> {
    match tokio::time::timeout(WRITE_IDLE_TIMEOUT, stream.message()).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(status)) => Err(Status::new(
            status.code(),
            format!("the write stream broke: {}", status.message()),
        )),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no data arrived for {} s; the write was abandoned",
            WRITE_IDLE_TIMEOUT.as_secs()
        ))),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn token_status(e: &TokenError, what: &str, chunk_id: &str) -> Status {
    match e {
        TokenError::Malformed | TokenError::BadSignature => Status::unauthenticated(format!(
            "the {what} token for chunk {chunk_id} is invalid ({e}); ask the metadata service for a new one"
        )),
        TokenError::WrongServer { .. } => Status::permission_denied(format!(
            "the {what} token for chunk {chunk_id} is not for this server: {e}; ask the metadata service for the chunk's servers"
        )),
        TokenError::WrongScope => Status::permission_denied(format!(
            "the token does not allow a {what} of chunk {chunk_id} ({e})"
        )),
        TokenError::Expired => Status::permission_denied(format!(
            "the {what} token for chunk {chunk_id} has expired; ask the metadata service for a fresh one"
        )),
    }
}

/// Map a store error to a status code a client can act on.
pub fn store_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::InvalidChunkId(_) | StoreError::TooLarge { .. } => {
            Status::invalid_argument(msg)
        }
        StoreError::NotFound(_) => Status::not_found(msg),
        StoreError::Full { .. } | StoreError::NoSpace { .. } => Status::resource_exhausted(msg),
        StoreError::Conflict(_) => Status::already_exists(msg),
        StoreError::DataLoss { .. } => Status::data_loss(msg),
        StoreError::Aborted(_) | StoreError::Busy(_) => Status::aborted(msg),
        StoreError::Io { .. } | StoreError::Internal(_) => Status::internal(msg),
    }
}

#[tonic::async_trait]
impl Chunk for ChunkService {
    async fn write(
        &self,
        request: Request<Streaming<WriteChunkRequest>>,
    ) -> Result<Response<WriteChunkReply>, Status> {
        let started = Instant::now();
        let _active = self.metrics.transfer();
        let result = self.do_write(request.into_inner()).await;
        self.metrics
            .observe(Method::Write, result.is_ok(), started.elapsed());
        if let Err(status) = &result {
            tracing::info!(code = ?status.code(), error = status.message(), "chunk write failed");
        }
        result.map(Response::new)
    }

    type ReadStream = ReadStream;

    async fn replicate(
        &self,
        request: Request<dfs_proto::ReplicateRequest>,
    ) -> Result<Response<WriteChunkReply>, Status> {
        let result = match crate::peers::check_caller(&request, dfs_common::pki::Role::Meta, |p| {
            self.secret.as_ref().is_some_and(|s| s.check_node_proof(p))
        }) {
            Ok(_) => {
                crate::replicate::replicate(
                    &self.store,
                    &self.key,
                    request.into_inner(),
                    self.stall,
                )
                .await
            }
            Err(s) => Err(s),
        };
        if let Err(status) = &result {
            tracing::warn!(code = ?status.code(), error = status.message(), "replicate failed");
        }
        result.map(Response::new)
    }

    async fn read(
        &self,
        request: Request<ReadChunkRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let started = Instant::now();
        let active = self.metrics.transfer();
        let req = request.into_inner();
        let opened = async {
            validate_chunk_id(&req.chunk_id).map_err(store_status)?;
            // The writer of a chunk may read it back with its write token (a mount re-reads a
            // chunk it streamed out before the file is committed, when a program writes into
            // it again); anyone else needs a read token from the metadata service.
            let op = if req.token.starts_with("w.") {
                Op::Write
            } else {
                Op::Read
            };
            self.check_token(&req.token, op, &req.chunk_id)?;
            self.store
                .open_read(&req.chunk_id)
                .await
                .map_err(store_status)
        }
        .await;
        match opened {
            Ok(reader) => Ok(Response::new(ReadStream {
                pieces: match (req.offset, req.length) {
                    (0, 0) => reader.stream(STREAM_PIECE),
                    (off, 0) => reader.stream_range(STREAM_PIECE, off, u64::MAX),
                    (off, len) => reader.stream_range(STREAM_PIECE, off, len),
                },
                metrics: Arc::clone(&self.metrics),
                node_id: self.node_id.load(Ordering::Relaxed),
                chunk_id: req.chunk_id,
                started,
                finished: false,
                _active: active,
            })),
            Err(status) => {
                self.metrics.observe(Method::Read, false, started.elapsed());
                tracing::info!(code = ?status.code(), error = status.message(), "chunk read refused");
                Err(status)
            }
        }
    }
}

/// The pieces of one chunk read, counted into the metrics as they go out.
pub struct ReadStream {
    pieces: ChunkStream,
    metrics: Arc<Metrics>,
    node_id: u64,
    chunk_id: String,
    started: Instant,
    finished: bool,
    _active: crate::metrics::TransferGuard,
}

impl ReadStream {
    fn finish(&mut self, ok: bool) {
        if !self.finished {
            self.finished = true;
            self.metrics
                .observe(Method::Read, ok, self.started.elapsed());
            if ok {
                Metrics::inc(&self.metrics.reads_total);
            }
        }
    }
}

impl tokio_stream::Stream for ReadStream {
    type Item = Result<ReadChunkReply, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.pieces).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                Metrics::add(&this.metrics.read_bytes_total, data.len() as u64);
                Poll::Ready(Some(Ok(ReadChunkReply { data })))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                tracing::warn!(node_id = this.node_id, chunk_id = %this.chunk_id, error = %e, "chunk read failed");
                Poll::Ready(Some(Err(store_status(e))))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
        }
    }
}

impl Drop for ReadStream {
    fn drop(&mut self) {
        // The client went away before the end.
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use dfs_proto::chunk_client::ChunkClient;
    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;

    const ID: &str = "0a1b2c3d-1111-4222-8333-444455556666";
    /// What write tokens allow in these tests.
    const MAX: u64 = 64 << 20;

    struct Fixture {
        client: ChunkClient<tonic::transport::Channel>,
        secret: ClusterSecret,
        key: Arc<TokenKey>,
        metrics: Arc<Metrics>,
        dir: tempfile::TempDir,
        addr: std::net::SocketAddr,
        _shutdown: tokio::sync::oneshot::Sender<()>,
    }

    async fn start(capacity: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let store = Store::open(
            StoreConfig {
                data_dir: dir.path().to_path_buf(),
                backup_dir: Some(dir.path().join("backups")),
                capacity,
                pack_max: crate::store::DEFAULT_PACK_MAX,
            },
            Arc::clone(&metrics),
        )
        .unwrap();
        let secret = ClusterSecret::new(b"0123456789abcdef0123".to_vec());
        let key = Arc::new(TokenKey::default());
        key.set(secret.chunk_server_key(7));
        let svc = ChunkService::new(
            store,
            Some(secret.clone()),
            Arc::clone(&key),
            Arc::clone(&metrics),
            Arc::new(AtomicU64::new(7)),
            dfs_common::stall::DEFAULT_STALL_TIMEOUT,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc.into_server())
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = rx.await;
                    },
                ),
        );
        let client = ChunkClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Fixture {
            client,
            secret,
            key,
            metrics,
            dir,
            addr,
            _shutdown: tx,
        }
    }

    fn later() -> u64 {
        now_ms() + 60_000
    }

    fn pieces(id: &str, token: &str, data: &[u8]) -> Vec<WriteChunkRequest> {
        let mut out = vec![WriteChunkRequest {
            chunk_id: id.into(),
            token: token.into(),
            data: Default::default(),
        }];
        out.extend(data.chunks(STREAM_PIECE).map(|c| WriteChunkRequest {
            chunk_id: String::new(),
            token: String::new(),
            data: c.to_vec().into(),
        }));
        out
    }

    async fn read_all(f: &mut Fixture, id: &str, token: &str) -> Result<Vec<u8>, Status> {
        let mut s = f
            .client
            .read(ReadChunkRequest {
                chunk_id: id.into(),
                token: token.into(),
                offset: 0,
                length: 0,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            out.extend_from_slice(&m?.data);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn write_then_read_over_grpc() {
        let mut f = start(u64::MAX).await;
        let data: Vec<u8> = (0..3 * STREAM_PIECE + 5)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let wt = f.secret.sign_chunk(Op::Write, ID, MAX, later(), &[7]);
        let reply = f
            .client
            .write(tokio_stream::iter(pieces(ID, &wt, &data)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.size, data.len() as u64);
        assert_eq!(reply.crc32c, crc32c::crc32c(&data));
        assert_eq!(reply.node_id, 7);
        let mut ring = f.secret.key_ring();
        assert!(ring.check_receipt(7, &reply.receipt, ID, reply.size, reply.crc32c));
        assert!(!ring.check_receipt(7, &reply.receipt, ID, reply.size + 1, reply.crc32c));
        let rt = f.secret.sign_chunk(Op::Read, ID, 0, later(), &[7]);
        assert_eq!(read_all(&mut f, ID, &rt).await.unwrap(), data);
        assert_eq!(f.metrics.reads_total.load(Ordering::Relaxed), 1);
        // Its writer reads it back with the write token; not with another chunk's.
        assert_eq!(read_all(&mut f, ID, &wt).await.unwrap(), data);
        let other = f
            .secret
            .sign_chunk(Op::Write, "another-chunk", MAX, later(), &[7]);
        let e = read_all(&mut f, ID, &other).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let (reads, writes) = (2, 1); // a refused read is not counted
        assert_eq!(f.metrics.reads_total.load(Ordering::Relaxed), reads);
        assert_eq!(f.metrics.writes_total.load(Ordering::Relaxed), writes);
        assert_eq!(
            f.metrics.read_bytes_total.load(Ordering::Relaxed),
            2 * data.len() as u64
        );
        assert_eq!(f.metrics.active_transfers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn tokens_and_ids_are_checked_first() {
        let mut f = start(u64::MAX).await;
        let data = vec![1u8; 1000];
        let cases = [
            (String::new(), tonic::Code::Unauthenticated),
            ("junk".to_string(), tonic::Code::Unauthenticated),
            (
                ClusterSecret::new(b"another secret 123".to_vec()).sign_chunk(
                    Op::Write,
                    ID,
                    MAX,
                    later(),
                    &[7],
                ),
                tonic::Code::Unauthenticated,
            ),
            (
                f.secret.sign_chunk(Op::Read, ID, 0, later(), &[7]),
                tonic::Code::PermissionDenied,
            ),
            (
                f.secret.sign_chunk(Op::Write, ID, MAX, 1, &[7]),
                tonic::Code::PermissionDenied,
            ),
        ];
        for (token, code) in cases {
            let err = f
                .client
                .write(tokio_stream::iter(pieces(ID, &token, &data)))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{token}: {}", err.message());
        }
        assert!(f
            .dir
            .path()
            .join("chunks/0a")
            .read_dir()
            .unwrap()
            .next()
            .is_none());
        let rt = f.secret.sign_chunk(Op::Read, ID, 0, 1, &[7]);
        let err = read_all(&mut f, ID, &rt).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(f.metrics.token_rejections_total.load(Ordering::Relaxed), 6);

        let bad = "../../../etc/passwd";
        let t = f.secret.sign_chunk(Op::Write, bad, MAX, later(), &[7]);
        let err = f
            .client
            .write(tokio_stream::iter(pieces(bad, &t, &data)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = read_all(&mut f, bad, "x").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        let rt = f.secret.sign_chunk(Op::Read, ID, 0, later(), &[7]);
        let err = read_all(&mut f, ID, &rt).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        let err = f
            .client
            .write(tokio_stream::iter(Vec::<WriteChunkRequest>::new()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    fn chunk_dir_is_empty(f: &Fixture) -> bool {
        let dir = f.dir.path().join("chunks/0a");
        !dir.exists() || dir.read_dir().unwrap().next().is_none()
    }

    #[tokio::test]
    async fn tokens_for_other_servers_or_more_bytes_are_refused() {
        let mut f = start(u64::MAX).await;
        let data = vec![3u8; 2 * STREAM_PIECE + 10];
        let elsewhere = f.secret.sign_chunk(Op::Write, ID, MAX, later(), &[3, 4]);
        let err = f
            .client
            .write(tokio_stream::iter(pieces(ID, &elsewhere, &data)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("issued for chunk servers [3, 4], not this one (7)"),
            "{err:?}"
        );
        let rt = f.secret.sign_chunk(Op::Read, ID, 0, later(), &[3]);
        let err = read_all(&mut f, ID, &rt).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

        // One byte more than allowed, in the last piece: refused, nothing stored.
        let small = f
            .secret
            .sign_chunk(Op::Write, ID, data.len() as u64 - 1, later(), &[7]);
        let err = f
            .client
            .write(tokio_stream::iter(pieces(ID, &small, &data)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("allows at most"), "{err:?}");
        let mut empty = false;
        for _ in 0..3000 {
            empty =
                chunk_dir_is_empty(&f) && f.metrics.active_transfers.load(Ordering::Relaxed) == 0;
            if empty {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(empty, "a refused write left a file");
        let rt = f.secret.sign_chunk(Op::Read, ID, 0, later(), &[7]);
        assert_eq!(
            read_all(&mut f, ID, &rt).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert_eq!(f.metrics.writes_total.load(Ordering::Relaxed), 0);

        // Exactly the allowance is fine.
        let exact = f
            .secret
            .sign_chunk(Op::Write, ID, data.len() as u64, later(), &[7]);
        f.client
            .write(tokio_stream::iter(pieces(ID, &exact, &data)))
            .await
            .unwrap();
        assert_eq!(read_all(&mut f, ID, &rt).await.unwrap(), data);
    }

    #[tokio::test]
    async fn nothing_is_served_before_registration_gives_a_key() {
        let mut f = start(u64::MAX).await;
        f.key.clear();
        let wt = f.secret.sign_chunk(Op::Write, ID, MAX, later(), &[7]);
        let err = f
            .client
            .write(tokio_stream::iter(pieces(ID, &wt, b"abc")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(err.message().contains("not registered"), "{err:?}");
        let rt = f.secret.sign_chunk(Op::Read, ID, 0, later(), &[7]);
        let err = read_all(&mut f, ID, &rt).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(chunk_dir_is_empty(&f));
        f.key.set(f.secret.chunk_server_key(7));
        f.client
            .write(tokio_stream::iter(pieces(ID, &wt, b"abc")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn full_server_answers_resource_exhausted() {
        let mut f = start(1000).await;
        let wt = f.secret.sign_chunk(Op::Write, ID, MAX, later(), &[7]);
        let err = f
            .client
            .write(tokio_stream::iter(pieces(ID, &wt, &vec![0u8; 5000])))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::ResourceExhausted,
            "{}",
            err.message()
        );
    }

    /// A TCP proxy to `target` that cuts every connection when `cut` fires.
    async fn cutting_proxy(
        target: std::net::SocketAddr,
    ) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = cut_rx.clone();
                tokio::spawn(async move {
                    let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        (addr, cut_tx)
    }

    #[tokio::test]
    async fn broken_write_stream_leaves_nothing() {
        let mut f = start(u64::MAX).await;
        let (proxy, cut) = cutting_proxy(f.addr).await;
        let mut client = ChunkClient::connect(format!("http://{proxy}"))
            .await
            .unwrap()
            .max_encoding_message_size(MAX_MESSAGE);
        let wt = f.secret.sign_chunk(Op::Write, ID, MAX, later(), &[7]);
        let (tx, rx) = mpsc::channel::<WriteChunkRequest>(4);
        let call = tokio::spawn(async move {
            client
                .write(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        for m in pieces(ID, &wt, &vec![5u8; 2 * STREAM_PIECE]) {
            tx.send(m).await.unwrap();
        }
        let dir = f.dir.path().join("chunks/0a");
        for _ in 0..200 {
            if f.metrics.active_transfers.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The network breaks mid-transfer (the stream never ended cleanly).
        cut.send(true).unwrap();
        assert!(call.await.unwrap().is_err());
        let mut empty = false;
        for _ in 0..300 {
            empty = dir.read_dir().unwrap().next().is_none()
                && f.metrics.active_transfers.load(Ordering::Relaxed) == 0;
            if empty {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(empty, "temp or chunk file left behind");
        drop(tx);
        let rt = f.secret.sign_chunk(Op::Read, ID, 0, later(), &[7]);
        assert_eq!(
            read_all(&mut f, ID, &rt).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}
