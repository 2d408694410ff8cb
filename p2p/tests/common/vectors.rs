//! Reading the conformance vectors of `docs/vectors/` (written by
//! `docs/vectors/generate.py`, a second implementation from the spec
//! alone). Shared by the p2p and reactors vector tests.
#![allow(dead_code)]

use serde_json::Value;

/// The `vectors` array of `docs/vectors/<name>`.
pub fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/../docs/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v = doc["vectors"].as_array().unwrap_or_else(|| panic!("{path}: no vectors")).clone();
    assert!(!v.is_empty(), "{path}: no vectors");
    v
}

/// `v[key]` as a string.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// `v[key]` as an unsigned integer.
pub fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

/// `v[key]` decoded from hex.
pub fn bytes(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(s(v, key)).unwrap_or_else(|e| panic!("{key} is not hex ({e}) in {v}"))
}

/// The vector's name, for messages.
pub fn name(v: &Value) -> &str {
    v["name"].as_str().unwrap_or("(unnamed)")
}
