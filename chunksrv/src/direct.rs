//! Appending to new files without the page cache (`O_DIRECT`) where the filesystem allows it.
//!
//! Chunk bytes are written once and read rarely (the backup copy almost never), so copying
//! them into the page cache only burns CPU: on a 2-core VM that copy was most of the cost of
//! a put. Whole aligned pieces go straight to the device; the unaligned tail (the last piece
//! and the trailer) is written through the page cache. Small files never reach a full piece
//! and stay buffered. On a filesystem without `O_DIRECT` (tmpfs) everything is buffered.
//! Durability is unchanged: the caller still fsyncs before it acknowledges.
use dfs_proto::bytes as prost_bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Alignment of direct IO buffers and offsets (a multiple of any logical block size in use).
const ALIGN: usize = 4096;
/// Bytes gathered before one direct write (a multiple of `ALIGN`).
pub const PIECE: usize = 1024 * 1024;

/// A buffer of fixed capacity whose bytes start `ALIGN`-aligned in memory. It is filled by
/// appending, so a small chunk never pays for zeroing the whole capacity.
struct AlignedBuf {
    /// `start` padding bytes, then the content; never grows past its first allocation, so
    /// the content never moves.
    storage: Vec<u8>,
    start: usize,
    cap: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        Self::with_capacity(PIECE)
    }

    /// Room for `cap` bytes (a multiple of `ALIGN`).
    fn with_capacity(cap: usize) -> Self {
        let mut storage: Vec<u8> = Vec::with_capacity(cap + ALIGN);
        let start = (ALIGN - storage.as_ptr() as usize % ALIGN) % ALIGN;
        storage.resize(start, 0);
        Self {
            storage,
            start,
            cap,
        }
    }

    fn len(&self) -> usize {
        self.storage.len() - self.start
    }

    /// Copy as much of `data` as fits; returns how much was taken.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = (self.cap - self.len()).min(data.len());
        self.storage.extend_from_slice(&data[..n]);
        n
    }

    fn is_full(&self) -> bool {
        self.len() == self.cap
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..]
    }

    fn clear(&mut self) {
        self.storage.truncate(self.start);
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// Whether a file of `size` bytes is big enough to be read directly (smaller files are
/// written through the page cache, so reading them from there is faster).
pub fn worth_direct_read(size: u64) -> bool {
    size >= PIECE as u64
}

/// A second descriptor for the same open file with `O_DIRECT` set, or `None` where the
/// filesystem does not allow it. (A separate descriptor: the flag must not change how other
/// reads of `file` behave.)
#[cfg(target_os = "linux")]
pub fn reopen_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

#[cfg(not(target_os = "linux"))]
pub fn reopen_direct(_file: &File) -> Option<File> {
    None
}

/// Read up to `len` bytes at `offset` (a multiple of 4096) from a descriptor opened by
/// [`reopen_direct`]; fewer only at the end of the file. The bytes are not copied again:
/// the returned `Bytes` owns the aligned buffer they were read into.
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<prost_bytes::Bytes> {
    if !offset.is_multiple_of(ALIGN as u64) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = AlignedBuf::with_capacity(len.div_ceil(ALIGN) * ALIGN);
    let content = buf.start;
    let mut got = 0;
    while got < len {
        // Into the spare capacity: zeroing a whole piece first would cost another pass.
        let spare = &mut buf.storage.spare_capacity_mut()[..buf.cap - got];
        let n = pread_uninit(file, spare, offset + got as u64)?;
        if n == 0 {
            break;
        }
        // SAFETY: pread initialized the first `n` bytes of the spare capacity, which start
        // right after the current length.
        unsafe { buf.storage.set_len(content + got + n) };
        got += n;
    }
    // The read may run past `len` into the chunk's trailer: keep only what was asked.
    buf.storage.truncate(content + got.min(len));
    Ok(prost_bytes::Bytes::from_owner(buf))
}

/// `pread(2)` into memory that need not be initialized; retried on EINTR.
fn pread_uninit(
    file: &File,
    buf: &mut [std::mem::MaybeUninit<u8>],
    offset: u64,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: the descriptor is open for the whole call and `buf` is writable for its
        // length; the kernel only writes into it.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                offset,
            )
        };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// One file being appended to, and whether its pieces go to the device directly.
struct Target<'a> {
    file: &'a File,
    direct: bool,
}

/// Appends the same bytes to one or more new files (a chunk's primary and backup copies):
/// each byte is copied once, into the shared aligned buffer, whatever the number of files.
pub struct AppendFiles<'a> {
    targets: Vec<Target<'a>>,
    buf: AlignedBuf,
    /// Bytes already in each file.
    offset: u64,
    /// Direct IO was tried (and kept or given up per file).
    tried: bool,
}

/// A write that failed: which file (index into the list given to `new`) and why.
pub type FileError = (usize, io::Error);

impl<'a> AppendFiles<'a> {
    /// Start appending to freshly created, empty files opened for writing.
    pub fn new(files: impl IntoIterator<Item = &'a File>) -> Self {
        Self {
            targets: files
                .into_iter()
                .map(|file| Target {
                    file,
                    direct: false,
                })
                .collect(),
            buf: AlignedBuf::new(),
            offset: 0,
            tried: false,
        }
    }

    /// Whether whole pieces go to the device directly (for the first file).
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.targets.first().is_some_and(|t| t.direct)
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<(), FileError> {
        while !data.is_empty() {
            let n = self.buf.fill(data);
            data = &data[n..];
            if self.buf.is_full() {
                self.write_full_piece()?;
            }
        }
        Ok(())
    }

    /// Write out what is buffered (the tail, through the page cache). Call before fsync.
    pub fn flush(&mut self) -> Result<(), FileError> {
        if self.buf.len() == 0 {
            return Ok(());
        }
        for (i, t) in self.targets.iter_mut().enumerate() {
            if t.direct {
                set_direct(t.file, false).map_err(|e| (i, e))?;
                t.direct = false;
            }
        }
        self.write_buffer()
    }

    fn write_full_piece(&mut self) -> Result<(), FileError> {
        if !self.tried {
            self.tried = true;
            for t in &mut self.targets {
                t.direct = set_direct(t.file, true).is_ok();
            }
        }
        self.write_buffer()
    }

    fn write_buffer(&mut self) -> Result<(), FileError> {
        let bytes = self.buf.bytes();
        for (i, t) in self.targets.iter_mut().enumerate() {
            match t.file.write_all_at(bytes, self.offset) {
                // Some filesystems accept the flag but refuse the write: go on buffered.
                Err(e) if t.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    set_direct(t.file, false).map_err(|e| (i, e))?;
                    t.direct = false;
                    t.file
                        .write_all_at(bytes, self.offset)
                        .map_err(|e| (i, e))?;
                }
                r => r.map_err(|e| (i, e))?,
            }
        }
        self.offset += bytes.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Turn `O_DIRECT` on or off for an open file (Linux allows it through `F_SETFL`).
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` keeps open for the whole call; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Write `len` bytes to two files in uneven pieces; both must read back exactly.
    fn roundtrip(dir: &std::path::Path, len: usize) -> bool {
        let paths = [dir.join(format!("a{len}")), dir.join(format!("b{len}"))];
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let files: Vec<File> = paths.iter().map(|p| File::create(p).unwrap()).collect();
        let mut out = AppendFiles::new(&files);
        for piece in data.chunks(300_001) {
            out.write(piece).unwrap();
        }
        let direct = out.is_direct();
        out.flush().unwrap();
        for (f, p) in files.iter().zip(&paths) {
            f.sync_data().unwrap();
            let mut back = Vec::new();
            File::open(p).unwrap().read_to_end(&mut back).unwrap();
            assert!(
                back == data,
                "{len} bytes did not read back from {}",
                p.display()
            );
        }
        direct
    }

    #[test]
    fn any_length_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            4095,
            4096,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            3 * PIECE + 4124,
        ] {
            let direct = roundtrip(dir.path(), len);
            // Whole pieces must really bypass the page cache wherever the filesystem can.
            assert_eq!(
                direct,
                len >= PIECE && supports_direct(dir.path()),
                "{len} bytes"
            );
        }
    }

    /// Whether files in `dir` can be opened with `O_DIRECT` (tmpfs before Linux 6.6 cannot).
    fn supports_direct(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
            .is_ok()
    }

    /// Whether `O_DIRECT` is set on `file`'s descriptor.
    fn is_direct_fd(file: &File) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETFL on a descriptor `file` keeps open; no memory is passed.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        flags >= 0 && flags & libc::O_DIRECT != 0
    }

    #[test]
    fn direct_reads_return_exactly_what_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let data: Vec<u8> = (0..3 * PIECE + 100).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let reader = match reopen_direct(&file) {
            Some(direct) => {
                assert!(is_direct_fd(&direct), "reopened without O_DIRECT");
                direct
            }
            // Only where the filesystem refuses it; the plain descriptor reads the same way.
            None => {
                assert!(!supports_direct(dir.path()));
                file
            }
        };
        for (offset, len) in [
            (0, PIECE),
            (PIECE, 4096),
            (2 * PIECE, PIECE + 100),
            (3 * PIECE, 5000),
        ] {
            let got = read_at(&reader, offset as u64, len).unwrap();
            let end = (offset + len).min(data.len());
            assert!(got[..] == data[offset..end], "read at {offset} of {len}");
        }
        assert!(
            read_at(&reader, 100, 10).is_err(),
            "unaligned offsets are refused"
        );
    }
}
