//! RPC parameters as a client sends them: any method name of the table
//! (or another), any JSON text as `params` (positional arrays named from
//! the table, objects, anything else), parsed into a typed `Request`; a
//! GET query value (`?tx=...`) as the GET form reads it. Refused with an
//! error or accepted within the limits, never a panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_node::jsonrpc::named_params;
use plexus_node::rpc::{Request, MAX_MEMPOOL_LIMIT, METHODS};

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    other_method: String,
    params: String,
    max_dial_peers: u8,
}

fuzz_target!(|input: Input| {
    let (method, names): (&str, &[&str]) = match METHODS.get(usize::from(input.method)) {
        Some((m, names)) => (m, names),
        None => (&input.other_method, &[]),
    };
    let Ok(named) = named_params(method, names, Some(&input.params)) else { return };
    let max = usize::from(input.max_dial_peers);
    match Request::parse(method, &named, max) {
        Ok(Request::DialPeers { peers, .. }) => assert!(peers.len() <= max),
        Ok(Request::Mempool { limit }) => assert!(limit <= MAX_MEMPOOL_LIMIT),
        Ok(Request::BroadcastTx(tx)) => {
            // Shown back as the form it came in (text stays text).
            let shown = plexus_node::rpc::tx_json(&tx);
            let back = plexus_node::rpc::tx_bytes(Some(&shown)).expect("a shown tx parses back");
            assert_eq!(back, tx);
        }
        _ => {}
    }
});
