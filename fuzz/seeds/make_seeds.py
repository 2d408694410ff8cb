#!/usr/bin/env python3
"""Writes the seed corpora of the byte-input fuzz targets from the
conformance vectors in docs/vectors/ (real encodings the node sends and
accepts). The structure-aware targets (arbitrary inputs) start empty and
grow their corpus in fuzz/corpus/.  Run: python3 fuzz/seeds/make_seeds.py
"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "docs", "vectors")
sys.path.insert(0, VECTORS)
sys.dont_write_bytecode = True
import generate as g  # noqa: E402


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def vectors(name):
    with open(os.path.join(VECTORS, name), encoding="utf-8") as f:
        return json.load(f)["vectors"]


for i, v in enumerate(vectors("node_info.json")):
    put("node_info", "vector-%d" % i, bytes.fromhex(v["frame_plaintext"]))
for i, v in enumerate(vectors("genesis.json")):
    put("genesis", "canonical-%d" % i, v["canonical_json"].encode())
    put("genesis", "pretty-%d" % i, json.dumps(v["genesis"], indent=2, ensure_ascii=False).encode())

# Chain and block sync messages around the §8.1 header and a few words.
for i, v in enumerate(vectors("header.json")):
    h = v["header"]
    hdr = (g.field_varint(1, h["version"]) + g.field_varint(2, h["height"])
           + g.field_bytes(3, bytes.fromhex(h["prev_hash"])) + g.field_bytes(4, bytes.fromhex(h["merkle_root"]))
           + g.field_varint(5, h["timestamp_ms"]) + g.field_varint(6, h["bits"]) + g.field_varint(7, h["nonce"]))
    txs = b"".join(g.field_bytes(2, t, always=True) for t in [b"word one", b"", b"\xff\x00"])
    block = g.field_bytes(1, hdr, always=True) + txs
    put("messages", "new-block-%d" % i, g.field_bytes(2, g.field_bytes(1, block, always=True), always=True))
    put("messages", "headers-%d" % i, g.field_bytes(4, g.field_bytes(1, hdr, always=True), always=True))
    put("messages", "block-response-%d" % i, g.field_bytes(6, g.field_bytes(1, block, always=True), always=True))
status = g.field_varint(1, 7) + g.field_bytes(2, b"\x00" * 31 + b"\x09") + g.field_bytes(3, hashlib.sha256(b"t").digest())
put("messages", "status", g.field_bytes(1, status, always=True))
put("messages", "txs", g.field_bytes(1, g.field_bytes(1, b"hello") + g.field_bytes(1, b"\x00\x01"), always=True))
