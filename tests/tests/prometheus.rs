//! The deployment in `deploy/` against real tools: promtool checks the Prometheus configuration
//! and runs the alert rules' unit tests, systemd-analyze verifies the units, and a real
//! Prometheus, configured by `deploy/prometheus` and pointed at a local cluster through the
//! file_sd targets `dfsctl local up` writes, scrapes every node. Through Prometheus's HTTP API:
//! every target is up, every metric in `deploy/README.md` exists (and no undocumented one), the
//! dashboard's queries run, a put moves the chunk byte counters, a leader SIGKILL moves the
//! leader-change counter, and the no-leader alert fires without a majority and clears once a
//! leader is back.
//!
//! Needs Debian's `prometheus` package (it brings `promtool`) and `systemd-analyze`; `.ci/run`
//! installs them. Without them these tests fail, saying so.
use dfs_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// An installed tool, or a failure that says how to install it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed, and this test needs it: install Debian's `{package}` package \
                 (`apt-get install -y {package}`; .ci/run does this)"
            )
        })
}

/// Run a tool, assert it succeeds, return its output.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_configuration_and_the_alert_tests_pass() {
    let promtool = tool("promtool", "prometheus");
    let dir = deploy().join("prometheus");
    let out = run_ok(
        Command::new(&promtool)
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
    );
    let out = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "alerts_test.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // The example targets and the compose targets are valid file_sd JSON.
    for f in [
        dir.join("targets/metasrv.json"),
        dir.join("targets/chunksrv.json"),
        deploy().join("compose/targets/metasrv.json"),
        deploy().join("compose/targets/chunksrv.json"),
    ] {
        let v: Value = serde_json::from_slice(&std::fs::read(&f).expect("targets file"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(v.as_array().is_some_and(|a| a
            .iter()
            .all(|g| g["targets"].as_array().is_some_and(|t| !t.is_empty()))));
    }
}

#[test]
fn systemd_units_verify() {
    let analyze = tool("systemd-analyze", "systemd");
    // `verify` insists that ExecStart exists: check the units as shipped, with the binaries'
    // install path (/usr/local/bin) pointed at the ones this build made.
    let tmp = tempfile::tempdir().expect("temp dir");
    let bins = bin_dir();
    let mut units = Vec::new();
    for name in [
        "dfs-metasrv.service",
        "dfs-chunksrv.service",
        "dfs-gateway.service",
    ] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(name)).expect("unit");
        assert!(text.contains("ExecStart=/usr/local/bin/"), "{name}");
        let local = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let p = tmp.path().join(name);
        std::fs::write(&p, local).expect("write unit");
        units.push(p);
    }
    bin("metasrv");
    bin("chunksrv");
    bin("dfs-gateway");
    let out = Command::new(&analyze)
        .arg("verify")
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("dfs-"),
        "systemd-analyze verify: {text}"
    );
}

/// `GET` over HTTP/1.0 (no chunked replies): status code and body.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server process, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start Prometheus with deploy/prometheus's configuration, scraping and evaluating every
    /// second, with the targets a local cluster wrote.
    fn start(cluster: &Cluster) -> Prometheus {
        let exe = tool("prometheus", "prometheus");
        let dir = tempfile::Builder::new()
            .prefix("dfs-prometheus-")
            .tempdir()
            .expect("temp dir");
        let src = deploy().join("prometheus");
        let mut config = std::fs::read_to_string(src.join("prometheus.yml")).expect("config");
        for (from, to) in [
            ("scrape_interval: 15s", "scrape_interval: 1s"),
            ("scrape_timeout: 10s", "scrape_timeout: 1s"),
            ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ] {
            assert!(
                config.contains(from),
                "deploy/prometheus/prometheus.yml no longer has {from:?}"
            );
            config = config.replace(from, to);
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        std::fs::copy(src.join("alerts.yml"), dir.path().join("alerts.yml")).expect("rules");
        let targets = dir.path().join("targets");
        std::fs::create_dir(&targets).expect("targets dir");
        for f in ["metasrv.json", "chunksrv.json"] {
            let from = cluster.path().join("prometheus/targets").join(f);
            std::fs::copy(&from, targets.join(f))
                .unwrap_or_else(|e| panic!("`dfsctl local up` wrote no {}: {e}", from.display()));
        }
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new(exe)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, dir };
        wait_until(Duration::from_secs(30), "Prometheus to be ready", || {
            matches!(http_get(&p.addr, "/-/ready"), Ok((200, _)))
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path)
            .unwrap_or_else(|e| panic!("Prometheus at {} is gone: {e}", self.addr));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "{path}: {code} {body}"
        );
        v["data"].clone()
    }

    /// An instant query: each result's labels and value.
    fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(q)));
        data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let v = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), v)
            })
            .collect()
    }

    /// The value of a query that returns one series (None if it returns none).
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        assert!(r.len() <= 1, "{q} returned {} series: {r:?}", r.len());
        r.first().map(|(_, v)| *v)
    }

    fn firing(&self, alert: &str) -> bool {
        !self
            .query(&format!(
                "ALERTS{{alertname=\"{alert}\",alertstate=\"firing\"}}"
            ))
            .is_empty()
    }
}

/// Metric names listed in deploy/README.md's metric table (rows "| `dfs_...` | type | ...").
fn documented_metrics() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(deploy().join("README.md")).expect("deploy/README.md");
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let (name, rest) = l.split_once('`')?;
            let kind = rest.trim_start_matches([' ', '|']).split(' ').next()?;
            name.starts_with("dfs_")
                .then(|| (name.to_string(), kind.trim_end_matches('|').to_string()))
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_a_local_cluster() {
    // Fail fast, before starting a cluster, when Prometheus is not installed.
    tool("prometheus", "prometheus");
    eprintln!("--- start a local cluster and Prometheus with deploy/prometheus");
    let c = Cluster::up(3, 3, &[]);
    let prom = Prometheus::start(&c);

    // Every node's target is up.
    wait_until(Duration::from_secs(30), "all 6 targets up", || {
        let up = prom.query("up");
        up.len() == 6 && up.iter().all(|(_, v)| *v == 1.0)
    });
    let jobs: Vec<String> = prom
        .query("count by (job) (up)")
        .into_iter()
        .map(|(m, v)| format!("{}={v}", m["job"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(jobs.contains(&"dfs-metasrv=3".to_string()), "{jobs:?}");
    assert!(jobs.contains(&"dfs-chunksrv=3".to_string()), "{jobs:?}");

    eprintln!("--- put a file: the chunk byte counters move");
    // A put moves the chunk write counters by the bytes written (two replicas).
    let written = |p: &Prometheus| {
        p.scalar("sum(dfs_chunk_written_bytes_total)")
            .unwrap_or(-1.0)
    };
    wait_until(
        Duration::from_secs(10),
        "chunk byte counters scraped",
        || written(&prom) >= 0.0,
    );
    let before = written(&prom);
    let data = bytes(3 << 20, 7);
    let local = c.path().join("upload.bin");
    std::fs::write(&local, &data).expect("write upload");
    c.ctl(&["put", local.to_str().unwrap(), "/prom/upload.bin"])
        .ok();
    wait_until(
        Duration::from_secs(15),
        "dfs_chunk_written_bytes_total to grow by the put",
        || written(&prom) >= before + 2.0 * data.len() as f64,
    );
    c.ctl(&["get", "/prom/upload.bin", "-"]).ok();
    wait_until(Duration::from_secs(15), "read bytes counted", || {
        prom.scalar("sum(dfs_chunk_read_bytes_total)")
            .unwrap_or(0.0)
            >= data.len() as f64
    });
    wait_until(
        Duration::from_secs(15),
        "the leader counts the file",
        || prom.scalar("max(dfs_files * on (instance) (dfs_raft_is_leader == 1))") == Some(1.0),
    );

    eprintln!("--- every metric in deploy/README.md exists, and every dfs_ metric is documented");
    let documented = documented_metrics();
    assert!(documented.len() >= 60, "{documented:?}");
    let names = prom.api("/api/v1/label/__name__/values");
    let names: Vec<String> = names
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .filter(|n| n.starts_with("dfs_"))
        .collect();
    for (name, kind) in &documented {
        let series = if kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.clone()
        };
        assert!(
            names.contains(&series),
            "{name} is in deploy/README.md but Prometheus has no {series}"
        );
    }
    let metadata = prom.api("/api/v1/metadata");
    for n in &names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                n.strip_suffix(s)
                    .filter(|f| documented.iter().any(|(d, k)| d == f && k == "histogram"))
            })
            .unwrap_or(n);
        let doc = documented.iter().find(|(d, _)| d == family);
        assert!(doc.is_some(), "{n} is scraped but not in deploy/README.md");
        let scraped_type = metadata[family][0]["type"].as_str().unwrap_or("?");
        assert_eq!(
            scraped_type,
            doc.unwrap().1,
            "{family}: type in deploy/README.md"
        );
    }

    eprintln!("--- the alert rules are loaded and the dashboard's queries run");
    let rules = prom.api("/api/v1/rules").to_string();
    for alert in ["DfsNoLeader", "DfsChunkServerDown", "DfsChunksMissing"] {
        assert!(rules.contains(alert), "{alert} not loaded");
    }
    let dash: Value = serde_json::from_slice(
        &std::fs::read(deploy().join("grafana/dfs-cluster.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let q = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m");
            prom.query(&q);
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "{exprs} dashboard queries");

    // /leader answers 200 only on the leader; /healthz everywhere.
    let leader = c.leader();
    let leader_node = format!("meta-{leader}");
    let metas: Vec<(String, String)> = prom
        .query("up{job=\"dfs-metasrv\"}")
        .into_iter()
        .map(|(m, _)| {
            (
                m["node"].as_str().unwrap_or("").to_string(),
                m["instance"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (node, addr) in &metas {
        let (code, _) = http_get(addr, "/leader").expect("GET /leader");
        assert_eq!(code == 200, *node == leader_node, "{node} /leader: {code}");
        assert_eq!(http_get(addr, "/healthz").expect("GET /healthz").0, 200);
    }

    eprintln!("--- SIGKILL the leader {leader_node}: the survivors count a leader change");
    let survivors = format!("dfs_raft_leader_changes_total{{node!=\"{leader_node}\"}}");
    let changes = prom.scalar(&format!("sum({survivors})")).expect("changes");
    c.kill(&leader_node);
    wait_until(
        Duration::from_secs(20),
        "dfs_raft_leader_changes_total to move after the leader's SIGKILL",
        || prom.scalar(&format!("sum({survivors})")).unwrap_or(0.0) > changes,
    );
    wait_until(
        Duration::from_secs(20),
        "a new leader in Prometheus",
        || {
            let l = prom.query("dfs_raft_is_leader == 1");
            l.len() == 1 && l[0].0["node"] != leader_node.as_str()
        },
    );
    wait_until(
        Duration::from_secs(10),
        "the old leader's target down",
        || prom.scalar(&format!("up{{node=\"{leader_node}\"}}")) == Some(0.0),
    );
    assert!(
        !prom.firing("DfsNoLeader"),
        "no-leader alert with a leader up"
    );

    eprintln!("--- kill a second member: no majority, DfsNoLeader fires (after its 15 s)");
    let second = prom.query("dfs_raft_is_leader == 1")[0].0["node"]
        .as_str()
        .expect("node")
        .to_string();
    c.kill(&second);
    wait_until(
        Duration::from_secs(60),
        "DfsNoLeader to fire without a majority",
        || prom.firing("DfsNoLeader"),
    );
    eprintln!("--- start both again: a leader is elected and DfsNoLeader stops firing");
    c.start(&leader_node);
    c.start(&second);
    wait_until(Duration::from_secs(30), "a leader again", || {
        prom.query("dfs_raft_is_leader == 1").len() == 1
    });
    wait_until(
        Duration::from_secs(10),
        "DfsNoLeader to stop firing once a leader is up",
        || !prom.firing("DfsNoLeader"),
    );
    let log = prom.log();
    assert!(
        !log.contains("level=error"),
        "Prometheus logged errors:\n{log}"
    );
}

/// `dfsctl admin health`: the last line and the exit code.
fn health(c: &Cluster) -> (i32, String) {
    let r = c.ctl(&["admin", "health"]);
    let last = r.stdout.trim_end().lines().last().unwrap_or("").to_string();
    assert!(r.stderr.is_empty(), "health wrote to stderr: {}", r.stderr);
    (r.code, format!("{last}\n{}", r.stdout))
}

#[test]
fn admin_health_says_ok_warn_and_err() {
    let c = Cluster::up(3, 3, &[]);
    let local = c.path().join("f.bin");
    std::fs::write(&local, bytes(100_000, 3)).expect("write file");
    for i in 0..6 {
        c.ctl(&["put", local.to_str().unwrap(), &format!("/h/f{i}")])
            .ok();
    }
    let (code, out) = health(&c);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK ("), "{out}");

    eprintln!("--- kill chunk-3: WARN");
    c.kill("chunk-3");
    let mut out = String::new();
    // Under-replicated chunks may be said first (WARN too): wait for the server itself.
    wait_until(
        Duration::from_secs(20),
        "health to say the server is down",
        || {
            let (code, o) = health(&c);
            out = o;
            code == 1
                && out
                    .lines()
                    .any(|l| l.starts_with("WARN chunk server ") && l.contains(") is down"))
        },
    );
    assert!(out.starts_with("WARN ("), "{out}");
    // chunk-3 is not necessarily chunk server id 3: ids follow registration order.
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN chunk server ") && l.contains(") is down")),
        "{out}"
    );
    let v = c.ctl(&["--json", "admin", "health"]);
    assert_eq!(v.code, 1);
    let v: Value = serde_json::from_str(v.stdout.trim()).expect("health --json");
    assert_eq!(v["status"], "WARN");

    eprintln!("--- kill two metadata members: ERR");
    c.kill("meta-1");
    c.kill("meta-2");
    let (code, out) = health(&c);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("ERR ("), "{out}");
    assert!(
        out.contains("only 1 of 3 metadata members are reachable"),
        "{out}"
    );

    eprintln!("--- all metadata members down: still ERR, not a failure to run");
    c.kill("meta-3");
    let (code, out) = health(&c);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no metadata node answered"), "{out}");
}
