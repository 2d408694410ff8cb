//! The mempool under arbitrary sequences of local and peer submissions
//! (gossip `Txs` messages decoded from bytes among them), removals, sender
//! notes and tip changes that mine and un-mine transactions, with the
//! pool's invariants (counts, shares, limits) checked after every step.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plexus_p2p::NodeId;
use plexus_reactors::chain::{Block, Hash, Header, TipChange};
use plexus_reactors::mempool::{Mempool, MempoolConfig, TxSource};
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Op {
    Local {
        tx: Vec<u8>,
    },
    Peer {
        peer: u8,
        tx: Vec<u8>,
    },
    /// Many copies of one size from one peer (a flood).
    Flood {
        peer: u8,
        n: u8,
        size: u16,
    },
    Gossip {
        peer: u8,
        msg: Vec<u8>,
    },
    Remove {
        index: u8,
    },
    Sender {
        index: u8,
        peer: u8,
    },
    /// A tip change: `mine` of the pool's transactions mined, and the
    /// previous block of such transactions disconnected when `reorg`.
    Tip {
        mine: u8,
        reorg: bool,
    },
    Select {
        max_bytes: u16,
    },
}

fn peer(n: u8) -> TxSource {
    TxSource::Peer(NodeId::from_public_key(&[n]))
}

fn block(txs: Vec<Bytes>) -> Block {
    let header = Header {
        version: 1,
        height: 1,
        prev_hash: Hash::ZERO,
        merkle_root: Hash::ZERO,
        timestamp_ms: 0,
        bits: 0,
        nonce: 0,
    };
    Block { header, txs }
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = MempoolConfig {
        max_txs: 40,
        max_bytes: 16 << 10,
        max_tx_bytes: 2048,
        max_recent_mined: 64,
        ..MempoolConfig::default()
    };
    let mut pool = Mempool::new(cfg);
    let mut last_mined: Vec<Bytes> = Vec::new();
    for op in ops.iter().take(300) {
        match op {
            Op::Local { tx } => {
                let _ = pool.add(Bytes::from(tx.clone()));
            }
            Op::Peer { peer: p, tx } => {
                let _ = pool.add_from(Bytes::from(tx.clone()), peer(*p));
            }
            Op::Flood { peer: p, n, size } => {
                for i in 0..*n {
                    let mut tx = vec![i; usize::from(*size % 3000)];
                    tx.push(*p);
                    let _ = pool.add_from(Bytes::from(tx), peer(*p));
                }
            }
            Op::Gossip { peer: p, msg } => {
                if let Ok(m) = plexus_proto::mempool::Message::decode(&msg[..]) {
                    if let Some(plexus_proto::mempool::message::Sum::Txs(t)) = m.sum {
                        for tx in t.txs.into_iter().take(256) {
                            let _ = pool.add_from(tx, peer(*p));
                        }
                    }
                }
            }
            Op::Remove { index } => {
                let id = pool.iter().nth(usize::from(*index)).map(|(id, _)| *id);
                if let Some(id) = id {
                    assert!(pool.remove(&id).is_some());
                    assert!(!pool.contains(&id));
                }
            }
            Op::Sender { index, peer: p } => {
                let id = pool.iter().nth(usize::from(*index)).map(|(id, _)| *id);
                if let Some(id) = id {
                    pool.note_sender(&id, NodeId::from_public_key(&[*p]));
                }
            }
            Op::Tip { mine, reorg } => {
                let txs: Vec<Bytes> =
                    pool.iter().take(usize::from(*mine)).map(|(_, t)| t.clone()).collect();
                let disconnected =
                    if *reorg { vec![block(std::mem::take(&mut last_mined))] } else { vec![] };
                let change = TipChange {
                    old_tip: Hash::ZERO,
                    new_tip: Hash::ZERO,
                    fork_height: 0,
                    disconnected,
                    connected: vec![block(txs.clone())],
                };
                pool.apply_tip_change(&change);
                for tx in &txs {
                    assert!(!pool.contains(&Hash::sha256(tx)), "a mined transaction stayed");
                }
                last_mined = txs;
            }
            Op::Select { max_bytes } => {
                let picked = pool.select(usize::from(*max_bytes));
                assert!(picked.iter().map(Bytes::len).sum::<usize>() <= usize::from(*max_bytes));
            }
        }
        if let Err(why) = pool.check_invariants() {
            panic!("mempool invariant broken after {op:?}: {why}");
        }
    }
});
