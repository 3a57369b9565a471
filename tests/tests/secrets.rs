//! Access keys never leave the auth files: not in any node's log, metrics, `saved-files.json`
//! or Raft store, and not in the error a wrong key gets (issue 19, hardening).
use dfs_tests::*;
use std::path::Path;
use std::time::Duration;

/// Every file under `dir` (recursively) whose bytes contain `needle`, auth files aside.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".auth") {
                if let Ok(b) = std::fs::read(&p) {
                    if b.windows(needle.len()).any(|w| w == needle) {
                        found.push(p.display().to_string());
                    }
                }
            }
        }
    }
    found
}

fn key_of(auth: &Path) -> String {
    let line = std::fs::read_to_string(auth).unwrap();
    let (_, key) = line.trim().split_once('/').expect("user/key");
    key.to_string()
}

#[test]
fn access_keys_appear_nowhere_but_in_the_auth_files() {
    let c = Cluster::up(3, 2, &[]);
    let alice = c.add_user("alice");
    c.put_data(&alice, "/a.txt", b"alice's", &[]).ok();
    c.ctl_as(&alice, &["ls", "/"]).ok();
    c.ctl(&["admin", "export"]).ok();
    // A wrong key: its error names the user, never a key.
    let wrong = c.path().join("wrong.auth");
    let guessed = "0".repeat(64);
    std::fs::write(&wrong, format!("alice/{guessed}\n")).unwrap();
    let err = c.ctl_as(&wrong, &["ls", "/"]).fails_with("wrong key");
    assert!(!err.contains(&guessed), "{err}");
    // saved-files.json is written by every member; wait until it lists the file.
    wait_until(
        std::time::Duration::from_secs(30),
        "saved-files.json",
        || !files_containing(c.path(), b"/a.txt").is_empty(),
    );
    let metrics: String = ["meta-1", "meta-2", "meta-3", "chunk-1", "chunk-2"]
        .iter()
        .map(|n| c.metrics_text(n))
        .collect();
    for auth in [&c.auth, &alice] {
        let key = key_of(auth);
        assert!(!metrics.contains(&key), "a key in the metrics");
        assert!(!err.contains(&key));
        let found = files_containing(c.path(), key.as_bytes());
        assert!(
            found.is_empty(),
            "the key of {} is in {found:?}",
            auth.display()
        );
    }
}

/// A `Meta` client over its own connection, from `local` (a loopback address) when given.
async fn meta_from(
    meta: &str,
    tls: Option<&std::sync::Arc<dfs_common::tls::Tls>>,
    local: Option<std::net::IpAddr>,
) -> dfs_proto::meta_client::MetaClient<tonic::transport::Channel> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{meta}"))
        .unwrap()
        .local_address(local);
    let channel = match tls {
        Some(t) => ep
            .connect_with_connector(
                dfs_common::tls::Connector::new(t.clone(), dfs_common::pki::Role::Meta)
                    .from_local_address(local),
            )
            .await
            .expect("connect"),
        None => ep.connect().await.expect("connect"),
    };
    dfs_proto::meta_client::MetaClient::new(channel)
}

/// `msg` with a user name and key in its headers.
fn as_user<T>(msg: T, user: &str, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert(dfs_common::headers::USER, user.parse().unwrap());
    req.metadata_mut()
        .insert(dfs_common::headers::KEY, key.parse().unwrap());
    req
}

async fn who_am_i(
    c: &mut dfs_proto::meta_client::MetaClient<tonic::transport::Channel>,
    user: &str,
    key: &str,
) -> Result<String, tonic::Status> {
    c.who_am_i(as_user(dfs_proto::Empty {}, user, key))
        .await
        .map(|r| r.into_inner().name)
}

/// 1,000 wrong keys in a row from one address: past 20 that address is refused for that user
/// without a check (the right key too), and counted; the right key still works from another
/// address, and another user from the same address is not affected.
#[test]
fn wrong_keys_are_rate_limited_per_address_and_user() {
    let c = Cluster::up(1, 0, &[]);
    let alice = c.add_user("alice");
    let bob = c.add_user("bob");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = c.tls();
        let mut attacker = meta_from(&c.meta, tls.as_ref(), None).await;
        let (mut unauthenticated, mut limited) = (0, 0);
        for i in 0..1000 {
            match who_am_i(&mut attacker, "alice", &format!("{i:064x}")).await {
                Err(s) if s.code() == tonic::Code::Unauthenticated => unauthenticated += 1,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    assert!(s.message().contains("too many failed logins"), "{s:?}");
                    limited += 1
                }
                other => panic!("a wrong key got {other:?}"),
            }
        }
        assert_eq!((unauthenticated, limited), (20, 980));
        let right = key_of(&alice);
        let e = who_am_i(&mut attacker, "alice", &right).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert_eq!(
            who_am_i(&mut attacker, "bob", &key_of(&bob)).await.unwrap(),
            "bob"
        );
        let mut elsewhere =
            meta_from(&c.meta, tls.as_ref(), Some("127.0.0.2".parse().unwrap())).await;
        assert_eq!(
            who_am_i(&mut elsewhere, "alice", &right).await.unwrap(),
            "alice"
        );
    });
    let m = c.metrics_text("meta-1");
    assert!(
        m.lines().any(|l| l == "dfs_auth_rate_limited_total 981"),
        "{m}"
    );
}

/// A request id is remembered for the user and method that used it: bob replaying alice's
/// mkdir request id gets his own answer (the directory exists), not the "done" remembered for
/// alice; with that id on another path his mkdir is applied as his own. Alice's directory
/// stays hers.
#[test]
fn a_replayed_request_id_of_another_user_gets_nothing_of_theirs() {
    let c = Cluster::up(1, 0, &[]);
    let alice = c.add_user("alice");
    let bob = c.add_user("bob");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = c.tls();
        let mut m = meta_from(&c.meta, tls.as_ref(), None).await;
        let mkdir = |auth: &Path, path: &str| {
            let creds = dfs_common::auth_file::read(auth).unwrap();
            let msg = dfs_proto::MkdirRequest {
                path: path.into(),
                parents: false,
                request_id: "0f1e2d3c-replayed-id".into(),
            };
            as_user(msg, &creds.user, &creds.key)
        };
        m.mkdir(mkdir(&alice, "/a")).await.expect("alice's mkdir");
        // Alice's own retry is answered from memory.
        m.mkdir(mkdir(&alice, "/a")).await.expect("alice's retry");
        let e = m.mkdir(mkdir(&bob, "/a")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
        m.mkdir(mkdir(&bob, "/b")).await.expect("bob's own mkdir");
    });
    assert_eq!(c.ctl(&["--json", "stat", "/a"]).json()["owner"], "alice");
    assert_eq!(c.ctl(&["--json", "stat", "/b"]).json()["owner"], "bob");
}

/// A caller that has not shown who it is may send only small requests (1 MiB): a 2 MiB
/// request without a key, or with a wrong one, is refused while it is read; the same request
/// from the admin reaches the handler (which refuses the over-long path itself).
#[test]
fn unauthenticated_requests_are_small() {
    let c = Cluster::up(1, 0, &[]);
    let admin = dfs_common::auth_file::read(&c.auth).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = c.tls();
        let mut m = meta_from(&c.meta, tls.as_ref(), None).await;
        let big = |creds: Option<(&str, &str)>| {
            let msg = dfs_proto::MkdirRequest {
                path: format!("/{}", "x".repeat(2 << 20)),
                ..Default::default()
            };
            match creds {
                Some((user, key)) => as_user(msg, user, key),
                None => tonic::Request::new(msg),
            }
        };
        let wrong = "0".repeat(64);
        for creds in [None, Some((admin.user.as_str(), wrong.as_str()))] {
            let e = m.mkdir(big(creds)).await.unwrap_err();
            assert_ne!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(
                dfs_common::tls::error_chain(&e).contains("length limit exceeded"),
                "{e:?}"
            );
        }
        let e = m
            .mkdir(big(Some((admin.user.as_str(), admin.key.as_str()))))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    // The node is fine.
    c.ctl(&["mkdir", "/ok"]).ok();
}

/// A follower checks a key it can check before it hands the request to the leader: a wrong
/// key for a user it knows is refused (and counted) there, and never reaches the leader.
#[test]
fn a_follower_refuses_a_wrong_key_before_forwarding() {
    let c = Cluster::up(3, 0, &[]);
    let alice = c.add_user("alice");
    let leader = c.leader();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let addr = c.meta_addrs()[follower as usize - 1].clone();
    // The follower knows alice once it has applied her creation.
    wait_until(
        Duration::from_secs(30),
        "alice known on the follower",
        || {
            c.ctl_env(&addr, &alice, &["--json", "ls", "--stale", "/"], None)
                .code
                == 0
        },
    );
    let failures = |node: u64| {
        let m = c.metrics_text(&format!("meta-{node}"));
        m.lines()
            .find_map(|l| l.strip_prefix("dfs_auth_failures_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = (failures(follower), failures(leader));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = c.tls();
        let mut m = meta_from(&addr, tls.as_ref(), None).await;
        let e = who_am_i(&mut m, "alice", &"0".repeat(64))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert_eq!(
            who_am_i(&mut m, "alice", &key_of(&alice)).await.unwrap(),
            "alice"
        );
    });
    assert_eq!(failures(follower), before.0 + 1.0);
    assert_eq!(failures(leader), before.1);
}

/// A commit naming a million chunks is refused with a sentence (not an entry too large to
/// replicate), and nothing is created.
#[test]
fn a_commit_with_a_million_chunks_is_refused() {
    let c = Cluster::up(1, 0, &[]);
    let admin = dfs_common::auth_file::read(&c.auth).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = c.tls();
        let mut m = meta_from(&c.meta, tls.as_ref(), None)
            .await
            .max_encoding_message_size(64 << 20);
        let chunks: Vec<dfs_proto::ChunkInfo> = (0..1_000_000u64)
            .map(|i| dfs_proto::ChunkInfo {
                chunk_id: format!("{i:032x}"),
                size: 8 << 20,
                ..Default::default()
            })
            .collect();
        let msg = dfs_proto::CommitRequest {
            path: "/huge".into(),
            size: 1_000_000 * (8 << 20),
            chunks,
            ..Default::default()
        };
        let e = m
            .commit_file(as_user(msg, &admin.user, &admin.key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("a file has at most 140000 chunks"),
            "{e:?}"
        );
    });
    c.ctl(&["stat", "/huge"]).fails_with("no such file");
}
