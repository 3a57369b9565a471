//! A draft: the new version of a file that an open handle is writing, kept chunk by chunk.
//!
//! Each chunk of the draft is one of: kept unchanged from the version the handle opened (not
//! copied anywhere), local (its bytes in the handle's sparse staging file, at the chunk's own
//! offset), being uploaded (in the background), or stored on chunk servers but not committed.
//! A write stages only the chunks it touches (a kept or stored chunk is fetched first); a
//! sequential writer's chunks are uploaded as soon as it has written past them, so copying a
//! 10 GiB file needs a few chunks of staging, not 10 GiB. `commit` uploads what is still local
//! and makes the whole list the file's new version in one metadata commit.
//!
//! What must stay true:
//! - nothing is visible to others before `commit`; a crash before it leaves the previous version
//!   (uploaded chunks are orphans, collected by the cluster later);
//! - every byte of the staging file outside the local chunks' lengths is zero (a chunk region
//!   is punched when it stops being local, and the tail of a shortened chunk is zeroed), so a
//!   file grown by truncate or by a write past its end reads zeros in the gap;
//! - local bytes across all drafts stay within the mount's staging budget when they can: a
//!   writer over it uploads its other local chunks first (it waits; the disk does not fill).
use crate::{Backend, FsError, FsResult, Piece, StoredChunk, Upload};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Chunks one draft uploads at once in the background (memory: this many chunks).
const UPLOADS_IN_FLIGHT: usize = 4;
/// The most chunks a file written through the mount may have (8 TiB with 8 MiB chunks): the
/// draft holds one slot per chunk, holes included, so this bounds its memory (16 MiB).
const MAX_CHUNKS: u64 = 1 << 20;

enum Slot {
    /// Chunk `i` of the opened version, unchanged.
    Kept(usize),
    /// In the staging file at `index * chunk_size`.
    Local,
    Uploading(Upload),
    Stored(Box<StoredChunk>),
}

/// Bytes staged locally by every draft of one mount, against its budget.
#[derive(Debug, Default)]
pub struct StagingBudget {
    pub limit: u64,
    pub used: AtomicU64,
}

pub(crate) struct Draft<B: Backend> {
    path: String,
    /// The version the handle opened (kept chunks are read from it); None after O_TRUNC or
    /// for a new file.
    base: Option<B::Reader>,
    base_chunks: Vec<u64>,
    /// 0 until known: taken from the opened version, or from the first allocation.
    chunk_size: u64,
    /// An allocation made to learn the chunk size, used by the first upload.
    spare: Option<crate::Allocation>,
    size: u64,
    slots: Vec<Slot>,
    staging: File,
    /// Bytes of local chunks (for the budget).
    local_bytes: u64,
    budget: Arc<StagingBudget>,
    /// The whole-file sha256 while the draft was written in order from byte 0.
    hash: Option<(Sha256, u64)>,
    /// Where the last write ended, and the first chunk a sequential writer has not passed.
    last_end: u64,
    next_stream: usize,
    /// Slots whose upload was started, oldest first (at most `UPLOADS_IN_FLIGHT` running).
    in_flight: std::collections::VecDeque<usize>,
    /// Keeps the stored chunks committable while the file stays open for hours.
    lease: B::Lease,
}

/// Length of chunk `i` of a file of `size` bytes cut in `cs`-byte chunks.
fn chunk_len(size: u64, cs: u64, i: usize) -> u64 {
    size.saturating_sub(i as u64 * cs).min(cs)
}

/// Give a byte range of the staging file back to the file system (reads as zeros after).
fn punch(f: &File, offset: u64, len: u64) -> FsResult<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on an fd we own; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // A file system without hole punching: write the zeros.
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl<B: Backend> Draft<B> {
    /// A draft starting from `base` (None: from an empty file).
    pub(crate) fn new(
        backend: &B,
        path: &str,
        base: Option<B::Reader>,
        staging: File,
        budget: Arc<StagingBudget>,
    ) -> FsResult<Self> {
        let (chunk_size, base_chunks) = match &base {
            Some(r) => backend.layout(r),
            None => (0, Vec::new()),
        };
        let size: u64 = base_chunks.iter().sum();
        // An empty version has nothing to keep (its chunks, if any, hold no bytes).
        let base_chunks = if size == 0 { Vec::new() } else { base_chunks };
        let mut d = Draft {
            path: path.to_string(),
            base,
            chunk_size: if size == 0 { 0 } else { chunk_size },
            base_chunks: base_chunks.clone(),
            spare: None,
            size,
            slots: (0..base_chunks.len()).map(Slot::Kept).collect(),
            staging,
            local_bytes: 0,
            budget,
            hash: (size == 0).then(|| (Sha256::new(), 0)),
            last_end: 0,
            next_stream: 0,
            in_flight: Default::default(),
            lease: backend.write_lease(path),
        };
        // Chunks cut another way than ours (all but the last `chunk_size` bytes) cannot be
        // kept one by one: all of them are staged.
        let uniform = base_chunks.iter().enumerate().all(|(i, &n)| {
            n == chunk_size || (i + 1 == base_chunks.len() && n > 0 && n <= chunk_size)
        });
        if !uniform {
            d.restage_whole(backend)?;
        }
        Ok(d)
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The file was renamed while open: later uploads and the commit go to its new path.
    pub(crate) fn set_path(&mut self, path: &str) {
        self.path = path.to_string();
    }

    fn cs(&mut self, backend: &B) -> FsResult<u64> {
        if self.chunk_size == 0 {
            let (alloc, cs) = backend.allocate(&self.path)?;
            self.spare = Some(alloc);
            self.chunk_size = cs;
        }
        Ok(self.chunk_size)
    }

    fn add_local(&mut self, n: u64) {
        self.local_bytes += n;
        self.budget.used.fetch_add(n, Ordering::Relaxed);
    }

    fn drop_local(&mut self, n: u64) {
        let n = n.min(self.local_bytes);
        self.local_bytes -= n;
        self.budget.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Make chunk `i` local: fetch a kept or stored chunk into the staging file.
    fn make_local(&mut self, backend: &B, i: usize) -> FsResult<()> {
        let cs = self.chunk_size;
        let bytes = match std::mem::replace(&mut self.slots[i], Slot::Local) {
            Slot::Local => return Ok(()),
            Slot::Kept(b) => {
                let start = b as u64 * cs;
                let len = self.base_chunks[b];
                let base = self
                    .base
                    .as_mut()
                    .ok_or_else(|| FsError::new(libc::EIO, "kept chunk without a base"))?;
                let mut out = Vec::with_capacity(len as usize);
                while (out.len() as u64) < len {
                    let part =
                        backend.read_at(base, start + out.len() as u64, len - out.len() as u64);
                    let part = match part {
                        Ok(p) if !p.is_empty() => p,
                        Ok(_) => Err(FsError::new(libc::EIO, "the file ended early"))?,
                        Err(e) => {
                            self.slots[i] = Slot::Kept(b);
                            return Err(e);
                        }
                    };
                    out.extend_from_slice(&part);
                }
                out
            }
            Slot::Uploading(u) => match u.wait() {
                Ok(c) => match backend.read_stored(&self.path, &c) {
                    Ok(b) => b,
                    Err(e) => {
                        self.slots[i] = Slot::Stored(Box::new(c));
                        return Err(e);
                    }
                },
                Err(e) => return Err(self.lost_upload(i, e)),
            },
            Slot::Stored(c) => match backend.read_stored(&self.path, &c) {
                Ok(b) => b,
                Err(e) => {
                    self.slots[i] = Slot::Stored(c);
                    return Err(e);
                }
            },
        };
        self.staging.write_all_at(&bytes, i as u64 * cs)?;
        self.add_local(bytes.len() as u64);
        Ok(())
    }

    /// An upload that failed lost the chunk's only copy (its bytes were handed to it): the
    /// draft cannot be committed any more. Said once, as EIO, on this and every later call.
    fn lost_upload(&mut self, i: usize, e: FsError) -> FsError {
        self.slots[i] = Slot::Uploading(Upload::failed(FsError::new(e.errno, e.msg.clone())));
        FsError::new(
            e.errno,
            format!("a chunk of {} could not be stored: {}", self.path, e.msg),
        )
    }

    /// Start uploading local chunk `i` (its current length) and free its staging bytes.
    fn upload(&mut self, backend: &B, i: usize) -> FsResult<()> {
        let len = chunk_len(self.size, self.chunk_size, i);
        let off = i as u64 * self.chunk_size;
        let mut data = vec![0u8; len as usize];
        self.staging.read_exact_at(&mut data, off)?;
        while self.in_flight.len() >= UPLOADS_IN_FLIGHT {
            self.settle_oldest()?;
        }
        self.slots[i] =
            Slot::Uploading(backend.start_upload(&self.path, &self.lease, self.spare.take(), data));
        self.in_flight.push_back(i);
        punch(&self.staging, off, self.chunk_size)?;
        self.drop_local(len);
        Ok(())
    }

    /// Stage the whole opened version, cut again into this draft's chunks (for a version whose
    /// chunks are not all `chunk_size` bytes but the last, which cannot be kept one by one).
    fn restage_whole(&mut self, backend: &B) -> FsResult<()> {
        let cs = self.cs(backend)?;
        let base = self
            .base
            .as_mut()
            .ok_or_else(|| FsError::new(libc::EIO, "no version to stage"))?;
        let mut off = 0;
        while off < self.size {
            let part = backend.read_at(base, off, cs.min(self.size - off))?;
            if part.is_empty() {
                return Err(FsError::new(
                    libc::EIO,
                    "the file ended early while staging",
                ));
            }
            self.staging.write_all_at(&part, off)?;
            off += part.len() as u64;
        }
        self.slots = (0..self.size.div_ceil(cs)).map(|_| Slot::Local).collect();
        let size = self.size;
        self.add_local(size);
        Ok(())
    }

    /// Wait for the oldest upload started (an entry whose chunk was since fetched back or cut
    /// off is just dropped).
    fn settle_oldest(&mut self) -> FsResult<()> {
        let Some(j) = self.in_flight.pop_front() else {
            return Ok(());
        };
        if !matches!(self.slots.get(j), Some(Slot::Uploading(_))) {
            return Ok(());
        }
        if let Slot::Uploading(u) = std::mem::replace(&mut self.slots[j], Slot::Local) {
            match u.wait() {
                Ok(c) => self.slots[j] = Slot::Stored(Box::new(c)),
                Err(e) => return Err(self.lost_upload(j, e)),
            }
        }
        Ok(())
    }

    /// Write `data` at `offset`.
    pub(crate) fn write_at(&mut self, backend: &B, data: &[u8], offset: u64) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let cs = self.cs(backend)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| FsError::new(libc::EFBIG, "write past the largest file size"))?;
        if end > self.size {
            self.grow(backend, end)?;
        }
        let (first, last) = ((offset / cs) as usize, ((end - 1) / cs) as usize);
        for i in first..=last {
            self.make_local(backend, i)?;
        }
        self.staging.write_all_at(data, offset)?;
        self.hash = match self.hash.take() {
            Some((mut h, upto)) if upto == offset => {
                h.update(data);
                Some((h, end))
            }
            _ => None,
        };
        // A sequential writer: chunks it has written past are final, unless it comes back.
        if offset == self.last_end {
            while (self.next_stream as u64 + 1) * cs <= end && self.next_stream < self.slots.len() {
                if matches!(self.slots[self.next_stream], Slot::Local) {
                    self.upload(backend, self.next_stream)?;
                }
                self.next_stream += 1;
            }
        }
        self.last_end = end;
        // Over the staging budget: this draft's other local chunks go out first.
        if self.budget.used.load(Ordering::Relaxed) > self.budget.limit {
            for i in 0..self.slots.len() {
                if self.budget.used.load(Ordering::Relaxed) <= self.budget.limit {
                    break;
                }
                if (i < first || i > last) && matches!(self.slots[i], Slot::Local) {
                    self.upload(backend, i)?;
                }
            }
        }
        Ok(())
    }

    /// Extend to `new` bytes (zeros): the last chunk, if short, becomes local so it can grow.
    fn grow(&mut self, backend: &B, new: u64) -> FsResult<()> {
        let cs = self.cs(backend)?;
        if new.div_ceil(cs) > MAX_CHUNKS {
            return Err(FsError::new(
                libc::EFBIG,
                format!("files written through the mount hold at most {MAX_CHUNKS} chunks of {cs} bytes"),
            ));
        }
        if let Some(last) = self.slots.len().checked_sub(1) {
            if chunk_len(self.size, cs, last) < cs {
                self.make_local(backend, last)?;
            }
        }
        let want = new.div_ceil(cs) as usize;
        let old_size = self.size;
        // The staging file covers the new size (a sparse tail reads as zeros).
        if self.staging.metadata()?.len() < new {
            self.staging.set_len(new)?;
        }
        while self.slots.len() < want {
            self.slots.push(Slot::Local);
        }
        self.size = new;
        // Local bytes: every local chunk's length under the new size minus under the old.
        let grown: u64 = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i], Slot::Local))
            .map(|i| chunk_len(new, cs, i) - chunk_len(old_size, cs, i))
            .sum();
        self.add_local(grown);
        Ok(())
    }

    /// Truncate or extend to `new` bytes.
    pub(crate) fn set_len(&mut self, backend: &B, new: u64) -> FsResult<()> {
        if new > self.size {
            self.grow(backend, new)?;
            self.hash = None;
            return Ok(());
        }
        if new == self.size {
            return Ok(());
        }
        let cs = self.cs(backend)?;
        let keep = new.div_ceil(cs) as usize;
        // A chunk cut in the middle: local, with its tail zeroed.
        if !new.is_multiple_of(cs) {
            self.make_local(backend, keep - 1)?;
        }
        for i in (keep..self.slots.len()).rev() {
            if let Some(Slot::Local) = self.slots.pop() {
                let len = chunk_len(self.size, cs, i);
                punch(&self.staging, i as u64 * cs, cs)?;
                self.drop_local(len);
            }
        }
        if !new.is_multiple_of(cs) {
            let was = chunk_len(self.size, cs, keep - 1);
            let now = new % cs;
            punch(&self.staging, new, cs - now)?;
            self.drop_local(was - now);
        }
        self.size = new;
        self.next_stream = self.next_stream.min(self.slots.len());
        self.last_end = self.last_end.min(new);
        self.hash = match self.hash.take() {
            Some((h, upto)) if upto == new => Some((h, upto)),
            _ if new == 0 => Some((Sha256::new(), 0)),
            _ => None,
        };
        Ok(())
    }

    /// Up to `len` bytes at `offset` (fewer only at the end).
    pub(crate) fn read_at(&mut self, backend: &B, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let cs = self.chunk_size;
        let mut out = Vec::with_capacity((end - offset) as usize);
        while (out.len() as u64) < end - offset {
            let at = offset + out.len() as u64;
            let i = (at / cs) as usize;
            let within = at - i as u64 * cs;
            let n = (chunk_len(self.size, cs, i) - within).min(end - at);
            match &mut self.slots[i] {
                Slot::Local => {
                    let mut buf = vec![0u8; n as usize];
                    self.staging.read_exact_at(&mut buf, at)?;
                    out.extend_from_slice(&buf);
                }
                Slot::Kept(b) => {
                    let start = *b as u64 * cs;
                    let base = self
                        .base
                        .as_mut()
                        .ok_or_else(|| FsError::new(libc::EIO, "kept chunk without a base"))?;
                    let part = backend.read_at(base, start + within, n)?;
                    if part.len() as u64 != n {
                        return Err(FsError::new(libc::EIO, "the file ended early"));
                    }
                    out.extend_from_slice(&part);
                }
                Slot::Uploading(_) | Slot::Stored(_) => {
                    // Rare (reading back what was just written): the chunk is made local.
                    self.make_local(backend, i)?;
                    continue;
                }
            }
        }
        Ok(out)
    }

    /// Upload what is still local, wait for every upload and commit the chunk list as the
    /// file's new version. The draft stays usable: its chunks are now the committed ones.
    pub(crate) fn commit(&mut self, backend: &B) -> FsResult<crate::Entry> {
        if self.size > 0 {
            self.cs(backend)?;
        }
        for i in 0..self.slots.len() {
            if matches!(self.slots[i], Slot::Local) {
                self.upload(backend, i)?;
            }
        }
        let mut pieces = Vec::with_capacity(self.slots.len());
        for i in 0..self.slots.len() {
            if let Slot::Uploading(_) = self.slots[i] {
                if let Slot::Uploading(u) = std::mem::replace(&mut self.slots[i], Slot::Local) {
                    match u.wait() {
                        Ok(c) => self.slots[i] = Slot::Stored(Box::new(c)),
                        Err(e) => return Err(self.lost_upload(i, e)),
                    }
                }
            }
            pieces.push(match &self.slots[i] {
                Slot::Kept(b) => Piece::Kept(*b),
                Slot::Stored(c) => Piece::Stored((**c).clone()),
                Slot::Local | Slot::Uploading(_) => unreachable!("settled above"),
            });
        }
        let sha = match &self.hash {
            Some((h, upto)) if *upto == self.size => Some(hex::encode(h.clone().finalize())),
            _ => None,
        };
        backend.commit(
            &self.path,
            self.base.as_ref(),
            pieces,
            self.chunk_size,
            sha,
            &self.lease,
        )
    }
}

impl<B: Backend> Drop for Draft<B> {
    fn drop(&mut self) {
        let n = self.local_bytes;
        self.drop_local(n);
    }
}

/// The staging budget shared by a mount's drafts.
pub(crate) fn budget(limit: u64) -> Arc<StagingBudget> {
    Arc::new(StagingBudget {
        limit,
        used: AtomicU64::new(0),
    })
}
