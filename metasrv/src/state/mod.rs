//! The replicated state: namespace, users, chunk-server registry and pending chunk deletions.
//!
//! Invariants (kept by `apply`, checked in tests):
//! - every path in `nodes` is normalized and its parent is `/` or a directory in `nodes`;
//! - every chunk of a file names only registered chunk servers;
//! - a chunk id belongs to at most one file; chunks of removed or replaced files are queued in
//!   `pending_deletes` and never referenced again.
//!
//! Applying is pure (no IO, no clock, no randomness: times and ids come inside the command), so
//! every member reaches the same state from the same log. The store persists the records that
//! an apply touched (`RecordKey`), in the same sled batch as the applied log id.
pub mod command;
mod healing;
pub mod leases;
mod namespace;
pub mod recent;
pub mod trash;
mod users;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use command::{Command, CommandV1, Reply, Request, Response};
pub use namespace::{MAX_LIST_PAGE, MAX_REPLICATION};

pub type NodeId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// sha256 of the access key (hex); the key itself is never stored.
    pub key_hash: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: String,
    pub size: u64,
    pub crc32c: u32,
    /// Chunk servers holding an acknowledged, durable copy.
    pub replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub size: u64,
    pub replication: u32,
    pub sha256: String,
    pub chunk_size: u64,
    pub chunks: Vec<ChunkRef>,
}

/// A directory (no `file`, no `symlink`), a file or a symbolic link.
///
/// `ino` is the inode number: unique among every inode the cluster ever had (root is 1, the
/// counter lives in `ClusterMeta.next_ino`), kept across rename and across a commit that
/// replaces the file's content. Records written before numbers existed decode with 0 until the
/// leader's `NumberInodes` entry numbers them (in path order, the same on every member).
/// `mode` 0 means the default for the kind (see `Inode::mode`); `ctime_ms` 0 means
/// `modified_ms` (records from before ctime was kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub id: String,
    #[serde(default)]
    pub ino: u64,
    pub owner: String,
    pub created_ms: i64,
    pub modified_ms: i64,
    #[serde(default)]
    pub ctime_ms: i64,
    #[serde(default)]
    pub mode: u32,
    pub file: Option<FileData>,
    /// The target of a symbolic link (then `file` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
}

/// Default permission bits of a new file, directory and symbolic link.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
pub const DEFAULT_DIR_MODE: u32 = 0o755;
pub const SYMLINK_MODE: u32 = 0o777;
/// The permission bits `SetAttr` may set (rwx for user, group, other, and setuid/setgid/sticky).
pub const MODE_MASK: u32 = 0o7777;
/// The inode number of `/`.
pub const ROOT_INO: u64 = 1;

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.file.is_none() && self.symlink.is_none()
    }

    pub fn is_symlink(&self) -> bool {
        self.symlink.is_some()
    }

    /// The permission bits, with the kind's default when none were ever set.
    pub fn mode(&self) -> u32 {
        match self.mode {
            _ if self.is_symlink() => SYMLINK_MODE,
            0 if self.is_dir() => DEFAULT_DIR_MODE,
            0 => DEFAULT_FILE_MODE,
            m => m & MODE_MASK,
        }
    }

    /// When the inode last changed (content, name, or attributes).
    pub fn ctime(&self) -> i64 {
        if self.ctime_ms == 0 {
            self.modified_ms
        } else {
            self.ctime_ms
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkServerEntry {
    pub id: NodeId,
    /// Stable identity the chunk server keeps in its data dir.
    pub uuid: String,
    pub addr: String,
    pub registered_ms: i64,
}

/// Cluster-wide settings fixed at initialization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub next_chunk_server_id: NodeId,
    /// The next inode number to hand out (numbers are never reused; 0 reads as 2).
    #[serde(default)]
    pub next_ino: u64,
    /// Namespace semantics of this version are on: new inodes get numbers, a directory's
    /// mtime follows its entries, a rename changes ctime. Set by `Init` on a new cluster and
    /// by `NumberInodes` on one made by an older version; entries applied before that point
    /// apply exactly as the older version applied them, so every member agrees.
    #[serde(default)]
    pub inode_numbers: bool,
    /// When the cluster was initialized (0 on clusters from before it was kept: then the
    /// admin user's creation time, which is the same moment).
    #[serde(default)]
    pub created_ms: i64,
    /// The root directory's attributes (0: its defaults).
    #[serde(default)]
    pub root_mode: u32,
    /// Certificate identities shut out of the cluster ("chunk 3"): `dfsctl admin cert revoke`,
    /// and a metasrv removed from the group.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub revoked: BTreeSet<String>,
    #[serde(default)]
    pub root_mtime_ms: i64,
    #[serde(default)]
    pub root_ctime_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub meta: ClusterMeta,
    /// Every path but the root, which always exists and is not stored.
    pub nodes: BTreeMap<String, Inode>,
    pub users: BTreeMap<String, User>,
    pub chunk_servers: BTreeMap<NodeId, ChunkServerEntry>,
    /// Chunk server -> chunks it should delete (from removed or replaced files).
    pub pending_deletes: BTreeMap<NodeId, BTreeSet<String>>,
    /// Request ids of recently applied writes, so a retried write is answered without being
    /// applied twice. Entries older than `REQUEST_MEMORY_MS` are dropped, and the oldest while
    /// they take more than `REQUEST_MEMORY_BYTES` (see `recent`).
    #[serde(default)]
    pub recent_requests: recent::RecentRequests,
    /// Open writes that outlive their tokens' commit window (see `leases`).
    #[serde(default)]
    pub leases: BTreeMap<String, leases::Lease>,
}

/// A recently applied request: when, and what it replied (a retry gets the same answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub at_ms: i64,
    pub reply: Reply,
}

/// How long a request id is remembered. Far longer than a client retries one call (dfsctl
/// gives up after `--timeout`, 30 s by default) or than a stray attempt can wait in an old
/// leader's log (one election). At 5,000 writes/s the byte budget below is reached first
/// (about a minute of ids). (HDFS's retry cache keeps 10 minutes.)
pub const REQUEST_MEMORY_MS: i64 = 5 * 60 * 1000;
/// The most the remembered request ids may take (estimated, see `recent::cost`; a typical
/// entry counts 150 to 300 bytes): beyond it the oldest go first, even if younger than
/// `REQUEST_MEMORY_MS`. 64 MiB is about 300,000 entries, a minute of writes at 5,000/s, still
/// twice as long as a client retries one call.
pub const REQUEST_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// One persisted record of the state. An apply reports which records it touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKey {
    Meta,
    Node(String),
    User(String),
    ChunkServer(NodeId),
    /// One chunk that a chunk server must delete (a record each: queueing or acknowledging a
    /// delete rewrites a few bytes, not the server's whole list).
    PendingDelete(NodeId, String),
    /// A server's whole list in one record, as written before; read, never written.
    PendingDeletesV0(NodeId),
    RecentRequest(String),
    Lease(String),
}

impl RecordKey {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            RecordKey::Meta => b"m".to_vec(),
            RecordKey::Node(p) => format!("n{p}").into_bytes(),
            RecordKey::User(u) => format!("u{u}").into_bytes(),
            RecordKey::ChunkServer(id) => format!("c{id:020}").into_bytes(),
            RecordKey::PendingDelete(id, chunk) => format!("d{id:020}/{chunk}").into_bytes(),
            RecordKey::PendingDeletesV0(id) => format!("d{id:020}").into_bytes(),
            RecordKey::RecentRequest(r) => format!("r{r}").into_bytes(),
            RecordKey::Lease(l) => format!("l{l}").into_bytes(),
        }
    }

    pub fn decode(raw: &[u8]) -> Option<RecordKey> {
        let (tag, rest) = raw.split_first()?;
        let rest = std::str::from_utf8(rest).ok()?;
        Some(match tag {
            b'm' if rest.is_empty() => RecordKey::Meta,
            b'n' => RecordKey::Node(rest.to_string()),
            b'u' => RecordKey::User(rest.to_string()),
            b'c' => RecordKey::ChunkServer(rest.parse().ok()?),
            b'd' => match rest.split_once('/') {
                Some((id, chunk)) => RecordKey::PendingDelete(id.parse().ok()?, chunk.to_string()),
                None => RecordKey::PendingDeletesV0(rest.parse().ok()?),
            },
            b'r' => RecordKey::RecentRequest(rest.to_string()),
            b'l' => RecordKey::Lease(rest.to_string()),
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("unknown record key {0:?}")]
    UnknownKey(String),
    #[error("record {key:?} does not decode: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
}

impl State {
    /// The serialized value of one record, or `None` if it no longer exists.
    pub fn record(&self, key: &RecordKey) -> Option<Vec<u8>> {
        let v = match key {
            RecordKey::Meta => serde_json::to_vec(&self.meta),
            RecordKey::Node(p) => serde_json::to_vec(self.nodes.get(p)?),
            RecordKey::User(u) => serde_json::to_vec(self.users.get(u)?),
            RecordKey::ChunkServer(id) => serde_json::to_vec(self.chunk_servers.get(id)?),
            RecordKey::RecentRequest(r) => serde_json::to_vec(self.recent_requests.get(r)?),
            RecordKey::Lease(l) => serde_json::to_vec(self.leases.get(l)?),
            RecordKey::PendingDelete(id, chunk) => {
                return self.pending_deletes.get(id)?.contains(chunk).then(Vec::new)
            }
            RecordKey::PendingDeletesV0(_) => return None,
        };
        Some(v.expect("state records always serialize"))
    }

    /// Every record, for a full rewrite (snapshot install), made one at a time as the caller
    /// takes them (a million records are never all in memory at once).
    pub fn all_records(&self) -> impl Iterator<Item = (RecordKey, Vec<u8>)> + '_ {
        let pending = self.pending_deletes.iter().flat_map(|(id, chunks)| {
            chunks
                .iter()
                .map(|c| RecordKey::PendingDelete(*id, c.clone()))
        });
        std::iter::once(RecordKey::Meta)
            .chain(self.nodes.keys().cloned().map(RecordKey::Node))
            .chain(self.users.keys().cloned().map(RecordKey::User))
            .chain(
                self.chunk_servers
                    .keys()
                    .copied()
                    .map(RecordKey::ChunkServer),
            )
            .chain(pending)
            .chain(
                self.recent_requests
                    .keys()
                    .cloned()
                    .map(RecordKey::RecentRequest),
            )
            .chain(self.leases.keys().cloned().map(RecordKey::Lease))
            .filter_map(|k| self.record(&k).map(|v| (k, v)))
    }

    /// Load one persisted record (used when opening the store).
    pub fn load_record(&mut self, raw_key: &[u8], value: &[u8]) -> Result<(), RecordError> {
        let key = RecordKey::decode(raw_key).ok_or_else(|| {
            RecordError::UnknownKey(String::from_utf8_lossy(raw_key).into_owned())
        })?;
        let dec = |source| RecordError::Decode {
            key: format!("{key:?}"),
            source,
        };
        match &key {
            RecordKey::Meta => self.meta = serde_json::from_slice(value).map_err(dec)?,
            RecordKey::Node(p) => {
                self.nodes
                    .insert(p.clone(), serde_json::from_slice(value).map_err(dec)?);
            }
            RecordKey::User(u) => {
                self.users
                    .insert(u.clone(), serde_json::from_slice(value).map_err(dec)?);
            }
            RecordKey::ChunkServer(id) => {
                self.chunk_servers
                    .insert(*id, serde_json::from_slice(value).map_err(dec)?);
            }
            RecordKey::PendingDelete(id, chunk) => {
                self.pending_deletes
                    .entry(*id)
                    .or_default()
                    .insert(chunk.clone());
            }
            RecordKey::PendingDeletesV0(id) => {
                let chunks: BTreeSet<String> = serde_json::from_slice(value).map_err(dec)?;
                self.pending_deletes.entry(*id).or_default().extend(chunks);
            }
            RecordKey::RecentRequest(r) => {
                self.recent_requests
                    .insert(r.clone(), serde_json::from_slice(value).map_err(dec)?);
            }
            RecordKey::Lease(l) => {
                self.leases
                    .insert(l.clone(), serde_json::from_slice(value).map_err(dec)?);
            }
        }
        Ok(())
    }

    /// Remember an applied request's id and reply, forgetting ids older than
    /// `REQUEST_MEMORY_MS` and, oldest first, those beyond `REQUEST_MEMORY_BYTES`.
    pub(crate) fn remember_request(
        &mut self,
        request_id: &str,
        now_ms: i64,
        reply: Reply,
        touched: &mut Vec<RecordKey>,
    ) {
        self.remember_request_within(request_id, now_ms, reply, REQUEST_MEMORY_BYTES, touched)
    }

    /// `remember_request` with another byte budget (tests).
    pub(crate) fn remember_request_within(
        &mut self,
        request_id: &str,
        now_ms: i64,
        reply: Reply,
        max_bytes: u64,
        touched: &mut Vec<RecordKey>,
    ) {
        let r = Remembered {
            at_ms: now_ms,
            reply,
        };
        self.recent_requests.insert(request_id.to_string(), r);
        touched.push(RecordKey::RecentRequest(request_id.to_string()));
        // Deterministic: from the command's time and the entries' sizes only. Each call drops
        // what is due (a look at the oldest entry when nothing is).
        let dropped = self
            .recent_requests
            .prune(now_ms.saturating_sub(REQUEST_MEMORY_MS), max_bytes);
        touched.extend(dropped.into_iter().map(RecordKey::RecentRequest));
    }

    pub fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.role == Role::Admin)
    }

    /// Number of files and directories, and bytes in files.
    pub fn totals(&self) -> (u64, u64, u64) {
        count_inodes(self.nodes.values())
    }

    /// Files with a chunk that has fewer replicas than the file's replication factor.
    pub fn under_replicated_files(&self) -> u64 {
        self.nodes
            .values()
            .filter_map(|n| n.file.as_ref())
            .filter(|f| {
                f.chunks
                    .iter()
                    .any(|c| (c.replicas.len() as u32) < f.replication)
            })
            .count() as u64
    }
}

#[cfg(test)]
mod tests;

/// Files, directories and file bytes (saturating) among `nodes`.
pub(crate) fn count_inodes<'a>(nodes: impl Iterator<Item = &'a Inode>) -> (u64, u64, u64) {
    let mut t: (u64, u64, u64) = (0, 0, 0);
    for n in nodes {
        match &n.file {
            Some(f) => {
                t.0 += 1;
                t.2 = t.2.saturating_add(f.size);
            }
            // Symbolic links count as (empty) files.
            None if n.is_symlink() => t.0 += 1,
            None => t.1 += 1,
        }
    }
    t
}
