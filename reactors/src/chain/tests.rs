//! Unit tests of the chain: encodings, every validation rule, fork choice,
//! reorganisations, orphans, retargeting and the store.

use std::sync::Arc;

use bytes::Bytes;
use ruint::aliases::U256;

use super::*;
use crate::mining::solve;

pub(crate) const T: u64 = 1_000; // target block time in tests, ms

/// Regtest-like parameters: first target 1/512 of the space (so a block
/// takes ~512 hashes), pow limit half the space, `window` retarget.
pub(crate) fn params(window: u64) -> Arc<NetworkParams> {
    Arc::new(
        NetworkParams::from_genesis(Genesis {
            network_name: "test".into(),
            timestamp_ms: 1_700_000_000_000,
            bits: bits_from_target(U256::MAX >> 9),
            pow_limit_bits: bits_from_target(U256::MAX >> 1),
            target_block_time_ms: T,
            retarget_window: window,
            max_block_bytes: 200_000,
            max_tx_bytes: 65_536,
            max_future_ms: 2 * 3600 * 1000,
            message: "test genesis".into(),
        })
        .unwrap(),
    )
}

pub(crate) fn chain(p: &Arc<NetworkParams>) -> Blockchain {
    Blockchain::open(p.clone(), Store::open_in_memory().unwrap(), BlockchainConfig::default())
        .unwrap()
}

/// Far enough in the future that no test block is "too new".
fn now(p: &NetworkParams) -> u64 {
    p.genesis.timestamp_ms + 1_000_000_000
}

/// A valid child of `parent`, `dt` ms after it, carrying `txs`.
pub(crate) fn child_with(c: &Blockchain, parent: &BlockHash, dt: u64, txs: Vec<Bytes>) -> Block {
    let ph = c.header(parent).unwrap();
    let mut header = Header {
        version: Header::VERSION,
        height: ph.height + 1,
        prev_hash: *parent,
        merkle_root: merkle_root(&txs),
        timestamp_ms: ph.timestamp_ms + dt,
        bits: c.next_bits(parent),
        nonce: 0,
    };
    assert!(solve(&mut header, u64::MAX));
    Block { header, txs }
}

fn child(c: &Blockchain, parent: &BlockHash) -> Block {
    child_with(c, parent, T, vec![])
}

/// Mines `block` again after a change to its header.
fn resolve(mut b: Block) -> Block {
    b.header.nonce = 0;
    assert!(solve(&mut b.header, u64::MAX));
    b
}

pub(crate) fn add(c: &mut Blockchain, b: Block) -> Result<Processed, BlockError> {
    let n = now(c.params());
    c.process_block(b, None, n)
}

/// Extends the chain from `parent` by `n` blocks `dt` apart; the hashes.
pub(crate) fn extend(c: &mut Blockchain, parent: BlockHash, n: usize, dt: u64) -> Vec<BlockHash> {
    let mut out = Vec::new();
    let mut p = parent;
    for _ in 0..n {
        let b = child_with(c, &p, dt, vec![]);
        p = b.hash();
        add(c, b).unwrap();
        out.push(p);
    }
    out
}

#[test]
fn header_layout_is_pinned() {
    let h = Header {
        version: 1,
        height: 0x0102030405060708,
        prev_hash: Hash([0xaa; 32]),
        merkle_root: Hash([0xbb; 32]),
        timestamp_ms: 0x1122334455667788,
        bits: 0x1d00ffff,
        nonce: 0xdeadbeef,
    };
    let b = h.to_bytes();
    assert_eq!(hex::encode(&b[..12]), "010000000807060504030201");
    assert_eq!(&b[12..44], &[0xaa; 32]);
    assert_eq!(&b[44..76], &[0xbb; 32]);
    assert_eq!(hex::encode(&b[76..96]), "8877665544332211ffff001defbeadde00000000");
    assert_eq!(Header::from_bytes(&b), h);
    // The hash is double SHA-256 of exactly these bytes.
    use sha2::{Digest, Sha256};
    assert_eq!(h.hash().0, <[u8; 32]>::from(Sha256::digest(Sha256::digest(b))));
    assert_eq!(
        h.hash().to_string(),
        "c6213e09a738d5b62b209706403a9ff9957687801db3eb0be1b5d7082704a1d7"
    );
}

#[test]
fn merkle_root_rules() {
    use sha2::{Digest, Sha256};
    let leaf = |t: &[u8]| -> [u8; 32] {
        Sha256::new().chain_update([0]).chain_update(t).finalize().into()
    };
    let node = |l: &[u8; 32], r: &[u8; 32]| -> [u8; 32] {
        Sha256::new().chain_update([1]).chain_update(l).chain_update(r).finalize().into()
    };
    assert_eq!(merkle_root(&[]), Hash::sha256(b""));
    assert_eq!(merkle_root(&[Bytes::from_static(b"a")]).0, leaf(b"a"));
    let three = [Bytes::from_static(b"a"), Bytes::from_static(b"b"), Bytes::from_static(b"c")];
    assert_eq!(merkle_root(&three).0, node(&node(&leaf(b"a"), &leaf(b"b")), &leaf(b"c")));
    // Order matters; a repeated last transaction changes the root.
    let swapped = [three[1].clone(), three[0].clone(), three[2].clone()];
    assert_ne!(merkle_root(&swapped), merkle_root(&three));
    let dup = [three[0].clone(), three[1].clone(), three[2].clone(), three[2].clone()];
    assert_ne!(merkle_root(&dup), merkle_root(&three));
}

#[test]
fn compact_targets_match_bitcoin() {
    // Vectors from Bitcoin Core's arith_uint256 tests (SetCompact).
    assert_eq!(target_from_bits(0x01123456), Some(U256::from(0x12)));
    assert_eq!(target_from_bits(0x02123456), Some(U256::from(0x1234)));
    assert_eq!(target_from_bits(0x03123456), Some(U256::from(0x123456)));
    assert_eq!(target_from_bits(0x04123456), Some(U256::from(0x12345600u64)));
    assert_eq!(target_from_bits(0x05009234), Some(U256::from(0x92340000u64)));
    assert_eq!(target_from_bits(0x20123456), Some(U256::from(0x123456) << 232));
    assert_eq!(target_from_bits(0x04923456), None, "negative");
    assert_eq!(target_from_bits(0xff123456), None, "overflow");
    assert_eq!(target_from_bits(0x00000000), None, "zero");
    let btc = target_from_bits(0x1d00ffff).unwrap();
    assert_eq!(btc, U256::from(0xffff) << 208);
    for bits in [0x1d00ffffu32, 0x207fffff, 0x1b0404cb, 0x03123456, 0x2100ffff] {
        assert_eq!(bits_from_target(target_from_bits(bits).unwrap()), bits);
    }
    assert_eq!(bits_from_target(U256::from(0x80)), 0x02008000, "sign bit moves to the next byte");
}

#[test]
fn work_is_expected_hashes() {
    assert_eq!(work(U256::MAX), U256::from(1));
    assert_eq!(work(U256::MAX >> 1), U256::from(2));
    assert_eq!(work(U256::MAX >> 9), U256::from(512));
    // Bitcoin's genesis difficulty: 2^32 / 0xffff... = 4295032833.
    assert_eq!(work(target_from_bits(0x1d00ffff).unwrap()), U256::from(4_295_032_833u64));
}

#[test]
fn genesis_checks() {
    let mut g = params(0).genesis.clone();
    g.bits = bits_from_target(U256::MAX);
    assert!(matches!(
        NetworkParams::from_genesis(g.clone()),
        Err(GenesisError::Invalid { field: "bits", .. })
    ));
    g = params(0).genesis.clone();
    g.retarget_window = 1;
    assert!(NetworkParams::from_genesis(g.clone()).is_err());
    g = params(0).genesis.clone();
    g.max_tx_bytes = 70_000;
    assert!(NetworkParams::from_genesis(g).is_err());
    // The retarget arithmetic stays in range: the ÷4 clamp is never 0,
    // the ×4 clamp never overflows.
    for (window, ms, ok) in
        [(2, 3, false), (2, 4, true), (5, 1, true), (0, 1, true), (u64::MAX, 2, false)]
    {
        g = params(0).genesis.clone();
        (g.retarget_window, g.target_block_time_ms) = (window, ms);
        assert_eq!(NetworkParams::from_genesis(g).is_ok(), ok, "window {window}, {ms} ms");
    }
    // A block must fit one 8 MiB message (docs/protocol.md §4.2).
    g = params(0).genesis.clone();
    g.max_block_bytes = super::MAX_BLOCK_BYTES;
    assert!(NetworkParams::from_genesis(g.clone()).is_ok());
    g.max_block_bytes += 1;
    assert!(matches!(
        NetworkParams::from_genesis(g),
        Err(GenesisError::Invalid { field: "max_block_bytes", .. })
    ));
    let d = NetworkParams::devnet();
    assert_eq!(d.network_id().len(), 64);
    assert_ne!(d.genesis_hash, params(0).genesis_hash);
    let json = serde_json::to_string(&d.genesis).unwrap();
    let back = NetworkParams::from_genesis(serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(back.genesis_hash, d.genesis_hash);
}

#[test]
fn a_new_chain_is_genesis() {
    let p = params(0);
    let c = chain(&p);
    assert_eq!(c.height(), 0);
    assert_eq!(c.tip(), p.genesis_hash);
    assert_eq!(c.height_to_hash(0), Some(p.genesis_hash));
    assert_eq!(c.weight(), work(U256::MAX >> 9));
    assert_eq!(c.tips().len(), 1);
    assert_eq!(c.locator(), vec![p.genesis_hash]);
}

#[test]
fn blocks_extend_the_main_chain() {
    let p = params(0);
    let mut c = chain(&p);
    let b1 = child(&c, &p.genesis_hash);
    let r = add(&mut c, b1.clone()).unwrap();
    assert_eq!(r.status, ProcessStatus::MainChain);
    let tc = r.tip_change.unwrap();
    assert_eq!((tc.old_tip, tc.new_tip, tc.fork_height), (p.genesis_hash, b1.hash(), 0));
    assert!(tc.disconnected.is_empty());
    assert_eq!(tc.connected, vec![b1.clone()]);
    let hs = extend(&mut c, b1.hash(), 20, T);
    assert_eq!(c.height(), 21);
    assert_eq!(c.height_to_hash(21), hs.last().copied());
    assert_eq!(c.weight(), U256::from(512 * 22));
    assert_eq!(c.block(&b1.hash()).unwrap().unwrap(), b1);
    // Locator: ten dense, then doubling steps, then genesis.
    let loc = c.locator();
    let heights: Vec<u64> = loc.iter().map(|h| c.header(h).unwrap().height).collect();
    assert_eq!(heights, vec![21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 10, 6, 0]);
    // Again: already known.
    assert_eq!(add(&mut c, b1).unwrap().status, ProcessStatus::AlreadyKnown);
}

#[test]
fn rule_proof_of_work() {
    let p = params(0);
    let mut c = chain(&p);
    let mut b = child(&c, &p.genesis_hash);
    let target = target_from_bits(b.header.bits).unwrap();
    while b.hash().to_u256() <= target {
        b.header.nonce += 1;
    }
    assert!(matches!(add(&mut c, b), Err(BlockError::BadPow)));
}

#[test]
fn rule_bits_valid_and_within_pow_limit() {
    let p = params(0);
    let mut c = chain(&p);
    let mut b = child(&c, &p.genesis_hash);
    b.header.bits = bits_from_target(U256::MAX);
    let b = resolve(b);
    assert!(matches!(add(&mut c, b.clone()), Err(BlockError::BadBits(_))));
    let mut b = child(&c, &p.genesis_hash);
    b.header.bits = 0x04923456;
    assert!(matches!(add(&mut c, b), Err(BlockError::BadBits(0x04923456))));
}

#[test]
fn rule_target_follows_retarget() {
    let p = params(0);
    let mut c = chain(&p);
    let mut b = child(&c, &p.genesis_hash);
    b.header.bits = bits_from_target(U256::MAX >> 10); // harder than required: still wrong
    let b = resolve(b);
    assert!(matches!(add(&mut c, b), Err(BlockError::BadTarget { .. })));
}

#[test]
fn rule_height() {
    let p = params(0);
    let mut c = chain(&p);
    let mut b = child(&c, &p.genesis_hash);
    b.header.height = 2;
    let b = resolve(b);
    assert!(matches!(add(&mut c, b), Err(BlockError::BadHeight { expected: 1, got: 2 })));
}

#[test]
fn rule_merkle_root_and_mutated_blocks() {
    let p = params(0);
    let mut c = chain(&p);
    let good = child_with(&c, &p.genesis_hash, T, vec![Bytes::from_static(b"tx")]);
    let mut bad = good.clone();
    bad.txs.push(Bytes::from_static(b"extra"));
    assert_eq!(bad.hash(), good.hash());
    assert!(matches!(add(&mut c, bad), Err(BlockError::BadMerkleRoot)));
    // The altered copy did not poison the real block.
    assert!(!c.is_invalid(&good.hash()));
    assert_eq!(add(&mut c, good).unwrap().status, ProcessStatus::MainChain);
}

/// docs/protocol.md §8.4: the timestamps of heights max(0, p-10)..=p,
/// sorted, the one at index n/2: the upper middle for an even count, and
/// only genesis's at p = 0.
#[test]
fn median_time_past_below_height_ten_takes_the_upper_middle() {
    let header = |height: u64, timestamp_ms: u64| Header {
        version: Header::VERSION,
        height,
        prev_hash: Hash::ZERO,
        merkle_root: Hash::ZERO,
        timestamp_ms,
        bits: 0,
        nonce: 0,
    };
    // Out of order on purpose: the median is of the sorted values.
    let times = [500u64, 100, 400, 200, 300];
    let anc = |h: u64| times.get(h as usize).map(|t| header(h, *t));
    assert_eq!(median_time(&header(0, 500), anc), 500, "genesis alone");
    // p = 1: {500, 100} sorted [100, 500], index 1.
    assert_eq!(median_time(&header(1, 100), anc), 500);
    // p = 3: [100, 200, 400, 500], index 2.
    assert_eq!(median_time(&header(3, 200), anc), 400);
    // p = 4: [100, 200, 300, 400, 500], index 2.
    assert_eq!(median_time(&header(4, 300), anc), 300);
}

#[test]
fn rule_timestamp_after_median_time_past() {
    let p = params(0);
    let mut c = chain(&p);
    let hs = extend(&mut c, p.genesis_hash, 11, T);
    let mtp = c.median_time_past(&c.tip());
    assert_eq!(mtp, p.genesis.timestamp_ms + 6 * T);
    let tip_ts = c.tip_header().timestamp_ms;
    let mut b = child(&c, hs.last().unwrap());
    b.header.timestamp_ms = mtp;
    let b = resolve(b);
    assert!(matches!(add(&mut c, b), Err(BlockError::TimeTooOld { .. })));
    // Just after the median is fine, even though before the parent.
    let mut b = child(&c, hs.last().unwrap());
    b.header.timestamp_ms = mtp + 1;
    assert!(mtp + 1 < tip_ts);
    let b = resolve(b);
    add(&mut c, b).unwrap();
}

#[test]
fn rule_timestamp_not_far_in_the_future() {
    let p = params(0);
    let mut c = chain(&p);
    let b = child(&c, &p.genesis_hash);
    let now = b.header.timestamp_ms - p.genesis.max_future_ms - 1;
    let e = c.process_block(b.clone(), None, now).unwrap_err();
    assert!(matches!(e, BlockError::TimeTooNew { .. }));
    assert!(!e.is_peer_fault());
    // Not remembered as invalid: valid once the clock catches up.
    assert_eq!(c.process_block(b, None, now + 1).unwrap().status, ProcessStatus::MainChain);
}

/// The same block from the future sent 400 times is checked once before
/// its time (remembered by hash), is refused without blame every time,
/// and is accepted, checked anew, once its time comes. A block from the
/// future with a bad body is not checked past the clock before its time,
/// and is refused for its body after.
#[test]
fn a_block_from_the_future_is_checked_once_before_its_time() {
    let p = params(0);
    let mut c = chain(&p);
    let b = child(&c, &p.genesis_hash);
    let now = b.header.timestamp_ms - p.genesis.max_future_ms - 1;
    for _ in 0..400 {
        let e = c.process_block(b.clone(), None, now).unwrap_err();
        assert!(matches!(e, BlockError::TimeTooNew { .. }), "{e}");
        assert!(!e.is_peer_fault());
    }
    assert_eq!(c.blocks_checked(), 1);
    assert!(c.is_too_new(&b.hash()));
    assert_eq!(c.process_block(b.clone(), None, now + 1).unwrap().status, ProcessStatus::MainChain);
    assert_eq!(c.blocks_checked(), 2);
    assert!(!c.is_too_new(&b.hash()));

    let mut bad = child_with(&c, &b.hash(), T, vec![Bytes::from_static(b"tx")]);
    bad.header.merkle_root = Hash::sha256(b"not the root");
    let bad = resolve(bad);
    let now = bad.header.timestamp_ms - p.genesis.max_future_ms - 1;
    let e = c.process_block(bad.clone(), None, now).unwrap_err();
    assert!(matches!(e, BlockError::TimeTooNew { .. }), "{e}");
    assert!(!c.is_invalid(&bad.hash()));
    // Once its time comes its body is checked and blamed (a wrong body
    // under a good header is not remembered by the header's hash: the
    // same header with its true body may be valid).
    let e = c.process_block(bad.clone(), None, now + 1).unwrap_err();
    assert!(e.is_peer_fault(), "{e}");
    assert!(!c.is_too_new(&bad.hash()));
}

/// The memory of blocks from the future is bounded: when full, the one
/// furthest in the future gives way to a nearer one.
#[test]
fn the_memory_of_blocks_from_the_future_is_bounded() {
    let p = params(0);
    let cfg = BlockchainConfig { max_too_new: 2, ..BlockchainConfig::default() };
    let mut c = Blockchain::open(p.clone(), Store::open_in_memory().unwrap(), cfg).unwrap();
    let base = child(&c, &p.genesis_hash).header.timestamp_ms;
    let at = |c: &Blockchain, dt: u64| {
        let mut b = child(c, &p.genesis_hash);
        b.header.timestamp_ms = base + dt;
        resolve(b)
    };
    let now = base - p.genesis.max_future_ms - 1;
    let (b1, b2, b3) = (at(&c, 0), at(&c, 10), at(&c, 5));
    for b in [&b1, &b2, &b3] {
        assert!(c.process_block(b.clone(), None, now).is_err());
    }
    assert!(c.is_too_new(&b1.hash()) && c.is_too_new(&b3.hash()));
    assert!(!c.is_too_new(&b2.hash()), "the furthest in the future went");
}

/// The same invalid block from 100 peers is checked once: its hash is
/// remembered and the other 99 are refused from memory, each still a
/// peer fault (the sender is scored). For a context-free failure (too
/// large a transaction) and one that needs the parent (wrong height).
#[test]
fn the_same_invalid_block_is_checked_once() {
    let p = params(0);
    let mut c = chain(&p);
    let big = child_with(&c, &p.genesis_hash, T, vec![Bytes::from(vec![1u8; 65_537])]);
    let mut wrong_height = child(&c, &p.genesis_hash);
    wrong_height.header.height = 7;
    let wrong_height = resolve(wrong_height);
    for (i, b) in [big, wrong_height].into_iter().enumerate() {
        for n in 0..100 {
            let e = c.process_block(b.clone(), None, u64::MAX / 2).unwrap_err();
            assert!(e.is_peer_fault(), "{e}");
            if n > 0 {
                assert!(matches!(e, BlockError::KnownInvalid), "{e}");
            }
        }
        assert_eq!(c.blocks_checked(), i as u64 + 1);
        assert!(c.is_invalid(&b.hash()));
    }
}

/// The size bound read without the block holds for blocks large and
/// small, and is close (the header field's room).
#[test]
fn the_encoded_size_bound_holds() {
    let p = params(0);
    let mut c = chain(&p);
    let mut parent = p.genesis_hash;
    for txs in [vec![], vec![Bytes::from(vec![9u8; 60_000]), Bytes::from_static(b"x")]] {
        let b = child_with(&c, &parent, T, txs);
        parent = b.hash();
        add(&mut c, b).unwrap();
        let real = c.block_encoded(&parent).unwrap().unwrap().len();
        let bound = c.block_encoded_size(&parent).unwrap().unwrap();
        assert!(bound >= real && bound - real <= 160, "{bound} for {real}");
    }
    assert_eq!(c.block_encoded_size(&Hash::sha256(b"none")).unwrap(), None);
}

/// A locator from a side branch walks the branch down to the main chain,
/// then the main chain, with the main locator's spacing.
#[test]
fn a_locator_from_a_side_branch_follows_the_branch() {
    let p = params(0);
    let mut c = chain(&p);
    let mut main = vec![p.genesis_hash];
    for _ in 0..30 {
        let b = child(&c, main.last().unwrap());
        main.push(b.hash());
        add(&mut c, b).unwrap();
    }
    // A 25-block branch from height 5, lighter than the 30-block main.
    let mut side = vec![main[5]];
    for _ in 0..25 {
        let b = child_with(&c, side.last().unwrap(), T, vec![Bytes::from_static(b"side")]);
        side.push(b.hash());
        add(&mut c, b).unwrap();
    }
    assert_eq!(c.tip(), main[30]);
    let loc = c.locator_from(side.last().unwrap());
    // Ten steps of one from height 30 on the branch, then doubling.
    let heights = [30u64, 29, 28, 27, 26, 25, 24, 23, 22, 21, 19, 15, 7];
    let want: Vec<BlockHash> = heights
        .iter()
        .map(|&h| if h > 5 { side[(h - 5) as usize] } else { main[h as usize] })
        .chain([p.genesis_hash])
        .collect();
    assert_eq!(loc, want);
    assert_eq!(c.locator_from(&main[30]), c.locator());
    assert_eq!(c.locator_from(&Hash::sha256(b"unknown")), c.locator());
}

#[test]
fn rule_sizes_and_duplicates() {
    let p = params(0);
    let mut c = chain(&p);
    let big = Bytes::from(vec![7u8; 65_537]);
    let b = child_with(&c, &p.genesis_hash, T, vec![big]);
    assert!(matches!(add(&mut c, b), Err(BlockError::TxTooLarge { index: 0, size: 65_537, .. })));
    let tx = Bytes::from_static(b"word");
    let b = child_with(&c, &p.genesis_hash, T, vec![tx.clone(), Bytes::from_static(b"x"), tx]);
    assert!(matches!(add(&mut c, b), Err(BlockError::DuplicateTx { index: 2 })));
    let many: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 60_000])).collect();
    let b = child_with(&c, &p.genesis_hash, T, many);
    assert!(matches!(add(&mut c, b), Err(BlockError::BlockTooLarge { max: 200_000, .. })));
}

#[test]
fn rule_version() {
    let p = params(0);
    let mut c = chain(&p);
    let mut b = child(&c, &p.genesis_hash);
    b.header.version = 2;
    let b = resolve(b);
    assert!(matches!(add(&mut c, b), Err(BlockError::BadVersion(2))));
}

#[test]
fn malformed_proto_is_refused() {
    let p = params(0);
    let c = chain(&p);
    let mut pbb = child(&c, &p.genesis_hash).to_proto();
    pbb.header.as_mut().unwrap().prev_hash = Bytes::from_static(b"short");
    assert!(matches!(Block::from_proto(pbb), Err(BlockError::Malformed(_))));
    assert!(matches!(
        Block::from_proto(plexus_proto::chain::Block { header: None, txs: vec![] }),
        Err(BlockError::Malformed(_))
    ));
}

#[test]
fn invalid_blocks_and_their_children_are_remembered() {
    let p = params(0);
    let mut c = chain(&p);
    let mut bad = child(&c, &p.genesis_hash);
    bad.header.height = 5;
    let bad = resolve(bad);
    assert!(add(&mut c, bad.clone()).is_err());
    assert!(c.is_invalid(&bad.hash()));
    assert!(matches!(add(&mut c, bad.clone()), Err(BlockError::KnownInvalid)));
    // A child of the invalid block: refused without a parent lookup.
    let mut kid = child(&c, &p.genesis_hash);
    kid.header.prev_hash = bad.hash();
    let kid = resolve(kid);
    let e = add(&mut c, kid).unwrap_err();
    assert!(matches!(e, BlockError::KnownInvalid) && e.is_peer_fault());
}

#[test]
fn orphans_connect_when_their_parent_arrives() {
    let p = params(0);
    let mut c = chain(&p);
    let mut src = chain(&p);
    let hs = extend(&mut src, p.genesis_hash, 4, T);
    let blocks: Vec<Block> = hs.iter().map(|h| src.block(h).unwrap().unwrap()).collect();
    for b in blocks[1..].iter().rev() {
        assert_eq!(add(&mut c, b.clone()).unwrap().status, ProcessStatus::Orphan);
    }
    assert_eq!(c.orphan_count(), 3);
    assert_eq!(c.height(), 0);
    let r = add(&mut c, blocks[0].clone()).unwrap();
    assert_eq!(r.accepted, hs);
    assert_eq!(c.orphan_count(), 0);
    assert_eq!(c.tip(), hs[3]);
    let tc = r.tip_change.unwrap();
    assert_eq!(tc.connected.len(), 4);
}

#[test]
fn invalid_orphans_are_reported_with_their_sender() {
    let p = params(0);
    let mut c = chain(&p);
    let mut src = chain(&p);
    let hs = extend(&mut src, p.genesis_hash, 1, T);
    let b1 = src.block(&hs[0]).unwrap().unwrap();
    // Height wrong: only visible once the parent is known.
    let mut bad = child(&src, &hs[0]);
    bad.header.height = 9;
    let bad = resolve(bad);
    let mut grandkid = child(&src, &hs[0]);
    grandkid.header.prev_hash = bad.hash();
    grandkid.header.height = 10;
    let grandkid = resolve(grandkid);
    let who = plexus_p2p::NodeKey::generate().node_id();
    let n = now(&p);
    c.process_block(bad.clone(), Some(who), n).unwrap();
    c.process_block(grandkid.clone(), Some(who), n).unwrap();
    let r = c.process_block(b1, None, n).unwrap();
    assert_eq!(r.rejected_orphans.len(), 2);
    assert_eq!(r.rejected_orphans[0].0, Some(who));
    assert!(matches!(r.rejected_orphans[0].2, BlockError::BadHeight { .. }));
    assert!(c.is_invalid(&grandkid.hash()));
    assert_eq!(c.orphan_count(), 0);
}

#[test]
fn the_orphan_pool_is_bounded() {
    let p = params(0);
    let cfg = BlockchainConfig { max_orphans: 5, ..BlockchainConfig::default() };
    let mut c = Blockchain::open(p.clone(), Store::open_in_memory().unwrap(), cfg).unwrap();
    let src = chain(&p);
    for i in 0..20u64 {
        let mut b = child(&src, &p.genesis_hash);
        b.header.prev_hash = Hash::sha256(&i.to_le_bytes());
        let b = resolve(b);
        assert_eq!(add(&mut c, b).unwrap().status, ProcessStatus::Orphan);
    }
    assert_eq!(c.orphan_count(), 5);
}

#[test]
fn a_heavier_fork_wins_by_weight_not_height() {
    // Retarget every 2 blocks: slow blocks make the target easier, fast
    // ones harder, so 2 fast blocks (work 512 + 2048) outweigh 8 slow ones
    // (512 + 128 + 128 + 32 + 32 + 8 + 8 + 2).
    let p = params(2);
    let mut c = chain(&p);
    let slow = extend(&mut c, p.genesis_hash, 8, 10 * T);
    assert_eq!(c.height(), 8);
    c.check_invariants().unwrap();
    let main_weight = c.weight();
    let mut txs_side = Vec::new();
    let mut parent = p.genesis_hash;
    let mut last = None;
    for i in 0..2 {
        let b = child_with(&c, &parent, 1, vec![]);
        parent = b.hash();
        txs_side.push(parent);
        let r = add(&mut c, b).unwrap();
        if i < 1 {
            assert_eq!(r.status, ProcessStatus::SideChain, "block {i} of the fork");
            assert!(r.tip_change.is_none());
        }
        last = Some(r);
    }
    let r = last.unwrap();
    assert!(c.weight() > main_weight);
    c.check_invariants().unwrap();
    assert_eq!(r.status, ProcessStatus::MainChain);
    assert_eq!(c.height(), 2, "the lower chain is now the main chain");
    assert_eq!(c.tip(), parent);
    let tc = r.tip_change.unwrap();
    assert_eq!(tc.fork_height, 0);
    assert_eq!(
        tc.disconnected.iter().map(Block::hash).collect::<Vec<_>>(),
        slow.iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(tc.connected.iter().map(Block::hash).collect::<Vec<_>>(), txs_side);
    for (h, hash) in txs_side.iter().enumerate() {
        assert_eq!(c.height_to_hash(h as u64 + 1), Some(*hash));
    }
    assert_eq!(c.height_to_hash(3), None);
    // The three heaviest tips: the new main tip first, the old one second.
    let tips = c.tips();
    assert_eq!(tips[0].hash, parent);
    assert_eq!(tips[1].hash, slow[7]);
}

#[test]
fn weight_ties_go_to_the_first_seen() {
    let p = params(0);
    let mut c = chain(&p);
    let a = child_with(&c, &p.genesis_hash, T, vec![Bytes::from_static(b"a")]);
    let b = child_with(&c, &p.genesis_hash, T, vec![Bytes::from_static(b"b")]);
    add(&mut c, a.clone()).unwrap();
    assert_eq!(add(&mut c, b.clone()).unwrap().status, ProcessStatus::SideChain);
    assert_eq!(c.tip(), a.hash());
    let tips = c.tips();
    assert_eq!((tips[0].hash, tips[1].hash), (a.hash(), b.hash()));
    // One more block on b makes it heavier: reorg.
    let b2 = child(&c, &b.hash());
    let r = add(&mut c, b2.clone()).unwrap();
    assert_eq!(c.tip(), b2.hash());
    assert_eq!(r.tip_change.unwrap().disconnected, vec![a]);
}

#[test]
fn tips_keeps_the_three_heaviest() {
    let p = params(0);
    let mut c = chain(&p);
    let base = extend(&mut c, p.genesis_hash, 1, T)[0];
    let mut forks = Vec::new();
    for len in 1..=4 {
        let mut parent = base;
        for i in 0..len {
            let b = child_with(&c, &parent, T, vec![Bytes::from(format!("{len}-{i}"))]);
            parent = b.hash();
            add(&mut c, b).unwrap();
        }
        forks.push(parent);
    }
    let tips = c.tips();
    assert_eq!(tips.len(), 3);
    assert_eq!(tips.iter().map(|t| t.hash).collect::<Vec<_>>(), vec![forks[3], forks[2], forks[1]]);
    assert_eq!(tips.iter().map(|t| t.height).collect::<Vec<_>>(), vec![5, 4, 3]);
    assert_eq!(c.tip(), forks[3]);
}

#[test]
fn retarget_is_bounded_per_step() {
    let p = params(4);
    let limit = p.pow_limit;
    let start = target_from_bits(p.genesis.bits).unwrap();
    // Very fast blocks: the target shrinks by exactly 4.
    let mut c = chain(&p);
    let hs = extend(&mut c, p.genesis_hash, 3, 1);
    let fast = target_from_bits(c.next_bits(&hs[2])).unwrap();
    assert_eq!(bits_from_target(fast), bits_from_target(start / U256::from(4)));
    // Very slow blocks: grows by 4 (below the pow limit).
    let mut c = chain(&p);
    let hs = extend(&mut c, p.genesis_hash, 3, 100 * T);
    let slow = target_from_bits(c.next_bits(&hs[2])).unwrap();
    assert_eq!(bits_from_target(slow), bits_from_target(start * U256::from(4)));
    assert!(slow <= limit);
    // On time: unchanged. Between retargets: the parent's bits.
    let mut c = chain(&p);
    let hs = extend(&mut c, p.genesis_hash, 3, T);
    assert_eq!(c.next_bits(&hs[2]), p.genesis.bits);
    assert_eq!(c.next_bits(&hs[0]), p.genesis.bits);
    // Height 4 must carry the new bits.
    let mut c = chain(&p);
    let hs = extend(&mut c, p.genesis_hash, 5, 1);
    assert_eq!(c.header(&hs[3]).unwrap().bits, bits_from_target(start / U256::from(4)));
}

/// A chain stored in the SQLite file at `path`.
fn disk_chain(p: &Arc<NetworkParams>, path: &std::path::Path) -> Blockchain {
    Blockchain::open(p.clone(), Store::open(path).unwrap(), BlockchainConfig::default()).unwrap()
}

#[test]
fn reopening_the_store_rebuilds_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/chain.sqlite");
    let p = params(2);
    let (tip, heights, tips, count) = {
        let mut c = disk_chain(&p, &path);
        extend(&mut c, p.genesis_hash, 6, 10 * T);
        extend(&mut c, p.genesis_hash, 3, 1); // a heavier fork
        let heights: Vec<_> = (0..=c.height()).map(|h| c.height_to_hash(h).unwrap()).collect();
        (c.tip(), heights, c.tips(), c.block_count())
    };
    let c = disk_chain(&p, &path);
    assert_eq!(c.tip(), tip);
    assert_eq!((0..=c.height()).map(|h| c.height_to_hash(h).unwrap()).collect::<Vec<_>>(), heights);
    assert_eq!(c.tips(), tips);
    assert_eq!(c.block_count(), count);
    assert_eq!(c.store().block_count().unwrap(), count as u64);
    // Another network's genesis is refused.
    let other = params(0);
    let e = Blockchain::open(other, Store::open(&path).unwrap(), BlockchainConfig::default())
        .unwrap_err();
    assert!(matches!(e, StoreError::WrongNetwork { .. }), "{e}");
}

#[test]
fn a_batch_is_one_commit_and_a_failed_commit_leaves_memory_as_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.sqlite");
    let p = params(0);
    let mut c = disk_chain(&p, &path);
    let reader = Store::open_reader(&path).unwrap();
    let first = extend(&mut c, p.genesis_hash, 2, T);
    let blocks: Vec<Block> = {
        // Mined on a scratch copy of the chain, applied below in batches.
        let mut scratch = chain(&p);
        for h in &first {
            add(&mut scratch, c.block(h).unwrap().unwrap()).unwrap();
        }
        let mut parent = first[1];
        (0..4)
            .map(|_| {
                let b = child(&scratch, &parent);
                parent = b.hash();
                add(&mut scratch, b.clone()).unwrap();
                b
            })
            .collect()
    };
    // Inside a batch nothing is visible to another connection; a block
    // that fails validation leaves the batch's other blocks alone, and a
    // nested batch just runs.
    let mut bad = blocks[1].clone();
    bad.header.bits ^= 1;
    c.batch(|c| {
        add(c, blocks[0].clone()).unwrap();
        assert!(add(c, bad).is_err());
        c.batch(|c| add(c, blocks[1].clone()).unwrap()).unwrap();
        assert!(reader.block(&blocks[0].hash()).unwrap().is_none(), "not committed yet");
    })
    .unwrap();
    assert!(reader.block(&blocks[1].hash()).unwrap().is_some());
    assert_eq!(c.height(), 4);
    // A failed commit: rolled back, and the index rebuilt from the disk.
    c.store.fail_next_commit = true;
    let e = c
        .batch(|c| {
            add(c, blocks[2].clone()).unwrap();
            add(c, blocks[3].clone()).unwrap();
        })
        .unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    assert_eq!((c.height(), c.tip()), (4, blocks[1].hash()));
    assert!(!c.contains(&blocks[3].hash()) && reader.block(&blocks[2].hash()).unwrap().is_none());
    // A failed write: the rest of the batch is refused and nothing of it
    // stays, in memory or on disk.
    let e = c
        .batch(|c| {
            add(c, blocks[2].clone()).unwrap();
            c.store.fail_next_write = true;
            assert!(matches!(add(c, blocks[3].clone()), Err(BlockError::Store(_))));
            let e = add(c, blocks[3].clone()).unwrap_err();
            assert!(e.to_string().contains("earlier write"), "{e}");
        })
        .unwrap_err();
    assert!(e.to_string().contains("injected write failure"), "{e}");
    assert_eq!((c.height(), c.tip()), (4, blocks[1].hash()));
    assert!(!c.contains(&blocks[2].hash()) && reader.block(&blocks[2].hash()).unwrap().is_none());
    // A panic inside a batch: rolled back before the panic goes on.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = c.batch(|c| {
            add(c, blocks[2].clone()).unwrap();
            panic!("in the middle of a batch");
        });
    }));
    assert!(caught.is_err());
    assert_eq!((c.height(), c.tip()), (4, blocks[1].hash()));
    assert!(!c.store().in_batch() && reader.block(&blocks[2].hash()).unwrap().is_none());
    // The same blocks go in afterwards, and a reopen finds them all.
    c.batch(|c| {
        add(c, blocks[2].clone()).unwrap();
        add(c, blocks[3].clone()).unwrap();
    })
    .unwrap();
    drop(c);
    let c = disk_chain(&p, &path);
    assert_eq!((c.height(), c.tip()), (6, blocks[3].hash()));
}

#[test]
fn a_reader_sees_committed_blocks_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.sqlite");
    let p = params(0);
    let mut c = disk_chain(&p, &path);
    let reader = Store::open_reader(&path).unwrap();
    let hs = extend(&mut c, p.genesis_hash, 3, T);
    // Written after the reader opened: it sees them, while the writer
    // stays open.
    for h in &hs {
        assert_eq!(reader.block(h).unwrap().map(|b| b.hash()), Some(*h));
    }
    let more = extend(&mut c, hs[2], 1, T);
    assert!(reader.block(&more[0]).unwrap().is_some());
    let b = reader.block(&hs[0]).unwrap().unwrap();
    let mut reader = reader;
    assert!(reader.put_block(&b, &hs[0], None).is_err(), "a reader cannot write");
    // A file that is not there is an error, not a new database.
    assert!(Store::open_reader(&dir.path().join("none.sqlite")).is_err());
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.sqlite");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 7).unwrap();
    drop(conn);
    let e = Store::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::SchemaTooNew { found: 7, supported: 1 }));
    assert!(e.to_string().contains("newer than this release supports"));
}

#[test]
fn a_broken_main_chain_table_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.sqlite");
    let p = params(0);
    {
        let mut c = disk_chain(&p, &path);
        extend(&mut c, p.genesis_hash, 3, T);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("DELETE FROM main_chain WHERE height = 3", []).unwrap();
    drop(conn);
    let e =
        Blockchain::open(p, Store::open(&path).unwrap(), BlockchainConfig::default()).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
}

#[test]
fn header_paths_validate_headers_alone() {
    let p = params(2);
    let mut src = chain(&p);
    extend(&mut src, p.genesis_hash, 10, 3 * T);
    let headers: Vec<Header> =
        (1..=10).map(|h| *src.header(&src.height_to_hash(h).unwrap()).unwrap()).collect();
    let c = chain(&p);
    let n = now(&p);
    // In two batches, across retargets: same weight as the full chain.
    let mut path = c.header_path(&p.genesis_hash).unwrap();
    c.extend_header_path(&mut path, &headers[..3], n).unwrap();
    c.extend_header_path(&mut path, &headers[3..], n).unwrap();
    assert_eq!((path.tip_height(), path.tip_hash(), path.weight()), (10, src.tip(), src.weight()));
    assert_eq!(path.hash_at(4), src.height_to_hash(4));
    assert_eq!(path.height_of(&src.tip()), Some(10));
    // A gap.
    let mut path = c.header_path(&p.genesis_hash).unwrap();
    let e = c.extend_header_path(&mut path, &[headers[0], headers[2]], n).unwrap_err();
    assert!(matches!(e, (1, BlockError::Unlinked)));
    assert_eq!(path.len(), 1);
    // A header altered in the middle: its PoW (or the next link) fails.
    let mut bad = headers.clone();
    bad[5].timestamp_ms += 1;
    let mut path = c.header_path(&p.genesis_hash).unwrap();
    let (i, _) = c.extend_header_path(&mut path, &bad, n).unwrap_err();
    assert!(i == 5 || i == 6, "{i}");
    // A wrong retarget (bits of the parent kept at a retarget height).
    let mut wrong = headers[1];
    wrong.bits = headers[0].bits;
    assert!(solve(&mut wrong, u64::MAX));
    let mut path = c.header_path(&p.genesis_hash).unwrap();
    let e = c.extend_header_path(&mut path, &[headers[0], wrong], n).unwrap_err();
    assert!(matches!(e, (1, BlockError::BadTarget { .. })), "{e:?}");
    assert!(c.header_path(&Hash([9; 32])).is_none());
}

#[test]
fn blocks_checked_on_a_header_path_are_stored_without_checking_again() {
    let p = params(2);
    let mut src = chain(&p);
    let mut parent = p.genesis_hash;
    for i in 0..6 {
        let b = child_with(&src, &parent, 3 * T, vec![Bytes::from(format!("tx {i}"))]);
        parent = b.hash();
        add(&mut src, b).unwrap();
    }
    let blocks: Vec<Block> =
        (1..=6).map(|h| src.block(&src.height_to_hash(h).unwrap()).unwrap().unwrap()).collect();
    let mut c = chain(&p);
    let n = now(&p);
    let mut path = c.header_path(&p.genesis_hash).unwrap();
    let headers: Vec<Header> = blocks.iter().map(|b| b.header).collect();
    c.extend_header_path(&mut path, &headers, n).unwrap();
    // An altered body fails its body rules; the header is not condemned.
    let mut forged = blocks[2].clone();
    forged.txs.push(Bytes::from_static(b"forged"));
    let e = BodyChecked::check(&p, forged).unwrap_err();
    assert!(matches!(e, BlockError::BadMerkleRoot), "{e}");
    // A block whose header is not on the path is not admitted.
    let other = child_with(&src, &blocks[1].hash(), 7 * T, vec![]);
    assert!(path.admit(BodyChecked::check(&p, other).unwrap()).is_none());
    // Admitted blocks go in, in order, to the same tip and weight.
    for b in &blocks {
        let checked = path.admit(BodyChecked::check(&p, b.clone()).unwrap()).unwrap();
        assert_eq!(checked.hash(), b.hash());
        let r = c.process_checked(checked, None, n).unwrap();
        assert_eq!(r.status, ProcessStatus::MainChain);
    }
    assert_eq!((c.tip(), c.weight()), (src.tip(), src.weight()));
    // A path of another network admits nothing checked for this one.
    let q = params(0);
    let far = chain(&q).header_path(&q.genesis_hash).unwrap();
    assert!(far.admit(BodyChecked::check(&p, blocks[0].clone()).unwrap()).is_none());
}
