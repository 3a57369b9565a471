//! Reproduction (found by chaos): a CommitFile retried after its first attempt was applied (the
//! client saw "unavailable" because the leader died before answering, and MetaConn retried on
//! the next node) used to be applied twice; with overwrite the second apply queued the file's
//! own chunks for deletion, and the chunk servers deleted the bytes of the live file. Sends the
//! same commit twice, as such a retry does, with the same request id (as dfsctl does since the
//! fix) or, with `--no-request-id`, without one; then reads the file back.
//!
//! Usage: cargo run -p chaos --example double_commit -- DIR [--no-request-id]
//! (DIR holds a `dfsctl local` cluster.)
use dfs_client::{lazy_channel, MetaConn};
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::*;
use sha2::{Digest, Sha256};
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("cluster dir"));
    let request_id = if std::env::args().any(|a| a == "--no-request-id") {
        String::new()
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    let cluster = dfs_common::local_cluster::LocalCluster::load(&dir)?;
    let conn = MetaConn::connect(
        &cluster.meta_addrs(),
        Some(&dir.join("admin.auth")),
        Duration::from_secs(10),
    )?;
    let ca = dir.join("tls").join(dfs_common::pki::CA_CERT);
    let conn = if ca.exists() {
        conn.with_tls(Some(dfs_common::tls::Tls::client_only(&ca)?))?
    } else {
        conn
    };
    let path = "/double-commit".to_string();
    let data = b"hello, twice committed world".to_vec();
    let alloc = dfs_client::rpc!(
        conn,
        allocate_chunks,
        AllocateRequest {
            path: path.clone(),
            replication: 0,
            count: 1,
            overwrite: true,
            bytes_left: data.len() as u64,
            ..Default::default()
        }
    )?;
    let a = &alloc.chunks[0];
    let (mut replicas, mut receipts) = (Vec::new(), Vec::new());
    for t in &a.targets {
        let mut c = ChunkClient::new(lazy_channel(
            &t.addr,
            conn.tls(),
            dfs_common::pki::Role::Chunk,
        )?);
        let msgs = vec![
            WriteChunkRequest {
                chunk_id: a.chunk_id.clone(),
                token: a.token.clone(),
                data: Default::default(),
            },
            WriteChunkRequest {
                chunk_id: String::new(),
                token: String::new(),
                data: data.clone().into(),
            },
        ];
        let reply = c.write(futures::stream::iter(msgs)).await?.into_inner();
        replicas.push(t.node_id);
        receipts.push(reply.receipt);
    }
    let commit = CommitRequest {
        path: path.clone(),
        overwrite: true,
        replication: 0,
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(&data)),
        chunk_size: alloc.chunk_size,
        chunks: vec![ChunkInfo {
            chunk_id: a.chunk_id.clone(),
            size: data.len() as u64,
            crc32c: crc32c::crc32c(&data),
            replicas,
            replica_addrs: vec![],
            token: a.token.clone(),
            receipts,
        }],
        request_id,
        mode: None,
        lease_id: String::new(),
    };
    dfs_client::rpc!(conn, commit_file, commit.clone())?;
    println!("first commit ok");
    // The retry MetaConn would send after losing the first answer.
    dfs_client::rpc!(conn, commit_file, commit.clone())?;
    println!("second (retried) commit ok");
    // Chunk servers learn about deletions from heartbeat replies.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reply = dfs_client::rpc!(
        conn,
        open_read,
        StatRequest {
            path: path.clone(),
            stale: false
        }
    )?;
    let mut out = Vec::new();
    match dfs_client::get_stream(
        &conn,
        &dfs_client::ChunkPool::default(),
        &reply,
        &mut out,
        &dfs_client::no_progress,
    )
    .await
    {
        Ok(_) => println!("file still readable: {:?}", String::from_utf8_lossy(&out)),
        Err(e) => println!("FILE LOST: metadata lists it, bytes gone: {e:#}"),
    }
    Ok(())
}
