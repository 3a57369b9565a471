//! The data path with real processes: put/get round trips, failures of chunk servers and of the
//! metadata leader, owner-only access, chunk tokens, corruption on disk, interrupted puts.
//! Chunks are 64 KiB here so multi-chunk files stay small.
use dfs_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const CHUNK: usize = 64 * 1024;

fn cluster(chunks: u32) -> Cluster {
    Cluster::up(3, chunks, &["--chunk-size=65536"])
}

/// For tests that look at chunk files on disk: no chunk is packed.
fn cluster_files(chunks: u32) -> Cluster {
    Cluster::up_files(3, chunks, &["--chunk-size=65536"])
}

fn stat(c: &Cluster, remote: &str) -> Value {
    c.ctl(&["--json", "stat", remote]).json()
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
        c.put_data(&c.auth, &remote, &data, &[]).ok();
        assert_eq!(c.get_data(&c.auth, &remote), data, "size {size}");
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
        .env("DFS_TLS_CA", c.ca_env())
        .env("DFS_AUTH_FILE", &c.auth)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
    // An existing name needs -f; -f replaces it atomically.
    c.put_data(&c.auth, "/rt/f1", b"other", &[])
        .fails_with("already exists");
    c.put_data(&c.auth, "/rt/f1", b"other", &["-f"]).ok();
    assert_eq!(c.get_data(&c.auth, "/rt/f1"), b"other");
}

#[test]
fn files_survive_a_chunk_server_and_the_leader_dying() {
    let c = cluster(3);
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("/s/f{i}"), bytes(2 * CHUNK + i * 1000, i as u64)))
        .collect();
    for (p, d) in &files {
        c.put_data(&c.auth, p, d, &[]).ok();
    }
    c.kill("chunk-1");
    for (p, d) in &files {
        assert_eq!(&c.get_data(&c.auth, p), d, "{p} after chunk-1 died");
    }
    let leader = c.leader();
    c.kill(&format!("meta-{leader}"));
    for (p, d) in &files {
        assert_eq!(&c.get_data(&c.auth, p), d, "{p} after the leader died");
    }
    // Writes go on with two chunk servers and a new leader.
    c.put_data(&c.auth, "/s/new", b"still writable", &[]).ok();
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
    let err = c
        .put_data(&c.auth, "/nothing", b"data", &[])
        .fails_with("no chunk server is live");
    assert!(err.contains("start one"), "{err}");
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
    c.ctl(&["stat", "/nothing"]).fails_with("no such file");
}

#[test]
fn with_fewer_servers_than_replicas_the_file_is_under_replicated() {
    let c = cluster(2);
    let data = bytes(CHUNK + 5, 3);
    c.put_data(&c.auth, "/three", &data, &["--replication", "3"])
        .ok();
    let s = stat(&c, "/three");
    assert_eq!(s["replication"], 3);
    assert_eq!(s["fully_replicated"], false);
    assert_eq!(c.get_data(&c.auth, "/three"), data);
}

#[test]
fn users_reach_only_their_own_files() {
    let c = cluster(2);
    let alice = c.add_user("alice");
    let bob = c.add_user("bob");
    let data = bytes(CHUNK + 1, 5);
    c.put_data(&alice, "/alice/secret", &data, &[]).ok();
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
    c.put_data(&bob, "/alice/secret", b"replaced", &["-f"])
        .fails_with("permission denied");
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
    assert_eq!(c.get_data(&alice, "/alice/secret"), data);
    assert_eq!(c.get_data(&c.auth, "/alice/secret"), data);
}

#[test]
fn chunk_servers_serve_nothing_without_a_valid_token() {
    use dfs_common::token::{ClusterSecret, Op};
    use dfs_proto::chunk_client::ChunkClient;
    use dfs_proto::{ReadChunkRequest, WriteChunkRequest};
    let c = cluster_files(1);
    let data = bytes(1000, 8);
    c.put_data(&c.auth, "/t", &data, &[]).ok();
    let s = stat(&c, "/t");
    let chunk = s["chunks"][0]["id"].as_str().unwrap().to_string();
    let addr = s["chunks"][0]["addrs"][0].as_str().unwrap().to_string();
    let node = s["chunks"][0]["replicas"][0].as_u64().unwrap();
    let secret = ClusterSecret::load(&c.secret_file()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = ChunkClient::new(
            dfs_client::lazy_channel(&addr, c.tls().as_ref(), dfs_common::pki::Role::Chunk)
                .unwrap(),
        );
        let read = |token: String| {
            let mut cl = cl.clone();
            let chunk = chunk.clone();
            async move {
                let mut s = cl
                    .read(ReadChunkRequest {
                        chunk_id: chunk,
                        token,
                        offset: 0,
                        length: 0,
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
        refused(read(secret.sign_chunk(Op::Read, &chunk, 0, now - 1000, &[node])).await);
        refused(
            read(secret.sign_chunk(
                Op::Read,
                "00000000-0000-0000-0000-000000000000",
                0,
                now + 60_000,
                &[node],
            ))
            .await,
        );
        // A write token reads back only the chunk it was given for (its writer, before the
        // commit: the mount does); one for another chunk is refused.
        refused(
            read(secret.sign_chunk(
                Op::Write,
                "00000000-0000-0000-0000-000000000000",
                1 << 20,
                now + 60_000,
                &[node],
            ))
            .await,
        );
        refused(read(secret.sign_chunk(Op::Write, &chunk, 1 << 20, now - 1000, &[node])).await);
        assert_eq!(
            read(secret.sign_chunk(Op::Write, &chunk, 1 << 20, now + 60_000, &[node]))
                .await
                .unwrap(),
            data
        );
        refused(
            read(
                ClusterSecret::new(b"not-the-cluster-secret".to_vec()).sign_chunk(
                    Op::Read,
                    &chunk,
                    0,
                    now + 60_000,
                    &[node],
                ),
            )
            .await,
        );
        // The same request with a valid token works, so the refusals above were the token's.
        assert_eq!(
            read(secret.sign_chunk(Op::Read, &chunk, 0, now + 60_000, &[node]))
                .await
                .unwrap(),
            data
        );
        // Writing without a token is refused and stores nothing.
        let before = c.chunk_files("chunk-1").len();
        let id = "11111111-2222-3333-4444-555555555555".to_string();
        let msgs = vec![
            WriteChunkRequest {
                chunk_id: id.clone(),
                token: String::new(),
                data: Default::default(),
            },
            WriteChunkRequest {
                chunk_id: String::new(),
                token: String::new(),
                data: dfs_proto::Bytes::from_static(b"evil"),
            },
        ];
        let r = cl.write(tokio_stream_iter(msgs)).await;
        assert!(r.is_err());
        assert_eq!(c.chunk_files("chunk-1").len(), before);
    });
}

fn tokio_stream_iter<T: Send + 'static>(
    v: Vec<T>,
) -> impl tokio_stream::Stream<Item = T> + Send + 'static {
    tokio_stream::iter(v)
}

#[test]
fn a_flipped_byte_on_disk_never_reaches_the_user() {
    let c = cluster_files(2);
    let data = bytes(3 * CHUNK, 11);
    c.put_data(&c.auth, "/rot", &data, &[]).ok();
    // chunk-1: primary copies damaged (its backups heal them).
    for p in c.chunk_files("chunk-1") {
        flip_byte(&p, 100);
    }
    assert_eq!(c.get_data(&c.auth, "/rot"), data);
    // chunk-2: primary and backup both damaged: the reader must use chunk-1's copy.
    for p in c.chunk_files("chunk-2") {
        flip_byte(&p, 200);
        let backup = c
            .path()
            .join("chunk-2/backups/chunks")
            .join(p.parent().unwrap().file_name().unwrap())
            .join(p.file_name().unwrap());
        flip_byte(&backup, 200);
    }
    assert_eq!(c.get_data(&c.auth, "/rot"), data);
    assert_eq!(c.get_data(&c.auth, "/rot"), data);
}

#[test]
fn default_size_chunks_round_trip_and_heal_through_direct_io() {
    // 8 MiB chunks: whole 1 MiB pieces go to disk and come back with O_DIRECT, the tail
    // through the page cache. A byte flipped mid-chunk on disk is still never served.
    let c = Cluster::up(3, 2, &[]);
    let data = bytes(9 * 1024 * 1024 + 5, 21);
    c.put_data(&c.auth, "/big", &data, &[]).ok();
    assert_eq!(stat(&c, "/big")["chunks"].as_array().unwrap().len(), 2);
    assert_eq!(c.get_data(&c.auth, "/big"), data);
    let files = c.chunk_files("chunk-1");
    assert_eq!(files.len(), 2, "both chunks are files on chunk-1");
    for p in &files {
        flip_byte(p, 512 * 1024 + 3);
    }
    assert_eq!(c.get_data(&c.auth, "/big"), data);
    assert_eq!(c.get_data(&c.auth, "/big"), data);
}

#[test]
fn a_client_killed_mid_put_leaves_no_file_and_the_name_free() {
    let c = cluster_files(2);
    // Once chunks are on the servers, the put is under way.
    c.kill_put_midway("/partial", &bytes(5 * CHUNK, 1), || {
        c.all_chunk_files() >= 4
    });
    c.ctl(&["stat", "/partial"]).fails_with("no such file");
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
    let data = bytes(CHUNK + 3, 2);
    c.put_data(&c.auth, "/partial", &data, &[]).ok();
    assert_eq!(c.get_data(&c.auth, "/partial"), data);
}

#[test]
fn bad_names_are_refused_before_anything_is_written() {
    let c = cluster_files(2);
    let before = c.all_chunk_files();
    c.put_data(&c.auth, "/a/../b", b"x", &[])
        .fails_with("not allowed");
    c.put_data(&c.auth, &format!("/{}", "n".repeat(256)), b"x", &[])
        .fails_with("longer than 255");
    c.put_data(&c.auth, &format!("/{}", "d/".repeat(2100)), b"x", &[])
        .fails_with("longer than 4096");
    assert_eq!(
        c.all_chunk_files(),
        before,
        "no chunk was written for a refused name"
    );
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
}

#[test]
fn removed_and_replaced_files_are_deleted_from_chunk_servers() {
    let c = cluster_files(2);
    c.put_data(&c.auth, "/gone", &bytes(2 * CHUNK, 1), &[]).ok();
    c.put_data(&c.auth, "/kept", &bytes(CHUNK, 2), &[]).ok();
    c.put_data(&c.auth, "/kept", &bytes(CHUNK, 3), &["-f"]).ok();
    // Deleted into the trash, then purged from it: only then do its chunks go.
    c.ctl(&["rm", "/gone"]).ok();
    c.ctl(&["trash", "purge"]).ok();
    // Left: one chunk of /kept on two servers.
    wait_until(Duration::from_secs(60), "old chunks deleted", || {
        c.all_chunk_files() == 2
    });
    assert_eq!(c.get_data(&c.auth, "/kept"), bytes(CHUNK, 3));
}

#[test]
fn get_never_replaces_a_local_file_silently() {
    let c = cluster(1);
    c.put_data(&c.auth, "/f", b"remote bytes", &[]).ok();
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

/// Pack records under `root` (`<server>/chunks` or `<server>/backups/chunks`): for each, the
/// pack file, the offset of its data and whether it is live (see chunksrv's `pack` module).
fn pack_records(root: &Path) -> Vec<(std::path::PathBuf, u64, bool)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root.join("packs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let bytes = std::fs::read(e.path()).unwrap();
        let mut at = 0usize;
        while at + 64 <= bytes.len() && &bytes[at..at + 8] == b"DFSPAK01" {
            let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            let image_len = word(at + 44) as usize;
            let live = word(at + 48) & 1 == 0;
            out.push((e.path(), (at + 64) as u64, live));
            at += 64 + image_len;
        }
    }
    out
}

#[test]
fn packed_small_chunks_round_trip_survive_a_restart_and_never_serve_a_flipped_byte() {
    // Chunks of up to 64 KiB are records in pack files (the default).
    let c = cluster(2);
    let files: Vec<(String, Vec<u8>)> = [1usize, 4096, CHUNK, 2 * CHUNK + 5]
        .into_iter()
        .enumerate()
        .map(|(i, size)| (format!("/packed/f{i}"), bytes(size, 40 + i as u64)))
        .collect();
    for (remote, data) in &files {
        c.put_data(&c.auth, remote, data, &[]).ok();
    }
    c.put_data(&c.auth, "/packed/empty", b"", &[]).ok();
    for server in ["chunk-1", "chunk-2"] {
        assert!(c.chunk_files(server).is_empty(), "{server} has chunk files");
        let records = pack_records(&c.path().join(server).join("chunks"));
        assert_eq!(records.iter().filter(|r| r.2).count(), 6, "{server}");
    }
    // A restarted chunk server finds its records again.
    c.kill("chunk-1");
    c.start("chunk-1");
    for (remote, data) in &files {
        assert_eq!(&c.get_data(&c.auth, remote), data);
    }
    // chunk-1: every primary record damaged (its backups heal them); chunk-2: both copies
    // damaged (readers must use chunk-1).
    for root in ["chunk-1/chunks", "chunk-2/chunks", "chunk-2/backups/chunks"] {
        for (pack, data_at, _) in pack_records(&c.path().join(root)) {
            flip_byte(&pack, data_at);
        }
    }
    for _ in 0..2 {
        for (remote, data) in &files {
            assert_eq!(&c.get_data(&c.auth, remote), data);
        }
    }
    // Removed files leave no live record behind.
    c.ctl(&["rm", "-r", "--skip-trash", "/packed"]).ok();
    wait_until(Duration::from_secs(60), "pack records deleted", || {
        ["chunk-1", "chunk-2"].iter().all(|s| {
            !pack_records(&c.path().join(s).join("chunks"))
                .iter()
                .any(|r| r.2)
        })
    });
}

/// `dfsctl bench data --json` reports every figure the data-path issue asks for, and the disk
/// under the cluster saw at least the put's replicas: both are fsynced before "ok".
#[test]
fn bench_data_reports_every_figure_and_the_disk_writes_of_the_put() {
    let c = Cluster::up(3, 3, &[]);
    let dir = c.path().to_str().expect("utf-8 path");
    let v = c
        .ctl(&[
            "--json",
            "bench",
            "data",
            "--dir",
            dir,
            "--scratch",
            dir,
            "--big-mib",
            "16",
            "--small",
            "20",
            "--clients",
            "1,4",
        ])
        .json();
    let big = &v["big"];
    for figure in [
        "put_mb_per_sec",
        "get_mb_per_sec",
        "fsync_baseline_mb_per_sec",
        "put_target_mb_per_sec",
    ] {
        assert!(big[figure].as_f64().unwrap() > 0.0, "{figure}: {big}");
    }
    // Null only where the cluster's filesystem has no block device of its own (tmpfs,
    // overlayfs: major device number 0).
    let on_a_device = {
        use std::os::unix::fs::MetadataExt;
        libc::major(std::fs::metadata(c.path()).unwrap().dev()) != 0
    };
    assert_eq!(
        big["put_disk_written_bytes"].is_u64(),
        on_a_device,
        "disk figures iff the cluster is on a block device: {big}"
    );
    if let Some(written) = big["put_disk_written_bytes"].as_u64() {
        assert!(
            written >= 2 * (16 << 20),
            "a 16 MiB put with replication 2 wrote only {written} bytes to the disk"
        );
        let busy = big["put_disk_busy_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&busy), "busy fraction {busy}");
    }
    let levels = v["small"].as_array().unwrap();
    assert_eq!(levels.len(), 2);
    for (level, clients) in levels.iter().zip([1, 4]) {
        assert_eq!(level["clients"], clients);
        for op in ["create", "stat", "read", "delete"] {
            assert_eq!(level[op]["ops"], 20, "{op} with {clients} clients: {level}");
            assert!(level[op]["p99_ms"].as_f64().unwrap() >= level[op]["p50_ms"].as_f64().unwrap());
        }
    }
    let servers = v["peak_rss_mib"]["servers"].as_object().unwrap();
    assert_eq!(servers.len(), 6, "every server's peak RSS: {servers:?}");
    // Everything the benchmark stored is gone again.
    assert_eq!(c.ctl(&["ls", "/"]).ok().trim(), "");
}

#[test]
fn a_get_overtaken_by_a_remove_says_so_and_reports_no_bad_replica() {
    use std::io::Read;
    let c = cluster_files(2);
    let data = bytes(100 * CHUNK, 5);
    c.put_data(&c.auth, "/moving", &data, &[]).ok();
    // `cat` blocks on the full pipe after its first few chunks, with the rest still to fetch.
    let mut cat = std::process::Command::new(bin("dfsctl"))
        .args(["cat", "/moving"])
        .env("DFS_META", &c.meta)
        .env("DFS_TLS_CA", c.ca_env())
        .env("DFS_AUTH_FILE", &c.auth)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = cat.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    c.ctl(&["rm", "--skip-trash", "/moving"]).ok();
    wait_until(Duration::from_secs(60), "the file's chunks deleted", || {
        c.all_chunk_files() == 0
    });
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = cat.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("/moving was removed or replaced while it was being read"),
        "stderr: {stderr}"
    );
    assert!(rest.len() + 1 < data.len(), "only the chunks read before");
    for node in ["meta-1", "meta-2", "meta-3"] {
        let text = c.metrics_text(node);
        let reports = text
            .lines()
            .find(|l| l.starts_with("dfs_bad_replica_reports_total "))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
        assert_eq!(
            reports,
            Some(0.0),
            "{node}: a removed file's chunks are not bad replicas"
        );
    }
}

/// A shell cannot pass a NUL in an argument, so these go to the metadata service over gRPC.
#[test]
fn names_with_nul_or_control_characters_are_refused_before_anything_is_written() {
    use dfs_proto::meta_client::MetaClient;
    use dfs_proto::{AllocateRequest, ChunkInfo, CommitRequest, MkdirRequest};
    let c = cluster_files(2);
    let creds = dfs_common::auth_file::read(&c.auth).unwrap();
    let addr = c.meta.split(',').next().unwrap().to_string();
    let before = c.all_chunk_files();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut cl = MetaClient::new(c.meta_channel(&addr));
        fn with_key<T>(msg: T, creds: &dfs_common::auth_file::Credentials) -> tonic::Request<T> {
            let mut r = tonic::Request::new(msg);
            r.metadata_mut()
                .insert(dfs_common::headers::USER, creds.user.parse().unwrap());
            r.metadata_mut()
                .insert(dfs_common::headers::KEY, creds.key.parse().unwrap());
            r
        }
        for bad in ["/a\0b", "/nul\0", "/tab\tname", "/bell\u{7}"] {
            let refused = |s: tonic::Status| {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{bad:?}: {s:?}");
                assert!(s.message().contains("NUL or control character"), "{s:?}");
            };
            refused(
                cl.allocate_chunks(with_key(
                    AllocateRequest {
                        path: bad.into(),
                        replication: 2,
                        count: 1,
                        overwrite: false,
                        bytes_left: 1,
                        ..Default::default()
                    },
                    &creds,
                ))
                .await
                .unwrap_err(),
            );
            refused(
                cl.commit_file(with_key(
                    CommitRequest {
                        path: bad.into(),
                        size: 1,
                        chunk_size: 1,
                        chunks: vec![ChunkInfo {
                            chunk_id: "11111111-2222-3333-4444-555555555555".into(),
                            size: 1,
                            ..Default::default()
                        }],
                        request_id: format!("nul-test-{}", bad.len()),
                        ..Default::default()
                    },
                    &creds,
                ))
                .await
                .unwrap_err(),
            );
            refused(
                cl.mkdir(with_key(
                    MkdirRequest {
                        path: bad.into(),
                        parents: true,
                        request_id: format!("nul-mkdir-{}", bad.len()),
                    },
                    &creds,
                ))
                .await
                .unwrap_err(),
            );
        }
    });
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "", "nothing in the namespace");
    assert_eq!(c.all_chunk_files(), before, "no chunk was written");
}

#[test]
fn puts_go_only_where_there_is_room_and_a_full_cluster_refuses_them_up_front() {
    // Room for three 300 kB chunks per server.
    let c = Cluster::up_with(3, 3, &[], &["--capacity=1000000"]);
    c.put_data(&c.auth, "/huge", &bytes(3_000_000, 1), &[])
        .fails_with("no live chunk server has room for a chunk of 3000000 bytes");
    assert_eq!(c.ctl(&["ls", "/"]).ok(), "");
    assert_eq!(c.all_chunk_files(), 0, "refused before any byte was sent");
    // Four files in quick succession (within one heartbeat): spread, every one whole.
    for i in 0..4 {
        c.put_data(&c.auth, &format!("/f{i}"), &bytes(300_000, i), &[])
            .ok();
    }
    let mut per_server = std::collections::BTreeMap::new();
    for i in 0..4 {
        let s = stat(&c, &format!("/f{i}"));
        assert_eq!(s["fully_replicated"], true, "/f{i}: {s}");
        for r in s["chunks"][0]["replicas"].as_array().unwrap() {
            *per_server.entry(r.as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    assert_eq!(per_server.values().sum::<i32>(), 8);
    assert!(per_server.values().all(|&n| n <= 3), "{per_server:?}");
    // Room left for one copy only: written once and shown under-replicated; then none.
    c.put_data(&c.auth, "/f4", &bytes(300_000, 4), &[]).ok();
    assert_eq!(stat(&c, "/f4")["fully_replicated"], false);
    c.put_data(&c.auth, "/f5", &bytes(300_000, 5), &[])
        .fails_with("free space or add a chunk server");
    for i in 0..5 {
        assert_eq!(
            c.get_data(&c.auth, &format!("/f{i}")),
            bytes(300_000, i as u64)
        );
    }
}

#[test]
fn read_at_returns_exactly_the_requested_range_across_chunks() {
    let c = cluster(3);
    let size = 3 * CHUNK + 100;
    let data = bytes(size, 4242);
    c.put_data(&c.auth, "/ranged/f", &data, &[]).ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client_of(&c);
        let mut h = client.open_read("/ranged/f").await.unwrap();
        assert_eq!(h.size(), size as u64);
        let c64 = CHUNK as u64;
        for (off, len) in [
            (0u64, 1u64),
            (0, size as u64),
            (5, 100),
            (c64 - 3, 10),
            (c64, c64),
            (c64 / 2, 2 * c64),
            (3 * c64 + 90, 50),
            (size as u64, 10),
            (size as u64 + 5, 10),
            (10, 0),
        ] {
            let got = client.read_at(&mut h, off, len).await.unwrap();
            let from = (off as usize).min(size);
            let to = (off.saturating_add(len) as usize).min(size);
            assert_eq!(got, &data[from..to], "offset {off} len {len}");
        }
        let st = client.fs_stats().await.unwrap();
        assert!(st.files >= 1, "{st:?}");
        match client.open_read("/ranged/missing").await {
            Err(dfs_client::Error::NotFound(_)) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    });
}

/// A reader that outlives its read tokens (2 s here) keeps reading the version it opened; once
/// that version is replaced, renewing is refused as "changed while reading", not a mix of both.
#[test]
fn a_long_read_renews_its_tokens_and_stops_when_the_file_is_replaced() {
    let c = Cluster::up(1, 2, &["--token-ttl-secs=2"]);
    let data = bytes(3 * 1000, 7);
    c.put_data(&c.auth, "/long", &data, &[]).ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client_of(&c);
        let mut h = client.open_read("/long").await.unwrap();
        assert_eq!(client.read_at(&mut h, 0, 10).await.unwrap(), &data[..10]);
        // Wait out the tokens' life: the next read must renew them to succeed.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(
            client.read_at(&mut h, 100, 10).await.unwrap(),
            &data[100..110]
        );
        c.put_data(&c.auth, "/long", b"other", &["-f"]).ok();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        match client.read_at(&mut h, 0, 10).await {
            Err(dfs_client::Error::ChangedWhileReading { .. }) => {}
            other => panic!("expected ChangedWhileReading, got {other:?}"),
        }
    });
}

/// A whole-file get that outlives its read tokens (2 s here; the reader below takes about 6 s)
/// renews them before it starts fetching a chunk with old ones: it neither fails nor restarts.
/// (16 chunks: more than the 8 fetched at once, so later fetches start after 2 s.)
#[test]
fn a_slow_get_stream_renews_its_tokens() {
    let c = Cluster::up(1, 2, &["--token-ttl-secs=2", "--chunk-size=1048576"]);
    let data = bytes(16 << 20, 11);
    c.put_data(&c.auth, "/slow", &data, &[]).ok();
    /// Takes 0.4 s per MiB written: a slow disk or pipe at the reading end.
    struct SlowSink(Vec<u8>);
    impl std::io::Write for SlowSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let before = self.0.len() >> 20;
            self.0.extend_from_slice(buf);
            if self.0.len() >> 20 > before {
                std::thread::sleep(std::time::Duration::from_millis(400));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client_of(&c);
        let h = client.open_read("/slow").await.unwrap();
        let started = std::time::Instant::now();
        let mut sink = SlowSink(Vec::new());
        let n = dfs_client::get_stream(
            &client.conn,
            &client.pool,
            &h.reply,
            &mut sink,
            &dfs_client::no_progress,
        )
        .await
        .expect("a get longer than the tokens' life succeeds");
        assert!(started.elapsed() > std::time::Duration::from_secs(3));
        assert_eq!(n, data.len() as u64);
        assert!(sink.0 == data, "the bytes differ");
    });
}

/// Through the library (which a kernel never lets a NUL reach, but a program can): a path
/// with a NUL or a name over 255 bytes is refused as an invalid name and changes nothing.
#[test]
fn the_library_refuses_nul_and_overlong_names() {
    let c = Cluster::up(1, 1, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = client_of(&c);
        let long = format!("/{}", "x".repeat(256));
        for bad in ["/a\0b", long.as_str()] {
            match client.mkdir(bad, false).await {
                Err(dfs_client::Error::InvalidName(_)) => {}
                other => panic!("mkdir {bad:?}: expected InvalidName, got {other:?}"),
            }
            match client.symlink(bad, "t").await {
                Err(dfs_client::Error::InvalidName(_)) => {}
                other => panic!("symlink {bad:?}: expected InvalidName, got {other:?}"),
            }
        }
        assert!(client.list("/").await.unwrap().is_empty());
    });
}

/// A dfs-client connection to `c` as its admin (call inside a runtime).
fn client_of(c: &Cluster) -> dfs_client::Client {
    dfs_client::Client::connect(&c.client_options(&c.meta)).unwrap()
}
