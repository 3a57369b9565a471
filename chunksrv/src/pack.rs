//! Small chunks packed into append-only pack files, the way Haystack and SeaweedFS volumes
//! keep small objects: a chunk of up to `--pack-max` bytes becomes a record in the current
//! pack instead of a file of its own.
//!
//! Why: a chunk file costs an inode, a temp name, a link, a file fsync and a directory fsync
//! (on ext4 without a journal the inode search alone gets slow after many deletions). A record
//! costs one write into space allocated ahead, and one fdatasync serves every record that
//! arrived meanwhile (group commit).
//!
//! # Layout
//! `<root>/packs/<seq, 16 hex digits>.pack` in each root (primary, then backup), with the same
//! records at the same offsets. A record is a 64-byte header followed by the chunk image (the
//! exact bytes of a chunk file: data, block CRCs, footer; see `store`):
//! ```text
//! magic "DFSPAK01" | chunk id, 36 ASCII bytes | image length u32 LE | flags u32 LE (bit 0:
//! deleted) | 8 zero bytes | CRC32C u32 LE of the 60 bytes before it
//! ```
//!
//! # What must stay true
//! - One writer thread appends. A batch is written to every root at the end of the current
//!   pack, then the primary is fdatasynced, then its records are indexed and acknowledged.
//!   A crash can only tear the batch being written, at the end of a pack; no record after
//!   it was ever acknowledged. (Like chunk files, the backup is not fsynced: it guards
//!   against bit rot of the primary, not against crashes.)
//! - Only the process that created a pack appends to it: each start begins a new pack. An
//!   older pack is scanned from its start when the store opens; the scan stops at the first
//!   offset where no root holds a valid header followed by an image with a valid trailer,
//!   and the pack is cut there (what followed was a torn batch or space allocated ahead).
//! - A bad header in the primary is stepped over with the backup's copy, so bit rot in one
//!   record does not hide the records after it.
//! - A delete marks the header deleted in every root and syncs the primary, then frees the
//!   record's whole pages (punch hole). A sealed pack with no live record is removed.
//! - This module never interprets the image: the store verifies its checksums on every read.
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

pub const HEADER_LEN: usize = 64;
const MAGIC: &[u8; 8] = b"DFSPAK01";
const ID_LEN: usize = 36;
const FLAG_DELETED: u32 = 1;
/// Largest image a header may claim (a scan treats anything bigger as garbage).
const MAX_IMAGE: u32 = 16 * 1024 * 1024;
/// A pack is sealed once a batch would take it past this size.
const PACK_LIMIT: u64 = 256 * 1024 * 1024;
/// Space allocated at a time ahead of the end of the current pack: a write into allocated
/// space leaves the file size alone, so its fdatasync writes little more than the data.
const ALLOCATE_AHEAD: u64 = 8 * 1024 * 1024;
/// Most bytes written by one batch.
const BATCH_LIMIT: usize = 4 * 1024 * 1024;
/// Appends waiting for the writer (bounds the memory they hold).
const QUEUE: usize = 64;
const PAGE: u64 = 4096;

/// Where a record is: its pack, the offset of its header and the length of its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub pack: u64,
    pub offset: u64,
    pub image_len: u32,
}

impl Loc {
    fn end(&self) -> u64 {
        self.offset + HEADER_LEN as u64 + u64::from(self.image_len)
    }

    /// Bytes of chunk data in the record.
    fn size(&self) -> u64 {
        crate::store::size_from_file_len(u64::from(self.image_len)).unwrap_or(0)
    }
}

/// What reading one root's copy of a record found.
pub enum RecordRead {
    Image(Vec<u8>),
    /// The copy is damaged (the reason says how).
    Bad(String),
    /// The record was deleted meanwhile.
    Deleted,
    /// This root has no copy (backups are off).
    Missing,
}

struct Header {
    id: String,
    image_len: u32,
    flags: u32,
}

fn encode_header(id: &str, image_len: u32, flags: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    let id = id.as_bytes();
    let n = id.len().min(ID_LEN);
    h[8..8 + n].copy_from_slice(&id[..n]);
    h[44..48].copy_from_slice(&image_len.to_le_bytes());
    h[48..52].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn decode_header(h: &[u8]) -> Option<Header> {
    let h = h.get(..HEADER_LEN)?;
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if &h[..8] != MAGIC || crc32c::crc32c(&h[..60]) != word(60) {
        return None;
    }
    let id = std::str::from_utf8(&h[8..44]).ok()?.to_string();
    let image_len = word(44);
    if image_len > MAX_IMAGE || crate::store::validate_chunk_id(&id).is_err() {
        return None;
    }
    Some(Header {
        id,
        image_len,
        flags: word(48),
    })
}

fn pack_name(seq: u64) -> String {
    format!("{seq:016x}.pack")
}

fn parse_pack_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".pack")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// The open files of one pack (one per root) and how many live records it holds.
struct Pack {
    files: Vec<Arc<File>>,
    live: u64,
    /// Every record of it is known: the start-up scan read it to the end (or it was written
    /// by this process). A pack the scan could not read through may hold records nobody has
    /// seen, so it is never removed as empty.
    complete: bool,
}

#[derive(Default)]
struct State {
    /// Ordered, so the inventory can be listed in pages from any id on.
    index: BTreeMap<String, Loc>,
    packs: HashMap<u64, Pack>,
    /// Data bytes of the live records.
    used: u64,
    /// The pack being appended to (never removed while current).
    current: u64,
}

struct Shared {
    dirs: Vec<PathBuf>,
    state: Mutex<State>,
}

/// Up to `max` keys of `index` after `after` (from the first without), in order.
pub(crate) fn ids_after<V>(
    index: &BTreeMap<String, V>,
    after: Option<&str>,
    max: usize,
) -> Vec<String> {
    use std::ops::Bound;
    let from = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    index
        .range::<str, _>((from, Bound::Unbounded))
        .take(max)
        .map(|(k, _)| k.clone())
        .collect()
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Job {
    id: String,
    image: Vec<u8>,
    done: oneshot::Sender<io::Result<Loc>>,
}

/// The pack files of a store.
pub struct Packs {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl Packs {
    /// Open the packs under `roots` (primary first), index their live records and start
    /// the writer on a new pack. Blocking.
    pub fn open(roots: &[PathBuf]) -> io::Result<Packs> {
        let dirs: Vec<PathBuf> = roots.iter().map(|r| r.join("packs")).collect();
        let mut seqs = Vec::new();
        for dir in &dirs {
            if !dir.exists() {
                fs::create_dir_all(dir)?;
                dfs_common::durable::fsync_dir(dir.parent().unwrap_or(dir))?;
            }
            for entry in fs::read_dir(dir)? {
                if let Some(seq) = entry?.file_name().to_str().and_then(parse_pack_name) {
                    seqs.push(seq);
                }
            }
        }
        seqs.sort_unstable();
        seqs.dedup();
        let mut state = State::default();
        let mut superseded = Vec::new();
        for &seq in &seqs {
            let files = open_pack(&dirs, seq, false)?;
            let (records, complete) = scan(seq, &files);
            state.packs.insert(
                seq,
                Pack {
                    files,
                    live: 0,
                    complete,
                },
            );
            for (id, loc) in records {
                superseded.extend(state.insert(id, loc));
            }
        }
        let current = seqs.last().map_or(1, |s| s + 1);
        let files = open_pack(&dirs, current, true)?;
        state.current = current;
        state.packs.insert(
            current,
            Pack {
                files: open_pack(&dirs, current, false)?,
                live: 0,
                complete: true,
            },
        );
        let shared = Arc::new(Shared {
            dirs,
            state: Mutex::new(state),
        });
        let (jobs, rx) = mpsc::channel(QUEUE);
        let packs = Packs {
            shared: shared.clone(),
            jobs,
        };
        // A chunk written twice: the older record is deleted for good, so it never comes back,
        // but only once the newer one is known good (it may be a torn retry); else the older
        // one is kept, if it is good.
        for (id, old) in superseded {
            let Some(newer) = packs.locate(&id) else {
                continue;
            };
            let drop = if !packs.verifies(&id, newer) && packs.verifies(&id, old) {
                lock(&shared.state).insert(id.clone(), old);
                newer
            } else {
                old
            };
            if let Err(e) = packs.retire(&id, drop) {
                tracing::warn!(chunk_id = %id, error = %e, "cannot mark a replaced pack record deleted");
            }
        }
        let empty: Vec<u64> = {
            let mut st = lock(&shared.state);
            let seqs: Vec<u64> = st.packs.keys().copied().collect();
            seqs.into_iter()
                .filter(|&seq| st.remove_if_empty(seq))
                .collect()
        };
        for seq in empty {
            remove_pack(&shared.dirs, seq);
        }
        let writer = Writer {
            shared: shared.clone(),
            seq: current,
            files,
            end: 0,
            allocated: 0,
            broken: false,
        };
        std::thread::Builder::new()
            .name("pack-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(packs)
    }

    /// Where `id`'s record is, if it is packed.
    pub fn locate(&self, id: &str) -> Option<Loc> {
        lock(&self.shared.state).index.get(id).copied()
    }

    /// Packed chunks and their data bytes.
    pub fn usage(&self) -> (u64, u64) {
        let st = lock(&self.shared.state);
        (st.index.len() as u64, st.used)
    }

    /// Up to `max` ids of packed chunks after `after` (all from the first without), in order.
    pub fn ids_after(&self, after: Option<&str>, max: usize) -> Vec<String> {
        let st = lock(&self.shared.state);
        ids_after(&st.index, after, max)
    }

    /// Append a record for `id` (a chunk image); returns once it is durable and indexed.
    /// The append completes even if the caller stops waiting.
    pub async fn append(&self, id: &str, image: Vec<u8>) -> io::Result<Loc> {
        let stopped = || io::Error::other("the pack writer has stopped");
        let (done, rx) = oneshot::channel();
        let job = Job {
            id: id.to_string(),
            image,
            done,
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Read root `root`'s copy of the record at `loc`, which must be `id`'s. Blocking.
    pub fn read(&self, root: usize, loc: Loc, id: &str) -> io::Result<RecordRead> {
        let Some(file) = self.file(loc.pack, root) else {
            return Ok(match self.locate(id) == Some(loc) {
                true => RecordRead::Missing,
                false => RecordRead::Deleted,
            });
        };
        let mut h = [0u8; HEADER_LEN];
        if let Err(e) = file.read_exact_at(&mut h, loc.offset) {
            return truncated(e);
        }
        let Some(header) = decode_header(&h) else {
            return Ok(RecordRead::Bad("record header is corrupt".into()));
        };
        if header.id != id || header.image_len != loc.image_len {
            return Ok(RecordRead::Bad(format!(
                "record header names {} ({} bytes), not this chunk",
                header.id, header.image_len
            )));
        }
        if header.flags & FLAG_DELETED != 0 {
            return Ok(RecordRead::Deleted);
        }
        let mut image = vec![0u8; loc.image_len as usize];
        if let Err(e) = file.read_exact_at(&mut image, loc.offset + HEADER_LEN as u64) {
            return truncated(e);
        }
        Ok(RecordRead::Image(image))
    }

    /// Write a good copy of `id`'s record over root `root`'s copy (a repair), durably.
    /// Blocking; the caller holds the chunk's lock, so the record cannot be deleted meanwhile.
    pub fn rewrite(&self, root: usize, loc: Loc, id: &str, image: &[u8]) -> io::Result<()> {
        // The check and the (page-cache) write under the index lock: the writer cannot
        // supersede, and so mark deleted, this record in between, which would bring the old
        // record back. The sync comes after the lock is released.
        let mut buf = encode_header(id, loc.image_len, 0).to_vec();
        buf.extend_from_slice(image);
        let st = lock(&self.shared.state);
        if st.index.get(id) != Some(&loc) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "record was deleted or written again",
            ));
        }
        let file = st
            .packs
            .get(&loc.pack)
            .and_then(|p| p.files.get(root).cloned())
            .ok_or_else(|| io::Error::other("no such root"))?;
        file.write_all_at(&buf, loc.offset)?;
        drop(st);
        file.sync_data()
    }

    /// Whether some root holds a complete, checksum-clean copy of `id`'s record at `loc`.
    fn verifies(&self, id: &str, loc: Loc) -> bool {
        (0..self.shared.dirs.len()).any(|root| {
            matches!(self.read(root, loc, id), Ok(RecordRead::Image(image)) if crate::store::image_verifies(&image))
        })
    }

    /// Delete `id`'s record; returns whether there was one. Blocking; the caller holds the
    /// chunk's lock.
    pub fn delete(&self, id: &str) -> io::Result<bool> {
        match self.locate(id) {
            Some(loc) => self.retire(id, loc),
            None => Ok(false),
        }
    }

    /// Delete the record of `id` at `loc` (durably marked, then its pages freed); returns
    /// whether it was `id`'s live record. Blocking.
    pub fn retire(&self, id: &str, loc: Loc) -> io::Result<bool> {
        self.shared.retire(id, loc)
    }

    fn file(&self, pack: u64, root: usize) -> Option<Arc<File>> {
        self.shared.files(pack).get(root).cloned()
    }
}

impl Shared {
    fn files(&self, pack: u64) -> Vec<Arc<File>> {
        lock(&self.state)
            .packs
            .get(&pack)
            .map(|p| p.files.clone())
            .unwrap_or_default()
    }

    fn retire(&self, id: &str, loc: Loc) -> io::Result<bool> {
        let files = self.files(loc.pack);
        let header = encode_header(id, loc.image_len, FLAG_DELETED);
        for f in &files {
            f.write_all_at(&header, loc.offset)?;
        }
        if let Some(primary) = files.first() {
            primary.sync_data()?;
        }
        let (was_live, emptied) = {
            let mut st = lock(&self.state);
            if st.index.get(id) == Some(&loc) {
                st.index.remove(id);
                st.used = st.used.saturating_sub(loc.size());
                (true, st.release(loc.pack))
            } else {
                (false, st.remove_if_empty(loc.pack))
            }
        };
        // Give the record's whole pages back to the filesystem (best effort).
        let start = (loc.offset + HEADER_LEN as u64).div_ceil(PAGE) * PAGE;
        let stop = loc.end() / PAGE * PAGE;
        if stop > start {
            for f in &files {
                punch_hole(f, start, stop - start);
            }
        }
        if emptied {
            remove_pack(&self.dirs, loc.pack);
        }
        Ok(was_live)
    }
}

fn truncated(e: io::Error) -> io::Result<RecordRead> {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Ok(RecordRead::Bad("record is truncated".into())),
        _ => Err(e),
    }
}

impl State {
    /// Index a live record. Returns the record of the same chunk it replaces, if any: no
    /// longer live, it is the caller's to mark deleted (`Shared::retire`).
    fn insert(&mut self, id: String, loc: Loc) -> Option<(String, Loc)> {
        if let Some(p) = self.packs.get_mut(&loc.pack) {
            p.live += 1;
        }
        self.used += loc.size();
        let old = self.index.insert(id.clone(), loc)?;
        self.used = self.used.saturating_sub(old.size());
        if let Some(p) = self.packs.get_mut(&old.pack) {
            p.live = p.live.saturating_sub(1);
        }
        Some((id, old))
    }

    /// One record of `pack` is gone; returns whether the pack is now empty and sealed (then
    /// it is forgotten and the caller removes its files).
    fn release(&mut self, pack: u64) -> bool {
        if let Some(p) = self.packs.get_mut(&pack) {
            p.live = p.live.saturating_sub(1);
        }
        self.remove_if_empty(pack)
    }

    fn remove_if_empty(&mut self, pack: u64) -> bool {
        let empty = pack != self.current
            && self
                .packs
                .get(&pack)
                .is_some_and(|p| p.live == 0 && p.complete);
        if empty {
            self.packs.remove(&pack);
        }
        empty
    }
}

/// Open (or, for a new pack, create) pack `seq` in every root.
fn open_pack(dirs: &[PathBuf], seq: u64, new: bool) -> io::Result<Vec<Arc<File>>> {
    let mut files = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let path = dir.join(pack_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .create_new(new)
            .open(&path)?;
        files.push(Arc::new(file));
    }
    if new {
        // The name must be durable before any record in the pack is acknowledged.
        for dir in dirs {
            dfs_common::durable::fsync_dir(dir)?;
        }
    }
    Ok(files)
}

/// Remove pack `seq`: the backup first, durably, so a crash never leaves a backup whose
/// unsynced headers could bring deleted records back without the primary's.
fn remove_pack(dirs: &[PathBuf], seq: u64) {
    for (i, dir) in dirs.iter().enumerate().rev() {
        let path = dir.join(pack_name(seq));
        match fs::remove_file(&path) {
            Ok(()) => {
                if i > 0 {
                    let _ = dfs_common::durable::fsync_dir(dir);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove empty pack")
            }
        }
    }
}

/// What the scan finds at an offset.
enum Found {
    Record(Header, Loc),
    /// No root holds a valid record there.
    Nothing,
    /// No root holds a valid record there, and some root could not be read: the scan cannot
    /// tell garbage from an unreadable record.
    Unreadable(io::Error),
}

/// A valid record at `offset` of one of `files`: a good header, and for a live record an
/// image that ends in a valid chunk trailer (a torn record never does). A deleted record may
/// have lost its pages to a punched hole; only its header counts. A root that cannot be read
/// is passed over for the next one.
fn record_at(files: &[Arc<File>], seq: u64, offset: u64) -> Found {
    let mut unreadable = None;
    for file in files {
        let mut h = [0u8; HEADER_LEN];
        match file.read_exact_at(&mut h, offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => {
                unreadable = Some(e);
                continue;
            }
        }
        let Some(header) = decode_header(&h) else {
            continue;
        };
        let loc = Loc {
            pack: seq,
            offset,
            image_len: header.image_len,
        };
        if header.flags & FLAG_DELETED != 0 {
            return Found::Record(header, loc);
        }
        let image_at = offset + HEADER_LEN as u64;
        match crate::store::image_is_whole(file, image_at, u64::from(header.image_len)) {
            Ok(true) => return Found::Record(header, loc),
            Ok(false) => {}
            Err(e) => unreadable = Some(e),
        }
    }
    match unreadable {
        Some(e) => Found::Unreadable(e),
        None => Found::Nothing,
    }
}

/// The first valid record after `from` in pack `seq`, found by looking for the header magic
/// (after a damaged record, so the records behind it are not lost).
fn resync(files: &[Arc<File>], seq: u64, from: u64) -> Found {
    const WINDOW: u64 = 1024 * 1024;
    let mut unreadable = None;
    'roots: for file in files {
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                unreadable = Some(e);
                continue;
            }
        };
        let mut at = from + 1;
        while at < len {
            // Windows overlap by the magic's length, so no magic is split unseen.
            let n = (len - at).min(WINDOW + MAGIC.len() as u64) as usize;
            let mut buf = vec![0u8; n];
            if let Err(e) = file.read_exact_at(&mut buf, at) {
                unreadable = Some(e);
                continue 'roots;
            }
            let mut i = 0;
            while let Some(k) = find(&buf[i..], MAGIC) {
                match record_at(files, seq, at + (i + k) as u64) {
                    Found::Record(h, loc) => return Found::Record(h, loc),
                    Found::Unreadable(e) => unreadable = Some(e),
                    Found::Nothing => {}
                }
                i += k + 1;
            }
            at += WINDOW;
        }
    }
    match unreadable {
        Some(e) => Found::Unreadable(e),
        None => Found::Nothing,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The live records of pack `seq`, in order. A damaged record is stepped over (with the
/// backup's copy of its header, else by searching for the next record); the pack is cut after
/// its last valid record, where only a torn batch or space allocated ahead can follow. Where
/// the disk cannot be read, the scan stops there and cuts nothing (a later start may read it):
/// the second value says whether it read to the end.
fn scan(seq: u64, files: &[Arc<File>]) -> (Vec<(String, Loc)>, bool) {
    let mut records = Vec::new();
    let mut offset = 0u64;
    let found_end = loop {
        let found = match record_at(files, seq, offset) {
            Found::Nothing => {
                let next = resync(files, seq, offset);
                if let Found::Record(_, loc) = &next {
                    tracing::error!(
                        pack = seq,
                        offset,
                        skipped = loc.offset - offset,
                        "damaged pack record skipped"
                    );
                }
                next
            }
            other => other,
        };
        match found {
            Found::Record(header, loc) => {
                if header.flags & FLAG_DELETED == 0 {
                    records.push((header.id, loc));
                }
                offset = loc.end();
            }
            Found::Nothing => break true,
            Found::Unreadable(e) => {
                tracing::error!(pack = seq, offset, error = %e, "cannot read pack; records after this offset are not served until a restart reads them");
                break false;
            }
        }
    };
    if found_end {
        for f in files {
            if f.metadata().is_ok_and(|m| m.len() > offset) {
                if let Err(e) = f.set_len(offset) {
                    tracing::warn!(pack = seq, error = %e, "cannot cut the end of a pack");
                }
            }
        }
    }
    (records, found_end)
}

fn punch_hole(file: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot punch a hole in a pack");
    }
}

/// Allocate `[offset, offset + len)` of `file` (extending it). A filesystem that cannot
/// allocate ahead is fine: writes then extend the file themselves.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            0,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// The appending side: owns the end of the current pack. It writes and syncs through
/// descriptors of its own: Linux reports a writeback error once per open file, so a delete or
/// repair syncing the same pack through the shared descriptors can neither take the writer's
/// error (and let a lost batch be acknowledged) nor lose its own to the writer.
struct Writer {
    shared: Arc<Shared>,
    seq: u64,
    files: Vec<Arc<File>>,
    end: u64,
    allocated: u64,
    /// A write failed: the current pack may hold a torn record, so nothing more goes after it.
    broken: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = HEADER_LEN + first.image.len();
            let mut jobs = vec![first];
            while bytes < BATCH_LIMIT {
                match rx.try_recv() {
                    Ok(j) => {
                        bytes += HEADER_LEN + j.image.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            let locs = match self.write_batch(&jobs, bytes as u64) {
                Ok(locs) => locs,
                Err((e, written)) => {
                    tracing::error!(error = %e, pack = self.seq, "cannot append to pack");
                    self.broken = true;
                    // Records that may have reached the disk were never acknowledged: mark
                    // them deleted so a restart does not find them (best effort).
                    for (job, loc) in jobs.iter().zip(&written) {
                        let header = encode_header(&job.id, loc.image_len, FLAG_DELETED);
                        for f in &self.files {
                            let _ = f.write_all_at(&header, loc.offset);
                        }
                    }
                    for job in jobs {
                        let _ = job.done.send(Err(io::Error::new(e.kind(), e.to_string())));
                    }
                    continue;
                }
            };
            let superseded: Vec<(String, Loc)> = {
                let mut st = lock(&self.shared.state);
                jobs.iter()
                    .zip(&locs)
                    .filter_map(|(job, loc)| st.insert(job.id.clone(), *loc))
                    .collect()
            };
            for (job, loc) in jobs.into_iter().zip(locs) {
                let _ = job.done.send(Ok(loc));
            }
            // An older record of a chunk written again must not come back after a restart.
            for (id, old) in superseded {
                if let Err(e) = self.shared.retire(&id, old) {
                    tracing::warn!(chunk_id = %id, error = %e, "cannot mark a replaced pack record deleted");
                }
            }
        }
    }

    /// Write `jobs` at the end of the current pack and sync it. On error, also returns where
    /// the records were being written.
    fn write_batch(&mut self, jobs: &[Job], bytes: u64) -> Result<Vec<Loc>, (io::Error, Vec<Loc>)> {
        if self.broken || (self.end > 0 && self.end + bytes > PACK_LIMIT) {
            self.next_pack().map_err(|e| (e, Vec::new()))?;
        }
        if self.end + bytes > self.allocated {
            let len = ALLOCATE_AHEAD.max(bytes);
            for f in &self.files {
                allocate(f, self.end, len).map_err(|e| (e, Vec::new()))?;
            }
            self.allocated = self.end + len;
        }
        let mut buf = Vec::with_capacity(bytes as usize);
        let mut locs = Vec::with_capacity(jobs.len());
        for job in jobs {
            let loc = Loc {
                pack: self.seq,
                offset: self.end + buf.len() as u64,
                image_len: job.image.len() as u32,
            };
            buf.extend_from_slice(&encode_header(&job.id, loc.image_len, 0));
            buf.extend_from_slice(&job.image);
            locs.push(loc);
        }
        let written = self
            .files
            .iter()
            .try_for_each(|f| f.write_all_at(&buf, self.end))
            .and_then(|()| crate::planted::sync_chunk(&self.files[0]));
        if let Err(e) = written {
            return Err((e, locs));
        }
        self.end += bytes;
        Ok(locs)
    }

    /// Seal the current pack (cut the space allocated ahead) and start the next one. A pack
    /// that cannot be created is skipped, so the next attempt tries a new name.
    fn next_pack(&mut self) -> io::Result<()> {
        let next = self.seq + 1;
        if !self.broken {
            for f in &self.files {
                let _ = f.set_len(self.end);
            }
        }
        self.seq = next;
        self.broken = true;
        let opened = open_pack(&self.shared.dirs, next, true)
            .and_then(|files| Ok((files, open_pack(&self.shared.dirs, next, false)?)));
        let (files, shared_files) = match opened {
            Ok(f) => f,
            Err(e) => {
                remove_pack(&self.shared.dirs, next);
                return Err(e);
            }
        };
        let emptied = {
            let mut st = lock(&self.shared.state);
            st.packs.insert(
                next,
                Pack {
                    files: shared_files,
                    live: 0,
                    complete: true,
                },
            );
            let old = std::mem::replace(&mut st.current, next);
            st.remove_if_empty(old).then_some(old)
        };
        if let Some(old) = emptied {
            remove_pack(&self.shared.dirs, old);
        }
        self.files = files;
        self.end = 0;
        self.allocated = 0;
        self.broken = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;
    use crate::store::tests::{flip_byte as flip, get, open_with, put as put_pieces};
    use crate::store::{ChunkMeta, Store, StoreError, DEFAULT_PACK_MAX};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    fn id(n: u32) -> String {
        format!("{n:08x}-1111-4222-8333-444455556666")
    }

    #[test]
    fn a_pack_not_read_to_its_end_is_never_removed_as_empty() {
        let pack = |complete| super::Pack {
            files: Vec::new(),
            live: 0,
            complete,
        };
        let mut st = super::State {
            current: 9,
            ..Default::default()
        };
        st.packs.insert(1, pack(false));
        st.packs.insert(2, pack(true));
        st.packs.insert(9, pack(true));
        assert!(!st.remove_if_empty(1), "unread records may follow");
        assert!(st.remove_if_empty(2));
        assert!(!st.remove_if_empty(9), "the current pack stays");
        assert_eq!(st.packs.len(), 2);
    }

    fn open(dir: &Path, backups: bool) -> (Store, Arc<Metrics>) {
        open_with(dir, 1 << 30, backups, DEFAULT_PACK_MAX)
    }

    fn data(n: u32, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u32 * 31 + n * 7) as u8).collect()
    }

    /// In 1,000-byte pieces: the store joins them, so a small chunk is still packed.
    async fn put(store: &Store, id: &str, data: &[u8]) -> Result<ChunkMeta, StoreError> {
        put_pieces(store, id, data, 1000).await
    }

    fn packs(root: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("packs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// The pack holding `id` under `root` and the offset of its record's header.
    fn record(root: &Path, id: &str) -> (PathBuf, u64) {
        records_of(root, id)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no record of {id} under {}", root.display()))
    }

    /// Every record of `id` under `root`, in order: pack and header offset.
    fn records_of(root: &Path, id: &str) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        for p in packs(root) {
            let bytes = std::fs::read(&p).unwrap();
            let mut from = 0;
            while let Some(at) = bytes[from..]
                .windows(id.len())
                .position(|w| w == id.as_bytes())
            {
                out.push((p.clone(), (from + at) as u64 - 8));
                from += at + 1;
            }
        }
        out
    }

    /// Flip data byte `at` of `id`'s record in the primary and the backup pack.
    fn damage_every_copy(dir: &Path, id: &str, at: u64) {
        for root in ["chunks", "backups/chunks"] {
            let (pack, header) = record(&dir.join(root), id);
            flip(&pack, header + super::HEADER_LEN as u64 + at);
        }
    }

    fn chunk_files(root: &Path) -> usize {
        (0..=255u8)
            .map(|i| {
                std::fs::read_dir(root.join(format!("{i:02x}")))
                    .unwrap()
                    .filter(|e| {
                        !e.as_ref()
                            .unwrap()
                            .file_name()
                            .to_string_lossy()
                            .starts_with('.')
                    })
                    .count()
            })
            .sum()
    }

    #[tokio::test]
    async fn small_chunks_are_packed_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0usize, 1, 4096, 65535, 65536];
        {
            let (store, _) = open(dir.path(), true);
            for (n, len) in sizes.iter().enumerate() {
                put(&store, &id(n as u32), &data(n as u32, *len))
                    .await
                    .unwrap();
            }
            // One byte over the limit gets a file of its own.
            put(&store, &id(99), &data(99, 65537)).await.unwrap();
            assert_eq!(chunk_files(&dir.path().join("chunks")), 1);
            assert_eq!(chunk_files(&dir.path().join("backups/chunks")), 1);
            for (n, len) in sizes.iter().enumerate() {
                assert_eq!(
                    get(&store, &id(n as u32)).await.unwrap(),
                    data(n as u32, *len)
                );
            }
            assert_eq!(store.chunk_count(), 6);
        }
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.chunk_count(), 6);
        let expected: u64 = sizes.iter().sum::<usize>() as u64 + 65537;
        assert_eq!(store.used_bytes(), expected);
        for (n, len) in sizes.iter().enumerate() {
            assert_eq!(
                get(&store, &id(n as u32)).await.unwrap(),
                data(n as u32, *len)
            );
        }
        // Each start appends to a new pack; the old ones are kept while they hold records.
        assert_eq!(packs(&dir.path().join("chunks")).len(), 2);
    }

    #[tokio::test]
    async fn a_retried_write_is_accepted_and_different_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), true);
        put(&store, &id(1), b"hello").await.unwrap();
        put(&store, &id(1), b"hello").await.unwrap();
        assert!(matches!(
            put(&store, &id(1), b"jello").await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(get(&store, &id(1)).await.unwrap(), b"hello");
        assert_eq!(store.chunk_count(), 1);
    }

    /// `--pack-max` lowered after a chunk was packed: a retry of its write arrives as a file.
    #[tokio::test]
    async fn a_packed_chunk_written_again_as_a_file_is_compared_through_either_copy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path(), true);
            put(&store, &id(1), &data(1, 3000)).await.unwrap();
        }
        let (store, _) = open_with(dir.path(), 1 << 30, true, 0);
        put(&store, &id(1), &data(1, 3000)).await.unwrap();
        assert!(matches!(
            put(&store, &id(1), &data(2, 3000)).await,
            Err(StoreError::Conflict(_))
        ));
        // A damaged primary record is a read problem, not a conflict: the backup decides.
        let (pack, at) = record(&dir.path().join("chunks"), &id(1));
        flip(&pack, at + super::HEADER_LEN as u64 + 11);
        put(&store, &id(1), &data(1, 3000)).await.unwrap();
        assert_eq!(store.chunk_count(), 1);
        assert_eq!(
            chunk_files(&dir.path().join("chunks")),
            0,
            "the packed copy stays"
        );
        assert_eq!(get(&store, &id(1)).await.unwrap(), data(1, 3000));
    }

    #[tokio::test]
    async fn a_bad_primary_record_is_restored_from_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let (store, metrics) = open(dir.path(), true);
        for n in 0..3 {
            put(&store, &id(n), &data(n, 3000)).await.unwrap();
        }
        let (pack, at) = record(&dir.path().join("chunks"), &id(1));
        flip(&pack, at + super::HEADER_LEN as u64 + 1234);
        assert_eq!(get(&store, &id(1)).await.unwrap(), data(1, 3000));
        assert_eq!(metrics.checksum_failures_total.load(Relaxed), 1);
        assert_eq!(metrics.backup_restores_total.load(Relaxed), 1);
        // The primary is good again: the next read needs no repair.
        assert_eq!(get(&store, &id(1)).await.unwrap(), data(1, 3000));
        assert_eq!(metrics.backup_restores_total.load(Relaxed), 1);
        // A broken header is stepped over when the store opens: the records after it stay.
        flip(&pack, at + 20);
        drop(store);
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.chunk_count(), 3);
        for n in 0..3 {
            assert_eq!(get(&store, &id(n)).await.unwrap(), data(n, 3000));
        }
    }

    #[tokio::test]
    async fn a_record_bad_in_every_copy_is_lost_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), true);
        put(&store, &id(1), &data(1, 5000)).await.unwrap();
        put(&store, &id(2), &data(2, 5000)).await.unwrap();
        damage_every_copy(dir.path(), &id(1), 10);
        assert!(matches!(
            get(&store, &id(1)).await,
            Err(StoreError::DataLoss { .. })
        ));
        assert_eq!(store.inventory(), vec![id(2)]);
        assert_eq!(get(&store, &id(2)).await.unwrap(), data(2, 5000));
        // The bad bytes are kept for a look, as for chunk files.
        for q in ["quarantine", "backups/quarantine"] {
            let kept: Vec<_> = std::fs::read_dir(dir.path().join(q)).unwrap().collect();
            assert_eq!(kept.len(), 1, "{q}");
        }
        drop(store);
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.inventory(), vec![id(2)]);
    }

    #[tokio::test]
    async fn without_backups_a_bad_record_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), false);
        put(&store, &id(1), &data(1, 100)).await.unwrap();
        let (pack, at) = record(&dir.path().join("chunks"), &id(1));
        flip(&pack, at + super::HEADER_LEN as u64 + 5);
        assert!(matches!(
            get(&store, &id(1)).await,
            Err(StoreError::DataLoss { .. })
        ));
        assert_eq!(store.chunk_count(), 0);
    }

    #[tokio::test]
    async fn a_torn_batch_at_the_end_of_a_pack_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("chunks");
        {
            let (store, _) = open(dir.path(), true);
            put(&store, &id(1), &data(1, 700)).await.unwrap();
            put(&store, &id(2), &data(2, 700)).await.unwrap();
        }
        // A crash in the middle of the next batch: half a record after the last one.
        let (pack, at) = record(&primary, &id(2));
        let whole = std::fs::read(&pack).unwrap();
        let end = at as usize + super::HEADER_LEN + 700 + 4 + 24;
        let mut torn = super::encode_header(&id(3), 728, 0).to_vec();
        torn.extend_from_slice(&[7u8; 100]);
        for root in [primary.clone(), dir.path().join("backups/chunks")] {
            let (p, _) = record(&root, &id(2));
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .write_all_at(&torn, end as u64)
                .unwrap();
        }
        assert!(whole.len() >= end);
        let (store, _) = open(dir.path(), true);
        let mut inv = store.inventory();
        inv.sort();
        assert_eq!(inv, vec![id(1), id(2)]);
        assert_eq!(std::fs::metadata(&pack).unwrap().len(), end as u64);
        // New records go to a new pack and read back.
        put(&store, &id(4), &data(4, 10)).await.unwrap();
        assert_eq!(get(&store, &id(4)).await.unwrap(), data(4, 10));
        assert_ne!(record(&primary, &id(4)).0, pack);
    }

    #[tokio::test]
    async fn deleted_records_stay_deleted_and_empty_packs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("chunks");
        {
            let (store, _) = open(dir.path(), true);
            for n in 0..4 {
                put(&store, &id(n), &data(n, 20_000)).await.unwrap();
            }
            assert!(store.delete(&id(1)).await.unwrap());
            assert!(!store.delete(&id(1)).await.unwrap());
            assert!(matches!(
                get(&store, &id(1)).await,
                Err(StoreError::NotFound(_))
            ));
            assert_eq!(store.chunk_count(), 3);
            assert_eq!(store.used_bytes(), 60_000);
        }
        let (store, _) = open(dir.path(), true);
        let mut inv = store.inventory();
        inv.sort();
        assert_eq!(inv, vec![id(0), id(2), id(3)]);
        assert_eq!(packs(&primary).len(), 2);
        for n in [0, 2, 3] {
            assert!(store.delete(&id(n)).await.unwrap());
        }
        // The first pack is sealed and now empty: gone from both roots.
        assert_eq!(packs(&primary).len(), 1);
        assert_eq!(packs(&dir.path().join("backups/chunks")).len(), 1);
        drop(store);
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.chunk_count(), 0);
    }

    #[tokio::test]
    async fn records_after_a_deleted_one_are_found_when_its_pages_were_freed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path(), true);
            // 64-byte header + 8,100 data bytes + 4 + 24 trailer bytes end on a page
            // boundary: deleting frees the page holding the trailer.
            put(&store, &id(1), &data(1, 8100)).await.unwrap();
            put(&store, &id(2), &data(2, 300)).await.unwrap();
            assert!(store.delete(&id(1)).await.unwrap());
        }
        // The deleted record itself is recognized (not stepped over as damage).
        let roots = [dir.path().join("chunks"), dir.path().join("backups/chunks")];
        let pack = packs(&roots[0]).remove(0);
        let seq = super::parse_pack_name(pack.file_name().unwrap().to_str().unwrap()).unwrap();
        let dirs: Vec<PathBuf> = roots.iter().map(|r| r.join("packs")).collect();
        match super::record_at(&super::open_pack(&dirs, seq, false).unwrap(), seq, 0) {
            super::Found::Record(header, loc) => {
                assert_ne!(header.flags & super::FLAG_DELETED, 0);
                assert_eq!(header.id, id(1));
                assert_eq!(loc.end() % super::PAGE, 0, "the trailer's page was freed");
            }
            _ => panic!("the deleted record at offset 0 was not recognized"),
        }
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.inventory(), vec![id(2)]);
        assert_eq!(get(&store, &id(2)).await.unwrap(), data(2, 300));
    }

    #[tokio::test]
    async fn a_damaged_record_mid_pack_hides_none_of_the_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path(), false);
            for n in 0..5 {
                put(&store, &id(n), &data(n, 1000 + n as usize))
                    .await
                    .unwrap();
            }
        }
        // No backup to step over it with: the scan has to find the next record itself.
        let (pack, at) = record(&dir.path().join("chunks"), &id(1));
        flip(&pack, at + 3);
        let (store, _) = open(dir.path(), false);
        assert_eq!(store.inventory(), vec![id(0), id(2), id(3), id(4)]);
        for n in [0, 2, 3, 4] {
            assert_eq!(
                get(&store, &id(n)).await.unwrap(),
                data(n, 1000 + n as usize)
            );
        }
    }

    /// The retry's writer deletes the older record itself: with no restart in between, a
    /// delete of the chunk must leave nothing to come back at the next start.
    #[tokio::test]
    async fn a_chunk_written_again_keeps_one_record_and_stays_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path(), true);
            put(&store, &id(1), &data(1, 2000)).await.unwrap();
            put(&store, &id(2), &data(2, 2000)).await.unwrap();
            // Both copies unreadable: a retried write stores the chunk again.
            damage_every_copy(dir.path(), &id(1), 7);
            put(&store, &id(1), &data(1, 2000)).await.unwrap();
            assert_eq!(get(&store, &id(1)).await.unwrap(), data(1, 2000));
            assert_eq!(store.chunk_count(), 2);
            assert_eq!(store.used_bytes(), 4000);
            assert!(store.delete(&id(1)).await.unwrap());
        }
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.inventory(), vec![id(2)]);
        assert_eq!(store.used_bytes(), 2000);
    }

    #[tokio::test]
    async fn a_bad_newer_record_does_not_replace_a_good_older_one_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let roots = [dir.path().join("chunks"), dir.path().join("backups/chunks")];
        {
            let (store, _) = open(dir.path(), true);
            put(&store, &id(1), &data(1, 1000)).await.unwrap();
            for root in &roots {
                let (pack, at) = record(root, &id(1));
                flip(&pack, at + super::HEADER_LEN as u64 + 7);
            }
            // Unreadable everywhere: the retried write appends a second record.
            put(&store, &id(1), &data(1, 1000)).await.unwrap();
        }
        // As if the server had crashed before marking the first record deleted, and the
        // second had been torn (its data never reached the disk) while the first is good.
        for root in &roots {
            let recs = records_of(root, &id(1));
            assert_eq!(recs.len(), 2);
            let (pack, first) = recs[0].clone();
            let live = super::encode_header(&id(1), 1000 + 4 + 24, 0);
            let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
            f.write_all_at(&live, first).unwrap();
            flip(&pack, first + super::HEADER_LEN as u64 + 7);
            flip(&recs[1].0, recs[1].1 + super::HEADER_LEN as u64 + 7);
        }
        let (store, _) = open(dir.path(), true);
        assert_eq!(store.chunk_count(), 1);
        assert_eq!(get(&store, &id(1)).await.unwrap(), data(1, 1000));
    }

    #[tokio::test]
    async fn concurrent_small_writes_all_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path(), true);
        let mut tasks = Vec::new();
        for n in 0..64u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                put(&store, &id(n), &data(n, 4096)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for n in 0..64u32 {
            assert_eq!(get(&store, &id(n)).await.unwrap(), data(n, 4096));
        }
        assert_eq!(store.chunk_count(), 64);
    }
}
