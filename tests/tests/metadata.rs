//! The metadata group with real metasrv processes: election, forwarding, failover, restarts,
//! membership changes with snapshots, saved-files.json, users, and refusals of bad input.
use dfs_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const ORIGIN_EXAMPLE: &str = r#"[
    {
        "created": "2026-11-26 20:00:22.183404",
        "id": "fad66034-2b7d-424c-aeff-da206e6d6b6a",
        "last_edited": "2026-11-26 20:00:22.183413",
        "name": "hello.txt",
        "owner": "adrian",
        "permissions": {},
        "size": "132",
        "sha256": "1214b68d350d100ca47d140ead9f854b21f9a12308b2a4159ae5a536fa93b12f",
        "chunks": [
            {"chunk_id": "a2aa722d-5f47-44a4-8c35-717f135792da", "file_name": "hello.txt", "index": 1, "worker_id": "ac408170-a374-4024-8510-cfb2ee8650fd"},
            {"chunk_id": "ac806cb4-87c3-4a4c-a60b-18b3bca83dd9", "file_name": "hello.txt", "index": 2, "worker_id": "ac408170-a374-4024-8510-cfb2ee8650fd"}
        ]
    }
]"#;

fn ls(c: &Cluster, path: &str) -> Vec<String> {
    c.ctl(&["ls", "-R", path])
        .ok()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn leader_is_elected_and_a_follower_takes_writes() {
    let c = Cluster::up(3, 0, &[]);
    let leader = c.leader();
    let status = c.status();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(status["term"].as_u64().unwrap() >= 1);
    let follower = (leader % 3) as usize; // an index into meta_addrs that is not the leader
    let addrs = c.meta_addrs();
    assert_ne!(follower as u64 + 1, leader);
    // Only the follower's address: the write must be forwarded to the leader.
    c.ctl_env(
        &addrs[follower],
        &c.auth,
        &["mkdir", "-p", "/via/follower"],
        None,
    )
    .ok();
    // Read back through another node, linearizably.
    let other = addrs[(follower + 1) % 3].clone();
    let out = c.ctl_env(&other, &c.auth, &["ls", "-R", "/"], None).ok();
    assert!(out.contains("/via/follower/"), "{out}");
    // A stale read from the follower itself sees it once applied there.
    wait_until(Duration::from_secs(5), "follower applied the write", || {
        c.ctl_env(&addrs[follower], &c.auth, &["ls", "--stale", "/via"], None)
            .stdout
            .contains("/via/follower")
    });
}

#[test]
fn a_client_sent_to_a_follower_moves_to_the_leader() {
    let c = Cluster::up(3, 1, &[]);
    let leader = c.leader() as usize;
    let follower = leader % 3 + 1; // a member id that is not the leader
    let addrs = c.meta_addrs();
    // The follower first: the client asks every member at once and the leader answers as
    // such (or, on a slow machine, the allocation is forwarded and its reply names the
    // leader), so the commit of the put goes to the leader directly.
    let meta = [&addrs[follower - 1], &addrs[leader - 1]]
        .map(|a| a.as_str())
        .join(",");
    c.ctl_env(&meta, &c.auth, &["put", "-", "/routed"], Some(b"routed"))
        .ok();
    let count = |node: usize, method: &str| -> u64 {
        let needle = format!(
            "dfs_meta_request_duration_seconds_count{{method=\"{method}\",outcome=\"ok\"}} "
        );
        c.metrics_text(&format!("meta-{node}"))
            .lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert!(count(follower, "allocate_chunks") <= 1);
    assert_eq!(
        count(follower, "commit_file"),
        0,
        "commit went through the follower"
    );
    assert_eq!(count(leader, "commit_file"), 1);
}

#[test]
fn leader_sigkill_loses_no_acknowledged_write() {
    let c = Cluster::up(3, 0, &[]);
    for i in 0..20 {
        c.ctl(&["mkdir", "-p", &format!("/before/d{i}")]).ok();
    }
    let leader = c.leader();
    c.kill(&format!("meta-{leader}"));
    // A new leader takes writes.
    c.ctl(&["mkdir", "/after"]).ok();
    let new_leader = c.leader();
    assert_ne!(new_leader, leader);
    let listing = ls(&c, "/before");
    assert_eq!(listing.len(), 20, "{listing:?}");
    // The old leader comes back and catches up.
    c.start(&format!("meta-{leader}"));
    c.wait_converged(3, 22);
}

#[test]
fn everything_survives_sigkill_of_all_members() {
    let c = Cluster::up(3, 0, &[]);
    let alice = c.add_user("alice");
    c.ctl_as(&alice, &["mkdir", "-p", "/alice/docs"]).ok();
    c.ctl(&["mkdir", "/admin-dir"]).ok();
    for n in 1..=3 {
        c.kill(&format!("meta-{n}"));
    }
    c.ctl(&["--timeout", "1", "ls", "/"])
        .fails_with("no metadata node");
    for n in 1..=3 {
        c.start(&format!("meta-{n}"));
    }
    c.leader();
    let out = c.ctl_as(&alice, &["ls", "-R", "/"]).ok();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["/alice/", "/alice/docs/"]
    );
    assert!(c.ctl(&["ls", "/"]).ok().contains("/admin-dir/"));
}

#[test]
fn a_member_added_online_catches_up_from_a_snapshot() {
    let c = Cluster::up(
        3,
        0,
        &["--snapshot-every=20", "--keep-logs=5", "--purge-batch=1"],
    );
    for i in 0..60 {
        c.ctl(&["mkdir", "-p", &format!("/s/d{i}")]).ok();
    }
    // Start node 4 by hand, empty, joining.
    let addr = free_addr();
    let mut child = c.spawn_joining_meta(4, &addr);
    // Two adds of the same node at once (what a client's retry of a slow add does): both
    // succeed, the second by waiting for the first one's membership change.
    let twin = c.ctl_spawn(&["--timeout", "60", "cluster", "add-member", "4", &addr]);
    c.ctl(&["--timeout", "60", "cluster", "add-member", "4", &addr])
        .ok();
    let twin = Run::from(twin.wait_with_output().unwrap());
    assert_eq!(twin.code, 0, "the concurrent add: {}", twin.stderr);
    // It is a voter with the same state; it got there through a snapshot, since the log
    // before the snapshot was purged.
    wait_until(Duration::from_secs(30), "node 4 to catch up", || {
        let s = c.status();
        let ms = s["members"].as_array().unwrap().clone();
        let max = ms
            .iter()
            .map(|m| m["applied"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0);
        ms.iter()
            .any(|m| m["id"] == 4 && m["applied"].as_u64() == Some(max) && m["role"] == "follower")
    });
    // The leaders purged their logs (purge batch 1), so a snapshot was the only way in.
    let log = std::fs::read_to_string(c.path().join("meta-4.log")).unwrap();
    assert!(
        log.contains("snapshot installed"),
        "node 4 should have installed a snapshot:\n{log}"
    );
    let listing = c
        .ctl_env(&addr, &c.auth, &["ls", "--stale", "/s"], None)
        .ok();
    assert_eq!(listing.lines().count(), 60);
    // And it can be removed again.
    c.ctl(&["cluster", "remove-member", "4"]).ok();
    wait_until(Duration::from_secs(10), "node 4 gone from members", || {
        !c.status()["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 4)
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn saved_files_json_matches_on_every_node_and_import_works() {
    let c = Cluster::up(3, 0, &[]);
    let f = c.path().join("old-saved-files.json");
    std::fs::write(&f, ORIGIN_EXAMPLE).unwrap();
    let report = c.ctl(&["admin", "import", f.to_str().unwrap()]).ok();
    assert!(report.contains("imported /hello.txt"), "{report}");
    assert!(report.contains("cannot be recovered"), "{report}");
    // Importing again reports the name as taken and changes nothing.
    assert!(c
        .ctl(&["admin", "import", f.to_str().unwrap()])
        .ok()
        .contains("already exists"));
    for n in 1..=3 {
        let p = c
            .path()
            .join(format!("meta-{n}/cache-metadata/saved-files.json"));
        wait_until(Duration::from_secs(5), "saved-files.json written", || {
            std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v.as_array().map(|a| a.len()) == Some(1))
        });
        let text = std::fs::read_to_string(&p).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let file = &v[0];
        assert_eq!(file["name"], "/hello.txt");
        assert_eq!(file["owner"], "adrian");
        assert_eq!(file["size"], "132", "size is a string, as in the original");
        assert_eq!(file["permissions"], serde_json::json!({}));
        assert_eq!(file["chunks"][1]["index"], 2);
        let keys: Vec<&str> = [
            "\"created\"",
            "\"id\"",
            "\"last_edited\"",
            "\"name\"",
            "\"owner\"",
            "\"permissions\"",
            "\"size\"",
            "\"sha256\"",
            "\"chunks\"",
        ]
        .to_vec();
        let pos: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "original key order");
        let key = std::fs::read_to_string(&c.auth).unwrap();
        let key = key.split('/').nth(1).unwrap();
        assert!(!text.contains(key), "no secret in saved-files.json");
    }
    // The export through the cluster is the same document.
    let exported: Value = serde_json::from_str(&c.ctl(&["admin", "export"]).ok()).unwrap();
    assert_eq!(exported[0]["id"], "fad66034-2b7d-424c-aeff-da206e6d6b6a");
}

#[test]
fn users_see_and_change_only_their_own() {
    let c = Cluster::up(1, 0, &[]);
    let alice = c.add_user("alice");
    let bob = c.add_user("bob");
    c.ctl_as(&alice, &["mkdir", "/a"]).ok();
    c.ctl_as(&bob, &["mkdir", "/b"]).ok();
    assert_eq!(c.ctl_as(&alice, &["ls", "/"]).ok().trim(), "/a/");
    assert_eq!(c.ctl_as(&bob, &["ls", "/"]).ok().trim(), "/b/");
    let all = c.ctl(&["ls", "/"]).ok();
    assert!(all.contains("/a/") && all.contains("/b/"));
    c.ctl_as(&bob, &["ls", "/a"])
        .fails_with("permission denied");
    c.ctl_as(&bob, &["stat", "/a"])
        .fails_with("permission denied");
    c.ctl_as(&bob, &["rm", "-r", "/a"])
        .fails_with("permission denied");
    c.ctl_as(&bob, &["mv", "/a", "/mine"])
        .fails_with("permission denied");
    c.ctl_as(&bob, &["mkdir", "/a/x"])
        .fails_with("permission denied");
    c.ctl_as(&alice, &["user", "add", "carol"])
        .fails_with("not an admin");
    c.ctl_as(&alice, &["user", "list"])
        .fails_with("not an admin");
    let users = c.ctl(&["user", "list"]).ok();
    assert!(users.contains("alice") && users.contains("bob") && users.contains("admin"));
    c.ctl(&["user", "remove", "bob"]).ok();
    c.ctl_as(&bob, &["ls", "/"]).fails_with("unknown user");
    // Self-registration is off unless metasrv allows it.
    let out = c.path().join("dave.auth");
    c.ctl(&["register", "dave", "--out", out.to_str().unwrap()])
        .fails_with("self-registration is disabled");
    assert!(!out.exists());
}

#[test]
fn self_registration_writes_an_auth_file() {
    let c = Cluster::up(1, 0, &["--allow-self-register"]);
    let out = c.path().join("erin.auth");
    c.ctl(&["register", "erin", "--out", out.to_str().unwrap()])
        .ok();
    let line = std::fs::read_to_string(&out).unwrap();
    assert!(
        line.starts_with("erin/") && !line.ends_with('\n'),
        "auth.txt is one line user/key: {line:?}"
    );
    assert_eq!(c.ctl_as(&out, &["whoami"]).ok().trim(), "erin (user)");
    c.ctl(&[
        "register",
        "erin",
        "--out",
        c.path().join("again.auth").to_str().unwrap(),
    ])
    .fails_with("already exists");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = Cluster::up(3, 0, &[]);
    let f = c.path().join("old.json");
    std::fs::write(&f, ORIGIN_EXAMPLE).unwrap();
    c.ctl(&["admin", "import", f.to_str().unwrap()]).ok();
    c.ctl(&["mkdir", "-p", "/d/e"]).ok();
    let before = c.ctl(&["ls", "-R", "/"]).ok();

    let ghost = c.path().join("ghost.auth");
    std::fs::write(&ghost, "ghost/0000").unwrap();
    c.ctl_as(&ghost, &["mkdir", "/g"])
        .fails_with("unknown user");
    let key = std::fs::read_to_string(&c.auth).unwrap();
    let wrong = c.path().join("wrong.auth");
    std::fs::write(&wrong, format!("admin/{}x", key.split('/').nth(1).unwrap())).unwrap();
    c.ctl_as(&wrong, &["mkdir", "/g"]).fails_with("wrong key");
    let none = c.path().join("missing.auth");
    c.ctl_as(&none, &["ls", "/"])
        .fails_with("cannot read auth file");
    c.ctl(&["mkdir", "/a/../b"]).fails_with("not allowed");
    c.ctl(&["mkdir", ""]).fails_with("");
    c.ctl(&["mkdir", &format!("/{}", "n".repeat(300))])
        .fails_with("longer than 255");
    c.ctl(&["mkdir", "/hello.txt"]).fails_with("is a file");
    c.ctl(&["mkdir", "-p", "/hello.txt/sub"])
        .fails_with("is a file");
    c.ctl(&["rm", "/d"]).fails_with("directory not empty");
    c.ctl(&["rm", "/"]).fails_with("root");
    c.ctl(&["mv", "/d", "/d/e/inside"])
        .fails_with("into itself");
    c.ctl(&["rm", "/nope"]).fails_with("no such file");
    assert_eq!(
        c.ctl(&["ls", "-R", "/"]).ok(),
        before,
        "refusals changed nothing"
    );
    // Usage errors exit 2.
    assert_eq!(c.ctl(&["mkdir"]).code, 2);
    assert_eq!(c.ctl(&["frobnicate"]).code, 2);
}

#[test]
fn a_node_from_another_cluster_is_refused() {
    let c = Cluster::up(3, 0, &[]);
    c.leader();
    // A new node of another cluster (another secret, a certificate from another CA): it and
    // the members do not trust each other, and it says so.
    let other = c.path().join("other.secret");
    std::fs::write(&other, "a-completely-different-secret-value").unwrap();
    let other_ca = c.path().join("other-ca");
    dfs_common::pki::init_ca(&other_ca, "other", 1).unwrap();
    let cert = dfs_common::pki::issue(
        &other_ca,
        &dfs_common::pki::Identity::new(dfs_common::pki::Role::Meta, "9").unwrap(),
        &[],
        &other_ca,
        1,
    )
    .unwrap();
    let peers: Vec<String> = c
        .meta_addrs()
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let out = Command::new(bin("metasrv"))
        .args([
            "--id",
            "9",
            "--join",
            "--listen",
            &free_addr(),
            "--metrics",
            &free_addr(),
        ])
        .arg(format!("--peers={}", peers.join(",")))
        .arg("--data-dir")
        .arg(c.path().join("intruder"))
        .arg("--cluster-secret-file")
        .arg(&other)
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .arg("--tls-ca")
        .arg(other_ca.join("ca.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("do not trust each other's certificates") && err.contains("UnknownIssuer"),
        "{err}"
    );
    // An existing member restarted with another secret refuses to start on its data dir.
    c.kill("meta-3");
    let cluster: Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("cluster.json")).unwrap())
            .unwrap();
    let args: Vec<String> = cluster["nodes"][2]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            if a.starts_with("--cluster-secret-file=") {
                format!("--cluster-secret-file={}", other.display())
            } else {
                a
            }
        })
        .collect();
    let out = Command::new(bin("metasrv")).args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to another cluster"), "{err}");
    // The cluster is unaffected.
    c.ctl(&["mkdir", "/still-fine"]).ok();
}

/// A user add retried after its first attempt created the user (a reply lost in a leader
/// change) answers with the same key; another call for the same name is refused.
#[test]
fn a_retried_user_add_returns_the_same_key() {
    use dfs_proto::meta_client::MetaClient;
    use dfs_proto::{Empty, UserAddRequest};
    let c = Cluster::up(3, 0, &[]);
    let admin = dfs_common::auth_file::read(&c.auth).unwrap();
    let addr = c.meta.split(',').next().unwrap().to_string();
    fn as_user<T>(msg: T, user: &str, key: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert(dfs_common::headers::USER, user.parse().unwrap());
        r.metadata_mut()
            .insert(dfs_common::headers::KEY, key.parse().unwrap());
        r
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = MetaClient::new(c.meta_channel(&addr));
        let add = |request_id: &str| UserAddRequest {
            name: "bob".into(),
            admin: false,
            request_id: request_id.into(),
        };
        let first = cl
            .user_add(as_user(add("call-1"), &admin.user, &admin.key))
            .await
            .unwrap()
            .into_inner();
        let retry = cl
            .user_add(as_user(add("call-1"), &admin.user, &admin.key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.key, retry.key);
        let other = cl
            .user_add(as_user(add("call-2"), &admin.user, &admin.key))
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");
        let me = cl
            .who_am_i(as_user(Empty {}, "bob", &first.key))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.name, "bob");
    });
    assert_eq!(
        c.ctl(&["user", "list"])
            .ok()
            .lines()
            .filter(|l| l.contains("bob"))
            .count(),
        1
    );
}

/// Issue 26, bug 1: a node that cannot catch up (nothing listens at its address) is not made
/// a voter: add-member fails within --timeout with a clear error and the membership stays as
/// it was (three voters, no learner left behind).
#[test]
fn add_member_that_cannot_catch_up_fails_and_changes_nothing() {
    let c = Cluster::up(3, 0, &[]);
    c.leader();
    let t = std::time::Instant::now();
    c.ctl(&[
        "--timeout",
        "5",
        "cluster",
        "add-member",
        "4",
        "127.0.0.1:1",
    ])
    .fails_with("did not catch up");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    wait_until(
        Duration::from_secs(20),
        "membership back to 1, 2, 3",
        || {
            let s = c.status();
            let mut ids: Vec<u64> = s["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_u64().unwrap())
                .collect();
            ids.sort();
            ids == [1, 2, 3]
        },
    );
    c.ctl(&["mkdir", "/still-writable"]).ok();
}

/// Resumes a SIGSTOPped process when dropped, so a failed test leaves nothing frozen.
/// `DFS_META` with the node `first` first, then the others.
fn meta_with_first(c: &Cluster, first: u64) -> String {
    let addrs = c.meta_addrs();
    let mut order = vec![addrs[first as usize - 1].clone()];
    order.extend(
        addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 + 1 != first)
            .map(|(_, a)| a.clone()),
    );
    order.join(",")
}

/// Issue 26, bug 5: a frozen (SIGSTOP: its sockets accept, it answers nothing) follower named
/// first in DFS_META costs the client no wait: every member is asked at once and the leader
/// answers. Commands take well under a second (the old client waited 5 s for the first node).
#[test]
fn a_frozen_follower_named_first_does_not_delay_commands() {
    let c = Cluster::up(3, 0, &[]);
    let leader = c.leader();
    let follower = leader % 3 + 1;
    let meta = meta_with_first(&c, follower);
    let _frozen = c.freeze(&format!("meta-{follower}"));
    let mut took = Vec::new();
    for i in 0..3 {
        let t = std::time::Instant::now();
        c.ctl_env(&meta, &c.auth, &["mkdir", &format!("/quick{i}")], None)
            .ok();
        c.ctl_env(&meta, &c.auth, &["ls", "/"], None).ok();
        took.push(t.elapsed() / 2);
    }
    eprintln!("commands with a frozen first node took {took:?}");
    // The fastest shows the normal case; the bound on all of them leaves room for a loaded
    // machine and is still well under the 5 s the first node used to cost.
    assert!(
        took.iter().min().unwrap() < &Duration::from_secs(1),
        "{took:?}"
    );
    assert!(took.iter().all(|t| *t < Duration::from_secs(3)), "{took:?}");
}

/// Issue 26, bug 5: with the leader frozen and named first in DFS_META, the next command
/// succeeds through the new leader within the election time plus a second: the client passes
/// over the silent node after a short ping deadline, and a follower holding the request for
/// the old leader sends it to the new one as soon as it is elected.
#[test]
fn a_frozen_leader_named_first_is_passed_over_within_election_time() {
    let c = Cluster::up(3, 0, &[]);
    let leader = c.leader();
    c.ctl(&["mkdir", "/before"]).ok();
    let meta = meta_with_first(&c, leader);
    let frozen = c.freeze(&format!("meta-{leader}"));
    let t = std::time::Instant::now();
    c.ctl_env(
        &meta,
        &c.auth,
        &["--timeout", "20", "mkdir", "/after"],
        None,
    )
    .ok();
    let took = t.elapsed();
    // Election time with the default timings: the old leader's lease (the maximum election
    // timeout, 200 ms) plus a random timeout of at most 200 ms. The extra second of the bound
    // below is the issue's; one more is for process start-up on a loaded machine.
    let election = Duration::from_millis(400);
    eprintln!("first command with the leader frozen took {took:?}");
    assert!(
        took < election + Duration::from_secs(2),
        "took {took:?} (the old client waited 5 s for the frozen node)"
    );
    let t = std::time::Instant::now();
    c.ctl_env(&meta, &c.auth, &["ls", "/"], None).ok();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let s = c.ctl_env(
        &meta,
        &c.auth,
        &["--json", "--timeout", "5", "cluster", "status"],
        None,
    );
    let s: Value = serde_json::from_str(s.ok().trim()).unwrap();
    assert_ne!(s["leader"].as_u64(), Some(leader), "{s}");
    drop(frozen);
    c.wait_converged(3, 1);
}

/// Issue 26, bug 4: when the admin user the local cluster uses was removed (by another admin),
/// `local up` fails at once, naming the cause and the way back, instead of waiting its full
/// minute for a key that cannot become right; the way back it prints works.
#[test]
fn local_up_after_its_admin_was_removed_fails_at_once_with_the_way_back() {
    let c = Cluster::up(1, 0, &[]);
    let other = c.path().join("root2.auth");
    let other_s = other.to_str().unwrap();
    c.ctl(&["user", "add", "root2", "--admin", "--out", other_s])
        .ok();
    c.ctl_as(&other, &["user", "remove", "admin"]).ok();
    let t = std::time::Instant::now();
    let err = c.local(&["up"]).fails_with("was removed");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(err.contains("user add admin --admin --out"), "{err}");
    // The way back, as printed.
    let auth = c.auth.to_str().unwrap();
    std::fs::rename(&c.auth, format!("{auth}.old")).unwrap();
    c.ctl_as(&other, &["user", "add", "admin", "--admin", "--out", auth])
        .ok();
    c.local(&["up"]).ok();
    c.ctl(&["ls", "/"]).ok();
}

/// Reads served from the leader's lease are never stale: a leader frozen (SIGSTOP) while it held
/// a lease, replaced, and resumed with reads already waiting in its socket answers none of them
/// from its old state. Each must either see the write the new leader acknowledged meanwhile or
/// be refused (not leader, unavailable); "not found" would be a stale read.
#[test]
fn a_resumed_old_leader_serves_no_stale_read_from_its_lease() {
    use dfs_proto::meta_client::MetaClient;
    use dfs_proto::StatRequest;
    let c = Cluster::up(3, 0, &[]);
    let old = c.leader();
    let admin = dfs_common::auth_file::read(&c.auth).unwrap();
    let addr = c.meta_addrs()[old as usize - 1].clone();
    let stat = |path: &str| {
        let mut r = tonic::Request::new(StatRequest {
            path: path.into(),
            stale: false,
        });
        r.metadata_mut()
            .insert(dfs_common::headers::USER, admin.user.parse().unwrap());
        r.metadata_mut()
            .insert(dfs_common::headers::KEY, admin.key.parse().unwrap());
        r
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cl = {
        let _in_rt = rt.enter();
        MetaClient::new(c.meta_channel(&addr))
    };
    // A read through the old leader gives it a lease.
    rt.block_on(cl.stat(stat("/"))).unwrap();
    let frozen = c.freeze(&format!("meta-{old}"));
    c.ctl(&["--timeout", "20", "mkdir", "/after"]).ok();
    // Reads sent while it is frozen wait in its socket; it meets them as soon as it runs.
    let answers = rt.block_on(async {
        let pending: Vec<_> = (0..8)
            .map(|_| {
                let mut cl = cl.clone();
                let req = stat("/after");
                tokio::spawn(async move { cl.stat(req).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(frozen);
        let mut answers = Vec::new();
        for p in pending {
            answers.push(p.await.unwrap());
        }
        answers
    });
    for a in &answers {
        if let Err(s) = a {
            assert_ne!(s.code(), tonic::Code::NotFound, "stale read: {s:?}");
        }
    }
    c.wait_converged(3, 1);
}
