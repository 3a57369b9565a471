//! put and get streams: file bytes go straight between the client and the chunk servers.
//!
//! put: the leader allocates chunk ids and targets; each chunk (at most `IN_FLIGHT` at once, so
//! memory stays bounded by a few chunks) is sent to all its replicas in parallel; a chunk server
//! answers only once the chunk is fsynced. Then one commit makes the file visible.
//! Crash points: before the commit nothing is visible (the chunks are orphans, collected later);
//! after the commit the file is whole; success is returned only after the commit.
//!
//! get: chunks are fetched in parallel (bounded), each checked against its CRC32C before use,
//! another replica tried on error; bytes are written in order to the caller's writer and the
//! whole-file sha256 is checked at the end (the caller keeps the output only when it passes).
use crate::error::{status_line, Error, Result};
use crate::meta::{lazy_channel, new_request_id, MetaConn, CONNECT_TIMEOUT};
use crate::{rpc, Progress};
use dfs_proto::bytes::BufMut;
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::*;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::transport::Channel;

/// Chunks being uploaded or downloaded at once.
const IN_FLIGHT: usize = 8;
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// gRPC channels to chunk servers, one per address, and how long a transfer through them may
/// make no progress before the replica is given up.
#[derive(Clone)]
pub struct ChunkPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    stall: Duration,
    /// TLS to chunk servers (`None`: plain TCP); a `Client` gives its pool its connection's.
    tls: Option<Arc<dfs_common::tls::Tls>>,
}

impl Default for ChunkPool {
    fn default() -> Self {
        Self::with_stall_timeout(dfs_common::stall::DEFAULT_STALL_TIMEOUT)
    }
}

impl ChunkPool {
    /// A pool whose transfers give a replica up after `stall` without progress, with the
    /// environment's TLS (as `MetaConn::connect`; a bad DFS_TLS_CA fails the metadata
    /// connection with its reason, here it is plain TCP).
    pub fn with_stall_timeout(stall: Duration) -> Self {
        Self::new(stall, crate::meta::tls_from_env().ok().flatten().as_ref())
    }

    /// A pool with the given stall timeout and TLS (a connection's: `conn.tls()`).
    pub fn new(stall: Duration, tls: Option<&Arc<dfs_common::tls::Tls>>) -> Self {
        Self {
            channels: Default::default(),
            stall,
            tls: tls.cloned(),
        }
    }

    fn client(&self, addr: &str) -> Result<ChunkClient<Channel>> {
        let mut g = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let ch = match g.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = lazy_channel(addr, self.tls.as_ref(), dfs_common::pki::Role::Chunk)?;
                g.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(ChunkClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// Where a put's bytes come from, a chunk at a time.
pub trait ChunkSource {
    /// Up to `n` bytes (less only at the end of the input).
    fn next_chunk(
        &mut self,
        n: usize,
    ) -> impl std::future::Future<Output = std::io::Result<Vec<u8>>> + Send;
}

/// Any async reader (stdin, a generated stream).
pub struct ReaderSource<R>(pub R);

impl<R: AsyncRead + Unpin + Send> ChunkSource for ReaderSource<R> {
    async fn next_chunk(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        // Fill the spare capacity only: `read_to_end` would grow (copy) a full buffer to look
        // for the end of input.
        let mut buf = Vec::with_capacity(n);
        while buf.len() < n {
            let left = n - buf.len();
            if self.0.read_buf(&mut (&mut buf).limit(left)).await? == 0 {
                break;
            }
        }
        Ok(buf)
    }
}

/// A local file, read by a blocking thread straight into each chunk's buffer: one copy from
/// the page cache, where an async file adds a copy through its own buffer.
pub struct FileSource(Option<std::fs::File>);

impl FileSource {
    pub fn new(file: std::fs::File) -> Self {
        Self(Some(file))
    }
}

impl ChunkSource for FileSource {
    async fn next_chunk(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let Some(file) = self.0.take() else {
            return Err(std::io::Error::other("an earlier read of this file failed"));
        };
        let (file, read) = tokio::task::spawn_blocking(move || {
            // `read_to_end` fills the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(n);
            let read = (&file).take(n as u64).read_to_end(&mut buf).map(|_| buf);
            (file, read)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.0 = Some(file);
        read
    }
}

/// Why one replica write failed, and whether the server stalled (made no progress) rather
/// than refused or dropped the call.
struct WriteFailure {
    error: Error,
    stalled: bool,
}

async fn write_replica(
    pool: &ChunkPool,
    addr: &str,
    chunk_id: &str,
    token: &str,
    data: Bytes,
) -> std::result::Result<WriteChunkReply, WriteFailure> {
    let failed = |error| WriteFailure {
        error,
        stalled: false,
    };
    let mut client = pool.client(addr).map_err(failed)?;
    let header = WriteChunkRequest {
        chunk_id: chunk_id.to_string(),
        token: token.to_string(),
        data: Bytes::new(),
    };
    let pieces = (0..data.len())
        .step_by(dfs_common::STREAM_PIECE)
        .map(move |off| {
            let end = (off + dfs_common::STREAM_PIECE).min(data.len());
            WriteChunkRequest {
                chunk_id: String::new(),
                token: String::new(),
                data: data.slice(off..end),
            }
        });
    // A frozen server stops taking pieces (flow control) or never replies: the stall guard
    // gives the replica up after no progress for the stall timeout instead of waiting forever.
    let progress = dfs_common::stall::Progress::default();
    let mark = progress.clone();
    let stream =
        futures::stream::iter(std::iter::once(header).chain(pieces)).inspect(move |_| mark.mark());
    let stall = pool.stall;
    let started = Instant::now();
    let reply = dfs_common::stall::guard(&progress, stall, client.write(stream))
        .await
        .map_err(|idle| WriteFailure {
            error: Error::Unavailable(format!(
                "{addr}: chunk server made no progress for {:.1} s, replica given up",
                idle.as_secs_f64()
            )),
            stalled: true,
        })?;
    reply.map(|r| r.into_inner()).map_err(|s| WriteFailure {
        error: Error::Unavailable(format!("{addr}: {}", status_line(&s))),
        // A server that does not even complete the connection handshake within the connect
        // timeout (a frozen process: the kernel still accepts) stalled too; one that refused,
        // reset or answered with an error did not.
        stalled: unresponsive(&s, started.elapsed()),
    })
}

/// Whether a failed call means the server did not answer at all: a transport failure that took
/// at least the connect timeout.
fn unresponsive(s: &tonic::Status, took: Duration) -> bool {
    use tonic::Code::*;
    matches!(
        s.code(),
        Unavailable | Unknown | Cancelled | DeadlineExceeded
    ) && took >= CONNECT_TIMEOUT.mul_f32(0.9)
}

/// A chunk stored on some of its targets: what the commit names, and what a replacement needs
/// for the targets that did not take it.
pub(crate) struct Uploaded {
    info: ChunkInfo,
    data: Bytes,
    /// Every server tried (none is asked again).
    tried: Vec<u64>,
    /// Targets that failed, and whether each stalled.
    lost: Vec<(u64, bool)>,
}

/// A replica that stored a chunk whole: its server, address and signed receipt.
struct StoredReplica {
    node_id: u64,
    addr: String,
    receipt: String,
}

/// Write `data` (whose CRC32C is `crc`) to `targets` at once; the ones that stored it whole,
/// with their addresses and receipts, and the ones that did not (whether each stalled), with
/// the errors.
async fn write_replicas(
    pool: &ChunkPool,
    targets: &[ChunkTarget],
    chunk_id: &str,
    token: &str,
    (data, crc): (&Bytes, u32),
) -> (Vec<StoredReplica>, Vec<(u64, bool)>, Vec<String>) {
    let size = data.len() as u64;
    let writes = targets.iter().map(|t| async move {
        let r = write_replica(pool, &t.addr, chunk_id, token, data.clone()).await;
        (t, r)
    });
    let (mut stored, mut lost, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (t, r) in futures::future::join_all(writes).await {
        match r {
            Ok(rep) if rep.crc32c == crc && rep.size == size => stored.push(StoredReplica {
                node_id: t.node_id,
                addr: t.addr.clone(),
                receipt: rep.receipt,
            }),
            Ok(rep) => {
                lost.push((t.node_id, false));
                errors.push(format!(
                    "server {} stored {} bytes with crc {:08x}, expected {size} / {crc:08x}",
                    t.node_id, rep.size, rep.crc32c
                ));
            }
            Err(e) => {
                lost.push((t.node_id, e.stalled));
                errors.push(format!("{:#}", e.error));
            }
        }
    }
    (stored, lost, errors)
}

/// Store one chunk on all its targets; it counts as stored when at least one replica has it
/// (the replicas that have it are named, with their addresses, to read it back). Targets that
/// failed are in `lost`, for [`replace_lost`].
pub(crate) async fn upload_chunk(
    pool: ChunkPool,
    alloc: AllocatedChunk,
    data: Vec<u8>,
) -> Result<Uploaded> {
    let data = Bytes::from(data);
    let crc = crc32c::crc32c(&data);
    let (stored, lost, errors) = write_replicas(
        &pool,
        &alloc.targets,
        &alloc.chunk_id,
        &alloc.token,
        (&data, crc),
    )
    .await;
    if stored.is_empty() {
        return Err(Error::Unavailable(format!(
            "chunk {} could not be stored on any of its servers: {}",
            alloc.chunk_id,
            errors.join("; ")
        )));
    }
    if !errors.is_empty() {
        tracing::warn!(chunk = %alloc.chunk_id, "replicas lost: {}", errors.join("; "));
    }
    // The commit names these replicas with their receipts (the leader checks each).
    let mut info = ChunkInfo {
        chunk_id: alloc.chunk_id,
        size: data.len() as u64,
        crc32c: crc,
        token: alloc.token,
        ..Default::default()
    };
    for r in stored {
        info.replicas.push(r.node_id);
        info.replica_addrs.push(r.addr);
        info.receipts.push(r.receipt);
    }
    Ok(Uploaded {
        info,
        data,
        tried: alloc.targets.iter().map(|t| t.node_id).collect(),
        lost,
    })
}

/// Store `data` as the allocated chunk: written to all its targets at once, with failed or
/// stalled targets replaced (see [`replace_lost`]); stored when at least one replica has it.
/// Not part of any file until a commit names it.
pub async fn store_chunk(
    conn: &MetaConn,
    pool: &ChunkPool,
    alloc: AllocatedChunk,
    data: Vec<u8>,
) -> Result<ChunkInfo> {
    let up = upload_chunk(pool.clone(), alloc, data).await?;
    Ok(replace_lost(conn, pool, up).await)
}

/// Give a chunk new targets in place of the ones that failed (the leader is told which stalled
/// and places nothing on them for a while), and write the whole chunk there; each new replica
/// counts only when the server reports the chunk's size and CRC32C. One round: when the leader
/// has no other server, or a new target fails too, the chunk keeps the replicas it has (it is
/// under-replicated until the healer copies it).
pub(crate) async fn replace_lost(conn: &MetaConn, pool: &ChunkPool, up: Uploaded) -> ChunkInfo {
    let Uploaded {
        mut info,
        data,
        tried,
        lost,
    } = up;
    if lost.is_empty() {
        return info;
    }
    let req = AllocateRequest {
        count: lost.len() as u32,
        bytes_left: data.len().max(1) as u64,
        exclude: tried,
        replace_chunk: info.chunk_id.clone(),
        replace_token: info.token.clone(),
        stalled: lost.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect(),
        ..Default::default()
    };
    let alloc = match rpc!(conn, allocate_chunks, req) {
        Ok(r) => r.chunks.into_iter().next(),
        Err(e) => {
            tracing::warn!(chunk = %info.chunk_id, "no replacement target: {e}");
            None
        }
    };
    let Some(alloc) = alloc.filter(|a| a.chunk_id == info.chunk_id) else {
        return info;
    };
    let (stored, _, errors) = write_replicas(
        pool,
        &alloc.targets,
        &alloc.chunk_id,
        &alloc.token,
        (&data, info.crc32c),
    )
    .await;
    if !errors.is_empty() {
        tracing::warn!(chunk = %info.chunk_id, "replacement replicas lost: {}", errors.join("; "));
    }
    for r in stored {
        info.replicas.push(r.node_id);
        info.replica_addrs.push(r.addr);
        info.receipts.push(r.receipt);
    }
    // The replacement token names the first targets too, with the same expiry: the one token
    // reads the chunk back from any replica and proves the allocation at commit.
    info.token = alloc.token;
    info
}

/// A chunk upload running as its own task, so it makes progress while the input is read
/// (a slow pipe must not stall the chunks already read). Dropping it (the put failed or was
/// abandoned) stops the upload.
struct UploadTask(tokio::task::JoinHandle<Result<Uploaded>>);

impl std::future::Future for UploadTask {
    type Output = Result<Uploaded>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.unwrap_or_else(|e| Err(Error::other(format!("chunk upload task failed: {e}"))))
        })
    }
}

impl Drop for UploadTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct PutOutcome {
    pub file: FileInfo,
    pub bytes: u64,
}

/// How a put stores its file.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Replace the file if it exists (atomically, at commit).
    pub overwrite: bool,
    /// Copies of each chunk; 0 means the cluster's default.
    pub replication: u32,
    /// The input's size when known (lets the leader place all chunks at once).
    pub size_hint: Option<u64>,
}

/// Store everything `source` yields at `path`. Used by `put`, the benchmarks and the mount.
/// Crash points: nothing is visible before the commit (uploaded chunks are orphans, collected
/// later); after the commit the file is whole. Progress gets each chunk's bytes once stored
/// (or, with chunks in flight, once handed to the upload).
pub async fn put_stream(
    conn: &MetaConn,
    pool: &ChunkPool,
    mut source: impl ChunkSource,
    path: &str,
    opts: &PutOptions,
    progress: Progress<'_>,
) -> Result<PutOutcome> {
    let (force, replication, size_hint) = (opts.overwrite, opts.replication, opts.size_hint);
    let first = rpc!(
        conn,
        allocate_chunks,
        AllocateRequest {
            path: path.to_string(),
            replication,
            count: 1,
            overwrite: force,
            // 0 means "unknown": an empty file asks for room for 1 byte.
            bytes_left: size_hint.map_or(0, |s| s.max(1)),
            ..Default::default()
        }
    )?;
    let chunk_size = first.chunk_size.max(1);
    let too_big = |chunks: u64| {
        Error::InvalidName(format!(
            "{path}: a file has at most {} chunks ({} GiB with this cluster's {} MiB chunks), and this one needs {chunks} or more; store it in parts",
            dfs_common::MAX_FILE_CHUNKS,
            (dfs_common::MAX_FILE_CHUNKS as u64 * chunk_size) >> 30,
            chunk_size >> 20
        ))
    };
    if let Some(size) = size_hint {
        if size.div_ceil(chunk_size) > dfs_common::MAX_FILE_CHUNKS as u64 {
            return Err(too_big(size.div_ceil(chunk_size)));
        }
    }
    // A put that outlives its tokens' commit window keeps its chunks under a lease.
    let lease = crate::lease::WriteLease::start(conn, path, &first);
    // Chunks allocated ahead are used only while their tokens are young: a slow input (a
    // pipe fed for hours) gets fresh ones (the unused ids were never written).
    let fresh_for = match first.lease_after_ms {
        0 => Duration::MAX,
        ms => Duration::from_millis(ms / 2),
    };
    let mut allocated_at = Instant::now();
    let mut allocated: VecDeque<AllocatedChunk> = first.chunks.into();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut uploads = futures::stream::FuturesOrdered::new();
    let mut done: Vec<ChunkInfo> = Vec::new();
    loop {
        let data = source.next_chunk(chunk_size as usize).await.map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot read the input: {e}"),
            ))
        })?;
        if data.is_empty() {
            break;
        }
        // A stream of unknown size stops at the limit, before storing more than can commit.
        if total.div_ceil(chunk_size) >= dfs_common::MAX_FILE_CHUNKS as u64 {
            return Err(too_big(total.div_ceil(chunk_size) + 1));
        }
        hasher.update(&data);
        total += data.len() as u64;
        if allocated_at.elapsed() > fresh_for {
            allocated.clear();
        }
        let alloc = match allocated.pop_front() {
            Some(a) => a,
            None => {
                // Including this chunk's bytes; at least 1 (0 would mean "unknown").
                let bytes_left =
                    size_hint.map(|s| s.saturating_sub(total - data.len() as u64).max(1));
                let count = bytes_left
                    .map_or(4, |b| b.div_ceil(chunk_size))
                    .clamp(1, 16) as u32;
                let more = rpc!(
                    conn,
                    allocate_chunks,
                    AllocateRequest {
                        path: path.to_string(),
                        replication,
                        count,
                        overwrite: force,
                        bytes_left: bytes_left.unwrap_or(0),
                        ..Default::default()
                    }
                )?;
                lease.add(&more.chunks, crate::lease::LeaseTiming::of(&more));
                allocated_at = Instant::now();
                allocated.extend(more.chunks);
                allocated
                    .pop_front()
                    .ok_or_else(|| Error::other("the leader allocated no chunk"))?
            }
        };
        let last = data.len() < chunk_size as usize;
        let len = data.len() as u64;
        uploads.push_back(UploadTask(tokio::spawn(upload_chunk(
            pool.clone(),
            alloc,
            data,
        ))));
        while uploads.len() >= IN_FLIGHT {
            if let Some(r) = uploads.next().await {
                done.push(replace_lost(conn, pool, r?).await);
            }
        }
        progress(len);
        if last {
            break;
        }
    }
    while let Some(r) = uploads.next().await {
        done.push(replace_lost(conn, pool, r?).await);
    }
    let commit = CommitRequest {
        path: path.to_string(),
        overwrite: force,
        replication,
        size: total,
        sha256: hex::encode(hasher.finalize()),
        chunk_size,
        chunks: done,
        // The same id on every retry of this commit (see CommitRequest.request_id).
        request_id: new_request_id(),
        mode: None,
        lease_id: lease.for_commit()?,
    };
    let file = rpc!(conn, commit_file, commit)?;
    lease.release().await;
    Ok(PutOutcome { file, bytes: total })
}

/// A replica answered that it does not store the chunk (the status line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotStored(String);

/// Why one replica could not give a chunk. Only `Corrupt` and `NotStored` say something about
/// the replica itself and are reported to the metadata service as bad; a server that cannot
/// be reached or answers with another error is tried no further and left to the liveness
/// rules (a restart must not look like lost data and start re-replication).
#[derive(Debug, thiserror::Error)]
enum ReplicaError {
    #[error(transparent)]
    NotStored(NotStored),
    /// The bytes are wrong: checksum mismatch (here or on the server), wrong length.
    #[error("{0}")]
    Corrupt(String),
    /// Not reached, or no answer about the bytes (down, restarting, overloaded, refused).
    #[error("{0}")]
    Unreachable(String),
    /// The read token was refused (expired, or not for this chunk): nothing about the replica.
    #[error("{0}")]
    TokenRefused(String),
}

impl ReplicaError {
    fn is_bad_replica(&self) -> bool {
        matches!(self, ReplicaError::NotStored(_) | ReplicaError::Corrupt(_))
    }
}

fn read_error(s: tonic::Status) -> ReplicaError {
    match s.code() {
        tonic::Code::NotFound => ReplicaError::NotStored(NotStored(status_line(&s))),
        tonic::Code::DataLoss => ReplicaError::Corrupt(status_line(&s)),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            ReplicaError::TokenRefused(status_line(&s))
        }
        _ => ReplicaError::Unreachable(status_line(&s)),
    }
}

/// Whether `path` is still the file that holds `chunk_id` (on any doubt, yes: the caller then
/// treats the replica as bad, as before).
async fn still_holds(conn: &MetaConn, path: &str, chunk_id: &str) -> bool {
    let stat = rpc!(
        conn,
        stat,
        StatRequest {
            path: path.to_string(),
            stale: false
        }
    );
    match stat {
        Ok(f) => f.chunks.iter().any(|c| c.chunk_id == chunk_id),
        Err(s) => s.code() != tonic::Code::NotFound,
    }
}

/// What to read of a chunk: all of it (checked here against the chunk's CRC32C), or a range
/// (the server checks the blocks it touches; its length is checked here).
#[derive(Debug, Clone, Copy)]
enum Span {
    Whole,
    Range { offset: u64, len: u64 },
}

/// Read `span` of a chunk from the replica at `addr`, verified as [`Span`] says. The bytes
/// come back as the pieces the server sent: no copy into one buffer.
async fn read_replica(
    pool: &ChunkPool,
    addr: &str,
    ch: &ChunkInfo,
    token: &str,
    span: Span,
) -> std::result::Result<Vec<Bytes>, ReplicaError> {
    let (offset, length, want) = match span {
        Span::Whole => (0, 0, ch.size),
        Span::Range { offset, len } => (offset, len, len),
    };
    let mut client = pool
        .client(addr)
        .map_err(|e| ReplicaError::Unreachable(e.to_string()))?;
    // A frozen server (its sockets open, nothing sent) is given up after the stall timeout
    // like a writer's, and the next replica is tried; it is not reported as bad.
    let progress = dfs_common::stall::Progress::default();
    let receive = async {
        let mut stream = client
            .read(ReadChunkRequest {
                chunk_id: ch.chunk_id.clone(),
                token: token.to_string(),
                offset,
                length,
            })
            .await
            .map_err(read_error)?
            .into_inner();
        let mut pieces = Vec::new();
        let (mut len, mut crc) = (0u64, 0u32);
        while let Some(piece) = stream.message().await.map_err(read_error)? {
            progress.mark();
            len += piece.data.len() as u64;
            if len > want {
                return Err(ReplicaError::Corrupt(format!(
                    "server sent more than the {want} bytes asked for"
                )));
            }
            if let Span::Whole = span {
                crc = crc32c::crc32c_append(crc, &piece.data);
            }
            pieces.push(piece.data);
        }
        Ok::<_, ReplicaError>((pieces, len, crc))
    };
    let (pieces, len, crc) = dfs_common::stall::guard(&progress, pool.stall, receive)
        .await
        .map_err(|idle| {
            ReplicaError::Unreachable(format!(
                "{addr}: chunk server made no progress for {:.1} s",
                idle.as_secs_f64()
            ))
        })??;
    if len != want {
        return Err(ReplicaError::Corrupt(format!(
            "server sent {len} bytes of {want} asked for"
        )));
    }
    if matches!(span, Span::Whole) && crc != ch.crc32c {
        return Err(ReplicaError::Corrupt(format!(
            "checksum mismatch: got {crc:08x}, expected {:08x}",
            ch.crc32c
        )));
    }
    Ok(pieces)
}

/// Read `span` of chunk `index` of `path`, trying each replica in turn. A replica whose bytes
/// are wrong or missing is reported as bad; one that cannot be reached is only skipped.
#[allow(clippy::too_many_arguments)] // each argument is a different, plain input
async fn read_replicas(
    conn: &MetaConn,
    pool: &ChunkPool,
    path: &str,
    index: usize,
    ch: &ChunkInfo,
    token: &str,
    span: Span,
) -> Result<Vec<Bytes>> {
    if ch.replicas.is_empty() {
        return Err(Error::DataError(format!("chunk {index} of {path} has no replica (imported metadata whose bytes were never stored here; chunks are numbered from 0)")));
    }
    let mut errors = Vec::new();
    let mut refused = 0;
    for (node, addr) in ch.replicas.iter().zip(&ch.replica_addrs) {
        match read_replica(pool, addr, ch, token, span).await {
            Ok(b) => return Ok(b),
            Err(e) => {
                refused += usize::from(matches!(e, ReplicaError::TokenRefused(_)));
                // A replica without the chunk: the file may have been removed or replaced
                // since it was opened (its chunks are deleted once that is committed).
                if matches!(e, ReplicaError::NotStored(_))
                    && !still_holds(conn, path, &ch.chunk_id).await
                {
                    return Err(Error::ChangedWhileReading {
                        path: path.to_string(),
                    });
                }
                let reason = e.to_string();
                if e.is_bad_replica() {
                    let report = BadReplicaReport {
                        chunk_id: ch.chunk_id.clone(),
                        node_id: *node,
                        reason: reason.clone(),
                    };
                    let _ = rpc!(conn, report_bad_replica, report);
                }
                errors.push(format!("server {node} ({addr}): {reason}"));
            }
        }
    }
    let msg = format!(
        "chunk {index} of {path} (numbered from 0) could not be read from any replica: {}",
        errors.join("; ")
    );
    // Every replica refused the token: the caller may renew the tokens and try again.
    Err(if refused == errors.len() {
        Error::Permission(msg)
    } else {
        Error::DataError(msg)
    })
}

/// Read `span` of chunk `index` of `file` with its read `token`. When every replica refused
/// the token (it expired while the read waited its turn at a busy server), once more with a
/// fresh one: same chunks, or `ChangedWhileReading`. Every reader of a file comes here.
async fn read_file_chunk(
    conn: &MetaConn,
    pool: &ChunkPool,
    file: &FileInfo,
    index: usize,
    token: &str,
    span: Span,
) -> Result<Vec<Bytes>> {
    let ch = &file.chunks[index];
    match read_replicas(conn, pool, &file.path, index, ch, token, span).await {
        Err(Error::Permission(_)) => {
            let fresh = fresh_tokens(conn, file).await?;
            read_replicas(
                conn,
                pool,
                &file.path,
                index,
                ch,
                &fresh.tokens[index],
                span,
            )
            .await
        }
        r => r,
    }
}

/// Fetch chunk `index` of `file` whole, verified against its CRC32C.
pub(crate) async fn fetch_chunk(
    conn: &MetaConn,
    pool: &ChunkPool,
    file: &FileInfo,
    index: usize,
    token: &str,
) -> Result<Vec<Bytes>> {
    read_file_chunk(conn, pool, file, index, token, Span::Whole).await
}

/// Fetch `len` bytes from `offset` of chunk `index` of `file` (the caller keeps the range
/// inside the chunk). The server reads and checks only the checksum blocks the range touches;
/// a range that is the whole chunk is fetched whole and checked against its CRC32C too.
pub(crate) async fn fetch_range(
    conn: &MetaConn,
    pool: &ChunkPool,
    file: &FileInfo,
    index: usize,
    token: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>> {
    let span = if offset == 0 && len >= file.chunks[index].size {
        Span::Whole
    } else if len == 0 {
        return Ok(Vec::new());
    } else {
        Span::Range { offset, len }
    };
    Ok(read_file_chunk(conn, pool, file, index, token, span)
        .await?
        .concat())
}

/// Read back a chunk stored (not committed) by this client, with its write token.
pub(crate) async fn fetch_stored(
    conn: &MetaConn,
    pool: &ChunkPool,
    path: &str,
    ch: &ChunkInfo,
) -> Result<Vec<u8>> {
    Ok(
        read_replicas(conn, pool, path, 0, ch, &ch.token, Span::Whole)
            .await?
            .concat(),
    )
}

/// Whether read tokens handed out at `received`, valid for `valid_ms` (0: the leader did not
/// say; then 15 min is assumed), are past three quarters of their life.
pub(crate) fn tokens_ageing(received: Instant, valid_ms: u64) -> bool {
    let valid = match valid_ms {
        0 => Duration::from_secs(15 * 60),
        ms => Duration::from_millis(ms),
    };
    received.elapsed() >= valid * 3 / 4
}

/// Fresh read tokens for `file` as it was opened. The reader keeps its version: if the path
/// now holds other chunks (replaced or removed), this is `ChangedWhileReading` instead of
/// a mix of two versions.
pub(crate) async fn fresh_tokens(conn: &MetaConn, file: &FileInfo) -> Result<OpenReadReply> {
    let changed = || Error::ChangedWhileReading {
        path: file.path.clone(),
    };
    let req = StatRequest {
        path: file.path.clone(),
        stale: false,
    };
    let fresh = match rpc!(conn, open_read, req) {
        Ok(f) => f,
        Err(s) if s.code() == tonic::Code::NotFound => return Err(changed()),
        Err(s) => return Err(s.into()),
    };
    let ids = |f: Option<&FileInfo>| -> Vec<String> {
        f.map(|f| f.chunks.iter().map(|c| c.chunk_id.clone()).collect())
            .unwrap_or_default()
    };
    if ids(fresh.file.as_ref()) != ids(Some(file)) || fresh.tokens.len() != file.chunks.len() {
        return Err(changed());
    }
    Ok(fresh)
}

/// Write the file's bytes, in order, to `out`; returns the sha256 of what was written.
pub async fn get_stream<W: Write>(
    conn: &MetaConn,
    pool: &ChunkPool,
    reply: &OpenReadReply,
    out: &mut W,
    progress: Progress<'_>,
) -> Result<u64> {
    let file = reply
        .file
        .as_ref()
        .ok_or_else(|| Error::other("the leader returned no file"))?;
    if reply.tokens.len() != file.chunks.len() {
        return Err(Error::other(format!(
            "the leader returned {} read tokens for {} chunks",
            reply.tokens.len(),
            file.chunks.len()
        )));
    }
    let path = file.path.clone();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    // Tokens are renewed before a fetch is started with ones near expiry, so a transfer may
    // outlive them (a reply received just now: its tokens are at least this young).
    let (mut tokens, mut valid_ms, mut received) =
        (reply.tokens.clone(), reply.tokens_valid_ms, Instant::now());
    let mut fetches = futures::stream::FuturesOrdered::new();
    let mut next = 0;
    loop {
        while fetches.len() < IN_FLIGHT && next < file.chunks.len() {
            if tokens_ageing(received, valid_ms) {
                let fresh = fresh_tokens(conn, file).await?;
                (tokens, valid_ms, received) =
                    (fresh.tokens, fresh.tokens_valid_ms, Instant::now());
            }
            let (i, tok) = (next, tokens[next].clone());
            fetches.push_back(async move { fetch_chunk(conn, pool, file, i, &tok).await });
            next += 1;
        }
        let Some(chunk) = fetches.next().await else {
            break;
        };
        for piece in chunk? {
            hasher.update(&piece);
            out.write_all(&piece)?;
            total += piece.len() as u64;
            progress(piece.len() as u64);
        }
    }
    if total != file.size {
        return Err(Error::DataError(format!(
            "{path}: read {total} bytes, the file has {}",
            file.size
        )));
    }
    let sum = hex::encode(hasher.finalize());
    if !file.sha256.is_empty() && sum != file.sha256 {
        return Err(Error::DataError(format!(
            "{path}: sha256 of the bytes read is {sum}, the file's is {}; nothing was written",
            file.sha256
        )));
    }
    Ok(total)
}
