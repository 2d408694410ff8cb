//! The chain conformance vectors of docs/vectors/ (§8.1 header hash, §8.2
//! merkle roots, §8.3 compact bits and retarget, §8.5 genesis and network
//! id, §8.6 locator): the Rust code gives what the spec's second
//! implementation (docs/vectors/generate.py) wrote.

#[path = "../../p2p/tests/common/vectors.rs"]
mod vectors;

use bytes::Bytes;
use plexus_reactors::chain::{
    bits_from_target, locator_heights, merkle_root, retarget, target_from_bits, Genesis, Hash,
    Header, NetworkParams, U256,
};
use serde_json::Value;
use vectors::{bytes, load, name, s, u};

fn hash(v: &Value, key: &str) -> Hash {
    Hash::from_slice(&bytes(v, key)).unwrap()
}

fn target(v: &Value) -> Option<U256> {
    v["target"].as_str().map(|t| U256::from_str_radix(t, 16).unwrap())
}

#[test]
fn header_bytes_and_hashes() {
    for v in load("header.json") {
        let h = &v["header"];
        let header = Header {
            version: u(h, "version") as u32,
            height: u(h, "height"),
            prev_hash: hash(h, "prev_hash"),
            merkle_root: hash(h, "merkle_root"),
            timestamp_ms: u(h, "timestamp_ms"),
            bits: u(h, "bits") as u32,
            nonce: u(h, "nonce"),
        };
        assert_eq!(header.to_bytes().to_vec(), bytes(&v, "bytes"), "{}", name(&v));
        assert_eq!(header.hash().to_string(), s(&v, "hash"), "{}", name(&v));
    }
}

#[test]
fn merkle_roots() {
    for v in load("merkle.json") {
        let txs: Vec<Bytes> = v["txs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Bytes::from(hex::decode(t.as_str().unwrap()).unwrap()))
            .collect();
        assert_eq!(merkle_root(&txs).to_string(), s(&v, "root"), "{}", name(&v));
    }
}

#[test]
fn compact_bits() {
    for v in load("bits.json") {
        if let Some(encoded) = v.get("encoded_bits") {
            let t = target(&v).unwrap();
            assert_eq!(u64::from(bits_from_target(t)), encoded.as_u64().unwrap(), "{}", name(&v));
        } else {
            assert_eq!(target_from_bits(u(&v, "bits") as u32), target(&v), "{}", name(&v));
        }
    }
}

#[test]
fn retargets() {
    for v in load("retarget.json") {
        let mut g = NetworkParams::regtest().genesis;
        g.retarget_window = u(&v, "retarget_window");
        g.target_block_time_ms = u(&v, "target_block_time_ms");
        g.pow_limit_bits = u(&v, "pow_limit_bits") as u32;
        g.bits = g.pow_limit_bits;
        let params = NetworkParams::from_genesis(g).unwrap();
        let at = |height, ts, bits| Header {
            version: 1,
            height,
            prev_hash: Hash::ZERO,
            merkle_root: Hash::ZERO,
            timestamp_ms: ts,
            bits,
            nonce: 0,
        };
        let w = params.genesis.retarget_window;
        let bits = u(&v, "parent_bits") as u32;
        let first = at(0, u(&v, "first_timestamp_ms"), bits);
        let parent = at(w - 1, u(&v, "parent_timestamp_ms"), bits);
        let got = retarget(&params, &parent, |h| (h == 0).then_some(first));
        assert_eq!(u64::from(got), u(&v, "bits"), "{}", name(&v));
        // Off a retarget height the parent's bits carry over.
        let mid = at(w - 2, u(&v, "parent_timestamp_ms"), bits);
        assert_eq!(retarget(&params, &mid, |_| Some(first)), bits, "{}", name(&v));
    }
}

#[test]
fn genesis_to_network_id() {
    for v in load("genesis.json") {
        let g: Genesis = serde_json::from_value(v["genesis"].clone()).unwrap();
        let params = NetworkParams::from_genesis(g).unwrap();
        let tx = &params.genesis_block.txs[0];
        assert_eq!(std::str::from_utf8(tx).unwrap(), s(&v, "canonical_json"), "{}", name(&v));
        assert_eq!(params.network_id(), s(&v, "network_id"), "{}", name(&v));
        assert_eq!(params.genesis_block.header.version, Header::VERSION);
    }
    // The embedded networks are the vectors' first two.
    let all = load("genesis.json");
    assert_eq!(NetworkParams::devnet().network_id(), s(&all[0], "network_id"));
    assert_eq!(NetworkParams::regtest().network_id(), s(&all[1], "network_id"));
    // §8.5's worked example is the devnet's.
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let devnet = NetworkParams::devnet();
    assert!(spec.contains(&devnet.network_id()), "§8.5 states the devnet network id");
    let tx = std::str::from_utf8(&devnet.genesis_block.txs[0]).unwrap();
    assert!(spec.contains(tx), "§8.5 shows the devnet genesis transaction");
}

#[test]
fn locators() {
    for v in load("locator.json") {
        let want: Vec<u64> =
            v["heights"].as_array().unwrap().iter().map(|h| h.as_u64().unwrap()).collect();
        assert_eq!(locator_heights(u(&v, "tip_height")), want, "tip {}", u(&v, "tip_height"));
    }
}
