//! The chunk store: chunk files on local disk, each mirrored into a backup directory; small
//! chunks are records in pack files instead (see `pack`).
//!
//! # On-disk layout
//! ```text
//! <data-dir>/chunks/<id[0..2]>/<id>                 primary copy of chunk <id>
//! <data-dir>/chunks/<id[0..2]>/.<id>.<n>.tmp        a write or a repair in progress
//! <data-dir>/chunks/packs/<seq>.pack                small chunks (at most `pack_max` bytes)
//! <data-dir>/quarantine/<id>.<unix-ms>              a copy found corrupt with nothing to heal it
//! <backup-dir>/chunks/<id[0..2]>/<id>               backup copy (same format)
//! <backup-dir>/chunks/packs/<seq>.pack              backup of the packs (same offsets)
//! <backup-dir>/quarantine/...
//! ```
//! `<id>` is a lowercase hyphenated UUID, `<id[0..2]>` its first two hex digits (256 fan-out
//! directories, all created at start). A chunk file is self-describing:
//! ```text
//! data      size bytes
//! blocks    ceil(size / 65536) x u32 LE    CRC32C of each 64 KiB block (the last may be short)
//! footer    24 bytes: magic "DFSCHK01", size u64 LE, whole-chunk CRC32C u32 LE,
//!           CRC32C u32 LE of (blocks table ++ first 20 footer bytes)
//! ```
//! so a file is valid only if its length is exactly `size + 4*blocks + 24`, the footer's own
//! checksum matches and the whole-chunk CRC equals the combination of the block CRCs.
//!
//! # What must stay true
//! - A chunk id is checked ([`validate_chunk_id`]) before it touches a path: no traversal.
//! - A chunk is visible under its final name only once complete and fsynced (temp file in the
//!   same directory, fsync, link/rename, directory fsync); a write is acknowledged once the
//!   primary is durable. The backup copy is written alongside and renamed into place after the
//!   primary, without waiting for its fsync: it guards against bit rot of the primary, not
//!   against crashes (the other replicas do that), and a backup cut short by a crash fails its
//!   checksums and is never served. A failed or abandoned write removes its temp files and
//!   leaves nothing visible.
//! - A chunk of at most `pack_max` bytes (64 KiB by default) is appended to the current pack
//!   and acknowledged after the pack's fdatasync, which it shares with every small write that
//!   arrived meanwhile; the pack rules are in `pack`. Reads, repairs from the backup, losses
//!   and deletes follow the same rules as for chunk files.
//! - Memory stays bounded: a write queues at most a few pieces (a chunk of up to 1 MiB is
//!   gathered whole, then written in one go), a read holds at most two; never a whole chunk
//!   (a packed chunk is at most one 64 KiB block by default, 1 MiB at most).
//! - Chunk bytes bypass the page cache where the filesystem allows it (`direct`): whole
//!   1 MiB pieces of both copies are written with `O_DIRECT` from one aligned buffer, and
//!   chunks of 1 MiB or more are read with `O_DIRECT`. This changes the CPU cost, not the
//!   durability rules above: the fsyncs are the same. (A direct piece returns once the device
//!   has it, so a write does wait for the backup's direct pieces; it never fsyncs the backup.)
//! - Reads never return a byte that was not verified against its block CRC. A bad or missing
//!   primary is restored from a good backup (atomically); when no good copy exists the read
//!   fails with [`StoreError::DataLoss`], the bad copies go to `quarantine/` and the chunk leaves
//!   the inventory, so the metadata group re-replicates it.
//! - `used_bytes` counts chunk data once (backups are not counted); writes reserve their bytes
//!   as they arrive, so concurrent writes never overshoot the capacity.
//! - All file IO runs on tokio's blocking pool, never on the async runtime.
use crate::direct::{self, AppendFiles, FileError};
use crate::metrics::Metrics;
use crate::pack::{Loc, Packs, RecordRead};
use dfs_proto::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::Span;

/// Checksum granularity.
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Hard limit on the size of one chunk.
pub const MAX_CHUNK_SIZE: u64 = dfs_common::MAX_CHUNK_SIZE;

const MAGIC: &[u8; 8] = b"DFSCHK01";
const FOOTER_LEN: usize = 24;
/// Pieces queued between the network and the disk, per write.
const QUEUE_DEPTH: usize = 4;
/// A chunk of up to this many bytes, in at most `QUEUE_DEPTH` pieces, is gathered in memory
/// and written by one blocking task from start to end: a small write is mostly latency, and
/// each hand-off between the network and a disk thread costs a context switch. Anything
/// bigger (or in more pieces) streams from the first piece over the limit.
const GATHER_LIMIT: usize = direct::PIECE;
/// Lock stripes serializing install, repair, quarantine and delete of the same chunk.
const LOCK_STRIPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk id {0:?} is not a lowercase hyphenated UUID")]
    InvalidChunkId(String),
    #[error("chunk {0} is not stored on this server")]
    NotFound(String),
    #[error("chunk is larger than the {max}-byte limit")]
    TooLarge { max: u64 },
    #[error("this chunk server is full: {used} of {capacity} bytes used or reserved")]
    Full { used: u64, capacity: u64 },
    #[error("the disk is full: cannot write {path}: {source}")]
    NoSpace { path: PathBuf, source: io::Error },
    #[error("chunk {0} already exists here with different content")]
    Conflict(String),
    #[error("chunk {chunk_id} is corrupt and no good copy is left on this server: {reason}")]
    DataLoss { chunk_id: String, reason: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the write of chunk {0} was abandoned before it finished")]
    Aborted(String),
    #[error("chunk {0} is already being written here; retry when that write has finished")]
    Busy(String),
    #[error("internal error in the chunk store: {0}")]
    Internal(String),
}

/// Build an IO error for `op` on `path`, recognizing a full disk.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| {
        let full = source.kind() == io::ErrorKind::StorageFull
            || source.kind() == io::ErrorKind::QuotaExceeded
            || matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            );
        if full {
            StoreError::NoSpace {
                path: path.to_path_buf(),
                source,
            }
        } else {
            StoreError::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Accept only lowercase hyphenated UUIDs (`8-4-4-4-12` hex digits): 36 characters, nothing
/// that could name another directory.
pub fn validate_chunk_id(id: &str) -> Result<(), StoreError> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidChunkId(id.chars().take(64).collect()))
    }
}

/// Size and checksum of a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub size: u64,
    pub crc32c: u32,
}

/// The checksums stored at the end of a chunk file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trailer {
    size: u64,
    crc: u32,
    blocks: Vec<u32>,
}

fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

/// Total file length of a chunk of `size` data bytes.
fn file_len(size: u64) -> u64 {
    size + 4 * block_count(size) + FOOTER_LEN as u64
}

/// Data size of a chunk file of length `len` (inverse of [`file_len`]); `None` if impossible.
pub(crate) fn size_from_file_len(len: u64) -> Option<u64> {
    let rest = len.checked_sub(FOOTER_LEN as u64)?;
    let blocks = rest.div_ceil(BLOCK_SIZE as u64 + 4);
    let size = rest.checked_sub(4 * blocks)?;
    (file_len(size) == len).then_some(size)
}

/// The linear map taking `crc(A)` to `crc(A ++ 64 KiB of zeros)` (conditioning aside), as the
/// images of the 32 basis vectors: with it, appending a whole block's CRC costs a few XORs
/// instead of `crc32c_combine`'s matrix squarings.
fn block_shift_operator() -> &'static [u32; 32] {
    static OP: std::sync::OnceLock<[u32; 32]> = std::sync::OnceLock::new();
    OP.get_or_init(|| std::array::from_fn(|i| crc32c::crc32c_combine(1u32 << i, 0, BLOCK_SIZE)))
}

/// `crc32c_combine(crc1, crc2, BLOCK_SIZE)`, fast.
fn combine_block(crc1: u32, crc2: u32) -> u32 {
    let op = block_shift_operator();
    let mut shifted = 0u32;
    let mut v = crc1;
    let mut i = 0;
    while v != 0 {
        if v & 1 == 1 {
            shifted ^= op[i];
        }
        v >>= 1;
        i += 1;
    }
    shifted ^ crc2
}

/// Whole-chunk CRC from the block CRCs (no second pass over the data).
fn combine(blocks: &[u32], size: u64) -> u32 {
    let mut whole = 0u32;
    let mut left = size;
    for (i, b) in blocks.iter().enumerate() {
        let len = left.min(BLOCK_SIZE as u64);
        left -= len;
        whole = if i == 0 {
            *b
        } else if len == BLOCK_SIZE as u64 {
            combine_block(whole, *b)
        } else {
            crc32c::crc32c_combine(whole, *b, len as usize)
        };
    }
    whole
}

/// Why a copy of a chunk cannot be used.
#[derive(Debug)]
enum Bad {
    Missing,
    Corrupt(String),
    Io(io::Error),
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Missing => f.write_str("missing"),
            Bad::Corrupt(r) => f.write_str(r),
            Bad::Io(e) => write!(f, "unreadable: {e}"),
        }
    }
}

impl Bad {
    fn dup(&self) -> Bad {
        match self {
            Bad::Missing => Bad::Missing,
            Bad::Corrupt(r) => Bad::Corrupt(r.clone()),
            Bad::Io(e) => Bad::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl From<io::Error> for Bad {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Bad::Missing,
            io::ErrorKind::UnexpectedEof => Bad::Corrupt("truncated".into()),
            _ => Bad::Io(e),
        }
    }
}

impl Trailer {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.blocks.len() * 4 + FOOTER_LEN);
        for b in &self.blocks {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        let check = crc32c::crc32c(&out);
        out.extend_from_slice(&check.to_le_bytes());
        out
    }

    /// Read and check the trailer of an open chunk file.
    fn read(file: &File) -> Result<Trailer, Bad> {
        Trailer::parse(file.metadata()?.len(), |buf, at| {
            file.read_exact_at(buf, at)
        })
    }

    /// Check a whole chunk image held in memory (a packed chunk): trailer and every block.
    fn verify_image(image: &[u8]) -> Result<Trailer, Bad> {
        let trailer = Trailer::from_image(image)?;
        trailer.verify(&image[..trailer.size as usize], 0)?;
        Ok(trailer)
    }

    /// Check the trailer of a chunk image held in memory (a packed chunk).
    fn from_image(image: &[u8]) -> Result<Trailer, Bad> {
        Trailer::parse(image.len() as u64, |buf, at| {
            let at = at as usize;
            let src = image
                .get(at..at + buf.len())
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    /// Check the trailer of a chunk image of `len` bytes read by `read_at(buf, offset)`.
    fn parse(len: u64, read_at: impl Fn(&mut [u8], u64) -> io::Result<()>) -> Result<Trailer, Bad> {
        if len < FOOTER_LEN as u64 {
            return Err(Bad::Corrupt(format!("truncated to {len} bytes")));
        }
        let mut footer = [0u8; FOOTER_LEN];
        read_at(&mut footer, len - FOOTER_LEN as u64)?;
        if &footer[..8] != MAGIC {
            return Err(Bad::Corrupt(
                "no chunk footer (truncated or overwritten)".into(),
            ));
        }
        let size = u64::from_le_bytes(footer[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(footer[16..20].try_into().unwrap_or_default());
        let check = u32::from_le_bytes(footer[20..24].try_into().unwrap_or_default());
        if size > MAX_CHUNK_SIZE || file_len(size) != len {
            return Err(Bad::Corrupt(format!(
                "file is {len} bytes but its footer says {size} data bytes"
            )));
        }
        let nblocks = block_count(size) as usize;
        let mut table = vec![0u8; nblocks * 4];
        read_at(&mut table, size)?;
        let table_crc = crc32c::crc32c_append(crc32c::crc32c(&table), &footer[..20]);
        if table_crc != check {
            return Err(Bad::Corrupt("checksum table is corrupt".into()));
        }
        let blocks: Vec<u32> = table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if combine(&blocks, size) != crc {
            return Err(Bad::Corrupt(
                "checksum table disagrees with the chunk checksum".into(),
            ));
        }
        Ok(Trailer { size, crc, blocks })
    }

    fn read_path(path: &Path) -> Result<(File, Trailer), Bad> {
        let file = File::open(path)?;
        let t = Trailer::read(&file)?;
        Ok((file, t))
    }

    /// Read `len` bytes at `offset` (block aligned) and verify every block.
    fn read_verified(&self, file: &File, offset: u64, len: usize) -> Result<Vec<u8>, Bad> {
        // Read into fresh capacity: no zero-filling of the buffer first.
        let mut buf = Vec::with_capacity(len);
        let mut f = file;
        f.seek(SeekFrom::Start(offset))?;
        f.take(len as u64).read_to_end(&mut buf)?;
        if buf.len() != len {
            return Err(Bad::Corrupt("truncated".into()));
        }
        self.verify(&buf, offset)?;
        Ok(buf)
    }

    fn verify(&self, buf: &[u8], offset: u64) -> Result<(), Bad> {
        let first = (offset / BLOCK_SIZE as u64) as usize;
        for (i, block) in buf.chunks(BLOCK_SIZE).enumerate() {
            let idx = first + i;
            let expect = self.blocks.get(idx).copied();
            if expect != Some(crc32c::crc32c(block)) {
                return Err(Bad::Corrupt(format!("block {idx} fails its checksum")));
            }
        }
        Ok(())
    }

    fn meta(&self) -> ChunkMeta {
        ChunkMeta {
            size: self.size,
            crc32c: self.crc,
        }
    }
}

/// Whether the `len` bytes of `file` at `offset` end with a valid chunk trailer (a cheap
/// check that a chunk image was written to its end; the data is verified when read).
/// An error reading is an error, not a "no".
pub fn image_is_whole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    match Trailer::parse(len, |buf, at| file.read_exact_at(buf, offset + at)) {
        Ok(_) => Ok(true),
        Err(Bad::Io(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

/// Whether a chunk image held in memory is complete and every block matches its checksum.
pub fn image_verifies(image: &[u8]) -> bool {
    Trailer::verify_image(image).is_ok()
}

/// CRC32C of every 64 KiB block, computed as bytes arrive in pieces of any size.
#[derive(Default)]
struct BlockCrcs {
    blocks: Vec<u32>,
    current: u32,
    current_len: usize,
    total: u64,
}

impl BlockCrcs {
    fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK_SIZE - self.current_len).min(data.len());
            let (head, rest) = data.split_at(take);
            self.current = crc32c::crc32c_append(self.current, head);
            self.current_len += take;
            data = rest;
            if self.current_len == BLOCK_SIZE {
                self.blocks.push(self.current);
                self.current = 0;
                self.current_len = 0;
            }
        }
    }

    fn finish(mut self) -> Trailer {
        if self.current_len > 0 {
            self.blocks.push(self.current);
        }
        Trailer {
            size: self.total,
            crc: combine(&self.blocks, self.total),
            blocks: self.blocks,
        }
    }
}

/// A temp file in a chunk's directory; removed on drop unless installed.
struct TempFile {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    installed: bool,
}

impl TempFile {
    fn create(dir: &Path, id: &str, nonce: u64) -> Result<Self, StoreError> {
        let path = dir.join(format!(".{id}.{nonce}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(Self {
            file,
            dir: dir.to_path_buf(),
            path,
            installed: false,
        })
    }

    /// Fsync the content.
    fn sync(&self) -> Result<(), StoreError> {
        crate::planted::sync_chunk(&self.file).map_err(io_err("fsync", &self.path))
    }
}

/// Map a failed append to one of `temps` to a store error naming its file.
fn append_err<'a>(temps: &'a [&'a TempFile]) -> impl Fn(FileError) -> StoreError + 'a {
    move |(i, e)| {
        let path = temps.get(i).map_or(Path::new("?"), |t| t.path.as_path());
        io_err("write", path)(e)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.installed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temp file");
                }
            }
        }
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    dfs_common::durable::fsync_dir(dir).map_err(io_err("fsync directory", dir))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Where the store keeps its files and how much it may hold.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// `None`: no backup copies.
    pub backup_dir: Option<PathBuf>,
    /// Bytes of chunk data accepted (backups not counted).
    pub capacity: u64,
    /// Chunks of at most this many bytes are packed (see `pack`); 0 turns packing off.
    pub pack_max: u64,
}

/// Default `pack_max`: one checksum block, so a packed chunk is read and verified whole.
pub const DEFAULT_PACK_MAX: u64 = BLOCK_SIZE as u64;

/// What the store holds: chunk id -> data size, and bytes in use or promised to writes.
#[derive(Default)]
struct Accounting {
    /// Ordered, so the inventory can be listed in pages from any id on.
    index: BTreeMap<String, u64>,
    used: u64,
    reserved: u64,
}

struct Inner {
    primary: PathBuf,
    backup: Option<PathBuf>,
    capacity: u64,
    accounting: Mutex<Accounting>,
    locks: Vec<Mutex<()>>,
    nonce: AtomicU64,
    metrics: Arc<Metrics>,
    /// Small chunks (see `pack`), and the largest chunk packed.
    packs: Packs,
    pack_max: u64,
    /// Chunks being packed right now (a second write of one waits for the first).
    packing: Mutex<HashSet<String>>,
}

/// The chunk store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Run blocking store code on tokio's blocking pool, keeping the caller's tracing span.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let span = Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
}

impl Store {
    /// Open (creating if needed) the store: make the directory tree, remove temp files left
    /// by a crash, and index the chunks present. Blocking; call before serving.
    pub fn open(config: StoreConfig, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let primary = config.data_dir.join("chunks");
        let backup = config.backup_dir.as_ref().map(|d| d.join("chunks"));
        let mut acc = Accounting::default();
        for root in std::iter::once(&primary).chain(backup.as_ref()) {
            prepare_root(root)?;
        }
        scan_root(&primary, &mut acc)?;
        if let Some(b) = &backup {
            // Chunks whose primary is gone but whose backup is here are still servable.
            scan_root(b, &mut acc)?;
        }
        let roots: Vec<PathBuf> = std::iter::once(&primary).chain(&backup).cloned().collect();
        let packs =
            Packs::open(&roots).map_err(io_err("open the packs in", &primary.join("packs")))?;
        metrics
            .capacity_bytes
            .store(config.capacity, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            primary,
            backup,
            capacity: config.capacity,
            accounting: Mutex::new(acc),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            nonce: AtomicU64::new(0),
            metrics,
            packs,
            pack_max: config.pack_max,
            packing: Mutex::new(HashSet::new()),
        });
        inner.set_gauges(&lock(&inner.accounting));
        Ok(Store { inner })
    }

    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Bytes of chunk data the disks can still take, whatever `capacity` says (see
    /// [`per_copy`]). `None` if a filesystem cannot be measured.
    pub fn disk_free(&self) -> Option<u64> {
        per_copy(&self.inner.primary, self.inner.backup.as_deref(), |f| {
            f.avail_bytes
        })
    }

    /// Bytes of chunk data stored (one copy per chunk).
    pub fn used_bytes(&self) -> u64 {
        lock(&self.inner.accounting).used + self.inner.packs.usage().1
    }

    pub fn chunk_count(&self) -> u64 {
        lock(&self.inner.accounting).index.len() as u64 + self.inner.packs.usage().0
    }

    /// Every chunk id held (chunk files and packed chunks).
    pub fn inventory(&self) -> Vec<String> {
        self.inventory_page(None, usize::MAX)
    }

    /// One page of the inventory: up to `max` chunk ids greater than `after` (from the
    /// first without), in order, from the in-memory indexes (chunk files and packed chunks
    /// merged; an id in both counts once). Listing page after page from the last id of the
    /// previous one visits every chunk held the whole time, without a list of all of them.
    pub fn inventory_page(&self, after: Option<&str>, max: usize) -> Vec<String> {
        let max = max.max(1);
        let mut ids = crate::pack::ids_after(&lock(&self.inner.accounting).index, after, max);
        ids.extend(self.inner.packs.ids_after(after, max));
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(max);
        ids
    }

    /// Start writing chunk `id`. Feed pieces with [`ChunkWriter::write`], then call
    /// [`ChunkWriter::finish`]; dropping the writer before that abandons the write.
    pub fn begin_write(&self, id: &str) -> Result<ChunkWriter, StoreError> {
        validate_chunk_id(id)?;
        Ok(ChunkWriter {
            chunk_id: id.to_string(),
            inner: Arc::clone(&self.inner),
            span: Span::current(),
            gathered: Vec::new(),
            joining: Default::default(),
            tx: None,
            handle: None,
        })
    }

    /// Open chunk `id` for reading, healing the primary from the backup if needed.
    pub async fn open_read(&self, id: &str) -> Result<ChunkReader, StoreError> {
        validate_chunk_id(id)?;
        let inner = Arc::clone(&self.inner);
        let chunk_id = id.to_string();
        blocking(move || {
            if let Some(loc) = inner.packs.locate(&chunk_id) {
                let data = inner.open_packed(&chunk_id, loc)?;
                return Ok(ChunkReader(Source::Packed(data)));
            }
            let (file, trailer, primary_problem) = inner.open_blocking(&chunk_id)?;
            Ok(ChunkReader(Source::File(FileReader {
                inner,
                chunk_id,
                file,
                trailer,
                primary_problem,
                direct: DirectRead::Untried,
                offset: 0,
                end: u64::MAX,
                piece: dfs_common::STREAM_PIECE,
                recovered: false,
                done: false,
            })))
        })
        .await
    }

    /// Remove chunk `id` (primary and backup). Idempotent: returns whether anything was there.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        validate_chunk_id(id)?;
        let inner = Arc::clone(&self.inner);
        let chunk_id = id.to_string();
        blocking(move || inner.delete_blocking(&chunk_id)).await
    }
}

/// How many bytes of chunk data the filesystems hold by `measure` (their size, or their free
/// space): the data directory's, or with backups the least of the two, halved when both
/// copies share one filesystem. `None` if a filesystem cannot be measured.
pub fn per_copy(
    data: &Path,
    backup: Option<&Path>,
    measure: impl Fn(&dfs_common::promtext::FsStats) -> u64,
) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let of = |p: &Path| dfs_common::promtext::fs_stats(p).map(|f| measure(&f));
    let primary = of(data)?;
    let Some(backup) = backup else {
        return Some(primary);
    };
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    match dev(data) {
        Some(d) if dev(backup) == Some(d) => Some(primary / 2),
        _ => Some(primary.min(of(backup)?)),
    }
}

/// Create `root` and its 256 fan-out directories, durably.
fn prepare_root(root: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(root).map_err(io_err("create directory", root))?;
    let mut created = false;
    for i in 0..=255u8 {
        let dir = root.join(format!("{i:02x}"));
        match fs::create_dir(&dir) {
            Ok(()) => created = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", &dir)(e)),
        }
    }
    if created {
        fsync_dir(root)?;
        if let Some(parent) = root.parent() {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Index the chunk files under `root` (sizes from file lengths; contents are checked on
/// read) and remove leftover temp files.
fn scan_root(root: &Path, acc: &mut Accounting) -> Result<(), StoreError> {
    for i in 0..=255u8 {
        let dir = root.join(format!("{i:02x}"));
        let entries = fs::read_dir(&dir).map_err(io_err("list", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".tmp") {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed temp file left by an interrupted write")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover temp file")
                    }
                }
                continue;
            }
            if validate_chunk_id(name).is_err() || !name.starts_with(&format!("{i:02x}")) {
                continue;
            }
            if acc.index.contains_key(name) {
                continue;
            }
            let len = entry
                .metadata()
                .map_err(io_err("stat", &entry.path()))?
                .len();
            // A file of impossible length is still listed: a read will heal or quarantine it.
            let size = size_from_file_len(len).unwrap_or(0);
            acc.index.insert(name.to_string(), size);
            acc.used += size;
        }
    }
    Ok(())
}

fn chunk_dir(root: &Path, id: &str) -> PathBuf {
    root.join(&id[..2])
}

fn chunk_path(root: &Path, id: &str) -> PathBuf {
    chunk_dir(root, id).join(id)
}

/// Releases a write's reserved bytes when dropped.
struct Reservation<'a> {
    inner: &'a Inner,
    bytes: u64,
}

impl Reservation<'_> {
    fn grow(&mut self, n: u64) -> Result<(), StoreError> {
        let packed = self.inner.packs.usage().1;
        let mut acc = lock(&self.inner.accounting);
        let want = acc.used + packed + acc.reserved + n;
        if want > self.inner.capacity {
            return Err(StoreError::Full {
                used: acc.used + packed + acc.reserved,
                capacity: self.inner.capacity,
            });
        }
        acc.reserved += n;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut acc = lock(&self.inner.accounting);
        acc.reserved = acc.reserved.saturating_sub(self.bytes);
    }
}

/// A message from the network side of a write to its disk side.
enum Cmd {
    Data(Bytes),
    Finish,
}

impl Inner {
    fn next_nonce(&self) -> u64 {
        (u64::from(std::process::id()) << 32) | self.nonce.fetch_add(1, Ordering::Relaxed)
    }

    fn chunk_lock(&self, id: &str) -> MutexGuard<'_, ()> {
        let i = crc32c::crc32c(id.as_bytes()) as usize % LOCK_STRIPES;
        lock(&self.locks[i])
    }

    /// Update the stored-chunk gauges (`acc` is the locked accounting).
    fn set_gauges(&self, acc: &Accounting) {
        let (packed, packed_bytes) = self.packs.usage();
        self.metrics
            .bytes_stored
            .store(acc.used + packed_bytes, Ordering::Relaxed);
        self.metrics
            .chunks_stored
            .store(acc.index.len() as u64 + packed, Ordering::Relaxed);
    }

    fn remember(&self, id: &str, size: u64) {
        let mut acc = lock(&self.accounting);
        if let Some(old) = acc.index.insert(id.to_string(), size) {
            acc.used -= old.min(acc.used);
        }
        acc.used += size;
        self.set_gauges(&acc);
    }

    fn forget(&self, id: &str) -> bool {
        let mut acc = lock(&self.accounting);
        let had = acc.index.remove(id);
        if let Some(size) = had {
            acc.used -= size.min(acc.used);
        }
        self.set_gauges(&acc);
        had.is_some()
    }

    /// The disk side of a write: temp files, checksums, fsync, install.
    fn write_blocking(
        &self,
        id: &str,
        mut rx: mpsc::Receiver<Cmd>,
    ) -> Result<ChunkMeta, StoreError> {
        let nonce = self.next_nonce();
        let mut primary = TempFile::create(&chunk_dir(&self.primary, id), id, nonce)?;
        let mut backup = match &self.backup {
            Some(root) => Some(TempFile::create(&chunk_dir(root, id), id, nonce)?),
            None => None,
        };
        let mut reservation = Reservation {
            inner: self,
            bytes: 0,
        };
        let trailer = {
            let temps: Vec<&TempFile> = std::iter::once(&primary).chain(&backup).collect();
            let err = append_err(&temps);
            let mut out = AppendFiles::new(temps.iter().map(|t| &t.file));
            let mut crcs = BlockCrcs::default();
            loop {
                match rx.blocking_recv() {
                    Some(Cmd::Data(buf)) => {
                        let n = buf.len() as u64;
                        if crcs.total + n > MAX_CHUNK_SIZE {
                            return Err(StoreError::TooLarge {
                                max: MAX_CHUNK_SIZE,
                            });
                        }
                        reservation.grow(n)?;
                        out.write(&buf).map_err(&err)?;
                        crcs.update(&buf);
                    }
                    Some(Cmd::Finish) => break,
                    None => return Err(StoreError::Aborted(id.to_string())),
                }
            }
            drop(rx);
            let trailer = crcs.finish();
            out.write(&trailer.encode()).map_err(&err)?;
            out.flush().map_err(&err)?;
            trailer
        };
        // Only the primary is fsynced before the acknowledgment (see the module doc on backups;
        // the backup's direct pieces have reached the device, its buffered tail has not).
        primary.sync()?;
        let _guard = self.chunk_lock(id);
        if let Some(loc) = self.packs.locate(id) {
            // Packed by an earlier write (when `pack_max` was larger): that copy stays, and
            // the temp files go.
            // Compared through either copy: a bad primary is a read problem, not a conflict.
            let same = |root: usize| self.read_record(root, loc, id).map(|(_, t)| t == trailer);
            let compared = match (same(0), self.backup.is_some()) {
                (Err(_), true) => same(1),
                (r, _) => r,
            };
            return match compared {
                Ok(true) => Ok(trailer.meta()),
                Ok(false) => Err(StoreError::Conflict(id.to_string())),
                Err(bad) => Err(StoreError::Io {
                    op: "read",
                    path: self.primary.join("packs"),
                    source: io::Error::other(format!("packed copy of {id}: {bad}")),
                }),
            };
        }
        self.install_primary(id, &mut primary, &trailer)?;
        self.remember(id, trailer.size);
        if let Some(b) = backup.as_mut() {
            let target = b.dir.join(id);
            fs::rename(&b.path, &target).map_err(io_err("rename into place", &target))?;
            b.installed = true;
        }
        Ok(trailer.meta())
    }

    /// Put a complete temp file under the primary name. An existing chunk with the same
    /// checksums (a retried write) is replaced by the fresh copy; one with different content
    /// is a conflict.
    fn install_primary(
        &self,
        id: &str,
        tmp: &mut TempFile,
        trailer: &Trailer,
    ) -> Result<(), StoreError> {
        let target = chunk_path(&self.primary, id);
        match fs::hard_link(&tmp.path, &target) {
            Ok(()) => {
                tmp.installed = true;
                if let Err(e) = fs::remove_file(&tmp.path) {
                    tracing::warn!(path = %tmp.path.display(), error = %e, "cannot remove temp name");
                }
                fsync_dir(&tmp.dir)
            }
            // Already there (a retry or a concurrent writer), or no hard links on this
            // filesystem: compare, then replace.
            Err(_) => {
                if let Ok((_, existing)) = Trailer::read_path(&target) {
                    if existing != *trailer {
                        return Err(StoreError::Conflict(id.to_string()));
                    }
                }
                install(tmp, &target)
            }
        }
    }

    /// Write a small chunk, gathered whole, as a pack record (see `pack`): one append to the
    /// current pack, durable when the writer's next fdatasync returns.
    async fn write_packed(
        inner: &Arc<Inner>,
        id: &str,
        pieces: Vec<Bytes>,
    ) -> Result<ChunkMeta, StoreError> {
        let _writing = PackingGuard::enter(inner, id)?;
        let size: u64 = pieces.iter().map(|p| p.len() as u64).sum();
        let mut crcs = BlockCrcs::default();
        let mut image = Vec::with_capacity(file_len(size) as usize);
        for p in &pieces {
            crcs.update(p);
            image.extend_from_slice(p);
        }
        let trailer = crcs.finish();
        image.extend_from_slice(&trailer.encode());
        if let Some(loc) = inner.packs.locate(id) {
            // A retried write: the same checksums are a success, others a conflict; a copy
            // that cannot be read is written again (the new record supersedes it).
            let (inner2, chunk_id) = (Arc::clone(inner), id.to_string());
            let existing = move || Ok(inner2.read_record(0, loc, &chunk_id).ok().map(|(_, t)| t));
            match blocking(existing).await? {
                Some(t) if t == trailer => return Ok(trailer.meta()),
                Some(_) => return Err(StoreError::Conflict(id.to_string())),
                None => {}
            }
        }
        let mut reservation = Reservation {
            inner: inner.as_ref(),
            bytes: 0,
        };
        reservation.grow(size)?;
        // Once queued, the record is written and indexed (and so counted) by the pack writer
        // even if this caller goes away.
        let appended = inner.packs.append(id, image).await;
        inner.set_gauges(&lock(&inner.accounting));
        appended.map_err(io_err("append to a pack in", &inner.primary.join("packs")))?;
        drop(reservation);
        Ok(trailer.meta())
    }

    /// Root `root`'s copy of packed chunk `id`, verified: its image and trailer.
    fn read_record(&self, root: usize, loc: Loc, id: &str) -> Result<(Vec<u8>, Trailer), Bad> {
        match self.packs.read(root, loc, id)? {
            RecordRead::Missing | RecordRead::Deleted => Err(Bad::Missing),
            RecordRead::Bad(reason) => Err(Bad::Corrupt(reason)),
            RecordRead::Image(image) => {
                Ok((Trailer::verify_image(&image)?, image)).map(|(t, image)| (image, t))
            }
        }
    }

    /// The data of packed chunk `id`, verified: from the primary record, else from the
    /// backup record, which then restores the primary. Blocking.
    fn open_packed(&self, id: &str, mut loc: Loc) -> Result<Bytes, StoreError> {
        let data = |mut image: Vec<u8>, t: &Trailer| {
            image.truncate(t.size as usize);
            Bytes::from(image)
        };
        // A record written again meanwhile (a retry after a failed read) moves the chunk:
        // follow it a couple of times before concluding anything.
        for _ in 0..3 {
            let problem = match self.read_record(0, loc, id) {
                Ok((image, t)) => return Ok(data(image, &t)),
                Err(bad) => bad,
            };
            self.count_failure(&problem);
            let backup_problem = match self.backup.is_some() {
                false => None,
                true => match self.read_record(1, loc, id) {
                    Ok((image, t)) => {
                        self.restore_packed(id, loc, &image, &problem);
                        return Ok(data(image, &t));
                    }
                    Err(bad) => {
                        self.count_failure(&bad);
                        Some(bad)
                    }
                },
            };
            match self.packs.locate(id) {
                None => return Err(StoreError::NotFound(id.to_string())),
                Some(now) if now != loc => loc = now,
                Some(_) => {
                    return Err(self.give_up_at(id, Some(loc), &problem, backup_problem.as_ref()))
                }
            }
        }
        Err(StoreError::Io {
            op: "read",
            path: self.primary.join("packs"),
            source: io::Error::other("the chunk kept moving between pack records"),
        })
    }

    /// Write the verified backup copy of packed chunk `id` over its bad primary copy.
    fn restore_packed(&self, id: &str, loc: Loc, image: &[u8], problem: &Bad) {
        let _guard = self.chunk_lock(id);
        match self.packs.rewrite(0, loc, id, image) {
            Ok(()) => {
                Metrics::inc(&self.metrics.backup_restores_total);
                tracing::warn!(chunk_id = %id, problem = %problem, "packed primary copy restored from backup");
            }
            Err(e) => {
                tracing::warn!(chunk_id = %id, problem = %problem, error = %e, "cannot restore packed primary copy; serving the verified backup")
            }
        }
    }

    /// Find a readable copy of `id`: the primary, else a primary restored from the backup,
    /// else the backup itself. Returns the file, its trailer and whether it is the backup.
    fn open_blocking(&self, id: &str) -> Result<(File, Trailer, Option<Bad>), StoreError> {
        let path = chunk_path(&self.primary, id);
        match Trailer::read_path(&path) {
            Ok((file, trailer)) => Ok((file, trailer, None)),
            Err(bad) => {
                self.count_failure(&bad);
                self.recover(id, None, &bad)
            }
        }
    }

    fn count_failure(&self, bad: &Bad) {
        if matches!(bad, Bad::Corrupt(_)) {
            Metrics::inc(&self.metrics.checksum_failures_total);
        }
    }

    /// Neither copy of `id` is usable. Only proven damage (a failed check, a missing copy
    /// next to a corrupt one) is data loss, which quarantines the copies; an IO error (out of
    /// file descriptors, a flaky disk) is reported as such and changes nothing.
    fn give_up(&self, id: &str, primary: &Bad, backup: Option<&Bad>) -> StoreError {
        self.give_up_at(id, None, primary, backup)
    }

    /// `give_up` for a chunk file (`packed` None) or the packed record at `packed`.
    fn give_up_at(
        &self,
        id: &str,
        packed: Option<Loc>,
        primary: &Bad,
        backup: Option<&Bad>,
    ) -> StoreError {
        let io = [Some(primary), backup]
            .into_iter()
            .flatten()
            .find_map(|b| match b {
                Bad::Io(e) => Some(io::Error::new(e.kind(), e.to_string())),
                _ => None,
            });
        if let Some(source) = io {
            tracing::error!(chunk_id = %id, primary = %primary, backup = ?backup.map(|b| b.to_string()), "cannot read chunk");
            return StoreError::Io {
                op: "read",
                path: chunk_path(&self.primary, id),
                source,
            };
        }
        if matches!(primary, Bad::Missing) && backup.is_none_or(|b| matches!(b, Bad::Missing)) {
            self.forget(id);
            return StoreError::NotFound(id.to_string());
        }
        let reason = match backup {
            Some(b) => format!("primary copy {primary}; backup copy {b}"),
            None => format!("primary copy {primary}; backups are disabled"),
        };
        tracing::error!(chunk_id = %id, reason = %reason, "no good copy of chunk left");
        self.lost(id, packed, reason)
    }

    /// The primary of `id` is bad (`problem`): restore it from the backup and return the
    /// restored file. `expected` is the trailer of the bad primary when it was readable: the
    /// backup must match it (bytes may already have been sent from the primary).
    fn recover(
        &self,
        id: &str,
        expected: Option<&Trailer>,
        problem: &Bad,
    ) -> Result<(File, Trailer, Option<Bad>), StoreError> {
        let Some(backup_root) = &self.backup else {
            return Err(self.give_up(id, problem, None));
        };
        let (bfile, btrailer) = match Trailer::read_path(&chunk_path(backup_root, id)) {
            Ok(found) => found,
            Err(bbad) => {
                self.count_failure(&bbad);
                return Err(self.give_up(id, problem, Some(&bbad)));
            }
        };
        if expected.is_some_and(|t| *t != btrailer) {
            let differs = Bad::Corrupt("differs from the primary copy".into());
            return Err(self.give_up(id, problem, Some(&differs)));
        }
        match self.restore(id, &bfile, &btrailer) {
            Ok(file) => {
                Metrics::inc(&self.metrics.backup_restores_total);
                tracing::warn!(chunk_id = %id, problem = %problem, "primary copy restored from backup");
                Ok((file, btrailer, None))
            }
            Err(Restore::BackupBad(bbad)) => {
                self.count_failure(&bbad);
                Err(self.give_up(id, problem, Some(&bbad)))
            }
            Err(Restore::Gone) => {
                self.forget(id);
                Err(StoreError::NotFound(id.to_string()))
            }
            Err(Restore::Failed(e)) => {
                tracing::warn!(chunk_id = %id, problem = %problem, error = %e, "cannot restore primary copy; serving the verified backup");
                Ok((bfile, btrailer, Some(problem.dup())))
            }
        }
    }

    /// Copy the backup to a new primary, verifying every block, and install it.
    fn restore(&self, id: &str, bfile: &File, trailer: &Trailer) -> Result<File, Restore> {
        let mut tmp = TempFile::create(&chunk_dir(&self.primary, id), id, self.next_nonce())
            .map_err(Restore::Failed)?;
        {
            let temps = [&tmp];
            let err = append_err(&temps);
            let mut out = AppendFiles::new(temps.iter().map(|t| &t.file));
            let piece = dfs_common::STREAM_PIECE.max(BLOCK_SIZE) / BLOCK_SIZE * BLOCK_SIZE;
            let mut offset = 0u64;
            while offset < trailer.size {
                let n = (trailer.size - offset).min(piece as u64) as usize;
                let buf = trailer
                    .read_verified(bfile, offset, n)
                    .map_err(Restore::BackupBad)?;
                out.write(&buf).map_err(|e| Restore::Failed(err(e)))?;
                offset += n as u64;
            }
            out.write(&trailer.encode())
                .and_then(|()| out.flush())
                .map_err(|e| Restore::Failed(err(e)))?;
        }
        tmp.sync().map_err(Restore::Failed)?;
        let target = chunk_path(&self.primary, id);
        let _guard = self.chunk_lock(id);
        // Deleted meanwhile: do not bring it back.
        let backup_present = self
            .backup
            .as_ref()
            .is_some_and(|b| chunk_path(b, id).exists());
        if !backup_present {
            return Err(Restore::Gone);
        }
        install(&mut tmp, &target).map_err(Restore::Failed)?;
        File::open(&target).map_err(|e| Restore::Failed(io_err("open", &target)(e)))
    }

    /// No good copy of `id` is left: move the bad copies aside, drop it from the inventory.
    fn lost(&self, id: &str, packed: Option<Loc>, reason: String) -> StoreError {
        let _guard = self.chunk_lock(id);
        match packed {
            Some(loc) => {
                // Keep the bad bytes, as for chunk files, before the record's pages are freed.
                for (i, root) in std::iter::once(&self.primary)
                    .chain(&self.backup)
                    .enumerate()
                {
                    if let Ok(RecordRead::Image(image)) = self.packs.read(i, loc, id) {
                        quarantine_bytes(root, id, &image);
                    }
                }
                if let Err(e) = self.packs.retire(id, loc) {
                    tracing::warn!(chunk_id = %id, error = %e, "cannot mark a lost packed chunk deleted");
                }
            }
            None => {
                for root in std::iter::once(&self.primary).chain(self.backup.as_ref()) {
                    quarantine(root, id);
                }
            }
        }
        drop(_guard);
        self.forget(id);
        StoreError::DataLoss {
            chunk_id: id.to_string(),
            reason,
        }
    }

    fn delete_blocking(&self, id: &str) -> Result<bool, StoreError> {
        let _guard = self.chunk_lock(id);
        let mut existed = self
            .packs
            .delete(id)
            .map_err(io_err("delete from pack", &self.primary.join("packs")))?;
        for root in std::iter::once(&self.primary).chain(self.backup.as_ref()) {
            let path = chunk_path(root, id);
            match fs::remove_file(&path) {
                Ok(()) => {
                    existed = true;
                    fsync_dir(&chunk_dir(root, id))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        drop(_guard);
        let indexed = self.forget(id);
        if existed {
            Metrics::inc(&self.metrics.deletes_total);
        }
        Ok(existed || indexed)
    }
}

/// Marks a chunk as being packed, so two writes of it never append two records at once.
struct PackingGuard<'a> {
    inner: &'a Inner,
    id: String,
}

impl<'a> PackingGuard<'a> {
    fn enter(inner: &'a Inner, id: &str) -> Result<Self, StoreError> {
        if !lock(&inner.packing).insert(id.to_string()) {
            return Err(StoreError::Busy(id.to_string()));
        }
        Ok(Self {
            inner,
            id: id.to_string(),
        })
    }
}

impl Drop for PackingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.packing).remove(&self.id);
    }
}

/// Why restoring a primary from its backup did not happen.
enum Restore {
    /// The backup failed verification while being copied.
    BackupBad(Bad),
    /// The chunk was deleted meanwhile.
    Gone,
    /// Writing the new primary failed (the backup itself is fine).
    Failed(StoreError),
}

/// Rename a synced temp file over `target` and make the rename durable.
fn install(tmp: &mut TempFile, target: &Path) -> Result<(), StoreError> {
    fs::rename(&tmp.path, target).map_err(io_err("rename into place", target))?;
    tmp.installed = true;
    fsync_dir(&tmp.dir)
}

/// Move a bad copy of `id` under `<root>/../quarantine/` (best effort).
fn quarantine(root: &Path, id: &str) {
    let path = chunk_path(root, id);
    if !path.exists() {
        return;
    }
    let qdir = root.parent().unwrap_or(root).join("quarantine");
    let dest = qdir.join(format!("{id}.{}", now_ms()));
    let moved = fs::create_dir_all(&qdir).and_then(|()| fs::rename(&path, &dest));
    match moved {
        Ok(()) => {
            tracing::warn!(chunk_id = %id, to = %dest.display(), "bad chunk copy moved to quarantine");
            let _ = dfs_common::durable::fsync_dir(&chunk_dir(root, id));
        }
        Err(e) => {
            tracing::error!(chunk_id = %id, path = %path.display(), error = %e, "cannot quarantine bad chunk copy")
        }
    }
}

/// Write the bad copy `image` of packed chunk `id` under `<root>/../quarantine/` (best effort).
fn quarantine_bytes(root: &Path, id: &str, image: &[u8]) {
    let qdir = root.parent().unwrap_or(root).join("quarantine");
    let dest = qdir.join(format!("{id}.{}", now_ms()));
    match fs::create_dir_all(&qdir).and_then(|()| fs::write(&dest, image)) {
        Ok(()) => {
            tracing::warn!(chunk_id = %id, to = %dest.display(), "bad packed chunk copy saved to quarantine")
        }
        Err(e) => {
            tracing::error!(chunk_id = %id, error = %e, "cannot quarantine bad packed chunk copy")
        }
    }
}

/// The network side of a write in progress.
pub struct ChunkWriter {
    chunk_id: String,
    inner: Arc<Inner>,
    span: Span,
    /// Pieces received before the disk side started (see `GATHER_LIMIT`): with `joining`,
    /// at most `QUEUE_DEPTH`, so they always fit in the queue when it starts.
    gathered: Vec<Bytes>,
    /// Small pieces joined into one (each byte is copied once), the next gathered piece.
    joining: dfs_proto::bytes::BytesMut,
    tx: Option<mpsc::Sender<Cmd>>,
    handle: Option<tokio::task::JoinHandle<Result<ChunkMeta, StoreError>>>,
}

impl ChunkWriter {
    /// Queue one piece for the disk (waits while the disk is behind: bounded memory).
    pub async fn write(&mut self, data: impl Into<Bytes>) -> Result<(), StoreError> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        if self.handle.is_none() {
            if self.gather(data.clone()) {
                return Ok(());
            }
            self.start();
        }
        let sent = match &self.tx {
            Some(tx) => tx.send(Cmd::Data(data)).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self
                .outcome()
                .await
                .err()
                .unwrap_or_else(|| StoreError::Internal("chunk writer ended early".into())))
        }
    }

    /// Keep `data` in memory if the chunk may still be gathered whole; false if not (then
    /// nothing was kept).
    fn gather(&mut self, data: Bytes) -> bool {
        let held = self.gathered.iter().map(Bytes::len).sum::<usize>() + self.joining.len();
        let pieces = self.gathered.len() + usize::from(!self.joining.is_empty());
        if held + data.len() > GATHER_LIMIT {
            return false;
        }
        if data.len() < BLOCK_SIZE && (!self.joining.is_empty() || pieces < QUEUE_DEPTH) {
            self.joining.extend_from_slice(&data);
            return true;
        }
        if pieces < QUEUE_DEPTH {
            self.seal_joining();
            self.gathered.push(data);
            return true;
        }
        false
    }

    fn seal_joining(&mut self) {
        if !self.joining.is_empty() {
            self.gathered.push(self.joining.split().freeze());
        }
    }

    /// Make the chunk durable (primary, then backup) and return its size and checksum.
    pub async fn finish(mut self) -> Result<ChunkMeta, StoreError> {
        if self.handle.is_none() {
            self.seal_joining();
            let size: usize = self.gathered.iter().map(Bytes::len).sum();
            // A chunk already here as a file (a retry) goes the file way, which compares it
            // and replaces a copy that cannot be read.
            let as_file = lock(&self.inner.accounting)
                .index
                .contains_key(&self.chunk_id);
            if self.inner.pack_max > 0 && size as u64 <= self.inner.pack_max && !as_file {
                let pieces = std::mem::take(&mut self.gathered);
                return Inner::write_packed(&self.inner, &self.chunk_id, pieces).await;
            }
            // Everything fits in memory: the disk side runs once, start to end.
            self.start();
        }
        if let Some(tx) = &self.tx {
            // If the worker already stopped, its error comes out of `outcome`.
            let _ = tx.send(Cmd::Finish).await;
        }
        self.outcome().await
    }

    /// Start the disk side, handing it what was gathered so far.
    fn start(&mut self) {
        self.seal_joining();
        // Room for every gathered piece and the `Finish` that may follow.
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH + 1);
        for piece in self.gathered.drain(..) {
            // Cannot fail: the queue has room and the worker has not started.
            let _ = tx.try_send(Cmd::Data(piece));
        }
        let inner = Arc::clone(&self.inner);
        let chunk_id = self.chunk_id.clone();
        let span = self.span.clone();
        self.handle = Some(tokio::task::spawn_blocking(move || {
            span.in_scope(|| inner.write_blocking(&chunk_id, rx))
        }));
        self.tx = Some(tx);
    }

    async fn outcome(&mut self) -> Result<ChunkMeta, StoreError> {
        self.tx = None;
        match self.handle.take() {
            Some(h) => h
                .await
                .map_err(|e| StoreError::Internal(format!("chunk writer task failed: {e}")))?,
            None => Err(StoreError::Aborted(self.chunk_id.clone())),
        }
    }
}

/// Whether a reader reads straight from the device.
enum DirectRead {
    Untried,
    /// A second, `O_DIRECT` descriptor of the copy being read.
    Open(File),
    Off,
}

/// An open, checked copy of a chunk, ready to stream.
pub struct ChunkReader(Source);

enum Source {
    File(FileReader),
    /// A packed chunk, read and verified whole when opened (it is at most one block).
    Packed(Bytes),
}

impl ChunkReader {
    /// Stream the chunk in verified pieces of about `piece` bytes (rounded to whole blocks).
    /// An error item ends the stream.
    pub fn stream(self, piece: usize) -> ChunkStream {
        match self.0 {
            Source::File(reader) => reader.stream(piece),
            Source::Packed(data) => ChunkStream {
                reader: None,
                pending: None,
                span: Span::current(),
                packed: (!data.is_empty()).then_some(data),
                skip: 0,
                left: None,
            },
        }
    }

    /// Stream `len` bytes from `start` (fewer at the end of the chunk; none past it). Only
    /// the checksum blocks the range touches are read and verified; the pieces carry exactly
    /// the range.
    pub fn stream_range(self, piece: usize, start: u64, len: u64) -> ChunkStream {
        match self.0 {
            Source::File(mut reader) => {
                let size = reader.trailer.size;
                let start = start.min(size);
                let stop = start.saturating_add(len).min(size);
                let block = BLOCK_SIZE as u64;
                reader.offset = start / block * block;
                reader.end = stop.div_ceil(block).saturating_mul(block).min(size);
                let skip = (start - reader.offset) as usize;
                let mut s = reader.stream(piece);
                s.skip = skip;
                s.left = Some(stop - start);
                s
            }
            Source::Packed(data) => {
                let start = (start as usize).min(data.len());
                let stop = (start as u64).saturating_add(len).min(data.len() as u64) as usize;
                let data = data.slice(start..stop);
                ChunkStream {
                    reader: None,
                    pending: None,
                    span: Span::current(),
                    packed: (!data.is_empty()).then_some(data),
                    skip: 0,
                    left: None,
                }
            }
        }
    }
}

/// A chunk file being read.
struct FileReader {
    inner: Arc<Inner>,
    chunk_id: String,
    file: File,
    trailer: Trailer,
    /// How big pieces are read (see `read_piece`).
    direct: DirectRead,
    /// Set while serving the backup copy: what was wrong with the primary.
    primary_problem: Option<Bad>,
    /// Next byte to send.
    offset: u64,
    /// Where reading stops (clamped to the chunk's size; block-aligned or the size).
    end: u64,
    /// Bytes per piece (whole blocks).
    piece: usize,
    /// A copy was already restored during this read.
    recovered: bool,
    /// The end or an error was reached.
    done: bool,
}

type PieceTask = tokio::task::JoinHandle<(FileReader, Option<Result<Bytes, StoreError>>)>;

/// The verified pieces of one chunk as an async stream. Each piece is read and checked on
/// the blocking pool, one piece ahead of the consumer; no thread waits on a slow client.
pub struct ChunkStream {
    reader: Option<FileReader>,
    pending: Option<PieceTask>,
    span: Span,
    /// A packed chunk's data, not yet handed out.
    packed: Option<Bytes>,
    /// Bytes to drop from the front of the next piece (a range starting inside a block).
    skip: usize,
    /// Bytes still to hand out (a range ending inside a block); `None`: all.
    left: Option<u64>,
}

impl FileReader {
    fn stream(mut self, piece: usize) -> ChunkStream {
        self.piece = piece.max(BLOCK_SIZE) / BLOCK_SIZE * BLOCK_SIZE;
        ChunkStream {
            reader: Some(self),
            pending: None,
            span: Span::current(),
            packed: None,
            skip: 0,
            left: None,
        }
    }

    /// Read and verify `n` bytes at the current offset: big chunks directly from the device
    /// (no page-cache copy), everything else through the page cache.
    fn read_piece(&mut self, n: usize) -> Result<Bytes, Bad> {
        if matches!(self.direct, DirectRead::Untried) {
            self.direct = match direct::worth_direct_read(self.trailer.size) {
                true => direct::reopen_direct(&self.file).map_or(DirectRead::Off, DirectRead::Open),
                false => DirectRead::Off,
            };
        }
        if let DirectRead::Open(file) = &self.direct {
            match direct::read_at(file, self.offset, n) {
                Ok(buf) if buf.len() == n => {
                    self.trailer.verify(&buf, self.offset)?;
                    return Ok(buf);
                }
                Ok(_) => return Err(Bad::Corrupt("truncated".into())),
                // Refused by the filesystem after all: read through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = DirectRead::Off,
                Err(e) => return Err(e.into()),
            }
        }
        self.trailer
            .read_verified(&self.file, self.offset, n)
            .map(Bytes::from)
    }

    /// Read and verify the next piece, switching to a good copy if this one fails.
    fn next_piece(&mut self) -> Option<Result<Bytes, StoreError>> {
        let size = self.trailer.size.min(self.end);
        while !self.done && self.offset < size {
            let n = (size - self.offset).min(self.piece as u64) as usize;
            let bad = match self.read_piece(n) {
                Ok(buf) => {
                    self.offset += n as u64;
                    return Some(Ok(buf));
                }
                Err(bad) => bad,
            };
            self.inner.count_failure(&bad);
            let err = if let Some(primary) = &self.primary_problem {
                // The backup was the last copy left.
                self.inner.give_up(&self.chunk_id, primary, Some(&bad))
            } else if self.recovered {
                // A copy restored and verified moments ago fails: conclude nothing about the
                // copies; the next read checks them again.
                tracing::error!(chunk_id = %self.chunk_id, problem = %bad, "restored chunk copy failed again");
                match bad {
                    Bad::Io(source) => StoreError::Io {
                        op: "read",
                        path: chunk_path(&self.inner.primary, &self.chunk_id),
                        source,
                    },
                    _ => StoreError::DataLoss {
                        chunk_id: self.chunk_id.clone(),
                        reason: format!("restored copy {bad}"),
                    },
                }
            } else {
                match self
                    .inner
                    .recover(&self.chunk_id, Some(&self.trailer), &bad)
                {
                    Ok((file, trailer, primary_problem)) => {
                        self.recovered = true;
                        self.file = file;
                        self.direct = DirectRead::Untried;
                        self.trailer = trailer;
                        self.primary_problem = primary_problem;
                        continue;
                    }
                    Err(e) => e,
                }
            };
            self.done = true;
            return Some(Err(err));
        }
        self.done = true;
        None
    }
}

impl ChunkStream {
    fn spawn_next(&mut self) {
        if let Some(mut reader) = self.reader.take() {
            if reader.done {
                self.reader = Some(reader);
                return;
            }
            let span = self.span.clone();
            self.pending = Some(tokio::task::spawn_blocking(move || {
                let item = span.in_scope(|| reader.next_piece());
                (reader, item)
            }));
        }
    }
}

impl futures::Stream for ChunkStream {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.left == Some(0) {
            return Poll::Ready(None);
        }
        if let Some(data) = this.packed.take() {
            return Poll::Ready(Some(Ok(data)));
        }
        if this.pending.is_none() {
            this.spawn_next();
        }
        let Some(task) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let joined = match std::pin::Pin::new(task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(joined) => joined,
        };
        this.pending = None;
        match joined {
            Ok((reader, item)) => {
                this.reader = Some(reader);
                let item = match item {
                    Some(Ok(mut data)) => {
                        // Trim a range to its exact bytes.
                        let skip = std::mem::take(&mut this.skip).min(data.len());
                        data = data.slice(skip..);
                        if let Some(left) = this.left.as_mut() {
                            let keep = (*left).min(data.len() as u64);
                            data.truncate(keep as usize);
                            *left -= keep;
                        }
                        Some(Ok(data))
                    }
                    other => other,
                };
                if matches!(item, Some(Ok(_))) && this.left != Some(0) {
                    // Read ahead while the consumer sends this piece.
                    this.spawn_next();
                }
                Poll::Ready(item)
            }
            Err(e) => Poll::Ready(Some(Err(StoreError::Internal(format!(
                "chunk read task failed: {e}"
            ))))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    const ID: &str = "0a1b2c3d-1111-4222-8333-444455556666";

    /// A store in `dir` where every chunk gets a file (these tests look at chunk files).
    fn open(dir: &Path, capacity: u64, backups: bool) -> (Store, Arc<Metrics>) {
        open_with(dir, capacity, backups, 0)
    }

    pub(crate) fn open_with(
        dir: &Path,
        capacity: u64,
        backups: bool,
        pack_max: u64,
    ) -> (Store, Arc<Metrics>) {
        let metrics = Metrics::new();
        let store = Store::open(
            StoreConfig {
                data_dir: dir.to_path_buf(),
                backup_dir: backups.then(|| dir.join("backups")),
                capacity,
                pack_max,
            },
            Arc::clone(&metrics),
        )
        .unwrap();
        (store, metrics)
    }

    /// Deterministic, non-repeating test bytes.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def0u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    pub(crate) async fn put(
        store: &Store,
        id: &str,
        data: &[u8],
        piece: usize,
    ) -> Result<ChunkMeta, StoreError> {
        let mut w = store.begin_write(id)?;
        for p in data.chunks(piece.max(1)) {
            w.write(p.to_vec()).await?;
        }
        w.finish().await
    }

    async fn get_range(store: &Store, id: &str, start: u64, len: u64) -> Vec<u8> {
        let reader = store.open_read(id).await.unwrap();
        let mut pieces = reader.stream_range(BLOCK_SIZE, start, len);
        let mut out = Vec::new();
        while let Some(piece) = futures::StreamExt::next(&mut pieces).await {
            out.extend_from_slice(&piece.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn ranged_reads_return_exactly_the_range_from_files_and_packs() {
        let dir = tempfile::tempdir().unwrap();
        // A chunk file (several blocks) and a packed chunk (pack_max one block).
        let (store, _) = open_with(dir.path(), 1 << 30, false, BLOCK_SIZE as u64);
        let big = pattern(3 * BLOCK_SIZE + 77);
        let small = pattern(1000);
        let small_id = "0a1b2c3d-1111-4222-8333-444455556667";
        put(&store, ID, &big, 4096).await.unwrap();
        put(&store, small_id, &small, 4096).await.unwrap();
        let b = BLOCK_SIZE as u64;
        for (data, id) in [(&big, ID), (&small, small_id)] {
            let n = data.len() as u64;
            for (start, len) in [
                (0, n),
                (0, 1),
                (1, 10),
                (b - 1, 2),
                (b, b),
                (b / 2, 2 * b + 5),
                (n - 1, 100),
                (n, 5),
                (n + 10, 5),
                (7, 0),
                (3, u64::MAX),
            ] {
                let from = start.min(n) as usize;
                let to = start.saturating_add(len).min(n) as usize;
                assert_eq!(
                    get_range(&store, id, start, len).await,
                    &data[from..to],
                    "{id} start {start} len {len}"
                );
            }
        }
    }

    pub(crate) async fn get(store: &Store, id: &str) -> Result<Vec<u8>, StoreError> {
        let reader = store.open_read(id).await?;
        let mut pieces = reader.stream(dfs_common::STREAM_PIECE);
        let mut out = Vec::new();
        while let Some(piece) = futures::StreamExt::next(&mut pieces).await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    fn primary(dir: &Path, id: &str) -> PathBuf {
        dir.join("chunks").join(&id[..2]).join(id)
    }

    fn backup(dir: &Path, id: &str) -> PathBuf {
        dir.join("backups/chunks").join(&id[..2]).join(id)
    }

    fn temp_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().ends_with(".tmp") {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Flip one bit of the byte at `offset` of `path` (damage on disk).
    pub(crate) fn flip_byte(path: &Path, offset: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, offset).unwrap();
    }

    #[test]
    fn chunk_ids_are_checked_strictly() {
        assert!(validate_chunk_id(ID).is_ok());
        for bad in [
            "",
            "../../../../etc/passwd-000000000000",
            "0A1B2C3D-1111-4222-8333-444455556666",
            "0a1b2c3d11114222833344445555666600000",
            "------------------------------------",
            "0a1b2c3d-1111-4222-8333-44445555666",
            "0a1b2c3d-1111-4222-8333-4444555566667",
            "0a1b2c3d-1111-4222-8333-44445555666/",
            "0a1b2c3d-1111-4222-8333-44445555666\0",
            "0a1b2c3d-1111-4222-8333-44445555666é",
            "0a1b2c3d/1111-4222-8333-444455556666",
        ] {
            assert!(validate_chunk_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn size_and_file_length_agree() {
        for size in [
            0u64,
            1,
            65535,
            65536,
            65537,
            3 * 65536,
            1 << 20,
            MAX_CHUNK_SIZE,
        ] {
            assert_eq!(size_from_file_len(file_len(size)), Some(size), "{size}");
        }
        assert_eq!(size_from_file_len(3), None);
    }

    #[test]
    fn block_crcs_match_direct_crc_for_any_piece_size() {
        let data = pattern(5 * BLOCK_SIZE + 123);
        for piece in [1usize, 1000, BLOCK_SIZE, BLOCK_SIZE + 1, 1 << 20] {
            let mut c = BlockCrcs::default();
            for p in data.chunks(piece) {
                c.update(p);
            }
            let t = c.finish();
            assert_eq!(t.crc, crc32c::crc32c(&data));
            assert_eq!(t.blocks.len(), 6);
            assert_eq!(t.blocks[5], crc32c::crc32c(&data[5 * BLOCK_SIZE..]));
        }
        assert_eq!(BlockCrcs::default().finish().crc, 0);
        for len in [
            BLOCK_SIZE,
            2 * BLOCK_SIZE,
            7 * BLOCK_SIZE,
            7 * BLOCK_SIZE - 1,
        ] {
            let data = pattern(len);
            let mut c = BlockCrcs::default();
            c.update(&data);
            assert_eq!(c.finish().crc, crc32c::crc32c(&data), "{len}");
        }
    }

    #[tokio::test]
    async fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let (store, metrics) = open(d.path(), u64::MAX, true);
        for (i, len) in [0usize, 1, BLOCK_SIZE, 3 * 1024 * 1024 + 17]
            .into_iter()
            .enumerate()
        {
            let id = format!("0a1b2c3d-1111-4222-8333-44445555666{i}");
            let data = pattern(len);
            let meta = put(&store, &id, &data, 300_000).await.unwrap();
            assert_eq!(meta.size, len as u64);
            assert_eq!(meta.crc32c, crc32c::crc32c(&data));
            assert_eq!(get(&store, &id).await.unwrap(), data);
            assert!(primary(d.path(), &id).exists());
            assert!(backup(d.path(), &id).exists());
        }
        assert_eq!(store.chunk_count(), 4);
        let total = (1 + BLOCK_SIZE + 3 * 1024 * 1024 + 17) as u64;
        assert_eq!(store.used_bytes(), total);
        assert_eq!(metrics.bytes_stored.load(Ordering::Relaxed), total);
        assert!(temp_files(d.path()).is_empty());

        // A retry with the same bytes is fine; other bytes under the same id are not.
        let data = pattern(1000);
        put(&store, ID, &data, 100).await.unwrap();
        put(&store, ID, &data, 7).await.unwrap();
        let other = put(&store, ID, &pattern(999), 100).await;
        assert!(matches!(other, Err(StoreError::Conflict(_))), "{other:?}");
        assert_eq!(get(&store, ID).await.unwrap(), data);
        assert!(temp_files(d.path()).is_empty());

        // Reopening finds the same chunks.
        drop(store);
        let (store, _) = open(d.path(), u64::MAX, true);
        assert_eq!(store.chunk_count(), 5);
        assert_eq!(store.used_bytes(), total + 1000);
        let mut inv = store.inventory();
        inv.sort();
        assert!(inv.contains(&ID.to_string()));
    }

    #[tokio::test]
    async fn corrupted_primary_is_healed_from_backup() {
        let d = tempfile::tempdir().unwrap();
        let (store, metrics) = open(d.path(), u64::MAX, true);
        let data = pattern(2 * 1024 * 1024 + 5);
        put(&store, ID, &data, 1 << 20).await.unwrap();
        // Corrupt a byte in the second piece: the first piece is already streamed when the
        // damage is found, so the store must switch copies mid-stream.
        flip_byte(&primary(d.path(), ID), 1024 * 1024 + 77);
        assert_eq!(get(&store, ID).await.unwrap(), data);
        assert_eq!(metrics.checksum_failures_total.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.backup_restores_total.load(Ordering::Relaxed), 1);
        // The primary itself is good again.
        let (f, t) = Trailer::read_path(&primary(d.path(), ID)).unwrap();
        assert_eq!(t.read_verified(&f, 0, data.len()).unwrap(), data);
        assert_eq!(get(&store, ID).await.unwrap(), data);
        assert_eq!(metrics.backup_restores_total.load(Ordering::Relaxed), 1);
        assert!(temp_files(d.path()).is_empty());
    }

    #[tokio::test]
    async fn truncated_or_deleted_primary_is_restored() {
        let d = tempfile::tempdir().unwrap();
        let (store, metrics) = open(d.path(), u64::MAX, true);
        let data = pattern(300_000);
        put(&store, ID, &data, 65_000).await.unwrap();
        let p = primary(d.path(), ID);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(100_000)
            .unwrap();
        assert_eq!(get(&store, ID).await.unwrap(), data);
        fs::remove_file(&p).unwrap();
        assert_eq!(get(&store, ID).await.unwrap(), data);
        assert!(p.exists());
        assert_eq!(metrics.backup_restores_total.load(Ordering::Relaxed), 2);
        assert_eq!(metrics.checksum_failures_total.load(Ordering::Relaxed), 1);
        // A chunk with only its backup left is still in the inventory after a restart.
        fs::remove_file(&p).unwrap();
        drop(store);
        let (store, _) = open(d.path(), u64::MAX, true);
        assert_eq!(store.inventory(), vec![ID.to_string()]);
        assert_eq!(get(&store, ID).await.unwrap(), data);
    }

    #[tokio::test]
    async fn both_copies_bad_is_data_loss_never_wrong_bytes() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = open(d.path(), u64::MAX, true);
        let data = pattern(200_000);
        put(&store, ID, &data, 1 << 20).await.unwrap();
        flip_byte(&primary(d.path(), ID), 10);
        flip_byte(&backup(d.path(), ID), 150_000);
        let got = get(&store, ID).await;
        assert!(matches!(got, Err(StoreError::DataLoss { .. })), "{got:?}");
        // The bad copies are out of the way and out of the inventory.
        assert!(store.inventory().is_empty());
        assert!(!primary(d.path(), ID).exists());
        assert!(fs::read_dir(d.path().join("quarantine")).unwrap().count() == 1);
        assert!(matches!(
            get(&store, ID).await,
            Err(StoreError::NotFound(_))
        ));

        // Without backups, a corrupt chunk is data loss too.
        let d = tempfile::tempdir().unwrap();
        let (store, _) = open(d.path(), u64::MAX, false);
        put(&store, ID, &data, 1 << 20).await.unwrap();
        flip_byte(&primary(d.path(), ID), 199_999);
        assert!(matches!(
            get(&store, ID).await,
            Err(StoreError::DataLoss { .. })
        ));
        // Corrupt checksum table.
        put(&store, ID, &data, 1 << 20).await.unwrap();
        flip_byte(&primary(d.path(), ID), 200_001);
        assert!(matches!(
            get(&store, ID).await,
            Err(StoreError::DataLoss { .. })
        ));
    }

    #[tokio::test]
    async fn io_errors_are_not_mistaken_for_corruption() {
        let d = tempfile::tempdir().unwrap();
        let (store, metrics) = open(d.path(), u64::MAX, true);
        put(&store, ID, &pattern(1000), 1000).await.unwrap();
        // Unreadable (not corrupt) copies: directories where the files should be.
        for p in [primary(d.path(), ID), backup(d.path(), ID)] {
            fs::remove_file(&p).unwrap();
            fs::create_dir(&p).unwrap();
        }
        let got = get(&store, ID).await;
        assert!(matches!(got, Err(StoreError::Io { .. })), "{got:?}");
        assert_eq!(store.inventory(), vec![ID.to_string()]);
        assert!(primary(d.path(), ID).is_dir());
        assert!(!d.path().join("quarantine").exists());
        assert_eq!(metrics.checksum_failures_total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn disk_free_halves_when_the_backups_share_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let (alone, _) = open_with(&dir.path().join("a"), 1 << 30, false, 0);
        let (mirrored, _) = open_with(&dir.path().join("b"), 1 << 30, true, 0);
        let avail = dfs_common::promtext::fs_stats(dir.path())
            .unwrap()
            .avail_bytes;
        let (alone, mirrored) = (alone.disk_free().unwrap(), mirrored.disk_free().unwrap());
        // Other tests write meanwhile: compare within 10% of the filesystem's free space.
        let near = |a: u64, b: u64| a.abs_diff(b) <= avail / 10 + (1 << 20);
        assert!(near(alone, avail), "{alone} vs {avail}");
        assert!(near(mirrored * 2, alone), "{mirrored} x 2 vs {alone}");
    }

    #[tokio::test]
    async fn capacity_full_is_refused_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = open(d.path(), 1_000_000, true);
        put(&store, ID, &pattern(600_000), 100_000).await.unwrap();
        let id2 = "0a1b2c3d-1111-4222-8333-444455556667";
        let r = put(&store, id2, &pattern(600_000), 100_000).await;
        assert!(matches!(r, Err(StoreError::Full { .. })), "{r:?}");
        assert!(!primary(d.path(), id2).exists());
        assert!(!backup(d.path(), id2).exists());
        assert!(temp_files(d.path()).is_empty());
        assert_eq!(store.inventory(), vec![ID.to_string()]);
        assert_eq!(store.used_bytes(), 600_000);
        // The reservation was released: a chunk that fits still goes in.
        put(&store, id2, &pattern(400_000), 100_000).await.unwrap();
    }

    #[tokio::test]
    async fn too_large_and_abandoned_writes_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = open(d.path(), u64::MAX, true);
        let mut w = store.begin_write(ID).unwrap();
        let piece = vec![7u8; 1 << 20];
        let mut result = Ok(());
        for _ in 0..=64 {
            result = w.write(piece.clone()).await;
            if result.is_err() {
                break;
            }
        }
        let result = match result {
            Ok(()) => w.finish().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(
            matches!(result, Err(StoreError::TooLarge { .. })),
            "{result:?}"
        );

        let mut w = store.begin_write(ID).unwrap();
        w.write(vec![1u8; 1000]).await.unwrap();
        drop(w); // the client went away mid-transfer
        for _ in 0..100 {
            if temp_files(d.path()).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(temp_files(d.path()).is_empty());
        assert!(!primary(d.path(), ID).exists());
        assert!(store.inventory().is_empty());
    }

    #[tokio::test]
    async fn delete_is_idempotent_and_bad_ids_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = open(d.path(), u64::MAX, true);
        put(&store, ID, &pattern(10), 10).await.unwrap();
        assert!(store.delete(ID).await.unwrap());
        assert!(!store.delete(ID).await.unwrap());
        assert!(!primary(d.path(), ID).exists() && !backup(d.path(), ID).exists());
        assert!(matches!(
            get(&store, ID).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.used_bytes(), 0);
        let bad = "../../etc/passwd";
        assert!(matches!(
            store.begin_write(bad),
            Err(StoreError::InvalidChunkId(_))
        ));
        assert!(matches!(
            store.open_read(bad).await,
            Err(StoreError::InvalidChunkId(_))
        ));
        assert!(matches!(
            store.delete(bad).await,
            Err(StoreError::InvalidChunkId(_))
        ));
    }

    #[tokio::test]
    async fn leftover_temp_files_are_cleaned_at_start() {
        let d = tempfile::tempdir().unwrap();
        let (store, _) = open(d.path(), u64::MAX, true);
        drop(store);
        let stale = d.path().join("chunks/0a").join(format!(".{ID}.5.tmp"));
        fs::write(&stale, b"half a chunk").unwrap();
        let (store, _) = open(d.path(), u64::MAX, true);
        assert!(!stale.exists());
        assert!(store.inventory().is_empty());
    }
}
