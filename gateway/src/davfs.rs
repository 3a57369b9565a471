//! davfs: the dfs namespace behind dav-server's `DavFileSystem` trait, for one authenticated
//! user (one [`DfsFs`] per request, holding that user's [`Client`]).
//!
//! - Reads open the file's current version (`open_read`) and fetch only the ranges asked for
//!   (`read_at`); a sequential reader gets the next window fetched ahead, so a GET streams at
//!   chunk-server speed while holding at most two windows in memory.
//! - A PUT is streamed into chunks by `put_stream` (the same code `dfsctl put` uses) running
//!   on its own task, fed through a bounded channel: memory is a few chunks whatever the size,
//!   and nothing touches local disk.
//!
//! What must stay true:
//! - nothing of a PUT is visible before the whole body arrived: `put_stream` commits only when
//!   its source says "end", which `flush` sends only when the byte count matches the declared
//!   size; a body cut short, a dropped connection or a dropped file handle makes the source
//!   fail, so the commit never happens (the uploaded chunks are orphans the cluster collects)
//!   and the old version stays;
//! - every client error maps to one `FsError` (another user's path is NotFound, as in
//!   `dfsctl`), and nothing here panics on a peer's error;
//! - a delete goes to the user's trash (`Client::remove`), as every frontend's delete does.
use bytes::{Buf, Bytes};
use dav_server::davpath::DavPath;
use dav_server::fs::{
    DavDirEntry, DavFile, DavFileSystem, DavMetaData, FsError, FsFuture, FsResult, FsStream,
    OpenOptions, ReadDirMeta,
};
use dfs_client::{ChunkSource, Client, Error, PutOptions, ReadHandle};
use dfs_proto::{FileInfo, RenameMode};
use futures::FutureExt;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// What a sequential GET fetches per read (and one more ahead of it).
const READ_WINDOW: u64 = 8 << 20;
/// Body pieces a PUT may have queued for its upload task (each a few KiB to 1 MiB).
const PUT_QUEUE: usize = 64;

/// The map from client errors to WebDAV statuses (through dav-server's `FsError`).
pub fn fs_error(e: &Error) -> FsError {
    match e {
        // Another user's entry is invisible, as through dfsctl.
        Error::NotFound(_) | Error::Permission(_) | Error::ChangedWhileReading { .. } => {
            FsError::NotFound
        }
        Error::Exists(_) | Error::NotEmpty(_) => FsError::Exists,
        Error::NoSpace(_) => FsError::InsufficientStorage,
        Error::InvalidName(m) if m.contains("longer than") => FsError::PathTooLong,
        Error::InvalidName(_) | Error::NotADirectory(_) | Error::IsADirectory(_) => {
            FsError::Forbidden
        }
        Error::Unavailable(_)
        | Error::DataError(_)
        | Error::Io(_)
        | Error::Other(_)
        | Error::Tls(_) => FsError::GeneralFailure,
    }
}

tokio::task_local! {
    /// Set while a request is handled: whether a call failed because the cluster could not be
    /// reached (dav-server's errors have no 503; the gateway turns that request's 500 into one).
    pub static UNAVAILABLE: Arc<std::sync::atomic::AtomicBool>;
}

fn fail<T>(op: &str, path: &str, e: Error) -> FsResult<T> {
    // No live chunk server is a state of the cluster that passes (metasrv says so as a failed
    // precondition, so that `dfsctl put` fails at once): for HTTP it is 503, not 500.
    let unavailable = match &e {
        Error::Unavailable(_) => true,
        Error::Other(m) => m.contains("no chunk server is live"),
        _ => false,
    };
    if unavailable {
        let _ = UNAVAILABLE.try_with(|u| u.store(true, std::sync::atomic::Ordering::Relaxed));
    }
    let fe = fs_error(&e);
    if fe == FsError::GeneralFailure {
        tracing::warn!("{op} {path}: {e}");
    } else {
        tracing::debug!("{op} {path}: {e}");
    }
    Err(fe)
}

/// The dfs path of a request path (already decoded and `..`-resolved by dav-server; checked
/// again against the dfs rules here).
pub fn dfs_path(p: &DavPath) -> FsResult<String> {
    let raw = std::str::from_utf8(p.as_bytes()).map_err(|_| FsError::Forbidden)?;
    dfs_common::path::normalize(raw).map_err(|e| match e {
        dfs_common::path::PathError::TooLong | dfs_common::path::PathError::NameTooLong => {
            FsError::PathTooLong
        }
        _ => FsError::Forbidden,
    })
}

/// A path and what `stat` said of it (None: not there, or not this user's).
type Remembered = (String, Option<FileInfo>);

#[derive(Clone)]
pub struct DfsFs {
    pub client: Arc<Client>,
    /// Set for DELETE and MOVE requests, where dav-server lists a directory only to delete it
    /// entry by entry: then directories list as empty and `remove_dir` moves the whole tree to
    /// the trash in one step (atomic, one trash entry, one metadata write). Lock checks do not
    /// list the file system (they ask the lock system), so they are unchanged.
    pub whole_tree_deletes: bool,
    /// The last `metadata` answer of this request (path, entry or None for "not there"),
    /// taken (once) by the `open` for writing that dav-server makes right after it, so a PUT
    /// does not stat its path twice. Never reused past that one `open`.
    last_stat: Arc<std::sync::Mutex<Option<Remembered>>>,
}

impl DfsFs {
    pub fn new(client: Arc<Client>, whole_tree_deletes: bool) -> DfsFs {
        DfsFs {
            client,
            whole_tree_deletes,
            last_stat: Default::default(),
        }
    }

    fn remember(&self, p: &str, f: Option<FileInfo>) {
        *self.last_stat.lock().unwrap_or_else(|e| e.into_inner()) = Some((p.to_string(), f));
    }

    /// The entry at `p` (None: not there, or not this user's), from the remembered answer when
    /// it is about `p`.
    async fn stat_for_write(&self, p: &str) -> Result<Option<FileInfo>, Error> {
        let last = self
            .last_stat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((q, f)) = last {
            if q == p {
                return Ok(f);
            }
        }
        match self.client.stat(p).await {
            Ok(f) => Ok(Some(f)),
            Err(Error::NotFound(_)) | Err(Error::Permission(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Meta {
    size: u64,
    is_dir: bool,
    modified_ms: i64,
    created_ms: i64,
    sha256: String,
    ino: u64,
}

impl Meta {
    fn of(f: &FileInfo) -> Meta {
        Meta {
            size: f.size,
            is_dir: f.is_dir,
            modified_ms: f.modified_ms,
            created_ms: f.created_ms,
            sha256: f.sha256.clone(),
            ino: f.ino,
        }
    }
}

fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

impl DavMetaData for Meta {
    fn len(&self) -> u64 {
        self.size
    }
    fn modified(&self) -> FsResult<SystemTime> {
        Ok(time_of(self.modified_ms))
    }
    fn created(&self) -> FsResult<SystemTime> {
        Ok(time_of(self.created_ms))
    }
    fn is_dir(&self) -> bool {
        self.is_dir
    }
    /// A file's sha256 (its first 128 bits: WebDAV clients such as litmus cut long `If`
    /// headers short) when the cluster has it (every put records it); otherwise (and for
    /// directories) the inode, size and mtime, which change with every new version.
    fn etag(&self) -> Option<String> {
        if !self.is_dir && self.sha256.len() >= 32 {
            return Some(self.sha256[..32].to_string());
        }
        Some(format!(
            "{:x}-{:x}-{:x}",
            self.ino, self.size, self.modified_ms
        ))
    }
}

struct Entry {
    name: Vec<u8>,
    meta: Meta,
}

impl DavDirEntry for Entry {
    fn name(&self) -> Vec<u8> {
        self.name.clone()
    }
    fn metadata(&self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m = self.meta.clone();
        async move { Ok(Box::new(m) as Box<dyn DavMetaData>) }.boxed()
    }
}

impl DavFileSystem for DfsFs {
    fn open<'a>(
        &'a self,
        path: &'a DavPath,
        options: OpenOptions,
    ) -> FsFuture<'a, Box<dyn DavFile>> {
        async move {
            let p = dfs_path(path)?;
            if options.write {
                let existing = match self.stat_for_write(&p).await {
                    Ok(f) => f,
                    Err(e) => return fail("open", &p, e),
                };
                match &existing {
                    Some(f) if f.is_dir || f.is_symlink => return Err(FsError::Forbidden),
                    Some(_) if options.create_new => return Err(FsError::Exists),
                    None if !options.create => return Err(FsError::NotFound),
                    None => {
                        // WebDAV creates no parents (409 Conflict), unlike `dfsctl put`.
                        let parent = dfs_common::path::parent(&p).unwrap_or("/");
                        match self.client.stat(parent).await {
                            Ok(d) if d.is_dir => {}
                            Ok(_) => return Err(FsError::NotFound),
                            Err(e) => return fail("open", parent, e),
                        }
                    }
                    _ => {}
                }
                if existing.is_none() && !options.append && !options.truncate {
                    // LOCK of an unmapped URL: the resource is created empty at once.
                    if let Err(e) = self.client.create_empty(&p, 0o644).await {
                        return fail("create", &p, e);
                    }
                    return self.open(path, OpenOptions::default()).await;
                }
                if options.append || !options.truncate {
                    // Partial updates (Content-Range PUT, sabredav PATCH) would need a draft
                    // that keeps the old chunks; not offered.
                    return Err(FsError::NotImplemented);
                }
                Ok(Box::new(Writer::start(
                    self.client.clone(),
                    p,
                    options.size,
                    !options.create_new,
                )) as Box<dyn DavFile>)
            } else {
                let h = match self.client.open_read(&p).await {
                    Ok(h) => h,
                    Err(e) => return fail("open", &p, e),
                };
                let meta = Meta::of(h.file().ok_or(FsError::GeneralFailure)?);
                if meta.is_dir {
                    return Err(FsError::Forbidden);
                }
                Ok(Box::new(Reader {
                    client: self.client.clone(),
                    path: p,
                    handle: h,
                    meta,
                    pos: 0,
                    buf: Bytes::new(),
                    buf_at: 0,
                    ahead: None,
                }) as Box<dyn DavFile>)
            }
        }
        .boxed()
    }

    fn read_dir<'a>(
        &'a self,
        path: &'a DavPath,
        _meta: ReadDirMeta,
    ) -> FsFuture<'a, FsStream<Box<dyn DavDirEntry>>> {
        async move {
            let p = dfs_path(path)?;
            if self.whole_tree_deletes {
                let empty: Vec<FsResult<Box<dyn DavDirEntry>>> = Vec::new();
                return Ok(Box::pin(futures::stream::iter(empty)) as FsStream<Box<dyn DavDirEntry>>);
            }
            // The listing is taken page by page but handed out at once: dav-server writes a
            // PROPFIND reply from the stream as it goes anyway.
            let entries = match self.client.list(&p).await {
                Ok(e) => e,
                Err(e) => return fail("list", &p, e),
            };
            let items: Vec<FsResult<Box<dyn DavDirEntry>>> = entries
                .iter()
                .filter(|f| !(p == "/" && dfs_common::path::in_trash(&f.path)))
                .map(|f| {
                    Ok(Box::new(Entry {
                        name: dfs_common::path::file_name(&f.path).as_bytes().to_vec(),
                        meta: Meta::of(f),
                    }) as Box<dyn DavDirEntry>)
                })
                .collect();
            Ok(Box::pin(futures::stream::iter(items)) as FsStream<Box<dyn DavDirEntry>>)
        }
        .boxed()
    }

    fn metadata<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, Box<dyn DavMetaData>> {
        async move {
            let p = dfs_path(path)?;
            match self.client.stat(&p).await {
                Ok(f) => {
                    let m = Meta::of(&f);
                    self.remember(&p, Some(f));
                    Ok(Box::new(m) as Box<dyn DavMetaData>)
                }
                Err(e @ (Error::NotFound(_) | Error::Permission(_))) => {
                    self.remember(&p, None);
                    fail("stat", &p, e)
                }
                Err(e) => fail("stat", &p, e),
            }
        }
        .boxed()
    }

    fn create_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let p = dfs_path(path)?;
            match self.client.mkdir(&p, false).await {
                Ok(()) => Ok(()),
                // MKCOL under a missing parent: 409 Conflict, which dav-server gives NotFound.
                Err(e) => fail("mkdir", &p, e),
            }
        }
        .boxed()
    }

    fn remove_dir<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let p = dfs_path(path)?;
            match self.client.remove(&p, true).await {
                Ok(_) => Ok(()),
                Err(e) => fail("remove", &p, e),
            }
        }
        .boxed()
    }

    fn remove_file<'a>(&'a self, path: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let p = dfs_path(path)?;
            match self.client.remove(&p, false).await {
                Ok(_) => Ok(()),
                Err(e) => fail("remove", &p, e),
            }
        }
        .boxed()
    }

    fn rename<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (f, t) = (dfs_path(from)?, dfs_path(to)?);
            // dav-server has already removed an existing destination when Overwrite allowed
            // it; anything there now arrived meanwhile and is not replaced.
            match self
                .client
                .rename_with(&f, &t, RenameMode::RenameNoreplace)
                .await
            {
                Ok(()) => Ok(()),
                Err(e) => fail("rename", &f, e),
            }
        }
        .boxed()
    }

    fn copy<'a>(&'a self, from: &'a DavPath, to: &'a DavPath) -> FsFuture<'a, ()> {
        async move {
            let (f, t) = (dfs_path(from)?, dfs_path(to)?);
            let h = match self.client.open_read(&f).await {
                Ok(h) => h,
                Err(e) => return fail("copy", &f, e),
            };
            let size = h.size();
            let source = CopySource {
                client: self.client.clone(),
                handle: h,
                pos: 0,
            };
            let opts = PutOptions {
                overwrite: true,
                replication: 0,
                size_hint: Some(size),
            };
            match self
                .client
                .put(&t, source, &opts, &dfs_client::no_progress)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => fail("copy", &t, e),
            }
        }
        .boxed()
    }

    fn get_quota(&self) -> FsFuture<'_, (u64, Option<u64>)> {
        async move {
            match self.client.fs_stats().await {
                Ok(s) => Ok((s.used, Some(s.capacity))),
                Err(_) => Err(FsError::NotImplemented),
            }
        }
        .boxed()
    }
}

/// The bytes of one file version, read in chunk-sized pieces (for COPY).
struct CopySource {
    client: Arc<Client>,
    handle: ReadHandle,
    pos: u64,
}

impl ChunkSource for CopySource {
    async fn next_chunk(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let data = self
            .client
            .read_at(&mut self.handle, self.pos, n as u64)
            .await
            .map_err(std::io::Error::other)?;
        self.pos += data.len() as u64;
        Ok(data)
    }
}

/// A GET: one file version, read from `pos`.
struct Reader {
    client: Arc<Client>,
    path: String,
    handle: ReadHandle,
    meta: Meta,
    pos: u64,
    /// Bytes already fetched, starting at `buf_at`.
    buf: Bytes,
    buf_at: u64,
    /// The next window, being fetched: (its offset, the fetch).
    ahead: Option<(u64, tokio::task::JoinHandle<dfs_client::Result<Vec<u8>>>)>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reader({}, at {})", self.path, self.pos)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some((_, t)) = self.ahead.take() {
            t.abort();
        }
    }
}

impl Reader {
    fn prefetch(&mut self, at: u64) {
        if at >= self.meta.size {
            return;
        }
        let (client, mut h) = (self.client.clone(), self.handle.clone());
        let task = tokio::spawn(async move { client.read_at(&mut h, at, READ_WINDOW).await });
        self.ahead = Some((at, task));
    }

    async fn read(&mut self, count: usize) -> FsResult<Bytes> {
        let end = self.buf_at + self.buf.len() as u64;
        if self.pos < self.buf_at || self.pos >= end {
            // Take the prefetched window when it starts here; otherwise fetch what is asked
            // (a small range fetches just that), and read ahead only once a reader has gone on
            // sequentially past it.
            let sequential = self.pos == end && !self.buf.is_empty();
            let data = match self.ahead.take() {
                Some((at, task)) if at == self.pos => match task.await {
                    Ok(r) => r,
                    Err(_) => Err(Error::other("a read-ahead task failed")),
                },
                other => {
                    if let Some((_, t)) = other {
                        t.abort();
                    }
                    let want = if sequential {
                        READ_WINDOW
                    } else {
                        count as u64
                    };
                    self.client.read_at(&mut self.handle, self.pos, want).await
                }
            };
            let data = match data {
                Ok(d) => d,
                Err(e) => return fail("read", &self.path, e),
            };
            self.buf = Bytes::from(data);
            self.buf_at = self.pos;
            if sequential || self.buf.len() as u64 >= READ_WINDOW {
                let next = self.buf_at + self.buf.len() as u64;
                self.prefetch(next);
            }
            if self.buf.is_empty() {
                return Ok(Bytes::new());
            }
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = count.min(self.buf.len() - from);
        let out = self.buf.slice(from..from + n);
        self.pos += n as u64;
        Ok(out)
    }
}

impl DavFile for Reader {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        let m = self.meta.clone();
        async move { Ok(Box::new(m) as Box<dyn DavMetaData>) }.boxed()
    }
    fn write_buf(&mut self, _buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn write_bytes(&mut self, _buf: Bytes) -> FsFuture<'_, ()> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn read_bytes(&mut self, count: usize) -> FsFuture<'_, Bytes> {
        self.read(count).boxed()
    }
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            let size = self.meta.size as i128;
            let to = match pos {
                SeekFrom::Start(n) => n as i128,
                SeekFrom::Current(d) => self.pos as i128 + d as i128,
                SeekFrom::End(d) => size + d as i128,
            };
            if to < 0 {
                return Err(FsError::GeneralFailure);
            }
            self.pos = to as u64;
            Ok(self.pos)
        }
        .boxed()
    }
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async { Ok(()) }.boxed()
    }
}

/// What the upload task gets from a PUT.
enum Piece {
    Data(Bytes),
    /// The body is complete: commit.
    End,
}

/// The upload task's side: pieces from the channel, cut into chunk-sized buffers. The channel
/// closing without `End` (the handle was dropped: the body failed) fails the put.
struct ChannelSource {
    rx: mpsc::Receiver<Piece>,
    left: Bytes,
    ended: bool,
}

impl ChunkSource for ChannelSource {
    async fn next_chunk(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n.min(64 << 20));
        loop {
            if !self.left.is_empty() {
                let take = (n - out.len()).min(self.left.len());
                out.extend_from_slice(&self.left.split_to(take));
            }
            if out.len() == n || self.ended {
                return Ok(out);
            }
            match self.rx.recv().await {
                Some(Piece::Data(b)) => self.left = b,
                Some(Piece::End) => self.ended = true,
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the request body ended before it was complete; nothing was committed",
                    ))
                }
            }
        }
    }
}

/// A PUT in progress.
struct Writer {
    path: String,
    tx: Option<mpsc::Sender<Piece>>,
    task: Option<tokio::task::JoinHandle<dfs_client::Result<FileInfo>>>,
    declared: Option<u64>,
    written: u64,
    done: Option<Meta>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Writer({}, {} bytes)", self.path, self.written)
    }
}

impl Writer {
    fn start(client: Arc<Client>, path: String, size: Option<u64>, overwrite: bool) -> Writer {
        let (tx, rx) = mpsc::channel(PUT_QUEUE);
        let p = path.clone();
        let task = tokio::spawn(async move {
            let source = ChannelSource {
                rx,
                left: Bytes::new(),
                ended: false,
            };
            let opts = PutOptions {
                overwrite,
                replication: 0,
                size_hint: size,
            };
            let out = client
                .put(&p, source, &opts, &dfs_client::no_progress)
                .await?;
            Ok(out.file)
        });
        Writer {
            path,
            tx: Some(tx),
            task: Some(task),
            declared: size,
            written: 0,
            done: None,
        }
    }

    async fn send(&mut self, b: Bytes) -> FsResult<()> {
        if b.is_empty() {
            return Ok(());
        }
        self.written += b.len() as u64;
        if self.declared.is_some_and(|d| self.written > d) {
            return Err(self.abort("the body is longer than its Content-Length"));
        }
        let Some(tx) = &self.tx else {
            return Err(FsError::GeneralFailure);
        };
        if tx.send(Piece::Data(b)).await.is_err() {
            // The upload task ended early: its error says why.
            return Err(self.finish_error().await);
        }
        Ok(())
    }

    fn abort(&mut self, why: &str) -> FsError {
        tracing::info!("PUT {}: {why}; nothing was committed", self.path);
        self.tx = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
        FsError::GeneralFailure
    }

    async fn finish_error(&mut self) -> FsError {
        self.tx = None;
        match self.task.take() {
            Some(t) => match t.await {
                Ok(Err(e)) => fail::<()>("put", &self.path, e).unwrap_err(),
                _ => FsError::GeneralFailure,
            },
            None => FsError::GeneralFailure,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Without `End` the source fails and the put never commits; abort it at once.
        if let Some(t) = self.task.take() {
            self.tx = None;
            t.abort();
        }
    }
}

impl DavFile for Writer {
    fn metadata(&mut self) -> FsFuture<'_, Box<dyn DavMetaData>> {
        async move {
            match &self.done {
                Some(m) => Ok(Box::new(m.clone()) as Box<dyn DavMetaData>),
                None => Err(FsError::NotFound),
            }
        }
        .boxed()
    }
    fn write_buf(&mut self, mut buf: Box<dyn Buf + Send>) -> FsFuture<'_, ()> {
        async move {
            let b = buf.copy_to_bytes(buf.remaining());
            self.send(b).await
        }
        .boxed()
    }
    fn write_bytes(&mut self, buf: Bytes) -> FsFuture<'_, ()> {
        self.send(buf).boxed()
    }
    fn read_bytes(&mut self, _count: usize) -> FsFuture<'_, Bytes> {
        async { Err(FsError::Forbidden) }.boxed()
    }
    fn seek(&mut self, pos: SeekFrom) -> FsFuture<'_, u64> {
        async move {
            match pos {
                SeekFrom::Start(n) if n == self.written => Ok(n),
                _ => Err(FsError::NotImplemented),
            }
        }
        .boxed()
    }
    /// Commit: only when the body is complete (as long as declared, when declared).
    fn flush(&mut self) -> FsFuture<'_, ()> {
        async move {
            if self.done.is_some() {
                return Ok(());
            }
            if let Some(d) = self.declared {
                if self.written != d {
                    return Err(self.abort("the body is shorter than its Content-Length"));
                }
            }
            let Some(tx) = self.tx.take() else {
                return Err(FsError::GeneralFailure);
            };
            let _ = tx.send(Piece::End).await;
            drop(tx);
            let Some(task) = self.task.take() else {
                return Err(FsError::GeneralFailure);
            };
            match task.await {
                Ok(Ok(f)) => {
                    self.done = Some(Meta::of(&f));
                    Ok(())
                }
                Ok(Err(e)) => fail("put", &self.path, e),
                Err(_) => Err(FsError::GeneralFailure),
            }
        }
        .boxed()
    }
}
