//! The data path with real processes: put/get round trips, failures of chunk servers and of the
//! metadata leader, owner-only access, chunk tokens, corruption on disk, interrupted puts.
//! Chunks are 64 KiB here so multi-chunk files stay small.
use dfs_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CHUNK: usize = 64 * 1024;

fn cluster(chunks: u32) -> Cluster {
    Cluster::up(3, chunks, &["--chunk-size=65536"])
}

fn put_bytes(c: &Cluster, auth: &Path, remote: &str, data: &[u8], extra: &[&str]) -> Run {
    let local = c.path().join(format!("upload-{}", rand::random::<u64>()));
    std::fs::write(&local, data).unwrap();
    let mut args = vec!["put", local.to_str().unwrap(), remote];
    args.extend_from_slice(extra);
    c.ctl_as(auth, &args)
}

fn get_bytes(c: &Cluster, auth: &Path, remote: &str) -> Vec<u8> {
    let local = c.path().join(format!("download-{}", rand::random::<u64>()));
    c.ctl_as(auth, &["get", remote, local.to_str().unwrap()])
        .ok();
    std::fs::read(&local).unwrap()
}

fn stat(c: &Cluster, remote: &str) -> Value {
    c.ctl(&["--json", "stat", remote]).json()
}

/// Chunk files (primary copies) on one chunk server.
fn chunk_files(c: &Cluster, server: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = c.path().join(server).join("chunks");
    for fan in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(fan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().to_string();
            if !name.starts_with('.') {
                out.push(f.path());
            }
        }
    }
    out
}

fn all_chunk_files(c: &Cluster) -> usize {
    (1..=3)
        .map(|i| chunk_files(c, &format!("chunk-{i}")).len())
        .sum()
}

#[test]
fn round_trips_are_byte_identical() {
    let c = cluster(3);
    for (i, size) in [0, 1, CHUNK, CHUNK + 1, 5 * CHUNK + 123]
        .into_iter()
        .enumerate()
    {
        let data = bytes(size, i as u64);
        let remote = format!("/rt/f{size}");
        put_bytes(&c, &c.auth, &remote, &data, &[]).ok();
        assert_eq!(get_bytes(&c, &c.auth, &remote), data, "size {size}");
        let s = stat(&c, &remote);
        assert_eq!(s["size"], size);
        assert_eq!(s["sha256"], sha256_hex(&data));
        assert_eq!(s["chunks"].as_array().unwrap().len(), size.div_ceil(CHUNK));
        assert_eq!(s["fully_replicated"], true);
        for ch in s["chunks"].as_array().unwrap() {
            let reps: Vec<u64> = ch["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
                .collect();
            assert_eq!(reps.len(), 2, "replication 2 by default");
            assert_ne!(reps[0], reps[1], "never two replicas on one server");
        }
    }
    // stdin in, stdout out.
    let data = bytes(3 * CHUNK + 7, 99);
    c.ctl_env(&c.meta, &c.auth, &["put", "-", "/rt/stdin"], Some(&data))
        .ok();
    let out = std::process::Command::new(bin("dfsctl"))
        .args(["cat", "/rt/stdin"])
        .env("DFS_META", &c.meta)
        .env("DFS_AUTH_FILE", &c.auth)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
    // An existing name needs -f; -f replaces it atomically.
    put_bytes(&c, &c.auth, "/rt/f1", b"other", &[]).fails_with("already exists");
    put_bytes(&c, &c.auth, "/rt/f1", b"other", &["-f"]).ok();
    assert_eq!(get_bytes(&c, &c.auth, "/rt/f1"), b"other");
}

#[test]
fn files_survive_a_chunk_server_and_the_leader_dying() {
    let c = cluster(3);
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("/s/f{i}"), bytes(2 * CHUNK + i * 1000, i as u64)))
        .collect();
    for (p, d) in &files {
        put_bytes(&c, &c.auth, p, d, &[]).ok();
    }
    c.kill("chunk-1");
    for (p, d) in &files {
        assert_eq!(&get_bytes(&c, &c.auth, p), d, "{p} after chunk-1 died");
    }
    let leader = c.leader();
    c.kill(&format!("meta-{leader}"));
    for (p, d) in &files {
        assert_eq!(&get_bytes(&c, &c.auth, p), d, "{p} after the leader died");
    }
    // Writes go on with two chunk servers and a new leader.
    put_bytes(&c, &c.auth, "/s/new", b"still writable", &[]).ok();
}

#[test]
fn with_no_live_chunk_server_a_put_is_refused_and_leaves_nothing() {
    let c = cluster(2);
    c.kill("chunk-1");
    c.kill("chunk-2");
    wait_until(
        Duration::from_secs(15),
        "chunk servers to be seen as down",
        || {
            c.status()["chunk_servers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["live"] == false)
        },
    );
    let err =
        put_bytes(&c, &c.auth, "/nothing", b"data", &[]).fails_with("no chunk server is live");
    assert!(err.contains("start one"), "{err}");
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
    c.ctl(&["stat", "/nothing"]).fails_with("no such file");
}

#[test]
fn with_fewer_servers_than_replicas_the_file_is_under_replicated() {
    let c = cluster(2);
    let data = bytes(CHUNK + 5, 3);
    put_bytes(&c, &c.auth, "/three", &data, &["--replication", "3"]).ok();
    let s = stat(&c, "/three");
    assert_eq!(s["replication"], 3);
    assert_eq!(s["fully_replicated"], false);
    assert_eq!(get_bytes(&c, &c.auth, "/three"), data);
}

#[test]
fn users_reach_only_their_own_files() {
    let c = cluster(2);
    let alice = c.add_user("alice");
    let bob = c.add_user("bob");
    let data = bytes(CHUNK + 1, 5);
    put_bytes(&c, &alice, "/alice/secret", &data, &[]).ok();
    assert_eq!(c.ctl_as(&bob, &["ls", "-R", "/"]).ok(), "");
    c.ctl_as(
        &bob,
        &[
            "get",
            "/alice/secret",
            c.path().join("stolen").to_str().unwrap(),
        ],
    )
    .fails_with("permission denied");
    assert!(!c.path().join("stolen").exists());
    c.ctl_as(&bob, &["cat", "/alice/secret"])
        .fails_with("permission denied");
    put_bytes(&c, &bob, "/alice/secret", b"replaced", &["-f"]).fails_with("permission denied");
    c.ctl_as(&bob, &["rm", "/alice/secret"])
        .fails_with("permission denied");
    c.ctl_as(&bob, &["mv", "/alice/secret", "/mine"])
        .fails_with("permission denied");
    // Someone else's name with your own key is refused.
    let bob_key = std::fs::read_to_string(&bob).unwrap();
    let forged = c.path().join("forged.auth");
    std::fs::write(
        &forged,
        format!("alice/{}", bob_key.split('/').nth(1).unwrap()),
    )
    .unwrap();
    c.ctl_as(&forged, &["cat", "/alice/secret"])
        .fails_with("wrong key");
    // No key at all.
    let empty = c.path().join("none.auth");
    std::fs::write(&empty, "alice/").unwrap();
    c.ctl_as(&empty, &["ls", "/"]).fails_with("auth file");
    // The owner and the admin read it.
    assert_eq!(get_bytes(&c, &alice, "/alice/secret"), data);
    assert_eq!(get_bytes(&c, &c.auth, "/alice/secret"), data);
}

#[test]
fn chunk_servers_serve_nothing_without_a_valid_token() {
    use dfs_common::token::{ClusterSecret, Op};
    use dfs_proto::chunk_client::ChunkClient;
    use dfs_proto::{ReadChunkRequest, WriteChunkRequest};
    let c = cluster(1);
    let data = bytes(1000, 8);
    put_bytes(&c, &c.auth, "/t", &data, &[]).ok();
    let s = stat(&c, "/t");
    let chunk = s["chunks"][0]["id"].as_str().unwrap().to_string();
    let addr = s["chunks"][0]["addrs"][0].as_str().unwrap().to_string();
    let secret = ClusterSecret::load(&c.secret_file()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = ChunkClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let read = |token: String| {
            let mut cl = cl.clone();
            let chunk = chunk.clone();
            async move {
                let mut s = cl
                    .read(ReadChunkRequest {
                        chunk_id: chunk,
                        token,
                    })
                    .await?
                    .into_inner();
                let mut got = Vec::new();
                while let Some(p) = s.message().await? {
                    got.extend_from_slice(&p.data);
                }
                Ok::<_, tonic::Status>(got)
            }
        };
        let refused = |r: Result<Vec<u8>, tonic::Status>| {
            let s = r.expect_err("must be refused");
            assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ),
                "{s:?}"
            );
        };
        refused(read(String::new()).await);
        refused(read(secret.sign_chunk(Op::Read, &chunk, now - 1000)).await);
        refused(
            read(secret.sign_chunk(
                Op::Read,
                "00000000-0000-0000-0000-000000000000",
                now + 60_000,
            ))
            .await,
        );
        refused(read(secret.sign_chunk(Op::Write, &chunk, now + 60_000)).await);
        refused(
            read(
                ClusterSecret::new(b"not-the-cluster-secret".to_vec()).sign_chunk(
                    Op::Read,
                    &chunk,
                    now + 60_000,
                ),
            )
            .await,
        );
        // The same request with a valid token works, so the refusals above were the token's.
        assert_eq!(
            read(secret.sign_chunk(Op::Read, &chunk, now + 60_000))
                .await
                .unwrap(),
            data
        );
        // Writing without a token is refused and stores nothing.
        let before = chunk_files(&c, "chunk-1").len();
        let id = "11111111-2222-3333-4444-555555555555".to_string();
        let msgs = vec![
            WriteChunkRequest {
                chunk_id: id.clone(),
                token: String::new(),
                data: vec![],
            },
            WriteChunkRequest {
                chunk_id: String::new(),
                token: String::new(),
                data: b"evil".to_vec(),
            },
        ];
        let r = cl.write(tokio_stream_iter(msgs)).await;
        assert!(r.is_err());
        assert_eq!(chunk_files(&c, "chunk-1").len(), before);
    });
}

fn tokio_stream_iter<T: Send + 'static>(
    v: Vec<T>,
) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    tokio_stream::iter(v)
}

#[test]
fn a_flipped_byte_on_disk_never_reaches_the_user() {
    let c = cluster(2);
    let data = bytes(3 * CHUNK, 11);
    put_bytes(&c, &c.auth, "/rot", &data, &[]).ok();
    let flip = |p: &Path, at: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, at).unwrap();
    };
    // chunk-1: primary copies damaged (its backups heal them).
    for p in chunk_files(&c, "chunk-1") {
        flip(&p, 100);
    }
    assert_eq!(get_bytes(&c, &c.auth, "/rot"), data);
    // chunk-2: primary and backup both damaged: the reader must use chunk-1's copy.
    for p in chunk_files(&c, "chunk-2") {
        flip(&p, 200);
        let backup = c
            .path()
            .join("chunk-2/backups/chunks")
            .join(p.parent().unwrap().file_name().unwrap())
            .join(p.file_name().unwrap());
        flip(&backup, 200);
    }
    assert_eq!(get_bytes(&c, &c.auth, "/rot"), data);
    assert_eq!(get_bytes(&c, &c.auth, "/rot"), data);
}

#[test]
fn a_client_killed_mid_put_leaves_no_file_and_the_name_free() {
    use std::io::Write;
    let c = cluster(2);
    let mut child = std::process::Command::new(bin("dfsctl"))
        .args(["put", "-", "/partial"])
        .env("DFS_META", &c.meta)
        .env("DFS_AUTH_FILE", &c.auth)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes(5 * CHUNK, 1)).unwrap();
    stdin.flush().unwrap();
    // Wait until chunks are on the servers: the put is under way.
    wait_until(
        Duration::from_secs(20),
        "chunks of the partial put on disk",
        || all_chunk_files(&c) >= 4,
    );
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    c.ctl(&["stat", "/partial"]).fails_with("no such file");
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
    let data = bytes(CHUNK + 3, 2);
    put_bytes(&c, &c.auth, "/partial", &data, &[]).ok();
    assert_eq!(get_bytes(&c, &c.auth, "/partial"), data);
}

#[test]
fn bad_names_are_refused_before_anything_is_written() {
    let c = cluster(2);
    let before = all_chunk_files(&c);
    put_bytes(&c, &c.auth, "/a/../b", b"x", &[]).fails_with("not allowed");
    put_bytes(&c, &c.auth, &format!("/{}", "n".repeat(256)), b"x", &[])
        .fails_with("longer than 255");
    put_bytes(&c, &c.auth, &format!("/{}", "d/".repeat(2100)), b"x", &[])
        .fails_with("longer than 4096");
    assert_eq!(
        all_chunk_files(&c),
        before,
        "no chunk was written for a refused name"
    );
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
}

#[test]
fn removed_and_replaced_files_are_deleted_from_chunk_servers() {
    let c = cluster(2);
    put_bytes(&c, &c.auth, "/gone", &bytes(2 * CHUNK, 1), &[]).ok();
    put_bytes(&c, &c.auth, "/kept", &bytes(CHUNK, 2), &[]).ok();
    put_bytes(&c, &c.auth, "/kept", &bytes(CHUNK, 3), &["-f"]).ok();
    c.ctl(&["rm", "/gone"]).ok();
    // Left: one chunk of /kept on two servers.
    wait_until(Duration::from_secs(60), "old chunks deleted", || {
        all_chunk_files(&c) == 2
    });
    assert_eq!(get_bytes(&c, &c.auth, "/kept"), bytes(CHUNK, 3));
}

#[test]
fn get_never_replaces_a_local_file_silently() {
    let c = cluster(1);
    put_bytes(&c, &c.auth, "/f", b"remote bytes", &[]).ok();
    let local = c.path().join("local-copy");
    std::fs::write(&local, b"precious").unwrap();
    c.ctl(&["get", "/f", local.to_str().unwrap()])
        .fails_with("use -f");
    assert_eq!(std::fs::read(&local).unwrap(), b"precious");
    c.ctl(&["get", "-f", "/f", local.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(&local).unwrap(), b"remote bytes");
    let leftovers: Vec<_> = std::fs::read_dir(c.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("dfs-part"))
        .collect();
    assert!(leftovers.is_empty());
}
