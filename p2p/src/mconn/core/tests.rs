//! Unit tests of the sans-IO core: two cores wired back to back through
//! plain byte buffers, with a hand-driven clock.

use super::*;
use proptest::prelude::*;

fn cfg() -> MConnConfig {
    MConnConfig { max_packet_msg_payload_size: 1024, ..MConnConfig::default() }
}

fn ch(id: u8) -> ChannelDescriptor {
    ChannelDescriptor::new(id).recv_message_capacity(1 << 20)
}

struct Pair {
    a: MConnCore,
    b: MConnCore,
    now: Instant,
    a_to_b: BytesMut,
    b_to_a: BytesMut,
    got_a: Vec<Delivery>,
    got_b: Vec<Delivery>,
}

impl Pair {
    fn new(chans: &[ChannelDescriptor], config: MConnConfig) -> Pair {
        let now = Instant::now();
        let mut p = Pair {
            a: MConnCore::new(chans, config.clone(), now).unwrap(),
            b: MConnCore::new(chans, config, now).unwrap(),
            now,
            a_to_b: BytesMut::new(),
            b_to_a: BytesMut::new(),
            got_a: Vec::new(),
            got_b: Vec::new(),
        };
        // Exchange the initial credit grants.
        p.step(usize::MAX);
        p
    }

    /// One round: each side writes up to `limit` bytes, the other reads
    /// them all. Returns bytes moved a->b.
    fn step(&mut self, limit: usize) -> usize {
        let n = self.a.fill(self.now, &mut self.a_to_b, limit);
        self.b.fill(self.now, &mut self.b_to_a, limit);
        self.b.receive(self.now, &mut self.a_to_b, &mut self.got_b).unwrap();
        self.a.receive(self.now, &mut self.b_to_a, &mut self.got_a).unwrap();
        n
    }

    /// Lets b's application take everything delivered so far.
    fn consume_b(&mut self) -> Vec<Delivery> {
        let got = std::mem::take(&mut self.got_b);
        for d in &got {
            self.b.consumed(d.index, d.msg.len(), d.cost);
        }
        got
    }
}

#[test]
fn small_and_large_messages_roundtrip() {
    let mut p = Pair::new(&[ch(1), ch(2)], cfg());
    let sizes = [0usize, 1, 1023, 1024, 1025, 5000, 1 << 20];
    for (k, &n) in sizes.iter().enumerate() {
        let msg: Bytes = (0..n).map(|i| (i * 7 + k) as u8).collect::<Vec<_>>().into();
        p.a.push(1 + (k % 2) as u8, msg).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..10_000 {
        p.step(64 * 1024);
        got.extend(p.consume_b());
        if got.len() == sizes.len() {
            break;
        }
    }
    assert_eq!(got.len(), sizes.len());
    // Per channel, in order and intact.
    for chan in 0..2 {
        let want: Vec<usize> =
            sizes.iter().enumerate().filter(|(k, _)| k % 2 == chan).map(|(_, &n)| n).collect();
        let have: Vec<usize> =
            got.iter().filter(|d| d.index == chan).map(|d| d.msg.len()).collect();
        assert_eq!(have, want);
    }
    for d in &got {
        let k = sizes.iter().position(|&n| n == d.msg.len()).unwrap();
        assert!(d.msg.iter().enumerate().all(|(i, &b)| b == (i * 7 + k) as u8));
    }
}

#[test]
fn chunks_never_exceed_max_payload() {
    let mut core = MConnCore::new(&[ch(1)], cfg(), Instant::now()).unwrap();
    // Give it credit as the peer would.
    let mut credit = BytesMut::new();
    encode(&mut credit, Sum::Credit(PacketCredit { channel_id: 1, bytes: 1 << 30 }));
    core.receive(Instant::now(), &mut credit, &mut Vec::new()).unwrap();
    core.push(1, vec![0u8; 10_000].into()).unwrap();
    let mut out = BytesMut::new();
    core.fill(Instant::now(), &mut out, usize::MAX);
    let mut chunks = Vec::new();
    while !out.is_empty() {
        let (prefix, len) = peek_length(&out).unwrap().unwrap();
        out.advance(prefix);
        let p = Packet::decode(out.split_to(len)).unwrap();
        if let Some(Sum::Msg(m)) = p.sum {
            chunks.push((m.data.len(), m.eof));
        }
    }
    assert_eq!(chunks.len(), 10); // 9 × 1024 + 784
    assert!(chunks.iter().all(|&(n, _)| n <= 1024));
    assert!(chunks[..9].iter().all(|&(_, eof)| !eof));
    assert_eq!(chunks[9], (784, true));
}

/// Two saturated channels share bytes by priority (1:5), whatever the
/// message sizes.
#[test]
fn saturated_channels_share_by_priority() {
    let chans = [ch(1).priority(1), ch(2).priority(5)];
    let mut p = Pair::new(&chans, cfg());
    let mut sent = [0u64; 2];
    for _ in 0..2000 {
        // Keep both queues full: channel 1 with big messages, 2 with small.
        while p.a.push(1, vec![1u8; 50_000].into()).is_ok() {}
        while p.a.push(2, vec![2u8; 300].into()).is_ok() {}
        p.step(16 * 1024);
        for d in p.consume_b() {
            sent[d.index] += d.msg.len() as u64;
        }
    }
    let stats = p.b.stats(p.now);
    let (b1, b2) = (stats.channels[0].bytes_recv as f64, stats.channels[1].bytes_recv as f64);
    // Bytes on the wire include the per-packet cost, so compare costs:
    // small packets carry proportionally more overhead.
    let c1 = b1 + (b1 / 1024.0).ceil() * PACKET_MSG_COST as f64;
    let c2 = b2 + (b2 / 300.0).ceil() * PACKET_MSG_COST as f64;
    let ratio = c2 / c1;
    assert!((ratio - 5.0).abs() < 0.25, "cost ratio {ratio}");
    assert!(sent[0] > 0, "large messages are not starved");
}

/// A high-priority message waits behind at most one bulk packet.
#[test]
fn high_priority_message_jumps_the_bulk_queue() {
    let chans =
        [ch(1).priority(1).send_queue_capacity(100).send_queue_bytes(16 << 20), ch(2).priority(10)];
    let mut p = Pair::new(&chans, MConnConfig { max_send_queue_bytes: 16 << 20, ..cfg() });
    for _ in 0..100 {
        p.a.push(1, vec![1u8; 100_000].into()).unwrap();
    }
    p.step(8 * 1024);
    p.a.push(2, vec![9u8; 100].into()).unwrap();
    let mut out = BytesMut::new();
    p.a.fill(p.now, &mut out, 1);
    // The very next packet is the high-priority one.
    let (prefix, len) = peek_length(&out).unwrap().unwrap();
    out.advance(prefix);
    match Packet::decode(out.split_to(len)).unwrap().sum {
        Some(Sum::Msg(m)) => assert_eq!((m.channel_id, m.data.len()), (2, 100)),
        other => panic!("expected the priority message, got {other:?}"),
    }
}

#[test]
fn sender_respects_credit_and_slow_channel_does_not_block_others() {
    let chans = [ch(1).recv_message_capacity(10_000).recv_buffer_capacity(20_000), ch(2)];
    let mut p = Pair::new(&chans, cfg());
    for _ in 0..10 {
        p.a.push(1, vec![1u8; 10_000].into()).unwrap();
    }
    // Nobody consumes channel 1 at b.
    for _ in 0..100 {
        p.step(64 * 1024);
    }
    let on1 = p.got_b.iter().filter(|d| d.index == 0).count();
    assert!(on1 < 10, "channel 1 is held back by credit, got {on1}");
    let used: u64 = p.got_b.iter().map(|d| d.cost).sum();
    assert!(used <= 20_000, "in flight {used} within the window");
    // Channel 2 still flows.
    p.a.push(2, Bytes::from_static(b"still here")).unwrap();
    p.step(64 * 1024);
    assert!(p.got_b.iter().any(|d| d.index == 1 && &d.msg[..] == b"still here"));
    // Consuming channel 1 releases the rest.
    let mut total = 0;
    for _ in 0..100 {
        total += p.consume_b().iter().filter(|d| d.index == 0).count();
        p.step(64 * 1024);
    }
    assert_eq!(total, 10);
}

#[test]
fn peer_exceeding_credit_is_an_error() {
    let now = Instant::now();
    let mut b =
        MConnCore::new(&[ch(1).recv_message_capacity(1000).recv_buffer_capacity(2000)], cfg(), now)
            .unwrap();
    let mut input = BytesMut::new();
    for _ in 0..3 {
        encode(
            &mut input,
            Sum::Msg(PacketMsg { channel_id: 1, eof: true, data: vec![0u8; 900].into() }),
        );
    }
    let err = b.receive(now, &mut input, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, MConnError::CreditExceeded { channel: 1, .. }), "{err}");
}

#[test]
fn idle_receiver_grants_credit_for_half_received_message() {
    // Window only slightly above one message: the remaining credit after a
    // message is consumed must come back even below a quarter-window.
    let chans = [ch(1).recv_message_capacity(4000).recv_buffer_capacity(4400)];
    let mut p = Pair::new(&chans, cfg());
    for _ in 0..5 {
        p.a.push(1, vec![3u8; 4000].into()).unwrap();
    }
    let mut n = 0;
    for _ in 0..200 {
        p.step(64 * 1024);
        n += p.consume_b().len();
    }
    assert_eq!(n, 5);
}

fn bad_input(packet: Vec<u8>) -> MConnError {
    let mut b = MConnCore::new(&[ch(1)], cfg(), Instant::now()).unwrap();
    let mut input = BytesMut::from(&packet[..]);
    b.receive(Instant::now(), &mut input, &mut Vec::new()).unwrap_err()
}

fn delimited(p: Packet) -> Vec<u8> {
    p.encode_length_delimited_to_vec()
}

#[test]
fn malformed_input_is_a_typed_error() {
    // Length prefix above max packet size: refused before the body.
    let mut big = Vec::new();
    prost::encoding::encode_varint((1 << 20) + PACKET_OVERHEAD as u64 + 1, &mut big);
    assert!(matches!(bad_input(big), MConnError::PacketTooLarge { .. }));
    // Garbage protobuf.
    assert!(matches!(bad_input(vec![3, 0xff, 0xff, 0xff]), MConnError::Malformed(_)));
    // Endless varint.
    assert!(matches!(bad_input(vec![0xff; 12]), MConnError::Malformed(_)));
    // Empty packet.
    assert!(matches!(bad_input(delimited(Packet { sum: None })), MConnError::EmptyPacket));
    // Unknown channel, and a PacketMsg without a channel field (= 0).
    let unknown =
        Packet { sum: Some(Sum::Msg(PacketMsg { channel_id: 9, eof: true, data: Bytes::new() })) };
    assert!(matches!(bad_input(delimited(unknown)), MConnError::UnknownChannel(9)));
    let no_channel =
        Packet { sum: Some(Sum::Msg(PacketMsg { channel_id: 0, eof: true, data: Bytes::new() })) };
    assert!(matches!(bad_input(delimited(no_channel)), MConnError::UnknownChannel(0)));
    let negative =
        Packet { sum: Some(Sum::Msg(PacketMsg { channel_id: -1, eof: true, data: Bytes::new() })) };
    assert!(matches!(bad_input(delimited(negative)), MConnError::UnknownChannel(-1)));
    let credit = Packet { sum: Some(Sum::Credit(PacketCredit { channel_id: 300, bytes: 5 })) };
    assert!(matches!(bad_input(delimited(credit)), MConnError::UnknownChannel(300)));
}

#[test]
fn message_over_capacity_is_refused() {
    let now = Instant::now();
    let mut b = MConnCore::new(&[ch(1).recv_message_capacity(2000)], cfg(), now).unwrap();
    let mut input = BytesMut::new();
    for _ in 0..2 {
        encode(
            &mut input,
            Sum::Msg(PacketMsg { channel_id: 1, eof: false, data: vec![0u8; 1000].into() }),
        );
    }
    encode(&mut input, Sum::Msg(PacketMsg { channel_id: 1, eof: true, data: vec![0u8; 1].into() }));
    let err = b.receive(now, &mut input, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(err, MConnError::MessageTooLarge { channel: 1, len: 2001, max: 2000 }),
        "{err}"
    );
}

#[test]
fn partial_packet_waits_for_more_bytes() {
    let now = Instant::now();
    let mut b = MConnCore::new(&[ch(1)], cfg(), now).unwrap();
    let bytes = delimited(Packet {
        sum: Some(Sum::Msg(PacketMsg { channel_id: 1, eof: true, data: vec![5u8; 500].into() })),
    });
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    for chunk in bytes.chunks(7) {
        input.extend_from_slice(chunk);
        b.receive(now, &mut input, &mut out).unwrap();
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].msg.len(), 500);
}

#[test]
fn ping_pong_and_timeout() {
    let config = MConnConfig {
        ping_interval: Duration::from_secs(10),
        pong_timeout: Duration::from_secs(5),
        ..cfg()
    };
    let mut p = Pair::new(&[ch(1)], config);
    assert_eq!(p.a.poll_timeout(), p.now + Duration::from_secs(10));
    p.now += Duration::from_secs(10);
    p.a.handle_timeout(p.now).unwrap();
    assert!(p.a.wants_to_send(p.now));
    // a pings; b answers; a records the RTT.
    p.step(usize::MAX);
    p.now += Duration::from_millis(3);
    p.step(usize::MAX);
    assert!(p.a.stats(p.now).last_rtt.is_some());
    // Next ping goes unanswered.
    p.now += Duration::from_secs(10);
    let mut out = BytesMut::new();
    p.a.fill(p.now, &mut out, usize::MAX);
    assert!(!out.is_empty());
    assert_eq!(p.a.poll_timeout(), p.now + Duration::from_secs(5));
    p.now += Duration::from_secs(5);
    assert!(matches!(p.a.handle_timeout(p.now), Err(MConnError::PongTimeout(_))));
}

#[test]
fn pong_is_sent_ahead_of_bulk_data() {
    let mut p = Pair::new(&[ch(1)], cfg());
    for _ in 0..10 {
        p.a.push(1, vec![0u8; 100_000].into()).unwrap();
    }
    let mut ping = BytesMut::new();
    encode(&mut ping, Sum::Ping(PacketPing {}));
    p.a.receive(p.now, &mut ping, &mut Vec::new()).unwrap();
    let mut out = BytesMut::new();
    p.a.fill(p.now, &mut out, 64 * 1024);
    assert_eq!(&out[..3], &[2, 0x12, 0x00], "pong first");
}

#[test]
fn send_rate_limit_paces_data_but_not_control() {
    let config = MConnConfig { send_rate: 100_000, rate_burst: 10_000, ..cfg() };
    let mut p = Pair::new(&[ch(1).send_queue_capacity(1000)], config);
    for _ in 0..1000 {
        p.a.push(1, vec![0u8; 1000].into()).unwrap();
    }
    let t0 = p.now;
    let mut bytes = 0;
    while p.now < t0 + Duration::from_secs(5) {
        bytes += p.step(usize::MAX);
        p.consume_b();
        p.now = p.a.poll_timeout().min(p.now + Duration::from_millis(50));
    }
    // 5 s at 100 kB/s plus the 10 kB burst, in wire bytes.
    assert!((480_000..=530_000).contains(&bytes), "{bytes} bytes in 5 s");
    // While blocked, a ping is still answered at once.
    let mut ping = BytesMut::new();
    encode(&mut ping, Sum::Ping(PacketPing {}));
    p.a.receive(p.now, &mut ping, &mut Vec::new()).unwrap();
    let mut out = BytesMut::new();
    p.a.fill(p.now, &mut out, usize::MAX);
    assert_eq!(&out[..3], &[2, 0x12, 0x00]);
}

#[test]
fn push_errors() {
    let mut core = MConnCore::new(&[ch(1).send_queue_capacity(2)], cfg(), Instant::now()).unwrap();
    assert_eq!(core.push(7, Bytes::new()), Err(PushError::UnknownChannel(7)));
    core.push(1, Bytes::new()).unwrap();
    core.push(1, Bytes::new()).unwrap();
    assert!(
        matches!(core.push(1, Bytes::from_static(b"x")), Err(PushError::Full(m)) if &m[..] == b"x")
    );
}

#[test]
fn bad_config_is_a_typed_error() {
    let now = Instant::now();
    let bad = MConnConfig { pong_timeout: Duration::from_secs(60), ..MConnConfig::default() };
    assert!(matches!(MConnCore::new(&[ch(1)], bad, now), Err(MConnError::Config(_))));
    assert!(matches!(MConnCore::new(&[ch(1), ch(1)], cfg(), now), Err(MConnError::Config(_))));
    assert!(matches!(MConnCore::new(&[ch(1).priority(0)], cfg(), now), Err(MConnError::Config(_))));
    let small_window = ch(1).recv_buffer_capacity(100);
    assert!(matches!(MConnCore::new(&[small_window], cfg(), now), Err(MConnError::Config(_))));
    assert!(matches!(MConnCore::new(&[], cfg(), now), Err(MConnError::Config(_))));
}

/// Delivered messages grouped by channel index, in arrival order.
fn per_channel(got: &[Delivery], n: usize) -> Vec<Vec<Vec<u8>>> {
    (0..n).map(|c| got.iter().filter(|d| d.index == c).map(|d| d.msg.to_vec()).collect()).collect()
}

/// Sent messages grouped by channel id (= index in these tests), in order.
fn want_per_channel(msgs: &[(u8, Vec<u8>)], n: usize) -> Vec<Vec<Vec<u8>>> {
    (0..n)
        .map(|c| msgs.iter().filter(|(x, _)| *x as usize == c).map(|(_, m)| m.clone()).collect())
        .collect()
}

proptest! {
    /// Any sequence of messages on any channels arrives whole and in order
    /// per channel, whatever the write sizes.
    #[test]
    fn any_messages_roundtrip(
        msgs in proptest::collection::vec((0u8..3, proptest::collection::vec(any::<u8>(), 0..5000)), 0..40),
        limit in 1usize..20_000,
    ) {
        let chans = [ch(0).send_queue_capacity(64), ch(1).send_queue_capacity(64).priority(3), ch(2).send_queue_capacity(64).priority(7)];
        let mut p = Pair::new(&chans, cfg());
        for (c, m) in &msgs {
            p.a.push(*c, m.clone().into()).unwrap();
        }
        let mut got: Vec<Delivery> = Vec::new();
        for _ in 0..100_000 {
            if got.len() == msgs.len() { break; }
            p.step(limit);
            got.extend(p.consume_b());
        }
        prop_assert_eq!(per_channel(&got, 3), want_per_channel(&msgs, 3));
    }
}

#[test]
fn unacked_window_bounds_data_in_flight() {
    let config = MConnConfig { max_unacked_bytes: 128 * 1024, ..cfg() };
    let mut p = Pair::new(&[ch(1).send_queue_capacity(100)], config);
    for _ in 0..100 {
        p.a.push(1, vec![0u8; 10_000].into()).unwrap();
    }
    // b reads nothing: a stops at the window (plus at most one packet).
    let mut wire = BytesMut::new();
    p.a.fill(p.now, &mut wire, usize::MAX);
    assert!(wire.len() >= 128 * 1024 && wire.len() < 128 * 1024 + 1100, "{}", wire.len());
    assert!(!p.a.wants_to_send(p.now));
    // b reads it and acks; a may send again.
    p.b.receive(p.now, &mut wire, &mut p.got_b).unwrap();
    p.b.fill(p.now, &mut p.b_to_a, usize::MAX);
    p.a.receive(p.now, &mut p.b_to_a, &mut p.got_a).unwrap();
    assert!(p.a.wants_to_send(p.now));
    // And everything arrives in the end.
    let mut n = 0;
    for _ in 0..1000 {
        p.step(64 * 1024);
        n += p.consume_b().len();
    }
    assert_eq!(n + p.got_b.len(), 100);
}

#[test]
fn acking_more_than_sent_is_an_error() {
    let mut a = MConnCore::new(&[ch(1)], cfg(), Instant::now()).unwrap();
    let mut input = BytesMut::new();
    encode(&mut input, Sum::Ack(PacketAck { bytes: 1 }));
    let err = a.receive(Instant::now(), &mut input, &mut Vec::new()).unwrap_err();
    assert!(matches!(err, MConnError::Malformed(_)), "{err}");
}

/// The case a review found by model: a window at exactly `min_window`,
/// messages the application takes only after the sender ran out of
/// credit. Chunks are never cut short by credit, so the last message
/// still completes.
#[test]
fn tight_window_never_deadlocks() {
    let d = ch(1).recv_message_capacity(4096);
    let d = d.clone().recv_buffer_capacity(d.min_window());
    let mut p = Pair::new(&[d], cfg());
    for n in [1100usize, 100, 4096, 4096, 1, 4096] {
        p.a.push(1, vec![7u8; n].into()).unwrap();
    }
    // Let the sender run dry before the application reads anything.
    for _ in 0..20 {
        p.step(usize::MAX);
    }
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(p.consume_b().into_iter().map(|d| d.msg.len()));
        p.step(usize::MAX);
    }
    assert_eq!(got, vec![1100, 100, 4096, 4096, 1, 4096]);
}

#[test]
fn credit_for_a_channel_we_lack_is_ignored() {
    let mut a = MConnCore::new(&[ch(1)], cfg(), Instant::now()).unwrap();
    let mut input = BytesMut::new();
    encode(&mut input, Sum::Credit(PacketCredit { channel_id: 0x42, bytes: 1000 }));
    a.receive(Instant::now(), &mut input, &mut Vec::new()).unwrap();
}

#[test]
fn push_after_start_closing_is_refused() {
    let mut a = MConnCore::new(&[ch(1)], cfg(), Instant::now()).unwrap();
    a.start_closing();
    assert!(matches!(a.push(1, Bytes::new()), Err(PushError::Closing(_))));
}

proptest! {
    /// The same, with the byte stream cut into arbitrary "frames" fed to
    /// `receive_frame`: packets split across frames are stitched, whole
    /// ones are decoded in place, and the result is identical.
    #[test]
    fn any_frame_cuts_roundtrip(
        msgs in proptest::collection::vec((0u8..2, proptest::collection::vec(any::<u8>(), 0..3000)), 1..20),
        cuts in proptest::collection::vec(1usize..5000, 1..50),
    ) {
        let chans = [ch(0).send_queue_capacity(64), ch(1).send_queue_capacity(64)];
        let now = Instant::now();
        let mut a = MConnCore::new(&chans, cfg(), now).unwrap();
        let mut b = MConnCore::new(&chans, cfg(), now).unwrap();
        // b's initial grant reaches a.
        let mut grant = BytesMut::new();
        b.fill(now, &mut grant, usize::MAX);
        a.receive(now, &mut grant, &mut Vec::new()).unwrap();
        for (c, m) in &msgs {
            a.push(*c, m.clone().into()).unwrap();
        }
        let mut wire = BytesMut::new();
        a.fill(now, &mut wire, usize::MAX);
        let mut wire = wire.freeze();
        let mut got = Vec::new();
        let mut k = 0;
        while !wire.is_empty() {
            let n = cuts[k % cuts.len()].min(wire.len());
            k += 1;
            b.receive_frame(now, wire.split_to(n), &mut got).unwrap();
        }
        prop_assert_eq!(got.len(), msgs.len());
        prop_assert_eq!(per_channel(&got, 2), want_per_channel(&msgs, 2));
    }
}

#[test]
fn oversized_message_is_refused_locally() {
    let mut a =
        MConnCore::new(&[ch(1).recv_message_capacity(1000)], cfg(), Instant::now()).unwrap();
    assert_eq!(
        a.push(1, vec![0u8; 1001].into()),
        Err(PushError::TooLarge { len: 1001, max: 1000 })
    );
    a.push(1, vec![0u8; 1000].into()).unwrap();
}

#[test]
fn absurd_durations_and_rates_are_config_errors() {
    let now = Instant::now();
    for bad in [
        MConnConfig { ping_interval: Duration::MAX, pong_timeout: Duration::from_secs(1), ..cfg() },
        MConnConfig { send_timeout: Duration::from_secs(90_000), ..cfg() },
        MConnConfig { flush_throttle: Duration::from_secs(2), ..cfg() },
        MConnConfig { recv_rate: 1000, ..cfg() },
        MConnConfig { max_packet_msg_payload_size: 100, ..cfg() },
        MConnConfig { max_unacked_bytes: 1000, ..cfg() },
    ] {
        assert!(matches!(MConnCore::new(&[ch(1)], bad, now), Err(MConnError::Config(_))));
    }
}

#[test]
fn send_queues_are_bounded_in_bytes_per_channel_and_per_connection() {
    let now = Instant::now();
    let chans = [
        ch(1).send_queue_bytes(10_000),
        ch(2).send_queue_bytes(10_000),
        ch(3).send_queue_bytes(10_000),
    ];
    let config = MConnConfig { max_send_queue_bytes: 25_000, ..cfg() };
    let mut c = MConnCore::new(&chans, config, now).unwrap();
    // An empty queue takes one message larger than its budget.
    c.push(1, Bytes::from(vec![0; 15_000])).unwrap();
    assert!(matches!(c.push(1, Bytes::from(vec![0; 10])), Err(PushError::Full(_))));
    assert_eq!(c.room(0), 0);
    // Channel 2: what is left of the connection (10,000), then its own budget.
    assert_eq!(c.room(1), 10_000);
    c.push(2, Bytes::from(vec![0; 6_000])).unwrap();
    assert_eq!(c.room(1), 4_000);
    c.push(2, Bytes::from(vec![0; 4_000])).unwrap();
    assert_eq!(c.queued_bytes(), 25_000);
    // The connection is full: even an empty channel takes nothing.
    assert_eq!(c.room(2), 0);
    assert!(matches!(c.push(3, Bytes::from(vec![0; 1])), Err(PushError::Full(_))));
    assert_eq!(c.stats(now).send_queue_bytes, 25_000);
}

#[test]
fn sending_gives_the_budget_back() {
    let chans = [ch(1).send_queue_bytes(4_000)];
    let config = MConnConfig { max_send_queue_bytes: 4_000, ..cfg() };
    let mut p = Pair::new(&chans, config);
    p.a.push(1, Bytes::from(vec![7; 3_000])).unwrap();
    assert_eq!(p.a.room(0), 1_000);
    while p.got_b.is_empty() {
        p.step(usize::MAX);
    }
    assert_eq!(p.a.queued_bytes(), 0);
    assert_eq!(p.a.room(0), 4_000);
    assert!(p.a.take_freed().count() > 0);
}

#[test]
fn a_control_packet_flood_closes_the_connection() {
    let now = Instant::now();
    let config = MConnConfig { control_rate: 100, control_burst: 200, ..cfg() };
    let mut c = MConnCore::new(&[ch(1)], config, now).unwrap();
    let mut out = Vec::new();
    let ping = Packet { sum: Some(Sum::Ping(Default::default())) }.encode_length_delimited_to_vec();
    // The burst passes (and each ping is answered: a pong is owed).
    for _ in 0..200 {
        c.receive(now, &mut BytesMut::from(&ping[..]), &mut out).unwrap();
    }
    let err = c.receive(now, &mut BytesMut::from(&ping[..]), &mut out).unwrap_err();
    assert!(matches!(err, MConnError::ControlFlood { rate: 100 }), "{err}");
    assert_eq!(err.misbehavior(), Some(crate::fault::Misbehavior::Flood));
    // Empty frames count the same.
    let mut c = MConnCore::new(&[ch(1)], MConnConfig { control_burst: 3, ..cfg() }, now).unwrap();
    for _ in 0..3 {
        c.receive_frame(now, Bytes::new(), &mut out).unwrap();
    }
    assert!(c.receive_frame(now, Bytes::new(), &mut out).is_err());
    // The rate refills the bucket.
    let later = now + Duration::from_secs(1);
    c.receive_frame(later, Bytes::new(), &mut out).unwrap();
}

#[test]
fn acks_and_credit_for_our_own_traffic_are_never_a_flood() {
    // A tiny control allowance, and a lot of traffic both ways: every ack
    // and grant is earned by the packets it answers.
    let config = MConnConfig { control_rate: 1, control_burst: 8, ..cfg() };
    let chans = [ch(1)];
    let mut p = Pair::new(&chans, config);
    for round in 0..200 {
        for _ in 0..4 {
            p.a.push(1, Bytes::from(vec![round as u8; 3000])).unwrap();
            p.b.push(1, Bytes::from(vec![round as u8; 3000])).unwrap();
        }
        for _ in 0..20 {
            p.step(usize::MAX);
            p.consume_b();
            let got = std::mem::take(&mut p.got_a);
            for d in &got {
                p.a.consumed(d.index, d.msg.len(), d.cost);
            }
        }
    }
}
