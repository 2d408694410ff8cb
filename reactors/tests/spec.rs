//! docs/protocol.md against the code: the channel table of §4.2 is the
//! reactors' declared channels, and a client that follows the spec (here
//! a bare MConnection, no reactor of ours) gets what §8.6 and §10 promise
//! for a request that leaves its limit at the proto3 default of 0.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use plexus_p2p::mconn::core::PACKET_OVERHEAD;
use plexus_p2p::secret::{SecretConfig, SecretConnection};
use plexus_p2p::{
    node_info, ChannelDescriptor, MConnConfig, MConnection, MemoryTransport, NodeInfo, NodeKey,
    Transport,
};
use plexus_proto::blocksync::{self as bpb, message::Sum as BSum};
use plexus_proto::chain::{self as cpb, message::Sum as CSum};
use plexus_reactors::blocksync::{BlockSyncConfig, BLOCKSYNC_CHANNEL};
use plexus_reactors::consensus::{ConsensusConfig, CONSENSUS_CHANNEL};
use plexus_reactors::mempool::MempoolConfig;
use plexus_reactors::pex::PexConfig;
use prost::Message;

fn spec() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md")).unwrap()
}

/// The rows of the §4.2 channel table: id → (largest message, initial
/// credit, queue bytes, priority).
fn channel_rows(spec: &str) -> Vec<(u8, [usize; 4])> {
    let num = |s: &str| s.trim().replace(',', "").parse::<usize>().unwrap();
    spec.lines()
        .filter(|l| l.starts_with("| `0x") && l.matches('|').count() == 7)
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let id = u8::from_str_radix(cells[1].trim_matches('`').trim_start_matches("0x"), 16)
                .unwrap();
            (id, [num(cells[3]), num(cells[4]), num(cells[5]), num(cells[6])])
        })
        .collect()
}

#[test]
fn the_spec_channel_table_is_what_the_reactors_declare() {
    let spec = spec();
    let rows = channel_rows(&spec);
    let declared: Vec<ChannelDescriptor> = vec![
        PexConfig::default().channel(),
        ConsensusConfig::default().channel(),
        MempoolConfig::default().channel(),
        BlockSyncConfig::default().channel(),
    ];
    assert_eq!(rows.len(), declared.len(), "one §4.2 row per channel: {rows:?}");
    for d in &declared {
        let row = rows.iter().find(|(id, _)| *id == d.id).map(|r| r.1);
        let want = [
            d.recv_message_capacity,
            d.recv_buffer_capacity,
            d.send_queue_bytes,
            d.priority as usize,
        ];
        assert_eq!(row, Some(want), "§4.2 row of channel {:#04x}", d.id);
        d.validate().unwrap();
    }
    // The packet limit the spec states is the one §4.1's rule gives.
    let largest = declared.iter().map(|d| d.recv_message_capacity).max().unwrap();
    let limit = largest.max(1024) + PACKET_OVERHEAD;
    let shown = format!("**{}**", group(limit));
    assert!(spec.contains(&shown), "§4.2 should state the packet limit {shown}");
    // A largest block fits the block-carrying channels with its wrapping.
    let max_block = plexus_reactors::chain::MAX_BLOCK_BYTES;
    assert!(spec.contains(&group(max_block)), "§4.2 and §8.5 state MAX_BLOCK_BYTES");
    let block = vec![0u8; max_block];
    let new_block = cpb::Message {
        sum: Some(CSum::NewBlock(cpb::NewBlock {
            block: Some(cpb::Block { header: None, txs: vec![block.into()] }),
        })),
    };
    assert!(new_block.encoded_len() <= ConsensusConfig::default().max_msg_bytes);
}

/// `8388624` as `8,388,624`.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A client of the spec only: Noise, its NodeInfo, then a bare
/// MConnection on the consensus and block sync channels.
async fn client(
    net: &MemoryTransport,
    to: &SyncNode,
) -> (MConnection, Vec<plexus_p2p::ChannelReceiver>) {
    let key = NodeKey::generate();
    let t = net.with_ip(IpAddr::from([10, 9, 0, 1]));
    let stream = t.dial(to.sw.listen_addr().unwrap()).await.unwrap();
    let mut conn =
        SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await.unwrap();
    let mut info = NodeInfo::new(&params().network_id(), "client");
    info.node_id = key.node_id();
    info.channels = vec![CONSENSUS_CHANNEL, BLOCKSYNC_CHANNEL];
    info.listen_addr = "10.9.0.1:0".into();
    node_info::exchange(&mut conn, &info, None, Duration::from_secs(5)).await.unwrap();
    let channels = [ConsensusConfig::default().channel(), BlockSyncConfig::default().channel()];
    MConnection::new(conn, &channels, MConnConfig::default()).unwrap()
}

#[tokio::test]
async fn a_zero_limit_asks_for_the_answerers_maximum() {
    let net = MemoryTransport::new();
    let mut chain = chain_with(&params(), &[]);
    mine_on(&mut chain, 100, "spec");
    let node = sync_node(&net, 1, &params(), chain, sync_cfg()).await;
    let (conn, mut rx) = client(&net, &node).await;
    let genesis = params().genesis_hash.0.to_vec();

    // GetBlocks{max_blocks: 0}: 64 blocks, the first after genesis first.
    let ask = cpb::Message {
        sum: Some(CSum::GetBlocks(cpb::GetBlocks {
            locator: vec![genesis.clone().into()],
            max_blocks: 0,
        })),
    };
    conn.send(CONSENSUS_CHANNEL, ask.encode_to_vec()).await.unwrap();
    let got = loop {
        let m = cpb::Message::decode(rx[0].recv().await.unwrap()).unwrap();
        if let Some(CSum::Blocks(b)) = m.sum {
            break b.blocks;
        }
    };
    let want = ConsensusConfig::default().max_blocks_per_request as usize;
    assert_eq!(got.len(), want, "max_blocks = 0 answers the answerer's maximum");
    assert_eq!(got[0].header.as_ref().unwrap().height, 1);

    // HeadersRequest{max: 0}: the node's cap (the chain is longer).
    let ask = bpb::Message {
        sum: Some(BSum::HeadersRequest(bpb::HeadersRequest {
            locator: vec![genesis.into()],
            stop_hash: Default::default(),
            max: 0,
        })),
    };
    conn.send(BLOCKSYNC_CHANNEL, ask.encode_to_vec()).await.unwrap();
    let got = loop {
        let m = bpb::Message::decode(rx[1].recv().await.unwrap()).unwrap();
        if let Some(BSum::HeadersResponse(h)) = m.sum {
            break h.headers;
        }
    };
    let want = sync_cfg().max_headers_per_request as usize;
    assert_eq!(got.len(), want, "max = 0 answers the answerer's maximum");
    assert_eq!(got.last().unwrap().height, want as u64);
}
