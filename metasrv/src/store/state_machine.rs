//! The state machine: `State` in memory, its records in the sled `sm` tree, snapshots as a file.
//!
//! To ensure correctness: an applied batch writes the changed records, the last applied log id
//! and the membership in one atomic sled batch (all or nothing after a crash). Applying does not
//! wait for an fsync of its own: every entry it applies is already durable in the log on a
//! quorum, the next group-commit sync covers the batch, and after a power loss openraft
//! re-applies from the persisted applied id. A snapshot first waits for a sync, so the state on
//! disk is never older than a snapshot whose log has been purged. A snapshot is serialized in
//! `get_snapshot_builder` straight from the shared state (no copy of it), so applying waits
//! while that runs; only the file is written in the background. Installing a snapshot replaces
//! every record in one batch, then syncs.
use super::{Durable, Flusher, TREE_SM};
use crate::state::{RecordKey, Reply, Response, State};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Meta keys start with NUL, which no record key does.
const KEY_APPLIED: &[u8] = b"\0applied";
const KEY_MEMBERSHIP: &[u8] = b"\0membership";
const SNAPSHOT_FILE: &str = "current.snap";

/// The in-memory state, shared with the services that read it.
pub type SharedState = Arc<RwLock<State>>;

pub struct StateMachine {
    flusher: Flusher,
    tree: sled::Tree,
    state: SharedState,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot_dir: PathBuf,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachine {
    pub fn open(
        durable: Arc<Durable>,
        flusher: Flusher,
        snapshot_dir: &Path,
    ) -> Result<Self, StorageError> {
        let tree = durable.db.open_tree(TREE_SM).map_err(read_err)?;
        let mut state = State::default();
        let mut applied = None;
        let mut membership = StoredMembership::default();
        let mut old_format = Vec::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(read_err)?;
            match k.as_ref() {
                KEY_APPLIED => applied = serde_json::from_slice(&v).map_err(read_err)?,
                KEY_MEMBERSHIP => membership = serde_json::from_slice(&v).map_err(read_err)?,
                _ => {
                    state.load_record(&k, &v).map_err(read_err)?;
                    if let Some(RecordKey::PendingDeletesV0(_)) = RecordKey::decode(&k) {
                        old_format.push(k);
                    }
                }
            }
        }
        if !old_format.is_empty() {
            // Whole-list pending-delete records become one record per chunk, atomically (the
            // state they describe is the same, so no sync is needed before going on).
            let mut batch = sled::Batch::default();
            for k in old_format {
                batch.remove(k);
            }
            for (id, chunks) in &state.pending_deletes {
                for c in chunks {
                    batch.insert(
                        RecordKey::PendingDelete(*id, c.clone()).encode(),
                        Vec::new(),
                    );
                }
            }
            tree.apply_batch(batch).map_err(write_err)?;
        }
        std::fs::create_dir_all(snapshot_dir).map_err(read_err)?;
        Ok(Self {
            flusher,
            tree,
            state: Arc::new(RwLock::new(state)),
            applied,
            membership,
            snapshot_dir: snapshot_dir.to_path_buf(),
        })
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.flusher.sync().await.map_err(write_err)
    }
}

/// Snapshot file: one line of JSON `SnapshotMeta`, then the state as JSON.
fn encode_snapshot_file(meta: &SnapshotMeta, data: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(meta)?;
    out.push(b'\n');
    out.extend_from_slice(data);
    Ok(out)
}

fn decode_snapshot_file(mut raw: Vec<u8>) -> Option<(SnapshotMeta, Vec<u8>)> {
    let nl = raw.iter().position(|b| *b == b'\n')?;
    let meta = serde_json::from_slice(&raw[..nl]).ok()?;
    // In place: the state is most of the file (~100 MB at 1M entries); no second buffer.
    raw.drain(..=nl);
    Some((meta, raw))
}

fn write_snapshot_file(path: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let sig = Some(meta.signature());
    let bytes = encode_snapshot_file(meta, data)
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
    dfs_common::durable::write_atomic(path, &bytes)
        .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
    Ok(())
}

pub struct SnapshotBuilder {
    flusher: Flusher,
    /// The state at `applied`, serialized.
    data: Result<Vec<u8>, Arc<serde_json::Error>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // The applied state up to this snapshot is on disk before its log can be purged.
        self.flusher.sync().await.map_err(write_err)?;
        let snapshot_id = match self.applied {
            Some(l) => format!(
                "{}-{}-{}",
                l.leader_id.term,
                l.index,
                uuid::Uuid::new_v4().simple()
            ),
            None => format!("empty-{}", uuid::Uuid::new_v4().simple()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        // Writing ~100 MB takes a while: off the async workers.
        let data = std::mem::replace(&mut self.data, Ok(Vec::new()))
            .map_err(|e| StorageIOError::write_snapshot(None, &*e))?;
        let path = self.path.clone();
        let m2 = meta.clone();
        let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, StorageError> {
            write_snapshot_file(&path, &m2, &data)?;
            Ok(data)
        })
        .await
        .map_err(write_err)??;
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut batch = sled::Batch::default();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let mut touched = Vec::new();
            for e in entries {
                self.applied = Some(e.log_id);
                let result = match e.payload {
                    EntryPayload::Blank => Ok(Reply::Done),
                    EntryPayload::Normal(req) => state.apply(&req.cmd, &mut touched),
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(e.log_id), m);
                        Ok(Reply::Done)
                    }
                };
                responses.push(Response { result });
            }
            touched.sort();
            touched.dedup();
            for k in touched {
                match state.record(&k) {
                    Some(v) => batch.insert(k.encode(), v),
                    None => batch.remove(k.encode()),
                }
            }
        }
        batch.insert(
            KEY_APPLIED,
            serde_json::to_vec(&self.applied).map_err(write_err)?,
        );
        batch.insert(
            KEY_MEMBERSHIP,
            serde_json::to_vec(&self.membership).map_err(write_err)?,
        );
        self.tree.apply_batch(batch).map_err(write_err)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The snapshot must be of the state at `applied` (nothing is applied meanwhile), so it
        // is serialized here, straight from the shared state: no copy of a namespace that may
        // take a gigabyte (copying and then freeing one stalled the process into elections).
        // That takes a while: hand this worker's other tasks (Raft's heartbeats among them) to
        // another thread first, so they are not stuck behind it.
        let serialize = || {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            serde_json::to_vec(&*st)
        };
        let data = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(serialize),
            _ => serialize(),
        }
        .map_err(Arc::new);
        SnapshotBuilder {
            flusher: self.flusher.clone(),
            data,
            applied: self.applied,
            membership: self.membership.clone(),
            path: self.snapshot_path(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let data = snapshot.into_inner();
        let new_state: State = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        write_snapshot_file(&self.snapshot_path(), meta, &data)?;

        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k.map_err(read_err)?);
        }
        for (k, v) in new_state.all_records() {
            batch.insert(k.encode(), v);
        }
        batch.insert(
            KEY_APPLIED,
            serde_json::to_vec(&meta.last_log_id).map_err(write_err)?,
        );
        batch.insert(
            KEY_MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership).map_err(write_err)?,
        );
        self.tree.apply_batch(batch).map_err(write_err)?;
        self.sync().await?;

        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = new_state;
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_path();
        // ~100 MB at a million entries: read off the async workers.
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let raw = match read {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        let Some((meta, data)) = decode_snapshot_file(raw) else {
            return Err(StorageIOError::read_snapshot(
                None,
                openraft::AnyError::error("snapshot file is corrupt"),
            )
            .into());
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
