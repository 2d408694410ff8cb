//! The address book (Bitcoin Core's addrman) under arbitrary operation
//! sequences, PEX messages among them, with its invariants checked after
//! every step and a save/load round trip at the end; and arbitrary saved
//! books loaded.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_p2p::{NetAddress, NodeId};
use plexus_reactors::pex::{AddrBook, AddrBookConfig};
use prost::Message;
use rand::SeedableRng;

#[derive(Arbitrary, Debug)]
enum Op {
    Add {
        id: u8,
        ip: [u8; 4],
        port: u16,
        source: [u8; 4],
        seen_back: u16,
    },
    Add6 {
        id: u8,
        ip: [u16; 8],
        port: u16,
    },
    Good {
        id: u8,
    },
    Attempt {
        id: u8,
    },
    Ban {
        id: u8,
        secs: u16,
    },
    SetAddr {
        id: u8,
        ip: [u8; 4],
        port: u16,
    },
    Select {
        bias: u8,
    },
    Selection {
        private: Vec<u8>,
    },
    Resolve,
    /// A PEX message as received: decoded, each address added.
    Pex {
        bytes: Vec<u8>,
        source: [u8; 4],
    },
    Tick {
        secs: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    strict: bool,
    seed: u64,
    ops: Vec<Op>,
    saved: Vec<u8>,
}

fn id(n: u8) -> NodeId {
    NodeId::from_public_key(&[n])
}

fn config(strict: bool) -> AddrBookConfig {
    // Small tables, so collisions and evictions happen within a few ops.
    AddrBookConfig {
        strict,
        new_buckets: 8,
        tried_buckets: 4,
        bucket_size: 4,
        ..AddrBookConfig::default()
    }
}

fuzz_target!(|input: Input| {
    let rng = || Box::new(rand::rngs::StdRng::seed_from_u64(input.seed));
    let mut book = AddrBook::new(config(input.strict), rng());
    let mut now: u64 = 1_800_000_000;
    for op in input.ops.iter().take(500) {
        match op {
            Op::Add { id: n, ip, port, source, seen_back } => {
                let a = NetAddress::new(id(*n), SocketAddr::new(IpAddr::from(*ip), *port));
                let _ = book.add(&a, IpAddr::from(*source), now - u64::from(*seen_back), 1, now);
            }
            Op::Add6 { id: n, ip, port } => {
                let a = NetAddress::new(id(*n), SocketAddr::new(IpAddr::from(*ip), *port));
                let _ = book.add(&a, IpAddr::from([1, 2, 3, 4]), now, 1, now);
            }
            Op::Good { id: n } => {
                book.mark_good(&id(*n), now);
            }
            Op::Attempt { id: n } => book.mark_attempt(&id(*n), now),
            Op::Ban { id: n, secs } => book.ban(&id(*n), now + u64::from(*secs)),
            Op::SetAddr { id: n, ip, port } => {
                let _ = book.set_addr(&id(*n), SocketAddr::new(IpAddr::from(*ip), *port));
            }
            Op::Select { bias } => {
                if let Some(a) = book.select(f64::from(*bias) / 255.0, now) {
                    assert!(book.get(&a.id).is_some(), "selected an unknown id");
                }
            }
            Op::Selection { private } => {
                let private: Vec<NodeId> = private.iter().map(|n| id(*n)).collect();
                for a in book.get_selection(&private, now) {
                    assert!(!private.contains(&a.id), "a private id was passed on");
                }
            }
            Op::Resolve => book.resolve_collisions(now),
            Op::Pex { bytes, source } => {
                if let Ok(m) = plexus_proto::pex::Message::decode(&bytes[..]) {
                    if let Some(plexus_proto::pex::message::Sum::PexAddrs(list)) = m.sum {
                        for a in list.addrs.iter().take(250) {
                            let (Ok(i), Ok(ip)) = (a.id.parse::<NodeId>(), a.ip.parse::<IpAddr>())
                            else {
                                continue;
                            };
                            let Ok(port) = u16::try_from(a.port) else { continue };
                            let na = NetAddress::new(i, SocketAddr::new(ip, port));
                            let _ = book.add(&na, IpAddr::from(*source), now, 1, now);
                        }
                    }
                }
            }
            Op::Tick { secs } => now += u64::from(*secs),
        }
        if let Err(why) = book.check_invariants() {
            panic!("addrman invariant broken after {op:?}: {why}");
        }
    }
    let json = book.to_json();
    let again = AddrBook::from_json(config(input.strict), &json, rng()).expect("own save loads");
    again.check_invariants().expect("a loaded book keeps the invariants");
    assert_eq!(again.to_json(), json, "save/load round trip");
    // Arbitrary saved books: refused or loaded whole, never broken.
    if let Ok(text) = std::str::from_utf8(&input.saved) {
        if let Ok(b) = AddrBook::from_json(config(input.strict), text, rng()) {
            b.check_invariants().expect("a loaded book keeps the invariants");
        }
    }
});
