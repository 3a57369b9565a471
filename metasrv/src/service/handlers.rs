//! What each `Meta` method does once it runs on the right node. Every handler first decides
//! where it must run (`write_gate` / `read_gate`), then authenticates, then acts; nothing is
//! checked against a follower's possibly stale state when the leader must answer.
use super::{now_ms, Caller, MetaNode, OpError, OpResult};
use crate::liveness::{place, Room, ServerView};
use crate::state::command::CommandV1;
use crate::state::trash::PURGE_BATCH;
use crate::state::{ChunkRef, Command, FileData, Inode, Reply, Role, State};
use crate::types::NodeId;
use dfs_common::keys;
use dfs_common::token::{ClusterSecret, Op};
use dfs_proto::*;
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic::Status;

/// Most chunks one allocation call hands out.
const MAX_ALLOCATE: u32 = 64;
/// Files per Raft command when importing saved-files.json.
const IMPORT_SLICE: usize = 500;
/// Most delete orders in one heartbeat reply.
const MAX_DELETE_ORDERS: usize = 1000;
/// Most chunks in one file's commit (see `commit_file`).
pub(crate) const MAX_COMMIT_CHUNKS: usize = dfs_common::MAX_FILE_CHUNKS;
/// Longest client request id.
const MAX_REQUEST_ID: usize = 64;

/// Purposes of sealed page cursors (see `ClusterSecret::seal_cursor`).
const LIST_CURSOR: &str = "list-page";
const EXPORT_CURSOR: &str = "export-page";

/// A page token: `fields` and then a name (hex, so any name fits), sealed for `actor`.
fn seal_page(
    secret: &ClusterSecret,
    purpose: &str,
    actor: &str,
    fields: &[String],
    name: &str,
) -> String {
    let payload = format!("{}.{}", fields.join("."), hex::encode(name));
    secret.seal_cursor(purpose, actor, &payload)
}

/// The `N` fields and the name of a token made by `seal_page` with the same purpose and
/// actor; `None` for anything else (forged, damaged, another user's).
fn open_page<const N: usize>(
    secret: &ClusterSecret,
    purpose: &str,
    actor: &str,
    token: &str,
) -> Option<([String; N], String)> {
    let payload = secret.open_cursor(purpose, actor, token)?;
    let mut parts = payload.splitn(N + 1, '.');
    let fields = std::array::from_fn(|_| parts.next().unwrap_or_default().to_string());
    let name = String::from_utf8(hex::decode(parts.next()?).ok()?).ok()?;
    Some((fields, name))
}

/// The name a list page token resumes after. A token of another directory, or of one that
/// was replaced since, is stale.
fn open_list_cursor(
    secret: &ClusterSecret,
    actor: &str,
    dir_ino: u64,
    recursive: bool,
    token: &str,
) -> OpResult<String> {
    let Some(([ino, rec], name)) = open_page(secret, LIST_CURSOR, actor, token) else {
        return Err(invalid("page token was not issued by this cluster for this user (forged or damaged); list again from the start"));
    };
    if ino != dir_ino.to_string() {
        return Err(Status::failed_precondition(
            "page token is stale: it belongs to a listing of another directory, or this one was replaced since; list again from the start",
        )
        .into());
    }
    if rec != (recursive as u8).to_string() {
        return Err(invalid(
            "page token belongs to a listing with the other --recursive setting",
        ));
    }
    Ok(name)
}

/// Where an export page token resumes.
fn open_export_cursor(
    secret: &ClusterSecret,
    actor: &str,
    token: &str,
) -> OpResult<crate::export::PageStart> {
    open_page(secret, EXPORT_CURSOR, actor, token)
        .and_then(|([count], after)| {
            Some(crate::export::PageStart {
                after: Some(after),
                files_before: count.parse().ok()?,
            })
        })
        .ok_or_else(|| {
            invalid("export page token was not issued by this cluster (forged or damaged); export again from the start")
        })
}

fn invalid(e: impl std::fmt::Display) -> OpError {
    Status::invalid_argument(e.to_string()).into()
}

fn v1(c: CommandV1) -> Command {
    Command::V1(c)
}

/// A client's write, applied at most once when the client gave it a request id (it sends the
/// same id on every retry of one call).
pub(crate) fn client_write(request_id: &str, c: CommandV1) -> OpResult<Command> {
    if request_id.len() > MAX_REQUEST_ID {
        return Err(invalid(format!(
            "request_id is longer than {MAX_REQUEST_ID} bytes"
        )));
    }
    if request_id.is_empty() {
        return Ok(v1(c));
    }
    // Remembered per user and method: a replayed id of someone else's finds nothing.
    Ok(v1(CommandV1::Once {
        request_id: format!("{}:{request_id}", c.request_scope()),
        now_ms: now_ms(),
        cmd: Box::new(v1(c)),
    }))
}

fn file_info(path: &str, n: &Inode, st: Option<&State>) -> FileInfo {
    let mut info = FileInfo {
        path: path.to_string(),
        is_dir: n.is_dir(),
        owner: n.owner.clone(),
        created_ms: n.created_ms,
        modified_ms: n.modified_ms,
        id: n.id.clone(),
        ino: n.ino,
        mode: n.mode(),
        ctime_ms: n.ctime(),
        is_symlink: n.is_symlink(),
        symlink_target: n.symlink.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(f) = &n.file {
        info.size = f.size;
        info.replication = f.replication;
        info.sha256 = f.sha256.clone();
        info.chunk_size = f.chunk_size;
        if let Some(st) = st {
            info.chunks = f
                .chunks
                .iter()
                .map(|c| ChunkInfo {
                    chunk_id: c.id.clone(),
                    size: c.size,
                    crc32c: c.crc32c,
                    replicas: c.replicas.clone(),
                    replica_addrs: c
                        .replicas
                        .iter()
                        .map(|r| {
                            st.chunk_servers
                                .get(r)
                                .map(|s| s.addr.clone())
                                .unwrap_or_default()
                        })
                        .collect(),
                    token: String::new(),
                    receipts: Vec::new(),
                })
                .collect();
        }
    }
    info
}

/// Every replica a commit names for a stored chunk must have signed a receipt for its size and
/// CRC32C (`receipts` aligned with `replicas`).
fn check_receipts(keys: &mut dfs_common::token::KeyRing<'_>, ch: &ChunkInfo) -> Result<(), Status> {
    if ch.receipts.len() > ch.replicas.len() {
        return Err(Status::invalid_argument(format!(
            "chunk {}: {} receipts for {} replicas (one receipt per replica, in the same order)",
            ch.chunk_id,
            ch.receipts.len(),
            ch.replicas.len()
        )));
    }
    for (i, node) in ch.replicas.iter().enumerate() {
        let receipt = ch.receipts.get(i).map_or("", String::as_str);
        if !keys.check_receipt(*node, receipt, &ch.chunk_id, ch.size, ch.crc32c) {
            return Err(Status::permission_denied(format!(
                "chunk {}: chunk server {node} did not acknowledge storing it ({} bytes, CRC32C {:08x}): {} receipt from that server; nothing was committed",
                ch.chunk_id,
                ch.size,
                ch.crc32c,
                if receipt.is_empty() { "no" } else { "no valid" }
            )));
        }
    }
    Ok(())
}

/// The key for `r` (see `UserAddRequest.request_id`) with its hash, and the reply carrying it.
fn new_key_reply(secret: &ClusterSecret, r: &UserAddRequest) -> (String, UserAddReply) {
    let name = r.name.as_str();
    let key = match r.request_id.as_str() {
        "" => keys::generate_key(),
        id => secret.user_key(name, id),
    };
    (
        keys::hash_key(&key),
        UserAddReply {
            name: name.to_string(),
            key,
        },
    )
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> OpError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            OpError::NotLeader(f.leader_id)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("membership change refused: {e}")).into()
        }
        RaftError::Fatal(f) => Status::unavailable(format!("metadata node stopped: {f}")).into(),
    }
}

impl MetaNode {
    pub async fn mkdir(&self, c: &Caller, r: MkdirRequest) -> OpResult<Empty> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let path = dfs_common::path::normalize(&r.path).map_err(invalid)?;
        let id = uuid::Uuid::new_v4().to_string();
        self.propose(client_write(
            &r.request_id,
            CommandV1::Mkdir {
                actor,
                path,
                parents: r.parents,
                id,
                now_ms: now_ms(),
            },
        )?)
        .await?;
        Ok(Empty {})
    }

    pub async fn list(&self, c: &Caller, r: ListRequest) -> OpResult<ListReply> {
        self.read_gate(r.stale).await?;
        let (actor, _) = self.authenticate(c)?;
        let st = self.read_state();
        let (_, dir) = st.stat(&actor, &r.path)?;
        let after = match r.after.as_str() {
            "" => String::new(),
            token => open_list_cursor(&self.secret, &actor, dir.ino, r.recursive, token)?,
        };
        // A reply is a bounded page: limit 0 (older clients) gets a full page and a cursor.
        let limit = match r.limit as usize {
            0 => crate::state::MAX_LIST_PAGE,
            l => l,
        };
        let (entries, next) = st.list_page(&actor, &r.path, r.recursive, &after, limit)?;
        let next = match next.as_str() {
            "" => next,
            name => {
                let fields = [dir.ino.to_string(), (r.recursive as u8).to_string()];
                seal_page(&self.secret, LIST_CURSOR, &actor, &fields, name)
            }
        };
        Ok(ListReply {
            entries: entries.iter().map(|(p, n)| file_info(p, n, None)).collect(),
            next,
        })
    }

    pub async fn stat(&self, c: &Caller, r: StatRequest) -> OpResult<FileInfo> {
        self.read_gate(r.stale).await?;
        let (actor, _) = self.authenticate(c)?;
        let st = self.read_state();
        let (p, n) = st.stat(&actor, &r.path)?;
        Ok(file_info(&p, &n, Some(&st)))
    }

    pub async fn rename(&self, c: &Caller, r: RenameRequest) -> OpResult<Empty> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let from = dfs_common::path::normalize(&r.from).map_err(invalid)?;
        let to = dfs_common::path::normalize(&r.to).map_err(invalid)?;
        let mode = match r.mode() {
            dfs_proto::RenameMode::RenameMove => crate::state::command::RenameMode::Move,
            dfs_proto::RenameMode::RenameNoreplace => crate::state::command::RenameMode::NoReplace,
            dfs_proto::RenameMode::RenameReplace => crate::state::command::RenameMode::Replace,
        };
        self.propose(client_write(
            &r.request_id,
            CommandV1::Rename {
                actor,
                from,
                to,
                now_ms: now_ms(),
                mode,
            },
        )?)
        .await?;
        Ok(Empty {})
    }

    pub async fn symlink(&self, c: &Caller, r: SymlinkRequest) -> OpResult<Empty> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let path = dfs_common::path::normalize(&r.path).map_err(invalid)?;
        self.propose(client_write(
            &r.request_id,
            CommandV1::Symlink {
                actor,
                path,
                target: r.target,
                id: uuid::Uuid::new_v4().to_string(),
                now_ms: now_ms(),
            },
        )?)
        .await?;
        Ok(Empty {})
    }

    pub async fn set_attr(&self, c: &Caller, r: SetAttrRequest) -> OpResult<Empty> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let path = dfs_common::path::normalize(&r.path).map_err(invalid)?;
        self.propose(client_write(
            &r.request_id,
            CommandV1::SetAttr {
                actor,
                path,
                mode: r.mode,
                mtime_ms: r.mtime_ms,
                now_ms: now_ms(),
            },
        )?)
        .await?;
        Ok(Empty {})
    }

    pub async fn remove(&self, c: &Caller, r: RemoveRequest) -> OpResult<RemoveReply> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let path = dfs_common::path::normalize(&r.path).map_err(invalid)?;
        let (recursive, now_ms) = (r.recursive, now_ms());
        let cmd = if r.skip_trash || self.config.trash_retention.is_zero() {
            CommandV1::Remove {
                actor,
                path,
                recursive,
                now_ms,
            }
        } else {
            CommandV1::Trash {
                actor,
                path,
                recursive,
                now_ms,
            }
        };
        match self.propose(client_write(&r.request_id, cmd)?).await? {
            Reply::Removed { count } => Ok(RemoveReply {
                removed: count,
                trashed_to: String::new(),
            }),
            Reply::Trashed { count, to } => Ok(RemoveReply {
                removed: count,
                trashed_to: to,
            }),
            _ => Ok(RemoveReply::default()),
        }
    }

    /// Write tokens that expired after this (ms) are still accepted at commit and in a lease.
    fn commit_window_start(&self) -> u64 {
        (now_ms() as u64).saturating_sub(self.config.commit_grace.as_millis() as u64)
    }

    /// Take or renew a write lease, adding the chunks allocated since the last renewal (each
    /// proven by its write token, still inside the commit window).
    pub async fn renew_lease(&self, c: &Caller, r: RenewLeaseRequest) -> OpResult<RenewLeaseReply> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let earliest = self.commit_window_start();
        let mut keys = self.secret.key_ring();
        for ch in &r.chunks {
            keys.verify_chunk(&ch.token, Op::Write, &ch.chunk_id, earliest)
                .map_err(|e| Status::permission_denied(format!("chunk {}: {e}", ch.chunk_id)))?;
        }
        if r.release {
            self.propose(v1(CommandV1::ReleaseLease {
                actor,
                lease: r.lease_id,
            }))
            .await?;
            return Ok(RenewLeaseReply { expires_in_ms: 0 });
        }
        let now = now_ms();
        let timeout = self.config.lease_timeout.as_millis() as i64;
        self.propose(v1(CommandV1::RenewLease {
            actor,
            lease: r.lease_id,
            path: r.path,
            create: r.create,
            chunks: r.chunks.into_iter().map(|c| c.chunk_id).collect(),
            now_ms: now,
            expires_ms: now + timeout,
        }))
        .await?;
        Ok(RenewLeaseReply {
            expires_in_ms: timeout as u64,
        })
    }

    pub async fn trash_list(&self, c: &Caller, r: TrashListRequest) -> OpResult<TrashListReply> {
        self.read_gate(false).await?;
        let (actor, _) = self.authenticate(c)?;
        let st = self.read_state();
        let (items, next) = st.trash_items(&actor, &r.after, r.limit as usize);
        Ok(TrashListReply {
            items: items
                .into_iter()
                .map(|i| TrashItem {
                    info: Some(file_info(&i.path, &i.inode, None)),
                    path: i.path,
                    original_path: i.original,
                    deleted_ms: i.deleted_ms,
                    files: i.files,
                    bytes: i.bytes,
                })
                .collect(),
            next,
        })
    }

    /// Purge the caller's trash in batches of `PURGE_BATCH` entries (one Raft entry each).
    pub async fn trash_purge(&self, c: &Caller, r: TrashPurgeRequest) -> OpResult<RemoveReply> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let now = now_ms();
        let cutoff_ms = now.saturating_sub(r.older_than_ms.min(i64::MAX as u64) as i64);
        let mut removed = 0;
        for batch in 0u64.. {
            let id = match r.request_id.as_str() {
                "" => String::new(),
                id => format!("{id}#{batch}"),
            };
            let cmd = CommandV1::PurgeTrash {
                user: Some(actor.clone()),
                cutoff_ms,
                limit: PURGE_BATCH,
                now_ms: now,
            };
            let count = match self.propose(client_write(&id, cmd)?).await? {
                Reply::Removed { count } => count,
                _ => 0,
            };
            removed += count;
            if count < PURGE_BATCH {
                break;
            }
        }
        Ok(RemoveReply {
            removed,
            trashed_to: String::new(),
        })
    }

    pub async fn usage(&self, c: &Caller, r: StatRequest) -> OpResult<UsageReply> {
        self.read_gate(r.stale).await?;
        let (actor, _) = self.authenticate(c)?;
        let st = self.read_state();
        let (files, dirs, bytes) = st.usage(&actor, &r.path)?;
        // The caller's trash is inside `/` (and inside itself), nowhere else.
        let path = dfs_common::path::normalize(&r.path).map_err(invalid)?;
        let user_trash = crate::state::trash::user_trash(&actor);
        let (trash_files, _, trash_bytes) = if dfs_common::path::is_within(&user_trash, &path)
            || dfs_common::path::is_within(&path, &user_trash)
        {
            st.trash_usage(Some(&actor))
        } else {
            (0, 0, 0)
        };
        Ok(UsageReply {
            files,
            dirs,
            bytes,
            trash_files: trash_files.min(files),
            trash_bytes: trash_bytes.min(bytes),
        })
    }

    pub async fn allocate_chunks(&self, c: &Caller, r: AllocateRequest) -> OpResult<AllocateReply> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        if r.count == 0 || r.count > MAX_ALLOCATE {
            return Err(invalid(format!(
                "ask for 1 to {MAX_ALLOCATE} chunks at a time"
            )));
        }
        let replication = if r.replication == 0 {
            self.config.default_replication
        } else {
            r.replication
        };
        if replication > crate::state::MAX_REPLICATION {
            return Err(invalid(format!(
                "replication must be at most {}",
                crate::state::MAX_REPLICATION
            )));
        }
        let st = self.read_state();
        let replacing = !r.replace_chunk.is_empty();
        // The token being replaced: its servers, size and expiry (the new one names those
        // servers too, so the writer can read its chunk back from any of them with one
        // token, and expires no later: a replacement never stretches the commit window).
        let mut replaced: Option<(Vec<u64>, u64, u64)> = None;
        if replacing {
            // New targets for a chunk being written: the caller proves it was given the chunk
            // by a leader (its write token), and may report servers that stalled on it.
            if r.count > crate::state::MAX_REPLICATION {
                return Err(invalid("a chunk has at most that many replicas"));
            }
            let held = self
                .secret
                .verify_chunk(
                    &r.replace_token,
                    Op::Write,
                    &r.replace_chunk,
                    now_ms() as u64,
                )
                .map_err(|e| {
                    Status::permission_denied(format!("chunk {}: {e}", r.replace_chunk))
                })?;
            replaced = Some((held.servers(), held.max_bytes, held.expires_ms));
            for id in r
                .stalled
                .iter()
                .filter(|id| st.chunk_servers.contains_key(id))
            {
                tracing::warn!(node = self.id, server = id, chunk = %r.replace_chunk, "a writer reports a stalled chunk server");
                self.metrics.stall_reports.inc();
                self.liveness.report_stall(*id);
            }
        } else {
            st.check_file_target(&actor, &r.path, r.overwrite)?;
        }
        let live: Vec<Room> = self
            .liveness
            .placeable()
            .into_iter()
            .filter(|(id, _)| st.chunk_servers.contains_key(id) && !r.exclude.contains(id))
            .map(|(id, v)| Room::of(id, &v))
            .collect();
        if live.is_empty() {
            return Err(Status::failed_precondition(
                "no chunk server is live, so nothing can be stored: start one with `chunksrv --meta ...` (or `dfsctl local up`)",
            )
            .into());
        }
        let expires = now_ms() as u64 + self.config.token_ttl.as_millis() as u64;
        let chunk_bytes = match r.bytes_left {
            0 => self.config.chunk_size,
            left => left.min(self.config.chunk_size),
        };
        let (replication, count) = match replacing {
            true => (r.count, 1),
            false => (replication, r.count),
        };
        let placement = place(&live, replication as usize, count as usize, chunk_bytes);
        if placement.iter().any(Vec::is_empty) {
            let free: Vec<String> = live
                .iter()
                .map(|s| match s.free {
                    Some(free) => format!("server {} has {free}", s.id),
                    None => format!("server {} has an unknown number of", s.id),
                })
                .collect();
            return Err(Status::resource_exhausted(format!(
                "no live chunk server has room for a chunk of {chunk_bytes} bytes ({} bytes free): free space or add a chunk server",
                free.join(", ")
            ))
            .into());
        }
        for id in placement.iter().flatten() {
            self.liveness.add_placed(*id, chunk_bytes);
        }
        let chunks = placement
            .into_iter()
            .map(|targets| {
                let chunk_id = match replacing {
                    true => r.replace_chunk.clone(),
                    false => uuid::Uuid::new_v4().to_string(),
                };
                let targets: Vec<ChunkTarget> = targets
                    .into_iter()
                    .filter_map(|id| {
                        st.chunk_servers.get(&id).map(|s| ChunkTarget {
                            node_id: id,
                            addr: s.addr.clone(),
                        })
                    })
                    .collect();
                // Valid only on these targets, for at most one chunk of the cluster's size.
                let ids = targets.iter().map(|t| t.node_id);
                let token = match &replaced {
                    Some((servers, max, exp)) => {
                        let all: Vec<u64> = servers.iter().copied().chain(ids).collect();
                        self.secret
                            .sign_chunk(Op::Write, &chunk_id, *max, *exp, &all)
                    }
                    None => {
                        let ids: Vec<u64> = ids.collect();
                        self.secret.sign_chunk(
                            Op::Write,
                            &chunk_id,
                            self.config.chunk_size,
                            expires,
                            &ids,
                        )
                    }
                };
                AllocatedChunk {
                    token,
                    chunk_id,
                    targets,
                }
            })
            .collect();
        // A third of the commit window: the writer has two thirds left to take its lease.
        let window = self.config.token_ttl + self.config.commit_grace;
        Ok(AllocateReply {
            chunks,
            chunk_size: self.config.chunk_size,
            lease_after_ms: (window / 3).as_millis() as u64,
            lease_renew_ms: (self.config.lease_timeout / 3).as_millis() as u64,
        })
    }

    pub async fn commit_file(&self, c: &Caller, r: CommitRequest) -> OpResult<FileInfo> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        let path = dfs_common::path::normalize(&r.path).map_err(invalid)?;
        // A chunk sent without a write token is kept from the version being replaced.
        let kept: Vec<String> = r
            .chunks
            .iter()
            .filter(|c| c.token.is_empty())
            .map(|c| c.chunk_id.clone())
            .collect();
        // The whole-file sha256 may be left out by a writer that did not see the bytes in
        // order (a mount writing into the middle of a file); each chunk keeps its CRC32C.
        if !r.sha256.is_empty()
            && (r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid(
                "sha256 must be 64 hex characters (or empty when the writer did not compute it)",
            ));
        }
        // One Raft entry must fit in one message between members (64 MiB; a chunk is about
        // 110 bytes of it).
        if r.chunks.len() > MAX_COMMIT_CHUNKS {
            return Err(invalid(format!(
                "a file has at most {MAX_COMMIT_CHUNKS} chunks ({} GiB with the default 8 MiB chunks); this one has {}: store it with a larger chunk size or in parts",
                (MAX_COMMIT_CHUNKS as u64 * dfs_common::DEFAULT_CHUNK_SIZE) >> 30,
                r.chunks.len()
            )));
        }
        if r.chunk_size == 0 || r.chunk_size > dfs_common::MAX_CHUNK_SIZE {
            return Err(invalid(format!(
                "chunk size {} is not between 1 and {} bytes",
                r.chunk_size,
                dfs_common::MAX_CHUNK_SIZE
            )));
        }
        // A write token is accepted this long after it expired (`--commit-grace`, 30 min):
        // with the 15-minute token, 45 minutes from allocation, inside the 1-hour orphan
        // grace. A chunk older than that must be held by the writer's live lease.
        let earliest = self.commit_window_start();
        let mut keys = self.secret.key_ring();
        let mut leased = Vec::new();
        let mut chunks = Vec::with_capacity(r.chunks.len());
        for ch in &r.chunks {
            // Against the chunk size the allocating leader gave (it may differ from ours).
            if ch.size > r.chunk_size {
                return Err(invalid(format!(
                    "chunk {} claims {} bytes; the file's chunks hold at most {}",
                    ch.chunk_id, ch.size, r.chunk_size
                )));
            }
            // The write token proves this caller was given the chunk id by a leader; a kept
            // chunk is checked against the current version when the commit is applied.
            if !ch.token.is_empty() {
                let in_window = keys
                    .verify_chunk(&ch.token, Op::Write, &ch.chunk_id, earliest)
                    .map(|_| ());
                match in_window {
                    Ok(()) => {}
                    // Signed by a leader but older than the window: the lease must hold it
                    // (checked when the commit is applied).
                    Err(_)
                        if !r.lease_id.is_empty()
                            && keys
                                .verify_chunk(&ch.token, Op::Write, &ch.chunk_id, 0)
                                .is_ok() =>
                    {
                        leased.push(ch.chunk_id.clone())
                    }
                    Err(e) => {
                        return Err(Status::permission_denied(format!(
                            "chunk {}: {e}",
                            ch.chunk_id
                        ))
                        .into())
                    }
                }
            }
            // A stored chunk names only replicas that signed for it: each chunk server's
            // receipt for this size and CRC (the client's word is not enough). Checked before
            // anything is proposed, so a refused commit changes nothing.
            if !ch.token.is_empty() {
                check_receipts(&mut keys, ch)?;
            }
            let replicas: BTreeSet<NodeId> = ch.replicas.iter().copied().collect();
            chunks.push(ChunkRef {
                id: ch.chunk_id.clone(),
                size: ch.size,
                crc32c: ch.crc32c,
                replicas: replicas.into_iter().collect(),
            });
        }
        let replication = if r.replication == 0 {
            self.config.default_replication
        } else {
            r.replication
        };
        let file = FileData {
            size: r.size,
            replication,
            sha256: r.sha256.to_lowercase(),
            chunk_size: r.chunk_size,
            chunks,
        };
        let inode_id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let reply = self
            .propose(client_write(
                &r.request_id,
                CommandV1::CommitFile {
                    actor: actor.clone(),
                    path: path.clone(),
                    overwrite: r.overwrite,
                    file: file.clone(),
                    id: inode_id.clone(),
                    now_ms: now,
                    kept,
                    mode: r.mode,
                    lease: r.lease_id.clone(),
                    leased,
                },
            )?)
            .await?;
        // The reply describes what was committed, not a later lookup: a concurrent rm or mv may
        // already have changed the path, and the commit must still be reported as done.
        let committed = match reply {
            Reply::Committed {
                owner,
                created_ms,
                id,
                modified_ms,
                ino,
                mode,
            } => Inode {
                // Replies remembered before they carried these fields decode empty: this
                // attempt's values are the best answer then.
                id: if id.is_empty() { inode_id } else { id },
                ino,
                owner,
                created_ms,
                modified_ms: if modified_ms == 0 { now } else { modified_ms },
                ctime_ms: 0,
                mode,
                file: Some(file),
                symlink: None,
            },
            other => {
                return Err(Status::internal(format!(
                    "commit of {path} was applied with an unexpected reply {other:?}"
                ))
                .into())
            }
        };
        let st = self.read_state();
        Ok(file_info(&path, &committed, Some(&st)))
    }

    pub async fn open_read(&self, c: &Caller, r: StatRequest) -> OpResult<OpenReadReply> {
        self.read_gate(r.stale).await?;
        let (actor, _) = self.authenticate(c)?;
        let st = self.read_state();
        let (p, n) = st.stat(&actor, &r.path)?;
        if n.is_dir() {
            return Err(Status::failed_precondition(format!("{p} is a directory")).into());
        }
        if let Some(t) = &n.symlink {
            return Err(Status::invalid_argument(format!(
                "{p} is a symbolic link (to {t}), not a file"
            ))
            .into());
        }
        let mut info = file_info(&p, &n, Some(&st));
        // Live replicas first, so a reader tries a dead server last.
        for ch in &mut info.chunks {
            let mut pairs: Vec<(u64, String)> = ch
                .replicas
                .iter()
                .copied()
                .zip(ch.replica_addrs.drain(..))
                .collect();
            pairs.sort_by_key(|(id, _)| !self.liveness.is_live(*id));
            (ch.replicas, ch.replica_addrs) = pairs.into_iter().unzip();
        }
        let expires = now_ms() as u64 + self.config.token_ttl.as_millis() as u64;
        // Each token is good on that chunk's replicas only.
        let tokens = info
            .chunks
            .iter()
            .map(|ch| {
                self.secret
                    .sign_chunk(Op::Read, &ch.chunk_id, 0, expires, &ch.replicas)
            })
            .collect();
        Ok(OpenReadReply {
            file: Some(info),
            tokens,
            tokens_valid_ms: self.config.token_ttl.as_millis() as u64,
        })
    }

    pub async fn report_bad_replica(&self, c: &Caller, r: BadReplicaReport) -> OpResult<Empty> {
        // The leader's healer acts on reports: hand them to it.
        self.write_gate()?;
        // Readers (users) and scrubbers (chunk servers, with the node proof) report.
        let node_caller = match &c.peer {
            Some(_) => true,
            None => !c.node_auth.is_empty(),
        };
        let user = if node_caller && self.authenticate_node(c).is_ok() {
            match &c.peer {
                Some(p) => p.to_string(),
                None => format!("chunk server {}", r.node_id),
            }
        } else {
            self.authenticate(c)?.0
        };
        self.metrics.bad_replica_reports.inc();
        self.healing.report_bad(&r.chunk_id, r.node_id);
        tracing::warn!(node = self.id, chunk = %r.chunk_id, server = r.node_id, reporter = %user, reason = %r.reason, "bad replica reported");
        Ok(Empty {})
    }

    pub async fn who_am_i(&self, c: &Caller, _r: Empty) -> OpResult<UserInfo> {
        self.read_gate(false).await?;
        let (name, _) = self.authenticate(c)?;
        let st = self.read_state();
        let u = st
            .users
            .get(&name)
            .ok_or_else(|| Status::not_found("user vanished"))?;
        Ok(UserInfo {
            name: u.name.clone(),
            role: u.role.as_str().into(),
            created_ms: u.created_ms,
        })
    }

    pub async fn user_add(&self, c: &Caller, r: UserAddRequest) -> OpResult<UserAddReply> {
        self.write_gate()?;
        let actor = self.authenticate_admin(c)?;
        let (hash, reply) = new_key_reply(&self.secret, &r);
        let role = if r.admin { Role::Admin } else { Role::User };
        // A retry within the remembered-request window gets the first reply, and the key
        // derived from the same request id.
        self.propose(client_write(
            &r.request_id,
            CommandV1::AddUser {
                actor: Some(actor),
                name: r.name,
                role,
                key_hash: hash,
                now_ms: now_ms(),
            },
        )?)
        .await?;
        Ok(reply)
    }

    pub async fn user_list(&self, c: &Caller, _r: Empty) -> OpResult<UserListReply> {
        self.read_gate(false).await?;
        self.authenticate_admin(c)?;
        let st = self.read_state();
        let users = st
            .users
            .values()
            .map(|u| UserInfo {
                name: u.name.clone(),
                role: u.role.as_str().into(),
                created_ms: u.created_ms,
            })
            .collect();
        Ok(UserListReply { users })
    }

    pub async fn user_remove(&self, c: &Caller, r: UserRemoveRequest) -> OpResult<Empty> {
        self.write_gate()?;
        let actor = self.authenticate_admin(c)?;
        self.propose(client_write(
            &r.request_id,
            CommandV1::RemoveUser {
                actor,
                name: r.name,
            },
        )?)
        .await?;
        Ok(Empty {})
    }

    pub async fn register(&self, c: &Caller, r: UserAddRequest) -> OpResult<UserAddReply> {
        self.write_gate()?;
        if !self.config.allow_self_register {
            return Err(Status::permission_denied(
                "self-registration is disabled on this cluster: ask an admin for `dfsctl user add` (or start metasrv with --allow-self-register)",
            )
            .into());
        }
        if let Err(wait) = self.auth_limit.register(c.addr) {
            self.metrics.auth_rate_limited.inc();
            return Err(Status::resource_exhausted(format!(
                "too many registrations from this address: try again in {wait} s"
            ))
            .into());
        }
        if r.admin {
            return Err(
                Status::permission_denied("self-registration cannot create an admin").into(),
            );
        }
        let (hash, reply) = new_key_reply(&self.secret, &r);
        // A retry within the remembered-request window gets the first reply, and the key
        // derived from the same request id.
        self.propose(client_write(
            &r.request_id,
            CommandV1::AddUser {
                actor: None,
                name: r.name,
                role: Role::User,
                key_hash: hash,
                now_ms: now_ms(),
            },
        )?)
        .await?;
        Ok(reply)
    }

    /// This node's own view, as `Hello` reports it to peers.
    pub fn hello_reply(&self) -> HelloReply {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        HelloReply {
            id: self.id,
            cluster_id: self.read_state().meta.cluster_id.clone(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied,
            commit: applied,
            role: role.into(),
            leader: m.current_leader.unwrap_or(0),
            initialized: m
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some(),
            unreachable_leader: self.leader_watch.unreachable_leader(),
        }
    }

    pub async fn cluster_status(
        &self,
        c: &Caller,
        _r: StatusRequest,
    ) -> OpResult<ClusterStatusReply> {
        self.authenticate(c)?;
        let me = self.hello_reply();
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let nodes: Vec<(NodeId, String)> = membership
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let asks = nodes.iter().map(|(id, addr)| {
            let (id, addr) = (*id, addr.clone());
            let me = me.clone();
            async move {
                if id == self.id {
                    return (id, addr, Some(me));
                }
                let Ok(mut client) = crate::network::raft_client(&addr) else {
                    return (id, addr, None);
                };
                let req = crate::network::with_node_auth(
                    HelloRequest {
                        from: self.id,
                        target: id,
                    },
                    &self.secret,
                );
                let r = tokio::time::timeout(Duration::from_millis(800), client.hello(req)).await;
                (
                    id,
                    addr,
                    r.ok().and_then(|r| r.ok()).map(|r| r.into_inner()),
                )
            }
        });
        let answers = futures::future::join_all(asks).await;
        let mut leader = me.leader;
        let mut term = me.term;
        let members = answers
            .into_iter()
            .map(|(id, addr, h)| match h {
                Some(h) => {
                    if h.term > term {
                        term = h.term;
                        leader = h.leader;
                    }
                    let role = if voters.contains(&id) {
                        h.role
                    } else {
                        "learner".to_string()
                    };
                    MemberStatus {
                        id,
                        addr,
                        role,
                        term: h.term,
                        last_log_index: h.last_log_index,
                        applied: h.applied,
                        reachable: true,
                        commit: h.commit,
                    }
                }
                None => MemberStatus {
                    id,
                    addr,
                    role: "unreachable".into(),
                    reachable: false,
                    ..Default::default()
                },
            })
            .collect();
        let st = self.read_state();
        let chunk_servers = st
            .chunk_servers
            .values()
            .map(|s| {
                let v: Option<ServerView> = self.liveness.get(s.id);
                ChunkServerStatus {
                    id: s.id,
                    addr: s.addr.clone(),
                    live: self.liveness.is_live(s.id),
                    capacity_bytes: v.as_ref().map(|v| v.capacity).unwrap_or(0),
                    used_bytes: v.as_ref().map(|v| v.used).unwrap_or(0),
                    chunks: v.as_ref().map(|v| v.chunks).unwrap_or(0),
                    last_seen_ms: v
                        .map(|v| v.last_seen.elapsed().as_millis() as u64)
                        .unwrap_or(u64::MAX),
                    stalled: self.liveness.is_stalled(s.id),
                }
            })
            .collect();
        let (files, _, _) = st.totals();
        let (trash_files, _, trash_bytes) = st.trash_usage(None);
        let (open_leases, oldest_lease) = st.lease_stats(now_ms());
        Ok(ClusterStatusReply {
            revoked: st.meta.revoked.iter().cloned().collect(),
            open_leases,
            oldest_lease_age_ms: match oldest_lease {
                0 => 0,
                t => now_ms().saturating_sub(t).max(0) as u64,
            },
            trash_files,
            trash_bytes,
            trash_retention_ms: self.config.trash_retention.as_millis() as u64,
            leader,
            term,
            members,
            chunk_servers,
            cluster_id: st.meta.cluster_id.clone(),
            files,
            under_replicated_files: st.under_replicated_files(),
        })
    }

    /// Add a metadata node: as a learner first, made a voter only once it holds the log up
    /// to the entry that added it (openraft's own blocking add counts a learner that never
    /// answered as "up to date" while the log is short). A node that does not catch up within
    /// the caller's budget is removed again and the call fails: a voter that cannot vote
    /// would take away the cluster's only spare failure.
    pub async fn add_member(&self, c: &Caller, r: AddMemberRequest) -> OpResult<Empty> {
        self.write_gate()?;
        self.authenticate_admin(c)?;
        if r.id == 0 || r.addr.is_empty() {
            return Err(invalid("give a non-zero node id and its host:port"));
        }
        // Until this add is over (its task below holds the guard to the end), another add or
        // remove waits here and then sees what this one did.
        let guard = self.membership_change.clone().lock_owned().await;
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        if voters.contains(&r.id) {
            // The same add again (a retry whose first attempt succeeded) is done.
            let same = membership
                .membership()
                .get_node(&r.id)
                .is_some_and(|n| n.addr == r.addr);
            return if same {
                Ok(Empty {})
            } else {
                Err(Status::already_exists(format!("node {} is already a member", r.id)).into())
            };
        }
        let budget = match r.catch_up_ms {
            0 => Duration::from_secs(30),
            ms => Duration::from_millis(ms),
        };
        // A member removed before (its identity revoked) may come back when an admin adds it.
        if self
            .read_state()
            .meta
            .revoked
            .contains(&format!("meta {}", r.id))
        {
            self.propose(v1(CommandV1::Revoke {
                identity: format!("meta {}", r.id),
                allow: true,
            }))
            .await?;
        }
        tracing::info!(node = self.id, new = r.id, addr = %r.addr, "adding member: learner first");
        let added = self
            .raft
            .add_learner(
                r.id,
                BasicNode {
                    addr: r.addr.clone(),
                },
                false,
            )
            .await
            .map_err(membership_error)?;
        // The rest runs on its own task: a caller that goes away (a forwarding timeout, a
        // killed client) does not leave a learner half-added; it is promoted or removed.
        let (raft, me, id, needed) = (self.raft.clone(), self.id, r.id, added.log_id.index);
        let outcome = tokio::spawn(async move {
            let _guard = guard;
            let caught_up = raft
                .wait(Some(budget))
                .metrics(
                    move |m| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(&id))
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|l| l.index >= needed)
                    },
                    "the new learner to catch up",
                )
                .await;
            if caught_up.is_err() {
                // Leave the membership as it was: the learner goes again.
                let removal = raft
                    .change_membership(
                        openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                        false,
                    )
                    .await;
                if let Err(e) = removal {
                    tracing::warn!(node = me, new = id, error = %e, "could not remove the learner that did not catch up");
                }
                return Ok(false);
            }
            let mut new_voters = voters;
            new_voters.insert(id);
            raft.change_membership(new_voters, false).await.map(|_| true)
        })
        .await
        .map_err(|e| Status::internal(format!("add-member task failed: {e}")))?;
        match outcome.map_err(membership_error)? {
            true => {
                tracing::info!(node = self.id, new = r.id, "member added");
                Ok(Empty {})
            }
            false => {
                tracing::warn!(node = self.id, new = r.id, addr = %r.addr, "new member did not catch up; not added");
                Err(Status::failed_precondition(format!(
                    "node {} at {} did not catch up within {:.1} s (is it running with --join and the cluster secret, and reachable from the leader?); it was not added and the membership is unchanged",
                    r.id,
                    r.addr,
                    budget.as_secs_f64()
                ))
                .into())
            }
        }
    }

    /// This node's view of the leader, from memory: answers even without credentials, so a
    /// client can tell a responsive node from a frozen one before it sends a request.
    pub async fn ping(&self, _c: &Caller, _r: Empty) -> OpResult<PingReply> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.unwrap_or(0);
        let leader_addr = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        Ok(PingReply {
            id: self.id,
            leader,
            leader_addr,
            term: m.current_term,
        })
    }

    pub async fn remove_member(&self, c: &Caller, r: RemoveMemberRequest) -> OpResult<Empty> {
        self.write_gate()?;
        self.authenticate_admin(c)?;
        let _guard = self.membership_change.lock().await;
        let mut voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !voters.remove(&r.id) {
            return Err(Status::not_found(format!("node {} is not a member", r.id)).into());
        }
        if voters.is_empty() {
            return Err(Status::failed_precondition("cannot remove the last member").into());
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(membership_error)?;
        // A removed member is shut out: its certificate no longer speaks Raft or forwards
        // (`add-member` with its id lets it in again).
        self.propose(v1(CommandV1::Revoke {
            identity: format!("meta {}", r.id),
            allow: false,
        }))
        .await?;
        tracing::info!(
            node = self.id,
            removed = r.id,
            "member removed; its certificate identity is revoked"
        );
        Ok(Empty {})
    }

    pub async fn import(&self, c: &Caller, r: ImportRequest) -> OpResult<ImportReply> {
        self.write_gate()?;
        let actor = self.authenticate_admin(c)?;
        let files = crate::export::parse_import(&r.saved_files_json, now_ms(), r.first_index)
            .map_err(invalid)?;
        let mut reply = ImportReply {
            checked: files.len() as u64,
            ..Default::default()
        };
        if r.dry_run {
            return Ok(reply);
        }
        // One Raft command per slice of files: openraft 0.9 gives an AppendEntries only one
        // heartbeat interval to complete, so a multi-megabyte entry would never replicate.
        // Each slice is atomic; a repeated import skips what is already there.
        for (k, slice) in files.chunks(IMPORT_SLICE).enumerate() {
            let cmd = CommandV1::Import {
                actor: actor.clone(),
                files: slice.to_vec(),
                now_ms: now_ms(),
            };
            // Each command of the request is remembered under its own id.
            let id = match r.request_id.as_str() {
                "" => String::new(),
                id => format!("{id}.{k}"),
            };
            if let Reply::Imported { report, count } = self.propose(client_write(&id, cmd)?).await?
            {
                reply.report.extend(report);
                reply.imported += count;
            }
        }
        if reply.imported > 0 {
            reply.report.push(
                "imported files are metadata only: their chunks from the old system cannot be recovered, so a file cannot be read until it is put again".into(),
            );
        }
        Ok(reply)
    }

    /// One page of `saved-files.json` (see `export::render_page`). Each page is rendered from
    /// one applied state; a namespace that changes between pages shows each file as its page
    /// found it (as a paged listing does).
    pub async fn export(&self, c: &Caller, r: ExportRequest) -> OpResult<ExportReply> {
        self.read_gate(false).await?;
        let actor = self.authenticate_admin(c)?;
        let start = match r.after.as_str() {
            "" => crate::export::PageStart::default(),
            token => open_export_cursor(&self.secret, &actor, token)?,
        };
        let page = crate::export::render_page(
            &self.read_state(),
            &start,
            crate::export::PAGE_BYTES,
            crate::export::PAGE_SCAN,
        );
        let next = match page.next {
            None => String::new(),
            Some(n) => {
                let fields = [n.files_before.to_string()];
                let after = n.after.unwrap_or_default();
                seal_page(&self.secret, EXPORT_CURSOR, &actor, &fields, &after)
            }
        };
        Ok(ExportReply {
            saved_files_json: page.piece,
            next,
        })
    }

    pub async fn register_chunk_server(
        &self,
        c: &Caller,
        r: RegisterChunkServerRequest,
    ) -> OpResult<RegisterChunkServerReply> {
        self.write_gate()?;
        let who = self.authenticate_node(c)?;
        // With TLS a chunk server is the one its certificate names, and only that one.
        let certified_id = match who {
            None => None,
            Some(p) => match (p.role, p.node_id()) {
                (dfs_common::pki::Role::Chunk, Some(id)) => Some(id),
                _ => {
                    return Err(Status::permission_denied(format!(
                        "only a chunk server certificate registers a chunk server; the caller's is for {p}"
                    ))
                    .into())
                }
            },
        };
        if r.uuid.is_empty() || r.uuid.len() > 64 || r.addr.is_empty() || r.addr.len() > 256 {
            return Err(invalid(
                "chunk server registration needs a uuid (≤64 bytes) and an address",
            ));
        }
        match self
            .propose(v1(CommandV1::RegisterChunkServer {
                uuid: r.uuid,
                addr: r.addr.clone(),
                now_ms: now_ms(),
                certified_id,
            }))
            .await?
        {
            Reply::ChunkServerId { id } => {
                tracing::info!(node = self.id, chunk_server = id, addr = %r.addr, "chunk server registered");
                // Its own token key: it verifies tokens for this id only, and signs its
                // receipts with it.
                Ok(RegisterChunkServerReply {
                    node_id: id,
                    token_key: self.secret.chunk_server_key(id).as_bytes().to_vec(),
                })
            }
            _ => Err(Status::internal("unexpected reply to registration").into()),
        }
    }

    /// Heartbeats are answered by every node from its own state (no forwarding).
    pub async fn heartbeat(&self, c: &Caller, mut r: HeartbeatRequest) -> OpResult<HeartbeatReply> {
        if let Some(p) = self.authenticate_node(c)? {
            if p.role != dfs_common::pki::Role::Chunk || p.node_id() != Some(r.node_id) {
                self.metrics.auth_failures.inc();
                return Err(Status::permission_denied(format!(
                    "{p} cannot heartbeat as chunk server {}: a chunk server speaks only for itself",
                    r.node_id
                ))
                .into());
            }
        }
        let pending: Vec<String> = {
            let st = self.read_state();
            if !st.chunk_servers.contains_key(&r.node_id) {
                return Err(Status::not_found(format!(
                    "unknown chunk server id {}: register first",
                    r.node_id
                ))
                .into());
            }
            st.pending_deletes
                .get(&r.node_id)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        };
        self.liveness.record(
            r.node_id,
            ServerView {
                last_seen: Instant::now(),
                capacity: r.capacity_bytes,
                used: r.used_bytes,
                disk_free: r.disk_free_bytes,
                chunks: r.chunk_count,
                placed: Default::default(),
            },
        );
        // Every node keeps the latest report, so a new leader can collect orphans at once.
        if r.inventory_included {
            self.healing.record_inventory(
                r.node_id,
                crate::inventory::Page {
                    round: r.inventory_round,
                    page: r.inventory_page,
                    last: r.inventory_last,
                    ids: std::mem::take(&mut r.inventory),
                },
            );
        }
        self.healing.forget_chunks(r.node_id, &r.deleted);
        let acked: BTreeSet<&String> = r.deleted.iter().collect();
        let confirmed: Vec<String> = pending
            .iter()
            .filter(|c| acked.contains(c))
            .cloned()
            .collect();
        let leader = self.is_leader();
        if leader && !confirmed.is_empty() {
            let cmd = v1(CommandV1::ChunksDeleted {
                node: r.node_id,
                chunks: confirmed,
            });
            if let Err(e) = self.propose(cmd).await {
                tracing::debug!(node = self.id, error = ?e, "could not record chunk deletions; the server will report them again");
            }
        }
        let delete = pending
            .into_iter()
            .filter(|c| !acked.contains(c))
            .take(MAX_DELETE_ORDERS)
            .collect();
        let revoked = self.read_state().meta.revoked.iter().cloned().collect();
        Ok(HeartbeatReply {
            delete,
            leader,
            revoked,
        })
    }

    /// Shut a certificate identity out of the cluster (or let it in again): its calls to any
    /// metadata node are refused from the moment the entry is applied there, and chunk servers
    /// learn it with their next heartbeat.
    pub async fn revoke_certificate(
        &self,
        c: &Caller,
        r: RevokeCertificateRequest,
    ) -> OpResult<Empty> {
        self.write_gate()?;
        let admin = self.authenticate_admin(c)?;
        let identity: dfs_common::pki::Identity = r
            .identity
            .parse()
            .map_err(|e: dfs_common::pki::PkiError| invalid(e))?;
        if !r.allow && crate::network::tls().and_then(|t| t.identity()).as_ref() == Some(&identity)
        {
            return Err(invalid(format!(
                "{identity} is the node answering this call: remove it from the group first (dfsctl cluster remove-member)"
            )));
        }
        self.propose(v1(CommandV1::Revoke {
            identity: identity.to_string(),
            allow: r.allow,
        }))
        .await?;
        tracing::warn!(node = self.id, %identity, allow = r.allow, by = %admin, "certificate identity {}", if r.allow { "allowed again" } else { "revoked" });
        Ok(Empty {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered_as(c: CommandV1) -> String {
        match client_write("same-id", c).unwrap() {
            Command::V1(CommandV1::Once { request_id, .. }) => request_id,
            other => panic!("not a remembered request: {other:?}"),
        }
    }

    /// A request id replayed by another user (or on another method) is not answered with the
    /// first caller's remembered reply: it is remembered under user and method.
    #[test]
    fn request_ids_are_remembered_per_user_and_method() {
        let mkdir = |actor: &str| CommandV1::Mkdir {
            actor: actor.into(),
            path: "/x".into(),
            parents: false,
            id: "i".into(),
            now_ms: 1,
        };
        let alice = remembered_as(mkdir("alice"));
        assert_ne!(alice, remembered_as(mkdir("bob")));
        assert_eq!(alice, remembered_as(mkdir("alice")), "a retry finds it");
        let rm = CommandV1::Remove {
            actor: "alice".into(),
            path: "/x".into(),
            recursive: false,
            now_ms: 1,
        };
        assert_ne!(alice, remembered_as(rm));
    }
}
