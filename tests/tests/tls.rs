//! TLS and node identities on real local clusters (`dfsctl local up` makes a CA and a
//! certificate per node): what crosses the loopback carries no key, secret or file content;
//! a peer is who its certificate says and nothing else; certificates rotate under load.
use dfs_common::pki::{self, Identity, Role};
use dfs_common::tls::{Tls, TlsFiles};
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::raft_transport_client::RaftTransportClient;
use dfs_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// TLS as node `role` `id` of `c`, with a certificate from `ca_dir` (the cluster's own CA, or
/// another one), trusting the cluster's CA.
fn node_tls(c: &Cluster, ca_dir: &Path, role: Role, id: u64) -> Arc<Tls> {
    let out_dir = c.path().join(format!("attacker-{}", rand::random::<u64>()));
    let out = pki::issue(
        ca_dir,
        &Identity::new(role, &id.to_string()).unwrap(),
        &[],
        &out_dir,
        1,
    )
    .unwrap();
    Tls::load(TlsFiles {
        ca: c.ca.clone().expect("a TLS cluster"),
        cert: Some(out.cert),
        key: Some(out.key),
    })
    .unwrap()
}

fn channel(addr: &str, tls: Option<&Arc<Tls>>, role: Role) -> Channel {
    dfs_common::tls::channel(
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5)),
        tls,
        role,
    )
}

fn node_addr(c: &Cluster, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("cluster.json")).unwrap())
            .unwrap();
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string()
}

fn append_entries() -> dfs_proto::RaftMessage {
    dfs_proto::RaftMessage {
        target: 1,
        payload: b"{}".to_vec(),
    }
}

/// Raft is for metasrv certificates only: no certificate, a certificate from another CA, a
/// chunk server's certificate (even with the cluster-secret proof in the header) are refused,
/// and the leader and its term stay as they were.
#[test]
fn only_metasrv_certificates_speak_raft() {
    let c = Cluster::up(1, 0, &[]);
    let before = c.status();
    let meta = node_addr(&c, "meta-1");
    let ca_dir = c.path().join("tls");
    let other_ca = c.path().join("other-ca");
    pki::init_ca(&other_ca, "other", 1).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // No certificate at all.
        let plain = c.tls().unwrap();
        let e = RaftTransportClient::new(channel(&meta, Some(&plain), Role::Meta))
            .append_entries(append_entries())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("no certificate"), "{e:?}");
        // A metasrv certificate for node 1 from another CA: the handshake fails.
        let forged = node_tls(&c, &other_ca, Role::Meta, 1);
        let e = RaftTransportClient::new(channel(&meta, Some(&forged), Role::Meta))
            .append_entries(append_entries())
            .await
            .unwrap_err();
        // Refused by the TLS layer (a transport error: the alert, or the connection closed
        // after it), never answered by a handler (a status without a transport cause).
        assert!(
            std::error::Error::source(&e).is_some()
                && !matches!(
                    e.code(),
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                ),
            "{e:?}"
        );
        // A chunk server's certificate, with the old cluster-secret proof added.
        let chunk = node_tls(&c, &ca_dir, Role::Chunk, 1);
        let secret = dfs_common::token::ClusterSecret::load(&c.secret_file()).unwrap();
        let mut req = tonic::Request::new(append_entries());
        req.metadata_mut().insert(
            dfs_common::headers::NODE_AUTH,
            secret.node_proof().parse().unwrap(),
        );
        let e = RaftTransportClient::new(channel(&meta, Some(&chunk), Role::Meta))
            .append_entries(req)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("chunk 1"), "{e:?}");
        // A metasrv certificate speaks only for its own node: metasrv 2 asking for node 1's
        // vote (openraft's VoteRequest, as JSON) is refused before Raft sees it.
        let meta2 = node_tls(&c, &ca_dir, Role::Meta, 2);
        let vote = dfs_proto::RaftMessage {
            target: 1,
            payload: br#"{"vote":{"leader_id":{"term":99,"node_id":1},"committed":false},"last_log_id":null}"#.to_vec(),
        };
        let e = RaftTransportClient::new(channel(&meta, Some(&meta2), Role::Meta))
            .vote(vote)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message()
                .contains("metasrv 2's certificate cannot speak for node 1"),
            "{e:?}"
        );
        // A plain-TCP caller does not even get a gRPC answer.
        let e = RaftTransportClient::new(channel(&meta, None, Role::Meta))
            .append_entries(append_entries())
            .await
            .unwrap_err();
        // (The server answers TLS to its HTTP/2 preface: an h2 protocol error or a broken
        // pipe, never a handler's status.)
        assert!(
            std::error::Error::source(&e).is_some() && e.code() != tonic::Code::PermissionDenied,
            "{e:?}"
        );
    });
    let after = c.status();
    assert_eq!(before["term"], after["term"], "{before} / {after}");
    assert_eq!(before["leader"], after["leader"]);
    // Counted: no certificate, the chunk server's, metasrv 2's claim to be node 1.
    assert!(c
        .metrics_text("meta-1")
        .contains("dfs_auth_failures_total 3"));
    c.ctl(&["mkdir", "/still-fine"]).ok();
}

/// A chunk server acts only as the one its certificate names: another server's heartbeat, a
/// registration of another server's data dir, a registration with a metasrv certificate and
/// a replicate order from anything but a metasrv are refused, and nothing moves.
#[test]
fn a_chunk_server_acts_only_as_itself() {
    let c = Cluster::up(1, 2, &[]);
    let meta = node_addr(&c, "meta-1");
    let chunk1 = node_addr(&c, "chunk-1");
    let ca_dir = c.path().join("tls");
    let uuid1 = {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(c.path().join("chunk-1").join("node.json")).unwrap(),
        )
        .unwrap();
        v["uuid"].as_str().unwrap().to_string()
    };
    let before = c.ctl(&["--json", "cluster", "status"]).json()["chunk_servers"].clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Chunk server 2's certificate (as if stolen from its disk).
        let two = node_tls(&c, &ca_dir, Role::Chunk, 2);
        let mut m = MetaClient::new(channel(&meta, Some(&two), Role::Meta));
        let e = m
            .heartbeat(dfs_proto::HeartbeatRequest {
                node_id: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message()
                .contains("chunk 2 cannot heartbeat as chunk server 1"),
            "{e:?}"
        );
        let e = m
            .register_chunk_server(dfs_proto::RegisterChunkServerRequest {
                uuid: uuid1.clone(),
                addr: "127.0.0.1:9".into(),
                capacity_bytes: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("chunk server 1"), "{e:?}");
        // A metasrv certificate does not register chunk servers.
        let meta_cert = node_tls(&c, &ca_dir, Role::Meta, 1);
        let e = MetaClient::new(channel(&meta, Some(&meta_cert), Role::Meta))
            .register_chunk_server(dfs_proto::RegisterChunkServerRequest {
                uuid: uuid::Uuid::new_v4().to_string(),
                addr: "127.0.0.1:9".into(),
                capacity_bytes: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        // Replicate orders come from metasrv certificates only.
        for tls in [Some(&two), c.tls().as_ref()] {
            let e = ChunkClient::new(channel(&chunk1, tls, Role::Chunk))
                .replicate(dfs_proto::ReplicateRequest {
                    chunk_id: "c".repeat(32),
                    target_addr: "127.0.0.1:9".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        }
    });
    let after = c.ctl(&["--json", "cluster", "status"]).json()["chunk_servers"].clone();
    let addrs = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].clone(), s["addr"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs(&before), addrs(&after));
    let data = bytes(100_000, 4);
    c.put_data(&c.auth, "/ok", &data, &[]).ok();
    assert_eq!(c.get_data(&c.auth, "/ok"), data);
}

/// A started node checks its own certificate: a metasrv with a chunk server's, or with
/// another node's, refuses to start and says which certificate it needs.
#[test]
fn a_node_refuses_a_certificate_that_is_not_its_own() {
    let c = Cluster::up(1, 0, &[]);
    let ca_dir = c.path().join("tls");
    for (role, id) in [(Role::Chunk, 5), (Role::Meta, 6)] {
        let out = pki::issue(
            &ca_dir,
            &Identity::new(role, &id.to_string()).unwrap(),
            &[],
            &c.path().join("wrong"),
            1,
        )
        .unwrap();
        let o = Command::new(bin("metasrv"))
            .args(["--id", "5", "--join", "--listen", &free_addr()])
            .args(["--metrics", &free_addr()])
            .arg("--data-dir")
            .arg(c.path().join("meta-5"))
            .arg("--cluster-secret-file")
            .arg(c.secret_file())
            .arg("--tls-cert")
            .arg(&out.cert)
            .arg("--tls-key")
            .arg(&out.key)
            .arg("--tls-ca")
            .arg(c.ca.as_ref().unwrap())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("this is metasrv 5") && err.contains("--role meta --id 5"),
            "{err}"
        );
    }
    // Without any TLS flag and without --insecure, it says what it needs.
    let o = Command::new(bin("metasrv"))
        .args([
            "--id",
            "5",
            "--listen",
            &free_addr(),
            "--metrics",
            &free_addr(),
        ])
        .arg("--data-dir")
        .arg(c.path().join("meta-5"))
        .arg("--cluster-secret-file")
        .arg(c.secret_file())
        .env_remove("DFS_TLS_CA")
        .env_remove("DFS_TLS_CERT")
        .env_remove("DFS_TLS_KEY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--tls-cert, --tls-key and --tls-ca"), "{err}");
}

/// Loopback traffic of a cluster, captured with tcpdump while `work` runs.
fn capture(c: &Cluster, work: impl FnOnce()) -> Vec<u8> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("cluster.json")).unwrap())
            .unwrap();
    let ports: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let a = n["addr"].as_str().unwrap();
            format!("tcp port {}", a.rsplit(':').next().unwrap())
        })
        .collect();
    let file = c
        .path()
        .join(format!("capture-{}.pcap", rand::random::<u64>()));
    let mut dump = Command::new("tcpdump")
        // A 64 MiB buffer: the kernel drops nothing of a few MiB in bursts.
        .args(["-i", "lo", "-U", "-s", "0", "-B", "65536", "-w"])
        .arg(&file)
        .arg(ports.join(" or "))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (Debian package tcpdump) must be installed");
    // tcpdump says "listening on lo" once it captures.
    let mut err = std::io::BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(n > 0, "tcpdump stopped before listening");
        if line.contains("listening on") {
            break;
        }
    }
    work();
    // SIGINT: tcpdump writes out what it has and exits.
    unsafe {
        libc::kill(dump.id() as i32, libc::SIGINT);
    }
    dump.wait().unwrap();
    std::fs::read(&file).unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A hex string as HTTP/2 sends a header value: HPACK's Huffman code (RFC 7541, appendix B),
/// without the last, padded byte. (Keys and proofs travel in headers, so a search for the
/// plain text alone would find nothing even in clear traffic.)
fn hpack_huffman_hex(s: &str) -> Vec<u8> {
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
    for ch in s.chars() {
        let (code, len) = match ch {
            '0' => (0x0, 5),
            '1' => (0x1, 5),
            '2' => (0x2, 5),
            'a' => (0x3, 5),
            'c' => (0x4, 5),
            'e' => (0x5, 5),
            '3'..='9' => (0x19 + (ch as u64 - '3' as u64), 6),
            'b' => (0x23, 6),
            'd' => (0x24, 6),
            'f' => (0x25, 6),
            _ => panic!("not a lower-case hex digit: {ch:?}"),
        };
        acc = (acc << len) | code;
        bits += len;
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

/// What to look for: the text itself, and its header form when it is a hex secret.
fn forms(text: &str) -> Vec<Vec<u8>> {
    let mut v = vec![text.as_bytes().to_vec()];
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        v.push(hpack_huffman_hex(text));
    }
    v
}

/// What must never be readable on the wire of `c`, and the traffic that carries it: a put
/// and a get of distinctive content, a new user's key, heartbeats and Raft.
/// Something that must not be readable, by name, in each form it could take on the wire.
type Needle = (String, Vec<Vec<u8>>);

fn secrets_on_the_wire(c: &Cluster) -> (Vec<u8>, Vec<Needle>) {
    let data = bytes(3 * 1024 * 1024 + 17, 77);
    let mut alice = PathBuf::new();
    let pcap = capture(c, || {
        c.put_data(&c.auth, "/secret-file", &data, &[]).ok();
        assert_eq!(c.get_data(&c.auth, "/secret-file"), data);
        alice = c.add_user("alice");
        c.ctl_as(&alice, &["ls", "/"]).ok();
        // A chunk server restarts: it registers again and heartbeats over new connections
        // (those already open send a header once, then only its HPACK index).
        c.kill("chunk-2");
        c.start("chunk-2");
        wait_until(Duration::from_secs(30), "chunk-2 live again", || {
            c.status()["chunk_servers"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["live"] == true))
        });
        std::thread::sleep(Duration::from_millis(1500));
    });
    let key = |p: &Path| forms(&dfs_common::auth_file::read(p).unwrap().key);
    let secret = dfs_common::token::ClusterSecret::load(&c.secret_file()).unwrap();
    let mut needles = vec![
        ("the admin key".to_string(), key(&c.auth)),
        ("alice's key".to_string(), key(&alice)),
        (
            "the cluster secret".to_string(),
            forms(std::fs::read_to_string(c.secret_file()).unwrap().trim()),
        ),
        ("the node proof".to_string(), forms(&secret.node_proof())),
    ];
    for i in 0..16 {
        let at = i * (data.len() - 64) / 16;
        needles.push((
            format!("file bytes at {at}"),
            vec![data[at..at + 24].to_vec()],
        ));
    }
    (pcap, needles)
}

/// With TLS (the default) a capture of everything the cluster sends over loopback holds no
/// access key, no cluster secret, no node proof and no file content; without TLS the same
/// capture shows them (so the search does find what is there).
#[test]
fn the_wire_shows_no_key_secret_or_content() {
    let c = Cluster::up(2, 2, &[]);
    let (pcap, needles) = secrets_on_the_wire(&c);
    assert!(
        pcap.len() > 5 * 1024 * 1024,
        "the put and get were captured ({} bytes)",
        pcap.len()
    );
    for (what, forms) in &needles {
        for f in forms {
            assert!(!contains(&pcap, f), "{what} is readable on the wire");
        }
    }
    drop(c);
    let plain = Cluster::up_insecure(2, 2);
    let (pcap, needles) = secrets_on_the_wire(&plain);
    // The secret itself never travels; without TLS its proof does. A sample of the file may
    // straddle the boundary of a captured segment or an HTTP/2 frame: most must be seen.
    let mut samples_seen = 0;
    for (what, forms) in &needles {
        let seen = forms.iter().any(|f| contains(&pcap, f));
        if what.starts_with("file bytes") {
            samples_seen += usize::from(seen);
        } else if what != "the cluster secret" {
            assert!(seen, "{what} not found in plain traffic");
        }
    }
    assert!(
        samples_seen >= 12,
        "only {samples_seen} of 16 file samples in plain traffic"
    );
}

/// Every node's certificate is replaced while puts run: the nodes load the new files, serve
/// them to new connections, and no request fails.
#[test]
fn certificates_rotate_under_writes_with_no_failed_request() {
    let c = Arc::new(Cluster::up(3, 2, &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (c, stop, done, failed) = (c.clone(), stop.clone(), done.clone(), failed.clone());
        std::thread::spawn(move || {
            let data = bytes(200_000, 3);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = c.put_data(&c.auth, &format!("/r{i}"), &data, &[]);
                if r.code == 0 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("put failed: {}", r.stderr);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            i
        })
    };
    wait_until(Duration::from_secs(60), "puts under way", || {
        done.load(Ordering::Relaxed) >= 3
    });
    let tls_dir = c.path().join("tls");
    let client = c.tls().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, role, id) in [
        ("meta-1", Role::Meta, 1),
        ("meta-2", Role::Meta, 2),
        ("meta-3", Role::Meta, 3),
        ("chunk-1", Role::Chunk, 1),
        ("chunk-2", Role::Chunk, 2),
    ] {
        let addr = node_addr(&c, name);
        let old = rt
            .block_on(dfs_common::tls::server_certificate(&addr, &client, role))
            .unwrap();
        let out = pki::issue(
            &tls_dir,
            &Identity::new(role, &id.to_string()).unwrap(),
            &[],
            &tls_dir,
            30,
        )
        .unwrap();
        let new = rustls_pem(&out.cert);
        assert_ne!(old.as_ref(), new.as_slice());
        wait_until(
            Duration::from_secs(30),
            "the node to serve its new certificate",
            || {
                rt.block_on(dfs_common::tls::server_certificate(&addr, &client, role))
                    .is_ok_and(|served| served.as_ref() == new.as_slice())
            },
        );
    }
    let before = done.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(60), "puts after the rotation", || {
        done.load(Ordering::Relaxed) >= before + 3
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a request failed");
    // The cluster still works end to end with the new certificates only.
    let data = bytes(300_000, 8);
    c.put_data(&c.auth, "/after", &data, &[]).ok();
    assert_eq!(c.get_data(&c.auth, "/after"), data);
}

fn rustls_pem(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .as_ref()
        .to_vec()
}

/// `dfsctl admin cert revoke` shuts a chunk server out (its heartbeats are refused, so it is
/// down for the cluster and its chunks are placed elsewhere); `--allow` lets it back in.
/// `cluster remove-member` shuts the removed metasrv's certificate out of Raft.
#[test]
fn revoked_and_removed_nodes_are_shut_out() {
    let c = Cluster::up(3, 2, &[]);
    let live = |c: &Cluster, id: u64| {
        c.status()["chunk_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id && s["live"] == true)
    };
    wait_until(Duration::from_secs(30), "chunk server 2 live", || {
        live(&c, 2)
    });
    c.ctl(&["admin", "cert", "revoke", "--role", "chunk", "--id", "2"])
        .ok();
    wait_until(Duration::from_secs(60), "chunk server 2 shut out", || {
        !live(&c, 2)
    });
    assert_eq!(c.status()["revoked"], serde_json::json!(["chunk 2"]));
    let meta = node_addr(&c, "meta-1");
    let ca_dir = c.path().join("tls");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let two = node_tls(&c, &ca_dir, Role::Chunk, 2);
    let e = rt
        .block_on(
            MetaClient::new(channel(&meta, Some(&two), Role::Meta)).heartbeat(
                dfs_proto::HeartbeatRequest {
                    node_id: 2,
                    ..Default::default()
                },
            ),
        )
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    c.ctl(&[
        "admin", "cert", "revoke", "--allow", "--role", "chunk", "--id", "2",
    ])
    .ok();
    wait_until(Duration::from_secs(60), "chunk server 2 back", || {
        live(&c, 2)
    });
    // A removed metadata node no longer speaks Raft, with its own certificate.
    c.ctl(&["cluster", "remove-member", "3"]).ok();
    let three = node_tls(&c, &ca_dir, Role::Meta, 3);
    let e = rt
        .block_on(
            RaftTransportClient::new(channel(&meta, Some(&three), Role::Meta)).vote(
                dfs_proto::RaftMessage {
                    target: 1,
                    payload: b"{}".to_vec(),
                },
            ),
        )
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("shut out"), "{e:?}");
    let data = bytes(50_000, 2);
    c.put_data(&c.auth, "/after", &data, &[]).ok();
    assert_eq!(c.get_data(&c.auth, "/after"), data);
}

/// Shows a fixed certificate chain with a key of the caller's choosing.
#[derive(Debug)]
struct Posing(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Posing {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A chunk server that presents metasrv 1's certificate (public, e.g. copied off the wire)
/// with its own key: the handshake fails, because it cannot sign as metasrv 1; the same
/// client with its own certificate gets through (so the refusal is the key, not the setup).
#[test]
fn a_certificate_without_its_key_gets_no_connection() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Cluster::up(1, 1, &[]);
    let tls_dir = c.path().join("tls");
    let meta = node_addr(&c, "meta-1");
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(c.ca.as_ref().unwrap()).unwrap())
        .unwrap();
    let chunk_key = PrivateKeyDer::from_pem_file(tls_dir.join("chunk-1.key")).unwrap();
    let signing = provider.key_provider.load_private_key(chunk_key).unwrap();
    let connect = |chain: Vec<CertificateDer<'static>>| {
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(Arc::new(Posing(Arc::new(
                rustls::sign::CertifiedKey::new(chain, signing.clone()),
            ))));
        let meta = meta.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&meta).await?;
            let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::try_from("meta.dfs").unwrap(), tcp)
                .await?;
            // The server checks the client's certificate after the client's last flight:
            // a refusal shows on the first read.
            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            s.flush().await?;
            let mut buf = [0u8; 9];
            s.read_exact(&mut buf).await?;
            Ok::<[u8; 9], std::io::Error>(buf)
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let meta_cert = CertificateDer::from_pem_file(tls_dir.join("meta-1.pem")).unwrap();
    let e = rt.block_on(connect(vec![meta_cert])).unwrap_err();
    eprintln!("posing as metasrv 1: {e}");
    let own = CertificateDer::from_pem_file(tls_dir.join("chunk-1.pem")).unwrap();
    let frame = rt
        .block_on(connect(vec![own]))
        .expect("its own certificate connects");
    // The server's first HTTP/2 frame: SETTINGS (type 4).
    assert_eq!(frame[3], 4, "{frame:?}");
}
