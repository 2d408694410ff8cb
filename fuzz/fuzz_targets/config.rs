//! `config.toml` as an operator (or a damaged file) may write it: any
//! text parsed into the node's config and validated; an accepted config
//! serialises to TOML that parses back to the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_node::config::NodeConfig;

fuzz_target!(|text: &str| {
    let Ok(cfg) = toml::from_str::<NodeConfig>(text) else { return };
    if cfg.validate().is_err() {
        return;
    }
    let _ = cfg.sync.block_sync();
    let _ = cfg.sync.consensus();
    let _ = cfg.p2p.peer_manager();
    let _ = cfg.mempool.config();
    let again = toml::to_string(&cfg).expect("a config serialises");
    let back: NodeConfig = toml::from_str(&again).expect("a serialised config parses");
    assert_eq!(back, cfg, "config TOML round trip");
});
