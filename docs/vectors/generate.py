#!/usr/bin/env python3
"""Writes the conformance vectors of docs/protocol.md into docs/vectors/.

This is a second implementation, written from docs/protocol.md alone (no
Plexus code): Python's hashlib, json and a few lines of protobuf encoding.
The Rust tests (p2p/tests/vectors.rs, reactors/tests/vectors.rs) read the
JSON files and check that the Rust code gives the same outputs, so the spec,
this script and the code cannot drift apart silently.

Run: python3 docs/vectors/generate.py   (rewrites the *.json files)
Needs: Python 3.8+ and, for the X25519 public keys, `cryptography`.
"""

import hashlib
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, description, vectors):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"description": description, "vectors": vectors}, f, indent=2, ensure_ascii=False)
        f.write("\n")


def sha256(b):
    return hashlib.sha256(b).digest()


# --- protobuf, the few pieces the spec uses ---------------------------------

def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    # proto3: a default (0 / false) is not written.
    return b"" if v == 0 else uvarint(num << 3) + uvarint(v)


def field_bytes(num, b, always=False):
    # proto3: an empty string/bytes is not written; an embedded message is
    # written when set, even if empty (always=True).
    if not b and not always:
        return b""
    return uvarint(num << 3 | 2) + uvarint(len(b)) + b


def delimited(b):
    return uvarint(len(b)) + b


# --- §1 NodeId ---------------------------------------------------------------

def node_ids():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    keys = [
        ("RFC 7748 §6.1 Alice", "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        ("RFC 7748 §6.1 Bob", "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        ("all 0x42 (clamped when used)", "42" * 32),
    ]
    out = []
    for name, priv in keys:
        k = X25519PrivateKey.from_private_bytes(bytes.fromhex(priv))
        pub = k.public_key().public_bytes_raw()
        out.append({
            "name": name,
            "private_key": priv,
            "public_key": pub.hex(),
            "node_id": sha256(pub)[:20].hex(),
        })
    return out


# --- §4.1 Packets ------------------------------------------------------------

def packet_bytes(p):
    kind, body = next(iter(p.items()))
    if kind == "ping":
        inner, num = b"", 1
    elif kind == "pong":
        inner, num = b"", 2
    elif kind == "msg":
        inner = (field_varint(1, body["channel_id"]) + field_varint(2, int(body["eof"]))
                 + field_bytes(3, bytes.fromhex(body["data"])))
        num = 3
    elif kind == "credit":
        inner = field_varint(1, body["channel_id"]) + field_varint(2, body["bytes"])
        num = 4
    elif kind == "ack":
        inner, num = field_varint(1, body["bytes"]), 5
    else:
        raise ValueError(kind)
    return field_bytes(num, inner, always=True)


def packets():
    cases = [
        ("Ping", {"ping": {}}),
        ("Pong", {"pong": {}}),
        ("Msg on 0x20, eof, \"hello\"", {"msg": {"channel_id": 0x20, "eof": True, "data": b"hello".hex()}}),
        ("Msg on 0x40, not eof, \"ab\"", {"msg": {"channel_id": 0x40, "eof": False, "data": b"ab".hex()}}),
        ("Msg on 0x20, eof, empty data", {"msg": {"channel_id": 0x20, "eof": True, "data": ""}}),
        ("Msg on 0x00 (no field 1), eof", {"msg": {"channel_id": 0x00, "eof": True, "data": "0a00"}}),
        ("Msg on 0x80 (two-byte varint id)", {"msg": {"channel_id": 0x80, "eof": True, "data": "ff"}}),
        ("Msg of 300 bytes (two-byte lengths)", {"msg": {"channel_id": 0x30, "eof": True, "data": "ab" * 300}}),
        ("Credit 8 MiB on 0x20", {"credit": {"channel_id": 0x20, "bytes": 8 << 20}}),
        ("Credit 17,825,792 on 0x40", {"credit": {"channel_id": 0x40, "bytes": 17825792}}),
        ("Ack 65536", {"ack": {"bytes": 65536}}),
    ]
    out = []
    for name, p in cases:
        b = packet_bytes(p)
        out.append({"name": name, "packet": p, "encoded": b.hex(), "as_sent": delimited(b).hex()})
    return out


# --- §3 NodeInfo ---------------------------------------------------------------

def node_info_bytes(n):
    pv = n["protocol_version"]
    pv_b = field_varint(1, pv["p2p"]) + field_varint(2, pv["block"]) + field_varint(3, pv["app"])
    b = field_bytes(1, pv_b, always=True)
    b += field_bytes(2, n["node_id"].encode())
    b += field_bytes(3, n["listen_addr"].encode())
    b += field_bytes(4, n["network"].encode())
    b += field_bytes(5, n["version"].encode())
    b += field_bytes(6, bytes(n["channels"]))
    b += field_bytes(7, n["moniker"].encode())
    b += field_varint(8, n["node_type"])
    for c in n["capabilities"]:
        b += field_bytes(9, field_varint(1, c["id"]) + field_bytes(2, c["value"].encode()), always=True)
    if n.get("refusal") is not None:
        r = n["refusal"]
        b += field_bytes(10, field_varint(1, r["code"]) + field_bytes(2, r["reason"].encode()), always=True)
    return b


def node_infos():
    alice = node_ids()[0]["node_id"]
    base = {
        "protocol_version": {"p2p": 1, "block": 0, "app": 0},
        "node_id": alice,
        "listen_addr": "192.0.2.1:26656",
        "network": "ab" * 32,
        "version": "0.1.0",
        "channels": [0x00, 0x20, 0x30, 0x40],
        "moniker": "alice",
        "node_type": 1,
        "capabilities": [],
        "refusal": None,
    }
    client = dict(base, listen_addr="0.0.0.0:0", moniker="client", channels=[0x20, 0x40],
                  node_type=4, capabilities=[{"id": 1, "value": "light"}, {"id": 7, "value": ""}])
    refusing = dict(base, refusal={"code": 1, "reason": "node " + alice + " is already connected"})
    out = []
    for name, n in [("a full node", base), ("a client that does not listen (port 0)", client),
                    ("a refusal (REFUSAL_CODE_DUPLICATE)", refusing)]:
        b = node_info_bytes(n)
        out.append({"name": name, "node_info": n, "encoded": b.hex(), "frame_plaintext": delimited(b).hex()})
    return out


# --- §8.1 header hash ----------------------------------------------------------

def le(n, size):
    return n.to_bytes(size, "little")


def header_bytes(h):
    return (le(h["version"], 4) + le(h["height"], 8) + bytes.fromhex(h["prev_hash"])
            + bytes.fromhex(h["merkle_root"]) + le(h["timestamp_ms"], 8) + le(h["bits"], 4)
            + le(h["nonce"], 8))


def block_hash(h):
    return sha256(sha256(header_bytes(h))).hex()


def headers():
    cases = [
        ("the §8.1 example", {"version": 1, "height": 0x0102030405060708, "prev_hash": "aa" * 32,
                              "merkle_root": "bb" * 32, "timestamp_ms": 0x1122334455667788,
                              "bits": 0x1D00FFFF, "nonce": 0xDEADBEEF}),
        ("a genesis-like header", {"version": 1, "height": 0, "prev_hash": "00" * 32,
                                   "merkle_root": sha256(b"").hex(), "timestamp_ms": 1795000000000,
                                   "bits": 0x207FFFFF, "nonce": 0}),
        ("all fields at their maximum", {"version": 1, "height": 2**64 - 1, "prev_hash": "ff" * 32,
                                         "merkle_root": "ff" * 32, "timestamp_ms": 2**64 - 1,
                                         "bits": 0x1D00FFFF, "nonce": 2**64 - 1}),
    ]
    return [{"name": n, "header": h, "bytes": header_bytes(h).hex(), "hash": block_hash(h)} for n, h in cases]


# --- §8.2 merkle root -------------------------------------------------------

def merkle_root(txs):
    if not txs:
        return sha256(b"")
    level = [sha256(b"\x00" + t) for t in txs]
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            if i + 1 < len(level):
                nxt.append(sha256(b"\x01" + level[i] + level[i + 1]))
            else:
                nxt.append(level[i])
        level = nxt
    return level[0]


def merkles():
    out = []
    for n in [0, 1, 2, 3, 7]:
        txs = [("word %d" % i).encode() for i in range(n)]
        out.append({"name": "%d transactions" % n, "txs": [t.hex() for t in txs],
                    "root": merkle_root(txs).hex()})
    txs = [b"", b"\x00" * 3, bytes(range(256))]
    out.append({"name": "an empty, a zero and a 256-byte transaction", "txs": [t.hex() for t in txs],
                "root": merkle_root(txs).hex()})
    return out


# --- §8.3 compact bits, retarget -------------------------------------------

def target_from_bits(bits):
    e, m = bits >> 24, bits & 0x7FFFFF
    if bits & 0x800000 and m != 0:
        return None
    t = m >> (8 * (3 - e)) if e <= 3 else m << (8 * (e - 3))
    if t == 0 or t >= 2**256:
        return None
    return t


def bits_from_target(t):
    size = (t.bit_length() + 7) // 8
    compact = t << (8 * (3 - size)) if size <= 3 else t >> (8 * (size - 3))
    if compact & 0x800000:
        compact >>= 8
        size += 1
    return compact | size << 24


def t64(t):
    return None if t is None else "%064x" % t


def bits():
    decode = [0x1D00FFFF, 0x207FFFFF, 0x1B0404CB, 0x03123456, 0x02008000, 0x01003456, 0x04123456,
              0x2100FFFF, 0x22000001, 0x01000000, 0x00000000, 0x04923456, 0x04800000, 0x2200FFFF,
              0x21010000, 0x2300FFFF]
    out = [{"name": "decode %#010x" % b, "bits": b, "target": t64(target_from_bits(b))} for b in decode]
    encode = [0x80, 0x7F, 0x12345678, 2**255, 2**256 - 1, 2**232 - 1, 0xFFFF << 208, 1]
    out += [{"name": "encode %#x" % t, "target": t64(t), "encoded_bits": bits_from_target(t)} for t in encode]
    return out


def retarget(window, block_ms, pow_limit_bits, parent_bits, first_ts, last_ts):
    expected = (window - 1) * block_ms
    actual = max(last_ts - first_ts, 0)
    actual = min(max(actual, expected // 4), expected * 4)
    new = target_from_bits(parent_bits) * actual // expected
    return bits_from_target(max(min(new, target_from_bits(pow_limit_bits)), 1))


def retargets():
    w, ms = 20, 10_000
    exp = (w - 1) * ms
    limit = bits_from_target(2**255 - 1)
    cases = [
        ("on time: unchanged", 0x1F00FFFF, exp),
        ("twice as slow: target doubles", 0x1F00FFFF, 2 * exp),
        ("twice as fast: target halves", 0x1F00FFFF, exp // 2),
        ("ten times slower: clamped at x4", 0x1F00FFFF, 10 * exp),
        ("ten times faster: clamped at /4", 0x1F00FFFF, exp // 10),
        ("no time at all: clamped at /4", 0x1F00FFFF, 0),
        ("last before first: as no time", 0x1F00FFFF, -5000),
        ("an odd time: rounded down", 0x1B0404CB, exp + 12345),
        ("slower near the limit: capped at the pow limit", bits_from_target(2**254), 4 * exp),
        ("a top byte >= 0x80 keeps two significant bytes", 0x1E00FFFF, 100_000),
        ("a target of 1 with no time at all: never below 1", bits_from_target(1), 0),
    ]
    out = []
    first = 1795000000000
    for name, pb, span in cases:
        out.append({"name": name, "retarget_window": w, "target_block_time_ms": ms,
                    "pow_limit_bits": limit, "parent_bits": pb, "first_timestamp_ms": first,
                    "parent_timestamp_ms": first + span,
                    "bits": retarget(w, ms, limit, pb, first, first + span)})
    return out


# --- §8.5 genesis ----------------------------------------------------------

FIELDS = ["network_name", "timestamp_ms", "bits", "pow_limit_bits", "target_block_time_ms",
          "retarget_window", "max_block_bytes", "max_tx_bytes", "max_future_ms", "message"]


def canonical(g):
    ordered = {k: g[k] for k in FIELDS}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)


def genesis_hash(g):
    tx = canonical(g).encode("utf-8")
    h = {"version": 1, "height": 0, "prev_hash": "00" * 32, "merkle_root": merkle_root([tx]).hex(),
         "timestamp_ms": g["timestamp_ms"], "bits": g["bits"], "nonce": 0}
    return block_hash(h)


def local(name, shift, block_ms, window):
    return {"network_name": name, "timestamp_ms": 1795000000000,
            "bits": bits_from_target((2**256 - 1) >> shift),
            "pow_limit_bits": bits_from_target((2**256 - 1) >> 1),
            "target_block_time_ms": block_ms, "retarget_window": window,
            "max_block_bytes": 1 << 20, "max_tx_bytes": 64 * 1024,
            "max_future_ms": 2 * 3600 * 1000, "message": name + " genesis"}


def geneses():
    odd = dict(local("odd", 20, 5000, 10),
               message="quote \" backslash \\ slash / tab \t newline \n nul \u0000 unit \u001f "
                       "del \u007f e-acute \u00e9 cjk \u4e2d emoji \U0001F600")
    out = []
    for name, g in [("the embedded devnet (plexus start --network devnet)", local("plexus-devnet", 24, 10_000, 20)),
                    ("the embedded regtest", local("plexus-regtest", 8, 1_000, 0)),
                    ("escapes and non-ASCII in a string", odd)]:
        out.append({"name": name, "genesis": g, "canonical_json": canonical(g),
                    "network_id": genesis_hash(g)})
    return out


# --- §8.6 locator ----------------------------------------------------------

def locator_heights(top):
    out, h, step = [], top, 1
    while h > 0:
        out.append(h)
        if len(out) >= 10:
            step *= 2
        h -= step
    out.append(0)
    return out


def locators():
    return [{"tip_height": h, "heights": locator_heights(h)} for h in [0, 1, 9, 10, 11, 12, 30, 100, 1000, 1000000]]


if __name__ == "__main__":
    write("node_id.json", "docs/protocol.md §1: NodeId = first 20 bytes of SHA-256(X25519 public key), lowercase hex.", node_ids())
    write("packets.json", "docs/protocol.md §4.1: Packet encodings (encoded: the protobuf Packet; as_sent: with its uvarint length prefix). data is hex.", packets())
    write("node_info.json", "docs/protocol.md §3: NodeInfo encodings (encoded: the protobuf NodeInfo; frame_plaintext: the one transport frame's plaintext, uvarint length first). channels are the bytes of field 6; node_type and refusal.code are enum numbers.", node_infos())
    write("header.json", "docs/protocol.md §8.1: the 96-byte header layout (bytes) and the block hash SHA-256(SHA-256(bytes)), shown in byte order.", headers())
    write("merkle.json", "docs/protocol.md §8.2: merkle roots (RFC 6962 hashing; an odd last node moves up). txs are hex.", merkles())
    write("bits.json", "docs/protocol.md §8.3: compact bits to target (null: invalid) and target to compact bits (encoded_bits). Targets are 64 hex digits, big-endian.", bits())
    write("retarget.json", "docs/protocol.md §8.3: the bits of the block at a retarget height, from its parent's bits and the timestamps of its parent (parent_timestamp_ms) and of the block one window earlier (first_timestamp_ms).", retargets())
    write("genesis.json", "docs/protocol.md §8.5: a genesis file, its canonical JSON (the genesis block's one transaction, UTF-8) and the network id (the genesis block hash).", geneses())
    write("locator.json", "docs/protocol.md §8.6: the heights of a main-chain block locator from a tip at tip_height, newest first.", locators())
