//! fs: a file-system-shaped facade over the metadata connection and the chunk pool, for the
//! mount (and any other program that wants paths, not RPCs). Every method maps its failure to
//! a typed [`Error`], so a caller can turn it into an errno.
//!
//! What must stay true: a write method sends one request id for all its retries (applied at
//! most once); `read_at` returns only bytes checked against their checksums (by the chunk
//! server per block, and here per whole chunk), and never more than the file holds.
use crate::error::{Error, Result};
use crate::lease::{LeaseTiming, WriteLease};
use crate::meta::{new_request_id, MetaConn};
use crate::transfer::{
    fetch_range, fetch_stored, fresh_tokens, put_stream, store_chunk, tokens_ageing, ChunkPool,
    ChunkSource, PutOptions, PutOutcome,
};
use crate::{rpc, ClientOptions, Progress};
use dfs_proto::*;
use futures::StreamExt;
use std::time::Instant;

/// A read of more than this is fetched as several ranged requests at once.
const READ_PIECE: u64 = 2 << 20;
/// Ranged requests one `read_at` keeps in flight.
const READS_IN_FLIGHT: usize = 8;

/// Space and file counts for statfs, summed over the live chunk servers. `capacity` and
/// `used` are raw bytes (all replicas), as the servers report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    pub capacity: u64,
    pub used: u64,
    pub files: u64,
}

/// A connection to one cluster: metadata with failover, and chunk-server channels.
pub struct Client {
    pub conn: MetaConn,
    pub pool: ChunkPool,
    /// What the leader last said about write leases (see [`crate::lease`]).
    lease_timing: std::sync::Mutex<LeaseTiming>,
}

/// An open file for reading: the file as it was when opened, with its read tokens. Reads
/// through it keep returning that version (or `ChangedWhileReading` once its chunks are gone).
#[derive(Debug, Clone)]
pub struct ReadHandle {
    pub reply: OpenReadReply,
    /// When the tokens were handed out (to renew them before they expire).
    received: Instant,
}

impl ReadHandle {
    pub fn file(&self) -> Option<&FileInfo> {
        self.reply.file.as_ref()
    }

    pub fn size(&self) -> u64 {
        self.file().map_or(0, |f| f.size)
    }
}

impl Client {
    pub fn connect(opts: &ClientOptions) -> Result<Client> {
        Ok(Client::new(opts.connect()?))
    }

    pub fn new(conn: MetaConn) -> Client {
        let pool = ChunkPool::new(dfs_common::stall::DEFAULT_STALL_TIMEOUT, conn.tls());
        Client {
            conn,
            pool,
            lease_timing: Default::default(),
        }
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo> {
        let req = StatRequest {
            path: path.to_string(),
            stale: false,
        };
        Ok(rpc!(self.conn, stat, req)?)
    }

    /// A directory's entries (not recursive), fetched page by page (see
    /// [`MetaConn::list_pages`]).
    pub async fn list(&self, path: &str) -> Result<Vec<FileInfo>> {
        Ok(self.conn.list_all(path, false, false).await?)
    }

    /// One page of a directory's entries: those after the page token `after` ("" for the
    /// first page), at most `limit` (the server caps it at 1000), and the token of the next
    /// page ("" when this was the last). A token is the server's, passed back unchanged.
    pub async fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<FileInfo>, String)> {
        let req = ListRequest {
            path: path.to_string(),
            recursive: false,
            stale: false,
            after: after.to_string(),
            limit: limit.max(1),
        };
        let r = rpc!(self.conn, list, req)?;
        Ok((r.entries, r.next))
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        let req = MkdirRequest {
            path: path.to_string(),
            parents,
            request_id: new_request_id(),
        };
        rpc!(self.conn, mkdir, req)?;
        Ok(())
    }

    /// Rename a file or directory like `dfsctl mv` (onto an existing directory moves into
    /// it; `Exists` when anything else is at `to`).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.rename_with(from, to, RenameMode::RenameMove).await
    }

    /// Rename to exactly `to`: with `RenameNoreplace` fails with `Exists` if `to` exists; with
    /// `RenameReplace` atomically replaces a file or link at `to` (or an empty directory when
    /// `from` is one), as rename(2) does.
    pub async fn rename_with(&self, from: &str, to: &str, mode: RenameMode) -> Result<()> {
        let req = RenameRequest {
            from: from.to_string(),
            to: to.to_string(),
            request_id: new_request_id(),
            mode: mode as i32,
        };
        rpc!(self.conn, rename, req)?;
        Ok(())
    }

    /// Create a symbolic link at `path` pointing at `target` (at most 4096 bytes).
    pub async fn symlink(&self, path: &str, target: &str) -> Result<()> {
        let req = SymlinkRequest {
            path: path.to_string(),
            target: target.to_string(),
            request_id: new_request_id(),
        };
        rpc!(self.conn, symlink, req)?;
        Ok(())
    }

    /// The target of the symbolic link at `path` (`InvalidName` if it is not a link).
    pub async fn readlink(&self, path: &str) -> Result<String> {
        let f = self.stat(path).await?;
        if !f.is_symlink {
            return Err(Error::InvalidName(format!("{path} is not a symbolic link")));
        }
        Ok(f.symlink_target)
    }

    /// Change the permission bits and/or the mtime (ms since the epoch) of `path`; its ctime
    /// becomes now. Only its owner (or an admin) may.
    pub async fn set_attr(
        &self,
        path: &str,
        mode: Option<u32>,
        mtime_ms: Option<i64>,
    ) -> Result<()> {
        let req = SetAttrRequest {
            path: path.to_string(),
            mode,
            mtime_ms,
            request_id: new_request_id(),
        };
        rpc!(self.conn, set_attr, req)?;
        Ok(())
    }

    /// Delete a file, or a directory (its contents too when `recursive`), into the caller's
    /// trash when the cluster keeps one (see [`Client::remove_with`]). Returns how many
    /// entries went.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<u64> {
        Ok(self.remove_with(path, recursive, false).await?.count)
    }

    /// Store everything `source` yields at `path` (see [`put_stream`]).
    pub async fn put(
        &self,
        path: &str,
        source: impl ChunkSource,
        opts: &PutOptions,
        progress: Progress<'_>,
    ) -> Result<PutOutcome> {
        put_stream(&self.conn, &self.pool, source, path, opts, progress).await
    }

    /// Open a file for reading: its chunks and read tokens as of now.
    pub async fn open_read(&self, path: &str) -> Result<ReadHandle> {
        let req = StatRequest {
            path: path.to_string(),
            stale: false,
        };
        let reply = rpc!(self.conn, open_read, req)?;
        if reply.file.is_none() {
            return Err(Error::other("the leader returned no file"));
        }
        Ok(ReadHandle {
            reply,
            received: Instant::now(),
        })
    }

    /// Fresh read tokens for an open handle. The handle keeps its version: if the file at its
    /// path now has other chunks (replaced or removed), reading on is refused with
    /// `ChangedWhileReading` instead of mixing two versions.
    pub async fn renew_tokens(&self, h: &mut ReadHandle) -> Result<()> {
        let file = h
            .file()
            .ok_or_else(|| Error::other("the leader returned no file"))?;
        let fresh = fresh_tokens(&self.conn, file).await?;
        h.reply.tokens = fresh.tokens;
        h.reply.tokens_valid_ms = fresh.tokens_valid_ms;
        h.received = Instant::now();
        Ok(())
    }

    /// Up to `len` bytes from `offset` (fewer only at the end of the file; none past it).
    /// Each chunk touched is asked for just its part; the chunk server reads and checks only
    /// the checksum blocks that part touches (a whole chunk is also checked against its CRC32C
    /// here). Another replica is tried on error.
    /// Tokens close to expiry are renewed first (see [`Client::renew_tokens`]).
    pub async fn read_at(&self, h: &mut ReadHandle, offset: u64, len: u64) -> Result<Vec<u8>> {
        if tokens_ageing(h.received, h.reply.tokens_valid_ms) {
            self.renew_tokens(h).await?;
        }
        let h = &*h;
        let file = h
            .file()
            .ok_or_else(|| Error::other("the leader returned no file"))?;
        if h.reply.tokens.len() != file.chunks.len() {
            return Err(Error::other(format!(
                "the leader returned {} read tokens for {} chunks",
                h.reply.tokens.len(),
                file.chunks.len()
            )));
        }
        let end = offset.saturating_add(len).min(file.size);
        // The parts of [offset, end), in chunk coordinates, cut into pieces of at most
        // READ_PIECE bytes that are fetched READS_IN_FLIGHT at a time (a big read is not one
        // request after another), and joined in order.
        let mut pieces = Vec::new();
        let mut start = 0u64;
        for (i, ch) in file.chunks.iter().enumerate() {
            let stop = start + ch.size;
            if stop > offset && start < end {
                let (mut from, to) = (offset.max(start) - start, end.min(stop) - start);
                while from < to {
                    let n = (to - from).min(READ_PIECE);
                    pieces.push((i, from, n));
                    from += n;
                }
            }
            if stop >= end {
                break;
            }
            start = stop;
        }
        let fetches: Vec<_> = pieces
            .into_iter()
            .map(|(i, from, n)| {
                let (conn, pool, tok) = (&self.conn, &self.pool, &h.reply.tokens[i]);
                async move { fetch_range(conn, pool, file, i, tok, from, n).await }
            })
            .collect();
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut parts = futures::stream::iter(fetches).buffered(READS_IN_FLIGHT);
        while let Some(part) = parts.next().await {
            out.extend_from_slice(&part?);
        }
        Ok(out)
    }

    /// Room for one new chunk of `path`: its id, targets and write token, and the chunk size
    /// the cluster cuts new versions of `path` into. `bytes_left`: what the writer still has
    /// to store, if it knows (0: unknown), so the chunk is placed where it fits.
    pub async fn allocate_chunk(
        &self,
        path: &str,
        bytes_left: u64,
    ) -> Result<(AllocatedChunk, u64)> {
        let req = AllocateRequest {
            path: path.to_string(),
            replication: 0,
            count: 1,
            overwrite: true,
            bytes_left,
            ..Default::default()
        };
        let reply = rpc!(self.conn, allocate_chunks, req)?;
        *self.lease_timing.lock().unwrap_or_else(|p| p.into_inner()) = LeaseTiming::of(&reply);
        let chunk = reply
            .chunks
            .into_iter()
            .next()
            .ok_or_else(|| Error::other("the leader allocated no chunk"))?;
        Ok((chunk, reply.chunk_size.max(1)))
    }

    /// When a write must hold a lease, as the leader last said (zero before any allocation).
    pub fn lease_timing(&self) -> LeaseTiming {
        *self.lease_timing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease for a long write to `path` (see [`WriteLease`]); pass its id to the commit.
    pub fn write_lease(&self, path: &str) -> WriteLease {
        WriteLease::new(&self.conn, path)
    }

    /// Store `data` as the allocated chunk: sent to all its targets at once, and stored when at
    /// least one has it fsynced. Not part of any file until [`Client::commit_chunks`].
    pub async fn store_chunk(&self, alloc: AllocatedChunk, data: Vec<u8>) -> Result<ChunkInfo> {
        store_chunk(&self.conn, &self.pool, alloc, data).await
    }

    /// Read back a chunk this client stored and has not committed (with its write token),
    /// checked against its CRC32C.
    pub async fn read_stored_chunk(&self, path: &str, ch: &ChunkInfo) -> Result<Vec<u8>> {
        fetch_stored(&self.conn, &self.pool, path, ch).await
    }

    /// Commit `chunks`, in file order, as the new version of `path` (created, or replacing
    /// what is there atomically). A chunk with a write token is one this client stored; one
    /// without a token (only its id and size) is kept from the version being replaced, and
    /// the commit fails with `Other`/`FailedPrecondition` when that version no longer has it.
    /// `sha256`: the whole file's, when the writer saw every byte in order.
    pub async fn commit_chunks(
        &self,
        path: &str,
        chunks: Vec<ChunkInfo>,
        chunk_size: u64,
        sha256: Option<String>,
        lease: Option<&WriteLease>,
    ) -> Result<FileInfo> {
        let lease_id = match lease {
            Some(l) => l.for_commit()?,
            None => String::new(),
        };
        let size = chunks.iter().map(|c| c.size).sum();
        let req = CommitRequest {
            path: path.to_string(),
            overwrite: true,
            replication: 0,
            size,
            sha256: sha256.unwrap_or_default(),
            chunk_size,
            chunks,
            request_id: new_request_id(),
            mode: None,
            lease_id,
        };
        Ok(rpc!(self.conn, commit_file, req)?)
    }

    /// Create `path` as an empty file with permission bits `mode` in one commit; fails with
    /// `Exists` (or `IsADirectory`) when something is there already, which is left unchanged.
    pub async fn create_empty(&self, path: &str, mode: u32) -> Result<FileInfo> {
        let req = CommitRequest {
            path: path.to_string(),
            overwrite: false,
            chunk_size: dfs_common::DEFAULT_CHUNK_SIZE,
            request_id: new_request_id(),
            mode: Some(mode),
            ..Default::default()
        };
        Ok(rpc!(self.conn, commit_file, req)?)
    }

    /// Capacity and use for statfs (one cluster-status call; any authenticated user).
    pub async fn fs_stats(&self) -> Result<FsStats> {
        let st = rpc!(self.conn, cluster_status, StatusRequest { stale: false })?;
        let live = st.chunk_servers.iter().filter(|s| s.live);
        let (capacity, used) = live.fold((0u64, 0u64), |(c, u), s| {
            (
                c.saturating_add(s.capacity_bytes),
                u.saturating_add(s.used_bytes),
            )
        });
        Ok(FsStats {
            capacity,
            used,
            files: st.files,
        })
    }
}
