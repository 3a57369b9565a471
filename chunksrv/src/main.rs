//! `chunksrv`: the dfs chunk server. Flags, startup checks, wiring, graceful shutdown.
//!
//! What must stay true:
//! - Every startup problem (secret file missing or short, data dir not writable, port taken,
//!   data dir of another cluster) ends the process with one clear sentence and exit code 1,
//!   before anything is served.
//! - "chunksrv ready" is logged once, after registration, with the address and node id.
//! - SIGTERM or SIGINT stops accepting, lets transfers drain (bounded), and exits 0.
mod direct;
mod meta_link;
mod metrics;
mod pack;
mod peers;
mod planted;
mod replicate;
mod scrub;
mod service;
mod shutdown;
mod store;

use anyhow::{anyhow, Context as _};
use clap::Parser;
use dfs_common::token::ClusterSecret;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long in-flight transfers may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// dfs chunk server: stores chunks on local disk (plus a backup copy), serves them to clients
/// holding tokens the metadata group issued for this server, and reports to the metadata group.
#[derive(Parser, Debug)]
#[command(
    name = "chunksrv",
    version,
    after_help = "Every flag can also be set through the environment variable shown.\n\n\
Example:\n  chunksrv --listen 127.0.0.1:7101 --data-dir /var/lib/dfs/chunk-1 \\\n    \
--meta 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 --metrics 127.0.0.1:9101 \\\n    \
--cluster-secret-file /etc/dfs/cluster.secret"
)]
struct Args {
    /// Address to serve the chunk gRPC service on (host:port).
    #[arg(long, env = "DFS_CHUNK_LISTEN", value_name = "ADDR")]
    listen: String,

    /// Address this server's own connections (to the metadata group and to other chunk
    /// servers) leave from [default: the system's choice]. On a host with several addresses,
    /// peers and firewall rules then see the server's own; the chaos run's partitions need it.
    #[arg(long, env = "DFS_CHUNK_SOURCE_IP", value_name = "IP")]
    source_ip: Option<std::net::IpAddr>,

    /// A bug to plant on purpose, to prove that the chaos checkers catch it; never in a real
    /// cluster. `skip-fsync`: chunk writes are acknowledged without their fdatasync.
    #[arg(long, hide = true, value_parser = ["skip-fsync"])]
    plant_bug: Option<String>,

    /// Directory for chunks and this server's identity (node.json); created if missing.
    #[arg(long, env = "DFS_CHUNK_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,

    /// Directory for the backup copy of every chunk [default: <DATA_DIR>/backups].
    #[arg(
        long,
        env = "DFS_CHUNK_BACKUP_DIR",
        value_name = "DIR",
        conflicts_with = "no_backups"
    )]
    backup_dir: Option<PathBuf>,

    /// Keep no backup copies (a corrupt chunk is then only healed from other replicas).
    #[arg(long, env = "DFS_CHUNK_NO_BACKUPS")]
    no_backups: bool,

    /// Chunks of at most this many bytes are appended to pack files instead of getting a
    /// file each (0: never). At most 1 MiB.
    #[arg(long, env = "DFS_CHUNK_PACK_MAX", value_name = "BYTES", default_value_t = store::DEFAULT_PACK_MAX,
          value_parser = clap::value_parser!(u64).range(0..=1024 * 1024))]
    pack_max: u64,

    /// Metadata nodes, comma separated (host:port; any member works, all get heartbeats).
    #[arg(
        long,
        env = "DFS_CHUNK_META",
        value_name = "ADDR,ADDR,...",
        value_delimiter = ',',
        required = true
    )]
    meta: Vec<String>,

    /// Address for the HTTP /metrics (Prometheus) and /healthz endpoints (host:port).
    #[arg(long, env = "DFS_CHUNK_METRICS", value_name = "ADDR")]
    metrics: String,

    /// File holding the cluster secret (at least 16 bytes): only with --insecure, where it
    /// proves this server to the metadata group. With TLS the certificate does that, and a
    /// chunk server holds no secret but its own token key (so one stolen disk is one server).
    #[arg(long, env = "DFS_CLUSTER_SECRET_FILE", value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,

    /// This server's certificate (PEM) from the cluster CA, naming `chunk <id>`
    /// (`dfsctl admin cert issue --role chunk --id N`): the server registers as chunk server N
    /// and may act only as N. Reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "DFS_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert.
    #[arg(long, env = "DFS_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,

    /// The cluster CA certificate (PEM) every peer's certificate must chain to.
    #[arg(long, env = "DFS_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// Plain TCP, no certificates: for a benchmark comparison or one trusted host only (keys,
    /// data and the replayable cluster-secret proof cross the network in clear).
    #[arg(long, env = "DFS_INSECURE")]
    insecure: bool,

    /// Bytes of chunk data to accept (suffixes K, M, G, T = powers of 1024; backups not
    /// counted) [default: size of the data dir's filesystem, halved when backups share it].
    #[arg(long, env = "DFS_CHUNK_CAPACITY", value_name = "BYTES", value_parser = parse_bytes)]
    capacity: Option<u64>,

    /// Address clients and the metadata group use to reach this server [default: the
    /// address bound by --listen].
    #[arg(long, env = "DFS_CHUNK_ADVERTISE", value_name = "ADDR")]
    advertise: Option<String>,

    /// Scrubber read rate in bytes per second (0 turns the scrubber off).
    #[arg(long, env = "DFS_CHUNK_SCRUB_RATE", value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    scrub_rate: u64,

    /// Pause between two scrub passes over every chunk, in seconds.
    #[arg(
        long,
        env = "DFS_CHUNK_SCRUB_EVERY_SECS",
        value_name = "SECS",
        default_value_t = 3600.0
    )]
    scrub_every_secs: f64,

    /// Give a copy to another chunk server up after this many seconds without progress (a
    /// frozen or hung target), so the repair that asked for it can pick another.
    #[arg(
        long,
        env = "DFS_CHUNK_STALL_TIMEOUT",
        value_name = "SECS",
        default_value_t = 5.0
    )]
    stall_timeout: f64,
    /// Milliseconds between heartbeats to the metadata nodes; the full chunk inventory goes
    /// every 30th (default 1000: every 30 s). Shorter is for tests.
    #[arg(long, env = "DFS_CHUNK_HEARTBEAT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=10_000))]
    heartbeat_ms: u64,
    /// Most chunk ids in one heartbeat: a larger inventory goes in pages of this many on
    /// consecutive heartbeats (50,000 ids, about 2 MB). Small values are for tests.
    #[arg(long, env = "DFS_CHUNK_INVENTORY_PAGE", default_value_t = meta_link::INVENTORY_PAGE, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    inventory_page: u32,
}

/// `1048576`, `512M`, `10G`, `1.5T` (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M, G or T)")),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let bad = || format!("{s:?} is not a size in bytes (e.g. 1073741824, 512M, 10G)");
    let value = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(mult).ok_or_else(bad)?
    } else {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let v = f * mult as f64;
        if !(v.is_finite() && v >= 0.0 && v < u64::MAX as f64) {
            return Err(bad());
        }
        v as u64
    };
    if value == 0 {
        return Err("capacity must be more than 0 bytes".into());
    }
    Ok(value)
}

fn main() -> ExitCode {
    // Not eprintln!: it panics when stderr cannot be written (a full log disk).
    use std::io::Write as _;
    // Pieces are 1 MiB; a few are in flight per transfer.
    dfs_common::allocator::keep_freed_buffers(4 << 20);
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // Not its default eprintln! of a failed log write: that panics when stderr cannot be
        // written (a full or failing log disk), in whichever thread logged.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "chunksrv: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "chunksrv: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes a message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// Bind `addr`, explaining a taken port.
async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!("cannot listen for {what} on {addr}: the port is already in use (is another server running?)")
        } else {
            anyhow!("cannot listen for {what} on {addr}: {e}")
        }
    })
}

/// Make sure `dir` exists and accepts a durable write.
fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::File::open(&probe)?.sync_all())
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("data dir {} is not writable", dir.display()))
}

/// Capacity when none is given: what the filesystems hold for one copy of every chunk.
fn default_capacity(data_dir: &Path, backup_dir: Option<&Path>) -> anyhow::Result<u64> {
    store::per_copy(data_dir, backup_dir, |f| f.size_bytes).with_context(|| {
        format!(
            "cannot measure the filesystem of {} or of its backup directory; give --capacity",
            data_dir.display()
        )
    })
}

/// The TLS this server runs with (`None` with `--insecure`): its certificate must name a
/// chunk server, and the one this data dir already is, if it registered before.
fn load_tls(
    args: &Args,
    registered: Option<u64>,
) -> anyhow::Result<Option<Arc<dfs_common::tls::Tls>>> {
    let Some(files) = dfs_common::tls::TlsFiles::from_flags(
        args.insecure,
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.tls_ca.clone(),
        dfs_common::pki::Role::Chunk,
    )?
    else {
        return Ok(None);
    };
    let tls = dfs_common::tls::Tls::load(files)?;
    let me = tls.identity();
    let id = me
        .as_ref()
        .filter(|i| i.role == dfs_common::pki::Role::Chunk)
        .and_then(|i| i.node_id());
    match (id, registered) {
        (None, _) => Err(anyhow!(
            "--tls-cert is for {}, not a chunk server: issue one with `dfsctl admin cert issue --role chunk --id N`",
            me.map_or_else(|| "no dfs identity".to_string(), |i| i.to_string())
        )),
        (Some(id), Some(reg)) if id != reg => Err(anyhow!(
            "this data dir is chunk server {reg}, but --tls-cert is for chunk server {id}: use chunk server {reg}'s certificate"
        )),
        _ => {
            tls.spawn_reloader();
            Ok(Some(tls))
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.plant_bug.as_deref() == Some("skip-fsync") {
        planted::skip_fsync();
    }
    if let Some(ip) = args.source_ip {
        // Before any channel is made (every one is made through `tls::channel`).
        let _ = dfs_common::tls::set_source_ip(ip);
    }
    let secret = match (&args.cluster_secret_file, args.insecure) {
        (Some(f), true) => Some(ClusterSecret::load(f)?),
        (None, true) => {
            return Err(anyhow!(
                "--insecure needs --cluster-secret-file: without certificates the secret proves this server to the metadata group"
            ))
        }
        (Some(f), false) => {
            tracing::warn!(file = %f.display(), "--cluster-secret-file is not used with TLS (the certificate proves who this server is); not read");
            None
        }
        (None, false) => None,
    };
    let data_dir = args.data_dir.clone();
    check_writable(&data_dir)?;
    let backup_dir = if args.no_backups {
        None
    } else {
        let dir = args
            .backup_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("backups"));
        check_writable(&dir).map_err(|e| {
            let cause = e.root_cause().to_string();
            anyhow!("backup dir {} is not writable: {cause}", dir.display())
        })?;
        let same = std::fs::canonicalize(&dir).ok() == std::fs::canonicalize(&data_dir).ok();
        if same {
            return Err(anyhow!(
                "the backup dir must be another directory than the data dir {}",
                data_dir.display()
            ));
        }
        Some(dir)
    };
    let identity = meta_link::NodeIdentity::load_or_create(&data_dir, secret.as_ref())?;
    let tls = load_tls(&args, identity.node_id)?;
    peers::set_tls(tls.clone());
    let uuid = identity.uuid.clone();
    let capacity = match args.capacity {
        Some(c) => c,
        None => default_capacity(&data_dir, backup_dir.as_deref())?,
    };

    let metrics = metrics::Metrics::new();
    metrics.set_dirs(&data_dir, backup_dir.as_deref());
    let store_config = store::StoreConfig {
        data_dir: data_dir.clone(),
        backup_dir: backup_dir.clone(),
        capacity,
        pack_max: args.pack_max,
    };
    let store_metrics = Arc::clone(&metrics);
    let store =
        tokio::task::spawn_blocking(move || store::Store::open(store_config, store_metrics))
            .await
            .context("the chunk store failed to open")??;

    let grpc_listener = bind(&args.listen, "the chunk service").await?;
    let metrics_listener = bind(&args.metrics, "metrics").await?;
    let local = grpc_listener
        .local_addr()
        .context("cannot read the bound address")?;
    let advertise = args.advertise.clone().unwrap_or_else(|| local.to_string());
    if advertise
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_unspecified())
    {
        tracing::warn!(advertise = %advertise, "advertised address is a wildcard that clients cannot reach; set --advertise");
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    let node_id = Arc::new(AtomicU64::new(0));
    let signal_node = Arc::clone(&node_id);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!(
            node_id = signal_node.load(Ordering::Relaxed),
            signal = %name,
            "stopping: no new transfers, draining the running ones"
        );
        let _ = shutdown_tx.send(true);
    });

    tokio::spawn(metrics::serve(
        metrics_listener,
        Arc::clone(&metrics),
        shutdown_rx.clone(),
    ));

    // Set by every registration (the metadata group hands this server its own token key).
    let token_key = Arc::new(service::TokenKey::default());
    let chunk_service = service::ChunkService::new(
        store.clone(),
        secret.clone(),
        Arc::clone(&token_key),
        Arc::clone(&metrics),
        Arc::clone(&node_id),
        Duration::from_secs_f64(args.stall_timeout.clamp(0.1, 3600.0)),
    );
    let span_node = Arc::clone(&node_id);
    let mut server_shutdown = shutdown_rx.clone();
    let router = tonic::transport::Server::builder()
        .trace_fn(move |_| {
            tracing::info_span!("chunksrv", node_id = span_node.load(Ordering::Relaxed))
        })
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        // Chunk pieces are 1 MiB: let clients send them in a few large frames.
        .max_frame_size(Some(1024 * 1024))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(chunk_service.into_server());
    let stopped = async move {
        shutdown::stopped(&mut server_shutdown).await;
    };
    let mut server =
        match tls {
            Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
                dfs_common::tls::incoming(grpc_listener, tls),
                stopped,
            )),
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                stopped,
            )),
        };

    let link = Arc::new(
        meta_link::MetaLink::new(
            &args.meta,
            identity,
            &data_dir,
            secret.as_ref(),
            advertise.clone(),
            store.clone(),
            Arc::clone(&metrics),
            Arc::clone(&node_id),
        )?
        .with_interval(Duration::from_millis(args.heartbeat_ms))
        .with_inventory_page(args.inventory_page as usize)
        .with_token_key(token_key),
    );
    tracing::info!(uuid = %uuid, addr = %advertise, "registering with the metadata service");
    let mut register_shutdown = shutdown_rx.clone();
    let registered = tokio::select! {
        r = link.register(&mut register_shutdown) => Some(r),
        r = &mut server => return server_ended(r),
    };
    match registered {
        Some(Ok(id)) => {
            link.spawn(shutdown_rx.clone());
            let scrubber = scrub::Scrubber {
                store: store.clone(),
                secret: secret.clone(),
                meta: args.meta.clone(),
                node_id: Arc::clone(&node_id),
                config: scrub::ScrubConfig {
                    rate: args.scrub_rate,
                    every: Duration::from_secs_f64(args.scrub_every_secs.clamp(0.01, 1e9)),
                },
                stats: Arc::clone(&metrics.scrub),
            };
            tokio::spawn(scrubber.run(shutdown_rx.clone()));
            tracing::info!(
                node_id = id,
                addr = %advertise,
                listen = %local,
                metrics = %args.metrics,
                uuid = %uuid,
                chunks = store.chunk_count(),
                used_bytes = store.used_bytes(),
                capacity_bytes = capacity,
                backups = backup_dir.is_some(),
                "chunksrv ready"
            );
        }
        Some(Err(meta_link::LinkError::Stopped)) | None => {}
        Some(Err(e)) => return Err(e.into()),
    }

    let mut wait_stop = shutdown_rx.clone();
    tokio::select! {
        r = &mut server => return server_ended(r),
        _ = shutdown::stopped(&mut wait_stop) => {}
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
        Ok(r) => server_ended(r)?,
        Err(_) => {
            tracing::warn!(
                node_id = node_id.load(Ordering::Relaxed),
                "transfers still running after {DRAIN_TIMEOUT:?}; stopping anyway"
            );
            server.abort();
        }
    }
    tracing::info!(
        node_id = node_id.load(Ordering::Relaxed),
        "chunksrv stopped"
    );
    Ok(())
}

/// The gRPC server task ended: fine after a shutdown request, an error otherwise.
fn server_ended(
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("the chunk service stopped: {e}")),
        Err(e) => Err(anyhow!("the chunk service failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("10g"), Ok(10 << 30));
        assert_eq!(parse_bytes("1.5K"), Ok(1536));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("-5").is_err());
        assert!(parse_bytes("99999999999T").is_err());
        let a = Args::try_parse_from([
            "chunksrv",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/x",
            "--meta",
            "a:1,b:2",
            "--metrics",
            "127.0.0.1:0",
            "--cluster-secret-file",
            "/tmp/s",
        ])
        .unwrap();
        assert_eq!(a.meta, vec!["a:1", "b:2"]);
        assert!(!a.no_backups && a.backup_dir.is_none() && a.capacity.is_none());
    }
}
