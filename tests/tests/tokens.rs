//! Chunk tokens and receipts against a real cluster (issue 19 item 3): a token issued for one
//! chunk server is refused by another; a write token stores no more than the size it allows;
//! a commit names only replicas that signed a receipt for the chunk's size and CRC. Every
//! refusal is checked for its error and for nothing having changed (no chunk file, no file).
use dfs_client::Client;
use dfs_common::token::ChunkToken;
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::{
    AllocateRequest, AllocatedChunk, ChunkInfo, CommitRequest, ReadChunkRequest, StatRequest,
    WriteChunkReply, WriteChunkRequest,
};
use dfs_tests::*;
use std::path::Path;
use std::time::Duration;

const CHUNK: usize = 64 * 1024;

fn cluster() -> Cluster {
    Cluster::up_files(1, 2, &["--chunk-size=65536"])
}

fn client(c: &Cluster) -> Client {
    Client::connect(&c.client_options(&c.meta)).unwrap()
}

/// Every file under a chunk server's `chunks/` (temp files included; not the pack files,
/// unused with `--pack-max=0` but made at start).
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != "packs")
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            _ => 1,
        })
        .sum()
}

fn chunk_dir_files(c: &Cluster, server: &str) -> usize {
    files_under(&c.path().join(server).join("chunks"))
}

/// The local node name (`chunk-1`, `chunk-2`) of the chunk server at `addr`, and the other.
fn names_by_addr(c: &Cluster, addr: &str) -> (&'static str, &'static str) {
    if c.node_addr("chunk-1") == addr {
        ("chunk-1", "chunk-2")
    } else {
        assert_eq!(c.node_addr("chunk-2"), addr, "unknown chunk server address");
        ("chunk-2", "chunk-1")
    }
}

async fn allocate(cl: &Client, path: &str, replication: u32) -> (AllocatedChunk, u64) {
    let r = dfs_client::rpc!(
        cl.conn,
        allocate_chunks,
        AllocateRequest {
            path: path.into(),
            replication,
            count: 1,
            bytes_left: CHUNK as u64,
            ..Default::default()
        }
    )
    .unwrap();
    assert_eq!(r.chunks[0].targets.len(), replication as usize);
    (r.chunks[0].clone(), r.chunk_size)
}

async fn write(
    c: &Cluster,
    addr: &str,
    chunk_id: &str,
    token: &str,
    data: &[u8],
) -> Result<WriteChunkReply, tonic::Status> {
    let mut cl = ChunkClient::new(c.chunk_channel(addr));
    let mut msgs = vec![WriteChunkRequest {
        chunk_id: chunk_id.into(),
        token: token.into(),
        data: Default::default(),
    }];
    msgs.extend(data.chunks(16 * 1024).map(|p| WriteChunkRequest {
        chunk_id: String::new(),
        token: String::new(),
        data: p.to_vec().into(),
    }));
    Ok(cl.write(tokio_stream::iter(msgs)).await?.into_inner())
}

async fn read(
    c: &Cluster,
    addr: &str,
    chunk_id: &str,
    token: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut cl = ChunkClient::new(c.chunk_channel(addr));
    let mut s = cl
        .read(ReadChunkRequest {
            chunk_id: chunk_id.into(),
            token: token.into(),
            offset: 0,
            length: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

fn refused_with(r: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code, text: &str) {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(text), "{text:?} not in {s:?}");
}

#[test]
fn tokens_work_only_on_their_servers_and_up_to_their_size() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let cl = client(&c);
    rt.block_on(async {
        // A write token for one server (A) presented to the other (B).
        let (a, chunk_size) = allocate(&cl, "/w", 1).await;
        assert_eq!(chunk_size, CHUNK as u64);
        let addr_a = a.targets[0].addr.clone();
        let (name_a, name_b) = names_by_addr(&c, &addr_a);
        let addr_b = c.node_addr(name_b);
        let data = bytes(CHUNK, 1);
        refused_with(
            write(&c, &addr_b, &a.chunk_id, &a.token, &data).await,
            tonic::Code::PermissionDenied,
            &format!(
                "issued for chunk servers [{}], not this one",
                a.targets[0].node_id
            ),
        );
        assert_eq!(chunk_dir_files(&c, name_b), 0, "B stored something");

        // More bytes than the token allows (the cluster's chunk size): refused, nothing kept.
        let mut over = data.clone();
        over.push(7);
        refused_with(
            write(&c, &addr_a, &a.chunk_id, &a.token, &over).await,
            tonic::Code::InvalidArgument,
            &format!("allows at most {CHUNK} bytes"),
        );
        wait_until(
            Duration::from_secs(30),
            "the refused write's temp file removed",
            || chunk_dir_files(&c, name_a) == 0,
        );
        // Its writer cannot read it back: there is nothing.
        refused_with(
            read(&c, &addr_a, &a.chunk_id, &a.token).await,
            tonic::Code::NotFound,
            "",
        );

        // Exactly the allowance is stored, and its writer reads it back from A only.
        let reply = write(&c, &addr_a, &a.chunk_id, &a.token, &data)
            .await
            .unwrap();
        assert_eq!(reply.size, CHUNK as u64);
        assert!(!reply.receipt.is_empty());
        assert_eq!(
            read(&c, &addr_a, &a.chunk_id, &a.token).await.unwrap(),
            data
        );
        refused_with(
            read(&c, &addr_b, &a.chunk_id, &a.token).await,
            tonic::Code::PermissionDenied,
            "not this one",
        );

        // A read token (for a committed file with one replica) presented to the other server.
        let r = dfs_client::rpc!(
            cl.conn,
            commit_file,
            CommitRequest {
                path: "/w".into(),
                size: CHUNK as u64,
                chunk_size,
                chunks: vec![ChunkInfo {
                    chunk_id: a.chunk_id.clone(),
                    size: reply.size,
                    crc32c: reply.crc32c,
                    replicas: vec![reply.node_id],
                    token: a.token.clone(),
                    receipts: vec![reply.receipt.clone()],
                    ..Default::default()
                }],
                request_id: dfs_client::new_request_id(),
                ..Default::default()
            }
        );
        r.unwrap();
        let open = dfs_client::rpc!(
            cl.conn,
            open_read,
            StatRequest {
                path: "/w".into(),
                stale: false
            }
        )
        .unwrap();
        let token = &open.tokens[0];
        refused_with(
            read(&c, &addr_b, &a.chunk_id, token).await,
            tonic::Code::PermissionDenied,
            "not this one",
        );
        assert_eq!(read(&c, &addr_a, &a.chunk_id, token).await.unwrap(), data);
    });
    assert_eq!(c.get_data(&c.auth, "/w"), bytes(CHUNK, 1));
}

#[test]
fn a_commit_names_only_replicas_that_signed_for_the_chunk() {
    // Three servers: the chunk goes to two, a replacement target is the third.
    let c = Cluster::up_files(1, 3, &["--chunk-size=65536"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let cl = client(&c);
    let data = bytes(1000, 2);
    rt.block_on(async {
        // Allocated on both servers, stored on the first only.
        let (a, chunk_size) = allocate(&cl, "/f", 2).await;
        let (first, second) = (&a.targets[0], &a.targets[1]);
        let stored = write(&c, &first.addr, &a.chunk_id, &a.token, &data)
            .await
            .unwrap();
        let crc = stored.crc32c;
        assert_eq!(stored.size, 1000);
        let commit_with =
            |token: &str, replicas: Vec<u64>, receipts: Vec<String>, size: u64, crc32c: u32| {
                CommitRequest {
                    path: "/f".into(),
                    size,
                    sha256: String::new(),
                    chunk_size,
                    chunks: vec![ChunkInfo {
                        chunk_id: a.chunk_id.clone(),
                        size,
                        crc32c,
                        replicas,
                        token: token.to_string(),
                        receipts,
                        ..Default::default()
                    }],
                    request_id: dfs_client::new_request_id(),
                    ..Default::default()
                }
            };
        let commit = |replicas, receipts, size, crc32c| {
            commit_with(&a.token, replicas, receipts, size, crc32c)
        };
        let (one, two) = (first.node_id, second.node_id);
        let good = stored.receipt.clone();
        let cases = [
            // The second server never stored it: a made-up receipt, none, the first's.
            (vec![one, two], vec![good.clone(), "0".repeat(32)], two),
            (vec![one, two], vec![good.clone()], two),
            (vec![one, two], vec![good.clone(), good.clone()], two),
            (vec![two], vec![good.clone()], two),
        ];
        for (replicas, receipts, blamed) in cases {
            let r = dfs_client::rpc!(
                cl.conn,
                commit_file,
                commit(replicas.clone(), receipts, 1000, crc)
            );
            refused_with(
                r,
                tonic::Code::PermissionDenied,
                &format!("chunk server {blamed} did not acknowledge storing it"),
            );
        }
        // A receipt for another size or CRC than the commit claims.
        for (size, crc32c) in [(999, crc), (1000, crc ^ 1)] {
            let r = dfs_client::rpc!(
                cl.conn,
                commit_file,
                commit(vec![one], vec![good.clone()], size, crc32c)
            );
            refused_with(
                r,
                tonic::Code::PermissionDenied,
                &format!("chunk server {one} did not acknowledge storing it"),
            );
        }
        c.ctl(&["stat", "/f"]).fails_with("no such file");

        // The second server "failed": a replacement target (the third server). Its token names
        // the first targets too and expires with the first token: the window does not grow.
        let r = dfs_client::rpc!(
            cl.conn,
            allocate_chunks,
            AllocateRequest {
                count: 1,
                bytes_left: 1000,
                exclude: vec![one, two],
                replace_chunk: a.chunk_id.clone(),
                replace_token: a.token.clone(),
                ..Default::default()
            }
        )
        .unwrap();
        let b = &r.chunks[0];
        assert_eq!(b.chunk_id, a.chunk_id);
        let third = &b.targets[0];
        assert!(third.node_id != one && third.node_id != two);
        let (old, new) = (
            ChunkToken::parse(&a.token).unwrap(),
            ChunkToken::parse(&b.token).unwrap(),
        );
        assert_eq!(new.servers(), vec![one, two, third.node_id]);
        assert_eq!(
            (new.expires_ms, new.max_bytes),
            (old.expires_ms, old.max_bytes)
        );
        refused_with(
            write(&c, &third.addr, &a.chunk_id, &a.token, &data).await,
            tonic::Code::PermissionDenied,
            "not this one",
        );
        let stored3 = write(&c, &third.addr, &a.chunk_id, &b.token, &data)
            .await
            .unwrap();
        // One token reads the chunk back from any of its replicas (as the mount does).
        assert_eq!(
            read(&c, &first.addr, &a.chunk_id, &b.token).await.unwrap(),
            data
        );
        // Both replicas that signed are accepted: the refusals above were the receipts'.
        dfs_client::rpc!(
            cl.conn,
            commit_file,
            commit_with(
                &b.token,
                vec![one, third.node_id],
                vec![good.clone(), stored3.receipt.clone()],
                1000,
                crc
            )
        )
        .unwrap();
        let mut want = vec![one, third.node_id];
        want.sort();
        let info = dfs_client::rpc!(
            cl.conn,
            stat,
            StatRequest {
                path: "/f".into(),
                stale: false
            }
        )
        .unwrap();
        let mut got = info.chunks[0].replicas.clone();
        got.sort();
        assert_eq!(got, want);
    });
    assert_eq!(c.get_data(&c.auth, "/f"), data);
}
