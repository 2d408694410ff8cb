//! docs/openrpc.json against a running node: every method it describes is
//! served, under the parameter names it gives, and every live answer (two
//! connected nodes, one mining, a text and a binary transaction in the
//! mempool) validates against the result schema it states.

mod common;

use common::*;
use serde_json::{json, Value};

fn openrpc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openrpc.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn post(rpc: u16, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let mut r = ureq::post(&format!("http://127.0.0.1:{rpc}/"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// A validator for method `i`'s result: the whole document is the root
/// resource, so the schema's `#/components/schemas/...` refs resolve.
fn result_validator(doc: &Value, i: usize) -> jsonschema::Validator {
    let mut root = doc.clone();
    root["$ref"] = json!(format!("#/methods/{i}/result/schema"));
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("method {i}'s schema: {e}"))
}

fn check(doc: &Value, method: &str, answer: &Value) {
    let methods = doc["methods"].as_array().unwrap();
    let i = methods.iter().position(|m| m["name"] == method).unwrap();
    let result = answer.get("result").unwrap_or_else(|| panic!("{method}: {answer}"));
    let v = result_validator(doc, i);
    let errors: Vec<String> =
        v.iter_errors(result).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} answer {result} breaks docs/openrpc.json: {errors:?}");
}

#[test]
fn live_answers_match_the_openrpc_description() {
    let doc = openrpc();
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h0, p0, r0) = node_home(dir.path(), "a", &g);
    let _a = start(&h0, r0, &["-m"]);
    until(30, "a's RPC", || get(r0, "status").is_some());
    let (h1, _, r1) = node_home(dir.path(), "b", &g);
    let _b = start(&h1, r1, &["-k", &format!("127.0.0.1:{p0}")]);
    until(60, "b joined and has blocks", || {
        status(&_b)["n_peers"].as_u64() == Some(1) && height(&_b) >= 3
    });

    // Transactions in both forms: a text that reads like hex stays text.
    let text = post(r1, "broadcast_tx", json!({"tx": "0xab"}));
    check(&doc, "broadcast_tx", &text);
    let binary = post(r1, "broadcast_tx", json!([{"hex": "ff00fe"}]));
    check(&doc, "broadcast_tx", &binary);
    let bad = post(r1, "broadcast_tx", json!({"tx": {"hex": "zz"}}));
    assert_eq!(bad["error"]["code"], json!(-32602), "{bad}");
    let pool = post(r1, "mempool", json!({}));
    check(&doc, "mempool", &pool);
    let txs: Vec<&Value> =
        pool["result"]["txs"].as_array().unwrap().iter().map(|t| &t["tx"]).collect();
    assert!(txs.contains(&&json!("0xab")), "{pool}");
    assert!(txs.contains(&&json!({"hex": "ff00fe"})), "{pool}");

    // Every read method, by name and with its params as the document
    // names them.
    for (method, params) in [
        ("status", json!({})),
        ("net_info", json!({})),
        ("tips", json!({})),
        ("block", json!({})),
        ("block", json!({"height": 1})),
        ("blockchain", json!({"min_height": 0, "max_height": 2})),
        ("mempool", json!({"limit": 1})),
    ] {
        let answer = post(r1, method, params);
        check(&doc, method, &answer);
    }
    // The schemas do reject what breaks them (a weight as a number, a
    // field the document does not name, a transaction as a number).
    let methods = doc["methods"].as_array().unwrap();
    let at = |m: &str| methods.iter().position(|x| x["name"] == m).unwrap();
    let mut wrong = post(r1, "status", json!({}))["result"].clone();
    wrong["weight"] = json!(5);
    assert!(!result_validator(&doc, at("status")).is_valid(&wrong));
    let mut wrong = post(r1, "status", json!({}))["result"].clone();
    wrong["unnamed_field"] = json!(1);
    assert!(!result_validator(&doc, at("status")).is_valid(&wrong));
    let mut wrong = pool["result"].clone();
    wrong["txs"][0]["tx"] = json!(7);
    assert!(!result_validator(&doc, at("mempool")).is_valid(&wrong));
    let tip = status(&_b)["tip"].clone();
    check(&doc, "block", &post(r1, "block", json!({"hash": tip})));
    // The unsafe ones (this config sets rpc.unsafe = true).
    let a_id = node_id(&_a);
    check(
        &doc,
        "dial_peers",
        &post(r1, "dial_peers", json!({"peers": [format!("{a_id}@127.0.0.1:{p0}")]})),
    );
    check(&doc, "stop_peer", &post(r1, "stop_peer", json!({"id": a_id})));
    check(&doc, "stop_node", &post(r1, "stop_node", json!({})));

    // Every method the document names is served (rpc::METHODS and the
    // document's names and params are compared in rpc.rs's unit tests).
    for m in doc["methods"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        if name != "stop_node" {
            let answer = post(r0, name, json!({}));
            assert_ne!(answer["error"]["code"], json!(-32601), "{name} is not served: {answer}");
        }
    }
}
