//! metasrv: one member of the Raft group that keeps the dfs namespace, users and chunk map.
mod bootstrap;
mod config;
mod export;
mod healer;
mod inventory;
mod leader_watch;
mod lease_reaper;
mod liveness;
mod metrics;
mod network;
mod repair;
mod service;
mod state;
mod store;
mod trash_purger;
mod types;

use anyhow::{bail, Context};
use clap::Parser;
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    // Not eprintln!: it panics when stderr cannot be written (a full log disk).
    use std::io::Write as _;
    let args = config::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DFS_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn")
            }),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Not its default eprintln! of a failed log write: that panics when stderr cannot be
        // written (a full or failing log disk), in whichever thread logged.
        .log_internal_errors(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "metasrv: cannot start the async runtime: {e}"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "metasrv: {e:#}");
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: config::Args) -> anyhow::Result<()> {
    if let Some(ip) = args.source_ip {
        // Before any channel is made (every one is made through `tls::channel`).
        let _ = dfs_common::tls::set_source_ip(ip);
    }
    let cfg = config::Config::from_args(args)?;
    if cfg.plant_bug == Some(config::PlantedBug::SkipLogFsync) {
        store::plant_skip_log_fsync();
    }
    let secret = dfs_common::token::ClusterSecret::load(&cfg.secret_file)?;
    config::check_data_dir(&cfg, &secret)?;
    let tls = match &cfg.tls {
        Some(files) => {
            let tls = dfs_common::tls::Tls::load(files.clone())?;
            let me = tls.identity();
            if me.as_ref().and_then(|i| {
                (i.role == dfs_common::pki::Role::Meta)
                    .then(|| i.node_id())
                    .flatten()
            }) != Some(cfg.id)
            {
                anyhow::bail!(
                    "--tls-cert is for {}, but this is metasrv {}: issue one with `dfsctl admin cert issue --role meta --id {}`",
                    me.map_or_else(|| "no dfs identity".to_string(), |i| i.to_string()),
                    cfg.id,
                    cfg.id
                );
            }
            tls.spawn_reloader();
            Some(tls)
        }
        None => None,
    };
    network::set_tls(tls.clone());

    // Bind first, so a taken port is a clear error before anything else starts.
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is the port taken?)", cfg.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(&cfg.metrics)
        .await
        .with_context(|| {
            format!(
                "cannot serve metrics on {} (is the port taken?)",
                cfg.metrics
            )
        })?;

    // sled 0.34 asserts (panics) on some damaged trees instead of returning an error (seen
    // after a torn power cut of a store that skipped its fsyncs): say so plainly.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store::open(&cfg.data_dir.join("raft"), &cfg.data_dir.join("snapshots")).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the store in {} (is another metasrv using it?): {e}",
                cfg.data_dir.display()
            )
        })
    }));
    let (log_store, state_machine, durable) = match opened {
        Ok(r) => r?,
        Err(_) => bail!(
            "the store in {} is damaged and cannot be read (sled failed an internal check \
             while opening it); this node cannot start from it",
            cfg.data_dir.join("raft").display()
        ),
    };
    let shared = state_machine.shared();
    let log_for_metrics = log_store.clone();
    let raft = types::Raft::new(
        cfg.id,
        Arc::new(cfg.raft_config()?),
        network::NetworkFactory {
            secret: secret.clone(),
        },
        log_store,
        state_machine,
    )
    .await
    .context("cannot start raft")?;

    let node = Arc::new(service::MetaNode {
        id: cfg.id,
        raft: raft.clone(),
        state: shared.clone(),
        secret: secret.clone(),
        config: cfg.service_config(),
        liveness: Default::default(),
        metrics: Default::default(),
        // By default a read lease of the minimum election timeout: half of openraft's leader
        // lease (`--read-lease-ms`).
        reads: service::ReadBarrier::new(
            raft.clone(),
            std::time::Duration::from_millis(cfg.read_lease_ms),
            cfg.plant_bug == Some(config::PlantedBug::SkipReadBarrier),
        ),
        writes: service::WriteBatcher::new(raft.clone()),
        healing: healer::Healing::new(cfg.healing.clone()),
        leader_watch: Default::default(),
        auth_limit: Default::default(),
        membership_change: Default::default(),
    });

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let meta = dfs_proto::meta_server::MetaServer::new(service::MetaApi { node: node.clone() })
            .max_decoding_message_size(network::MAX_RAFT_MESSAGE)
            .max_encoding_message_size(network::MAX_RAFT_MESSAGE);
        let raft_svc =
            dfs_proto::raft_transport_server::RaftTransportServer::new(service::RaftApi {
                node: node.clone(),
            })
            .max_decoding_message_size(network::MAX_RAFT_MESSAGE)
            .max_encoding_message_size(network::MAX_RAFT_MESSAGE);
        let mut stop = stop_rx.clone();
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(service::pre_auth::PreAuthCap::new(meta, node.clone()))
            .add_service(service::pre_auth::PreAuthCap::new(raft_svc, node.clone()));
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match tls {
            Some(tls) => {
                tokio::spawn(router.serve_with_incoming_shutdown(
                    dfs_common::tls::incoming(listener, tls),
                    stopped,
                ))
            }
            None => tokio::spawn(
                router.serve_with_incoming_shutdown(tokio_stream_listener(listener), stopped),
            ),
        }
    };

    tokio::spawn(dfs_common::http::serve(
        metrics_listener,
        metrics::http_handler(
            node.clone(),
            metrics::Sources {
                log: log_for_metrics,
                durable,
                raft_dir: cfg.data_dir.join("raft"),
            },
        ),
    ));
    tokio::spawn(export::run_writer(
        shared.clone(),
        raft.clone(),
        cfg.data_dir.clone(),
    ));
    tokio::spawn(bootstrap::watch_leader(node.clone()));
    tokio::spawn(healer::run(node.clone()));
    tokio::spawn(leader_watch::run(node.clone()));
    tokio::spawn(trash_purger::run(node.clone()));
    tokio::spawn(lease_reaper::run(node.clone()));

    bootstrap::check_peers(&node, &cfg).await?;
    bootstrap::initialize_if_fresh(&node, &cfg).await?;
    if let Some(out) = cfg.admin_auth_out.clone() {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = bootstrap::create_admin(&node, &out).await {
                tracing::error!(error = %e, "could not create the admin user");
            }
        });
    }
    tracing::info!(node = cfg.id, addr = %cfg.advertise, metrics = %cfg.metrics, data = %cfg.data_dir.display(), "metasrv ready");

    let fatal = bootstrap::wait_for_stop(&node).await;
    let _ = stop_tx.send(true);
    let _ = raft.shutdown().await;
    let _ = stop_rx.changed().await;
    let _ = server.await;
    if let Some(reason) = fatal {
        bail!("raft stopped: {reason}; exiting so a supervisor restarts this node");
    }
    tracing::info!(node = cfg.id, "metasrv stopped");
    Ok(())
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}
