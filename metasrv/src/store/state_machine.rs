//! The state machine: `State` in memory, its records in the sled `sm` tree, snapshots as a file.
//!
//! To ensure correctness: an applied batch writes the changed records, the last applied log id
//! and the membership in one atomic sled batch (all or nothing after a crash). An apply that
//! touched more than `RECORD_BATCH` records (the rename of a large directory) is written in
//! several batches instead (one sled batch of a million records took a node past 11 GiB): first
//! an "unfinished" marker, synced; then the records; then the applied id with the marker's
//! removal. A crash in between leaves the marker, and `open` rebuilds every record from the
//! current snapshot (or from nothing when there is none) with the snapshot's applied id, so
//! openraft applies the log after it again. Applying does not
//! wait for an fsync of its own: every entry it applies is already durable in the log on a
//! quorum, the next group-commit sync covers the batch, and after a power loss openraft
//! re-applies from the persisted applied id. A snapshot first waits for a sync, so the state on
//! disk is never older than a snapshot whose log has been purged. A snapshot is serialized in
//! `get_snapshot_builder` straight from the shared state (no copy of it) into a file, so
//! applying waits while that runs; the fsync and commit are done in the background.
//!
//! Snapshot data is a file (`snapshot_files`), streamed to and from followers by openraft in
//! chunks; no whole snapshot is ever held in a `Vec`. Installing: the received file is synced
//! and parsed (streamed) before anything changes, then committed as the current snapshot, then
//! every record is replaced in one batch and synced. A crash between the commit and the sync
//! leaves a snapshot newer than the applied id in sled: `open` notices and installs it again.
use super::snapshot_files::{self, SnapshotFiles};
use super::{Durable, Flusher, TREE_SM};
use crate::state::{RecordKey, Reply, Response, State};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Meta keys start with NUL, which no record key does.
const KEY_APPLIED: &[u8] = b"\0applied";
const KEY_MEMBERSHIP: &[u8] = b"\0membership";
/// Present while an apply's records are written in several batches (see the module doc).
pub(super) const KEY_UNFINISHED: &[u8] = b"\0unfinished";
/// Records per sled batch when many are written at once (a snapshot install, a big apply).
const RECORD_BATCH: usize = 10_000;

/// The in-memory state, shared with the services that read it.
pub type SharedState = Arc<RwLock<State>>;

pub struct StateMachine {
    flusher: Flusher,
    tree: sled::Tree,
    state: SharedState,
    applied: Option<LogId>,
    membership: StoredMembership,
    files: Arc<SnapshotFiles>,
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
        let mut unfinished = None;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(read_err)?;
            match k.as_ref() {
                KEY_APPLIED => applied = serde_json::from_slice(&v).map_err(read_err)?,
                KEY_MEMBERSHIP => membership = serde_json::from_slice(&v).map_err(read_err)?,
                KEY_UNFINISHED => unfinished = Some(v),
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
        let files = SnapshotFiles::open(snapshot_dir)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let current = files.current();
        let rebuild = if let Some(marker) = unfinished {
            // A crash cut an apply written in several batches: the records are a mix of
            // before and after it. Start again from the snapshot; the log after it is kept.
            tracing::warn!(
                apply = %String::from_utf8_lossy(&marker),
                snapshot = ?current.as_ref().and_then(|(m, _)| m.last_log_id).map(|l| l.index),
                "an apply that a crash interrupted left its records half written: rebuilding \
                 them from the snapshot, the log after it is applied again"
            );
            Some(match current {
                Some((meta, path)) => (meta, Some(path)),
                None => (SnapshotMeta::default(), None),
            })
        } else if let Some(c) = current.filter(|(m, _)| m.last_log_id > applied) {
            // A crash came after a received snapshot was committed and before its records
            // were: install it again (see the module doc).
            tracing::warn!(
                snapshot = ?c.0.last_log_id.map(|l| l.index),
                applied = ?applied.map(|l| l.index),
                "finishing a snapshot install that a crash interrupted"
            );
            Some((c.0, Some(c.1)))
        } else {
            None
        };
        if let Some((meta, path)) = rebuild {
            state = match path {
                Some(path) => read_state(&path)
                    .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?,
                None => State::default(),
            };
            replace_records(&tree, &state, &meta)?;
            durable.sync().map_err(write_err)?;
            applied = meta.last_log_id;
            membership = meta.last_membership.clone();
        }
        Ok(Self {
            flusher,
            tree,
            state: Arc::new(RwLock::new(state)),
            applied,
            membership,
            files: Arc::new(files),
        })
    }

    pub fn shared(&self) -> SharedState {
        self.state.clone()
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.flusher.sync().await.map_err(write_err)
    }

    /// Write the records an apply touched in bounded batches, after a synced marker (the
    /// caller's last batch, with the applied id, removes it; see the module doc).
    async fn write_in_batches(&self, touched: &[RecordKey]) -> Result<(), StorageError> {
        let marker = serde_json::to_vec(&self.applied).map_err(write_err)?;
        self.tree
            .insert(KEY_UNFINISHED, marker)
            .map_err(write_err)?;
        // On disk before any record it warns about can be.
        self.sync().await?;
        blocking(|| {
            let mut w = RecordWriter::new(&self.tree);
            for keys in touched.chunks(RECORD_BATCH) {
                // Nothing else changes the state meanwhile: applying is the only writer.
                let state = self.state.read().unwrap_or_else(|p| p.into_inner());
                for k in keys {
                    w.put(k.encode(), state.record(k))?;
                }
            }
            w.finish()
        })
    }
}

/// Writes many records to a tree in sled batches of `RECORD_BATCH`, each flushed: one sled
/// batch of a million records took a node past 11 GiB, and sled keeps what it has not flushed
/// in memory (renaming 300,000 entries, debug build: a peak of 2,057 MiB with unflushed
/// batches, 1,545 MiB with flushed ones). Not atomic as a whole: callers bracket it (a marker,
/// or the applied id written last).
struct RecordWriter<'a> {
    tree: &'a sled::Tree,
    batch: sled::Batch,
    ops: usize,
}

impl<'a> RecordWriter<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            batch: sled::Batch::default(),
            ops: 0,
        }
    }

    /// Set `key` to `value`, or remove it when `value` is None.
    fn put(
        &mut self,
        key: impl Into<sled::IVec>,
        value: Option<Vec<u8>>,
    ) -> Result<(), StorageError> {
        match value {
            Some(v) => self.batch.insert(key, v),
            None => self.batch.remove(key),
        }
        self.ops += 1;
        if self.ops >= RECORD_BATCH {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), StorageError> {
        self.tree
            .apply_batch(std::mem::take(&mut self.batch))
            .map_err(write_err)?;
        self.tree.flush().map_err(write_err)?;
        self.ops = 0;
        Ok(())
    }

    /// Write what is left.
    fn finish(mut self) -> Result<(), StorageError> {
        self.write_out()
    }
}

/// Run blocking work from an async function, handing this worker's other tasks (Raft's
/// heartbeats among them) to another thread first when the runtime has one.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Read a snapshot's state from its data file, streamed (blocking).
fn read_state(path: &Path) -> std::io::Result<State> {
    let r = BufReader::with_capacity(1 << 20, File::open(path)?);
    serde_json::from_reader(r).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("snapshot {} is not a valid state: {e}", path.display()),
        )
    })
}

/// Replace every record of the `sm` tree by those of `state`, with `meta`'s applied id and
/// membership, in one atomic sled batch (blocking; not synced). One batch holds every record
/// of the new state for now: the namespace moves to sled (issue 20 item 1) before that matters
/// more than the state itself.
fn replace_records(
    tree: &sled::Tree,
    state: &State,
    meta: &SnapshotMeta,
) -> Result<(), StorageError> {
    // In bounded batches (`RecordWriter`). The applied id goes last, so a crash in between
    // leaves it behind the committed snapshot and `open` installs that again (over whatever
    // mix of records it finds).
    let mut w = RecordWriter::new(tree);
    for k in tree.iter().keys() {
        let k = k.map_err(read_err)?;
        if !k.starts_with(b"\0") {
            w.put(k, None)?;
        }
    }
    for (k, v) in state.all_records() {
        w.put(k.encode(), Some(v))?;
    }
    w.finish()?;
    let mut batch = sled::Batch::default();
    batch.insert(
        KEY_MEMBERSHIP,
        serde_json::to_vec(&meta.last_membership).map_err(write_err)?,
    );
    batch.insert(
        KEY_APPLIED,
        serde_json::to_vec(&meta.last_log_id).map_err(write_err)?,
    );
    batch.remove(KEY_UNFINISHED);
    tree.apply_batch(batch).map_err(write_err)
}

pub struct SnapshotBuilder {
    flusher: Flusher,
    files: Arc<SnapshotFiles>,
    /// The state at `applied`, written to this file (not yet synced), or why not.
    data: Option<std::io::Result<(PathBuf, File)>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    /// How long serializing the state took (applying waited for it).
    serialize_ms: u64,
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        // Written but never built (openraft gave up on it): nobody will name this file.
        if let Some(Ok((path, _))) = &self.data {
            snapshot_files::remove_quietly(path);
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let (path, file) = self
            .data
            .take()
            .unwrap_or_else(|| Err(std::io::Error::other("snapshot already built")))
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        // The applied state up to this snapshot is on disk before its log can be purged (and
        // so a committed snapshot is never ahead of the applied id in sled; `open` relies on
        // that).
        if let Err(e) = self.flusher.sync().await {
            snapshot_files::remove_quietly(&path);
            return Err(write_err(e));
        }
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
        // fsync of ~100 MB at a million entries: off the async workers.
        let files = self.files.clone();
        let m2 = meta.clone();
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64, bool)> {
            let synced = (|| -> std::io::Result<(File, u64)> {
                file.sync_all()?;
                let bytes = file.metadata()?.len();
                // Opened before `commit`, so it stays readable even if a newer snapshot
                // (installed meanwhile) makes `commit` drop it.
                Ok((File::open(&path)?, bytes))
            })();
            let (reader, bytes) = synced.inspect_err(|_| snapshot_files::remove_quietly(&path))?;
            // Not removed here if `commit` fails: it removes the file itself unless the
            // failure came after a meta naming it may have reached the disk.
            let committed = files.commit(&m2, &path, false)?;
            Ok((reader, bytes, committed))
        })
        .await
        .map_err(write_err)?
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let (reader, bytes, committed) = done;
        tracing::info!(
            index = ?meta.last_log_id.map(|l| l.index),
            bytes,
            serialize_ms = self.serialize_ms,
            ms = started.elapsed().as_millis() as u64,
            committed,
            "snapshot built"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(reader)),
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
        let mut touched = Vec::new();
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
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
        }
        touched.sort();
        touched.dedup();
        if touched.len() > RECORD_BATCH {
            self.write_in_batches(&touched).await?;
            batch.remove(KEY_UNFINISHED);
        } else {
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            for k in &touched {
                match state.record(k) {
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
        // is serialized here, straight from the shared state into a file (no copy of a
        // namespace that may take a gigabyte, no buffer of its JSON). That takes a while: hand
        // this worker's other tasks (Raft's heartbeats among them) to another thread first, so
        // they are not stuck behind it. The fsync and the commit come in `build_snapshot`.
        let started = std::time::Instant::now();
        let write = || -> std::io::Result<(PathBuf, File)> {
            let (path, file) = self.files.new_file()?;
            let r = (|| {
                let mut w = BufWriter::with_capacity(1 << 20, file);
                {
                    let st = self.state.read().unwrap_or_else(|p| p.into_inner());
                    serde_json::to_writer(&mut w, &*st)?;
                }
                w.into_inner().map_err(|e| e.into_error())
            })();
            match r {
                Ok(f) => Ok((path, f)),
                Err(e) => {
                    snapshot_files::remove_quietly(&path);
                    Err(e)
                }
            }
        };
        let data = blocking(write);
        let serialize_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(ms = serialize_ms, "snapshot serialized");
        SnapshotBuilder {
            flusher: self.flusher.clone(),
            files: self.files.clone(),
            data: Some(data),
            applied: self.applied,
            membership: self.membership.clone(),
            serialize_ms,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let files = self.files.clone();
        let f = tokio::task::spawn_blocking(move || files.begin_receiving())
            .await
            .map_err(write_err)?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        // Waits for openraft's last write to the file to finish.
        let received = snapshot.into_std().await;
        let files = self.files.clone();
        let tree = self.tree.clone();
        let m2 = meta.clone();
        let installed =
            tokio::task::spawn_blocking(move || -> Result<(State, u64, u64), StorageError> {
                let sig = Some(m2.signature());
                let io_err = |e: std::io::Error| -> StorageError {
                    StorageIOError::read_snapshot(sig.clone(), &e).into()
                };
                // A file from `begin_receiving_snapshot` is installed as it is; any other (the
                // storage suite hands over another store's snapshot) is copied into a new one.
                let path = match files.take_received(&received).map_err(io_err)? {
                    Some(p) => p,
                    None => {
                        let (p, mut f) = files.new_file().map_err(io_err)?;
                        let mut src = received;
                        let copied = src
                            .seek(SeekFrom::Start(0))
                            .and_then(|_| std::io::copy(&mut src, &mut f));
                        if let Err(e) = copied {
                            snapshot_files::remove_quietly(&p);
                            return Err(io_err(e));
                        }
                        p
                    }
                };
                // Synced and parsed before anything changes: a torn or bad snapshot changes
                // nothing here (its file is removed).
                let parsing = std::time::Instant::now();
                let checked = File::open(&path)
                    .and_then(|f| f.sync_all())
                    .and_then(|_| read_state(&path));
                let parse_ms = parsing.elapsed().as_millis() as u64;
                let state = match checked {
                    Ok(s) => s,
                    Err(e) => {
                        snapshot_files::remove_quietly(&path);
                        return Err(io_err(e));
                    }
                };
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                // The snapshot is committed first, then the records: a crash between the two
                // leaves a committed snapshot ahead of the applied id, which `open` finishes.
                files
                    .commit(&m2, &path, true)
                    .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
                replace_records(&tree, &state, &m2)?;
                Ok((state, bytes, parse_ms))
            })
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let (new_state, bytes, parse_ms) = installed?;
        self.sync().await?;

        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let old = std::mem::replace(
            &mut *self.state.write().unwrap_or_else(|p| p.into_inner()),
            new_state,
        );
        // Freeing the old state can take a while; not under the lock.
        drop(old);
        tracing::info!(
            index = ?meta.last_log_id.map(|l| l.index),
            bytes,
            parse_ms,
            ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = self.files.clone();
        let opened = tokio::task::spawn_blocking(move || files.open_current())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(opened.map(|(meta, f)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}
