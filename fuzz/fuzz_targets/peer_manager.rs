//! The PeerManager (admission, per-IP limits, pending handshakes,
//! reputation and bans, eviction, redials, the extra-outbound rotation)
//! under arbitrary event sequences with an injected clock, its invariants
//! checked after every step: the counted peers within the limits, pending
//! handshakes counted consistently and within their caps, a banned id
//! never admitted, a persistent or unconditional peer never rotated out.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_p2p::switch::{Admission, ConnId, ConnKind, PeerManager, PeerManagerConfig};
use plexus_p2p::{Fault, Misbehavior, NodeId};

#[derive(Arbitrary, Debug)]
enum Op {
    Attempt { ip: u8, v6: bool },
    Finished { index: u8, failure: Option<u8> },
    Admit { id: u8, ip: u8, kind: u8 },
    Disconnect { index: u8 },
    Misbehave { id: u8, kind: u8 },
    Ban { id: u8, secs: u16 },
    Novel { id: u8, block: bool },
    Ping { id: u8, ms: u16 },
    Persistent { id: u8 },
    Redial { id: u8 },
    Tick { ms: u32 },
    SnapshotRestore,
    Rotate,
}

fn id(n: u8) -> NodeId {
    NodeId::from_public_key(&[n, 1])
}

fn ip(n: u8, v6: bool) -> IpAddr {
    // A few netgroups and /64s, loopback among them.
    match (n % 8, v6) {
        (0, _) => IpAddr::from([127, 0, 0, 1]),
        (k, false) => IpAddr::from([1 + k % 3, 2, k, n]),
        (k, true) => IpAddr::from([0x2001, 0xdb8, u16::from(k % 2), 0, 0, 0, 0, u16::from(n)]),
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let cfg = PeerManagerConfig {
        max_inbound: 6,
        max_outbound: 3,
        max_inbound_per_netgroup: 3,
        max_pending_handshakes: 5,
        max_pending_handshakes_per_ip: 2,
        ..PeerManagerConfig::default()
    };
    let local = id(255);
    let mut m = PeerManager::new(cfg.clone(), local, 7);
    let t0 = Instant::now();
    let mut now = t0;
    let mut wall = 1_800_000_000u64;
    let mut tickets: Vec<u64> = Vec::new();
    let mut conns: Vec<(NodeId, ConnId)> = Vec::new();
    for op in ops.iter().take(400) {
        match op {
            Op::Attempt { ip: n, v6 } => {
                if let Ok(t) = m.inbound_attempt(now, ip(*n, *v6)) {
                    tickets.push(t.id);
                    if let Some(d) = t.displaced {
                        tickets.retain(|x| *x != d);
                        m.handshake_finished(now, d, None);
                    }
                }
            }
            Op::Finished { index, failure } => {
                if !tickets.is_empty() {
                    let t = tickets.remove(usize::from(*index) % tickets.len());
                    let fault = failure.map(|f| {
                        [Fault::Peer, Fault::Io, Fault::Local, Fault::Incompatible]
                            [usize::from(f % 4)]
                    });
                    m.handshake_finished(now, t, fault);
                }
            }
            Op::Admit { id: n, ip: i, kind } => {
                let kind = [
                    ConnKind::Inbound,
                    ConnKind::Outbound,
                    ConnKind::Persistent,
                    ConnKind::Feeler,
                    ConnKind::Extra,
                ][usize::from(kind % 5)];
                let banned = m.check_banned(now, &id(*n)).is_err();
                match m.admit(now, id(*n), ip(*i, false), kind) {
                    Admission::Accept(c) => {
                        assert!(!banned, "a banned id was admitted");
                        conns.push((id(*n), c));
                    }
                    Admission::Evict { conn, victim } => {
                        assert!(!banned, "a banned id was admitted");
                        if let Some(p) = conns.iter().position(|(v, _)| *v == victim) {
                            let (v, c) = conns.remove(p);
                            m.disconnected(&v, c);
                        }
                        conns.push((id(*n), conn));
                    }
                    Admission::Replace | Admission::Refuse(_) => {}
                }
            }
            Op::Disconnect { index } => {
                if !conns.is_empty() {
                    let (v, c) = conns.remove(usize::from(*index) % conns.len());
                    m.disconnected(&v, c);
                }
            }
            Op::Misbehave { id: n, kind } => {
                let k = Misbehavior::ALL[usize::from(*kind) % Misbehavior::ALL.len()];
                m.misbehaved(now, id(*n), k);
            }
            Op::Ban { id: n, secs } => m.ban(now, id(*n), Duration::from_secs(u64::from(*secs))),
            Op::Novel { id: n, block } => {
                if *block {
                    m.novel_block(now, &id(*n));
                } else {
                    m.novel_tx(now, &id(*n));
                }
            }
            Op::Ping { id: n, ms } => m.ping(&id(*n), Duration::from_millis(u64::from(*ms))),
            Op::Persistent { id: n } => m.add_persistent(id(*n)),
            Op::Redial { id: n } => {
                let d = m.redial_delay(&id(*n));
                assert!(d <= Duration::from_secs(24 * 3600), "redial delay {d:?}");
            }
            Op::Tick { ms } => {
                now += Duration::from_millis(u64::from(*ms));
                wall += u64::from(*ms) / 1000;
                m.tick(now);
            }
            Op::Rotate => {
                // The switch disconnects whom the rotation names.
                if let Some(v) = m.rotate_outbound(now).and_then(|r| r.leaving()) {
                    assert!(!m.is_protected(&v), "a protected peer was rotated out");
                    if let Some(p) = conns.iter().position(|(x, _)| *x == v) {
                        let (v, c) = conns.remove(p);
                        m.disconnected(&v, c);
                    }
                }
            }
            Op::SnapshotRestore => {
                let snap = m.snapshot(now, wall);
                let mut fresh = PeerManager::new(cfg.clone(), local, 7);
                fresh.restore(now, wall, &snap);
                for r in &snap {
                    let (a, b) = (m.standing(now, &r.id), fresh.standing(now, &r.id));
                    assert!((a.score - b.score).abs() < 1e-3, "a restored score differs");
                    // Bans are saved in whole seconds.
                    if a.banned_for.is_some_and(|d| d >= Duration::from_secs(2)) {
                        assert!(b.banned_for.is_some(), "a restored ban was lost");
                    }
                }
            }
        }
        if let Err(why) = m.check_invariants() {
            panic!("peer manager invariant broken after {op:?}: {why}");
        }
    }
});
