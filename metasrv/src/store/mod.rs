//! Durable storage for one metasrv node: one sled database holding the Raft log, the vote, and
//! the state machine, plus the latest snapshot as a file.
//!
//! Durability (see shared/design.md): sled 0.34's `flush()` writes with `sync_file_range`, which
//! neither flushes the disk cache nor file metadata. `Durable::sync` therefore follows each
//! `flush()` with an `fdatasync` of sled's data file. It runs once per batch (an `append` of many
//! entries, an `apply` of many entries), never per entry, and always in `spawn_blocking`.
mod log_store;
mod state_machine;

#[cfg(test)]
mod tests;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Tree names inside the one sled database.
const TREE_LOG: &str = "log";
const TREE_RAFT: &str = "raft";
const TREE_SM: &str = "sm";

/// The process-wide sled database and a descriptor of its data file for fdatasync.
pub struct Durable {
    pub db: sled::Db,
    data_file: File,
}

impl Durable {
    pub fn open(dir: &Path) -> io::Result<Arc<Durable>> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            // We flush explicitly before every acknowledgment; the background flush only bounds
            // how much unflushed data can pile up between them.
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(io::Error::other)?;
        let data_file = File::open(dir.join("db"))?;
        Ok(Arc::new(Durable { db, data_file }))
    }

    /// Make every earlier write durable: sled flush, then fdatasync of its data file.
    /// Blocking: call from `spawn_blocking`.
    pub fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        self.data_file.sync_data()
    }

    pub async fn sync_async(self: &Arc<Self>) -> io::Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sync()).await.map_err(io::Error::other)?
    }
}

/// Open the log store and the state machine over one database.
pub fn open(dir: &Path, snapshot_dir: &Path) -> Result<(LogStore, StateMachine), crate::types::StorageError> {
    let durable = Durable::open(dir).map_err(|e| openraft::StorageIOError::read(&e))?;
    let log = LogStore::new(durable.clone()).map_err(|e| openraft::StorageIOError::read(&e))?;
    let sm = StateMachine::open(durable, snapshot_dir)?;
    Ok((log, sm))
}
