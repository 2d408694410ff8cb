//! Multi-node tests, benchmarks and the network simulation.
//!
//! - [`sim`]: a deterministic network of full nodes in one process (a
//!   library embedders can drive with their own reactors).
//! - `examples/sync_bench.rs`, `examples/peers_bench.rs`: block sync and
//!   many-peer benchmarks over loopback TCP (see ARCHITECTURE.md).

pub mod sim;

/// Resident set of process `pid` (`VmRSS` in `/proc/<pid>/status`),
/// bytes; `None` where there is no such file (not Linux, no process).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?;
    kib.parse::<u64>().ok().map(|k| k * 1024)
}
