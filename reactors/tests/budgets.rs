//! Byte budgets against peers that ask and never read: a raw peer that
//! grants no credit and requests large blocks (consensus `GetBlocks`, block
//! sync `BlockRequest`) and is sent the mempool makes the node hold at most
//! its send budgets, and is dropped for `UnreadAnswers`.
//!
//! Memory is measured twice: the heap the process has allocated (live
//! bytes, from a counting global allocator), which is what the budgets
//! bound, and the resident set from `/proc/self/status`, which adds the
//! allocator's own arenas and fragmentation.

use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait, INSTRUMENTED_SYSTEM};

#[global_allocator]
static HEAP: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use plexus_p2p::secret::{SecretConfig, SecretConnection};
use plexus_p2p::{
    node_info, MConnConfig, MemoryTransport, NodeInfo, NodeKey, SwitchConfig, Transport,
};
use plexus_proto::p2p::{packet::Sum as PSum, Packet, PacketMsg};
use plexus_reactors::blocksync::BLOCKSYNC_CHANNEL;
use plexus_reactors::chain::{Block, Blockchain, NetworkParams};
use plexus_reactors::consensus::{ConsensusConfig, CONSENSUS_CHANNEL};
use plexus_reactors::mempool::MEMPOOL_CHANNEL;
use plexus_reactors::mining::solve;
use prost::Message;

/// Resident and peak resident set of this process, bytes
/// (`/proc/self/status`).
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// Resets the peak resident set to the current one (`clear_refs` 5) and
/// the heap's peak growth to zero.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    HEAP.reset_peak_memory();
}

/// `n` blocks of about 900 KB each (14 transactions of 64 KiB).
fn big_chain(p: &Arc<NetworkParams>, n: usize) -> (Blockchain, Vec<Block>) {
    let mut c = chain_with(p, &[]);
    let mut out = Vec::new();
    for h in 0..n {
        let now = c.tip_header().timestamp_ms + 1000;
        let txs = (0..14u8).map(|i| Bytes::from(vec![h as u8 ^ i; 64 * 1024 - 16])).collect();
        let mut b = c.template(txs, now);
        assert!(solve(&mut b.header, u64::MAX));
        c.process_block(b.clone(), None, u64::MAX / 2).unwrap();
        out.push(b);
    }
    (c, out)
}

async fn node(net: &MemoryTransport, p: &Arc<NetworkParams>, c: Blockchain) -> SyncNode {
    let ip = IpAddr::from([10, 2, 0, 1]);
    let scfg = SwitchConfig {
        listen_addr: Some(SocketAddr::new(ip, 0)),
        // A peer leaving our send budget full this long is dropped.
        mconn: MConnConfig { send_timeout: Duration::from_secs(2), ..MConnConfig::default() },
        // The node-wide budget for all peers' send queues.
        max_peer_memory_bytes: 16 << 20,
        ..SwitchConfig::default()
    };
    sync_node_with(net.with_ip(ip), scfg, ConsensusConfig::default(), p, c, sync_cfg()).await
}

fn packet(channel: u8, msg: Vec<u8>) -> Vec<u8> {
    Packet {
        sum: Some(PSum::Msg(PacketMsg { channel_id: channel.into(), eof: true, data: msg.into() })),
    }
    .encode_length_delimited_to_vec()
}

/// A peer that completes the handshake, asks for every large block many
/// times over on both channels, and never grants credit nor reads.
async fn greedy_peer(
    net: &MemoryTransport,
    to: &SyncNode,
    p: &Arc<NetworkParams>,
    ip: IpAddr,
    blocks: &[Block],
) -> Option<(NodeKey, SecretConnection<tokio::io::DuplexStream>)> {
    let key = NodeKey::generate();
    let stream = net.with_ip(ip).dial(to.sw.listen_addr().unwrap()).await.unwrap();
    // The node may refuse it outright (its memory budget is used up).
    let mut conn =
        SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await.ok()?;
    let mut info = NodeInfo::new(&p.network_id(), "greedy");
    info.node_id = key.node_id();
    info.channels = vec![CONSENSUS_CHANNEL, MEMPOOL_CHANNEL, BLOCKSYNC_CHANNEL];
    info.listen_addr = "10.3.0.1:1".into();
    node_info::exchange(&mut conn, &info, None, Duration::from_secs(5)).await.ok()?;
    let genesis = p.genesis_hash.0.to_vec();
    let get_blocks = plexus_proto::chain::Message {
        sum: Some(plexus_proto::chain::message::Sum::GetBlocks(plexus_proto::chain::GetBlocks {
            locator: vec![genesis.into()],
            max_blocks: 64,
        })),
    }
    .encode_to_vec();
    let hashes: Vec<_> = blocks.iter().take(32).map(|b| b.hash().0.to_vec().into()).collect();
    let block_request = plexus_proto::blocksync::Message {
        sum: Some(plexus_proto::blocksync::message::Sum::BlockRequest(
            plexus_proto::blocksync::BlockRequest { hashes },
        )),
    }
    .encode_to_vec();
    let mut burst = Vec::new();
    for _ in 0..70 {
        burst.extend(packet(CONSENSUS_CHANNEL, get_blocks.clone()));
    }
    for _ in 0..9 {
        burst.extend(packet(BLOCKSYNC_CHANNEL, block_request.clone()));
    }
    for chunk in burst.chunks(60_000) {
        conn.send_frame(chunk).await.ok()?;
    }
    Some((key, conn))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_read_hold_bounded_memory_and_are_dropped() {
    let p = params();
    let (c, blocks) = big_chain(&p, 40);
    let net = MemoryTransport::new();
    let n = node(&net, &p, c).await;
    // A mempool of ~9 MB for the peers to be sent.
    for i in 0..150u32 {
        let mut tx = vec![0u8; 60_000];
        tx[..4].copy_from_slice(&i.to_be_bytes());
        n.chain.with_mempool(|m| m.add(Bytes::from(tx))).unwrap();
    }
    let mut events = n.sw.subscribe();

    // One peer: the node holds less than 16 MiB more, and drops it.
    let (base, _) = rss();
    reset_peak();
    let (key, conn) =
        greedy_peer(&net, &n, &p, IpAddr::from([10, 3, 0, 1]), &blocks).await.expect("admitted");
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap() {
            plexus_p2p::SwitchEvent::PeerRemoved { id, reason } if id == key.node_id() => {
                break reason
            }
            _ => {}
        }
    };
    let (_, peak) = rss();
    let heap = HEAP.get_peak_memory();
    drop(conn);
    assert!(
        matches!(
            reason,
            plexus_p2p::StopReason::Misbehavior {
                kind: plexus_p2p::Misbehavior::UnreadAnswers,
                ..
            }
        ),
        "{reason}"
    );
    let grew = peak.saturating_sub(base);
    eprintln!("one greedy peer: peak heap +{} KiB, peak RSS +{} KiB", heap / 1024, grew / 1024);
    assert!(heap < 16 << 20, "one peer grew the heap by {} MiB", heap >> 20);
    assert!(grew < 16 << 20, "one peer grew RSS by {} MiB", grew >> 20);

    // Ten at once: less than 32 MiB in all, every one dropped.
    let (base, _) = rss();
    reset_peak();
    let mut left = std::collections::HashSet::new();
    let mut conns = Vec::new();
    let mut refused = 0;
    for i in 0..10u8 {
        match greedy_peer(&net, &n, &p, IpAddr::from([10, 4, 0, i]), &blocks).await {
            Some((key, conn)) => {
                left.insert(key.node_id());
                conns.push(conn);
            }
            // Refused while the budget was used up: that is the point.
            None => refused += 1,
        }
    }
    let mut peak_queued = 0;
    while !left.is_empty() {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap() {
            plexus_p2p::SwitchEvent::PeerRemoved { id, .. } => {
                left.remove(&id);
            }
            _ => peak_queued = peak_queued.max(n.sw.memory_budget().0),
        }
    }
    let (_, peak) = rss();
    let heap = HEAP.get_peak_memory();
    drop(conns);
    let grew = peak.saturating_sub(base);
    eprintln!(
        "ten greedy peers: peak heap +{} KiB, peak RSS +{} KiB, queued at most {} KiB, \
         {refused} refused at once",
        heap / 1024,
        grew / 1024,
        peak_queued / 1024
    );
    // What the node allocated for ten peers stays under 32 MiB: the 16 MiB
    // budget for queues and the batches being written, the answers built
    // within reservations of it, and the fixed cost of ten connections
    // (the in-memory pipes hold 256 KiB each way).
    assert!(heap < 32 << 20, "ten peers grew the heap by {} MiB", heap >> 20);
    // The resident set adds glibc's per-thread arenas, which keep freed
    // memory of the threads that built answers; bounded, not budgeted.
    assert!(grew < 64 << 20, "ten peers grew RSS by {} MiB", grew >> 20);
    assert!(peak_queued <= (16 << 20) + (8 << 20), "queued {peak_queued} bytes");
    assert_eq!(n.sw.memory_budget().0, 0, "dropped peers give their budget back");
}
