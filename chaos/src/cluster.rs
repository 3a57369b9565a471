//! Control of the real cluster under test, through the `dfsctl local` launcher: `dfsctl local
//! up/start/down` (run as a process, so the nodes it starts are not children of chaos) and
//! signals to the pids it records in `cluster.json` (SIGKILL, SIGSTOP, SIGCONT).
//! Also what the convergence checker needs: each member's applied index, its
//! `saved-files.json` and its own view of the namespace.
//! Cuts (a node's inbound traffic dropped) and partitions (the traffic between chosen nodes
//! dropped, see `netns`) are made here too, so that healing removes one left in place.
use crate::disks::{DiskError, Disks};
use crate::history::{Convergence, FaultKind};
use crate::netns::{self, NetnsError};
use dfs_client::MetaConn;
use dfs_common::local_cluster::{alive, kill_and_wait, LocalCluster, LocalNode};
use dfs_proto::{FsckRequest, StatusRequest};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot run {bin}: {source} (build it with `cargo build --workspace --bins`, or set DFS_BIN_DIR)")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("`dfsctl {args}` failed: {stderr}")]
    Dfsctl { args: String, stderr: String },
    #[error("cluster description in {dir}: {message}")]
    Load { dir: PathBuf, message: String },
    #[error("no node named {0}")]
    NoNode(String),
    #[error("{0} did not die within 5 s of SIGKILL")]
    Undead(String),
    #[error("client: {0}")]
    Client(String),
    #[error("cut: {0}")]
    Net(#[from] NetnsError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(
        "power cuts and failing disks need the nodes' data directories on powerfs (chaos without --no-power-cuts or --no-disk-faults)"
    )]
    NoDisks,
    #[error("{name} has no port in its address {addr}")]
    NoPort { name: String, addr: String },
    #[error("the cluster did not become ready in {secs} s: {last}")]
    NotReady { secs: u64, last: String },
}

/// Where the binaries are: `DFS_BIN_DIR`, else beside this executable (as dfsctl does).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DFS_BIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// How long convergence waits, once members agree, for repair to restore every file's
/// replication (a lost server is declared dead, then a new leader waits its grace period).
const REPLICATION_WAIT: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub auth: PathBuf,
    pub meta_addrs: Vec<String>,
    /// Chunk servers killed for good: never started again, not expected to be live.
    lost: Mutex<BTreeSet<String>>,
    /// Nodes that could not be started again after a fault, and why (they are lost too).
    unrecovered: Mutex<BTreeMap<String, String>>,
    /// The cut or partition in place now, if any.
    net: Mutex<Option<NetFault>>,
    /// The nodes' powerfs disks (power cuts), if the run has them.
    disks: Mutex<Option<Disks>>,
}

/// A cut or partition in place: the record that undoes it and the nodes it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFault {
    pub undo: FaultKind,
    pub nodes: Vec<String>,
}

/// What `Cluster::up` lays out.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub metas: u32,
    pub chunks: u32,
    pub chunk_size: u64,
    /// Extra flags of every metasrv and every chunksrv.
    pub meta_args: Vec<String>,
    pub chunk_args: Vec<String>,
    /// Each node on a loopback address of its own (`dfsctl local up --own-addresses`).
    pub own_addresses: bool,
}

/// The name a partition gives the clients (chaos's own connections, from 127.0.0.1).
pub const CLIENTS: &str = "clients";

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid recorded for a node we started; no memory is touched.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Cluster {
    async fn dfsctl(bin_dir: &Path, args: &[String]) -> Result<String, ClusterError> {
        let bin = bin_dir.join("dfsctl");
        let out = tokio::process::Command::new(&bin)
            .args(args)
            .env("DFS_BIN_DIR", bin_dir)
            .env_remove("DFS_META")
            .env_remove("DFS_AUTH_FILE")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| ClusterError::Spawn {
                bin: bin.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ClusterError::Dfsctl {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start a fresh cluster laid out as `layout` in `dir` (which must not hold one yet, and
    /// whose node directories are on `disks` when given) and wait until it serves.
    pub async fn up(
        dir: &Path,
        bin_dir: &Path,
        layout: &Layout,
        disks: Option<Disks>,
    ) -> Result<Cluster, ClusterError> {
        let Layout {
            metas,
            chunks,
            chunk_size,
            meta_args,
            chunk_args,
            own_addresses,
        } = layout;
        let mut args: Vec<String> = vec![
            "local".into(),
            "up".into(),
            "--quiet".into(),
            "--json".into(),
            "--dir".into(),
            dir.display().to_string(),
            format!("--metas={metas}"),
            format!("--chunks={chunks}"),
            format!("--meta-arg=--chunk-size={chunk_size}"),
            "--wait=120".into(),
        ];
        args.extend(meta_args.iter().map(|a| format!("--meta-arg={a}")));
        args.extend(chunk_args.iter().map(|a| format!("--chunk-arg={a}")));
        if *own_addresses {
            args.push("--own-addresses".into());
        }
        Self::dfsctl(bin_dir, &args).await?;
        let c = Cluster {
            dir: dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            auth: dir.join("admin.auth"),
            meta_addrs: vec![],
            lost: Mutex::new(BTreeSet::new()),
            unrecovered: Mutex::new(BTreeMap::new()),
            net: Mutex::new(None),
            disks: Mutex::new(disks),
        };
        let nodes = c.nodes()?;
        Ok(Cluster {
            meta_addrs: nodes.meta_addrs(),
            ..c
        })
    }

    pub fn nodes(&self) -> Result<LocalCluster, ClusterError> {
        LocalCluster::load(&self.dir).map_err(|e| ClusterError::Load {
            dir: self.dir.clone(),
            message: format!("{e:#}"),
        })
    }

    fn node(&self, name: &str) -> Result<LocalNode, ClusterError> {
        self.nodes()?
            .nodes
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ClusterError::NoNode(name.to_string()))
    }

    pub fn names(&self, kind: &str) -> Result<Vec<String>, ClusterError> {
        Ok(self
            .nodes()?
            .nodes
            .into_iter()
            .filter(|n| n.kind == kind)
            .map(|n| n.name)
            .collect())
    }

    /// Start a node again after a fault; if it will not start, give it up: it is lost from
    /// then on and the convergence check fails, naming it and why. Whether it started.
    pub async fn restart_or_give_up(&self, name: &str) -> bool {
        match self.start(name).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("chaos: {name} did not start again: {e}");
                self.lost_names().insert(name.to_string());
                self.unrecovered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string(), e.to_string());
                false
            }
        }
    }

    /// SIGKILL a node and never start it again (as if its disk died with it).
    pub async fn lose(&self, name: &str) -> Result<(), ClusterError> {
        self.lost_names().insert(name.to_string());
        self.kill(name).await
    }

    fn lost_names(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_lost(&self, name: &str) -> bool {
        self.lost_names().contains(name)
    }

    pub fn is_alive(&self, name: &str) -> bool {
        self.node(name).is_ok_and(|n| alive(n.pid, &n.kind))
    }

    /// A client connection to the metadata group as the admin.
    pub fn conn(&self, timeout: Duration) -> Result<MetaConn, ClusterError> {
        MetaConn::connect(&self.meta_addrs, Some(&self.auth), timeout)
            .and_then(|c| c.with_tls(self.tls()?))
            .map_err(|e| ClusterError::Client(format!("{e:#}")))
    }

    /// The TLS clients of this cluster use: its CA (`DIR/tls/ca.pem`), unless it runs
    /// `--insecure`.
    pub fn tls(&self) -> dfs_client::Result<Option<std::sync::Arc<dfs_common::tls::Tls>>> {
        let ca = self.dir.join("tls").join(dfs_common::pki::CA_CERT);
        if !ca.exists() {
            return Ok(None);
        }
        Ok(Some(dfs_common::tls::Tls::client_only(&ca)?))
    }

    /// SIGKILL a node and wait until it is gone (polled every millisecond).
    pub async fn kill(&self, name: &str) -> Result<(), ClusterError> {
        let n = self.node(name)?;
        if !alive(n.pid, &n.kind) {
            return Ok(());
        }
        if !kill_and_wait(&n, Duration::from_secs(5)).await {
            return Err(ClusterError::Undead(name.to_string()));
        }
        Ok(())
    }

    /// Start a dead node again on its data dir (`dfsctl local start`), retrying briefly.
    pub async fn start(&self, name: &str) -> Result<(), ClusterError> {
        if self.is_lost(name) {
            return Ok(());
        }
        let args: Vec<String> = vec![
            "local".into(),
            "start".into(),
            "--quiet".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            name.to_string(),
        ];
        let mut last = None;
        for _ in 0..5 {
            if self.is_alive(name) {
                return Ok(());
            }
            match Self::dfsctl(&self.bin_dir, &args).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last.unwrap_or_else(|| ClusterError::NoNode(name.to_string())))
    }

    pub fn pause(&self, name: &str) -> Result<(), ClusterError> {
        let n = self.node(name)?;
        if alive(n.pid, &n.kind) {
            signal(n.pid.unwrap_or(0), libc::SIGSTOP);
        }
        Ok(())
    }

    pub fn resume(&self, name: &str) -> Result<(), ClusterError> {
        let n = self.node(name)?;
        if alive(n.pid, &n.kind) {
            signal(n.pid.unwrap_or(0), libc::SIGCONT);
        }
        Ok(())
    }

    fn net_fault(&self) -> std::sync::MutexGuard<'_, Option<NetFault>> {
        self.net.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drop every packet addressed to `name`'s listen port (one cut or partition at a time: one
    /// in place is undone first). Only inside the run's private network namespace.
    pub fn cut(&self, name: &str) -> Result<(), ClusterError> {
        let n = self.node(name)?;
        let port = n
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| ClusterError::NoPort {
                name: name.to_string(),
                addr: n.addr.clone(),
            })?;
        self.uncut()?;
        netns::cut(port)?;
        *self.net_fault() = Some(NetFault {
            undo: FaultKind::Uncut,
            nodes: vec![name.to_string()],
        });
        Ok(())
    }

    /// The address node `name` sends from (`CLIENTS`: 127.0.0.1).
    fn ip_of(&self, name: &str) -> Result<std::net::IpAddr, ClusterError> {
        if name == CLIENTS {
            return Ok(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let n = self.node(name)?;
        n.addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .map_err(|_| ClusterError::NoPort {
                name: name.to_string(),
                addr: n.addr.clone(),
            })
    }

    /// Drop every packet from `a` to `b` for each `(a, b)` in `links` (node names or `CLIENTS`;
    /// the cluster runs with `--own-addresses`), one cut or partition at a time. `out` is what
    /// the history records: the nodes cut off from the majority's side.
    pub fn partition(
        &self,
        links: &[(String, String)],
        out: &[String],
    ) -> Result<(), ClusterError> {
        let ips = links
            .iter()
            .map(|(a, b)| Ok((self.ip_of(a)?, self.ip_of(b)?)))
            .collect::<Result<Vec<_>, ClusterError>>()?;
        self.uncut()?;
        netns::partition(&ips)?;
        *self.net_fault() = Some(NetFault {
            undo: FaultKind::Heal,
            nodes: out.to_vec(),
        });
        Ok(())
    }

    /// Run `f` on the nodes' disks (an error when the run has none).
    fn with_disks<T>(
        &self,
        f: impl FnOnce(&Disks) -> Result<T, DiskError>,
    ) -> Result<T, ClusterError> {
        let g = self.disks.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(g.as_ref().ok_or(ClusterError::NoDisks)?)?)
    }

    /// Drop every byte `name` wrote and did not fsync (its process must be dead; a torn cut
    /// leaves part of them); says how much.
    pub fn power_cut(&self, name: &str, torn: bool) -> Result<String, ClusterError> {
        self.with_disks(|d| d.cut(name, torn))
    }

    /// Make the disk of `name` fail (`eio-read`, `eio-write`, `enospc`), or heal it (None).
    pub fn disk_fault(&self, name: &str, fault: Option<&str>) -> Result<(), ClusterError> {
        self.with_disks(|d| match fault {
            Some(f) => d.fail(name, f),
            None => d.heal(name),
        })
    }

    /// Unmount the nodes' disks, if any (after the cluster stopped).
    pub fn unmount_disks(&self) {
        let d = self.disks.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(d) = d {
            d.unmount();
        }
    }

    /// Undo the cut or partition in place, if any; returns what it was.
    pub fn uncut(&self) -> Result<Option<NetFault>, ClusterError> {
        let mut g = self.net_fault();
        if g.is_none() {
            return Ok(None);
        }
        netns::uncut()?;
        Ok(g.take())
    }

    /// The current metadata leader's node name, if one is known within `wait`.
    pub async fn leader(&self, wait: Duration) -> Result<Option<String>, ClusterError> {
        let deadline = Instant::now() + wait;
        let conn = self.conn(Duration::from_secs(2))?;
        loop {
            if let Ok(s) = dfs_client::rpc!(conn, cluster_status, StatusRequest { stale: false }) {
                if s.leader != 0 {
                    return Ok(Some(format!("meta-{}", s.leader)));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every node runs (but the lost ones), a leader is known, every member answers
    /// and every chunk server that runs is live.
    pub async fn wait_ready(&self, wait: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + wait;
        let conn = self.conn(Duration::from_secs(2))?;
        let mut last = String::from("not asked yet");
        while Instant::now() < deadline {
            let mut nodes = self.nodes()?;
            nodes.nodes.retain(|n| !self.is_lost(&n.name));
            let dead: Vec<&str> = nodes
                .nodes
                .iter()
                .filter(|n| !alive(n.pid, &n.kind))
                .map(|n| n.name.as_str())
                .collect();
            if !dead.is_empty() {
                last = format!("not running: {}", dead.join(", "));
            } else {
                match dfs_client::rpc!(conn, cluster_status, StatusRequest { stale: false }) {
                    Ok(s) => {
                        let live = s.chunk_servers.iter().filter(|c| c.live).count();
                        let chunks = nodes.nodes.iter().filter(|n| n.kind == "chunk").count();
                        let reachable = s.members.iter().all(|m| m.reachable);
                        if s.leader != 0 && reachable && live >= chunks {
                            return Ok(());
                        }
                        last = format!(
                            "leader {}, members reachable {reachable}, {live}/{chunks} chunk servers live",
                            s.leader
                        );
                    }
                    Err(e) => last = e.message().to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ClusterError::NotReady {
            secs: wait.as_secs(),
            last,
        })
    }

    /// Start every dead node and resume every paused one, then wait until ready.
    /// A cut or partition still in place is undone.
    pub async fn heal(&self, paused: &[String], wait: Duration) -> Result<(), ClusterError> {
        self.uncut()?;
        if let Some(d) = self
            .disks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            d.heal_all()?;
        }
        for p in paused {
            self.resume(p)?;
        }
        for n in self.nodes()?.nodes {
            if !alive(n.pid, &n.kind) && !self.is_lost(&n.name) {
                self.restart_or_give_up(&n.name).await;
            }
        }
        self.wait_ready(wait).await
    }

    /// Stop every node (`dfsctl local down`).
    pub async fn down(&self) -> Result<(), ClusterError> {
        let args: Vec<String> = vec![
            "local".into(),
            "down".into(),
            "--quiet".into(),
            "--dir".into(),
            self.dir.display().to_string(),
        ];
        // Paused nodes ignore SIGTERM until resumed.
        if let Ok(nodes) = self.nodes() {
            for n in nodes.nodes {
                if alive(n.pid, &n.kind) {
                    signal(n.pid.unwrap_or(0), libc::SIGCONT);
                }
            }
        }
        Self::dfsctl(&self.bin_dir, &args).await.map(|_| ())
    }

    /// One snapshot of what each member holds.
    async fn snapshot(&self, nodes: &LocalCluster) -> Result<Convergence, ClusterError> {
        let mut c = Convergence::default();
        let conn = self.conn(Duration::from_secs(3))?;
        let status = dfs_client::rpc!(conn, cluster_status, StatusRequest { stale: false }).ok();
        // Fsck counts only replicas on live servers: a lost server's copies do not count.
        c.under_replicated_files = dfs_client::rpc!(conn, fsck, FsckRequest { path: "/".into() })
            .ok()
            .map(|f| {
                f.problems
                    .iter()
                    .filter(|p| p.status != "over-replicated")
                    .count() as u64
            });
        c.unrecovered = self
            .unrecovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // A member that never came back has nothing to compare (it fails the check itself).
        let members = nodes
            .nodes
            .iter()
            .filter(|n| n.kind == "meta" && !c.unrecovered.contains_key(&n.name));
        for n in members {
            let applied = status.as_ref().and_then(|s| {
                s.members
                    .iter()
                    .find(|m| m.addr == n.addr && m.reachable)
                    .map(|m| m.applied)
            });
            c.applied.insert(n.name.clone(), applied);
            let file = n.data_dir.join("cache-metadata").join("saved-files.json");
            c.saved_files.insert(
                n.name.clone(),
                std::fs::read(&file)
                    .ok()
                    .map(|b| hex::encode(Sha256::digest(&b))),
            );
            // The member's own applied state (a stale read is answered locally).
            let own = MetaConn::connect(
                std::slice::from_ref(&n.addr),
                Some(&self.auth),
                Duration::from_secs(3),
            )
            .and_then(|c| c.with_tls(self.tls()?))
            .map_err(|e| ClusterError::Client(format!("{e:#}")))?;
            let listing = own.list_all("/", true, true).await.ok().map(|entries| {
                let mut h = Sha256::new();
                for e in &entries {
                    h.update(format!("{e:?}\n").as_bytes());
                }
                hex::encode(h.finalize())
            });
            c.namespace.insert(n.name.clone(), listing);
        }
        Ok(c)
    }

    /// Wait (up to `wait`) until all members agree on applied index, saved-files.json and
    /// namespace, then (up to `REPLICATION_WAIT` more) until fsck on the leader finds no file
    /// short of live replicas; return the last snapshot, with the first panic in each node's
    /// log.
    pub async fn convergence(&self, wait: Duration) -> Result<Convergence, ClusterError> {
        let started = Instant::now();
        let nodes = self.nodes()?;
        let mut agreed_since: Option<Instant> = None;
        loop {
            let mut c = self.snapshot(&nodes).await?;
            let same = |m: &BTreeMap<String, Option<String>>| {
                let first = m.values().next().cloned().flatten();
                first.is_some() && m.values().all(|v| *v == first)
            };
            let first = c.applied.values().next().copied().flatten();
            let applied_same = first.is_some() && c.applied.values().all(|v| *v == first);
            let agreed = applied_same && same(&c.saved_files) && same(&c.namespace);
            c.waited_ms = started.elapsed().as_millis() as u64;
            if agreed {
                let since = *agreed_since.get_or_insert_with(Instant::now);
                if c.under_replicated_files == Some(0) || since.elapsed() >= REPLICATION_WAIT {
                    c.panics = panics(&nodes);
                    return Ok(c);
                }
            } else {
                agreed_since = None;
            }
            if started.elapsed() >= wait {
                c.note = format!(
                    "gave up waiting after {} s (members agree: {agreed})",
                    wait.as_secs()
                );
                c.panics = panics(&nodes);
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The first panic message in each node's log (`<data dir>/log`), by node. A log on a disk
/// that failed or lost power may miss lines, so this finds panics, it cannot rule them out.
fn panics(nodes: &LocalCluster) -> BTreeMap<String, String> {
    use std::io::BufRead;
    let mut out = BTreeMap::new();
    for n in &nodes.nodes {
        let Ok(log) = std::fs::File::open(n.data_dir.join("log")) else {
            continue;
        };
        // Line by line: a long run's logs are large.
        let first = std::io::BufReader::new(log)
            .split(b'\n')
            .map_while(Result::ok)
            .find(|l| l.windows(11).any(|w| w == b"panicked at"));
        if let Some(line) = first {
            let line = String::from_utf8_lossy(&line);
            out.insert(n.name.clone(), line.chars().take(300).collect());
        }
    }
    out
}
