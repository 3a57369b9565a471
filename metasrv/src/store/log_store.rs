//! The Raft log and vote in sled.
//!
//! Keys in the `log` tree are big-endian indexes, so sled's order is log order. The `raft` tree
//! holds the vote, the committed log id and the last purged log id.
//! To ensure correctness (openraft `RaftLogStorage`): the vote is durable before `save_vote`
//! returns; appended entries are durable before the flush callback fires; `last_purged` is
//! durable before the entries it covers are deleted. The deletion itself runs on a blocking
//! thread after `purge` returns (openraft awaits `purge` on its core task, and deleting
//! thousands of large entries there stalled heartbeats into elections); readers never see
//! entries at or below the purge point, deleted yet or not.
//!
//! Replication reads the log through `limited_get_log_entries`, which stops at
//! `REPLICATION_BATCH_BYTES` of stored entries (always at least one): openraft gives an
//! AppendEntries one heartbeat interval to finish, and a batch of large commits (import slices)
//! that cannot be sent, parsed and synced by the follower in that time is retried forever, so a
//! follower never catches up and stops hearing heartbeats.
use super::{Durable, Flusher, Waiter, TREE_LOG, TREE_RAFT};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Stored bytes of log entries one AppendEntries carries at most (one entry always goes, however
/// large). At the 40 ms default heartbeat this leaves a loaded debug build time to encode, send,
/// parse and sync a batch.
pub const REPLICATION_BATCH_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct LogStore {
    flusher: Flusher,
    log: sled::Tree,
    raft: sled::Tree,
    /// First index not purged (0: nothing purged); shared by every clone.
    first_kept: Arc<AtomicU64>,
}

fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

impl LogStore {
    pub fn new(durable: Arc<Durable>, flusher: Flusher) -> Result<Self, sled::Error> {
        let log = durable.db.open_tree(TREE_LOG)?;
        let raft = durable.db.open_tree(TREE_RAFT)?;
        let purged: Option<LogId> = raft
            .get(KEY_LAST_PURGED)?
            .and_then(|v| serde_json::from_slice(&v).ok());
        let first_kept = Arc::new(AtomicU64::new(purged.map_or(0, |l| l.index + 1)));
        Ok(Self {
            flusher,
            log,
            raft,
            first_kept,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let raw = self.raft.get(key).map_err(|e| StorageIOError::read(&e))?;
        raw.map(|v| serde_json::from_slice(&v).map_err(|e| StorageIOError::read(&e).into()))
            .transpose()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(v).map_err(|e| StorageIOError::write(&e))?;
        self.raft
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.flusher
            .sync()
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    /// Number of entries and bytes currently in the log (for metrics).
    pub fn log_size(&self) -> (u64, u64) {
        let bytes = self
            .log
            .iter()
            .values()
            .filter_map(Result::ok)
            .map(|v| v.len() as u64)
            .sum();
        (self.log.len() as u64, bytes)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        }
        .max(self.first_kept.load(Ordering::Acquire));
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.read_entries(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = start.max(self.first_kept.load(Ordering::Acquire));
        if start >= end {
            return Ok(Vec::new());
        }
        self.read_entries(
            start,
            Bound::Excluded(index_key(end)),
            REPLICATION_BATCH_BYTES,
        )
    }
}

impl LogStore {
    /// Entries from `start` up to `end`, stopping before the entry that would take their stored
    /// size past `budget` bytes (the first entry is always returned).
    fn read_entries(
        &self,
        start: u64,
        end: Bound<[u8; 8]>,
        budget: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for kv in self.log.range((Bound::Included(index_key(start)), end)) {
            let (_, v) = kv.map_err(|e| StorageIOError::read_logs(&e))?;
            bytes = bytes.saturating_add(v.len());
            if bytes > budget && !out.is_empty() {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, v)) => {
                let e: Entry =
                    serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        // Entries still being deleted below the purge point do not count.
        let last = last.max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote)?;
        self.flusher
            .sync()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: a lost committed id only means re-applying from the snapshot.
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let v = serde_json::to_vec(&e)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, &err))?;
            encoded.push((index_key(e.log_id.index), v));
        }
        // One entry is one insert, atomic by itself. A sled batch would cost two more
        // device writes each time (it seals the IO buffer and writes its manifest alone),
        // and a single entry is the common case: the leader appends one per client write.
        if let [(k, v)] = encoded.as_slice() {
            self.log
                .insert(k, v.as_slice())
                .map_err(|e| StorageIOError::write_logs(&e))?;
        } else {
            let mut batch = sled::Batch::default();
            for (k, v) in encoded {
                batch.insert(&k, v);
            }
            self.log
                .apply_batch(batch)
                .map_err(|e| StorageIOError::write_logs(&e))?;
        }
        // Durable later, by the flusher's next sync; openraft waits for the callback.
        self.flusher
            .enqueue(Waiter::Log(callback))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for k in self.log.range(index_key(log_id.index)..).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is durable first: a crash later leaves extra entries, never a gap.
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        self.sync().await?;
        self.first_kept
            .fetch_max(log_id.index + 1, Ordering::AcqRel);
        // Delete in the background (see the module doc), one key at a time: a sled batch
        // holds a lock that every other sled write waits for, and one batch of thousands of
        // large entries blocked log appends long enough for an election. Entries that survive
        // a crash or an error lie below the purge point: never read, removed by the next purge.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let keys: Vec<sled::IVec> = log
                .range(..=index_key(log_id.index))
                .keys()
                .filter_map(Result::ok)
                .collect();
            for k in keys {
                if let Err(e) = log.remove(k) {
                    tracing::warn!(error = %e, "cannot delete purged log entries");
                    return;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, CommandV1, Request};
    use openraft::{CommittedLeaderId, EntryPayload};

    /// An entry whose stored form is a little over `bytes` long.
    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                cmd: Command::V1(CommandV1::Init {
                    cluster_id: "c".repeat(bytes),
                    admin_key_hash: "h".into(),
                    now_ms: 1,
                }),
            }),
        }
    }

    #[tokio::test]
    async fn replication_reads_stop_at_the_byte_budget_but_always_send_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm, _) =
            super::super::open(&dir.path().join("sled"), &dir.path().join("snapshots")).unwrap();
        // Ten entries of a third of the budget, then one of twice the budget.
        for i in 1..=10 {
            let v = serde_json::to_vec(&entry(i, REPLICATION_BATCH_BYTES / 3)).unwrap();
            log.log.insert(index_key(i), v).unwrap();
        }
        let big = serde_json::to_vec(&entry(11, 2 * REPLICATION_BATCH_BYTES)).unwrap();
        log.log.insert(index_key(11), big).unwrap();

        let got = log.limited_get_log_entries(1, 12).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![1, 2], "two thirds fit, the third third does not");
        let got = log.limited_get_log_entries(10, 12).await.unwrap();
        assert_eq!(got.len(), 1, "the big entry waits for the next batch");
        let got = log.limited_get_log_entries(11, 12).await.unwrap();
        assert_eq!(got.len(), 1, "an entry over the budget still goes alone");
        assert!(log
            .limited_get_log_entries(12, 12)
            .await
            .unwrap()
            .is_empty());
        // Reads that are not for replication are not limited.
        assert_eq!(log.try_get_log_entries(1..12).await.unwrap().len(), 11);
    }
}
