//! `chaos`: kill the leader under load and prove that nothing acknowledged is lost.
//! Exit codes: 0 every checker passed, 1 a checker found a violation, 2 chaos itself could not
//! run (cluster did not start, bad arguments, ...).
use anyhow::{bail, Context};
use chaos::checker::{self, availability, DEFAULT_BUDGET, DEFAULT_GRACE_US};
use chaos::cluster::{bin_dir, Cluster, Layout};
use chaos::history::{Clock, Fault, History, HistoryWriter, Record, RunInfo};
use chaos::nemesis::{Nemesis, NemesisConfig};
use chaos::netns;
use chaos::report;
use chaos::workload::{self, Shared, WorkloadConfig};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default chunk size of the cluster under test: small, so files of a few chunks stay cheap.
const CHUNK_SIZE: u64 = 64 * 1024;
/// Largest chunk size a run may ask for (files go up to 3.5 chunks, held in memory per op).
const MAX_RUN_CHUNK_SIZE: u64 = 8 * 1024 * 1024;
const METAS: u32 = 3;
/// Chunk servers are declared dead after this long in chaos runs (the default is 30 s), so a
/// lost server's chunks are re-replicated within the run.
const DEAD_TIMEOUT_MS: u64 = 5_000;

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    version,
    about = "Start a real dfs cluster, run concurrent clients while killing and pausing nodes, then check that no acknowledged write was lost and every read was one a correct system could return.",
    after_help = "Examples:\n  chaos --duration 96 --kill-leader-every 16 --chunks 4 --lose-chunk-server --max-unavailable 5  # the CI round\n  chaos --duration 1800 --kill-leader-every 10 --json # the long run (100+ leader kills)\n  chaos --replay /tmp/dfs-chaos-.../history.jsonl     # check a kept history again\n\nCuts (on unless --no-cuts) run chaos in a network namespace of its own: root, unshare, ip and nft.\n\nExit codes: 0 every checker passed, 1 a violation was found, 2 chaos could not run."
)]
struct Args {
    /// Seconds the workload runs under faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// SIGKILL the metadata leader every this many seconds (0: never); it restarts 1-2 s later.
    #[arg(long, default_value_t = 10)]
    kill_leader_every: u64,
    /// Do not SIGKILL chunk servers.
    #[arg(long)]
    no_chunk_kills: bool,
    /// Do not SIGSTOP the leader.
    #[arg(long)]
    no_pauses: bool,
    /// Do not SIGSTOP chunk servers (frozen for 2-6 s while the clients write, then resumed).
    #[arg(long)]
    no_chunk_freezes: bool,
    /// Do not cut a metadata node's inbound traffic (3-6 s, the leader most of the time).
    /// Cuts need root, `unshare`, `ip` and `nft`: chaos then runs itself in a private network
    /// namespace.
    #[arg(long)]
    no_cuts: bool,
    /// Do not partition the nodes (5.5-8 s each, in turn: the leader isolated, a majority/
    /// minority split, a bridge, a one-way link, the chunk servers cut from the metadata group,
    /// the clients cut from a chunk server). Partitions run in the network namespace too (off
    /// with --no-cuts), with each node on a loopback address of its own.
    #[arg(long)]
    no_partitions: bool,
    /// Do not cut the power of nodes (the whole cluster, the leader, a chunk server, a
    /// follower in turn: SIGKILL, then every byte they wrote and did not fsync is dropped).
    /// Power cuts put each node's data directory on a powerfs (FUSE) in a mount namespace of
    /// the run's own: root, /dev/fuse and `unshare`.
    #[arg(long)]
    no_power_cuts: bool,
    /// Do not make disks fail (each node's powerfs in turn: EIO on the leader's writes, a full
    /// chunk server, a full follower, EIO on a chunk server's reads, then its writes, a full
    /// leader; 3-6 s each, then healed, and a node that exited started again).
    #[arg(long)]
    no_disk_faults: bool,
    /// Only these families of faults, comma-separated (instead of every one but those turned
    /// off with --no-*): kill (leader, chunk-server and majority kills), pause (leader
    /// pauses, chunk-server freezes), partition (inbound cuts and partitions), power (power
    /// cuts), disk (failing disks). Example: --faults kill,pause,partition,power,disk
    #[arg(long, value_delimiter = ',', value_name = "FAMILIES", value_parser = ["kill", "pause", "partition", "power", "disk"])]
    faults: Option<Vec<String>>,
    /// Plant a bug to prove that the checkers catch it: `skip-read-barrier` (every metasrv
    /// answers reads without a leadership check; a partitioned old leader then serves stale
    /// reads, which the linearizability checker must flag), `skip-log-fsync` (every metasrv
    /// acknowledges Raft entries without fdatasync; a power cut of the whole cluster then loses
    /// acknowledged writes, which the lost-write checker must flag) or `skip-fsync` (every
    /// chunksrv acknowledges chunk writes without fdatasync).
    #[arg(long, value_name = "BUG", value_parser = ["skip-read-barrier", "skip-log-fsync", "skip-fsync"])]
    plant_bug: Option<String>,
    /// Fail the run when the cluster was healthy (a majority of metadata nodes and enough
    /// chunk servers up and not paused) for longer than this many seconds without
    /// acknowledging a write. On --replay, the run's own bound when not given.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    max_unavailable: Option<u64>,
    /// The clients give a chunk server up after this many seconds without progress (dfsctl's
    /// --stall-timeout). Kept well under --max-unavailable, so that a frozen chunk server that
    /// outlasts the bound fails the run only if the clients do not route around it.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    stall_timeout: f64,
    /// Do not SIGKILL two of three metadata nodes at once.
    #[arg(long)]
    no_majority_kills: bool,
    /// Chunk servers in the cluster (replication is 2).
    #[arg(long, default_value_t = 3)]
    chunks: u32,
    /// A third of the way through, SIGKILL one chunk server and never restart it: the run
    /// passes only if every file is back to full replication on the others (use --chunks 4).
    #[arg(long)]
    lose_chunk_server: bool,
    /// Keep the cluster's data dirs and the history in DIR (default: a new temp dir, whose
    /// history is kept and whose cluster data is removed when every checker passes).
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Print the summary table on stderr and, as the last line on stdout, one JSON object.
    #[arg(long)]
    json: bool,
    /// Only run the checkers on a kept history file.
    #[arg(long, value_name = "HISTORY")]
    replay: Option<PathBuf>,
    /// Chunk size of the cluster in bytes (1 MiB or more exercises the chunk servers'
    /// direct IO path; files go up to 3.5 chunks).
    #[arg(long, default_value_t = CHUNK_SIZE, value_parser = clap::value_parser!(u64).range(4096..=MAX_RUN_CHUNK_SIZE))]
    chunk_size: u64,
}

impl Args {
    /// With --faults, turn every family not listed off.
    fn only_faults(&mut self) {
        let Some(families) = self.faults.clone() else {
            return;
        };
        let off = |f: &str| !families.iter().any(|x| x == f);
        if off("kill") {
            self.kill_leader_every = 0;
            self.no_chunk_kills = true;
            self.no_majority_kills = true;
        }
        if off("pause") {
            self.no_pauses = true;
            self.no_chunk_freezes = true;
        }
        if off("partition") {
            self.no_cuts = true;
            self.no_partitions = true;
        }
        self.no_power_cuts |= off("power");
        self.no_disk_faults |= off("disk");
    }

    /// Whether the nodes' data directories go on powerfs (power cuts and failing disks).
    fn powerfs(&self) -> bool {
        !self.no_power_cuts || !self.no_disk_faults
    }
}

/// Whether the run partitions nodes (it needs the network namespace that cuts make).
fn partitions(a: &Args) -> bool {
    !a.no_cuts && !a.no_partitions
}

/// Seconds (fractions allowed) as microseconds.
fn parse_secs(s: &str) -> Result<u64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => Ok((v * 1e6) as u64),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    args.only_faults();
    if (!args.no_cuts || args.powerfs()) && args.replay.is_none() {
        // Cuts add nftables rules and power cuts mount file systems: the whole run goes into
        // network and mount namespaces of its own.
        let ready = if netns::inside() {
            netns::prepare()
        } else {
            match netns::reexec() {
                Ok(code) => return ExitCode::from(code),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = ready {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Check a history and print the summary; returns whether every checker passed.
/// `avail_bound_us`: the availability bound, else the run's own, else the default.
fn check_and_report(
    history: &Path,
    json: bool,
    avail_bound_us: Option<u64>,
) -> anyhow::Result<bool> {
    let h = History::read(history)?;
    let avail_bound_us = avail_bound_us
        .or_else(|| {
            h.run
                .as_ref()
                .map(|r| r.max_unavailable_ms * 1000)
                .filter(|b| *b > 0)
        })
        .unwrap_or(availability::DEFAULT_BOUND_US);
    let grace = h
        .run
        .as_ref()
        .map(|r| r.unknown_grace_ms * 1000)
        .filter(|g| *g > 0)
        .unwrap_or(DEFAULT_GRACE_US);
    let started = Instant::now();
    let v = checker::check_all(&h, grace, DEFAULT_BUDGET, avail_bound_us);
    let s = report::summarize(&h, &v, history);
    if json {
        eprint!("{}", s.table);
        eprintln!("(checked in {:.1} s)", started.elapsed().as_secs_f64());
        println!("{}", s.json);
    } else {
        print!("{}", s.table);
    }
    Ok(s.pass)
}

async fn run(a: Args) -> anyhow::Result<bool> {
    if let Some(h) = &a.replay {
        return check_and_report(h, a.json, a.max_unavailable);
    }
    if a.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let least = if a.lose_chunk_server { 3 } else { 2 };
    if a.chunks < least {
        bail!("--chunks must be at least {least} (replication 2, and a server to lose)");
    }
    let (work, keep) = match &a.keep {
        Some(d) => (d.clone(), true),
        None => (
            std::env::temp_dir().join(format!(
                "dfs-chaos-{}-{}",
                unix_now().as_secs(),
                std::process::id()
            )),
            false,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let work = std::fs::canonicalize(&work)?;
    let cluster_dir = work.join("cluster");
    let history_path = work.join("history.jsonl");
    if cluster_dir.exists() || history_path.exists() {
        bail!(
            "{} already holds a chaos run; give --keep a new directory",
            work.display()
        );
    }
    std::fs::create_dir_all(&cluster_dir)?;
    eprintln!(
        "chaos: starting {METAS} metasrv + {} chunksrv in {} (binaries from {})",
        a.chunks,
        cluster_dir.display(),
        bin_dir().display()
    );
    let mut meta_args = vec![format!("--dead-timeout-ms={DEAD_TIMEOUT_MS}")];
    let mut chunk_args = Vec::new();
    match a.plant_bug.as_deref() {
        Some(bug @ "skip-fsync") => {
            eprintln!("chaos: planting the bug {bug:?} in every chunksrv");
            chunk_args.push(format!("--plant-bug={bug}"));
        }
        Some(bug) => {
            eprintln!("chaos: planting the bug {bug:?} in every metasrv");
            meta_args.push(format!("--plant-bug={bug}"));
        }
        None => {}
    }
    let disks = if !a.powerfs() {
        None
    } else {
        let nodes: Vec<String> = (1..=METAS)
            .map(|i| format!("meta-{i}"))
            .chain((1..=a.chunks).map(|i| format!("chunk-{i}")))
            .collect();
        Some(chaos::disks::Disks::mount(
            &bin_dir(),
            &work.join("disks"),
            &cluster_dir,
            &nodes,
        )?)
    };
    let cluster = Arc::new(
        Cluster::up(
            &cluster_dir,
            &bin_dir(),
            &Layout {
                metas: METAS,
                chunks: a.chunks,
                chunk_size: a.chunk_size,
                meta_args,
                chunk_args,
                own_addresses: partitions(&a),
            },
            disks,
        )
        .await?,
    );
    let driven = tokio::select! {
        r = drive(&a, cluster.clone(), &history_path) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!("chaos: stopping the cluster");
    if let Err(e) = cluster.down().await {
        eprintln!("chaos: stopping the cluster: {e}");
    }
    // The nodes' data stays in work/disks/<node> (the powerfs backing directories).
    cluster.unmount_disks();
    driven.with_context(|| {
        format!(
            "the run did not complete; history so far: {} (cluster data kept in {})",
            history_path.display(),
            cluster_dir.display()
        )
    })?;
    eprintln!("chaos: checking the history");
    let pass = check_and_report(&history_path, a.json, a.max_unavailable)?;
    if pass && !keep {
        let _ = std::fs::remove_dir_all(&cluster_dir);
        let _ = std::fs::remove_dir_all(work.join("disks"));
    }
    Ok(pass)
}

/// Workload and nemesis together, then heal, final reads and convergence, all recorded.
async fn drive(a: &Args, cluster: Arc<Cluster>, history_path: &Path) -> anyhow::Result<()> {
    let history = Arc::new(HistoryWriter::create(history_path)?);
    let clock = Clock::start();
    let groups = (a.clients as u32 / 3).max(2);
    history.write(&Record::Run(RunInfo {
        started: format!("{} (unix seconds)", unix_now().as_secs()),
        duration_s: a.duration,
        clients: a.clients,
        groups,
        metas: METAS,
        chunks: a.chunks,
        chunk_size: a.chunk_size,
        kill_leader_every_s: a.kill_leader_every,
        chunk_kills: !a.no_chunk_kills,
        lose_chunk_server: a.lose_chunk_server,
        pauses: !a.no_pauses,
        majority_kills: !a.no_majority_kills,
        chunk_freezes: !a.no_chunk_freezes,
        cuts: !a.no_cuts,
        partitions: partitions(a),
        power_cuts: !a.no_power_cuts,
        disk_faults: !a.no_disk_faults,
        planted_bug: a.plant_bug.clone(),
        replication: dfs_common::DEFAULT_REPLICATION,
        max_unavailable_ms: a.max_unavailable.unwrap_or(availability::DEFAULT_BOUND_US) / 1000,
        cluster_dir: cluster.dir.display().to_string(),
        unknown_grace_ms: DEFAULT_GRACE_US / 1000,
    }))?;
    let cfg = WorkloadConfig {
        clients: a.clients,
        groups,
        chunk_size: a.chunk_size,
        max_size: a.chunk_size * 7 / 2,
        rpc_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs_f64(a.stall_timeout.clamp(0.1, 60.0)),
        run_tag: format!("{:x}", unix_now().as_micros()),
    };
    let shared = Arc::new(Shared::new(
        cfg,
        history.clone(),
        clock,
        cluster.meta_addrs.clone(),
        cluster.auth.clone(),
        cluster.tls()?,
    ));
    workload::setup(&shared).await?;
    let mut nemesis = Nemesis::new(
        cluster.clone(),
        history.clone(),
        clock,
        NemesisConfig {
            kill_leader_every: (a.kill_leader_every > 0)
                .then(|| Duration::from_secs(a.kill_leader_every)),
            chunk_kills: !a.no_chunk_kills,
            pauses: !a.no_pauses,
            chunk_freezes: !a.no_chunk_freezes,
            cuts: !a.no_cuts,
            partitions: partitions(a),
            power_cuts: !a.no_power_cuts,
            disk_faults: !a.no_disk_faults,
            majority_kills: !a.no_majority_kills,
            lose_chunk_after: a
                .lose_chunk_server
                .then(|| Duration::from_secs(a.duration / 3)),
        },
    );
    eprintln!(
        "chaos: {} clients on {groups} groups of paths for {} s, leader kill every {} s",
        a.clients, a.duration, a.kill_leader_every
    );
    let until = Instant::now() + Duration::from_secs(a.duration);
    let (w, n) = tokio::join!(workload::run(shared.clone(), until), nemesis.run(until));
    if let Err(e) = n {
        eprintln!("chaos: the nemesis stopped early: {e}");
    }
    w?;
    eprintln!("chaos: healing the cluster");
    // A cut or partition the nemesis left in place (it stopped early) is undone and recorded.
    if let Some(n) = cluster.uncut()? {
        history.write(&Record::Fault(Fault {
            kind: n.undo,
            nodes: n.nodes,
            at_us: clock.now_us(),
            note: Some("undone by the healing".into()),
        }))?;
    }
    cluster
        .heal(&nemesis.paused, Duration::from_secs(120))
        .await?;
    eprintln!("chaos: final reads");
    workload::final_reads(shared.clone(), Duration::from_secs(120)).await?;
    eprintln!("chaos: waiting for the members to converge");
    let c = cluster.convergence(Duration::from_secs(180)).await?;
    history.write(&Record::Convergence(c))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_turns_off_every_family_it_does_not_name() {
        let mut a = Args::parse_from(["chaos", "--faults", "power,disk"]);
        a.only_faults();
        assert_eq!(a.kill_leader_every, 0);
        assert!(a.no_chunk_kills && a.no_majority_kills);
        assert!(a.no_pauses && a.no_chunk_freezes);
        assert!(a.no_cuts && a.no_partitions);
        assert!(!a.no_power_cuts && !a.no_disk_faults);
        assert!(a.powerfs());
        let mut a = Args::parse_from(["chaos", "--faults", "kill,partition"]);
        a.only_faults();
        assert_eq!(a.kill_leader_every, 10);
        assert!(!a.no_chunk_kills && !a.no_cuts && partitions(&a));
        assert!(a.no_power_cuts && a.no_disk_faults && !a.powerfs());
        // Without --faults, nothing changes.
        let mut a = Args::parse_from(["chaos", "--no-pauses"]);
        a.only_faults();
        assert!(a.no_pauses && !a.no_chunk_freezes && !a.no_disk_faults);
        assert!(Args::try_parse_from(["chaos", "--faults", "meteor"]).is_err());
    }
}
