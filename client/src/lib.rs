//! dfs-client: the library every dfs client uses (dfsctl, the chaos driver, benchmarks, the
//! mount). It holds the metadata connection with leader discovery and failover (`meta`), the
//! put/get streams and the chunk-server channel pool (`transfer`), typed errors (`error`) and
//! the options a client is built from.
//!
//! What must stay true: nothing here prints or asks; progress is reported through a plain
//! `Fn(u64)` callback; every failure is an [`Error`] whose variant says what kind it is, with
//! the server's sentence kept.
pub mod error;
pub mod fs;
pub mod lease;
pub mod listing;
pub mod meta;
pub mod transfer;
pub mod trash;

pub use error::{Error, Result};
pub use fs::{Client, FsStats, ReadHandle};
pub use meta::{default_auth_file, lazy_channel, new_request_id, tls_from_env, Grpc, MetaConn};
pub use transfer::{
    get_stream, put_stream, store_chunk, ChunkPool, ChunkSource, FileSource, PutOptions,
    PutOutcome, ReaderSource,
};
pub use trash::{Removed, Restored};

use std::path::PathBuf;
use std::time::Duration;

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Metadata nodes, host:port; any member works (followers forward to the leader).
    pub meta: Vec<String>,
    /// Credentials file; `None` means the default one, used only when it exists.
    pub auth_file: Option<PathBuf>,
    /// Longest a whole metadata call may take, failover included.
    pub timeout: Duration,
    /// The cluster CA to check servers against; `None`: `DFS_TLS_CA`, else plain TCP.
    pub tls_ca: Option<PathBuf>,
}

impl ClientOptions {
    pub fn new(meta: Vec<String>) -> Self {
        Self {
            meta,
            auth_file: None,
            timeout: Duration::from_secs(30),
            tls_ca: None,
        }
    }

    /// Connect (lazily: no network traffic until the first call).
    pub fn connect(&self) -> Result<MetaConn> {
        let conn = MetaConn::connect(&self.meta, self.auth_file.as_deref(), self.timeout)?;
        match &self.tls_ca {
            Some(ca) => conn.with_tls(Some(dfs_common::tls::Tls::client_only(ca)?)),
            None => Ok(conn),
        }
    }
}

/// Progress callback: called with the number of bytes just moved (not a running total).
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// A progress callback that ignores progress.
pub fn no_progress(_: u64) {}
