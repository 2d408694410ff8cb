//! Block sync's sans-IO state machine (`SyncRound` with its `BlockPool`)
//! against a serving peer whose answers the input chooses: honest, cut
//! short, mutated, withheld, late or absent, with a second honest peer
//! and arbitrary clock steps; handed-out blocks are imported into our
//! Blockchain (its invariants checked after every step). An answer comes
//! one clock step after its request. Properties: no panic, an honest peer
//! is never reported, and when every answer is honest and comes within
//! the shortest request timeout (every step below
//! `PoolConfig::min_request_timeout`) the round reaches the peer's tip.
//! A slower honest peer may be dropped as slow (that is the timeout's
//! purpose), never reported.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_p2p::NodeId;
use plexus_reactors::blocksync::{Action, RoundConfig, RoundEnd, SyncRound};
use plexus_reactors::chain::{
    bits_from_target, Block, Blockchain, BlockchainConfig, BodyChecked, Genesis, Header,
    NetworkParams, Store, U256,
};
use plexus_reactors::mining::solve;
use plexus_reactors::service::PeerChain;
use tokio::time::Instant;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Answer {
    Honest,
    /// Only the first `n` headers.
    Short(u8),
    /// Header `i` with a field flipped.
    Mutate(u8, u8),
    /// No answer (the round must time it out).
    Silent,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum BlockAnswer {
    Honest,
    NoBlock,
    /// The body changed (a transaction added).
    Altered,
    Silent,
}

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<Answer>,
    blocks: Vec<BlockAnswer>,
    ticks: Vec<u16>,
    /// Drop the second peer at this step.
    drop_second_at: Option<u8>,
}

/// How far the clock moves on a step where nothing happened (ms).
const IDLE_STEP_MS: u64 = 1000;

const NOW_MS: u64 = 1_795_000_000_000 + 10 * 86_400_000;

fn params() -> Arc<NetworkParams> {
    let easy = bits_from_target(U256::MAX >> 1);
    let g = Genesis {
        bits: easy,
        pow_limit_bits: easy,
        retarget_window: 0,
        ..NetworkParams::regtest().genesis
    };
    Arc::new(NetworkParams::from_genesis(g).unwrap())
}

fn mine(c: &mut Blockchain, n: usize, salt: u8) -> Vec<Block> {
    let mut out = Vec::new();
    for i in 0..n {
        let txs = vec![bytes::Bytes::from(vec![salt, i as u8])];
        let now = c.tip_header().timestamp_ms + 1000;
        let mut b = c.template(txs, now);
        assert!(solve(&mut b.header, u64::MAX));
        c.process_block(b.clone(), None, NOW_MS).unwrap();
        out.push(b);
    }
    out
}

struct World {
    params: Arc<NetworkParams>,
    ours: Vec<Block>,
    theirs: Blockchain,
}

thread_local! {
    static WORLD: World = {
        let params = params();
        let open = || Blockchain::open(params.clone(), Store::open_in_memory().unwrap(), BlockchainConfig::default()).unwrap();
        let mut ours = open();
        let ours_blocks = mine(&mut ours, 5, 1);
        let mut theirs = open();
        mine(&mut theirs, 24, 2);
        World { params, ours: ours_blocks, theirs }
    };
}

fn peer(n: u8) -> NodeId {
    NodeId::from_public_key(&[n, 9])
}

fn mutate(h: &mut Header, field: u8) {
    match field % 5 {
        0 => h.version ^= 1,
        1 => h.height ^= 1,
        2 => h.prev_hash.0[0] ^= 1,
        3 => h.timestamp_ms = 0,
        _ => h.bits ^= 0x0100_0000,
    }
}

fuzz_target!(|input: Input| {
    WORLD.with(|w| run(w, &input));
});

fn run(w: &World, input: &Input) {
    let mut ours = Blockchain::open(
        w.params.clone(),
        Store::open_in_memory().unwrap(),
        BlockchainConfig::default(),
    )
    .unwrap();
    for b in &w.ours {
        ours.process_block(b.clone(), None, NOW_MS).unwrap();
    }
    let theirs = &w.theirs;
    let (target, second) = (peer(1), peer(2));
    let claim = PeerChain { height: theirs.height(), weight: theirs.weight(), tip: theirs.tip() };
    let mut table = vec![(target, claim.clone()), (second, claim.clone())];
    let cfg = RoundConfig::small();
    let timely = input
        .ticks
        .iter()
        .all(|t| Duration::from_millis(u64::from(*t)) < cfg.pool.min_request_timeout);
    let mut now = Instant::now();
    let ours_chain = PeerChain { height: ours.height(), weight: ours.weight(), tip: ours.tip() };
    let (mut round, mut todo) =
        SyncRound::start(cfg, target, claim.clone(), &ours_chain, ours.locator(), now);
    let honest = input.headers.iter().all(|a| matches!(a, Answer::Honest))
        && input.blocks.iter().all(|a| matches!(a, BlockAnswer::Honest))
        && input.drop_second_at.is_none();
    let timely_and_honest = honest && timely;
    let mut headers = input.headers.iter().cycle();
    let mut blocks = input.blocks.iter().cycle();
    let mut ticks = input.ticks.iter().cycle();
    let mut end = None;
    for step in 0..3000u32 {
        if input.drop_second_at.map(u32::from) == Some(step) {
            table.retain(|(p, _)| *p != second);
            todo.extend(round.on_peer_removed(&second));
        }
        let mut next = Vec::new();
        // Nothing asked and nothing to import: no request is out (each is
        // answered or dropped at once), so the clock may jump ahead to the
        // next timeout without making an honest run late.
        let mut idle = todo.is_empty();
        for a in todo.drain(..) {
            match a {
                Action::End(e) => end = Some(e),
                Action::RequestHeaders { peer: p, locator, stop, max } => {
                    let mut h = theirs.main_headers_after(&locator, &stop, max as usize);
                    match headers.next().copied().unwrap_or(Answer::Honest) {
                        Answer::Honest => {}
                        Answer::Short(n) => h.truncate(usize::from(n)),
                        Answer::Mutate(i, f) => {
                            if !h.is_empty() {
                                let i = usize::from(i) % h.len();
                                mutate(&mut h[i], f);
                            }
                        }
                        Answer::Silent => continue,
                    }
                    next.extend(round.on_headers(&ours, p, &h, &table, now, NOW_MS));
                }
                Action::RequestBlocks(r) => {
                    let from_second = r.peer == second;
                    for hash in r.hashes {
                        let answer = if from_second {
                            BlockAnswer::Honest
                        } else {
                            blocks.next().copied().unwrap_or(BlockAnswer::Honest)
                        };
                        match answer {
                            BlockAnswer::Silent => {}
                            BlockAnswer::NoBlock => next.extend(round.on_no_block(r.peer, &hash)),
                            BlockAnswer::Honest | BlockAnswer::Altered => {
                                let mut b = theirs
                                    .block(&hash)
                                    .unwrap()
                                    .expect("asked for a block of their chain");
                                if matches!(answer, BlockAnswer::Altered) {
                                    b.txs.push(bytes::Bytes::from_static(b"altered"));
                                }
                                match BodyChecked::check(&w.params, b) {
                                    Ok(b) => {
                                        let _ = round.on_block(r.peer, b);
                                    }
                                    Err(e) => {
                                        let height = theirs.header(&hash).map_or(0, |h| h.height);
                                        next.extend(round.on_invalid_body(r.peer, height, &e));
                                    }
                                }
                            }
                        }
                    }
                }
                Action::Report { peer: p, kind, why } => {
                    assert!(p != second, "the honest second peer was reported: {kind:?} {why}");
                    assert!(!honest, "an honest target was reported: {kind:?} {why}");
                }
                Action::Disconnect { peer: p, .. } => {
                    table.retain(|(x, _)| *x != p);
                    next.extend(round.on_peer_removed(&p));
                }
            }
        }
        if end.is_some() {
            break;
        }
        let ready = round.take_ready(64);
        if !ready.is_empty() {
            idle = false;
            let results: Vec<_> =
                ready.iter().map(|(b, _)| ours.process_checked(b.clone(), None, NOW_MS)).collect();
            next.extend(round.on_applied(ready, &results).2);
            if let Err(why) = ours.check_invariants() {
                panic!("chain invariant broken during sync: {why}");
            }
        }
        let tick = u64::from(ticks.next().copied().unwrap_or(100));
        now += Duration::from_millis(if idle { tick.max(IDLE_STEP_MS) } else { tick });
        next.extend(round.tick(&table, false, now));
        todo = next;
    }
    if timely_and_honest {
        assert_eq!(end, Some(RoundEnd::Reached), "an honest sync did not reach the tip: {input:?}");
        assert_eq!(ours.tip(), theirs.tip());
    }
}
