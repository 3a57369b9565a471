//! Helpers for cluster tests: start a real local cluster (`dfsctl local up`) in a temp dir on
//! free ports, run `dfsctl` against it, kill and restart nodes, and wait for conditions.
//! Every test gets its own directory and ports, so tests run in parallel.
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where cargo put the binaries (`target/<profile>`), or `DFS_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DFS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub meta: String,
    pub auth: PathBuf,
    /// The cluster CA (`DIR/tls/ca.pem`); `None` for a cluster started `--insecure`.
    pub ca: Option<PathBuf>,
}

/// The result of one dfsctl run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Assert success and return stdout.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "dfsctl failed: {}{}",
            self.stderr, self.stdout
        );
        self.stdout
    }

    /// Assert failure with exit code 1 and a one-line message containing `needle`.
    pub fn fails_with(self, needle: &str) -> String {
        assert_eq!(
            self.code, 1,
            "expected failure, got {}: {}{}",
            self.code, self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "stderr {:?} lacks {needle:?}",
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "one error line, got {:?}",
            self.stderr
        );
        self.stderr
    }

    pub fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// metasrv flags that shrink the write-lease clocks from minutes to seconds: token lifetime
/// 1 s, commit grace 1 s (so a write older than 2 s needs a lease), orphan grace 3 s, lease
/// timeout 3 s; chunks of 64 KiB.
pub const SHORT_LEASE_FLAGS: &[&str] = &[
    "--chunk-size=65536",
    "--token-ttl-secs=1",
    "--commit-grace=1s",
    "--gc-grace-ms=3000",
    "--lease-timeout=3s",
];
/// chunksrv flags for those tests: a chunk file each, and a full chunk report every 3 s.
pub const FAST_REPORT_FLAGS: &[&str] = &["--pack-max=0", "--heartbeat-ms=100"];

impl Cluster {
    /// Start `metas` metadata nodes and `chunks` chunk servers; extra args go to every metasrv.
    pub fn up(metas: u32, chunks: u32, meta_args: &[&str]) -> Cluster {
        Self::up_with(metas, chunks, meta_args, &[])
    }

    /// As `up`, but every chunk gets a file of its own (no packs), for tests that look at
    /// chunk files on disk.
    pub fn up_files(metas: u32, chunks: u32, meta_args: &[&str]) -> Cluster {
        Self::up_with(metas, chunks, meta_args, &["--pack-max=0"])
    }

    pub fn up_with(metas: u32, chunks: u32, meta_args: &[&str], chunk_args: &[&str]) -> Cluster {
        Self::launch(metas, chunks, meta_args, chunk_args, &[])
    }

    /// A cluster without TLS (`local up --insecure`): plain TCP, node proofs from the secret.
    pub fn up_insecure(metas: u32, chunks: u32) -> Cluster {
        Self::launch(metas, chunks, &[], &[], &["--insecure"])
    }

    fn launch(
        metas: u32,
        chunks: u32,
        meta_args: &[&str],
        chunk_args: &[&str],
        local_args: &[&str],
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("dfs-test-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new(bin("dfsctl"));
        // No WebDAV gateway: tests/tests/gateway.rs starts its own.
        cmd.args(["local", "up", "--quiet", "--no-gateway", "--dir"])
            .arg(dir.path())
            .arg(format!("--metas={metas}"))
            .arg(format!("--chunks={chunks}"));
        for a in meta_args {
            cmd.arg(format!("--meta-arg={a}"));
        }
        for a in chunk_args {
            cmd.arg(format!("--chunk-arg={a}"));
        }
        cmd.args(local_args);
        let out = Run::from(
            cmd.env_remove("DFS_META")
                .env_remove("DFS_AUTH_FILE")
                .output()
                .expect("run dfsctl"),
        );
        if out.code != 0 {
            let mut logs = String::new();
            for e in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(t) = std::fs::read_to_string(e.path().join("log")) {
                    let tail: Vec<&str> = t.lines().rev().take(15).collect();
                    logs.push_str(&format!(
                        "--- {}\n{}\n",
                        e.file_name().to_string_lossy(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
            }
            panic!("local up failed: {}\n{logs}", out.stderr);
        }
        let env = std::fs::read_to_string(dir.path().join("env")).expect("env file");
        let meta = env
            .lines()
            .find_map(|l| l.strip_prefix("export DFS_META="))
            .expect("DFS_META in env")
            .to_string();
        let auth = dir.path().join("admin.auth");
        let ca = Some(dir.path().join("tls").join("ca.pem")).filter(|p| p.exists());
        Cluster {
            dir,
            meta,
            auth,
            ca,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `DFS_TLS_CA` for a process talking to this cluster (empty: plain TCP).
    pub fn ca_env(&self) -> std::ffi::OsString {
        self.ca.clone().map(Into::into).unwrap_or_default()
    }

    /// Client options for this cluster's admin through the members in `meta`.
    pub fn client_options(&self, meta: &str) -> dfs_client::ClientOptions {
        let mut opts = dfs_client::ClientOptions::new(meta.split(',').map(String::from).collect());
        opts.auth_file = Some(self.auth.clone());
        opts.tls_ca = self.ca.clone();
        opts
    }

    /// The flags for a node started by hand as `role` `id`: a certificate from this cluster's
    /// CA (`--insecure` for a plain-text cluster).
    pub fn node_tls_args(&self, role: dfs_common::pki::Role, id: u64) -> Vec<String> {
        let Some(ca) = &self.ca else {
            return vec!["--insecure".into()];
        };
        let tls = self.path().join("tls");
        let out = dfs_common::pki::issue(
            &tls,
            &dfs_common::pki::Identity::new(role, &id.to_string()).expect("identity"),
            &[],
            &tls,
            30,
        )
        .expect("issue a node certificate");
        vec![
            format!("--tls-cert={}", out.cert.display()),
            format!("--tls-key={}", out.key.display()),
            format!("--tls-ca={}", ca.display()),
        ]
    }

    /// A gRPC channel to the metadata node at `addr`, as a client (TLS if the cluster has it).
    pub fn meta_channel(&self, addr: &str) -> tonic::transport::Channel {
        dfs_client::lazy_channel(addr, self.tls().as_ref(), dfs_common::pki::Role::Meta)
            .expect("metadata node address")
    }

    /// A gRPC channel to the chunk server at `addr`, as a client (TLS if the cluster has it).
    pub fn chunk_channel(&self, addr: &str) -> tonic::transport::Channel {
        dfs_client::lazy_channel(addr, self.tls().as_ref(), dfs_common::pki::Role::Chunk)
            .expect("chunk server address")
    }

    /// The TLS a client of this cluster uses (`None`: it runs `--insecure`).
    pub fn tls(&self) -> Option<std::sync::Arc<dfs_common::tls::Tls>> {
        self.ca
            .as_ref()
            .map(|ca| dfs_common::tls::Tls::client_only(ca).expect("cluster CA"))
    }

    /// Run dfsctl as the admin.
    pub fn ctl(&self, args: &[&str]) -> Run {
        self.ctl_as(&self.auth, args)
    }

    /// Run dfsctl with another auth file.
    pub fn ctl_as(&self, auth: &Path, args: &[&str]) -> Run {
        self.ctl_env(&self.meta, auth, args, None)
    }

    /// dfsctl with `args` against chosen metadata addresses, its stdio piped.
    fn ctl_command(&self, meta: &str, auth: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("dfsctl"));
        cmd.args(args)
            .env("DFS_META", meta)
            .env("DFS_AUTH_FILE", auth)
            .env("DFS_TLS_CA", self.ca_env())
            .env("DFS_LOCAL_DIR", self.path())
            .env("DFS_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    /// Start dfsctl as the admin user in the background (the caller waits for it).
    pub fn ctl_spawn(&self, args: &[&str]) -> std::process::Child {
        let mut cmd = self.ctl_command(&self.meta, &self.auth, args);
        cmd.stdin(std::process::Stdio::null());
        cmd.spawn().expect("spawn dfsctl")
    }

    /// Run dfsctl against chosen metadata addresses, optionally feeding stdin.
    pub fn ctl_env(&self, meta: &str, auth: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
        use std::io::Write;
        let mut child = self
            .ctl_command(meta, auth, args)
            .spawn()
            .expect("spawn dfsctl");
        {
            let mut sin = child.stdin.take().expect("stdin");
            if let Some(b) = stdin {
                sin.write_all(b).expect("write stdin");
            }
        }
        Run::from(child.wait_with_output().expect("dfsctl output"))
    }

    pub fn local(&self, args: &[&str]) -> Run {
        let mut a = vec!["local"];
        a.extend_from_slice(&args[..1]);
        a.push("--dir");
        let d = self.path().display().to_string();
        a.push(&d);
        a.extend_from_slice(&args[1..]);
        self.ctl(&a)
    }

    pub fn kill(&self, node: &str) {
        self.local(&["kill", node]).ok();
    }

    pub fn start(&self, node: &str) {
        self.local(&["start", node]).ok();
    }

    /// The Prometheus text a node serves on its metrics address.
    pub fn metrics_text(&self, node: &str) -> String {
        let addr = self.node_field(node, "metrics_addr");
        http_get(&addr, "/metrics").expect("GET /metrics").1
    }

    /// A field of `node`'s entry in cluster.json.
    /// A node's entry in cluster.json (`null` when there is none).
    fn node_entry(&self, node: &str) -> Value {
        let cluster: Value =
            serde_json::from_slice(&std::fs::read(self.path().join("cluster.json")).unwrap())
                .unwrap();
        cluster["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == node))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn node_field(&self, node: &str, field: &str) -> String {
        self.node_entry(node)[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field} for node {node} in cluster.json"))
            .to_string()
    }

    /// The process id of a node (`meta-1`, `chunk-2`, ...) from cluster.json.
    pub fn node_pid(&self, node: &str) -> i32 {
        self.node_entry(node)["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no pid for node {node} in cluster.json")) as i32
    }

    /// The address a node listens on.
    pub fn node_addr(&self, node: &str) -> String {
        self.node_field(node, "addr")
    }

    /// Stop a node with SIGSTOP (its sockets stay open; it answers nothing) until the returned
    /// guard is dropped.
    pub fn freeze(&self, node: &str) -> Frozen {
        let pid = self.node_pid(node);
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {node}"
        );
        Frozen(pid)
    }

    pub fn status(&self) -> Value {
        self.ctl(&["--json", "--timeout", "5", "cluster", "status"])
            .json()
    }

    /// The leader's id, once a leader is elected.
    pub fn leader(&self) -> u64 {
        let mut leader = 0;
        wait_until(Duration::from_secs(20), "a leader", || {
            let r = self.ctl(&["--json", "--timeout", "3", "cluster", "status"]);
            if r.code != 0 {
                return false;
            }
            let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or(Value::Null);
            leader = v["leader"].as_u64().unwrap_or(0);
            leader != 0
        });
        leader
    }

    /// Addresses of the metadata nodes, in node order.
    pub fn meta_addrs(&self) -> Vec<String> {
        self.meta.split(',').map(str::to_string).collect()
    }

    /// Wait until every member reports the same applied index (at least `min`).
    pub fn wait_converged(&self, members: usize, min: u64) {
        wait_until(Duration::from_secs(30), "members to converge", || {
            let r = self.ctl(&["--json", "--timeout", "3", "cluster", "status"]);
            let Ok(v) = serde_json::from_str::<Value>(r.stdout.trim()) else {
                return false;
            };
            let Some(ms) = v["members"].as_array() else {
                return false;
            };
            let applied: Vec<u64> = ms
                .iter()
                .map(|m| m["applied"].as_u64().unwrap_or(0))
                .collect();
            ms.len() == members
                && ms.iter().all(|m| m["reachable"] == true)
                && applied.iter().all(|a| *a == applied[0] && *a >= min)
        });
    }

    /// Create a user and return its auth file.
    pub fn add_user(&self, name: &str) -> PathBuf {
        let p = self.path().join(format!("{name}.auth"));
        self.ctl(&["user", "add", name, "--out", p.to_str().expect("utf8 path")])
            .ok();
        p
    }

    /// Put `data` at `remote` as the user of `auth` (`extra` args follow the paths).
    pub fn put_data(&self, auth: &Path, remote: &str, data: &[u8], extra: &[&str]) -> Run {
        let local = self
            .path()
            .join(format!("upload-{}", rand::random::<u64>()));
        std::fs::write(&local, data).expect("write upload file");
        let mut args = vec!["put", local.to_str().expect("utf-8 path"), remote];
        args.extend_from_slice(extra);
        let run = self.ctl_as(auth, &args);
        let _ = std::fs::remove_file(&local);
        run
    }

    /// Get `remote` as the user of `auth`; panics unless the get succeeds.
    pub fn get_data(&self, auth: &Path, remote: &str) -> Vec<u8> {
        let local = self
            .path()
            .join(format!("download-{}", rand::random::<u64>()));
        self.ctl_as(auth, &["get", remote, local.to_str().expect("utf-8 path")])
            .ok();
        let b = std::fs::read(&local).expect("downloaded file");
        let _ = std::fs::remove_file(&local);
        b
    }

    /// Chunk files (primary copies, not temp files) on one chunk server.
    pub fn chunk_files(&self, server: &str) -> Vec<PathBuf> {
        let root = self.path().join(server).join("chunks");
        std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fan| fan.file_name() != "packs")
            .flat_map(|fan| {
                std::fs::read_dir(fan.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
            .map(|f| f.path())
            .collect()
    }

    /// Chunk files on every chunk server of the cluster.
    pub fn all_chunk_files(&self) -> usize {
        std::fs::read_dir(self.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("chunk-"))
            .map(|e| self.chunk_files(&e.file_name().to_string_lossy()).len())
            .sum()
    }

    /// Start `dfsctl put - remote`, feed it `data`, and SIGKILL it once `under_way` holds (for
    /// example: some of its chunks are on disk). Nothing is committed then.
    pub fn kill_put_midway(&self, remote: &str, data: &[u8], mut under_way: impl FnMut() -> bool) {
        use std::io::Write;
        let mut child = Command::new(bin("dfsctl"))
            .args(["put", "-", remote])
            .env("DFS_META", &self.meta)
            .env("DFS_AUTH_FILE", &self.auth)
            .env("DFS_TLS_CA", self.ca_env())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dfsctl put");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(data).expect("feed the put");
        stdin.flush().expect("feed the put");
        wait_until(Duration::from_secs(20), "the put under way", &mut under_way);
        child.kill().expect("kill dfsctl put");
        let _ = child.wait();
    }

    pub fn secret_file(&self) -> PathBuf {
        self.path().join("cluster.secret")
    }

    /// Start metasrv `id`, empty, to join this cluster listening on `addr` (data in
    /// `meta-<id>/`, log in `meta-<id>.log`); the caller adds it with `cluster add-member`
    /// and kills it when done.
    pub fn spawn_joining_meta(&self, id: u64, addr: &str) -> std::process::Child {
        let log = std::fs::File::create(self.path().join(format!("meta-{id}.log"))).unwrap();
        Command::new(bin("metasrv"))
            .args(["--id", &id.to_string(), "--join", "--listen", addr])
            .args(["--metrics", &free_addr()])
            .arg("--data-dir")
            .arg(self.path().join(format!("meta-{id}")))
            .arg("--cluster-secret-file")
            .arg(self.secret_file())
            .args(self.node_tls_args(dfs_common::pki::Role::Meta, id))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(bin("dfsctl"))
            .args(["local", "down", "--quiet", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}

/// Panic with `diff -r`'s output unless the local trees `a` and `b` are equal (names matching
/// an `exclude` pattern aside).
pub fn assert_same_tree(a: &Path, b: &Path, exclude: &[&str]) {
    let out = Command::new("diff")
        .arg("-r")
        .args(exclude.iter().flat_map(|x| ["-x", x]))
        .arg(a)
        .arg(b)
        .output()
        .expect("run diff");
    assert!(
        out.status.success(),
        "trees differ:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// GET `path` from `addr` over HTTP/1.0: status code and body (a stuck server fails the
/// read after 15 s instead of hanging the test).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Flip one bit of the byte at `at` in `path` (damage on disk).
pub fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

/// A free loopback address.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// A node stopped by [`Cluster::freeze`]; resumed (SIGCONT) when dropped, so a failed test
/// leaves nothing frozen.
pub struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Run dfsctl with `args`, without the caller's `DFS_META`/`DFS_AUTH_FILE` and with `env`
/// added; panic with its stderr unless it succeeds. Returns its stdout.
pub fn dfsctl_ok(args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let out = Command::new(bin("dfsctl"))
        .args(args)
        .env_remove("DFS_META")
        .env_remove("DFS_AUTH_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dfsctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A cluster started by `dfsctl local up --quiet` (plus `extra`) in a temp directory of its
/// own, stopped with `local down` when dropped.
pub struct LocalUp {
    pub dir: tempfile::TempDir,
    /// What `local up` printed.
    pub out: String,
}

impl LocalUp {
    pub fn start(extra: &[&str]) -> LocalUp {
        let dir = tempfile::Builder::new()
            .prefix("dfs-test-")
            .tempdir()
            .unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let mut args = vec!["local", "up", "--quiet", "--dir", &d];
        args.extend_from_slice(extra);
        let out = String::from_utf8_lossy(&dfsctl_ok(&args, &[])).into_owned();
        LocalUp { dir, out }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `local <args> --dir <this cluster>`; its stdout.
    pub fn local(&self, args: &[&str]) -> String {
        let d = self.path().to_str().unwrap();
        let mut all = vec!["local"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--dir", d]);
        String::from_utf8_lossy(&dfsctl_ok(&all, &[])).into_owned()
    }

    /// A dfsctl command as the cluster's admin (the settings of its env file).
    pub fn ctl(&self, args: &[&str]) -> Vec<u8> {
        let env = std::fs::read_to_string(self.path().join("env")).unwrap();
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                .unwrap_or_else(|| panic!("{k} in {env}"))
                .trim_matches(['"', '\''])
                .to_string()
        };
        let (meta, auth, ca) = (var("DFS_META"), var("DFS_AUTH_FILE"), var("DFS_TLS_CA"));
        dfsctl_ok(
            args,
            &[
                ("DFS_META", &meta),
                ("DFS_AUTH_FILE", &auth),
                ("DFS_TLS_CA", &ca),
            ],
        )
    }
}

impl Drop for LocalUp {
    fn drop(&mut self) {
        let _ = Command::new(bin("dfsctl"))
            .args(["local", "down", "--quiet", "--dir"])
            .arg(self.dir.path())
            .output();
    }
}
