//! `dfsctl local`: a real cluster of metasrv and chunksrv processes on loopback ports.
//!
//! Everything lives under one directory (`--dir`, default `.dfs`): `cluster.json` (nodes, their
//! ports, arguments and pids), `cluster.secret`, `admin.auth`, `env`, and one data dir per node
//! (`meta-1/`, `chunk-1/`, ... each with a `log` file), and `prometheus/targets/*.json`
//! (file-based service discovery for `deploy/prometheus`). Nodes run in their own process
//! group, so they outlive the dfsctl that started them.
use crate::local_gateway;
use crate::local_mount;
use crate::output::print_json;
use crate::Ctx;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
pub use dfs_common::local_cluster::{alive, LocalCluster, LocalNode};
use dfs_common::pki::Role;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct DirArg {
    /// Directory holding the local cluster.
    #[arg(long, env = "DFS_LOCAL_DIR", default_value = ".dfs")]
    pub dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum LocalCmd {
    /// Start (or restart) the local cluster and wait until it serves requests.
    #[command(after_help = "Example: dfsctl local up --dir /tmp/dfs --metas 3 --chunks 3")]
    Up(UpArgs),
    /// List every node: name, pid, address, metrics address, alive.
    Status(DirArg),
    /// Stop every node (SIGTERM, then SIGKILL after 10 s).
    Down(DirArg),
    /// SIGKILL one node (for trying failover by hand).
    #[command(after_help = "Example: dfsctl local kill meta-1")]
    Kill {
        #[command(flatten)]
        dir: DirArg,
        node: String,
    },
    /// Start one node again on its data dir.
    #[command(after_help = "Example: dfsctl local start meta-1")]
    Start {
        #[command(flatten)]
        dir: DirArg,
        node: String,
    },
    /// Pause (SIGSTOP) or resume (SIGCONT) one node.
    Pause {
        #[command(flatten)]
        dir: DirArg,
        node: String,
        /// Resume instead of pausing.
        #[arg(long)]
        resume: bool,
    },
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Number of metadata nodes.
    #[arg(long, default_value_t = 3)]
    pub metas: u32,
    /// Number of chunk servers.
    #[arg(long, default_value_t = 3)]
    pub chunks: u32,
    /// Extra argument for every metasrv (repeatable), e.g. --meta-arg=--allow-self-register.
    #[arg(long = "meta-arg", allow_hyphen_values = true)]
    pub meta_args: Vec<String>,
    /// Extra argument for every chunksrv (repeatable), e.g. --chunk-arg=--capacity=1000000.
    #[arg(long = "chunk-arg", allow_hyphen_values = true)]
    pub chunk_args: Vec<String>,
    /// Seconds to wait for a leader and the chunk servers.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
    /// Also mount the cluster on this folder (as its admin user; `local down` unmounts it).
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
    /// Start no WebDAV gateway (by default one serves plain HTTP on a loopback port).
    #[arg(long)]
    pub no_gateway: bool,
    /// Plain TCP between the processes instead of TLS with certificates from a CA made in
    /// DIR/tls (for comparing speed; only when the cluster is first laid out).
    #[arg(long)]
    pub insecure: bool,
    /// Give each node a loopback address of its own (127.0.1.N for metadata node N, 127.0.2.N
    /// for chunk server N) to listen on and connect from, so that firewall rules can cut the
    /// traffic between two chosen nodes (the chaos run's partitions). Linux routes all of
    /// 127.0.0.0/8 to loopback; only when the cluster is first laid out.
    #[arg(long)]
    pub own_addresses: bool,
}

/// SIGTERM `pid` and wait up to `grace` for it to end (`running` says whether it still is the
/// process we started); SIGKILL it after that. For the gateway and the mount `local` starts.
pub fn terminate(pid: u32, grace: Duration, running: impl Fn() -> bool) {
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if running() {
        signal(pid, libc::SIGKILL);
    }
}

/// The CA a local cluster's processes trust (`DIR/tls/ca.pem`), if it runs with TLS.
pub fn local_ca(dir: &Path) -> Option<PathBuf> {
    let ca = dir.join("tls").join(dfs_common::pki::CA_CERT);
    ca.exists().then_some(ca)
}

/// The TLS a client of the local cluster in `dir` uses (`None`: it runs `--insecure`).
pub fn local_tls(dir: &Path) -> anyhow::Result<Option<std::sync::Arc<dfs_common::tls::Tls>>> {
    Ok(match local_ca(dir) {
        Some(ca) => Some(dfs_common::tls::Tls::client_only(&ca)?),
        None => None,
    })
}

/// The certificate arguments for node `role`/`id` of a local cluster, issuing its
/// certificate from the local CA (none with `--insecure`).
fn tls_args(dir: &Path, insecure: bool, role: Role, id: u32) -> anyhow::Result<Vec<String>> {
    if insecure {
        return Ok(vec!["--insecure".into()]);
    }
    let tls = dir.join("tls");
    let issued = dfs_common::pki::issue(
        &tls,
        &dfs_common::pki::Identity::new(role, &id.to_string())?,
        &["127.0.0.1".to_string(), "localhost".to_string()],
        &tls,
        3650,
    )?;
    Ok(vec![
        format!("--tls-cert={}", issued.cert.display()),
        format!("--tls-key={}", issued.key.display()),
        format!("--tls-ca={}", tls.join(dfs_common::pki::CA_CERT).display()),
    ])
}

/// A free loopback port (the OS picks one; it is released for the node to bind).
/// Ports come from below the kernel's ephemeral range (32768 and up), so an outgoing
/// connection of another process cannot take one between this check and the node's bind.
fn free_addr() -> anyhow::Result<String> {
    free_addr_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A free port on the loopback address `ip` (see `free_addr`).
fn free_addr_on(ip: std::net::Ipv4Addr) -> anyhow::Result<String> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port: u16 = rng.gen_range(15_000..32_000);
        if let Ok(l) = std::net::TcpListener::bind((ip, port)) {
            return Ok(l.local_addr()?.to_string());
        }
    }
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.to_string())
}

/// With `--own-addresses`: node `i` of `kind` listens on a loopback address of its own and
/// connects from it (`127.0.1.i` for metadata nodes, `127.0.2.i` for chunk servers).
fn own_address(kind: Role, i: u32) -> anyhow::Result<std::net::Ipv4Addr> {
    let last = u8::try_from(i)
        .ok()
        .filter(|b| *b > 0 && *b < 255)
        .ok_or_else(|| anyhow::anyhow!("--own-addresses allows at most 254 nodes of a kind"))?;
    Ok(match kind {
        Role::Meta => std::net::Ipv4Addr::new(127, 0, 1, last),
        _ => std::net::Ipv4Addr::new(127, 0, 2, last),
    })
}

/// The gRPC address of node `i` of `kind`, and the flags that make it leave from there too.
fn node_addr(own: bool, kind: Role, i: u32) -> anyhow::Result<(String, Vec<String>)> {
    if !own {
        return Ok((free_addr()?, Vec::new()));
    }
    let ip = own_address(kind, i)?;
    Ok((free_addr_on(ip)?, vec![format!("--source-ip={ip}")]))
}

/// Kill what a failed first start left and forget the cluster, so it can be laid out again.
fn discard(dir: &Path, cluster: &LocalCluster) {
    for n in &cluster.nodes {
        if alive(n.pid, &n.kind) {
            signal(n.pid.unwrap_or(0), libc::SIGKILL);
        }
    }
    for n in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(n.pid, &n.kind) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&n.data_dir);
    }
    for f in [
        "cluster.json",
        "admin.auth",
        "admin.pending",
        "cluster.secret",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("tls"));
}

/// Start one more metasrv, empty, to join the local cluster in `dir` as node `id` (data in
/// `meta-<id>/`, not recorded in `cluster.json`; the caller adds it with `add-member`, and
/// removes and kills it when done). Its certificate comes from the local CA, as for the others.
pub fn spawn_joining_meta(dir: &Path, id: u32) -> anyhow::Result<LocalNode> {
    let (addr, metrics) = (free_addr()?, free_addr()?);
    let data_dir = dir.join(format!("meta-{id}"));
    let mut args = vec![
        format!("--id={id}"),
        "--join".to_string(),
        format!("--listen={addr}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--metrics={metrics}"),
        format!(
            "--cluster-secret-file={}",
            dir.join("cluster.secret").display()
        ),
    ];
    args.extend(tls_args(dir, local_ca(dir).is_none(), Role::Meta, id)?);
    let mut node = LocalNode {
        name: format!("meta-{id}"),
        kind: "meta".into(),
        id: id as u64,
        addr,
        metrics_addr: metrics,
        data_dir,
        args,
        pid: None,
    };
    spawn(&mut node)?;
    Ok(node)
}

/// SIGKILL a node and return once its process is gone (`local start` refuses a node whose
/// old process is still there).
pub async fn kill_and_wait(n: &LocalNode) -> anyhow::Result<()> {
    if !dfs_common::local_cluster::kill_and_wait(n, Duration::from_secs(60)).await {
        bail!(
            "{} (pid {:?}) did not exit within 60 s of SIGKILL",
            n.name,
            n.pid
        );
    }
    Ok(())
}

/// Where the server binaries are: `DFS_BIN_DIR`, else beside this dfsctl.
fn binary(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("DFS_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(name),
        Err(_) => PathBuf::from(name),
    }
}

/// Whether an HTTP server answers at `addr` (any status: `/healthz` says 503 while a node
/// has no leader, and that node is serving all the same).
async fn answers_http(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.ok()?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        (&head == b"HTTP/").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), ask).await,
        Ok(Some(()))
    )
}

fn spawn(node: &mut LocalNode) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(&node.data_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.data_dir.join("log"))?;
    let bin = binary(if node.kind == "meta" {
        "metasrv"
    } else {
        "chunksrv"
    });
    let child = Command::new(&bin)
        .args(&node.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (built? `cargo build --release`)",
                bin.display()
            )
        })?;
    node.pid = Some(child.id());
    Ok(())
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we started; no memory is touched.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn log_tail(node: &LocalNode) -> String {
    use std::io::{Read, Seek, SeekFrom};
    // The last 64 KiB at most: a log can be huge (or a device that never ends).
    const TAIL: u64 = 64 * 1024;
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(node.data_dir.join("log")) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
        let _ = f.take(TAIL).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n    ")
}

fn new_cluster(dir: &Path, a: &UpArgs) -> anyhow::Result<LocalCluster> {
    if a.metas == 0 {
        bail!("--metas must be at least 1");
    }
    let dir = std::fs::canonicalize(dir)?;
    let secret = dir.join("cluster.secret");
    dfs_common::durable::write_secret(&secret, dfs_common::keys::generate_key().as_bytes())?;
    let secret = secret.display().to_string();
    if !a.insecure {
        // A fresh CA per cluster (a leftover from an earlier layout is replaced).
        let _ = std::fs::remove_dir_all(dir.join("tls"));
        dfs_common::pki::init_ca(&dir.join("tls"), "local", 3650)?;
    }
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for i in 1..=a.metas {
        let (addr, source) = node_addr(a.own_addresses, Role::Meta, i)?;
        peers.push(format!("{i}={addr}"));
        nodes.push((i, addr, source, free_addr()?));
    }
    let peers = peers.join(",");
    let mut out = LocalCluster::default();
    for (i, addr, source, metrics) in nodes {
        let data_dir = dir.join(format!("meta-{i}"));
        let mut args = vec![
            format!("--id={i}"),
            format!("--listen={addr}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--peers={peers}"),
            format!("--metrics={metrics}"),
            format!("--cluster-secret-file={secret}"),
        ];
        args.extend(source);
        args.extend(tls_args(&dir, a.insecure, Role::Meta, i)?);
        if i == 1 {
            args.push(format!(
                "--admin-auth-out={}",
                dir.join("admin.auth").display()
            ));
        }
        args.extend(a.meta_args.iter().cloned());
        out.nodes.push(LocalNode {
            name: format!("meta-{i}"),
            kind: "meta".into(),
            id: i as u64,
            addr,
            metrics_addr: metrics,
            data_dir,
            args,
            pid: None,
        });
    }
    let metas = out.meta_addrs().join(",");
    for i in 1..=a.chunks {
        let (addr, source) = node_addr(a.own_addresses, Role::Chunk, i)?;
        let metrics = free_addr()?;
        let data_dir = dir.join(format!("chunk-{i}"));
        let mut args = vec![
            format!("--listen={addr}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--meta={metas}"),
            format!("--metrics={metrics}"),
        ];
        args.extend(source);
        // With TLS a chunk server holds no cluster secret: its certificate proves who it is
        // and the metadata group hands it its own token key.
        if a.insecure {
            args.push(format!("--cluster-secret-file={secret}"));
        }
        args.extend(tls_args(&dir, a.insecure, Role::Chunk, i)?);
        args.extend(a.chunk_args.iter().cloned());
        out.nodes.push(LocalNode {
            name: format!("chunk-{i}"),
            kind: "chunk".into(),
            id: i as u64,
            addr,
            metrics_addr: metrics,
            data_dir,
            args,
            pid: None,
        });
    }
    Ok(out)
}

/// Wait until a leader answers with the admin key and every chunk server is live.
async fn wait_ready(
    dir: &Path,
    cluster: &LocalCluster,
    chunks: usize,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let auth = dir.join("admin.auth");
    let mut last_problem = String::from("starting");
    while Instant::now() < deadline {
        for n in &cluster.nodes {
            if !alive(n.pid, &n.kind) {
                bail!(
                    "{} exited during start-up; its log ends with:\n    {}",
                    n.name,
                    log_tail(n)
                );
            }
        }
        if auth.exists() {
            let conn = crate::client::MetaConn::connect(
                &cluster.meta_addrs(),
                Some(&auth),
                Duration::from_secs(2),
            )?
            .with_tls(local_tls(dir)?)?;
            match crate::rpc!(
                conn,
                cluster_status,
                dfs_proto::StatusRequest { stale: false }
            ) {
                Ok(s) => {
                    let live = s.chunk_servers.iter().filter(|c| c.live).count();
                    if s.leader != 0 && live >= chunks {
                        return Ok(());
                    }
                    last_problem =
                        format!("leader {}, {live}/{chunks} chunk servers live", s.leader);
                }
                Err(e) if e.code() == tonic::Code::Unauthenticated => {
                    // A node that lags may not know the user yet: ask the leader before
                    // giving up. A key the leader refuses never becomes right by waiting.
                    let confirmed = crate::rpc!(conn, who_am_i, dfs_proto::Empty {});
                    match confirmed {
                        Err(e) if e.code() == tonic::Code::Unauthenticated => {
                            bail!("{}", refused_admin_hint(dir, cluster, &auth, e.message()))
                        }
                        Err(e) => last_problem = e.message().to_string(),
                        Ok(_) => last_problem = "a lagging node did not know the admin yet".into(),
                    }
                }
                Err(e) => last_problem = e.message().to_string(),
            }
        } else {
            last_problem = "waiting for the admin user to be created".into();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the local cluster did not become ready in {} s ({last_problem}); see the logs under {}",
        wait.as_secs(),
        dir.display()
    )
}

/// What to say when the cluster refuses the local admin's auth file: which file, why it
/// happens (the user was removed or given a new key) and how to get back in.
fn refused_admin_hint(dir: &Path, cluster: &LocalCluster, auth: &Path, why: &str) -> String {
    let user = dfs_common::auth_file::read(auth)
        .map(|c| c.user)
        .unwrap_or_else(|_| "admin".into());
    format!(
        "the cluster refuses the local admin's auth file {auth} ({why}): user {user:?} was removed \
         (`dfsctl user remove {user}`) or given another key, and waiting does not fix that. The \
         nodes are running. To get back in, with the auth file of another admin: \
         mv {auth} {auth}.old && dfsctl --meta {meta} --auth-file OTHER-ADMIN.auth user add {user} \
         --admin --out {auth}; then run `dfsctl local up --dir {dir}` again",
        auth = auth.display(),
        meta = cluster.meta_addrs().join(","),
        dir = dir.display(),
    )
}

/// Quote `s` for a POSIX shell (single quotes; an embedded `'` becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The env file: `DFS_META`, `DFS_AUTH_FILE`, and the directory of this `dfsctl` (where the
/// server binaries are too) first on `PATH`, so `source .dfs/env` is all a new user needs.
fn write_env(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<PathBuf> {
    let dir = std::fs::canonicalize(dir)?;
    // DFS_LOCAL_DIR: `dfsctl local status|kill|start|down` then find this cluster from any
    // directory, and `cluster status` can name its nodes.
    let mut text = format!(
        "export DFS_META={}\nexport DFS_AUTH_FILE={}\nexport DFS_LOCAL_DIR={}\n",
        cluster.meta_addrs().join(","),
        sh_quote(&dir.join("admin.auth").display().to_string()),
        sh_quote(&dir.display().to_string())
    );
    // Clients check the nodes' certificates against the local CA (empty: plain TCP).
    text.push_str(&format!(
        "export DFS_TLS_CA={}\n",
        sh_quote(
            &local_ca(&dir)
                .map(|c| c.display().to_string())
                .unwrap_or_default()
        )
    ));
    if let Some(bin_dir) = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        text.push_str(&format!(
            "export PATH={}:\"$PATH\"\n",
            sh_quote(&bin_dir.display().to_string())
        ));
    }
    let p = dir.join("env");
    dfs_common::durable::write_atomic(&p, text.as_bytes())?;
    Ok(p)
}

/// Prometheus file-based service discovery for this cluster: `prometheus/targets/metasrv.json`
/// and `chunksrv.json`, one target group per node (label `node`), as `deploy/prometheus`
/// expects them beside its prometheus.yml.
fn write_prometheus_targets(dir: &Path, cluster: &LocalCluster) -> anyhow::Result<()> {
    let targets = dir.join("prometheus").join("targets");
    std::fs::create_dir_all(&targets)?;
    for (kind, file) in [("meta", "metasrv.json"), ("chunk", "chunksrv.json")] {
        let groups: Vec<serde_json::Value> = cluster
            .nodes
            .iter()
            .filter(|n| n.kind == kind)
            .map(|n| json!({"targets": [n.metrics_addr], "labels": {"node": n.name}}))
            .collect();
        dfs_common::durable::write_atomic(
            &targets.join(file),
            &serde_json::to_vec_pretty(&groups)?,
        )?;
    }
    Ok(())
}

async fn up(ctx: &Ctx, a: UpArgs) -> anyhow::Result<i32> {
    let dir = &a.dir.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let existing = LocalCluster::load(dir).ok();
    let fresh = existing.is_none();
    let mut attempt = 0;
    let (cluster, started, chunks) = loop {
        attempt += 1;
        let mut cluster = match &existing {
            Some(c) => c.clone(),
            None => new_cluster(dir, &a)?,
        };
        let mut started = 0;
        for n in &mut cluster.nodes {
            if !alive(n.pid, &n.kind) {
                spawn(n)?;
                started += 1;
            }
        }
        cluster.save(dir)?;
        let chunks = cluster.nodes.iter().filter(|n| n.kind == "chunk").count();
        match wait_ready(dir, &cluster, chunks, Duration::from_secs(a.wait)).await {
            Ok(()) => break (cluster, started, chunks),
            // A new cluster whose node lost a port race: lay it out again on other ports.
            Err(e) if fresh && attempt < 3 && e.to_string().contains("exited during start-up") => {
                discard(dir, &cluster);
            }
            Err(e) => return Err(e),
        }
    };
    let env = write_env(dir, &cluster)?;
    write_prometheus_targets(dir, &cluster)?;
    let metas = cluster.nodes.len() - chunks;
    let mounted = match &a.mount {
        Some(m) => {
            let (dir, meta, m) = (dir.clone(), cluster.meta_addrs(), m.clone());
            let wait = Duration::from_secs(a.wait);
            let mount =
                tokio::task::spawn_blocking(move || local_mount::start(&dir, &meta, &m, wait))
                    .await??;
            Some(mount.mountpoint)
        }
        None => None,
    };
    let gateway = if a.no_gateway {
        None
    } else {
        start_gateway(ctx, dir, &cluster, Duration::from_secs(a.wait)).await?
    };
    let gateway_url = gateway.as_ref().map(|g| g.url.clone());
    if ctx.json {
        print_json(
            &json!({"dir": std::fs::canonicalize(dir)?, "env": env, "started": started, "meta": cluster.meta_addrs(), "mount": mounted, "gateway": gateway_url}),
        );
    } else {
        println!("{}", std::fs::read_to_string(&env)?.trim_end());
        if let Some(url) = &gateway_url {
            println!(
                "# WebDAV: {url} (user and password: the two halves of {})",
                dir.join("admin.auth").display()
            );
        }
        if let (Some(m), false) = (&mounted, ctx.quiet) {
            eprintln!(
                "mounted on {} (log: {})",
                m.display(),
                dir.join("mount.log").display()
            );
        }
        if !ctx.quiet {
            eprintln!(
                "local cluster is up: {metas} metadata node(s), {chunks} chunk server(s) in {} ({started} started now).\n\
                 Next:  source {}\n       dfsctl put ./some-file /some-file && dfsctl ls -l /\n\
                 Stop:  dfsctl local down --dir {}",
                dir.display(),
                env.display(),
                dir.display()
            );
        }
    }
    Ok(0)
}

/// Start the local WebDAV gateway (on the addresses it had before, when they are free). A
/// missing binary or a failed start is a warning: the cluster itself is up.
async fn start_gateway(
    ctx: &Ctx,
    dir: &Path,
    cluster: &LocalCluster,
    wait: Duration,
) -> anyhow::Result<Option<local_gateway::LocalGateway>> {
    if let Some(g) = local_gateway::running(dir) {
        return Ok(Some(g));
    }
    if local_gateway::binary().is_none() {
        if !ctx.quiet {
            eprintln!("note: no dfs-gateway beside dfsctl, so no WebDAV gateway was started");
        }
        return Ok(None);
    }
    let previous: Option<local_gateway::LocalGateway> = std::fs::read(dir.join("gateway.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let free = |a: &str| std::net::TcpListener::bind(a).is_ok();
    let (listen, metrics) = match previous {
        Some(p) => {
            let listen = p
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            if free(&listen) && free(&p.metrics_addr) {
                (listen, p.metrics_addr)
            } else {
                (free_addr()?, free_addr()?)
            }
        }
        None => (free_addr()?, free_addr()?),
    };
    let (d, meta) = (dir.to_path_buf(), cluster.meta_addrs());
    match tokio::task::spawn_blocking(move || {
        local_gateway::start(&d, &meta, &listen, &metrics, wait)
    })
    .await?
    {
        Ok(g) => Ok(Some(g)),
        Err(e) => {
            eprintln!("warning: the WebDAV gateway did not start: {e:#}");
            Ok(None)
        }
    }
}

/// The cluster ids of the local nodes, by address (metadata members and chunk servers), as the
/// cluster itself reports them: a chunk server's id is given by the metadata group when it
/// first registers, so `chunk-2` may be id 3. Empty when the cluster does not answer soon
/// (status then shows the names only).
async fn cluster_ids(dir: &Path, c: &LocalCluster) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    if !c
        .nodes
        .iter()
        .any(|n| n.kind == "meta" && alive(n.pid, &n.kind))
    {
        return out; // nothing to ask: no waiting after `local down`
    }
    let wait = Duration::from_secs(2);
    let Ok(conn) =
        crate::client::MetaConn::connect(&c.meta_addrs(), Some(&dir.join("admin.auth")), wait)
            .map_err(anyhow::Error::from)
            .and_then(|conn| Ok(conn.with_tls(local_tls(dir)?)?))
    else {
        return out;
    };
    let ask = async {
        crate::rpc!(
            conn,
            cluster_status,
            dfs_proto::StatusRequest { stale: true }
        )
    };
    if let Ok(Ok(s)) = tokio::time::timeout(wait + Duration::from_millis(500), ask).await {
        out.extend(s.members.iter().map(|m| (m.addr.clone(), m.id)));
        out.extend(s.chunk_servers.iter().map(|c| (c.addr.clone(), c.id)));
    }
    out
}

/// The local node names by address, when the local cluster (`DFS_LOCAL_DIR`, else `.dfs`) is
/// the one `meta` points at; empty otherwise. For `cluster status`.
pub fn local_names(meta: &[String]) -> std::collections::HashMap<String, String> {
    let dir = std::env::var_os("DFS_LOCAL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".dfs"));
    let Ok(c) = LocalCluster::load(&dir) else {
        return Default::default();
    };
    if !c.meta_addrs().iter().any(|a| meta.contains(a)) {
        return Default::default();
    }
    c.nodes.into_iter().map(|n| (n.addr, n.name)).collect()
}

pub async fn run(ctx: &Ctx, cmd: LocalCmd) -> anyhow::Result<i32> {
    match cmd {
        LocalCmd::Up(a) => up(ctx, a).await,
        LocalCmd::Status(d) => {
            let c = LocalCluster::load(&d.dir)?;
            let ids = cluster_ids(&d.dir, &c).await;
            for n in &c.nodes {
                let live = alive(n.pid, &n.kind);
                let id = ids.get(&n.addr).copied();
                if ctx.json {
                    print_json(
                        &json!({"name": n.name, "id": id, "pid": n.pid, "addr": n.addr, "metrics_addr": n.metrics_addr, "alive": live}),
                    );
                } else {
                    let pid = n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                    let name = match id {
                        Some(id) => format!("{} (id {id})", n.name),
                        None => n.name.clone(),
                    };
                    println!(
                        "{:<16} {:>8} {:<22} {:<22} {}",
                        name,
                        pid,
                        n.addr,
                        n.metrics_addr,
                        if live { "alive" } else { "DOWN" }
                    );
                }
            }
            if let Some(g) = local_gateway::running(&d.dir) {
                if ctx.json {
                    print_json(
                        &json!({"name": "gateway", "pid": g.pid, "url": g.url, "metrics_addr": g.metrics_addr, "alive": true}),
                    );
                } else {
                    println!(
                        "{:<16} {:>8} {:<22} {:<22} alive",
                        "gateway", g.pid, g.url, g.metrics_addr
                    );
                }
            }
            if let Some(m) = local_mount::running(&d.dir) {
                if ctx.json {
                    print_json(
                        &json!({"name": "mount", "pid": m.pid, "mountpoint": m.mountpoint, "alive": true}),
                    );
                } else {
                    println!("{:<16} {:>8} {}", "mount", m.pid, m.mountpoint.display());
                }
            }
            Ok(0)
        }
        LocalCmd::Down(d) => {
            let c = LocalCluster::load(&d.dir)?;
            // Unmounted first: a mount of a stopped cluster would make the folder hang.
            let unmounted = {
                let dir = d.dir.clone();
                tokio::task::spawn_blocking(move || local_mount::stop(&dir)).await??
            };
            if let (Some(m), false, false) = (&unmounted, ctx.json, ctx.quiet) {
                eprintln!("unmounted {}", m.display());
            }
            let gateway = {
                let dir = d.dir.clone();
                tokio::task::spawn_blocking(move || local_gateway::stop(&dir)).await??
            };
            if let (Some(g), false, false) = (&gateway, ctx.json, ctx.quiet) {
                eprintln!("stopped the WebDAV gateway on {}", g.url);
            }
            let running: Vec<&LocalNode> =
                c.nodes.iter().filter(|n| alive(n.pid, &n.kind)).collect();
            for n in &running {
                signal(n.pid.unwrap_or(0), libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while running.iter().any(|n| alive(n.pid, &n.kind)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for n in running.iter().filter(|n| alive(n.pid, &n.kind)) {
                signal(n.pid.unwrap_or(0), libc::SIGKILL);
            }
            if ctx.json {
                print_json(
                    &json!({"ok": true, "stopped": running.len(), "dir": d.dir.to_string_lossy(), "unmounted": unmounted}),
                );
            } else if !ctx.quiet {
                eprintln!(
                    "stopped {} node(s); data kept in {}",
                    running.len(),
                    d.dir.display()
                );
            }
            Ok(0)
        }
        LocalCmd::Kill { dir, node } => {
            let mut c = LocalCluster::load(&dir.dir)?;
            let n = c.node_mut(&node)?;
            let was_running = alive(n.pid, &n.kind);
            if was_running {
                kill_and_wait(n).await?;
            }
            if ctx.json {
                print_json(
                    &json!({"ok": true, "node": node, "pid": n.pid, "was_running": was_running, "alive": alive(n.pid, &n.kind)}),
                );
            }
            Ok(0)
        }
        LocalCmd::Start { dir, node } => {
            let mut c = LocalCluster::load(&dir.dir)?;
            let n = c.node_mut(&node)?;
            if alive(n.pid, &n.kind) {
                bail!("{node} is already running (pid {})", n.pid.unwrap_or(0));
            }
            spawn(n)?;
            let n = n.clone();
            c.save(&dir.dir)?;
            // Return once it serves, so the next command finds it serving. A node binds its
            // ports before it opens its store, so a listening port alone says nothing: wait
            // for an HTTP answer on its metrics address (served once the store is open), or
            // for its exit (a store it cannot open).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !answers_http(&n.metrics_addr).await
                || tokio::net::TcpStream::connect(&n.addr).await.is_err()
            {
                if !alive(n.pid, &n.kind) {
                    bail!(
                        "{node} exited while starting; see {}",
                        n.data_dir.join("log").display()
                    );
                }
                if Instant::now() >= deadline {
                    bail!("{node} did not start serving on {} within 30 s", n.addr);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if ctx.json {
                print_json(
                    &json!({"ok": true, "node": node, "pid": n.pid, "addr": n.addr, "alive": true}),
                );
            }
            Ok(0)
        }
        LocalCmd::Pause { dir, node, resume } => {
            let mut c = LocalCluster::load(&dir.dir)?;
            let n = c.node_mut(&node)?;
            if !alive(n.pid, &n.kind) {
                bail!("{node} is not running");
            }
            signal(
                n.pid.unwrap_or(0),
                if resume { libc::SIGCONT } else { libc::SIGSTOP },
            );
            if ctx.json {
                print_json(&json!({"ok": true, "node": node, "pid": n.pid, "paused": !resume}));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::answers_http;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_bound_port_that_does_not_serve_is_not_an_answer() {
        // Bound (connections complete in the kernel's backlog) but never accepted: what a
        // node looks like while it opens its store, or just before it exits on a bad one.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(!answers_http(&silent.local_addr().unwrap().to_string()).await);

        let serving = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = serving.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = serving.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\n")
                .await
                .unwrap();
        });
        assert!(answers_http(&addr).await, "any status is an answer");
    }
}
