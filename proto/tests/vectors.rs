//! Pins CometBFT's MConnection wire vectors and cross-checks Plexus' `Packet`
//! against the `tendermint-proto` crate for the same values.
use plexus_proto::p2p::{packet::Sum, Packet, PacketMsg, PacketPing, PacketPong};
use prost::Message;
use tendermint_proto::v0_38::p2p as tm;

fn enc<M: Message>(m: &M) -> String {
    hex::encode(m.encode_to_vec())
}

fn ping() -> Packet {
    Packet { sum: Some(Sum::Ping(PacketPing {})) }
}
fn pong() -> Packet {
    Packet { sum: Some(Sum::Pong(PacketPong {})) }
}
fn msg(ch: i32, eof: bool, data: &'static [u8]) -> Packet {
    Packet { sum: Some(Sum::Msg(PacketMsg { channel_id: ch, eof, data: data.into() })) }
}

#[test]
fn cometbft_vectors() {
    assert_eq!(enc(&ping()), "0a00");
    assert_eq!(enc(&pong()), "1200");
    // channel 0x20, eof, data "hello": msg=3 (1a), len 0b, ch=1 (08 20), eof=2 (10 01), data=3 (1a 05 ...)
    assert_eq!(enc(&msg(0x20, true, b"hello")), "1a0b082010011a0568656c6c6f");
    // length-delimited form as it travels: uvarint length first
    let mut b = Vec::new();
    ping().encode_length_delimited(&mut b).unwrap();
    assert_eq!(hex::encode(b), "020a00");
}

#[test]
fn cross_check_with_tendermint_proto() {
    let ours = [
        ping(),
        pong(),
        msg(0x20, true, b"hello"),
        msg(0, false, b""),
        msg(255, true, &[0u8; 300]),
    ];
    for p in ours {
        let bytes = p.encode_to_vec();
        let theirs = tm::Packet::decode(bytes.as_slice()).expect("tendermint-proto decodes ours");
        assert_eq!(theirs.encode_to_vec(), bytes, "re-encoding by tendermint-proto is identical");
        let back = Packet::decode(theirs.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, p);
    }
    let tm_msg = tm::Packet {
        sum: Some(tm::packet::Sum::PacketMsg(tm::PacketMsg {
            channel_id: 0x40,
            eof: true,
            data: vec![1, 2, 3],
        })),
    };
    let ours = Packet::decode(tm_msg.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        ours,
        Packet {
            sum: Some(Sum::Msg(PacketMsg {
                channel_id: 0x40,
                eof: true,
                data: vec![1u8, 2, 3].into()
            }))
        }
    );
    let tm_ping = tm::Packet { sum: Some(tm::packet::Sum::PacketPing(tm::PacketPing {})) };
    assert_eq!(hex::encode(tm_ping.encode_to_vec()), "0a00");
}

/// The RpcFrame examples of docs/protocol.md §5.
#[test]
fn rpc_frame_vectors() {
    use plexus_proto::p2p::RpcFrame;
    let req = RpcFrame { id: 1, response: false, payload: vec![0x08, 0x07].into() };
    assert_eq!(enc(&req), "08011a020807");
    let resp = RpcFrame { id: 1, response: true, payload: vec![0x10, 0x01].into() };
    assert_eq!(enc(&resp), "080110011a021001");
}

/// The PEX examples of docs/protocol.md §6.
#[test]
fn pex_vectors() {
    use plexus_proto::pex::{message::Sum, Message, NetAddress, PexAddrs, PexRequest};
    let req = Message { sum: Some(Sum::PexRequest(PexRequest {})) };
    assert_eq!(enc(&req), "0a00");
    let id = "0123456789abcdef0123456789abcdef01234567".to_string();
    let addrs = Message {
        sum: Some(Sum::PexAddrs(PexAddrs {
            addrs: vec![NetAddress { id: id.clone(), ip: "1.2.3.4".into(), port: 26656 }],
        })),
    };
    let want = format!("12390a370a28{}1207{}18a0d001", hex::encode(&id), hex::encode("1.2.3.4"));
    assert_eq!(enc(&addrs), want);
}
