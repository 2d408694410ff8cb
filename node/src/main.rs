//! The `plexus` node binary. Until the node issue lands it only reports its
//! version; the p2p throughput example is the runnable job (see README.md).
use clap::Parser;

/// Plexus node (work in progress: see README.md for what runs today).
#[derive(Parser)]
#[command(name = "plexus", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "plexus {}: the node is not built yet; run the p2p throughput example (README.md)",
        env!("CARGO_PKG_VERSION")
    );
}
