//! powerfs's FUSE file system over a backing directory. Every call goes to the backing directory
//! at once, except file data: written bytes stay in `Cache` until an fsync of that file puts them
//! on the backing disk and syncs it (or until more than `max_pending` bytes are pending: then
//! the largest file is written back without a sync, as a kernel writes dirty pages back). A
//! power cut (`Backing::cut`) loses every byte no fsync covered; a torn one first puts part of
//! them on the disk. A disk fault (`faults`) makes the calls it names fail until healed.
//!
//! What must stay true: a successful fsync (or fdatasync) returns only after the file's pending
//! bytes are written and synced on the backing disk; a read sees the pending bytes over the
//! disk's; the kernel caches no file data (every open is `FOPEN_DIRECT_IO`, attributes and
//! entries live 0 s), so after a cut the next read sees what the disk holds. Metadata calls
//! (create, mkdir, rename, unlink, truncate, chmod) are on the backing directory when they
//! return and survive a cut: this model finds writes acknowledged without a file sync, not a
//! directory sync that was forgotten. A call a fault refuses changes nothing.
use crate::cache::Cache;
use crate::faults::{DiskFault, Faults};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nothing is cached by the kernel: after a cut it must ask again.
const TTL: Duration = Duration::ZERO;

/// What the file system and its control socket share: the backing directory, the paths the
/// kernel knows, the pending writes and the fault in force.
pub struct Backing {
    root: PathBuf,
    /// The backing root's inode number (the mount's root is 1, as FUSE wants).
    root_ino: u64,
    /// Path below the root of every inode the kernel knows.
    paths: Mutex<HashMap<u64, PathBuf>>,
    pub cache: Mutex<Cache>,
    pub faults: Faults,
}

pub struct PowerFs {
    backing: Arc<Backing>,
    /// Open files by handle (read access: reads go to the disk, writes to the cache). Taken
    /// out of the map before any I/O, so the map's lock is never held across it.
    handles: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    max_pending: u64,
}

impl std::ops::Deref for PowerFs {
    type Target = Backing;
    fn deref(&self) -> &Backing {
        &self.backing
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nsecs.clamp(0, 999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn check(rc: libc::c_int) -> Result<(), Errno> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from(io::Error::last_os_error()))
    }
}

impl Backing {
    pub fn new(root: PathBuf) -> io::Result<Arc<Backing>> {
        let root_ino = std::fs::metadata(&root)?.ino();
        let mut paths = HashMap::new();
        paths.insert(1, PathBuf::new());
        Ok(Arc::new(Backing {
            root,
            root_ino,
            paths: Mutex::new(paths),
            cache: Mutex::new(Cache::default()),
            faults: Faults::default(),
        }))
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.paths).get(&ino.0).cloned().ok_or(Errno::ESTALE)
    }

    fn fuse_ino(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_ino {
            1
        } else {
            st_ino
        }
    }

    /// The backing file of `ino` opened for writing, if its path still names that inode (a
    /// file replaced by a rename or unlinked has none: its pending bytes go nowhere).
    fn open_for_write(&self, ino: u64) -> Option<File> {
        let path = lock(&self.paths).get(&ino).map(|p| self.full(p))?;
        let f = OpenOptions::new().write(true).open(path).ok()?;
        let same = f.metadata().is_ok_and(|m| self.fuse_ino(m.ino()) == ino);
        same.then_some(f)
    }

    /// A clean shutdown: every pending byte is written back (as a machine that is shut down
    /// writes its dirty pages), without a sync. Returns (bytes, files) written.
    pub fn write_back_all(&self) -> (u64, usize) {
        let mut c = lock(&self.cache);
        let pending = c.pending();
        for ino in c.dirty_files() {
            let written = match self.open_for_write(ino) {
                Some(f) => c.write_back(ino, &f),
                None => Ok(()),
            };
            if let Err(e) = written {
                tracing::warn!(ino, "writing back pending bytes at shutdown: {e}");
            }
            // Gone either way: written back, or nowhere left to write it.
            c.forget(ino);
        }
        pending
    }

    /// A power cut: every pending byte is dropped; a torn one first puts part of each file's
    /// pending bytes on the disk (`Cache::torn_prefix`). Returns (bytes, files) that were
    /// pending.
    pub fn cut(&self, torn: bool) -> (u64, usize) {
        let mut c = lock(&self.cache);
        if torn {
            for ino in c.dirty_files() {
                let Some(f) = self.open_for_write(ino) else {
                    continue;
                };
                for (offset, data) in c.torn_prefix(ino) {
                    if let Err(e) = f.write_all_at(&data, offset) {
                        tracing::warn!(ino, "writing a torn write: {e}");
                    }
                }
            }
        }
        c.cut()
    }
}

impl PowerFs {
    pub fn new(backing: Arc<Backing>, max_pending: u64) -> PowerFs {
        PowerFs {
            backing,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            max_pending,
        }
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(Errno::EINVAL);
        }
        Ok(self.path_of(parent)?.join(name))
    }

    /// The attributes of `rel` (its size as the writer sees it), remembering its path.
    fn attr_of(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.full(rel))?;
        let ino = self.fuse_ino(m.ino());
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = lock(&self.cache).size(ino).unwrap_or(m.size());
        lock(&self.paths).insert(ino, rel.to_path_buf());
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    fn new_handle(&self, file: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(file));
        fh
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// EIO while the disk fails writes: every change to the disk asks this first.
    fn writable(&self) -> Result<(), Errno> {
        match self.faults.get() {
            Some(DiskFault::WriteEio) => Err(Errno::EIO),
            _ => Ok(()),
        }
    }

    /// As `writable`, and ENOSPC while the disk is full: calls that need new space ask this.
    fn room(&self) -> Result<(), Errno> {
        self.writable()?;
        match self.faults.get() {
            Some(DiskFault::Full) => Err(Errno::ENOSPC),
            _ => Ok(()),
        }
    }

    /// Put `ino`'s pending bytes on the backing disk and sync them.
    fn sync_file(&self, ino: INodeNo, datasync: bool) -> Result<(), Errno> {
        if self.faults.is(DiskFault::WriteEio) {
            // The write-back failed: Linux reports it once and marks the pages clean, so
            // the bytes are gone and a later fsync succeeds without them.
            lock(&self.cache).forget(ino.0);
            return Err(Errno::EIO);
        }
        let Some(f) = self.open_for_write(ino.0) else {
            // Unlinked or replaced while open: nothing reachable to sync.
            lock(&self.cache).forget(ino.0);
            return Ok(());
        };
        lock(&self.cache).write_back(ino.0, &f)?;
        if datasync {
            f.sync_data()?;
        } else {
            f.sync_all()?;
        }
        Ok(())
    }

    /// With more than `max_pending` bytes pending, write the largest file back (no sync).
    fn bound_pending(&self) {
        let mut c = lock(&self.cache);
        while c.pending().0 > self.max_pending {
            let Some(ino) = c.largest() else {
                return;
            };
            match self.open_for_write(ino) {
                Some(f) => {
                    if let Err(e) = c.write_back(ino, &f) {
                        tracing::warn!(ino, "writing back pending bytes: {e}");
                        c.forget(ino);
                    }
                }
                // Its file is gone: nothing to write back to.
                None => c.forget(ino),
            }
        }
    }

    fn set_times(
        &self,
        path: &Path,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Result<(), Errno> {
        let spec = |t: Option<TimeOrNow>| match t {
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            Some(TimeOrNow::Now) => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Some(TimeOrNow::SpecificTime(t)) => {
                let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                }
            }
        };
        let times = [spec(atime), spec(mtime)];
        let c = cpath(path)?;
        // SAFETY: a NUL-terminated path and an array of two timespecs, as utimensat wants.
        check(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name).and_then(|p| self.attr_of(&p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path_of(ino).and_then(|p| self.attr_of(&p)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            self.writable()?;
            let rel = self.path_of(ino)?;
            let path = self.full(&rel);
            if let Some(m) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if let Some(s) = size {
                // A truncate is metadata: on the disk at once; pending bytes past it go.
                let mut c = lock(&self.cache);
                OpenOptions::new().write(true).open(&path)?.set_len(s)?;
                c.truncate(ino.0, s);
            }
            if atime.is_some() || mtime.is_some() {
                self.set_times(&path, atime, mtime)?;
            }
            self.attr_of(&rel)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path_of(ino)
            .and_then(|p| Ok(std::fs::read_link(self.full(&p))?))
        {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
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
        let r = self
            .room()
            .and_then(|()| self.child(parent, name))
            .and_then(|rel| {
                std::fs::DirBuilder::new()
                    .mode(mode & !umask & 0o7777)
                    .create(self.full(&rel))?;
                self.attr_of(&rel)
            });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .writable()
            .and_then(|()| self.child(parent, name))
            .and_then(|rel| {
                let path = self.full(&rel);
                let m = std::fs::symlink_metadata(&path)?;
                std::fs::remove_file(&path)?;
                if m.nlink() <= 1 {
                    lock(&self.cache).forget(self.fuse_ino(m.ino()));
                }
                Ok(())
            });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .writable()
            .and_then(|()| self.child(parent, name))
            .and_then(|rel| Ok(std::fs::remove_dir(self.full(&rel))?))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
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
        let r = self
            .room()
            .and_then(|()| self.child(parent, link_name))
            .and_then(|rel| {
                std::os::unix::fs::symlink(target, self.full(&rel))?;
                self.attr_of(&rel)
            });
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
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
            self.writable()?;
            let (from, to) = (self.child(parent, name)?, self.child(newparent, newname)?);
            let (f, t) = (cpath(&self.full(&from))?, cpath(&self.full(&to))?);
            // A file the rename replaces is gone, its pending bytes with it.
            let moved = std::fs::symlink_metadata(self.full(&from)).map(|m| m.ino())?;
            let replaced = std::fs::symlink_metadata(self.full(&to))
                .ok()
                .filter(|m| m.is_file() && m.nlink() <= 1 && m.ino() != moved)
                .map(|m| self.fuse_ino(m.ino()));
            // SAFETY: two NUL-terminated paths; renameat2 reads them only.
            check(unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    f.as_ptr(),
                    libc::AT_FDCWD,
                    t.as_ptr(),
                    flags.bits(),
                )
            })?;
            if let Some(gone) = replaced {
                lock(&self.cache).forget(gone);
                lock(&self.paths).remove(&gone);
            }
            // What the kernel knows under the old name (and below it) is under the new one.
            for p in lock(&self.paths).values_mut() {
                if let Ok(rest) = p.strip_prefix(&from) {
                    *p = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                }
            }
            Ok::<(), Errno>(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Read access whatever the caller asked for: reads lay pending bytes over the disk's,
        // and writes never go through this handle.
        let r = self
            .path_of(ino)
            .and_then(|rel| Ok(File::open(self.full(&rel))?));
        match r {
            Ok(f) => reply.opened(FileHandle(self.new_handle(f)), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let r = (|| {
            if self.faults.is(DiskFault::ReadEio) {
                return Err(Errno::EIO);
            }
            let h = self.handle(fh)?;
            // The disk read and the overlay under one hold of the cache: a write-back between
            // them would leave bytes neither on the disk read nor in the cache.
            let cache = lock(&self.cache);
            let mut buf = vec![0u8; size as usize];
            let mut got = 0;
            while got < buf.len() {
                match h.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Errno::from(e)),
                }
            }
            buf.truncate(got);
            cache.overlay(ino.0, offset, &mut buf, size as usize);
            Ok(buf)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = (|| {
            self.writable()?;
            let h = self.handle(fh)?;
            {
                let mut c = lock(&self.cache);
                // The disk's size matters only for a file's first pending write.
                let disk_size = match c.size(ino.0) {
                    Some(_) => 0,
                    None => h.metadata()?.len(),
                };
                let size = c.size(ino.0).unwrap_or(disk_size);
                if offset + data.len() as u64 > size {
                    // Growing the file needs space; an overwrite does not.
                    self.room()?;
                }
                c.write(ino.0, disk_size, offset, data);
            }
            self.bound_pending();
            Ok::<u32, Errno>(data.len() as u32)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) syncs nothing on a real disk either.
        reply.ok();
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
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync_file(ino, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = (|| {
            let rel = self.path_of(ino)?;
            let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            let mut names: Vec<_> = std::fs::read_dir(self.full(&rel))?
                .filter_map(Result::ok)
                .collect();
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let Ok(m) = e.metadata() else { continue };
                let kind = if m.is_dir() {
                    FileType::Directory
                } else if m.file_type().is_symlink() {
                    FileType::Symlink
                } else {
                    FileType::RegularFile
                };
                entries.push((self.fuse_ino(m.ino()), kind, e.file_name()));
            }
            Ok::<_, Errno>(entries)
        })();
        match r {
            Ok(entries) => {
                for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self
            .writable()
            .and_then(|()| self.path_of(ino))
            .and_then(|rel| Ok(File::open(self.full(&rel))?.sync_all()?))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let r = (|| {
            let c = cpath(&self.root)?;
            // SAFETY: statvfs fills the zeroed struct it is given from a NUL-terminated path.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
            Ok::<_, Errno>(st)
        })();
        // A full disk has no free blocks, whatever the backing disk has.
        let full = self.faults.is(DiskFault::Full);
        let free = |n: u64| if full { 0 } else { n };
        match r {
            Ok(st) => reply.statfs(
                st.f_blocks,
                free(st.f_bfree),
                free(st.f_bavail),
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
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
            let rel = self.child(parent, name)?;
            // Opening a file that exists needs no space; making one does.
            if std::fs::symlink_metadata(self.full(&rel)).is_ok() {
                self.writable()?;
            } else {
                self.room()?;
            }
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            let f = o.open(self.full(&rel))?;
            if flags & libc::O_TRUNC != 0 {
                let mut c = lock(&self.cache);
                f.set_len(0)?;
                c.truncate(self.fuse_ino(f.metadata()?.ino()), 0);
            }
            let a = self.attr_of(&rel)?;
            Ok::<_, Errno>((a, self.new_handle(f)))
        })();
        match r {
            Ok((a, fh)) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}
