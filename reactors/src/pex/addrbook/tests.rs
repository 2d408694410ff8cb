//! AddrBook tests: unit, property (proptest) and the eclipse figure.

use super::*;
use plexus_p2p::NodeKey;
use proptest::prelude::{prop_assert, prop_assert_eq, proptest, ProptestConfig};
use rand::SeedableRng;

const NOW: u64 = 1_800_000_000;

fn rng(seed: u64) -> Box<dyn RngCore + Send> {
    Box::new(rand::rngs::StdRng::seed_from_u64(seed))
}

fn small() -> AddrBookConfig {
    AddrBookConfig {
        new_buckets: 64,
        tried_buckets: 16,
        bucket_size: 8,
        ..AddrBookConfig::default()
    }
}

fn id(n: u64) -> NodeId {
    NodeId::from_public_key(&n.to_be_bytes())
}

fn na(n: u64, ip: [u8; 4]) -> NetAddress {
    NetAddress::new(id(n), SocketAddr::from((ip, 26656)))
}

fn src(ip: [u8; 4]) -> IpAddr {
    IpAddr::from(ip)
}

#[test]
fn groups() {
    assert_eq!(group("1.2.3.4".parse().unwrap()), group("1.2.99.99".parse().unwrap()));
    assert_ne!(group("1.2.3.4".parse().unwrap()), group("1.3.3.4".parse().unwrap()));
    assert_eq!(group("127.0.0.1".parse().unwrap()), group("127.9.9.9".parse().unwrap()));
    assert_eq!(group("10.1.1.1".parse().unwrap()), group("10.200.0.1".parse().unwrap()));
    assert_ne!(group("10.1.1.1".parse().unwrap()), group("192.168.1.1".parse().unwrap()));
    assert_eq!(group("2001:db8:1::1".parse().unwrap()), group("2001:db8:ffff::9".parse().unwrap()));
    assert_eq!(group("::ffff:1.2.3.4".parse().unwrap()), group("1.2.3.4".parse().unwrap()));
}

#[test]
fn strict_refuses_local_and_lenient_accepts() {
    let mut strict = AddrBook::new(AddrBookConfig::default(), rng(1));
    let err = strict.add(&na(1, [127, 0, 0, 1]), src([1, 1, 1, 1]), NOW, 1, NOW).unwrap_err();
    assert!(matches!(err, AddrBookError::NotRoutable(_)));
    assert!(strict.add(&na(1, [192, 168, 0, 1]), src([1, 1, 1, 1]), NOW, 1, NOW).is_err());
    assert!(strict.add(&na(1, [8, 8, 8, 8]), src([1, 1, 1, 1]), NOW, 1, NOW).unwrap());
    let mut devnet =
        AddrBook::new(AddrBookConfig { strict: false, ..AddrBookConfig::default() }, rng(1));
    assert!(devnet.add(&na(1, [127, 0, 0, 1]), src([127, 0, 0, 1]), NOW, 1, NOW).unwrap());
    let dns: NetAddress = format!("{}@seed.example:1", id(3)).parse().unwrap();
    assert!(matches!(
        devnet.add(&dns, src([1, 1, 1, 1]), NOW, 1, NOW),
        Err(AddrBookError::NotIp(_))
    ));
}

#[test]
fn terrible_and_chance_follow_addrman() {
    let mut e = KnownAddress {
        id: id(1),
        addr: "8.8.8.8:1".parse().unwrap(),
        source: src([1, 1, 1, 1]),
        first_seen: NOW,
        last_seen: NOW,
        last_attempt: 0,
        last_success: 0,
        attempts: 0,
        node_type: 1,
        banned_until: 0,
        new_refs: 1,
        in_tried: false,
    };
    assert!(!e.is_terrible(NOW));
    assert!(e.is_terrible(NOW + 31 * DAY), "not seen for 30 days");
    e.last_seen = NOW + 700;
    assert!(e.is_terrible(NOW), "from the future");
    e.last_seen = NOW;
    e.attempts = 3;
    e.last_attempt = NOW - 3600;
    assert!(e.is_terrible(NOW), "3 failures, never a success");
    e.last_success = NOW - 8 * DAY;
    e.attempts = 10;
    assert!(e.is_terrible(NOW), "10 failures, no success in 7 days");
    e.last_attempt = NOW - 30;
    assert!(!e.is_terrible(NOW), "tried in the last minute");
    e.attempts = 2;
    e.last_attempt = NOW - 60;
    let c = e.chance(NOW);
    assert!((c - 0.01 * 0.66 * 0.66).abs() < 1e-9, "{c}");
    e.attempts = 20;
    e.last_attempt = NOW - 3600;
    assert!((e.chance(NOW) - 0.66f64.powi(8)).abs() < 1e-9);
}

#[test]
fn good_moves_to_tried_and_select_finds_both_tables() {
    let mut b = AddrBook::new(small(), rng(2));
    for n in 0..20 {
        b.add(&na(n, [8, n as u8, 1, 1]), src([9, 9, 9, 9]), NOW, 1, NOW).unwrap();
    }
    let count = b.len();
    assert!(count > 10);
    assert_eq!(b.mark_good(&id(0), NOW), Good::Tried);
    assert!(b.get(&id(0)).unwrap().in_tried);
    assert_eq!(b.tried_count(), 1);
    assert_eq!(b.len(), count);
    assert!(b.select(1.0, NOW).is_some());
    assert!(b.select(0.0, NOW).is_some());
    assert_eq!(b.select(1.0, NOW).unwrap().id, id(0));
}

#[test]
fn selection_size_and_exclusions() {
    let mut b =
        AddrBook::new(AddrBookConfig { strict: false, ..AddrBookConfig::default() }, rng(3));
    for n in 0..1000u64 {
        let ip = [11, (n % 250) as u8, (n / 250) as u8, 1];
        b.add(&na(n, ip), src([12, (n % 200) as u8, 0, 1]), NOW, 1, NOW).unwrap();
    }
    let total = b.len();
    let sel = b.get_selection(&[], NOW);
    assert_eq!(sel.len(), (total * 23 / 100).clamp(32, 250));
    let private: Vec<NodeId> = sel.iter().take(5).map(|a| a.id).collect();
    for a in &sel[..5] {
        b.ban(&a.id, NOW + 100);
    }
    let again = b.get_selection(&private, NOW);
    assert!(again.iter().all(|a| !private.contains(&a.id)));
}

/// A book with one tried bucket of one slot (every good peer collides)
/// and two addresses in new.
fn one_tried_slot() -> (AddrBook, NetAddress, NetAddress) {
    let cfg = AddrBookConfig {
        new_buckets: 8,
        tried_buckets: 1,
        bucket_size: 1,
        strict: false,
        ..AddrBookConfig::default()
    };
    let mut b = AddrBook::new(cfg, rng(4));
    let (a1, a2) = (na(1, [8, 1, 0, 1]), na(2, [8, 2, 0, 1]));
    b.add(&a1, src([1, 0, 0, 1]), NOW, 1, NOW).unwrap();
    b.add(&a2, src([2, 0, 0, 1]), NOW, 1, NOW).unwrap();
    (b, a1, a2)
}

#[test]
fn test_before_evict() {
    let (mut b, a1, a2) = one_tried_slot();
    assert_eq!(b.mark_good(&a1.id, NOW), Good::Tried);
    assert_eq!(b.mark_good(&a2.id, NOW + 10), Good::Collision { incumbent: a1.id });
    assert_eq!(b.collision_to_test().unwrap().id, a1.id);
    // The incumbent answers the feeler: it stays, the newcomer waits in new.
    b.mark_good(&a1.id, NOW + 20);
    b.resolve_collisions(NOW + 20);
    assert!(b.get(&a1.id).unwrap().in_tried);
    assert!(!b.get(&a2.id).unwrap().in_tried);
    assert!(b.collision_to_test().is_none());
    // Next time the incumbent fails its feeler: it is replaced.
    assert_eq!(b.mark_good(&a2.id, NOW + 100), Good::Collision { incumbent: a1.id });
    b.mark_attempt(&a1.id, NOW + 110);
    b.resolve_collisions(NOW + 110);
    assert!(b.get(&a2.id).unwrap().in_tried);
    assert!(!b.get(&a1.id).map(|e| e.in_tried).unwrap_or(false));
}

#[test]
fn unresolved_collision_goes_to_the_newcomer_after_40_min() {
    let (mut b, a1, a2) = one_tried_slot();
    b.mark_good(&a1.id, NOW);
    b.mark_good(&a2.id, NOW);
    b.resolve_collisions(NOW + 2399);
    assert!(!b.get(&a2.id).unwrap().in_tried);
    b.resolve_collisions(NOW + 2400);
    assert!(b.get(&a2.id).unwrap().in_tried);
}

#[test]
fn save_load_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("addrbook.json");
    let mut b = AddrBook::new(AddrBookConfig::default(), rng(6));
    for n in 0..200 {
        b.add(&na(n, [8, (n % 200) as u8, 2, 2]), src([3, (n % 50) as u8, 0, 1]), NOW, 1, NOW)
            .unwrap();
    }
    let first = b.get_selection(&[], NOW)[0].id;
    b.mark_good(&first, NOW);
    b.save(&path).unwrap();
    let back = AddrBook::load(AddrBookConfig::default(), &path, rng(7));
    assert_eq!(back.to_json(), b.to_json());
    std::fs::write(&path, &b.to_json()[..100]).unwrap();
    let empty = AddrBook::load(AddrBookConfig::default(), &path, rng(8));
    assert!(empty.is_empty());
    assert!(dir.path().join("addrbook.json.corrupt").exists());
    let missing = AddrBook::load(AddrBookConfig::default(), &dir.path().join("nope.json"), rng(9));
    assert!(missing.is_empty());
}

/// The eclipse figure: one attacker source group (/16) pushes 10,000
/// addresses from many groups. It can reach at most 64 of the 1024 new
/// buckets, and no tried entry moves without a failed feeler.
#[test]
fn eclipse_attacker_is_confined_to_64_new_buckets() {
    let mut b = AddrBook::new(AddrBookConfig::default(), rng(10));
    // Honest peers first, from many sources, some of them tried.
    for n in 0..2000u64 {
        let a = na(n, [20 + (n % 100) as u8, (n / 100) as u8, 1, 1]);
        b.add(&a, src([30 + (n % 150) as u8, (n % 7) as u8, 0, 1]), NOW, 1, NOW).unwrap();
    }
    let mut tried = Vec::new();
    for n in (0..2000u64).step_by(10) {
        if b.mark_good(&id(n), NOW) == Good::Tried {
            tried.push(id(n));
        }
    }
    b.resolve_collisions(NOW); // collisions wait; no feeler failed
    let tried_before: Vec<NodeId> =
        tried.iter().copied().filter(|t| b.get(t).is_some_and(|e| e.in_tried)).collect();
    // The attacker: 10,000 addresses, all heard from 66.66.x.x.
    let mut attacker_buckets = std::collections::HashSet::new();
    for n in 0..10_000u64 {
        let sock = SocketAddr::from(([100 + (n % 100) as u8, (n / 100) as u8, 7, 7], 26656));
        let a = NetAddress::new(NodeKey::generate().node_id(), sock);
        let source = src([66, 66, (n % 256) as u8, 1]);
        attacker_buckets.insert(b.new_bucket(&sock, source));
        let _ = b.add(&a, source, NOW, 1, NOW);
    }
    // And the buckets the attacker's entries actually occupy.
    let occupied = b
        .new
        .iter()
        .enumerate()
        .filter(|(_, bucket)| {
            bucket
                .iter()
                .flatten()
                .any(|id| b.get(id).is_some_and(|e| e.source.to_string().starts_with("66.66.")))
        })
        .count();
    assert!(occupied <= 64, "{occupied}");
    let share = attacker_buckets.len() as f64 / 1024.0;
    println!(
        "eclipse: attacker new buckets {} of 1024 ({:.1}%)",
        attacker_buckets.len(),
        share * 100.0
    );
    assert!(attacker_buckets.len() <= 64, "{}", attacker_buckets.len());
    // Time passes (less than the 40 min collision timeout) and collisions
    // are settled: without a failed feeler, no tried entry moves.
    b.resolve_collisions(NOW + 1200);
    for t in &tried_before {
        assert!(b.get(t).is_some_and(|e| e.in_tried), "a tried entry was displaced");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Capacity, table exclusivity, selection hygiene and save/load.
    #[test]
    fn book_invariants(ops in proptest::collection::vec((0u8..5, 0u64..300, 0u8..40, 0u8..40), 1..400)) {
        let mut b = AddrBook::new(AddrBookConfig { strict: false, ..small() }, rng(11));
        let mut now = NOW;
        for (op, n, x, y) in ops {
            now += 7;
            let a = na(n, [9, x, y, 1]);
            match op {
                0 | 1 => { let _ = b.add(&a, src([5, y, x, 1]), now, 1, now); }
                2 => { b.mark_attempt(&a.id, now); }
                3 => { b.mark_good(&a.id, now); b.resolve_collisions(now); }
                _ => { b.ban(&a.id, now + 50); }
            }
            if let Err(why) = b.check_invariants() {
                prop_assert!(false, "{}", why);
            }
        }
        let private: Vec<NodeId> = (0..300).step_by(3).map(id).collect();
        for a in b.get_selection(&private, now) {
            let e = b.get(&a.id).unwrap();
            prop_assert!(!e.is_terrible(now) && !e.is_banned(now) && !private.contains(&a.id));
        }
        let again = AddrBook::from_json(AddrBookConfig { strict: false, ..small() }, &b.to_json(), rng(12)).unwrap();
        prop_assert_eq!(again.to_json(), b.to_json());
    }
}

#[test]
fn select_reaches_every_tried_entry() {
    let mut b = AddrBook::new(AddrBookConfig::default(), rng(13));
    for n in 0..4u64 {
        let a = na(n, [31, n as u8 + 1, 0, 1]);
        b.add(&a, src([31, 1, 0, 1]), NOW, 1, NOW).unwrap();
        b.mark_attempt(&a.id, NOW);
        assert_eq!(b.mark_good(&a.id, NOW), Good::Tried);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        if let Some(a) = b.select(0.5, NOW + 100) {
            seen.insert(a.id);
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn reputations_are_saved_with_the_book() {
    use plexus_p2p::switch::ReputationRecord;
    let mut b = AddrBook::new(AddrBookConfig::default(), rng(1));
    b.add(&na(1, [1, 2, 3, 4]), src([5, 6, 7, 8]), NOW, 1, NOW).unwrap();
    let rec = ReputationRecord {
        id: na(9, [9, 9, 9, 9]).id,
        score: 50.0,
        ban_left_s: 7,
        bans: 1,
        since_ban_s: None,
        last_ban_s: 7,
        saved_at: NOW,
    };
    b.set_reputation(vec![rec.clone()]);
    let back = AddrBook::from_json(AddrBookConfig::default(), &b.to_json(), rng(2)).unwrap();
    assert_eq!(back.reputation(), &[rec]);
    assert_eq!(back.len(), 1);
    // A file from before reputations were saved still loads.
    let mut old: serde_json::Value = serde_json::from_str(&b.to_json()).unwrap();
    old.as_object_mut().unwrap().remove("reputation");
    let back = AddrBook::from_json(AddrBookConfig::default(), &old.to_string(), rng(3)).unwrap();
    assert!(back.reputation().is_empty());
}

#[test]
fn addresses_are_canonical_and_set_addr_keeps_the_rules_of_add() {
    let mut book = AddrBook::new(AddrBookConfig::default(), rng(1));
    // An IPv4 peer seen through a dual-stack listener is stored as IPv4.
    let mapped = NetAddress::new(id(1), "[::ffff:8.8.8.8]:26656".parse().unwrap());
    assert!(book.add(&mapped, "::ffff:1.1.1.1".parse().unwrap(), NOW, 1, NOW).unwrap());
    let e = book.get(&id(1)).unwrap();
    assert_eq!(e.addr, "8.8.8.8:26656".parse().unwrap());
    assert_eq!(e.source, src([1, 1, 1, 1]));
    // A reconnect that advertises port 0 (dial-only) or a private address
    // does not move a known, dialable entry.
    let err = book.set_addr(&id(1), "9.9.9.9:0".parse().unwrap()).unwrap_err();
    assert!(matches!(err, AddrBookError::NoPort(_)));
    assert!(book.set_addr(&id(1), "192.168.1.5:26656".parse().unwrap()).is_err());
    assert_eq!(book.get(&id(1)).unwrap().addr, "8.8.8.8:26656".parse().unwrap());
    // A routable move is recorded, canonical.
    book.set_addr(&id(1), "[::ffff:9.9.9.9]:26657".parse().unwrap()).unwrap();
    assert_eq!(book.get(&id(1)).unwrap().addr, "9.9.9.9:26657".parse().unwrap());
}
