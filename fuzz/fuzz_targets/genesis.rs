//! Genesis files: any bytes parsed and checked; an accepted genesis gives
//! the same network id after its canonical JSON is parsed again (the id
//! depends on the values only), and its embedded limits hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_reactors::chain::{Genesis, NetworkParams, MAX_BLOCK_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(g) = serde_json::from_slice::<Genesis>(data) else { return };
    let Ok(params) = NetworkParams::from_genesis(g) else { return };
    assert!(params.genesis.max_block_bytes <= MAX_BLOCK_BYTES);
    let canonical = params.genesis_block.txs[0].clone();
    let g2: Genesis = serde_json::from_slice(&canonical).expect("the canonical JSON parses");
    let p2 = NetworkParams::from_genesis(g2).expect("the canonical genesis is valid");
    assert_eq!(p2.network_id(), params.network_id());
    assert_eq!(p2.genesis_block.txs[0], canonical, "canonical JSON is a fixed point");
});
