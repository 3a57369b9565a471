//! Pieces every dfs process shares: path rules, secrets and tokens, crash-safe files.
pub mod allocator;
pub mod auth_file;
pub mod durable;
pub mod http;
pub mod keys;
pub mod local_cluster;
pub mod path;
pub mod pki;
pub mod promtext;
pub mod stall;
pub mod tls;
pub mod token;
pub mod units;

/// gRPC metadata keys carrying a caller's identity.
pub mod headers {
    pub const USER: &str = "x-dfs-user";
    pub const KEY: &str = "x-dfs-key";
    pub const NODE_AUTH: &str = "x-dfs-node-auth";
    /// Set on a reply that a follower forwarded to the leader: the leader's address.
    pub const LEADER_HINT: &str = "x-dfs-leader";
}

/// Default chunk size (8 MiB) and replication factor.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_REPLICATION: u32 = 2;
/// Most chunks in one file: its commit (a chunk id, replicas, token and receipts per chunk)
/// must fit one 64 MiB gRPC message and one Raft entry. 1.1 TiB with 8 MiB chunks.
pub const MAX_FILE_CHUNKS: usize = 140_000;
/// Largest chunk any node accepts.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Bytes per gRPC data message on the chunk path.
pub const STREAM_PIECE: usize = 1024 * 1024;
