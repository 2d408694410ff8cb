//! Compiles `proto/**/*.proto` with protox (pure Rust; no `protoc` needed)
//! and prost-build. `bytes` fields become `bytes::Bytes` so decoding from a
//! `Bytes` buffer slices instead of copying.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/plexus/p2p/conn.proto",
        "proto/plexus/p2p/types.proto",
        "proto/plexus/p2p/rpc.proto",
        "proto/plexus/pex/pex.proto",
        "proto/plexus/chain/chain.proto",
        "proto/plexus/mempool/mempool.proto",
        "proto/plexus/blocksync/blocksync.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
