//! Multi-node benchmarks and, as the node lands, end-to-end tests of the
//! `plexus` binary. Today: `examples/sync_bench.rs` (block sync from four
//! peers over loopback TCP against local import; see ARCHITECTURE.md).
