//! Attacker nodes for the simulation. An attacker ([`SimConfig::attackers`],
//! the last nodes of the network) lives in one /16 (`66.66.0.0/16`) and
//! runs two reactors in place of the honest stack:
//! - [`EclipsePex`] on the PEX channel: answers every address request with
//!   attacker addresses only (as many as a message may hold), asks
//!   nothing, so honest books fill with the attackers' /16 (an eclipse
//!   attempt, which addrman's source-group bucketing and the per-netgroup
//!   outbound limit are there to contain);
//! - [`LiarConsensus`] on the consensus channel: claims a chain far
//!   heavier than any (a status it never backs with headers) and pushes
//!   an invalid block (a wrong merkle root on genesis) every
//!   [`INVALID_BLOCK_EVERY`].
//!
//! Honest nodes are expected to score, disconnect and ban them and go on
//! agreeing on one chain.
//!
//! [`SimConfig::attackers`]: super::SimConfig::attackers

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plexus_p2p::{ChannelDescriptor, Envelope, NetAddress, Peer, Reactor};
use plexus_proto::chain as cpb;
use plexus_proto::pex as ppb;
use plexus_reactors::chain::{Hash, Header, NetworkParams};
use plexus_reactors::consensus::CONSENSUS_CHANNEL;
use plexus_reactors::pex::{to_pb, PEX_CHANNEL};

/// How often a [`LiarConsensus`] pushes an invalid block to each peer.
pub const INVALID_BLOCK_EVERY: Duration = Duration::from_secs(20);

/// Answers PEX requests with attacker addresses only.
pub struct EclipsePex {
    /// Every attacker's address (filled in as they start).
    pub attackers: Arc<parking_lot::Mutex<Vec<NetAddress>>>,
    /// Most addresses per answer (the honest limit, 250).
    pub max_addrs: usize,
}

impl Reactor for EclipsePex {
    type Message = ppb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(PEX_CHANNEL).recv_message_capacity(64 * 1024)]
    }

    async fn receive(&self, env: Envelope<ppb::Message>) {
        if let Some(ppb::message::Sum::PexRequest(_)) = env.message.sum {
            let addrs =
                self.attackers.lock().iter().filter_map(to_pb).take(self.max_addrs).collect();
            let msg =
                ppb::Message { sum: Some(ppb::message::Sum::PexAddrs(ppb::PexAddrs { addrs })) };
            let _ = env.peer.send_msg(PEX_CHANNEL, &msg).await;
        }
    }
}

/// Claims a chain it cannot show and pushes invalid blocks.
pub struct LiarConsensus {
    /// The network (its genesis, to build blocks on).
    pub params: Arc<NetworkParams>,
}

impl LiarConsensus {
    fn invalid_block(&self, salt: u64) -> cpb::Message {
        let g = self.params.genesis_hash;
        let header = Header {
            version: Header::VERSION,
            height: 1,
            prev_hash: g,
            // Not the root of its transactions.
            merkle_root: Hash([7; 32]),
            timestamp_ms: self.params.genesis.timestamp_ms + 1_000,
            bits: self.params.genesis.bits,
            nonce: salt,
        };
        let block = plexus_reactors::chain::Block {
            header,
            txs: vec![Bytes::from(salt.to_le_bytes().to_vec())],
        };
        cpb::Message {
            sum: Some(cpb::message::Sum::NewBlock(cpb::NewBlock { block: Some(block.to_proto()) })),
        }
    }
}

impl Reactor for LiarConsensus {
    type Message = cpb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(CONSENSUS_CHANNEL).recv_message_capacity(1 << 20)]
    }

    async fn add_peer(&self, peer: &Peer) {
        let status = cpb::Status {
            height: 1_000_000,
            weight: vec![0x7f; 32].into(),
            tip_hash: vec![0x42; 32].into(),
        };
        let _ = peer
            .send_msg(
                CONSENSUS_CHANNEL,
                &cpb::Message { sum: Some(cpb::message::Sum::Status(status)) },
            )
            .await;
        let (peer, params) = (peer.clone(), self.params.clone());
        tokio::spawn(async move {
            let liar = LiarConsensus { params };
            let mut salt = 1;
            loop {
                tokio::time::sleep(INVALID_BLOCK_EVERY).await;
                if peer.send_msg(CONSENSUS_CHANNEL, &liar.invalid_block(salt)).await.is_err() {
                    return;
                }
                salt += 1;
            }
        });
    }

    async fn receive(&self, _env: Envelope<cpb::Message>) {}
}

/// Holds the consensus channel and says nothing (a PEX-only attacker's:
/// it must share a chain channel to be kept as a peer).
pub struct Mute;

impl Reactor for Mute {
    type Message = cpb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(CONSENSUS_CHANNEL).recv_message_capacity(1 << 20)]
    }

    async fn receive(&self, _env: Envelope<cpb::Message>) {}
}
