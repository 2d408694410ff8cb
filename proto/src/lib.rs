//! Plexus wire messages, generated from the `.proto` files under
//! `proto/proto/` by prost-build (with protox, so no `protoc` is needed).
//!
//! Every message travels uvarint-length-prefixed (protobuf's
//! length-delimited form, `prost::Message::encode_length_delimited`).
//! docs/protocol.md gives the byte layout.

/// `plexus.p2p`: MConnection packets ([`p2p::Packet`]), wire-compatible with
/// CometBFT's `tendermint.p2p.Packet` for ping (1), pong (2) and msg (3).
pub mod p2p {
    include!(concat!(env!("OUT_DIR"), "/plexus.p2p.rs"));
}

/// `plexus.pex`: peer exchange messages (channel 0x00), field numbers as in
/// CometBFT's `tendermint.p2p` pex.proto.
pub mod pex {
    include!(concat!(env!("OUT_DIR"), "/plexus.pex.rs"));
}

/// `plexus.chain`: consensus reactor messages (channel 0x20): status,
/// block push, locator requests. The block hash is over the canonical
/// header bytes (docs/protocol.md §8), not over these protobuf bytes.
pub mod chain {
    include!(concat!(env!("OUT_DIR"), "/plexus.chain.rs"));
}

/// `plexus.mempool`: transaction gossip (channel 0x30).
pub mod mempool {
    include!(concat!(env!("OUT_DIR"), "/plexus.mempool.rs"));
}

/// `plexus.blocksync`: block sync messages (channel 0x40): status,
/// headers by locator, blocks by hash in batches.
pub mod blocksync {
    include!(concat!(env!("OUT_DIR"), "/plexus.blocksync.rs"));
}

pub use prost;
