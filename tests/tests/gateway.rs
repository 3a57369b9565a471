//! The WebDAV gateway against a real cluster: a `dfs-gateway` process on a free loopback
//! port, driven by real clients (curl, rclone, and raw sockets where a client must misbehave).
use dfs_tests::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Gateway {
    child: Child,
    addr: String,
    metrics: String,
}

impl Gateway {
    fn start(c: &Cluster) -> Gateway {
        Self::start_with(c, &[])
    }

    fn start_with(c: &Cluster, extra: &[&str]) -> Gateway {
        let (addr, metrics) = (free_addr(), free_addr());
        let log = std::fs::File::create(c.path().join(format!("gateway-{}.log", rand_u64())))
            .expect("gateway log");
        let child = Command::new(bin("dfs-gateway"))
            .args(["--meta", &c.meta, "--listen", &addr, "--insecure-http"])
            .args(["--metrics", &metrics, "--auth-cache", "1s"])
            .args(extra)
            .env("DFS_TLS_CA", c.ca_env())
            .env("DFS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dfs-gateway");
        let g = Gateway {
            child,
            addr,
            metrics,
        };
        wait_until(Duration::from_secs(30), "the gateway listening", || {
            std::net::TcpStream::connect(&g.addr).is_ok()
                && std::net::TcpStream::connect(&g.metrics).is_ok()
        });
        g
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn metric(&self, line_start: &str) -> f64 {
        let (_, text) = http_get(&self.metrics, "/metrics").expect("GET /metrics");
        text.lines()
            .filter(|l| l.starts_with(line_start))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u64() -> u64 {
    rand::random()
}

/// (user, key) from an auth file.
fn creds(auth: &Path) -> (String, String) {
    let t = std::fs::read_to_string(auth).expect("auth file");
    let (u, k) = t.trim().split_once('/').expect("user/key");
    (u.to_string(), k.to_string())
}

/// curl with the user's credentials: (HTTP status, body). `args` come before the URL.
fn curl(user: &(String, String), args: &[&str], url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--path-as-is", "--max-time", "120", "-o", "-"])
        .args(["-w", "\n%{http_code}", "-u"])
        .arg(format!("{}:{}", user.0, user.1))
        .args(args)
        .arg(url)
        .output()
        .expect("curl (install the curl package)");
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[nl + 1..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(nl);
    (code, body)
}

fn put_file(user: &(String, String), g: &Gateway, remote: &str, data: &[u8]) -> u16 {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), data).expect("write");
    curl(user, &["-T", f.path().to_str().unwrap()], &g.url(remote)).0
}

fn get(user: &(String, String), g: &Gateway, remote: &str) -> (u16, Vec<u8>) {
    curl(user, &[], &g.url(remote))
}

#[test]
fn put_get_range_auth_and_bad_input() {
    let c = Cluster::up(1, 3, &[]);
    let g = Gateway::start(&c);
    let alice = creds(&c.add_user("alice"));
    let bob = creds(&c.add_user("bob"));

    // Round trip, several chunks' worth (the local cluster's chunks are small enough).
    let data = bytes(3 << 20, 7);
    assert_eq!(
        put_file(&alice, &g, "/docs/a.bin", &data),
        409,
        "no parent yet"
    );
    assert_eq!(curl(&alice, &["-X", "MKCOL"], &g.url("/docs")).0, 201);
    assert_eq!(curl(&alice, &["-X", "MKCOL"], &g.url("/docs")).0, 405);
    assert_eq!(put_file(&alice, &g, "/docs/a.bin", &data), 201);
    let (code, got) = get(&alice, &g, "/docs/a.bin");
    assert_eq!(code, 200);
    assert!(got == data, "GET returns what PUT sent");
    let (code, part) = curl(&alice, &["-r", "1000-1999"], &g.url("/docs/a.bin"));
    assert_eq!(code, 206);
    assert!(part == data[1000..2000], "a range returns just its bytes");
    // The ETag is the file's sha256.
    let head = Command::new("curl")
        .args(["-s", "-I", "-u", &format!("{}:{}", alice.0, alice.1)])
        .arg(g.url("/docs/a.bin"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(
        head.contains(&format!("etag: \"{}\"", &sha256_hex(&data)[..32])),
        "{head}"
    );
    // Overwrite: 204, new bytes; the same through dfsctl.
    assert_eq!(put_file(&alice, &g, "/docs/a.bin", b"v2"), 204);
    let alice_auth = c.path().join("alice.auth");
    assert_eq!(c.get_data(&alice_auth, "/docs/a.bin"), b"v2");
    // Conditional PUTs: If-None-Match: * refuses to replace, If-Match needs the current ETag.
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"v3").unwrap();
    let t = f.path().to_str().unwrap();
    let url = g.url("/docs/a.bin");
    assert_eq!(
        curl(&alice, &["-T", t, "-H", "If-None-Match: *"], &url).0,
        412
    );
    assert_eq!(
        curl(&alice, &["-T", t, "-H", "If-Match: \"0123\""], &url).0,
        412
    );
    assert_eq!(get(&alice, &g, "/docs/a.bin"), (200, b"v2".to_vec()));
    let etag = format!("If-Match: \"{}\"", &sha256_hex(b"v2")[..32]);
    assert_eq!(curl(&alice, &["-T", t, "-H", &etag], &url).0, 204);
    assert_eq!(get(&alice, &g, "/docs/a.bin"), (200, b"v3".to_vec()));
    assert_eq!(put_file(&alice, &g, "/docs/a.bin", b"v2"), 204);
    assert_eq!(put_file(&alice, &g, "/docs/empty", b""), 201);
    assert_eq!(get(&alice, &g, "/docs/empty"), (200, vec![]));

    // Wrong key, unknown user, no credentials: 401 with a challenge.
    let wrong = (alice.0.clone(), "x".repeat(alice.1.len()));
    assert_eq!(get(&wrong, &g, "/docs/a.bin").0, 401);
    assert_eq!(get(&("nobody".into(), "k".into()), &g, "/").0, 401);
    let anon = Command::new("curl")
        .args(["-s", "-i", &g.url("/docs/a.bin")])
        .output()
        .unwrap();
    let anon = String::from_utf8_lossy(&anon.stdout).to_ascii_lowercase();
    assert!(anon.starts_with("http/1.1 401"), "{anon}");
    assert!(anon.contains("www-authenticate: basic"), "{anon}");

    // Another user's files are invisible.
    assert_eq!(get(&bob, &g, "/docs/a.bin").0, 404);
    let (code, list) = curl(&bob, &["-X", "PROPFIND", "-H", "Depth: 1"], &g.url("/"));
    assert_eq!(code, 207);
    assert!(!String::from_utf8_lossy(&list).contains("docs"));
    assert_eq!(put_file(&bob, &g, "/docs/b.bin", b"x"), 409);

    // Traversal never leaves the tree: refused before the file system.
    for p in [
        "/docs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/docs/%2e%2e/%2e%2e/etc/passwd",
        "/docs/../../etc/passwd",
        "/%2e%2e%2f",
    ] {
        let code = get(&alice, &g, p).0;
        assert!(code == 400 || code == 404, "{p}: {code}");
    }
    let long = format!("/docs/{}", "n".repeat(300));
    assert_eq!(put_file(&alice, &g, &long, b"x"), 400);

    // PROPFIND: depth 0 and 1 answer, infinity is refused.
    let pf = |depth: &str| {
        curl(
            &alice,
            &["-X", "PROPFIND", "-H", &format!("Depth: {depth}")],
            &g.url("/docs/"),
        )
        .0
    };
    assert_eq!((pf("0"), pf("1"), pf("infinity")), (207, 207, 403));

    // MOVE onto an existing file: 412 without Overwrite, done with it (atomically a rename).
    assert_eq!(put_file(&alice, &g, "/docs/c.txt", b"c"), 201);
    let dest = format!("Destination: {}", g.url("/docs/empty"));
    let mv = |extra: &str| {
        curl(
            &alice,
            &["-X", "MOVE", "-H", &dest, "-H", extra],
            &g.url("/docs/c.txt"),
        )
        .0
    };
    assert_eq!(mv("Overwrite: F"), 412);
    assert_eq!(
        get(&alice, &g, "/docs/empty"),
        (200, vec![]),
        "412 changed nothing"
    );
    assert_eq!(mv("Overwrite: T"), 204);
    assert_eq!(get(&alice, &g, "/docs/empty"), (200, b"c".to_vec()));
    assert_eq!(get(&alice, &g, "/docs/c.txt").0, 404);
    let bad_dest = format!("Destination: {}", g.url("/docs/%2e%2e/x"));
    assert_eq!(
        curl(
            &alice,
            &["-X", "MOVE", "-H", &bad_dest],
            &g.url("/docs/empty")
        )
        .0,
        400
    );

    // COPY, then DELETE goes to the trash.
    let dest = format!("Destination: {}", g.url("/docs/copy.bin"));
    assert_eq!(
        curl(&alice, &["-X", "COPY", "-H", &dest], &g.url("/docs/a.bin")).0,
        201
    );
    assert_eq!(get(&alice, &g, "/docs/copy.bin"), (200, b"v2".to_vec()));
    assert_eq!(
        curl(&alice, &["-X", "DELETE"], &g.url("/docs/copy.bin")).0,
        204
    );
    assert_eq!(get(&alice, &g, "/docs/copy.bin").0, 404);
    let trash = c.ctl_as(&alice_auth, &["trash", "ls"]).ok();
    assert!(trash.contains("/docs/copy.bin"), "{trash}");
    // A collection goes to the trash whole, as one entry, and comes back whole.
    assert_eq!(curl(&alice, &["-X", "MKCOL"], &g.url("/tree")).0, 201);
    assert_eq!(curl(&alice, &["-X", "MKCOL"], &g.url("/tree/sub")).0, 201);
    assert_eq!(put_file(&alice, &g, "/tree/sub/f", b"f"), 201);
    assert_eq!(curl(&alice, &["-X", "DELETE"], &g.url("/tree/")).0, 204);
    assert_eq!(get(&alice, &g, "/tree/sub/f").0, 404);
    let trash = c.ctl_as(&alice_auth, &["trash", "ls"]).ok();
    assert_eq!(
        trash.lines().filter(|l| l.contains("/tree")).count(),
        1,
        "{trash}"
    );
    c.ctl_as(&alice_auth, &["trash", "restore", "/tree"]).ok();
    assert_eq!(get(&alice, &g, "/tree/sub/f"), (200, b"f".to_vec()));

    // A body cut short of its Content-Length commits nothing, and the old version stays.
    let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = {
        use base64_lite::encode;
        encode(format!("{}:{}", alice.0, alice.1).as_bytes())
    };
    write!(
        s,
        "PUT /docs/a.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b'z'; 5000]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(!reply.starts_with("HTTP/1.1 2"), "{reply}");
    assert_eq!(get(&alice, &g, "/docs/a.bin"), (200, b"v2".to_vec()));

    // A malformed If header (dav-server's parser would index past its end) is a 400, and
    // the gateway goes on serving.
    let (code, _) = curl(
        &alice,
        &[
            "-X",
            "PUT",
            "-H",
            "If: (<urn:uuid:x> [\"abc",
            "--data-binary",
            "x",
        ],
        &g.url("/docs/a.bin"),
    );
    assert_eq!(code, 400);
    assert_eq!(get(&alice, &g, "/docs/a.bin"), (200, b"v2".to_vec()));

    // Metrics count requests by method and status, and bytes.
    assert!(g.metric("dfs_gateway_requests_total{method=\"PUT\",status=\"201\"}") >= 3.0);
    assert!(g.metric("dfs_gateway_requests_total{method=\"GET\",status=\"401\"}") >= 1.0);
    assert!(g.metric("dfs_gateway_bytes_in_total") >= data.len() as f64);
    assert!(g.metric("dfs_gateway_bytes_out_total") >= data.len() as f64);
    assert!(g.metric("dfs_gateway_request_seconds_count{method=\"PUT\"}") >= 3.0);
}

#[test]
fn a_full_cluster_is_507_and_failed_logins_are_rate_limited_per_address() {
    let c = Cluster::up_with(1, 1, &[], &["--capacity=1000000"]);
    let g = Gateway::start(&c);
    let alice = creds(&c.add_user("alice"));
    assert_eq!(put_file(&alice, &g, "/small", b"fits"), 201);
    assert_eq!(put_file(&alice, &g, "/huge", &bytes(3_000_000, 1)), 507);
    assert_eq!(get(&alice, &g, "/huge").0, 404, "nothing committed");
    assert_eq!(get(&alice, &g, "/small"), (200, b"fits".to_vec()));
    let wrong = (alice.0.clone(), "wrong".to_string());
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(get(&wrong, &g, "/").0);
    }
    assert!(codes[..10].iter().all(|&c| c == 401), "{codes:?}");
    assert_eq!(codes[11], 429, "{codes:?}");
    // The right key from the same address is refused too until the window passes.
    assert_eq!(get(&alice, &g, "/").0, 429);
}

/// With the metadata service gone, requests get 503 (after the gateway's --timeout) and the
/// gateway stays up; once it is back, the same requests succeed.
#[test]
fn an_unreachable_cluster_is_503_and_the_gateway_stays_up() {
    let c = Cluster::up(1, 1, &[]);
    let g = Gateway::start_with(&c, &["--timeout", "2s"]);
    let alice = creds(&c.add_user("alice"));
    assert_eq!(put_file(&alice, &g, "/f", b"f"), 201);
    c.kill("meta-1");
    assert_eq!(get(&alice, &g, "/f").0, 503);
    assert_eq!(put_file(&alice, &g, "/g", b"g"), 503);
    c.start("meta-1");
    wait_until(Duration::from_secs(60), "the gateway serving again", || {
        get(&alice, &g, "/f") == (200, b"f".to_vec())
    });
    // Writes need a chunk server to have reported to the restarted node again.
    wait_until(Duration::from_secs(60), "a PUT stored again", || {
        put_file(&alice, &g, "/g", b"g") == 201
    });
    assert_eq!(get(&alice, &g, "/g"), (200, b"g".to_vec()));
    // No chunk server live: a write cannot be stored, 503 too, and nothing is committed.
    c.kill("chunk-1");
    wait_until(Duration::from_secs(60), "a PUT refused with 503", || {
        put_file(&alice, &g, "/h", b"h") == 503
    });
    assert_eq!(get(&alice, &g, "/h").0, 404);
}

#[test]
fn an_upload_killed_halfway_leaves_the_old_version() {
    let c = Cluster::up(1, 3, &[]);
    let g = Gateway::start(&c);
    let alice = creds(&c.add_user("alice"));
    assert_eq!(put_file(&alice, &g, "/old.bin", b"old version"), 201);
    let big = tempfile::NamedTempFile::new().unwrap();
    // 48 MiB at 2 MiB/s: killed after 4 MiB, with 20 s to spare on a slow machine.
    std::fs::write(big.path(), bytes(48 << 20, 3)).unwrap();
    let before = g.metric("dfs_gateway_bytes_in_total");
    let mut cur = Command::new("curl")
        .args([
            "-s",
            "--limit-rate",
            "2M",
            "-u",
            &format!("{}:{}", alice.0, alice.1),
        ])
        .args(["-T", big.path().to_str().unwrap()])
        .arg(g.url("/old.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    wait_until(Duration::from_secs(60), "curl halfway through", || {
        g.metric("dfs_gateway_bytes_in_total") - before > (4 << 20) as f64
    });
    cur.kill().unwrap();
    let _ = cur.wait();
    // The gateway answers the cut-off PUT (an error) once it has seen the connection go.
    wait_until(Duration::from_secs(60), "the aborted PUT answered", || {
        g.metric("dfs_gateway_requests_total{method=\"PUT\"") >= 2.0
    });
    assert_eq!(get(&alice, &g, "/old.bin"), (200, b"old version".to_vec()));
    // Same for a new name: nothing visible.
    let mut cur = Command::new("curl")
        .args([
            "-s",
            "--limit-rate",
            "2M",
            "-u",
            &format!("{}:{}", alice.0, alice.1),
        ])
        .args(["-T", big.path().to_str().unwrap()])
        .arg(g.url("/new.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let before = g.metric("dfs_gateway_bytes_in_total");
    wait_until(Duration::from_secs(60), "curl under way", || {
        g.metric("dfs_gateway_bytes_in_total") - before > (2 << 20) as f64
    });
    cur.kill().unwrap();
    let _ = cur.wait();
    wait_until(Duration::from_secs(60), "the aborted PUT answered", || {
        g.metric("dfs_gateway_requests_total{method=\"PUT\"") >= 3.0
    });
    assert_eq!(get(&alice, &g, "/new.bin").0, 404);
    let ls = c.ctl_as(&c.path().join("alice.auth"), &["ls", "/"]).ok();
    assert!(!ls.contains("new.bin"), "{ls}");
}

fn rclone(user: &(String, String), g: &Gateway, args: &[&str]) -> (bool, String) {
    let obscured = Command::new("rclone")
        .args(["obscure", &user.1])
        .output()
        .expect("rclone (install the rclone package)");
    let pass = String::from_utf8_lossy(&obscured.stdout).trim().to_string();
    let out = Command::new("rclone")
        .args(args)
        .args(["--webdav-url", &g.url("/"), "--webdav-vendor", "other"])
        .args(["--webdav-user", &user.0, "--webdav-pass", &pass])
        .args([
            "--config",
            "/dev/null",
            "--low-level-retries",
            "3",
            "--retries",
            "1",
        ])
        .output()
        .expect("rclone");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn make_tree(root: &Path, big: bool) {
    let sizes: &[(&str, usize)] = &[
        ("empty", 0),
        ("one", 1),
        ("small.txt", 4096),
        ("sub/mid.bin", 300 << 10),
        ("sub/deeper/a few MiB.bin", 3 << 20),
        ("sub/deeper/b.bin", (1 << 20) + 17),
    ];
    for (i, (name, size)) in sizes.iter().enumerate() {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(*size, i as u64 + 1)).unwrap();
    }
    if big {
        std::fs::write(root.join("big.bin"), bytes(100 << 20, 99)).unwrap();
    }
}

/// rclone copy of a tree (0 B to a few MiB; 100 MiB more with DFS_GATEWAY_BIG=1) into the
/// gateway and back, `diff -r` equal, `rclone check` clean, and another user sees none of it.
#[test]
fn rclone_copies_a_tree_in_and_back() {
    let c = Cluster::up(1, 3, &[]);
    let g = Gateway::start(&c);
    let alice = creds(&c.add_user("alice"));
    let bob = creds(&c.add_user("bob"));
    let tmp = tempfile::tempdir().unwrap();
    let (src, back): (PathBuf, PathBuf) = (tmp.path().join("src"), tmp.path().join("back"));
    make_tree(
        &src,
        std::env::var("DFS_GATEWAY_BIG").is_ok_and(|v| v == "1"),
    );
    let (ok, out) = rclone(
        &alice,
        &g,
        &["copy", src.to_str().unwrap(), ":webdav:/tree"],
    );
    assert!(ok, "rclone copy in: {out}");
    let (ok, out) = rclone(
        &alice,
        &g,
        &["copy", ":webdav:/tree", back.to_str().unwrap()],
    );
    assert!(ok, "rclone copy back: {out}");
    assert_same_tree(&src, &back, &[]);
    let (ok, out) = rclone(
        &alice,
        &g,
        &["check", src.to_str().unwrap(), ":webdav:/tree"],
    );
    assert!(ok, "rclone check: {out}");
    // The same bytes through dfsctl.
    let via_ctl = c.get_data(&c.path().join("alice.auth"), "/tree/sub/deeper/b.bin");
    assert!(via_ctl == bytes((1 << 20) + 17, 6));
    // Bob sees nothing of it.
    let (ok, out) = rclone(&bob, &g, &["lsf", "-R", ":webdav:/"]);
    assert!(ok, "rclone lsf as bob: {out}");
    assert!(!out.contains("tree") && !out.contains(".bin"), "{out}");
    let (ok, _) = rclone(&bob, &g, &["lsf", ":webdav:/tree"]);
    assert!(!ok, "bob cannot list alice's tree");
}

/// Minimal base64 for the raw-socket request above (no dependency for one header).
mod base64_lite {
    pub fn encode(b: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for ch in b.chunks(3) {
            let n = (ch[0] as u32) << 16
                | (*ch.get(1).unwrap_or(&0) as u32) << 8
                | *ch.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= ch.len() {
                    s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}

/// `dfsctl local up` starts a gateway on loopback and prints its URL; `local status` lists it;
/// it serves the admin user; `local down` stops it.
#[test]
fn local_up_starts_a_gateway() {
    let c = LocalUp::start(&["--metas", "1", "--chunks", "1"]);
    let up = &c.out;
    let url = up
        .lines()
        .find_map(|l| l.strip_prefix("# WebDAV: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no WebDAV line in: {up}"))
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let status = c.local(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("gateway") && l.contains(&url)),
        "{status}"
    );
    let admin = creds(&c.path().join("admin.auth"));
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PROPFIND",
        ])
        .args([
            "-H",
            "Depth: 0",
            "-u",
            &format!("{}:{}", admin.0, admin.1),
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "207");
    c.local(&["down", "--quiet"]);
    let status = c.local(&["status"]);
    assert!(!status.contains("gateway"), "{status}");
}

/// HTTPS with a certificate (made by openssl here); plain HTTP only with --insecure-http and
/// only on loopback; no TLS and no --insecure-http is refused with a sentence.
#[test]
fn https_and_the_plain_http_rules() {
    let c = Cluster::up(1, 1, &[]);
    let alice = creds(&c.add_user("alice"));
    let (cert, key) = (c.path().join("gw.crt"), c.path().join("gw.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = free_addr();
    let mut gw = Command::new(bin("dfs-gateway"))
        .args(["--meta", &c.meta, "--listen", &addr])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("DFS_TLS_CA", c.ca_env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _k = Kill(&mut gw);
    wait_until(Duration::from_secs(30), "the gateway listening", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let url = format!("https://{addr}/hello.txt");
    let up = curl(
        &alice,
        &[
            "--cacert",
            cert.to_str().unwrap(),
            "--data-binary",
            "hi",
            "-X",
            "PUT",
        ],
        &url,
    );
    assert_eq!(up.0, 201);
    let down = curl(&alice, &["--cacert", cert.to_str().unwrap()], &url);
    assert_eq!(down, (200, b"hi".to_vec()));
    // Plain HTTP to the TLS port gets no WebDAV answer.
    assert_ne!(
        curl(&alice, &[], &format!("http://{addr}/hello.txt")).0,
        200
    );

    let refuse = |args: &[&str], needle: &str| {
        let out = Command::new(bin("dfs-gateway"))
            .args(["--meta", &c.meta])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
    };
    refuse(&["--listen", "0.0.0.0:0", "--insecure-http"], "loopback");
    refuse(&["--listen", "127.0.0.1:0"], "--tls-cert");
}
