//! The mount's [`Backend`] on a real cluster: each call is a `dfs-client` call run on the
//! mount process's tokio runtime from a FUSE worker thread.
//!
//! What must stay true: every failure (a dead chunk server, no leader, a timeout) comes back as
//! an errno for that one call ([`errno_of`]); nothing here panics or exits, so the mount
//! outlives any peer. A commit is retried only when it failed for a transient reason, and
//! always from the local staging file, so a retry resends exactly the bytes the program wrote.
use crate::{Allocation, Backend, Entry, Fetch, FsError, FsResult, Piece, StoredChunk, Upload};
use dfs_client::lease::WriteLease;
use dfs_client::{Client, Error, ReadHandle};
use dfs_proto::{ChunkInfo, FileInfo, RenameMode};
use std::sync::Arc;
use std::time::Duration;

/// How many times a commit is tried when it fails transiently (a chunk server died mid-put,
/// the leader changed): the staged bytes are local, so a retry is safe.
const STORE_ATTEMPTS: usize = 6;

/// The errno a program sees for a failed cluster call.
pub fn errno_of(e: &Error) -> i32 {
    match e {
        Error::NotFound(_) => libc::ENOENT,
        Error::Exists(_) => libc::EEXIST,
        Error::NotADirectory(_) => libc::ENOTDIR,
        Error::IsADirectory(_) => libc::EISDIR,
        Error::NotEmpty(_) => libc::ENOTEMPTY,
        Error::Permission(_) => libc::EACCES,
        Error::InvalidName(_) => libc::EINVAL,
        Error::ChangedWhileReading { .. } => libc::ESTALE,
        Error::Io(io) => io.raw_os_error().unwrap_or(libc::EIO),
        Error::NoSpace(_) => libc::ENOSPC,
        Error::Unavailable(_) | Error::DataError(_) | Error::Other(_) | Error::Tls(_) => libc::EIO,
    }
}

fn fs_error(e: Error) -> FsError {
    FsError::new(errno_of(&e), e.to_string())
}

/// Only these failures are worth another commit attempt.
fn transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable(_) | Error::DataError(_) | Error::Io(_)
    )
}

fn entry(f: &FileInfo) -> Entry {
    Entry {
        is_dir: f.is_dir,
        size: f.size,
        mtime_ms: f.modified_ms,
        ino: f.ino,
        mode: f.mode,
        ctime_ms: f.ctime_ms,
        created_ms: f.created_ms,
        symlink: f.is_symlink.then(|| f.symlink_target.clone()),
    }
}

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis(500 << attempt.min(4))
}

/// Store one chunk of `path`, in `alloc` if given; a transient failure (a target died, the
/// leader changed) is retried in a fresh allocation, up to `STORE_ATTEMPTS` times. The bytes
/// stay in memory until then.
async fn store_chunk(
    client: &Client,
    path: &str,
    mut alloc: Option<Allocation>,
    data: Vec<u8>,
) -> Result<StoredChunk, Error> {
    let mut attempt = 0;
    loop {
        let a = match alloc.take() {
            Some(a) => a,
            None => client.allocate_chunk(path, data.len() as u64).await?.0,
        };
        match client.store_chunk(a, data.clone()).await {
            Ok(c) => return Ok(c),
            // A refused token: the allocation was made long ago; a fresh one is fine.
            Err(e)
                if (transient(&e) || matches!(e, Error::Permission(_)))
                    && attempt + 1 < STORE_ATTEMPTS =>
            {
                tracing::warn!("storing a chunk of {path} failed, retrying: {e}");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A cluster directory (`root`) seen through one client.
pub struct ClusterBackend {
    rt: tokio::runtime::Handle,
    client: Arc<Client>,
    root: String,
}

impl ClusterBackend {
    /// `root` is the cluster directory shown at the mount point (`/` for all of it).
    pub fn new(rt: tokio::runtime::Handle, client: Client, root: &str) -> Self {
        let root = match root.trim_end_matches('/') {
            "" => "/".to_string(),
            r => r.to_string(),
        };
        Self {
            rt,
            client: Arc::new(client),
            root,
        }
    }

    /// The cluster path of a mount path.
    fn remote(&self, p: &str) -> String {
        match (self.root.as_str(), p) {
            ("/", _) => p.to_string(),
            (r, "/") => r.to_string(),
            (r, _) => format!("{r}{p}"),
        }
    }

    fn block<T>(&self, f: impl std::future::Future<Output = Result<T, Error>>) -> FsResult<T> {
        self.rt.block_on(f).map_err(fs_error)
    }
}

impl Backend for ClusterBackend {
    fn stat(&self, path: &str) -> FsResult<Entry> {
        let path = self.remote(path);
        self.block(async { Ok(entry(&self.client.stat(&path).await?)) })
    }

    fn list(&self, path: &str) -> FsResult<Vec<(String, Entry)>> {
        let path = self.remote(path);
        self.block(async {
            let entries = self.client.list(&path).await?;
            Ok(entries
                .iter()
                .map(|f| (dfs_common::path::file_name(&f.path).to_string(), entry(f)))
                .collect())
        })
    }

    fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: u32,
    ) -> FsResult<(Vec<(String, Entry)>, String)> {
        let path = self.remote(path);
        self.block(async {
            let (entries, next) = self.client.list_page(&path, after, limit).await?;
            let entries = entries
                .iter()
                .map(|f| (dfs_common::path::file_name(&f.path).to_string(), entry(f)))
                .collect();
            Ok((entries, next))
        })
    }

    fn symlink(&self, path: &str, target: &str) -> FsResult<Entry> {
        let path = self.remote(path);
        self.block(async {
            self.client.symlink(&path, target).await?;
            Ok(entry(&self.client.stat(&path).await?))
        })
    }

    fn readlink(&self, path: &str) -> FsResult<String> {
        let path = self.remote(path);
        self.block(self.client.readlink(&path))
    }

    fn create(&self, path: &str, mode: u32) -> FsResult<Entry> {
        let path = self.remote(path);
        self.block(async { Ok(entry(&self.client.create_empty(&path, mode).await?)) })
    }

    fn set_attr(&self, path: &str, mode: Option<u32>, mtime_ms: Option<i64>) -> FsResult<()> {
        let path = self.remote(path);
        self.block(self.client.set_attr(&path, mode, mtime_ms))
    }

    fn mkdir(&self, path: &str) -> FsResult<()> {
        let path = self.remote(path);
        self.block(self.client.mkdir(&path, false))
    }

    fn remove(&self, path: &str) -> FsResult<()> {
        let path = self.remote(path);
        self.block(async { self.client.remove(&path, false).await.map(drop) })
    }

    fn rename(&self, from: &str, to: &str, replace: bool) -> FsResult<()> {
        let (from, to) = (self.remote(from), self.remote(to));
        let mode = if replace {
            RenameMode::RenameReplace
        } else {
            RenameMode::RenameNoreplace
        };
        self.block(self.client.rename_with(&from, &to, mode))
    }

    type Reader = ReadHandle;

    fn open_reader(&self, path: &str) -> FsResult<ReadHandle> {
        let path = self.remote(path);
        self.block(async {
            let h = self.client.open_read(&path).await?;
            if h.file().is_some_and(|f| f.is_dir) {
                return Err(Error::IsADirectory(format!("{path} is a directory")));
            }
            Ok(h)
        })
    }

    fn reader_size(&self, r: &ReadHandle) -> u64 {
        r.size()
    }

    fn read_at(&self, r: &mut ReadHandle, offset: u64, len: u64) -> FsResult<Vec<u8>> {
        self.block(self.client.read_at(r, offset, len))
    }

    fn start_read(&self, r: &ReadHandle, offset: u64, len: u64) -> Fetch {
        let (tx, fetch) = Fetch::channel();
        let (client, mut r) = (self.client.clone(), r.clone());
        self.rt.spawn(async move {
            let _ = tx.send(client.read_at(&mut r, offset, len).await.map_err(fs_error));
        });
        fetch
    }

    fn layout(&self, r: &ReadHandle) -> (u64, Vec<u64>) {
        match r.file() {
            Some(f) => (f.chunk_size, f.chunks.iter().map(|c| c.size).collect()),
            None => (0, Vec::new()),
        }
    }

    fn allocate(&self, path: &str) -> FsResult<(Allocation, u64)> {
        let path = self.remote(path);
        self.block(self.client.allocate_chunk(&path, 0))
    }

    type Lease = Arc<WriteLease>;

    fn write_lease(&self, path: &str) -> Self::Lease {
        let _in_rt = self.rt.enter();
        Arc::new(self.client.write_lease(&self.remote(path)))
    }

    fn start_upload(
        &self,
        path: &str,
        lease: &Self::Lease,
        alloc: Option<Allocation>,
        data: Vec<u8>,
    ) -> Upload {
        let (tx, upload) = Upload::channel();
        let (client, path, lease) = (self.client.clone(), self.remote(path), lease.clone());
        self.rt.spawn(async move {
            let r = store_chunk(&client, &path, alloc, data).await;
            if let Ok(c) = &r {
                lease.add_one(&c.chunk_id, &c.token, client.lease_timing());
            }
            let _ = tx.send(r.map_err(fs_error));
        });
        upload
    }

    fn read_stored(&self, path: &str, c: &StoredChunk) -> FsResult<Vec<u8>> {
        let path = self.remote(path);
        self.block(self.client.read_stored_chunk(&path, c))
    }

    fn commit(
        &self,
        path: &str,
        base: Option<&ReadHandle>,
        pieces: Vec<Piece>,
        chunk_size: u64,
        sha256: Option<String>,
        lease: &Self::Lease,
    ) -> FsResult<Entry> {
        let path = self.remote(path);
        let base_chunks = base.and_then(|b| b.file()).map(|f| f.chunks.as_slice());
        let mut chunks = Vec::with_capacity(pieces.len());
        for p in pieces {
            chunks.push(match p {
                Piece::Stored(c) => c,
                Piece::Kept(i) => {
                    let c = base_chunks.and_then(|cs| cs.get(i)).ok_or_else(|| {
                        FsError::new(libc::EIO, "a kept chunk is not in the opened version")
                    })?;
                    // No token: kept from the version being replaced (checked by the leader).
                    ChunkInfo {
                        chunk_id: c.chunk_id.clone(),
                        size: c.size,
                        ..Default::default()
                    }
                }
            });
        }
        // An empty file has no chunks; it still names a chunk size (unused: a later write
        // learns the cluster's from its first allocation). No allocation is spent on it.
        let chunk_size = match chunk_size {
            0 => dfs_common::DEFAULT_CHUNK_SIZE,
            cs => cs,
        };
        let mut attempt = 0;
        loop {
            let r = self.rt.block_on(self.client.commit_chunks(
                &path,
                chunks.clone(),
                chunk_size,
                sha256.clone(),
                Some(lease),
            ));
            match r {
                Ok(f) => return Ok(entry(&f)),
                Err(e) if transient(&e) && attempt + 1 < STORE_ATTEMPTS => {
                    tracing::warn!("commit of {path} failed, retrying: {e}");
                    self.rt.block_on(tokio::time::sleep(backoff(attempt)));
                    attempt += 1;
                }
                Err(e) => return Err(fs_error(e)),
            }
        }
    }

    fn usage(&self) -> FsResult<(u64, u64)> {
        self.block(async {
            let s = self.client.fs_stats().await?;
            Ok((s.capacity, s.used))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_the_errno_a_program_expects() {
        let cases = [
            (Error::NotFound("x".into()), libc::ENOENT),
            (Error::Exists("x".into()), libc::EEXIST),
            (Error::NotEmpty("x".into()), libc::ENOTEMPTY),
            (Error::NotADirectory("x".into()), libc::ENOTDIR),
            (Error::IsADirectory("x".into()), libc::EISDIR),
            (Error::Permission("x".into()), libc::EACCES),
            (Error::InvalidName("x".into()), libc::EINVAL),
            (Error::Unavailable("no leader".into()), libc::EIO),
            (Error::NoSpace("no room".into()), libc::ENOSPC),
            (Error::DataError("all replicas bad".into()), libc::EIO),
        ];
        for (e, want) in cases {
            assert_eq!(errno_of(&e), want, "{e:?}");
        }
    }
}
