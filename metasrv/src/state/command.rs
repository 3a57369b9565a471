//! Commands carried by Raft entries, and what applying them returns.
//!
//! Commands are a versioned enum (`Command::V1`): a new shape is a new variant, and old entries in
//! a log or snapshot still decode. Everything non-deterministic (time, ids, key hashes) is decided
//! by the proposer and carried in the command.
use super::{ChunkRef, FileData, NodeId, Role, State};
use serde::{Deserialize, Serialize};

/// The Raft entry payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub cmd: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    V1(CommandV1),
}

/// How a `CommitFile` makes its version (the command's fields other than the file itself).
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    pub overwrite: bool,
    pub id: &'a str,
    pub now_ms: i64,
    pub kept: &'a [String],
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandV1 {
    /// First command of a cluster: its id and the admin user. Ignored if already initialized.
    Init {
        cluster_id: String,
        admin_key_hash: String,
        now_ms: i64,
    },
    /// `actor == None` is self-registration (checked by the proposer against its config).
    AddUser {
        actor: Option<String>,
        name: String,
        role: Role,
        key_hash: String,
        now_ms: i64,
    },
    RemoveUser {
        actor: String,
        name: String,
    },
    Mkdir {
        actor: String,
        path: String,
        parents: bool,
        id: String,
        now_ms: i64,
    },
    Rename {
        actor: String,
        from: String,
        to: String,
        now_ms: i64,
        /// Entries from before the flag decode as `Move` (what rename did then).
        #[serde(default)]
        mode: RenameMode,
    },
    Remove {
        actor: String,
        path: String,
        recursive: bool,
        /// The parent directory's new mtime (0 in entries from before it was kept: unchanged).
        #[serde(default)]
        now_ms: i64,
    },
    /// Move `path` to its owner's trash (see `trash`); already in the trash or an empty
    /// directory: remove it for good.
    Trash {
        actor: String,
        path: String,
        recursive: bool,
        now_ms: i64,
    },
    /// Remove for good up to `limit` trashed entries deleted at or before `cutoff_ms`, from
    /// `user`'s trash (everyone's with `None`: the leader's retention purge).
    PurgeTrash {
        user: Option<String>,
        cutoff_ms: i64,
        limit: u64,
        now_ms: i64,
    },
    /// Create a symbolic link at `path` pointing at `target` (stored as given, never resolved).
    Symlink {
        actor: String,
        path: String,
        target: String,
        id: String,
        now_ms: i64,
    },
    /// Change the permission bits and/or the mtime of an entry (its owner or an admin);
    /// ctime becomes `now_ms`.
    SetAttr {
        actor: String,
        path: String,
        mode: Option<u32>,
        mtime_ms: Option<i64>,
        now_ms: i64,
    },
    /// Give every inode without a number one (in path order, from `ClusterMeta.next_ino`)
    /// and turn on this version's namespace semantics. The leader proposes it once on a
    /// cluster made by an older version; applying it again changes nothing.
    NumberInodes,
    /// Create or (with `overwrite`) atomically replace a file whose chunks are already durable.
    /// `kept`: ids of chunks taken unchanged from the version being replaced (a write into the
    /// middle of a big file sends only the chunks it changed); each must still be part of that
    /// version, whose sizes, checksums and replicas are used for it.
    CommitFile {
        actor: String,
        path: String,
        overwrite: bool,
        file: FileData,
        id: String,
        now_ms: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kept: Vec<String>,
        /// Permission bits for a file this commit creates (an existing file keeps its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// The writer's lease, and the chunks whose tokens were past the commit window and so
        /// must be held by it (see `leases`). The lease lives on (a file kept open is
        /// committed again and again) until the writer releases it or it expires.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        lease: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        leased: Vec<String>,
    },
    /// Create (`create`) or renew a write lease until `expires_ms`, adding chunks whose write
    /// tokens the proposer checked.
    RenewLease {
        actor: String,
        lease: String,
        path: String,
        create: bool,
        chunks: Vec<String>,
        now_ms: i64,
        expires_ms: i64,
    },
    /// The writer is done (its file closed or its put over): forget its lease.
    ReleaseLease {
        actor: String,
        lease: String,
    },
    /// Forget leases that expired before `now_ms` (their chunks become ordinary orphans).
    DropExpiredLeases {
        now_ms: i64,
    },
    /// Files from an original `saved-files.json` (their chunks are not recoverable).
    Import {
        actor: String,
        files: Vec<ImportedFile>,
        now_ms: i64,
    },
    /// Register a chunk server or update its address; the same uuid keeps the same id.
    RegisterChunkServer {
        uuid: String,
        addr: String,
        now_ms: i64,
        /// The id its certificate names (TLS clusters): the server gets exactly that id, and
        /// no other data dir may hold it. `None`: the next free id (plain-text clusters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certified_id: Option<NodeId>,
    },
    /// Shut a certificate identity out (or, with `allow`, let it in again).
    Revoke {
        identity: String,
        allow: bool,
    },
    /// A chunk server confirmed these deletions.
    ChunksDeleted {
        node: NodeId,
        chunks: Vec<String>,
    },
    /// Change a file's replication factor (the leader's healer then adds or drops replicas).
    SetReplication {
        actor: String,
        path: String,
        replication: u32,
    },
    /// A repair copy of `chunk_id` on `node` is durable and its checksum matches: record it,
    /// and drop the replicas in `drop` (queued for deletion). Names the file by path and
    /// inode id; refused if the file changed since.
    ReplicaAdded {
        path: String,
        file_id: String,
        chunk_id: String,
        node: NodeId,
        drop: Vec<NodeId>,
    },
    /// Drop replicas of a chunk (surplus, dead or corrupt) and queue their deletion; never the
    /// last one.
    DropReplicas {
        path: String,
        file_id: String,
        chunk_id: String,
        nodes: Vec<NodeId>,
    },
    /// Queue chunks that no file references on `node` (orphans) for deletion there. Chunks
    /// that a file lists on that node are skipped (the leader's view was stale).
    QueueOrphanDeletes {
        node: NodeId,
        chunks: Vec<String>,
    },
    /// Apply `cmd` at most once: a request id applied in the last 5 minutes is answered with the
    /// reply it got then, and nothing changes. A client retries a write whose reply it lost
    /// (timeout, leader change) with the same id, so the retry cannot apply it a second time.
    Once {
        request_id: String,
        now_ms: i64,
        cmd: Box<Command>,
    },
    /// Several independent commands in one entry, applied in order, each with its own result
    /// (the leader batches concurrent writes this way).
    Batch {
        cmds: Vec<Command>,
    },
}

/// What a rename does when the target exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Like `mv`: onto an existing directory moves into it; onto anything else is refused.
    #[default]
    Move,
    /// The exact target; refused with `AlreadyExists` if it exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// The exact target, atomically replacing a file or link there, or an empty directory
    /// when the source is a directory (rename(2)).
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedFile {
    pub path: String,
    pub id: String,
    pub owner: String,
    pub size: u64,
    pub sha256: String,
    pub created_ms: i64,
    pub modified_ms: i64,
    pub chunks: Vec<ChunkRef>,
}

/// Why a command was refused. Refusals change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    InvalidArgument,
    FailedPrecondition,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApplyError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApplyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(path: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("{path}: no such file or directory"),
        )
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    /// CommitFile: the version committed (owner and creation time are kept when a version is
    /// replaced). A retried commit gets this back, so it reports the first attempt's inode.
    Committed {
        owner: String,
        created_ms: i64,
        #[serde(default)]
        id: String,
        #[serde(default)]
        modified_ms: i64,
        #[serde(default)]
        ino: u64,
        #[serde(default)]
        mode: u32,
    },
    /// Init: whether this command was the one that initialized the cluster.
    Initialized {
        won: bool,
    },
    Removed {
        count: u64,
    },
    /// Trash: how many entries moved, and where the deleted entry is now.
    Trashed {
        count: u64,
        to: String,
    },
    ChunkServerId {
        id: NodeId,
    },
    /// How many chunks a command queued for deletion.
    Queued {
        count: u64,
    },
    Imported {
        report: Vec<String>,
        count: u64,
    },
    /// One result per command of a `Batch`.
    Batch {
        results: Vec<Result<Reply, ApplyError>>,
    },
}

impl CommandV1 {
    /// Who sent a client command and what it is. A request id is remembered under both, so
    /// another user's id (or the same id on another method) finds nothing of it.
    pub fn request_scope(&self) -> String {
        let (actor, kind) = match self {
            CommandV1::Mkdir { actor, .. } => (actor.as_str(), "mkdir"),
            CommandV1::Rename { actor, .. } => (actor.as_str(), "rename"),
            CommandV1::Remove { actor, .. } => (actor.as_str(), "remove"),
            CommandV1::Trash { actor, .. } => (actor.as_str(), "remove"),
            CommandV1::PurgeTrash { user, .. } => (user.as_deref().unwrap_or(""), "purge"),
            CommandV1::Symlink { actor, .. } => (actor.as_str(), "symlink"),
            CommandV1::SetAttr { actor, .. } => (actor.as_str(), "setattr"),
            CommandV1::CommitFile { actor, .. } => (actor.as_str(), "commit"),
            CommandV1::Import { actor, .. } => (actor.as_str(), "import"),
            CommandV1::AddUser { actor, .. } => (actor.as_deref().unwrap_or(""), "useradd"),
            CommandV1::RemoveUser { actor, .. } => (actor.as_str(), "userdel"),
            CommandV1::SetReplication { actor, .. } => (actor.as_str(), "replication"),
            CommandV1::RenewLease { actor, .. } => (actor.as_str(), "lease"),
            _ => ("", "other"),
        };
        format!("{actor}/{kind}")
    }
}

/// The Raft response: what applying returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub result: Result<Reply, ApplyError>,
}

impl State {
    /// Apply one command; `touched` collects the records that changed.
    pub fn apply(
        &mut self,
        cmd: &Command,
        touched: &mut Vec<super::RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let Command::V1(c) = cmd;
        match c {
            CommandV1::Init {
                cluster_id,
                admin_key_hash,
                now_ms,
            } => Ok(self.init(cluster_id, admin_key_hash, *now_ms, touched)),
            CommandV1::AddUser {
                actor,
                name,
                role,
                key_hash,
                now_ms,
            } => self.add_user(actor.as_deref(), name, *role, key_hash, *now_ms, touched),
            CommandV1::RemoveUser { actor, name } => self.remove_user(actor, name, touched),
            CommandV1::Mkdir {
                actor,
                path,
                parents,
                id,
                now_ms,
            } => self.mkdir(actor, path, *parents, id, *now_ms, touched),
            CommandV1::Rename {
                actor,
                from,
                to,
                now_ms,
                mode,
            } => self.rename(actor, from, to, *mode, *now_ms, touched),
            CommandV1::Remove {
                actor,
                path,
                recursive,
                now_ms,
            } => self.remove(actor, path, *recursive, *now_ms, touched),
            CommandV1::Trash {
                actor,
                path,
                recursive,
                now_ms,
            } => self.trash(actor, path, *recursive, *now_ms, touched),
            CommandV1::PurgeTrash {
                user,
                cutoff_ms,
                limit,
                now_ms,
            } => Ok(self.purge_trash(user.as_deref(), *cutoff_ms, *limit, *now_ms, touched)),
            CommandV1::Symlink {
                actor,
                path,
                target,
                id,
                now_ms,
            } => self.symlink(actor, path, target, id, *now_ms, touched),
            CommandV1::SetAttr {
                actor,
                path,
                mode,
                mtime_ms,
                now_ms,
            } => self.set_attr(actor, path, *mode, *mtime_ms, *now_ms, touched),
            CommandV1::NumberInodes => Ok(self.number_inodes(touched)),
            CommandV1::CommitFile {
                actor,
                path,
                overwrite,
                file,
                id,
                now_ms,
                kept,
                mode,
                lease,
                leased,
            } => {
                self.check_leased(actor, lease, leased, *now_ms)?;
                let new = NewVersion {
                    overwrite: *overwrite,
                    id,
                    now_ms: *now_ms,
                    kept,
                    mode: *mode,
                };
                self.commit_file(actor, path, file, &new, touched)
            }
            CommandV1::RenewLease {
                actor,
                lease,
                path,
                create,
                chunks,
                now_ms,
                expires_ms,
            } => self.renew_lease(
                actor,
                lease,
                path,
                *create,
                chunks,
                *now_ms,
                *expires_ms,
                touched,
            ),
            CommandV1::ReleaseLease { actor, lease } => {
                self.release_lease(actor, lease, touched);
                Ok(Reply::Done)
            }
            CommandV1::DropExpiredLeases { now_ms } => {
                Ok(self.drop_expired_leases(*now_ms, touched))
            }
            CommandV1::Import {
                actor,
                files,
                now_ms,
            } => self.import(actor, files, *now_ms, touched),
            CommandV1::RegisterChunkServer {
                uuid,
                addr,
                now_ms,
                certified_id,
            } => self.register_chunk_server(uuid, addr, *now_ms, *certified_id, touched),
            CommandV1::Revoke { identity, allow } => {
                let changed = if *allow {
                    self.meta.revoked.remove(identity)
                } else {
                    self.meta.revoked.insert(identity.clone())
                };
                if changed {
                    touched.push(super::RecordKey::Meta);
                }
                Ok(Reply::Done)
            }
            CommandV1::ChunksDeleted { node, chunks } => {
                self.chunks_deleted(*node, chunks, touched);
                Ok(Reply::Done)
            }
            CommandV1::SetReplication {
                actor,
                path,
                replication,
            } => self.set_replication(actor, path, *replication, touched),
            CommandV1::ReplicaAdded {
                path,
                file_id,
                chunk_id,
                node,
                drop,
            } => self.replica_added(path, file_id, chunk_id, *node, drop, touched),
            CommandV1::DropReplicas {
                path,
                file_id,
                chunk_id,
                nodes,
            } => self.drop_replicas(path, file_id, chunk_id, nodes, touched),
            CommandV1::QueueOrphanDeletes { node, chunks } => {
                Ok(self.queue_orphan_deletes(*node, chunks, touched))
            }
            CommandV1::Once {
                request_id,
                now_ms,
                cmd,
            } => {
                if let Some(r) = self.recent_requests.get(request_id) {
                    return Ok(r.reply.clone());
                }
                if let Command::V1(CommandV1::Once { .. } | CommandV1::Batch { .. }) = **cmd {
                    return Err(ApplyError::new(
                        ErrorKind::InvalidArgument,
                        "a request wraps one plain command",
                    ));
                }
                let r = self.apply(cmd, touched);
                if let Ok(reply) = &r {
                    self.remember_request(request_id, *now_ms, reply.clone(), touched);
                }
                r
            }
            CommandV1::Batch { cmds } => {
                let results = cmds
                    .iter()
                    .map(|c| match c {
                        Command::V1(CommandV1::Batch { .. }) => Err(ApplyError::new(
                            ErrorKind::InvalidArgument,
                            "batches do not nest",
                        )),
                        c => self.apply(c, touched),
                    })
                    .collect();
                Ok(Reply::Batch { results })
            }
        }
    }

    fn register_chunk_server(
        &mut self,
        uuid: &str,
        addr: &str,
        now_ms: i64,
        certified_id: Option<NodeId>,
        touched: &mut Vec<super::RecordKey>,
    ) -> Result<Reply, ApplyError> {
        use super::{ChunkServerEntry, RecordKey};
        if let Some(e) = self.chunk_servers.values_mut().find(|e| e.uuid == uuid) {
            if certified_id.is_some_and(|c| c != e.id) {
                return Err(ApplyError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "this data dir is chunk server {}, but the certificate is for chunk server {}: use chunk server {}'s certificate",
                        e.id,
                        certified_id.unwrap_or_default(),
                        e.id
                    ),
                ));
            }
            if e.addr != addr {
                e.addr = addr.to_string();
                touched.push(RecordKey::ChunkServer(e.id));
            }
            return Ok(Reply::ChunkServerId { id: e.id });
        }
        let id = match certified_id {
            Some(id) => {
                if self.chunk_servers.contains_key(&id) {
                    return Err(ApplyError::new(
                        ErrorKind::PermissionDenied,
                        format!("chunk server {id} is registered with another data dir: a certificate names one chunk server, and that one has its own disk (remove it from the cluster first to replace it)"),
                    ));
                }
                id
            }
            // Chunk server ids start at 1 and are never reused.
            None => self.meta.next_chunk_server_id.max(1),
        };
        self.meta.next_chunk_server_id = self.meta.next_chunk_server_id.max(id + 1);
        self.chunk_servers.insert(
            id,
            ChunkServerEntry {
                id,
                uuid: uuid.to_string(),
                addr: addr.to_string(),
                registered_ms: now_ms,
            },
        );
        touched.push(RecordKey::Meta);
        touched.push(RecordKey::ChunkServer(id));
        Ok(Reply::ChunkServerId { id })
    }

    fn chunks_deleted(
        &mut self,
        node: NodeId,
        chunks: &[String],
        touched: &mut Vec<super::RecordKey>,
    ) {
        if let Some(set) = self.pending_deletes.get_mut(&node) {
            for c in chunks {
                if set.remove(c) {
                    touched.push(super::RecordKey::PendingDelete(node, c.clone()));
                }
            }
            if set.is_empty() {
                self.pending_deletes.remove(&node);
            }
        }
    }

    /// Queue every replica of `chunks` for deletion.
    pub(super) fn queue_deletes(
        &mut self,
        chunks: &[ChunkRef],
        touched: &mut Vec<super::RecordKey>,
    ) {
        for c in chunks {
            for n in &c.replicas {
                self.queue_delete(*n, &c.id, touched);
            }
        }
    }

    /// Order chunk server `node` to delete `chunk_id`; returns whether the order is new.
    pub(super) fn queue_delete(
        &mut self,
        node: NodeId,
        chunk_id: &str,
        touched: &mut Vec<super::RecordKey>,
    ) -> bool {
        let new = self
            .pending_deletes
            .entry(node)
            .or_default()
            .insert(chunk_id.to_string());
        if new {
            touched.push(super::RecordKey::PendingDelete(node, chunk_id.to_string()));
        }
        new
    }
}
