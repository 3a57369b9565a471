//! put, get and cat: file bytes go straight between dfsctl and the chunk servers.
//!
//! put: the leader allocates chunk ids and targets; each chunk (at most `IN_FLIGHT` at once, so
//! memory stays bounded by a few chunks) is sent to all its replicas in parallel; a chunk server
//! answers only once the chunk is fsynced. Then one commit makes the file visible.
//! Crash points: before the commit nothing is visible (the chunks are orphans, collected later);
//! after the commit the file is whole. "ok" is printed only after the commit.
//!
//! get: chunks are fetched in parallel (bounded), each checked against its CRC32C before use,
//! another replica tried on error; bytes are written in order to a temp file beside the target,
//! the whole-file sha256 is checked, and only then is the temp file renamed into place.
use crate::client::{lazy_channel, MetaConn};
use crate::files::remote;
use crate::output::{print_json, status_line};
use crate::{rpc, Ctx};
use anyhow::{bail, Context};
use clap::Args;
use dfs_proto::bytes::BufMut;
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::*;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::transport::Channel;

/// Chunks being uploaded or downloaded at once.
const IN_FLIGHT: usize = 8;
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Local file, or `-` for stdin.
    pub local: String,
    /// Remote path.
    pub remote: String,
    /// Replace the remote file if it exists (atomically).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Copies of each chunk [default: the cluster's, 2]. 0 is refused (it is not "default").
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replication: Option<u32>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Remote path.
    pub remote: String,
    /// Local file (default: the remote file's name in the current directory), or `-` for stdout.
    pub local: Option<String>,
    /// Replace an existing local file without asking.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// gRPC channels to chunk servers, one per address.
#[derive(Default, Clone)]
pub struct ChunkPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChunkPool {
    fn client(&self, addr: &str) -> anyhow::Result<ChunkClient<Channel>> {
        let mut g = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let ch = match g.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = lazy_channel(addr)?;
                g.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(ChunkClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

fn progress(ctx: &Ctx, len: Option<u64>) -> indicatif::ProgressBar {
    // SAFETY: isatty only inspects a file descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    if ctx.quiet || ctx.json || !tty {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match len {
        Some(l) => indicatif::ProgressBar::new(l),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
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

async fn write_replica(
    pool: &ChunkPool,
    addr: &str,
    chunk_id: &str,
    token: &str,
    data: Bytes,
) -> anyhow::Result<WriteChunkReply> {
    let mut client = pool.client(addr)?;
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
    let stream = futures::stream::iter(std::iter::once(header).chain(pieces));
    Ok(client
        .write(stream)
        .await
        .map_err(|s| anyhow::anyhow!("{addr}: {}", status_line(&s)))?
        .into_inner())
}

/// Store one chunk on all its targets; it counts as stored when at least one replica has it.
async fn upload_chunk(
    pool: ChunkPool,
    alloc: AllocatedChunk,
    data: Vec<u8>,
) -> anyhow::Result<ChunkInfo> {
    let crc = crc32c::crc32c(&data);
    let size = data.len() as u64;
    let data = Bytes::from(data);
    let writes = alloc.targets.iter().map(|t| {
        let (pool, data) = (pool.clone(), data.clone());
        let (id, token) = (alloc.chunk_id.clone(), alloc.token.clone());
        let (addr, node) = (t.addr.clone(), t.node_id);
        async move { (node, write_replica(&pool, &addr, &id, &token, data).await) }
    });
    let mut replicas = Vec::new();
    let mut errors = Vec::new();
    for (node, r) in futures::future::join_all(writes).await {
        match r {
            Ok(rep) if rep.crc32c == crc && rep.size == size => replicas.push(node),
            Ok(rep) => errors.push(format!(
                "server {node} stored {} bytes with crc {:08x}, expected {size} / {crc:08x}",
                rep.size, rep.crc32c
            )),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if replicas.is_empty() {
        bail!(
            "chunk {} could not be stored on any of its servers: {}",
            alloc.chunk_id,
            errors.join("; ")
        );
    }
    Ok(ChunkInfo {
        chunk_id: alloc.chunk_id,
        size,
        crc32c: crc,
        replicas,
        replica_addrs: vec![],
        token: alloc.token,
    })
}

/// A chunk upload running as its own task, so it makes progress while the input is read
/// (a slow pipe must not stall the chunks already read). Dropping it (the put failed or was
/// abandoned) stops the upload.
struct UploadTask(tokio::task::JoinHandle<anyhow::Result<ChunkInfo>>);

impl std::future::Future for UploadTask {
    type Output = anyhow::Result<ChunkInfo>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|e| Err(anyhow::anyhow!("chunk upload task failed: {e}"))))
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

/// Store everything `source` yields at `path`. Used by `put` and by the benchmarks.
#[allow(clippy::too_many_arguments)] // each argument is a different, plain input
pub async fn put_stream(
    conn: &MetaConn,
    pool: &ChunkPool,
    mut source: impl ChunkSource,
    size_hint: Option<u64>,
    path: &str,
    force: bool,
    replication: u32,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<PutOutcome> {
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
        }
    )?;
    let chunk_size = first.chunk_size.max(1);
    let mut allocated: VecDeque<AllocatedChunk> = first.chunks.into();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut uploads = futures::stream::FuturesOrdered::new();
    let mut done: Vec<ChunkInfo> = Vec::new();
    loop {
        let data = source
            .next_chunk(chunk_size as usize)
            .await
            .context("cannot read the input")?;
        if data.is_empty() {
            break;
        }
        hasher.update(&data);
        total += data.len() as u64;
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
                    }
                )?;
                allocated.extend(more.chunks);
                allocated
                    .pop_front()
                    .context("the leader allocated no chunk")?
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
                done.push(r?);
            }
        }
        pb.inc(len);
        if last {
            break;
        }
    }
    while let Some(r) = uploads.next().await {
        done.push(r?);
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
        request_id: crate::client::new_request_id(),
    };
    let file = rpc!(conn, commit_file, commit)?;
    Ok(PutOutcome { file, bytes: total })
}

pub async fn put(ctx: &Ctx, a: PutArgs) -> anyhow::Result<i32> {
    let conn = ctx.client()?;
    let pool = ChunkPool::default();
    let path = if a.remote.ends_with('/') {
        let name = Path::new(&a.local)
            .file_name()
            .and_then(|n| n.to_str())
            .context("give a remote file name for stdin")?;
        remote(&format!("{}{name}", a.remote))
    } else {
        remote(&a.remote)
    };
    let replication = a.replication.unwrap_or(0);
    let started = Instant::now();
    let out = if a.local == "-" {
        let pb = progress(ctx, None);
        let r = put_stream(
            &conn,
            &pool,
            ReaderSource(tokio::io::stdin()),
            None,
            &path,
            a.force,
            replication,
            &pb,
        )
        .await;
        pb.finish_and_clear();
        r?
    } else {
        let f =
            std::fs::File::open(&a.local).with_context(|| format!("cannot open {}", a.local))?;
        let len = f.metadata()?.len();
        let pb = progress(ctx, Some(len));
        let r = put_stream(
            &conn,
            &pool,
            FileSource::new(f),
            Some(len),
            &path,
            a.force,
            replication,
            &pb,
        )
        .await;
        pb.finish_and_clear();
        r?
    };
    let secs = started.elapsed().as_secs_f64();
    let full = crate::output::fully_replicated(&out.file);
    if ctx.json {
        print_json(
            &json!({"ok": true, "path": out.file.path, "size": out.bytes, "sha256": out.file.sha256, "chunks": out.file.chunks.len(), "fully_replicated": full, "seconds": secs}),
        );
    } else if !ctx.quiet {
        eprintln!(
            "stored {} ({} bytes, {} chunk(s)) in {:.2} s{}",
            out.file.path,
            out.bytes,
            out.file.chunks.len(),
            secs,
            if full {
                String::new()
            } else {
                format!(
                    "; UNDER-REPLICATED: fewer live chunk servers with room than replication {}",
                    out.file.replication
                )
            }
        );
    }
    Ok(0)
}

/// A get found its file removed or replaced under it: the chunks it was reading belong to no
/// file any more and are being deleted. Not a damaged replica, so none is reported.
#[derive(Debug, thiserror::Error)]
#[error("{path} was removed or replaced while it was being read; read it again")]
pub struct ChangedWhileReading {
    pub path: String,
}

/// A replica answered that it does not store the chunk (the status line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotStored(String);

fn read_error(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::NotFound => NotStored(status_line(&s)).into(),
        _ => anyhow::anyhow!("{}", status_line(&s)),
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

/// Fetch one chunk whole, verified against its CRC32C, trying each replica in turn. The
/// chunk comes back as the pieces the server sent: no copy into one buffer.
async fn fetch_chunk(
    conn: &MetaConn,
    pool: &ChunkPool,
    path: &str,
    index: usize,
    ch: &ChunkInfo,
    token: &str,
) -> anyhow::Result<Vec<Bytes>> {
    if ch.replicas.is_empty() {
        bail!("chunk {} of {path} has no replica (imported metadata whose bytes were never stored here)", index + 1);
    }
    let mut errors = Vec::new();
    for (node, addr) in ch.replicas.iter().zip(&ch.replica_addrs) {
        let attempt = async {
            let mut client = pool.client(addr)?;
            let mut stream = client
                .read(ReadChunkRequest {
                    chunk_id: ch.chunk_id.clone(),
                    token: token.to_string(),
                })
                .await
                .map_err(read_error)?
                .into_inner();
            let mut pieces = Vec::new();
            let (mut len, mut crc) = (0u64, 0u32);
            while let Some(piece) = stream.message().await.map_err(read_error)? {
                len += piece.data.len() as u64;
                if len > ch.size {
                    bail!("server sent more than the chunk's {} bytes", ch.size);
                }
                crc = crc32c::crc32c_append(crc, &piece.data);
                pieces.push(piece.data);
            }
            if len != ch.size {
                bail!("server sent {len} bytes, the chunk has {}", ch.size);
            }
            if crc != ch.crc32c {
                bail!(
                    "checksum mismatch: got {crc:08x}, expected {:08x}",
                    ch.crc32c
                );
            }
            Ok(pieces)
        };
        match attempt.await {
            Ok(b) => return Ok(b),
            Err(e) => {
                // A replica without the chunk: the file may have been removed or replaced
                // since it was opened (its chunks are deleted once that is committed).
                if e.is::<NotStored>() && !still_holds(conn, path, &ch.chunk_id).await {
                    return Err(ChangedWhileReading {
                        path: path.to_string(),
                    }
                    .into());
                }
                let reason = format!("{e:#}");
                let report = BadReplicaReport {
                    chunk_id: ch.chunk_id.clone(),
                    node_id: *node,
                    reason: reason.clone(),
                };
                let _ = rpc!(conn, report_bad_replica, report);
                errors.push(format!("server {node} ({addr}): {reason}"));
            }
        }
    }
    bail!(
        "chunk {} of {path} could not be read from any replica: {}",
        index + 1,
        errors.join("; ")
    )
}

/// Write the file's bytes, in order, to `out`; returns the sha256 of what was written.
pub async fn get_stream<W: Write>(
    conn: &MetaConn,
    pool: &ChunkPool,
    reply: &OpenReadReply,
    out: &mut W,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let file = reply.file.as_ref().context("the leader returned no file")?;
    if reply.tokens.len() != file.chunks.len() {
        bail!(
            "the leader returned {} read tokens for {} chunks",
            reply.tokens.len(),
            file.chunks.len()
        );
    }
    let path = file.path.clone();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    // Collected first: a stream holding the closure trips Send inference in spawned tasks.
    let pending: Vec<_> = file
        .chunks
        .iter()
        .zip(&reply.tokens)
        .enumerate()
        .map(|(i, (ch, tok))| fetch_chunk(conn, pool, &path, i, ch, tok))
        .collect();
    let mut fetches = futures::stream::iter(pending).buffered(IN_FLIGHT);
    while let Some(chunk) = fetches.next().await {
        for piece in chunk? {
            hasher.update(&piece);
            out.write_all(&piece)?;
            total += piece.len() as u64;
            pb.inc(piece.len() as u64);
        }
    }
    if total != file.size {
        bail!("{path}: read {total} bytes, the file has {}", file.size);
    }
    let sum = hex::encode(hasher.finalize());
    if !file.sha256.is_empty() && sum != file.sha256 {
        bail!(
            "{path}: sha256 of the bytes read is {sum}, the file's is {}; nothing was written",
            file.sha256
        );
    }
    Ok(total)
}

fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
}

fn temp_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("download");
    target.with_file_name(format!(".{name}.dfs-part-{}", std::process::id()))
}

pub async fn get(ctx: &Ctx, a: GetArgs) -> anyhow::Result<i32> {
    let conn = ctx.client()?;
    let pool = ChunkPool::default();
    let path = remote(&a.remote);
    let reply = rpc!(
        conn,
        open_read,
        StatRequest {
            path: path.clone(),
            stale: false
        }
    )?;
    let size = reply.file.as_ref().map(|f| f.size).unwrap_or(0);
    let local = a
        .local
        .clone()
        .unwrap_or_else(|| dfs_common::path::file_name(&path).to_string());
    let started = Instant::now();
    if local == "-" {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        get_stream(
            &conn,
            &pool,
            &reply,
            &mut out,
            &indicatif::ProgressBar::hidden(),
        )
        .await?;
        out.flush()?;
        return Ok(0);
    }
    let target = PathBuf::from(&local);
    if target.is_dir() {
        bail!("{} is a directory; give a file name", target.display());
    }
    if target.exists() && !a.force {
        // SAFETY: isatty only inspects file descriptors.
        let tty = unsafe { libc::isatty(0) == 1 && libc::isatty(2) == 1 };
        if !tty || !ask(&format!("{} exists. Replace it?", target.display())) {
            bail!(
                "{} exists; not replacing it (use -f to replace)",
                target.display()
            );
        }
    }
    let tmp = temp_beside(&target);
    let result = async {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let pb = progress(ctx, Some(size));
        let r = get_stream(&conn, &pool, &reply, &mut w, &pb).await;
        pb.finish_and_clear();
        let n = r?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        Ok::<u64, anyhow::Error>(n)
    }
    .await;
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        print_json(&json!({"ok": true, "path": path, "local": target, "size": n, "seconds": secs}));
    } else if !ctx.quiet {
        eprintln!(
            "fetched {path} to {} ({n} bytes) in {secs:.2} s",
            target.display()
        );
    }
    Ok(0)
}

pub async fn cat(ctx: &Ctx, path: &str) -> anyhow::Result<i32> {
    get(
        ctx,
        GetArgs {
            remote: path.to_string(),
            local: Some("-".into()),
            force: true,
        },
    )
    .await
}
