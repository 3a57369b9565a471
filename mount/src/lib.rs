//! dfs as a FUSE file system: the kernel-facing half of `dfsctl mount`.
//!
//! The kernel half talks to the cluster only through a [`Backend`]; [`cluster::ClusterBackend`]
//! is the real one, on the dfs-client library. What must stay true:
//! - no request ever panics or ends the process: every backend error becomes an errno
//!   ([`FsError`]), and a poisoned lock is recovered, so a dead chunk server or an unreachable
//!   cluster fails single calls (EIO), never the mount;
//! - writes make a draft of the next version chunk by chunk (see `draft`: unwritten chunks are
//!   kept by id, written ones staged locally, a sequential writer's streamed out as it passes
//!   them) committed as the file's new version on `flush` (every `close`) and `fsync`; the
//!   cluster switches versions atomically, so a crash or kill mid-write leaves the previous one;
//! - close-to-open: `open` pins the file as committed at that moment (its chunks and read
//!   tokens) and reads of that handle see that version; attributes are cached by the kernel for
//!   at most the configured TTL;
//! - reads are ranged (only the bytes asked for, plus a bounded read-ahead window for sequential
//!   readers); a handle's draft starts from the version the handle pinned.
//!
//! Inode numbers are the metadata service's (stable across rename and overwrite, never reused;
//! the mount root is 1 as FUSE wants); the mount keeps only a cache from number to path. Modes,
//! mtime and ctime are the service's too (chmod and utimens go to it through SetAttr); atime is
//! not stored (it reads as the mtime). Directories are read in pages, one page held per open
//! directory handle.
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod cluster;
mod draft;

pub use cluster::ClusterBackend;
pub use fuser;

/// A failed call, as the program on the mount will see it.
#[derive(Debug, thiserror::Error)]
#[error("{msg} (errno {errno})")]
pub struct FsError {
    pub errno: i32,
    pub msg: String,
}

impl FsError {
    pub fn new(errno: i32, msg: impl Into<String>) -> Self {
        Self {
            errno,
            msg: msg.into(),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        Self::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string())
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// What the mount knows of a name.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub is_dir: bool,
    pub size: u64,
    pub mtime_ms: i64,
    /// The metadata service's inode number (0 from a cluster that has not numbered its inodes
    /// yet: the mount then makes one up).
    pub ino: u64,
    /// Permission bits (0: the kind's default).
    pub mode: u32,
    /// 0: the mtime.
    pub ctime_ms: i64,
    pub created_ms: i64,
    /// A symbolic link's target.
    pub symlink: Option<String>,
}

/// The cluster, as the mount uses it. Paths are absolute (`/a/b`). Calls block; they are made
/// from FUSE worker threads.
pub trait Backend: Send + Sync + 'static {
    fn stat(&self, path: &str) -> FsResult<Entry>;
    /// The directory's entries: (name, entry).
    fn list(&self, path: &str) -> FsResult<Vec<(String, Entry)>>;
    fn mkdir(&self, path: &str) -> FsResult<()>;
    /// Remove a file or an empty directory.
    fn remove(&self, path: &str) -> FsResult<()>;
    /// One page of a directory's entries after the name `after` ("" first), at most `limit`,
    /// and the `after` of the next page ("" when this was the last).
    fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: u32,
    ) -> FsResult<(Vec<(String, Entry)>, String)>;
    /// Rename to exactly `to`: with `replace`, atomically replacing a file there (or an empty
    /// directory when `from` is one), as rename(2); without, EEXIST if `to` exists.
    fn rename(&self, from: &str, to: &str, replace: bool) -> FsResult<()>;
    /// Create a symbolic link; returns its entry.
    fn symlink(&self, path: &str, target: &str) -> FsResult<Entry>;
    fn readlink(&self, path: &str) -> FsResult<String>;
    /// Create an empty file with permission bits `mode` (one commit); EEXIST (or EISDIR) when
    /// something is there, which is left unchanged.
    fn create(&self, path: &str, mode: u32) -> FsResult<Entry>;
    /// Change permission bits and/or mtime.
    fn set_attr(&self, path: &str, mode: Option<u32>, mtime_ms: Option<i64>) -> FsResult<()>;
    /// A pinned version of a file, for ranged reads.
    type Reader: Send + 'static;
    /// Pin the file as committed now.
    fn open_reader(&self, path: &str) -> FsResult<Self::Reader>;
    /// The pinned version's size.
    fn reader_size(&self, r: &Self::Reader) -> u64;
    /// Up to `len` bytes at `offset` of the pinned version (fewer only at its end).
    fn read_at(&self, r: &mut Self::Reader, offset: u64, len: u64) -> FsResult<Vec<u8>>;
    /// Start the same read in the background (a sequential reader's next window); returns at
    /// once.
    fn start_read(&self, r: &Self::Reader, offset: u64, len: u64) -> Fetch;
    /// How the pinned version is cut: its chunk size and each chunk's size, in order.
    fn layout(&self, r: &Self::Reader) -> (u64, Vec<u64>);
    /// Room for one new chunk of `path`, and the chunk size new versions of it are cut into.
    fn allocate(&self, path: &str) -> FsResult<(Allocation, u64)>;
    /// Start storing `data` as one new chunk of `path` (in `alloc` when given) in the
    /// background; returns at once.
    fn start_upload(
        &self,
        path: &str,
        lease: &Self::Lease,
        alloc: Option<Allocation>,
        data: Vec<u8>,
    ) -> Upload;
    /// The write lease of one draft (taken only if the file stays open long; see
    /// `dfs_client::lease`): stored chunks are added to it, the commit names it.
    type Lease: Send + Sync;
    fn write_lease(&self, path: &str) -> Self::Lease;
    /// Read back a chunk stored by `start_upload` and not committed yet.
    fn read_stored(&self, path: &str, c: &StoredChunk) -> FsResult<Vec<u8>>;
    /// Make `pieces` the new version of `path` (created if missing) in one commit; kept
    /// pieces are chunks of `base`, which must still be the current version.
    fn commit(
        &self,
        path: &str,
        base: Option<&Self::Reader>,
        pieces: Vec<Piece>,
        chunk_size: u64,
        sha256: Option<String>,
        lease: &Self::Lease,
    ) -> FsResult<Entry>;
    /// (capacity, used) bytes of the cluster.
    fn usage(&self) -> FsResult<(u64, u64)>;
}

/// Room for a new chunk, as the cluster allocated it.
pub type Allocation = dfs_proto::AllocatedChunk;
/// A chunk stored on chunk servers and not committed yet (with its write token).
pub type StoredChunk = dfs_proto::ChunkInfo;

/// One chunk of a version being committed.
pub enum Piece {
    /// Chunk `i` of the version the writer opened, unchanged.
    Kept(usize),
    Stored(StoredChunk),
}

/// A chunk being stored in the background: `wait` gives the stored chunk or why not.
pub struct Upload(std::sync::mpsc::Receiver<FsResult<StoredChunk>>);

impl Upload {
    /// A new upload and the sender its worker reports on.
    pub fn channel() -> (std::sync::mpsc::SyncSender<FsResult<StoredChunk>>, Upload) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (tx, Upload(rx))
    }

    /// An upload that already failed.
    pub fn failed(e: FsError) -> Upload {
        let (tx, u) = Upload::channel();
        let _ = tx.send(Err(e));
        u
    }

    pub fn wait(self) -> FsResult<StoredChunk> {
        self.0.recv().unwrap_or_else(|_| {
            Err(FsError::new(
                libc::EIO,
                "a chunk upload ended without a result",
            ))
        })
    }
}

/// A ranged read running in the background: `wait` gives its bytes or why not.
pub struct Fetch(std::sync::mpsc::Receiver<FsResult<Vec<u8>>>);

impl Fetch {
    /// A new read and the sender its worker reports on.
    pub fn channel() -> (std::sync::mpsc::SyncSender<FsResult<Vec<u8>>>, Fetch) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (tx, Fetch(rx))
    }

    pub fn wait(self) -> FsResult<Vec<u8>> {
        self.0.recv().unwrap_or_else(|_| {
            Err(FsError::new(
                libc::EIO,
                "a background read ended without a result",
            ))
        })
    }
}

/// Mount settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long the kernel may cache attributes and entries.
    pub attr_ttl: Duration,
    /// Where staging files are made (removed on close; unlinked at once, so a crash leaves none).
    pub staging_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Bytes all open files may stage locally before writers wait for uploads instead.
    pub staging_bytes: u64,
}

/// How many bytes a sequential reader fetches at once (and so the most a handle buffers); the
/// client fetches them as several ranged requests in parallel.
const READ_AHEAD: u64 = 16 << 20;
/// Directory entries fetched per `List` page by readdir.
const DIR_PAGE: u32 = 1000;
/// Longest symbolic link target (the metadata service's limit, Linux's PATH_MAX).
const MAX_SYMLINK_TARGET: usize = 4096;
/// Numbers made up for entries of a cluster that has not numbered its inodes yet start here,
/// far above any the service hands out.
const LOCAL_INO_BASE: u64 = 1 << 62;

/// An open directory: the page of entries readdir is serving. `base` is the index of
/// `entries[0]` in the whole listing (index 0 is ".", 1 is "..", and offset = index + 1).
struct DirCursor {
    path: String,
    base: u64,
    /// (inode, kind, name, the entry as listed; None for "." and "..").
    entries: Vec<(u64, FileType, String, Option<Entry>)>,
    /// The `after` of the next page; `None` once the last page is loaded.
    next: Option<String>,
}

/// An open file's bytes: the pinned remote version until the first write or truncate, then a
/// draft of the new version (see `draft`).
enum Content<B: Backend> {
    Remote {
        reader: B::Reader,
        /// The last window fetched: (offset, bytes).
        window: (u64, Vec<u8>),
        /// Where a sequential reader reads next.
        next: u64,
        /// The window after this one, being fetched while a sequential reader reads this one:
        /// (its offset, the read).
        ahead: Option<(u64, Fetch)>,
    },
    Draft(Box<draft::Draft<B>>),
    /// Between taking a remote version and making its draft (never seen by a caller).
    Moving,
}

/// An open file, shared by the FUSE threads serving its handle.
type Handle<B> = Arc<Mutex<OpenFile<B>>>;

struct OpenFile<B: Backend> {
    path: String,
    ino: u64,
    content: Content<B>,
    dirty: bool,
}

#[derive(Default)]
struct Inodes {
    by_path: HashMap<String, u64>,
    by_ino: HashMap<u64, String>,
}

pub struct DfsFs<B: Backend> {
    backend: Arc<B>,
    opts: Options,
    inodes: Mutex<Inodes>,
    /// Only for entries without a number of the service's (see `LOCAL_INO_BASE`).
    next_ino: AtomicU64,
    dirs: Mutex<HashMap<u64, Arc<Mutex<DirCursor>>>>,
    next_dir_fh: AtomicU64,
    handles: Mutex<HashMap<u64, Handle<B>>>,
    /// Handles with uncommitted writes: fh -> (ino, staged size). Kept outside the handle
    /// locks so a stat never waits behind a handle that is committing over the network.
    unflushed: Mutex<HashMap<u64, (u64, u64)>>,
    next_fh: AtomicU64,
    budget: Arc<draft::StagingBudget>,
}

/// A poisoned lock only means another request panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A time in ms since the epoch (negative: before it).
fn time_of(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

/// ms since the epoch of `t` (negative before it; saturating).
fn ms_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    }
}

impl DirCursor {
    fn new(path: String, ino: u64) -> DirCursor {
        DirCursor {
            path,
            base: 0,
            entries: vec![
                (ino, FileType::Directory, ".".to_string(), None),
                (ino, FileType::Directory, "..".to_string(), None),
            ],
            next: Some(String::new()),
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno)
}

fn join(parent: &str, name: &OsStr) -> FsResult<String> {
    let name = name
        .to_str()
        .ok_or_else(|| FsError::new(libc::EINVAL, "names must be UTF-8"))?;
    if name.len() > 255 {
        return Err(FsError::new(libc::ENAMETOOLONG, "name over 255 bytes"));
    }
    Ok(if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    })
}

impl<B: Backend> DfsFs<B> {
    pub fn new(backend: Arc<B>, opts: Options) -> Self {
        let mut inodes = Inodes::default();
        inodes.by_path.insert("/".into(), 1);
        inodes.by_ino.insert(1, "/".into());
        let staging_bytes = opts.staging_bytes;
        Self {
            backend,
            opts,
            inodes: Mutex::new(inodes),
            next_ino: AtomicU64::new(LOCAL_INO_BASE),
            dirs: Mutex::new(HashMap::new()),
            next_dir_fh: AtomicU64::new(1),
            handles: Mutex::new(HashMap::new()),
            unflushed: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            budget: draft::budget(staging_bytes),
        }
    }

    /// The kernel's number for `path`, whose entry has the service's number `server_ino`:
    /// that number (the mount root is 1), or one made up when the service has none yet.
    /// The path is remembered under it (and no longer under a number it had before).
    fn remember(&self, path: &str, server_ino: u64) -> u64 {
        let mut t = lock(&self.inodes);
        let ino = match server_ino {
            _ if path == "/" => 1,
            0 | 1 => match t.by_path.get(path) {
                Some(i) => return *i,
                None => self.next_ino.fetch_add(1, Ordering::Relaxed),
            },
            n => n,
        };
        if let Some(old) = t.by_path.insert(path.to_string(), ino) {
            if old != ino && t.by_ino.get(&old).is_some_and(|p| p == path) {
                t.by_ino.remove(&old);
            }
        }
        t.by_ino.insert(ino, path.to_string());
        ino
    }

    fn path_of(&self, ino: INodeNo) -> FsResult<String> {
        lock(&self.inodes)
            .by_ino
            .get(&ino.0)
            .cloned()
            .ok_or_else(|| FsError::new(libc::ESTALE, "unknown inode"))
    }

    /// Keep the inode with the entry across a rename (and everything below a directory).
    fn renamed(&self, from: &str, to: &str) {
        let mut t = lock(&self.inodes);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = t
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        if let Some(old) = t.by_path.remove(to) {
            t.by_ino.remove(&old);
        }
        for (p, i) in moved {
            t.by_path.remove(&p);
            let np = format!("{to}{}", &p[from.len()..]);
            t.by_ino.insert(i, np.clone());
            t.by_path.insert(np, i);
        }
    }

    fn attr(&self, ino: u64, e: &Entry) -> FileAttr {
        let t = time_of(e.mtime_ms);
        let or_mtime = |ms: i64| if ms == 0 { t } else { time_of(ms) };
        let (kind, default_perm, size) = match &e.symlink {
            Some(target) => (FileType::Symlink, 0o777, target.len() as u64),
            None if e.is_dir => (FileType::Directory, 0o755, e.size),
            None => (FileType::RegularFile, 0o644, e.size),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: or_mtime(e.ctime_ms),
            crtime: or_mtime(e.created_ms),
            kind,
            perm: match e.mode & 0o7777 {
                0 => default_perm,
                m => m as u16,
            },
            nlink: if e.is_dir { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The entry as this mount sees it: an open handle with unflushed writes wins (its size).
    fn entry(&self, path: &str, ino: u64) -> FsResult<Entry> {
        if let Some(size) = self.staged_size(ino) {
            // Mode and creation time of the committed version (a file removed while open:
            // defaults); the content changed now.
            let committed = self.backend.stat(path).unwrap_or_default();
            let now = ms_of(SystemTime::now());
            return Ok(Entry {
                is_dir: false,
                size,
                mtime_ms: now,
                ctime_ms: now,
                ino,
                symlink: None,
                ..committed
            });
        }
        self.backend.stat(path)
    }

    /// The size of the biggest open handle's uncommitted writes to `ino`, if any.
    fn staged_size(&self, ino: u64) -> Option<u64> {
        lock(&self.unflushed)
            .values()
            .filter(|(i, _)| *i == ino)
            .map(|(_, size)| *size)
            .max()
    }

    /// For a listed entry: `ino` as this mount sees it when an open handle has uncommitted
    /// writes to it (see `entry`), without asking the cluster; None otherwise.
    fn staged_entry(&self, ino: u64) -> Option<Entry> {
        self.staged_size(ino)?;
        let path = self.path_of(INodeNo(ino)).ok()?;
        self.entry(&path, ino).ok()
    }

    /// A new entry with the permission bits the program asked for (mode & !umask), when
    /// they are not the default the service gave it.
    fn with_mode(&self, path: &str, e: Entry, mode: u32) -> FsResult<Entry> {
        let mode = mode & 0o7777;
        let default = if e.is_dir { 0o755 } else { 0o644 };
        let current = if e.mode == 0 { default } else { e.mode };
        if mode == current {
            return Ok(e);
        }
        self.backend.set_attr(path, Some(mode), None)?;
        self.backend.stat(path)
    }

    /// Record that handle `fh` has uncommitted writes and what its staged size is now.
    fn mark_dirty(&self, fh: u64, h: &mut OpenFile<B>) -> FsResult<()> {
        h.dirty = true;
        if let Content::Draft(d) = &h.content {
            lock(&self.unflushed).insert(fh, (h.ino, d.size()));
        }
        Ok(())
    }

    fn staging(&self) -> FsResult<File> {
        Ok(tempfile::tempfile_in(&self.opts.staging_dir)?)
    }

    fn handle(&self, fh: FileHandle) -> FsResult<Handle<B>> {
        lock(&self.handles)
            .get(&fh.0)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, "unknown file handle"))
    }

    fn add_handle(&self, h: OpenFile<B>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if h.dirty {
            // Opened with O_TRUNC: empty until written, whatever the committed version holds.
            lock(&self.unflushed).insert(fh, (h.ino, 0));
        }
        lock(&self.handles).insert(fh, Arc::new(Mutex::new(h)));
        fh
    }

    /// Store a handle's writes as the file's new version (`fh` None: a handle made for one
    /// call, not in the table).
    fn commit(&self, fh: Option<u64>, h: &mut OpenFile<B>) -> FsResult<()> {
        if let (true, Content::Draft(d)) = (h.dirty, &mut h.content) {
            // The file may have been renamed while open: it is committed where it is now.
            if let Ok(now) = self.path_of(INodeNo(h.ino)) {
                if now != h.path {
                    d.set_path(&now);
                    h.path = now;
                }
            }
            d.commit(&self.backend)?;
            h.dirty = false;
        }
        if let Some(fh) = fh {
            lock(&self.unflushed).remove(&fh);
        }
        Ok(())
    }

    fn remote(&self, reader: B::Reader) -> Content<B> {
        Content::Remote {
            reader,
            window: (0, Vec::new()),
            next: 0,
            ahead: None,
        }
    }

    /// A draft of a new version starting empty (O_TRUNC, a new file).
    fn empty_draft(&self, path: &str) -> FsResult<Content<B>> {
        let d = draft::Draft::new(
            &*self.backend,
            path,
            None,
            self.staging()?,
            self.budget.clone(),
        )?;
        Ok(Content::Draft(Box::new(d)))
    }

    /// The handle's draft, made from its pinned version on first use (nothing is copied:
    /// its chunks are kept until written).
    fn draft<'a>(&self, h: &'a mut OpenFile<B>) -> FsResult<&'a mut draft::Draft<B>> {
        if let Content::Remote { .. } = h.content {
            let Content::Remote { reader, .. } = std::mem::replace(&mut h.content, Content::Moving)
            else {
                unreachable!("matched above")
            };
            let staging = match self.staging() {
                Ok(f) => f,
                Err(e) => {
                    h.content = self.remote(reader);
                    return Err(e);
                }
            };
            let d = draft::Draft::new(
                &*self.backend,
                &h.path,
                Some(reader),
                staging,
                self.budget.clone(),
            );
            h.content = Content::Draft(Box::new(d?));
        }
        match &mut h.content {
            Content::Draft(d) => Ok(d),
            _ => Err(FsError::new(libc::EIO, "this handle lost its file")),
        }
    }

    /// Read for a handle: a staged copy locally, a remote version through the read-ahead
    /// window (sequential readers fetch `READ_AHEAD` at a time; others just what they ask).
    fn read_handle(&self, h: &mut OpenFile<B>, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let size = size as u64;
        match &mut h.content {
            Content::Draft(d) => d.read_at(&self.backend, offset, size),
            Content::Moving => Err(FsError::new(libc::EIO, "this handle lost its file")),
            Content::Remote {
                reader,
                window,
                next,
                ahead,
            } => {
                let total = self.backend.reader_size(reader);
                let sequential = offset == *next;
                let (start, bytes) = &*window;
                let end = start + bytes.len() as u64;
                let inside = offset >= *start && (offset + size <= end || end >= total);
                if !inside || bytes.is_empty() {
                    *window = match ahead.take() {
                        // The next window was fetched meanwhile: this read starts in it, or
                        // straddles the two (the current window's tail comes first).
                        Some((at, f))
                            if sequential && offset >= *start && offset < at + READ_AHEAD =>
                        {
                            // A background read that failed is done again here, once (its
                            // error, if it persists, is this read's).
                            let data = match f.wait() {
                                Ok(data) => data,
                                Err(_) => self.backend.read_at(reader, at, READ_AHEAD)?,
                            };
                            if offset < at && offset < end {
                                let mut joined = bytes[(offset - start) as usize..].to_vec();
                                joined.extend_from_slice(&data);
                                (offset, joined)
                            } else {
                                (at, data)
                            }
                        }
                        _ => {
                            let want = if sequential {
                                size.max(READ_AHEAD)
                            } else {
                                size
                            };
                            (offset, self.backend.read_at(reader, offset, want)?)
                        }
                    };
                }
                let (start, bytes) = &*window;
                let from = ((offset - start) as usize).min(bytes.len());
                let to = (from + size as usize).min(bytes.len());
                *next = offset + (to - from) as u64;
                // A sequential reader gets its next window fetched while it reads this one
                // (so at most two windows per handle are in memory).
                let end = start + bytes.len() as u64;
                if sequential && ahead.is_none() && bytes.len() as u64 >= READ_AHEAD && end < total
                {
                    *ahead = Some((end, self.backend.start_read(reader, end, READ_AHEAD)));
                }
                Ok(bytes[from..to].to_vec())
            }
        }
    }

    /// Walk an open directory from `offset`, loading pages as needed, handing each entry to
    /// `add(inode, next offset, kind, name, entry)` until it says the reply is full.
    fn list_dir(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &str, Option<&Entry>) -> bool,
    ) -> FsResult<()> {
        let cursor = match lock(&self.dirs).get(&fh.0).cloned() {
            Some(c) => c,
            None => Arc::new(Mutex::new(DirCursor::new(self.path_of(ino)?, ino.0))),
        };
        let mut c = lock(&cursor);
        if offset < c.base {
            // Rewound (rewinddir, or a seek back): start over.
            *c = DirCursor::new(c.path.clone(), ino.0);
        }
        let mut at = offset;
        loop {
            // Load pages until one holds index `at`, or there are no more.
            while at >= c.base + c.entries.len() as u64 {
                let Some(after) = c.next.clone() else {
                    return Ok(());
                };
                let (page, next) = self.backend.list_page(&c.path, &after, DIR_PAGE)?;
                let mut entries = Vec::with_capacity(page.len());
                for (name, e) in page {
                    let child = join(&c.path, OsStr::new(&name))?;
                    let kind = match (&e.symlink, e.is_dir) {
                        (Some(_), _) => FileType::Symlink,
                        (None, true) => FileType::Directory,
                        (None, false) => FileType::RegularFile,
                    };
                    entries.push((self.remember(&child, e.ino), kind, name, Some(e)));
                }
                c.base += c.entries.len() as u64;
                c.entries = entries;
                c.next = (!next.is_empty()).then_some(next);
            }
            let (child, kind, name, e) = &c.entries[(at - c.base) as usize];
            if add(*child, at + 1, *kind, name, e.as_ref()) {
                return Ok(());
            }
            at += 1;
        }
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let content = if trunc {
            self.empty_draft(&path)?
        } else {
            self.remote(self.backend.open_reader(&path)?)
        };
        Ok(self.add_handle(OpenFile {
            path,
            ino: ino.0,
            content,
            dirty: trunc,
        }))
    }

    fn do_setattr(&self, ino: INodeNo, size: Option<u64>, fh: Option<FileHandle>) -> FsResult<u64> {
        let path = self.path_of(ino)?;
        if let Some(size) = size {
            let h = match fh.and_then(|fh| self.handle(fh).ok()) {
                Some(h) => h,
                None => {
                    let content = if size > 0 {
                        self.remote(self.backend.open_reader(&path)?)
                    } else {
                        self.empty_draft(&path)?
                    };
                    Arc::new(Mutex::new(OpenFile {
                        path: path.clone(),
                        ino: ino.0,
                        content,
                        dirty: false,
                    }))
                }
            };
            let mut h = lock(&h);
            self.draft(&mut h)?.set_len(&self.backend, size)?;
            match fh {
                Some(fh) => self.mark_dirty(fh.0, &mut h)?,
                None => {
                    h.dirty = true;
                    self.commit(None, &mut h)?;
                }
            }
        }
        Ok(ino.0)
    }
}

impl<B: Backend> Filesystem for DfsFs<B> {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives with open (not as a separate truncate that would commit an empty
        // version at once): the truncation is staged like any write and committed on close.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Listings carry attributes (READDIRPLUS) when the kernel sees them looked up.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let path = join(&self.path_of(parent)?, name)?;
            // A known name may have an open handle with unflushed writes (`entry` sees it).
            let cached = lock(&self.inodes).by_path.get(&path).copied();
            let e = match cached {
                Some(i) => self.entry(&path, i)?,
                None => self.backend.stat(&path)?,
            };
            let ino = self.remember(&path, e.ino);
            Ok::<_, FsError>(self.attr(ino, &e))
        })();
        match r {
            Ok(a) => reply.entry(&self.opts.attr_ttl, &a, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self
            .path_of(ino)
            .and_then(|p| self.entry(&p, ino.0))
            .map(|e| self.attr(ino.0, &e));
        match r {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.do_setattr(ino, size, fh).and_then(|i| {
            let p = self.path_of(INodeNo(i))?;
            // chmod and utimens: stored by the service (atime is not kept).
            let mtime_ms = mtime.map(|t| match t {
                TimeOrNow::Now => ms_of(SystemTime::now()),
                TimeOrNow::SpecificTime(t) => ms_of(t),
            });
            if mode.is_some() || mtime_ms.is_some() {
                self.backend
                    .set_attr(&p, mode.map(|m| m & 0o7777), mtime_ms)?;
            }
            Ok(self.attr(i, &self.entry(&p, i)?))
        });
        match r {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &a),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let path = join(&self.path_of(parent)?, name)?;
            self.backend.mkdir(&path)?;
            let e = self.with_mode(&path, self.backend.stat(&path)?, mode & !umask)?;
            let ino = self.remember(&path, e.ino);
            Ok::<_, FsError>(self.attr(ino, &e))
        })();
        match r {
            Ok(a) => reply.entry(&self.opts.attr_ttl, &a, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let path = join(&self.path_of(parent)?, name)?;
            if self.backend.stat(&path)?.is_dir {
                return Err(FsError::new(libc::EISDIR, "is a directory"));
            }
            self.backend.remove(&path)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = (|| {
            let path = join(&self.path_of(parent)?, name)?;
            if !self.backend.stat(&path)?.is_dir {
                return Err(FsError::new(libc::ENOTDIR, "not a directory"));
            }
            // The service refuses a directory that is not empty (ENOTEMPTY).
            self.backend.remove(&path)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let from = join(&self.path_of(parent)?, name)?;
            let to = join(&self.path_of(newparent)?, newname)?;
            if flags.bits() & libc::RENAME_EXCHANGE != 0 {
                return Err(FsError::new(
                    libc::EINVAL,
                    "RENAME_EXCHANGE is not supported",
                ));
            }
            // One atomic step in the service: RENAME_NOREPLACE refuses an existing target,
            // otherwise a file (or an empty directory, for a directory) there is replaced.
            let replace = flags.bits() & libc::RENAME_NOREPLACE == 0;
            self.backend.rename(&from, &to, replace)?;
            self.renamed(&from, &to);
            Ok::<_, FsError>(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let path = join(&self.path_of(parent)?, name)?;
            let mode = mode & !umask & 0o7777;
            // Most CREATEs make a new file: one commit (create-only, with its mode) does it and
            // makes the name visible to lookups and other mounts at once. Without O_EXCL a
            // refusal means something is there, handled below.
            let created = match flags & libc::O_EXCL {
                0 => match self.backend.create(&path, mode) {
                    Ok(e) => Some(e),
                    Err(e) if e.errno == libc::EEXIST || e.errno == libc::EISDIR => None,
                    Err(e) => return Err(e),
                },
                _ => None,
            };
            // The kernel sends CREATE for O_CREAT opens of names it has not looked up, so the
            // file may exist: then this is an open (and O_TRUNC is staged, not committed).
            let (e, content, dirty) = match created {
                Some(e) => (e, self.empty_draft(&path)?, false),
                None => match self.backend.stat(&path) {
                    Ok(_) if flags & libc::O_EXCL != 0 => {
                        return Err(FsError::new(libc::EEXIST, "exists"));
                    }
                    Ok(e) if e.is_dir => return Err(FsError::new(libc::EISDIR, "is a directory")),
                    Ok(e) if flags & libc::O_TRUNC != 0 => {
                        (Entry { size: 0, ..e }, self.empty_draft(&path)?, true)
                    }
                    Ok(e) => (e, self.remote(self.backend.open_reader(&path)?), false),
                    // Committed empty at once (create-only: a file someone else made meanwhile
                    // is not replaced), so the name exists for lookups and other mounts.
                    Err(err) if err.errno == libc::ENOENT => {
                        let e = self.backend.create(&path, mode)?;
                        (e, self.empty_draft(&path)?, false)
                    }
                    Err(err) => return Err(err),
                },
            };
            let ino = self.remember(&path, e.ino);
            let fh = self.add_handle(OpenFile {
                path,
                ino,
                content,
                dirty,
            });
            Ok::<_, FsError>((self.attr(ino, &e), fh))
        })();
        match r {
            Ok((a, fh)) => reply.created(
                &self.opts.attr_ttl,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = (|| {
            let h = self.handle(fh)?;
            let mut h = lock(&h);
            self.read_handle(&mut h, offset, size)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            let h = self.handle(fh)?;
            let mut h = lock(&h);
            let h = &mut *h;
            self.draft(h)?.write_at(&self.backend, data, offset)?;
            self.mark_dirty(fh.0, h)?;
            Ok::<_, FsError>(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let r = self
            .handle(fh)
            .and_then(|h| self.commit(Some(fh.0), &mut lock(&h)));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self
            .handle(fh)
            .and_then(|h| self.commit(Some(fh.0), &mut lock(&h)));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = lock(&self.handles).remove(&fh.0);
        // Writes not committed by a flush (a write after the last close's flush, e.g. through
        // mmap) are committed here; the error can no longer reach the program, so it is logged.
        let r = match h {
            Some(h) => self.commit(Some(fh.0), &mut lock(&h)),
            None => Ok(()),
        };
        lock(&self.unflushed).remove(&fh.0);
        if let Err(e) = r {
            tracing::warn!("commit on release failed: {e}");
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.path_of(ino) {
            Ok(path) => {
                let fh = self.next_dir_fh.fetch_add(1, Ordering::Relaxed);
                lock(&self.dirs).insert(fh, Arc::new(Mutex::new(DirCursor::new(path, ino.0))));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.list_dir(ino, fh, offset, |child, off, kind, name, _| {
            reply.add(INodeNo(child), off, kind, name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// READDIR with each entry's attributes (the kernel asks for it once a program looks the
    /// entries up, as `ls -l` and file managers do): no lookup per entry afterwards.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.opts.attr_ttl;
        let r = self.list_dir(ino, fh, offset, |child, off, _, name, e| {
            // "." and ".." are not linked by the kernel; any directory attributes do.
            let e = e.cloned().unwrap_or(Entry {
                is_dir: true,
                ..Default::default()
            });
            let e = self.staged_entry(child).unwrap_or(e);
            let a = self.attr(child, &e);
            reply.add(INodeNo(child), off, name, &ttl, &a, Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = (|| {
            let path = join(&self.path_of(parent)?, link_name)?;
            let target = target
                .to_str()
                .ok_or_else(|| FsError::new(libc::EINVAL, "link targets must be UTF-8"))?;
            if target.len() > MAX_SYMLINK_TARGET {
                return Err(FsError::new(
                    libc::ENAMETOOLONG,
                    "link target over 4096 bytes",
                ));
            }
            let e = self.backend.symlink(&path, target)?;
            let ino = self.remember(&path, e.ino);
            Ok::<_, FsError>(self.attr(ino, &e))
        })();
        match r {
            Ok(a) => reply.entry(&self.opts.attr_ttl, &a, Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.path_of(ino).and_then(|p| self.backend.readlink(&p)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.backend.usage() {
            Ok((cap, used)) => {
                let bs = 4096u64;
                let blocks = cap / bs;
                let free = cap.saturating_sub(used) / bs;
                reply.statfs(
                    blocks,
                    free,
                    free,
                    0,
                    u32::MAX as u64,
                    bs as u32,
                    255,
                    bs as u32,
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Mount `fs` at `mountpoint` in the background (the caller unmounts by dropping or calling
/// `umount_and_join` on the session).
pub fn spawn<B: Backend>(
    fs: DfsFs<B>,
    mountpoint: &Path,
    fsname: &str,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(fsname.to_string()),
        fuser::MountOption::Subtype("dfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    cfg.n_threads = Some(4);
    fuser::spawn_mount(fs, mountpoint, &cfg)
}
