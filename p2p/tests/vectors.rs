//! The p2p conformance vectors of docs/vectors/ (§1 NodeId, §3 NodeInfo,
//! §4.1 Packets): the Rust code gives what the spec's second
//! implementation (docs/vectors/generate.py) wrote.

#[path = "common/vectors.rs"]
mod vectors;

use pb::packet::Sum;
use plexus_p2p::{NodeInfo, NodeKey};
use plexus_proto::p2p as pb;
use prost::Message;
use serde_json::Value;
use vectors::{bytes, load, name, s, u};

#[test]
fn node_ids_from_keys() {
    for v in load("node_id.json") {
        let key = NodeKey::from_private_key(&bytes(&v, "private_key")).unwrap();
        assert_eq!(hex::encode(key.public_key()), s(&v, "public_key"), "{}", name(&v));
        assert_eq!(key.node_id().to_string(), s(&v, "node_id"), "{}", name(&v));
    }
}

fn packet(p: &Value) -> pb::Packet {
    let (kind, body) = p.as_object().unwrap().iter().next().unwrap();
    let ch = || u(body, "channel_id") as i32;
    let sum = match kind.as_str() {
        "ping" => Sum::Ping(pb::PacketPing {}),
        "pong" => Sum::Pong(pb::PacketPong {}),
        "msg" => Sum::Msg(pb::PacketMsg {
            channel_id: ch(),
            eof: body["eof"].as_bool().unwrap(),
            data: bytes(body, "data").into(),
        }),
        "credit" => Sum::Credit(pb::PacketCredit { channel_id: ch(), bytes: u(body, "bytes") }),
        "ack" => Sum::Ack(pb::PacketAck { bytes: u(body, "bytes") }),
        other => panic!("unknown packet kind {other}"),
    };
    pb::Packet { sum: Some(sum) }
}

#[test]
fn packet_encodings() {
    for v in load("packets.json") {
        let p = packet(&v["packet"]);
        assert_eq!(hex::encode(p.encode_to_vec()), s(&v, "encoded"), "{}", name(&v));
        let sent = bytes(&v, "as_sent");
        assert_eq!(p.encode_length_delimited_to_vec(), sent, "{}", name(&v));
        assert_eq!(pb::Packet::decode_length_delimited(&sent[..]).unwrap(), p, "{}", name(&v));
    }
}

#[test]
fn node_info_encodings() {
    for v in load("node_info.json") {
        let n = &v["node_info"];
        let pv = &n["protocol_version"];
        let info = pb::NodeInfo {
            protocol_version: Some(pb::ProtocolVersion {
                p2p: u(pv, "p2p"),
                block: u(pv, "block"),
                app: u(pv, "app"),
            }),
            node_id: s(n, "node_id").into(),
            listen_addr: s(n, "listen_addr").into(),
            network: s(n, "network").into(),
            version: s(n, "version").into(),
            channels: n["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap() as u8)
                .collect::<Vec<u8>>()
                .into(),
            moniker: s(n, "moniker").into(),
            node_type: u(n, "node_type") as i32,
            capabilities: n["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| pb::Capability { id: u(c, "id") as u32, value: s(c, "value").into() })
                .collect(),
            refusal: n["refusal"].as_object().map(|_| pb::Refusal {
                code: u(&n["refusal"], "code") as i32,
                reason: s(&n["refusal"], "reason").into(),
            }),
        };
        assert_eq!(hex::encode(info.encode_to_vec()), s(&v, "encoded"), "{}", name(&v));
        let frame = bytes(&v, "frame_plaintext");
        assert_eq!(info.encode_length_delimited_to_vec(), frame, "{}", name(&v));
        // Each is a NodeInfo the node accepts (§3's rules), and ours
        // encodes the same (the refusal aside, which the exchange sets).
        let decoded = pb::NodeInfo::decode_length_delimited(&frame[..]).unwrap();
        let ours = NodeInfo::from_proto(decoded).unwrap_or_else(|e| panic!("{}: {e}", name(&v)));
        let mut plain = info.clone();
        plain.refusal = None;
        assert_eq!(ours.to_proto(), plain, "{}", name(&v));
    }
}
