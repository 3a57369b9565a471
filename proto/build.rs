//! Compiles `dfs.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["dfs.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Chunk bytes as `Bytes`: slices of one buffer are sent and received without copies.
        .bytes(".dfs.v1.WriteChunkRequest.data")
        .bytes(".dfs.v1.ReadChunkReply.data")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=dfs.proto");
    Ok(())
}
