//! Multi-node tests, benchmarks and the network simulation.
//!
//! - [`sim`]: a deterministic network of full nodes in one process (a
//!   library embedders can drive with their own reactors).
//! - `examples/sync_bench.rs`, `examples/peers_bench.rs`: block sync and
//!   many-peer benchmarks over loopback TCP (see ARCHITECTURE.md).

pub mod sim;
