//! The sans-IO MConnection core (`MConnCore`): packet decoding and the
//! whole receive path (reassembly, credit, acks, control allowance).
//!
//! Mode 1, a hostile peer: arbitrary packets (structured, so they reach
//! credit, ack and chunking logic, mixed with raw bytes) cut into frames
//! at arbitrary points and fed to a core; it may refuse them with an error
//! but must not panic, and what it delivers stays within its channels'
//! message caps.
//!
//! Mode 2, two honest cores back to back: arbitrary messages pushed on
//! one, the bytes it writes cut at arbitrary points into the other, with
//! arbitrary consumption and clock steps; every message must arrive
//! whole, in order per channel, and no error may occur.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use plexus_p2p::mconn::core::{Delivery, MConnCore};
use plexus_p2p::{ChannelDescriptor, MConnConfig};
use plexus_proto::p2p::{
    packet::Sum, Packet, PacketAck, PacketCredit, PacketMsg, PacketPing, PacketPong,
};
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Pkt {
    Ping,
    Pong,
    Msg { channel: u8, eof: bool, len: u16 },
    Credit { channel: i32, bytes: u64 },
    Ack { bytes: u64 },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Mode 2: push a message of `len` bytes on channel `channel % 3`.
    Push {
        channel: u8,
        len: u16,
        fill: u8,
    },
    /// Move `max` bytes from one side's writer to the other's reader,
    /// cut into frames of `cut` bytes.
    Flow {
        to_b: bool,
        max: u32,
        cut: u16,
    },
    /// The application takes up to `n` delivered messages on a side.
    Take {
        on_b: bool,
        n: u8,
    },
    Tick {
        ms: u16,
    },
}

#[derive(Arbitrary, Debug)]
enum Input {
    Hostile { packets: Vec<Pkt>, cuts: Vec<u16> },
    Pair { steps: Vec<Step> },
}

fn channels() -> Vec<ChannelDescriptor> {
    vec![
        ChannelDescriptor::new(0x20).recv_message_capacity(4096),
        ChannelDescriptor::new(0x30).priority(3).recv_message_capacity(70_000),
        ChannelDescriptor::new(0x40).recv_message_capacity(1024).send_queue_bytes(8192),
    ]
}

fn config() -> MConnConfig {
    MConnConfig { max_packet_msg_payload_size: 1024, ..MConnConfig::default() }
}

fn encode(p: &Pkt) -> Vec<u8> {
    let sum = match p {
        Pkt::Ping => Sum::Ping(PacketPing {}),
        Pkt::Pong => Sum::Pong(PacketPong {}),
        Pkt::Msg { channel, eof, len } => Sum::Msg(PacketMsg {
            channel_id: [0x20, 0x30, 0x40, 0x50][usize::from(*channel % 4)],
            eof: *eof,
            data: vec![7u8; usize::from(*len % 2048)].into(),
        }),
        Pkt::Credit { channel, bytes } => {
            Sum::Credit(PacketCredit { channel_id: *channel, bytes: *bytes })
        }
        Pkt::Ack { bytes } => Sum::Ack(PacketAck { bytes: *bytes }),
        Pkt::Raw(b) => return b.clone(),
    };
    Packet { sum: Some(sum) }.encode_length_delimited_to_vec()
}

fn hostile(packets: &[Pkt], cuts: &[u16]) {
    let t0 = Instant::now();
    let caps: Vec<usize> = channels().iter().map(|d| d.recv_message_capacity).collect();
    let mut core = MConnCore::new(&channels(), config(), t0).unwrap();
    let stream: Vec<u8> = packets.iter().take(2000).flat_map(encode).collect();
    let mut rest = &stream[..];
    let mut cuts = cuts.iter().cycle();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = cuts.next().map_or(rest.len(), |c| usize::from(*c).max(1)).min(rest.len());
        let (frame, tail) = rest.split_at(n);
        rest = tail;
        if core.receive_frame(t0, Bytes::copy_from_slice(frame), &mut out).is_err() {
            return;
        }
        for d in out.drain(..) {
            assert!(d.msg.len() <= caps[d.index], "a message over its channel's cap was delivered");
            core.consumed(d.index, d.msg.len(), d.cost);
        }
        let mut sink = BytesMut::new();
        core.fill(t0, &mut sink, 1 << 20);
    }
}

struct Side {
    core: MConnCore,
    inbox: VecDeque<Delivery>,
}

fn pair(steps: &[Step]) {
    let t0 = Instant::now();
    let mut now = t0;
    let ids = [0x20u8, 0x30, 0x40];
    let caps: Vec<usize> = channels().iter().map(|d| d.recv_message_capacity).collect();
    let mut a =
        Side { core: MConnCore::new(&channels(), config(), t0).unwrap(), inbox: VecDeque::new() };
    let mut b =
        Side { core: MConnCore::new(&channels(), config(), t0).unwrap(), inbox: VecDeque::new() };
    // What A pushed and B has not yet taken, per channel.
    let mut expected: Vec<VecDeque<Bytes>> = vec![VecDeque::new(); 3];
    let mut wire_ab = BytesMut::new();
    let mut wire_ba = BytesMut::new();
    for step in steps.iter().take(400) {
        match step {
            Step::Push { channel, len, fill } => {
                let i = usize::from(*channel % 3);
                let msg = Bytes::from(vec![*fill; usize::from(*len) % (caps[i] + 1)]);
                if a.core.push(ids[i], msg.clone()).is_ok() {
                    expected[i].push_back(msg);
                }
            }
            Step::Flow { to_b, max, cut } => {
                let (from, to, wire) = if *to_b {
                    (&mut a, &mut b, &mut wire_ab)
                } else {
                    (&mut b, &mut a, &mut wire_ba)
                };
                from.core.fill(now, wire, (*max as usize % 200_000).max(1));
                let cut = usize::from(*cut).max(1);
                while !wire.is_empty() {
                    let frame = wire.split_to(cut.min(wire.len())).freeze();
                    let mut out = Vec::new();
                    if let Err(e) = to.core.receive_frame(now, frame, &mut out) {
                        panic!("an honest peer's bytes were refused: {e}");
                    }
                    to.inbox.extend(out);
                }
            }
            Step::Take { on_b, n } => {
                let side = if *on_b { &mut b } else { &mut a };
                for _ in 0..*n {
                    let Some(d) = side.inbox.pop_front() else { break };
                    side.core.consumed(d.index, d.msg.len(), d.cost);
                    if *on_b {
                        let want = expected[d.index].pop_front().expect("a message nobody sent");
                        assert_eq!(d.msg, want, "a message arrived changed or out of order");
                    }
                }
            }
            Step::Tick { ms } => {
                now += Duration::from_millis(u64::from(*ms));
                for side in [&mut a, &mut b] {
                    // A pong timeout (the steps let no bytes flow for 45 s)
                    // closes the connection: the run ends there.
                    if now >= side.core.poll_timeout() && side.core.handle_timeout(now).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fuzz_target!(|input: Input| match input {
    Input::Hostile { packets, cuts } => hostile(&packets, &cuts),
    Input::Pair { steps } => pair(&steps),
});
