//! The round without sockets: a peer's chain answers what the round asks
//! (or does not), blocks are imported into our chain, and the actions
//! that come out are checked: fork, liar, mute target, heavier chain
//! mid-round, headers from the future.

use std::time::Duration;

use plexus_p2p::{Misbehavior, NodeId, NodeKey};
use ruint::aliases::U256;
use tokio::time::Instant;

use super::*;
use crate::chain::tests::{chain, extend, params, T};
use crate::chain::{Blockchain, BodyChecked};

fn cfg() -> RoundConfig {
    RoundConfig::small()
}

fn id() -> NodeId {
    NodeKey::generate().node_id()
}

/// Far enough in the future that no test header is too new.
fn late(c: &Blockchain) -> u64 {
    c.params().genesis.timestamp_ms + 1_000_000_000
}

/// Runs `round` against `theirs` served by `peer` until it ends, the
/// importer being `ours`; returns why it ended and every action seen.
fn drive(
    round: &mut SyncRound,
    first: Vec<Action>,
    ours: &mut Blockchain,
    theirs: &Blockchain,
    peer: NodeId,
    mute: bool,
) -> (RoundEnd, Vec<Action>) {
    let table = vec![(peer, PeerChain::of(theirs))];
    let mut now = Instant::now();
    let mut seen = Vec::new();
    let mut todo = first;
    for _ in 0..10_000 {
        let mut next = Vec::new();
        for a in todo.drain(..) {
            seen.push(a.clone());
            match a {
                Action::End(e) => return (e, seen),
                Action::RequestHeaders { locator, stop, max, .. } if !mute => {
                    let h = theirs.main_headers_after(&locator, &stop, max as usize);
                    next.extend(round.on_headers(ours, peer, &h, &table, now, late(ours)));
                }
                Action::RequestBlocks(r) => {
                    for h in r.hashes {
                        let b = theirs.block(&h).unwrap().unwrap();
                        let b = BodyChecked::check(ours.params(), b).unwrap();
                        round.on_block(peer, b).unwrap().unwrap();
                    }
                }
                _ => {}
            }
        }
        let ready = round.take_ready(64);
        if !ready.is_empty() {
            let blocks = ready.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>();
            let results: Vec<_> =
                blocks.into_iter().map(|b| ours.process_checked(b, None, late(ours))).collect();
            next.extend(round.on_applied(ready, &results).2);
        }
        now += Duration::from_millis(100);
        next.extend(round.tick(&table, false, now));
        todo = next;
    }
    panic!("the round never ended");
}

/// A round from `ours` to `claim` of `peer`, and its first request.
fn begin(
    ours: &Blockchain,
    claim: PeerChain,
    peer: NodeId,
    now: Instant,
) -> (SyncRound, Vec<Action>) {
    SyncRound::start(cfg(), peer, claim, &PeerChain::of(ours), ours.locator(), now)
}

/// Two chains from genesis: ours `a` blocks, theirs `b` (heavier).
fn apart(a: usize, b: usize) -> (Blockchain, Blockchain) {
    let p = params(0);
    let (mut ours, mut theirs) = (chain(&p), chain(&p));
    extend(&mut ours, p.genesis_hash, a, T + 7);
    extend(&mut theirs, p.genesis_hash, b, T);
    (ours, theirs)
}

#[test]
fn a_fork_downloads_all_headers_first_then_reaches_the_heavier_tip() {
    let (mut ours, theirs) = apart(10, 30);
    let peer = id();
    let claim = PeerChain::of(&theirs);
    let (mut round, first) = begin(&ours, claim.clone(), peer, Instant::now());
    let (end, seen) = drive(&mut round, first, &mut ours, &theirs, peer, false);
    assert_eq!(end, RoundEnd::Reached);
    assert_eq!(ours.tip(), claim.tip);
    // Off our tip: no block asked for before the last headers request
    // (30 headers: 4, then 8 at a time, then the empty-free end at the tip).
    let last_headers = seen.iter().rposition(|a| matches!(a, Action::RequestHeaders { .. }));
    let first_blocks = seen.iter().position(|a| matches!(a, Action::RequestBlocks(_)));
    assert!(first_blocks.unwrap() > last_headers.unwrap(), "{seen:?}");
    assert!(!seen.iter().any(|a| matches!(a, Action::Report { .. })), "{seen:?}");
}

#[test]
fn a_weight_liar_is_reported_and_the_round_refused() {
    let (mut ours, theirs) = apart(0, 20);
    let peer = id();
    let mut claim = PeerChain::of(&theirs);
    claim.weight *= U256::from(100);
    let (mut round, first) = begin(&ours, claim, peer, Instant::now());
    let (end, seen) = drive(&mut round, first, &mut ours, &theirs, peer, false);
    assert_eq!(end, RoundEnd::Refused);
    assert!(
        seen.iter().any(|a| matches!(a, Action::Report { kind: Misbehavior::WeightLie, .. })),
        "{seen:?}"
    );
    // A claim heavier than ours with no headers at all is a lie too.
    let (empty, _) = apart(0, 0);
    let mut claim = PeerChain::of(&empty);
    claim.weight += U256::from(1);
    let (mut round, _) = begin(&empty, claim, peer, Instant::now());
    let out = round.on_headers(&empty, peer, &[], &[], Instant::now(), 0);
    assert!(matches!(out[0], Action::Report { kind: Misbehavior::WeightLie, .. }), "{out:?}");
    assert_eq!(round.ended(), Some(RoundEnd::Refused));
}

#[test]
fn a_mute_target_is_scored_as_an_unbacked_claim_and_dropped() {
    let (mut ours, theirs) = apart(0, 20);
    let peer = id();
    let (mut round, first) = begin(&ours, PeerChain::of(&theirs), peer, Instant::now());
    let (end, seen) = drive(&mut round, first, &mut ours, &theirs, peer, true);
    assert_eq!(end, RoundEnd::TargetGone);
    assert!(
        seen.iter().any(|a| matches!(a, Action::Report { kind: Misbehavior::UnbackedClaim, .. })),
        "{seen:?}"
    );
    assert!(seen.iter().any(|a| matches!(a, Action::Disconnect { .. })), "{seen:?}");
    assert_eq!(ours.height(), 0);
}

#[test]
fn a_heavier_chain_far_ahead_arriving_mid_round_ends_it() {
    let (ours, theirs) = apart(0, 30);
    let peer = id();
    let now = Instant::now();
    let (mut round, _) = begin(&ours, PeerChain::of(&theirs), peer, now);
    let h = theirs.main_headers_after(&ours.locator(), &theirs.tip(), 4);
    let table = vec![(peer, PeerChain::of(&theirs))];
    let out = round.on_headers(&ours, peer, &h, &table, now, late(&ours));
    assert!(out.iter().any(|a| matches!(a, Action::RequestHeaders { .. })), "{out:?}");
    assert_eq!(round.ended(), None);
    // Another peer now claims a chain off this path, far heavier and more
    // than `resync_distance` blocks above the target.
    let mut other = PeerChain::of(&theirs);
    other.tip = crate::chain::Hash([7; 32]);
    other.height += 100;
    other.weight *= U256::from(10);
    let table = vec![(peer, PeerChain::of(&theirs)), (id(), other)];
    let out = round.tick(&table, false, now + Duration::from_millis(50));
    assert!(out.contains(&Action::End(RoundEnd::HeavierElsewhere)), "{out:?}");
}

#[test]
fn headers_from_the_future_end_the_round_without_blame_until_their_time() {
    let (ours, theirs) = apart(0, 5);
    let peer = id();
    let now = Instant::now();
    let (mut round, _) = begin(&ours, PeerChain::of(&theirs), peer, now);
    let h = theirs.main_headers_after(&ours.locator(), &theirs.tip(), 4);
    // Our clock: an hour before the first header's time less max_future.
    let max_future = ours.params().genesis.max_future_ms;
    let now_ms = h[0].timestamp_ms - max_future - 3_600_000;
    let out = round.on_headers(&ours, peer, &h, &[], now, now_ms);
    assert_eq!(
        out,
        vec![Action::End(RoundEnd::FromFuture { retry_at_ms: now_ms + 3_600_000 })],
        "no report, and a retry once the first header is acceptable"
    );
}

/// Found by the blocksync fuzz target: a peer blamed for an invalid block
/// left the pool but, still listed in the status table until the driver's
/// disconnect lands, joined it again at the next tick and was asked for
/// the same blocks over and over (120,000 reports in one run).
#[test]
fn a_peer_blamed_for_an_invalid_block_is_not_asked_again_this_round() {
    let (mut ours, theirs) = apart(0, 20);
    let (target, liar) = (id(), id());
    let claim = PeerChain::of(&theirs);
    let table = vec![(target, claim.clone()), (liar, claim.clone())];
    let mut now = Instant::now();
    let (mut round, mut todo) = begin(&ours, claim.clone(), target, now);
    let (mut blamed, mut asked_after) = (false, 0);
    let mut end = None;
    for _ in 0..1_000 {
        let mut next = Vec::new();
        for a in todo.drain(..) {
            match a {
                Action::End(e) => end = Some(e),
                Action::RequestHeaders { peer, locator, stop, max } => {
                    let h = theirs.main_headers_after(&locator, &stop, max as usize);
                    next.extend(round.on_headers(&ours, peer, &h, &table, now, late(&ours)));
                }
                Action::RequestBlocks(r) => {
                    if r.peer == liar && blamed {
                        asked_after += 1;
                    }
                    for (hash, height) in r.hashes.iter().zip(&r.heights) {
                        let mut b = theirs.block(hash).unwrap().unwrap();
                        if r.peer == liar {
                            b.txs.push(bytes::Bytes::from_static(b"altered"));
                        }
                        match BodyChecked::check(ours.params(), b) {
                            Ok(b) => drop(round.on_block(r.peer, b)),
                            Err(e) => next.extend(round.on_invalid_body(r.peer, *height, &e)),
                        }
                    }
                }
                Action::Report { peer, kind, .. } => {
                    assert_eq!((peer, kind), (liar, Misbehavior::BadBlock));
                    blamed = true;
                }
                Action::Disconnect { .. } => {}
            }
        }
        if end.is_some() {
            break;
        }
        let ready = round.take_ready(64);
        if !ready.is_empty() {
            let results: Vec<_> = ready
                .iter()
                .map(|(b, _)| ours.process_checked(b.clone(), None, late(&ours)))
                .collect();
            next.extend(round.on_applied(ready, &results).2);
        }
        now += Duration::from_millis(100);
        next.extend(round.tick(&table, false, now));
        todo = next;
    }
    assert!(blamed, "the liar was never asked");
    assert_eq!(asked_after, 0, "the blamed peer was asked again");
    assert_eq!(end, Some(RoundEnd::Reached));
    assert_eq!(ours.tip(), claim.tip);
}
