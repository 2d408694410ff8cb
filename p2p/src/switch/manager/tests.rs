//! PeerManager rules, without sockets: injected time, fixed seeds.

use super::*;

fn id(n: u32) -> NodeId {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&n.to_be_bytes());
    NodeId::from_public_key(&k)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mgr(cfg: PeerManagerConfig) -> PeerManager {
    PeerManager::new(cfg, id(0), 7)
}

fn accept(m: &mut PeerManager, now: Instant, n: u32, addr: &str, kind: ConnKind) -> ConnId {
    match m.admit(now, id(n), ip(addr), kind) {
        Admission::Accept(c) => c,
        other => panic!("peer {n} from {addr}: {other:?}"),
    }
}

#[test]
fn a_ban_hits_the_identity_not_its_ip() {
    let t0 = Instant::now();
    let mut m = mgr(PeerManagerConfig::default());
    let a = accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Inbound);
    let v = m.misbehaved(t0, id(1), Misbehavior::BadBlock);
    assert_eq!(v.ban, Some(Duration::from_secs(600)));
    assert!(v.disconnect);
    m.disconnected(&id(1), a);
    // The identity is refused, on dial and on accept.
    assert!(matches!(
        m.admit(t0, id(1), ip("1.2.3.4"), ConnKind::Inbound),
        Admission::Refuse(RejectReason::Banned(_))
    ));
    assert!(matches!(
        m.check_dial(t0, Some(id(1)), ConnKind::Outbound),
        Err(RejectReason::Banned(_))
    ));
    // The IP is not: a new key from it gets in, before and after the handshake.
    let tk = m.inbound_attempt(t0, ip("1.2.3.4")).unwrap();
    m.handshake_finished(t0, tk.id, None);
    accept(&mut m, t0, 2, "1.2.3.4", ConnKind::Inbound);
    // The ban runs out.
    assert!(m.standing(t0 + Duration::from_secs(601), &id(1)).banned_for.is_none());
}

#[test]
fn scores_add_up_decay_and_survive_reconnects() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig::default();
    let half = cfg.score_half_life;
    let mut m = mgr(cfg);
    let c = accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Inbound);
    let v = m.misbehaved(t0, id(1), Misbehavior::UndeclaredChannel);
    assert_eq!((v.score, v.disconnect, v.ban), (50.0, true, None));
    m.disconnected(&id(1), c);
    // Reconnected: the score is still there.
    accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Inbound);
    assert_eq!(m.standing(t0, &id(1)).score, 50.0);
    // A half-life later it is halved, and a new offence does not ban.
    let t1 = t0 + half;
    assert!((m.standing(t1, &id(1)).score - 25.0).abs() < 1e-6);
    let v = m.misbehaved(t1, id(1), Misbehavior::UndeclaredChannel);
    assert!(v.ban.is_none(), "{v:?}");
    // One more does.
    let v = m.misbehaved(t1, id(1), Misbehavior::UndeclaredChannel);
    assert_eq!(v.ban, Some(Duration::from_secs(10)));
    // A non-disconnecting kind below the threshold keeps the peer.
    let v = m.misbehaved(t0, id(9), Misbehavior::UnbackedClaim);
    assert!(!v.disconnect && v.ban.is_none());
}

#[test]
fn repeat_offenders_get_doubling_bans_up_to_the_cap() {
    let t0 = Instant::now();
    let cfg =
        PeerManagerConfig { ban_max: Duration::from_secs(35), ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    let mut now = t0;
    let mut bans = Vec::new();
    for _ in 0..4 {
        let v = loop {
            let v = m.misbehaved(now, id(1), Misbehavior::MalformedPacket);
            if v.ban.is_some() {
                break v;
            }
        };
        bans.push(v.ban.unwrap().as_secs());
        now += v.ban.unwrap() + Duration::from_secs(1);
    }
    assert_eq!(bans, vec![10, 20, 35, 35]);
    // After the repeat window the tier starts over.
    now += Duration::from_secs(24 * 3600 + 1);
    m.misbehaved(now, id(1), Misbehavior::MalformedPacket);
    let v = m.misbehaved(now, id(1), Misbehavior::MalformedPacket);
    assert_eq!(v.ban, Some(Duration::from_secs(10)));
    // Classes set the first tier: rate limit 300 s, consensus 600 s.
    let v = m.misbehaved(now, id(2), Misbehavior::Flood);
    let v2 = m.misbehaved(now, id(2), Misbehavior::Flood);
    assert_eq!((v.ban, v2.ban), (None, Some(Duration::from_secs(300))));
    assert_eq!(
        m.misbehaved(now, id(3), Misbehavior::WeightLie).ban,
        Some(Duration::from_secs(600))
    );
}

#[test]
fn persistent_and_unconditional_peers_are_never_banned_for_long() {
    let t0 = Instant::now();
    let cfg =
        PeerManagerConfig { unconditional_peer_ids: vec![id(2)], ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    m.add_persistent(id(1));
    for n in [1, 2] {
        for _ in 0..5 {
            let v = m.misbehaved(t0, id(n), Misbehavior::BadBlock);
            assert!(v.score <= 100.0);
            assert!(v.disconnect);
            assert!(v.ban.is_none_or(|b| b <= Duration::from_secs(10)), "{v:?}");
        }
    }
    assert!(m.standing(t0 + Duration::from_secs(11), &id(1)).banned_for.is_none());
}

#[test]
fn reputation_is_bounded_oldest_first() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig { reputation_capacity: 100, ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    for n in 0..100u32 {
        m.misbehaved(
            t0 + Duration::from_millis(u64::from(n)),
            id(n),
            Misbehavior::UnsolicitedMessage,
        );
    }
    let later = t0 + Duration::from_secs(1);
    m.misbehaved(later, id(1000), Misbehavior::UnsolicitedMessage);
    // The oldest tenth went; the newest are kept.
    assert_eq!(m.standing(later, &id(0)).score, 0.0);
    assert!(m.standing(later, &id(99)).score > 0.0);
    assert!(m.standing(later, &id(1000)).score > 0.0);
    assert!(m.reputation.len() <= 100);
}

#[test]
fn snapshot_and_restore_in_wall_clock_terms() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig::default();
    let mut m = mgr(cfg.clone());
    m.misbehaved(t0, id(1), Misbehavior::UndeclaredChannel);
    m.misbehaved(t0, id(2), Misbehavior::BadBlock);
    let saved = m.snapshot(t0, 1_000_000);
    let json = serde_json::to_string(&saved).unwrap();
    let back: Vec<ReputationRecord> = serde_json::from_str(&json).unwrap();
    // Restored 100 s later (wall clock) into a fresh manager.
    let t1 = Instant::now();
    let mut m2 = mgr(cfg);
    m2.restore(t1, 1_000_100, &back);
    assert!((m2.standing(t1, &id(1)).score - 50.0).abs() < 2.0);
    let left = m2.standing(t1, &id(2)).banned_for.unwrap();
    assert!(left <= Duration::from_secs(500) && left >= Duration::from_secs(499), "{left:?}");
    // Garbage in a record is skipped, not trusted.
    let mut bad = back.clone();
    bad.iter_mut().find(|r| r.id == id(1)).unwrap().score = f64::NAN;
    let mut m3 = mgr(PeerManagerConfig::default());
    m3.restore(t1, 1_000_100, &bad);
    assert_eq!(m3.standing(t1, &id(1)).score, 0.0);
}

#[test]
fn limits_by_direction_ip_and_netgroup() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        max_inbound: 3,
        max_outbound: 2,
        max_inbound_per_netgroup: 2,
        max_outbound_per_netgroup: 1,
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    accept(&mut m, t0, 1, "1.2.0.1", ConnKind::Inbound);
    // One per IP.
    assert!(matches!(
        m.admit(t0, id(2), ip("1.2.0.1"), ConnKind::Inbound),
        Admission::Refuse(RejectReason::TooManyFromIp(_))
    ));
    assert!(matches!(m.inbound_attempt(t0, ip("1.2.0.1")), Err(RejectReason::TooManyFromIp(_))));
    // An IPv6 /64 counts as one IP (its holder has 2^64 addresses).
    let c7 = accept(&mut m, t0, 7, "2001:db8:1:2::1", ConnKind::Inbound);
    assert!(matches!(
        m.admit(t0, id(8), ip("2001:db8:1:2::99"), ConnKind::Inbound),
        Admission::Refuse(RejectReason::TooManyFromIp(_))
    ));
    assert!(matches!(
        m.inbound_attempt(t0, ip("2001:db8:1:2:ffff::1")),
        Err(RejectReason::TooManyFromIp(_))
    ));
    m.disconnected(&id(7), c7);
    m.check_invariants().unwrap();
    accept(&mut m, t0, 2, "1.2.0.2", ConnKind::Inbound);
    // Two per /16.
    assert!(matches!(
        m.admit(t0, id(3), ip("1.2.9.9"), ConnKind::Inbound),
        Admission::Refuse(RejectReason::TooManyFromNetgroup(_))
    ));
    // Private ranges and loopback are not limited by netgroup.
    accept(&mut m, t0, 4, "10.0.0.1", ConnKind::Inbound);
    // Outbound: one per netgroup, two in all; persistent and feelers exempt.
    accept(&mut m, t0, 10, "5.6.0.1", ConnKind::Outbound);
    assert!(matches!(
        m.admit(t0, id(11), ip("5.6.0.2"), ConnKind::Outbound),
        Admission::Refuse(RejectReason::TooManyFromNetgroup(_))
    ));
    accept(&mut m, t0, 12, "7.8.0.1", ConnKind::Outbound);
    assert!(matches!(
        m.check_dial(t0, Some(id(13)), ConnKind::Outbound),
        Err(RejectReason::OutboundFull)
    ));
    assert!(matches!(
        m.admit(t0, id(13), ip("9.9.0.1"), ConnKind::Outbound),
        Admission::Refuse(RejectReason::OutboundFull)
    ));
    accept(&mut m, t0, 14, "9.9.0.1", ConnKind::Persistent);
    accept(&mut m, t0, 15, "9.9.0.2", ConnKind::Feeler);
    // Duplicates are refused.
    assert!(matches!(
        m.check_dial(t0, Some(id(10)), ConnKind::Persistent),
        Err(RejectReason::Duplicate(_))
    ));
}

#[test]
fn loopback_is_exempt_from_ip_limits_and_never_cooled_off() {
    let t0 = Instant::now();
    let cfg =
        PeerManagerConfig { preauth_failures: 2, attempt_burst: 3, ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    for _ in 0..50 {
        let tk = m.inbound_attempt(t0, ip("127.0.0.1")).unwrap();
        m.handshake_finished(t0, tk.id, Some(Fault::Peer));
    }
    for n in 1..5 {
        accept(&mut m, t0, n, "127.0.0.1", ConnKind::Inbound);
    }
}

#[test]
fn garbage_handshakes_cool_an_ip_off_briefly() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig { preauth_failures: 3, ..PeerManagerConfig::default() };
    let cool = cfg.ip_cooloff;
    let mut m = mgr(cfg);
    let bad = ip("6.6.6.6");
    for _ in 0..3 {
        let tk = m.inbound_attempt(t0, bad).unwrap();
        m.handshake_finished(t0, tk.id, Some(Fault::Peer));
    }
    assert!(matches!(m.inbound_attempt(t0, bad), Err(RejectReason::CoolingOff(_))));
    // Another IP is unaffected; I/O failures do not count.
    for _ in 0..5 {
        let tk = m.inbound_attempt(t0, ip("6.6.6.7")).unwrap();
        m.handshake_finished(t0, tk.id, Some(Fault::Io));
    }
    // The cool-off is short.
    m.inbound_attempt(t0 + cool, bad).unwrap();
}

#[test]
fn attempts_and_pending_handshakes_are_limited_per_ip_and_in_total() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        max_pending_handshakes: 10,
        max_pending_handshakes_per_ip: 3,
        attempt_burst: 5,
        attempt_rate_per_ip: 1.0,
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    let a = ip("1.1.1.1");
    let ids: Vec<u64> = (0..3).map(|_| m.inbound_attempt(t0, a).unwrap().id).collect();
    assert!(matches!(m.inbound_attempt(t0, a), Err(RejectReason::TooManyHandshakes)));
    for id in ids {
        m.handshake_finished(t0, id, None);
    }
    // 5 tokens: the 4th attempt was refused but spent one; one left.
    let tk = m.inbound_attempt(t0, a).unwrap();
    m.handshake_finished(t0, tk.id, None);
    assert!(matches!(m.inbound_attempt(t0, a), Err(RejectReason::TooManyAttempts(_))));
    // Tokens come back at the rate.
    let tk = m.inbound_attempt(t0 + Duration::from_secs(1), a).unwrap();
    m.handshake_finished(t0, tk.id, None);
    // The total cap across IPs: a newcomer holding fewer than the busiest
    // IP takes the oldest slot of that IP; one holding as many is refused.
    for n in 0..10 {
        m.inbound_attempt(t0, ip(&format!("2.2.2.{n}"))).unwrap();
    }
    assert!(m.inbound_attempt(t0, ip("3.3.3.3")).unwrap().displaced.is_some());
    assert!(matches!(m.inbound_attempt(t0, ip("2.2.2.5")), Err(RejectReason::TooManyHandshakes)));
    assert_eq!(m.pending_handshakes(), 10);
}

#[test]
fn a_full_handshake_table_displaces_the_oldest_of_the_busiest_ip() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        max_pending_handshakes: 10,
        max_pending_handshakes_per_ip: 8,
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    // One attacker IP holds 8 slots, another 2: the table is full.
    let attacker: Vec<u64> =
        (0..8).map(|_| m.inbound_attempt(t0, ip("6.6.6.6")).unwrap().id).collect();
    let other: Vec<u64> =
        (0..2).map(|_| m.inbound_attempt(t0, ip("7.7.7.7")).unwrap().id).collect();
    // An honest newcomer displaces the attacker's oldest.
    let t = m.inbound_attempt(t0, ip("1.2.3.4")).unwrap();
    assert_eq!(t.displaced, Some(attacker[0]));
    assert_eq!(m.pending_handshakes(), 10);
    // The displaced one's end is a no-op; the others still count.
    m.handshake_finished(t0, attacker[0], None);
    assert_eq!(m.pending_handshakes(), 10);
    // The attacker cannot displace anyone lighter than itself.
    assert!(matches!(m.inbound_attempt(t0, ip("6.6.6.6")), Err(RejectReason::TooManyHandshakes)));
    // A second honest IP displaces the attacker again, not 7.7.7.7.
    let t2 = m.inbound_attempt(t0, ip("1.2.3.5")).unwrap();
    assert_eq!(t2.displaced, Some(attacker[1]));
    let _ = other;
}

#[test]
fn simultaneous_dials_keep_the_one_dialed_by_the_lower_id() {
    let t0 = Instant::now();
    // Which side is lower decides: make us the lower of id(0), id(1).
    let (lower, peer) = if id(0) < id(1) { (id(0), 1) } else { (id(1), 0) };
    let mut me = PeerManager::new(PeerManagerConfig::default(), lower, 1);
    // We are lower: our outbound is preferred over their inbound.
    accept(&mut me, t0, peer, "1.2.3.4", ConnKind::Inbound);
    assert!(matches!(
        me.admit(t0, id(peer), ip("1.2.3.5"), ConnKind::Outbound),
        Admission::Replace
    ));
    // And not the other way round.
    let mut me2 = PeerManager::new(PeerManagerConfig::default(), lower, 1);
    accept(&mut me2, t0, peer, "1.2.3.4", ConnKind::Outbound);
    assert!(matches!(
        me2.admit(t0, id(peer), ip("1.2.3.5"), ConnKind::Inbound),
        Admission::Refuse(RejectReason::Duplicate(_))
    ));
}

fn full_inbound(m: &mut PeerManager, t0: Instant, n: u32) {
    // n inbound peers from one netgroup (1.2/16), one per IP, aged 1 s apart.
    for i in 0..n {
        let addr = format!("1.2.{}.{}", i / 200, i % 200 + 1);
        accept(m, t0 + Duration::from_secs(u64::from(i)), 100 + i, &addr, ConnKind::Inbound);
    }
}

#[test]
fn a_full_inbound_evicts_from_the_largest_netgroup_and_protects_relayers() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        max_inbound: 20,
        max_inbound_per_netgroup: 0,
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    full_inbound(&mut m, t0, 20);
    // Older peers have lower pings: the ping rule protects the oldest 8.
    for i in 0..20 {
        m.ping(&id(100 + i), Duration::from_millis(10 + u64::from(i)));
    }
    // Peer 119, the youngest, relayed a novel block just now.
    let now = t0 + Duration::from_secs(100);
    m.novel_block(now, &id(119));
    // An outbound peer is never a candidate.
    accept(&mut m, now, 50, "1.2.99.1", ConnKind::Outbound);
    match m.admit(now, id(1), ip("9.9.9.9"), ConnKind::Inbound) {
        Admission::Evict { victim, .. } => {
            assert_ne!(victim, id(119), "a peer that relayed a novel block is protected");
            assert_ne!(victim, id(50));
            // The youngest unprotected one of the group.
            assert_eq!(victim, id(118));
        }
        other => panic!("{other:?}"),
    }
    // The victim no longer counts; the next newcomer evicts another.
    match m.admit(now, id(2), ip("8.8.8.8"), ConnKind::Inbound) {
        Admission::Evict { victim, .. } => assert_eq!(victim, id(117)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn nothing_evictable_means_refused() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        max_inbound: 4,
        unconditional_peer_ids: (100..104).map(id).collect(),
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    full_inbound(&mut m, t0, 4);
    // Every inbound peer is unconditional, so protected: the newcomer is
    // refused. (Unconditional peers do not count against the limit either,
    // so fill it with ordinary ones whose protections cover them all.)
    let cfg = PeerManagerConfig { max_inbound: 3, ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    for (n, addr) in [(1, "1.1.0.1"), (2, "2.2.0.1"), (3, "3.3.0.1")] {
        accept(&mut m, t0, n, addr, ConnKind::Inbound);
    }
    // Three distinct netgroups: all protected by the netgroup rule.
    assert!(matches!(
        m.admit(t0, id(9), ip("4.4.0.1"), ConnKind::Inbound),
        Admission::Refuse(RejectReason::InboundFull)
    ));
}

#[test]
fn redial_backoff_doubles_with_jitter_and_resets_on_connect() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        redial_initial: Duration::from_secs(1),
        redial_max: Duration::from_secs(5),
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    let d: Vec<Duration> = (0..5).map(|_| m.redial_delay(&id(1))).collect();
    let base = [1, 2, 4, 5, 5];
    for (got, b) in d.iter().zip(base) {
        let b = Duration::from_secs(b);
        assert!(*got >= b && *got <= b.mul_f64(1.25), "{got:?} vs {b:?}");
    }
    accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Persistent);
    assert!(m.redial_delay(&id(1)) <= Duration::from_millis(1250));
    // The same seed gives the same jitter.
    let mut a = mgr(PeerManagerConfig::default());
    let mut b = mgr(PeerManagerConfig::default());
    assert_eq!(a.redial_delay(&id(3)), b.redial_delay(&id(3)));
}

#[test]
fn stale_disconnects_are_ignored() {
    let t0 = Instant::now();
    let mut m = mgr(PeerManagerConfig::default());
    let old = accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Inbound);
    m.disconnected(&id(1), old);
    let new = accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Inbound);
    m.disconnected(&id(1), old);
    assert!(matches!(
        m.check_dial(t0, Some(id(1)), ConnKind::Outbound),
        Err(RejectReason::Duplicate(_))
    ));
    m.disconnected(&id(1), new);
    m.check_dial(t0, Some(id(1)), ConnKind::Outbound).unwrap();
}

#[test]
fn a_preferred_duplicate_replaces_only_if_it_fits_in_the_old_ones_place() {
    let t0 = Instant::now();
    let (lower, peer) = if id(0) < id(1) { (id(0), 1) } else { (id(1), 0) };
    let cfg = PeerManagerConfig { max_outbound_per_netgroup: 1, ..PeerManagerConfig::default() };
    let mut me = PeerManager::new(cfg, lower, 1);
    // Another outbound peer fills the netgroup 5.6/16.
    accept(&mut me, t0, 7, "5.6.0.9", ConnKind::Outbound);
    accept(&mut me, t0, peer, "5.6.0.1", ConnKind::Inbound);
    // Our preferred outbound to the same peer would break the netgroup
    // limit: keep the inbound one instead of losing both.
    assert!(matches!(
        me.admit(t0, id(peer), ip("5.6.0.1"), ConnKind::Outbound),
        Admission::Refuse(RejectReason::TooManyFromNetgroup(_))
    ));
}

#[test]
fn reports_during_a_ban_do_not_pile_up() {
    let t0 = Instant::now();
    let mut m = mgr(PeerManagerConfig::default());
    assert!(m.misbehaved(t0, id(1), Misbehavior::BadBlock).ban.is_some());
    for _ in 0..10 {
        let v = m.misbehaved(t0, id(1), Misbehavior::BadBlock);
        assert!(v.disconnect && v.ban.is_none());
    }
    assert_eq!(m.standing(t0, &id(1)).score, 50.0);
    // After the ban, one small offence does not ban again.
    let after = t0 + Duration::from_secs(601);
    assert!(m.misbehaved(after, id(1), Misbehavior::InvalidTransaction).ban.is_none());
}

#[test]
fn a_repeat_ban_doubles_the_last_one_whatever_its_class() {
    let t0 = Instant::now();
    let mut m = mgr(PeerManagerConfig::default());
    assert_eq!(m.misbehaved(t0, id(1), Misbehavior::BadBlock).ban, Some(Duration::from_secs(600)));
    let after = t0 + Duration::from_secs(601);
    m.misbehaved(after, id(1), Misbehavior::MalformedPacket);
    // 50 + 50: banned again, for twice the last ban, not the 10 s tier.
    assert_eq!(
        m.misbehaved(after, id(1), Misbehavior::MalformedPacket).ban,
        Some(Duration::from_secs(1200))
    );
}

#[test]
fn restoring_absurd_records_neither_panics_nor_trusts_them() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig::default();
    let r = ReputationRecord {
        id: id(1),
        score: 10.0,
        ban_left_s: u64::MAX,
        bans: u32::MAX,
        since_ban_s: Some(u64::MAX),
        last_ban_s: u64::MAX,
        saved_at: 0,
    };
    let mut m = mgr(cfg.clone());
    m.restore(t0, u64::MAX, std::slice::from_ref(&r));
    m.restore(t0, 0, &[ReputationRecord { saved_at: u64::MAX, ..r.clone() }]);
    let left = m.standing(t0, &id(1)).banned_for.unwrap();
    assert!(left <= cfg.ban_max, "{left:?}");
    let v = m.misbehaved(t0 + cfg.ban_max, id(1), Misbehavior::BadBlock);
    assert!(v.ban.unwrap() <= cfg.ban_max);
}

#[test]
fn ipv6_is_limited_per_64_and_mapped_loopback_is_loopback() {
    let t0 = Instant::now();
    let cfg =
        PeerManagerConfig { max_pending_handshakes_per_ip: 2, ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    m.inbound_attempt(t0, ip("2001:db8:1:2::1")).unwrap();
    m.inbound_attempt(t0, ip("2001:db8:1:2::2")).unwrap();
    // A third address in the same /64 shares its pending limit.
    assert!(matches!(
        m.inbound_attempt(t0, ip("2001:db8:1:2:ffff::3")),
        Err(RejectReason::TooManyHandshakes)
    ));
    m.inbound_attempt(t0, ip("2001:db8:1:3::1")).unwrap();
    // IPv4-mapped loopback is exempt like 127.0.0.1.
    for _ in 0..5 {
        m.inbound_attempt(t0, ip("::ffff:127.0.0.1")).unwrap();
    }
}

#[test]
fn exempt_peers_take_no_regular_slot() {
    let t0 = Instant::now();
    let cfg = PeerManagerConfig {
        max_outbound: 1,
        max_inbound: 1,
        unconditional_peer_ids: vec![id(9)],
        ..PeerManagerConfig::default()
    };
    let mut m = mgr(cfg);
    accept(&mut m, t0, 1, "1.1.0.1", ConnKind::Persistent);
    accept(&mut m, t0, 2, "2.2.0.1", ConnKind::Feeler);
    accept(&mut m, t0, 9, "9.9.0.1", ConnKind::Inbound);
    // The regular slots are still free.
    accept(&mut m, t0, 3, "3.3.0.1", ConnKind::Outbound);
    accept(&mut m, t0, 4, "4.4.0.1", ConnKind::Inbound);
}

#[test]
fn a_persistent_peer_connecting_inbound_resets_its_redial_backoff() {
    let t0 = Instant::now();
    let mut m = mgr(PeerManagerConfig::default());
    m.add_persistent(id(1));
    for _ in 0..6 {
        m.redial_delay(&id(1));
    }
    accept(&mut m, t0, 1, "1.2.3.4", ConnKind::Inbound);
    assert!(m.redial_delay(&id(1)) <= Duration::from_millis(1250));
}

/// Found by fuzz/peer_manager: the manager admitted our own id.
#[test]
fn our_own_id_is_never_admitted() {
    let t0 = Instant::now();
    let mut m = mgr(PeerManagerConfig::default());
    for kind in [
        ConnKind::Inbound,
        ConnKind::Outbound,
        ConnKind::Persistent,
        ConnKind::Feeler,
        ConnKind::Extra,
    ] {
        assert!(matches!(
            m.admit(t0, id(0), ip("1.2.3.4"), kind),
            Admission::Refuse(RejectReason::SelfConnection)
        ));
    }
    m.check_invariants().unwrap();
}

/// Full outbound slots plus one extra connection, all in distinct /16s:
/// peers 1..=3 outbound, connected at `t0`, peer 9 extra, at `t0` + 1 s.
fn full_with_extra(t0: Instant) -> PeerManager {
    let cfg = PeerManagerConfig { max_outbound: 3, ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    for n in 1..=3 {
        accept(&mut m, t0, n, &format!("{n}.{n}.0.1"), ConnKind::Outbound);
    }
    let t1 = t0 + Duration::from_secs(1);
    assert!(matches!(
        m.check_dial(t1, Some(id(4)), ConnKind::Outbound),
        Err(RejectReason::OutboundFull)
    ));
    // Full outbound does not stop the extra one ...
    accept(&mut m, t1, 9, "9.9.0.1", ConnKind::Extra);
    // ... but only one at a time.
    assert!(matches!(
        m.check_dial(t1, Some(id(8)), ConnKind::Extra),
        Err(RejectReason::OutboundFull)
    ));
    assert!(matches!(
        m.admit(t1, id(8), ip("8.8.0.1"), ConnKind::Extra),
        Admission::Refuse(RejectReason::OutboundFull)
    ));
    m.check_invariants().unwrap();
    m
}

/// Bitcoin Core's extra-peer rotation: an extra outbound peer that relays
/// a block more recently than some outbound peer takes that peer's slot
/// (the partition-healing rule the simulation needed).
#[test]
fn an_extra_peer_that_relays_blocks_replaces_the_stalest_outbound_peer() {
    let t0 = Instant::now();
    let mut m = full_with_extra(t0);
    let s = |n: u64| t0 + Duration::from_secs(n);
    m.novel_block(s(5), &id(1));
    m.novel_block(s(6), &id(2));
    m.novel_block(s(7), &id(3));
    m.novel_block(s(10), &id(9));
    // Too young to judge (30 s from its start at 1 s).
    assert_eq!(m.rotate_outbound(s(30)), None);
    // Peer 1 relayed least recently: the extra takes its slot.
    assert_eq!(m.rotate_outbound(s(31)), Some(Rotation::Keep { id: id(9), evict: Some(id(1)) }));
    m.check_invariants().unwrap();
    // Nothing more to decide; the extra counts as outbound now.
    assert_eq!(m.rotate_outbound(s(40)), None);
    m.disconnected(&id(1), ConnId(1));
    assert!(matches!(
        m.check_dial(s(40), Some(id(4)), ConnKind::Outbound),
        Err(RejectReason::OutboundFull)
    ));
    // And a new extra may come.
    accept(&mut m, s(41), 8, "8.8.0.1", ConnKind::Extra);
}

#[test]
fn an_extra_peer_that_relays_nothing_new_is_closed() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    // Nobody relayed anything: the tie goes against the youngest, the extra.
    let mut m = full_with_extra(t0);
    assert_eq!(m.rotate_outbound(s(31)), Some(Rotation::Close(id(9))));
    // Every outbound peer relayed after the extra did: it goes.
    let mut m = full_with_extra(t0);
    m.novel_block(s(3), &id(9));
    for n in 1..=3 {
        m.novel_block(s(4), &id(n));
    }
    assert_eq!(m.rotate_outbound(s(31)), Some(Rotation::Close(id(9))));
    // Being closed, it is not judged twice, and frees the extra slot.
    assert_eq!(m.rotate_outbound(s(32)), None);
    accept(&mut m, s(33), 8, "8.8.0.1", ConnKind::Extra);
    m.check_invariants().unwrap();
}

#[test]
fn persistent_peers_are_never_rotated_out_and_a_free_slot_keeps_the_extra() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    let cfg = PeerManagerConfig { max_outbound: 2, ..PeerManagerConfig::default() };
    let mut m = mgr(cfg);
    accept(&mut m, t0, 1, "1.1.0.1", ConnKind::Persistent);
    accept(&mut m, t0, 2, "2.2.0.1", ConnKind::Outbound);
    accept(&mut m, s(1), 9, "9.9.0.1", ConnKind::Extra);
    // One outbound slot is free: kept, nobody leaves.
    assert_eq!(m.rotate_outbound(s(31)), Some(Rotation::Keep { id: id(9), evict: None }));
    accept(&mut m, s(32), 8, "8.8.0.1", ConnKind::Extra);
    m.novel_block(s(40), &id(8));
    // Full now (2 and 9); the persistent peer 1, which never relayed a
    // block, is no candidate. Peers 2 and 9 never relayed either: the
    // younger, 9, goes.
    assert_eq!(m.rotate_outbound(s(62)), Some(Rotation::Keep { id: id(8), evict: Some(id(9)) }));
    m.check_invariants().unwrap();
}
