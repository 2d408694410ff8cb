//! The Blockchain (validation, orphans, fork choice, reorgs, the SQLite
//! store) fed valid blocks on arbitrary parents, blocks held back and
//! delivered later (orphans), valid blocks with one field mutated, and
//! arbitrary protobuf blocks; its invariants (weights, leaves, the main
//! chain and height_to_hash, the store, tips, the orphan pool) are checked
//! after every step.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plexus_reactors::chain::{
    bits_from_target, merkle_root, Block, BlockHash, Blockchain, BlockchainConfig, Genesis, Header,
    NetworkParams, Store, U256,
};
use plexus_reactors::mining::solve;
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A valid block on known block `parent` (index into those made).
    Extend {
        parent: u8,
        dt: u16,
        txs: u8,
        salt: u8,
    },
    /// As Extend, but held back: delivered by `Deliver`, an orphan until
    /// its parent is in.
    Hold {
        parent: u8,
        dt: u16,
        salt: u8,
    },
    Deliver {
        index: u8,
    },
    /// A valid block with one field changed.
    Mutate {
        parent: u8,
        field: u8,
        value: u64,
    },
    /// Any protobuf block.
    Raw {
        bytes: Vec<u8>,
    },
}

const NOW_MS: u64 = 1_795_000_000_000 + 10 * 86_400_000;

fn params() -> Arc<NetworkParams> {
    static P: OnceLock<Arc<NetworkParams>> = OnceLock::new();
    P.get_or_init(|| {
        let easy = bits_from_target(U256::MAX >> 1);
        let g = Genesis {
            bits: easy,
            pow_limit_bits: easy,
            retarget_window: 4,
            target_block_time_ms: 1000,
            max_block_bytes: 4096,
            max_tx_bytes: 512,
            ..NetworkParams::regtest().genesis
        };
        Arc::new(NetworkParams::from_genesis(g).unwrap())
    })
    .clone()
}

/// A valid child of `parent`, or None if no nonce was found quickly.
fn child(c: &Blockchain, parent: &BlockHash, dt: u16, txs: u8, salt: u8) -> Option<Block> {
    let p = *c.header(parent)?;
    let txs: Vec<Bytes> =
        (0..txs % 8).map(|i| Bytes::from(vec![salt, i, p.height as u8])).collect();
    let mut header = Header {
        version: Header::VERSION,
        height: p.height + 1,
        prev_hash: *parent,
        merkle_root: merkle_root(&txs),
        timestamp_ms: (p.timestamp_ms + u64::from(dt)).max(c.median_time_past(parent) + 1),
        bits: c.next_bits(parent),
        nonce: u64::from(salt) << 32,
    };
    solve(&mut header, 1 << 16).then_some(Block { header, txs })
}

fuzz_target!(|ops: Vec<Op>| {
    let params = params();
    let store = Store::open_in_memory().unwrap();
    let cfg = BlockchainConfig {
        max_orphans: 8,
        max_orphan_bytes: 8192,
        max_invalid: 16,
        max_too_new: 4,
    };
    let mut c = Blockchain::open(params.clone(), store, cfg).unwrap();
    let mut made: Vec<BlockHash> = vec![params.genesis_hash];
    let mut held: Vec<Block> = Vec::new();
    for op in ops.iter().take(64) {
        let pick = |i: &u8| made[usize::from(*i) % made.len()];
        match op {
            Op::Extend { parent, dt, txs, salt } => {
                let parent = pick(parent);
                if let Some(b) =
                    c.contains(&parent).then(|| child(&c, &parent, *dt, *txs, *salt)).flatten()
                {
                    let hash = b.hash();
                    c.process_block(b, None, NOW_MS).expect("a valid block is accepted");
                    made.push(hash);
                }
            }
            Op::Hold { parent, dt, salt } => {
                let parent = pick(parent);
                if let Some(b) =
                    c.contains(&parent).then(|| child(&c, &parent, *dt, 1, *salt)).flatten()
                {
                    made.push(b.hash());
                    held.push(b);
                }
            }
            Op::Deliver { index } => {
                if !held.is_empty() {
                    let b = held.remove(usize::from(*index) % held.len());
                    let _ = c.process_block(b, None, NOW_MS);
                }
            }
            Op::Mutate { parent, field, value } => {
                let parent = pick(parent);
                if let Some(mut b) =
                    c.contains(&parent).then(|| child(&c, &parent, 500, 2, *field)).flatten()
                {
                    let h = &mut b.header;
                    match field % 9 {
                        0 => h.version = *value as u32,
                        1 => h.height = *value,
                        2 => h.prev_hash.0[(*value % 32) as usize] ^= 1,
                        3 => h.merkle_root.0[(*value % 32) as usize] ^= 1,
                        4 => h.timestamp_ms = *value,
                        5 => h.bits = *value as u32,
                        6 => h.nonce ^= *value,
                        7 => b.txs.push(b.txs[0].clone()),
                        _ => b.txs.push(Bytes::from(vec![0u8; (*value % 4096) as usize])),
                    }
                    let _ = c.process_block(b, None, NOW_MS);
                }
            }
            Op::Raw { bytes } => {
                if let Ok(pb) = plexus_proto::chain::Block::decode(&bytes[..]) {
                    if let Ok(b) = Block::from_proto(pb) {
                        let _ = c.process_block(b, None, NOW_MS);
                    }
                }
            }
        }
        if let Err(why) = c.check_invariants() {
            panic!("chain invariant broken after {op:?}: {why}");
        }
    }
});
