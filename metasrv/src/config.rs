//! metasrv's command line (every flag has a `DFS_META_*` environment fallback) and the checks
//! made on it before anything starts.
use crate::types::NodeId;
use anyhow::{bail, Context};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The bugs `--plant-bug` can plant (see `chaos/README.md`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    SkipReadBarrier,
    SkipLogFsync,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "metasrv",
    version,
    about = "A dfs metadata node: one member of the Raft group that keeps the namespace, users and chunk map.",
    after_help = "Example (three nodes on one machine):\n  \
        metasrv --id 1 --listen 127.0.0.1:7001 --metrics 127.0.0.1:9101 --data-dir /var/lib/dfs/meta-1 \\\n    \
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --cluster-secret-file /etc/dfs/secret \\\n    \
        --admin-auth-out /etc/dfs/admin.auth"
)]
pub struct Args {
    /// This node's id (a positive integer, unique in the cluster, never reused).
    #[arg(long, env = "DFS_META_ID")]
    pub id: NodeId,
    /// Address to serve gRPC on (clients, chunk servers and peers).
    #[arg(long, env = "DFS_META_LISTEN")]
    pub listen: String,
    /// Address peers and clients should use to reach this node (default: --listen).
    #[arg(long, env = "DFS_META_ADVERTISE")]
    pub advertise: Option<String>,
    /// Address this node's own connections (to peers and chunk servers) leave from (default:
    /// the system's choice). On a host with several addresses, peers and firewall rules then
    /// see the node's own; the chaos run's partitions need it.
    #[arg(long, env = "DFS_META_SOURCE_IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Directory for the Raft log, state machine, snapshots and saved-files.json.
    #[arg(long, env = "DFS_META_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Initial members as id=host:port, comma separated (this node included).
    #[arg(long, env = "DFS_META_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Address to serve Prometheus metrics on (/metrics, /healthz, /leader).
    #[arg(long, env = "DFS_META_METRICS")]
    pub metrics: String,
    /// File holding the cluster secret (the same on every node; at least 16 bytes).
    #[arg(long, env = "DFS_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: PathBuf,
    /// This node's certificate (PEM) from the cluster CA, naming `meta <id>`
    /// (`dfsctl admin cert issue --role meta --id N`). Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "DFS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, env = "DFS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA certificate (PEM) every peer's certificate must chain to.
    #[arg(long, env = "DFS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Plain TCP, no certificates: for a benchmark comparison or one trusted host only. Keys
    /// and data then cross the network in clear, and peers prove themselves with the cluster
    /// secret, which anyone who sees the traffic can replay.
    #[arg(long, env = "DFS_INSECURE")]
    pub insecure: bool,
    /// Where to write the admin user's auth file when this node creates the cluster.
    #[arg(long, env = "DFS_META_ADMIN_AUTH_OUT")]
    pub admin_auth_out: Option<PathBuf>,
    /// Let anyone create a (non-admin) user with `dfsctl register NAME`.
    #[arg(long, env = "DFS_META_ALLOW_SELF_REGISTER")]
    pub allow_self_register: bool,
    /// This node joins an existing cluster (added with `dfsctl cluster add-member`); never initialize.
    #[arg(long, env = "DFS_META_JOIN")]
    pub join: bool,
    /// Take a snapshot after this many log entries.
    #[arg(long, env = "DFS_META_SNAPSHOT_EVERY", default_value_t = 20_000)]
    pub snapshot_every: u64,
    /// Log entries kept after a snapshot, for followers that lag a little.
    #[arg(long, env = "DFS_META_KEEP_LOGS", default_value_t = 5_000)]
    pub keep_logs: u64,
    /// How long the leader waits for one piece of a snapshot to be taken by a follower,
    /// including the last, which the follower answers only once the whole snapshot is parsed
    /// and stored (longer for a bigger namespace), e.g. 60s, 10m. A piece that takes longer makes
    /// the leader send the snapshot again from the start.
    #[arg(long, env = "DFS_META_INSTALL_SNAPSHOT_TIMEOUT", default_value = "60s", value_parser = dfs_common::units::parse_duration)]
    pub install_snapshot_timeout: Duration,
    /// Seconds a chunk read or write token stays valid (readers that outlive it ask again).
    #[arg(long, env = "DFS_META_TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub token_ttl_secs: u64,
    /// Purge the log only when at least this many entries can go (fewer, larger purges).
    #[arg(long, env = "DFS_META_PURGE_BATCH", default_value_t = 256)]
    pub purge_batch: u64,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, env = "DFS_META_HEARTBEAT_MS", default_value_t = 40)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is twice this). A follower starts
    /// an election after the leader's lease (the maximum) plus a random timeout in [min, max].
    #[arg(long, env = "DFS_META_ELECTION_TIMEOUT_MS", default_value_t = 100)]
    pub election_timeout_ms: u64,
    /// How long after a leadership check the leader answers reads without another, in
    /// milliseconds (default: the minimum election timeout; 0: every read batch checks). Must
    /// stay below the maximum election timeout, the time followers refuse other candidates.
    #[arg(long, env = "DFS_META_READ_LEASE_MS")]
    pub read_lease_ms: Option<u64>,
    /// A bug to plant, on purpose, to prove that the chaos checkers catch it; never in a real
    /// cluster. `skip-read-barrier`: a node that believes it leads answers linearizable reads
    /// from its own state without confirming its leadership with a quorum first.
    /// `skip-log-fsync`: the log and state are flushed to the page cache but not fdatasynced
    /// before Raft entries are acknowledged.
    #[arg(long, hide = true, value_enum)]
    pub plant_bug: Option<PlantedBug>,
    /// Async worker threads. Few threads mean fewer context switches, which cost a lot in VMs.
    #[arg(long, env = "DFS_META_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Chunk size for new files, in bytes.
    #[arg(long, env = "DFS_CHUNK_SIZE", default_value_t = dfs_common::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u64,
    /// Replication factor for files that do not ask for one.
    #[arg(long, env = "DFS_REPLICATION", default_value_t = dfs_common::DEFAULT_REPLICATION)]
    pub replication: u32,
    /// How long deleted entries stay in the trash (`/.trash/<user>/...`) before the leader
    /// removes them for good, e.g. 24h, 7d, 90m (0: deletes skip the trash, and what is in it
    /// is purged).
    #[arg(long, env = "DFS_META_TRASH_RETENTION", default_value = "24h", value_parser = dfs_common::units::parse_duration)]
    pub trash_retention: Duration,
    /// A write lease not renewed for this long expires, and the chunks of its unfinished
    /// write become ordinary orphans (e.g. 5m, 90s).
    #[arg(long, env = "DFS_META_LEASE_TIMEOUT", default_value = "5m", value_parser = dfs_common::units::parse_duration)]
    pub lease_timeout: Duration,
    /// A commit accepts a chunk without a lease while its write token is at most this far past
    /// its lifetime (token lifetime + this must stay below the orphan grace).
    #[arg(long, env = "DFS_META_COMMIT_GRACE", default_value = "30m", value_parser = dfs_common::units::parse_duration)]
    pub commit_grace: Duration,
    #[command(flatten)]
    pub healing: crate::healer::HealArgs,
}

pub struct Config {
    pub id: NodeId,
    pub listen: String,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub peers: BTreeMap<NodeId, String>,
    pub metrics: String,
    pub secret_file: PathBuf,
    /// TLS files; `None` only with `--insecure`.
    pub tls: Option<dfs_common::tls::TlsFiles>,
    pub admin_auth_out: Option<PathBuf>,
    pub allow_self_register: bool,
    pub join: bool,
    pub snapshot_every: u64,
    pub keep_logs: u64,
    pub install_snapshot_timeout: Duration,
    pub purge_batch: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub read_lease_ms: u64,
    pub plant_bug: Option<PlantedBug>,
    pub chunk_size: u64,
    pub replication: u32,
    pub token_ttl_secs: u64,
    pub trash_retention: Duration,
    pub lease_timeout: Duration,
    pub commit_grace: Duration,
    pub healing: crate::healer::HealArgs,
}

impl Config {
    pub fn from_args(a: Args) -> anyhow::Result<Config> {
        if a.id == 0 {
            bail!("--id must be a positive integer");
        }
        let mut peers = BTreeMap::new();
        for p in &a.peers {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("--peers entry {p:?} is not id=host:port"))?;
            let id: NodeId = id
                .trim()
                .parse()
                .with_context(|| format!("--peers entry {p:?} has a bad id"))?;
            peers.insert(id, addr.trim().to_string());
        }
        let advertise = a.advertise.clone().unwrap_or_else(|| a.listen.clone());
        if !a.join {
            match peers.get(&a.id) {
                None if peers.is_empty() => {
                    peers.insert(a.id, advertise.clone());
                }
                None => bail!("--peers must include this node ({}={advertise})", a.id),
                Some(_) => {}
            }
        }
        if a.chunk_size == 0 || a.chunk_size > dfs_common::MAX_CHUNK_SIZE {
            bail!("--chunk-size must be between 1 byte and 64 MiB");
        }
        if a.heartbeat_ms == 0 || a.election_timeout_ms <= a.heartbeat_ms * 2 {
            bail!("--election-timeout-ms must be more than twice --heartbeat-ms");
        }
        let read_lease_ms = a.read_lease_ms.unwrap_or(a.election_timeout_ms);
        if read_lease_ms >= a.election_timeout_ms * 2 {
            bail!(
                "--read-lease-ms must be below the maximum election timeout ({} ms)",
                a.election_timeout_ms * 2
            );
        }
        // A chunk is collected only after the orphan grace: a commit must never name one that
        // old without a lease.
        let window = Duration::from_secs(a.token_ttl_secs) + a.commit_grace;
        if window.as_millis() >= u128::from(a.healing.gc_grace_ms) {
            bail!(
                "--token-ttl-secs plus --commit-grace ({} s) must stay below --gc-grace-ms ({} ms)",
                window.as_secs(),
                a.healing.gc_grace_ms
            );
        }
        Ok(Config {
            id: a.id,
            listen: a.listen,
            advertise,
            data_dir: a.data_dir,
            peers,
            metrics: a.metrics,
            secret_file: a.cluster_secret_file,
            tls: dfs_common::tls::TlsFiles::from_flags(
                a.insecure,
                a.tls_cert,
                a.tls_key,
                a.tls_ca,
                dfs_common::pki::Role::Meta,
            )?,
            admin_auth_out: a.admin_auth_out,
            allow_self_register: a.allow_self_register,
            join: a.join,
            snapshot_every: a.snapshot_every.max(1),
            keep_logs: a.keep_logs,
            install_snapshot_timeout: a.install_snapshot_timeout.max(Duration::from_secs(1)),
            purge_batch: a.purge_batch.max(1),
            heartbeat_ms: a.heartbeat_ms,
            election_timeout_ms: a.election_timeout_ms,
            read_lease_ms,
            plant_bug: a.plant_bug,
            chunk_size: a.chunk_size,
            replication: a.replication.max(1),
            token_ttl_secs: a.token_ttl_secs,
            trash_retention: a.trash_retention,
            lease_timeout: a.lease_timeout.max(Duration::from_secs(1)),
            commit_grace: a.commit_grace,
            healing: a.healing,
        })
    }

    /// Entries between snapshots on this node: `--snapshot-every`, plus a seventh of it per
    /// node id, so members do not all serialize a large namespace at the same moment (a
    /// quorum must stay responsive while one of them does).
    pub fn snapshot_interval(&self) -> u64 {
        let stagger = self.snapshot_every / 7 * ((self.id.saturating_sub(1)) % 7);
        self.snapshot_every + stagger
    }

    pub fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        let c = openraft::Config {
            cluster_name: "dfs".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            install_snapshot_timeout: self.install_snapshot_timeout.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_interval()),
            max_in_snapshot_log_to_keep: self.keep_logs,
            purge_batch_size: self.purge_batch,
            max_payload_entries: 32,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        };
        Ok(c.validate()?)
    }

    pub fn service_config(&self) -> crate::service::ServiceConfig {
        crate::service::ServiceConfig {
            allow_self_register: self.allow_self_register,
            chunk_size: self.chunk_size,
            default_replication: self.replication,
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            trash_retention: self.trash_retention,
            lease_timeout: self.lease_timeout,
            commit_grace: self.commit_grace,
        }
    }
}

/// What a data dir remembers about who it belongs to.
#[derive(Serialize, Deserialize)]
struct Identity {
    node_id: NodeId,
    secret_fingerprint: String,
}

/// Refuse a data dir that is not writable, belongs to another node id, or was created with
/// another cluster secret (that is, belongs to another cluster).
pub fn check_data_dir(
    cfg: &Config,
    secret: &dfs_common::token::ClusterSecret,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let probe = cfg.data_dir.join(".write-probe");
    std::fs::write(&probe, b"x")
        .with_context(|| format!("data dir {} is not writable", cfg.data_dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let path = cfg.data_dir.join("identity.json");
    match std::fs::read(&path) {
        Ok(raw) => {
            let id: Identity = serde_json::from_slice(&raw)
                .with_context(|| format!("{} is not a metasrv identity file", path.display()))?;
            if id.node_id != cfg.id {
                bail!(
                    "data dir {} belongs to node {}, not node {}",
                    cfg.data_dir.display(),
                    id.node_id,
                    cfg.id
                );
            }
            if id.secret_fingerprint != secret.fingerprint() {
                bail!(
                    "data dir {} belongs to another cluster: it was created with a different cluster secret than {}",
                    cfg.data_dir.display(),
                    cfg.secret_file.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                node_id: cfg.id,
                secret_fingerprint: secret.fingerprint(),
            };
            dfs_common::durable::write_atomic(&path, &serde_json::to_vec_pretty(&id)?)
                .with_context(|| format!("cannot write {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
