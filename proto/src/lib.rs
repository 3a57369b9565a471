//! gRPC definitions shared by metasrv, chunksrv and dfsctl (generated from `dfs.proto`).
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("dfs.v1");
}
pub use prost::bytes::{self, Bytes};
pub use v1::*;
