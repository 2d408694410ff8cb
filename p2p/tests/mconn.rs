//! MConnection end to end over in-memory pipes and loopback TCP.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use plexus_p2p::mconn::{SendError, TrySendError};
use plexus_p2p::secret::{SecretConfig, SecretConnection, SecretWriter};
use plexus_p2p::{
    ChannelDescriptor, ChannelReceiver, MConnConfig, MConnError, MConnection, NodeKey,
};
use plexus_proto::p2p::{packet::Sum, Packet, PacketCredit, PacketMsg};
use prost::Message;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

type Conn = (MConnection, Vec<ChannelReceiver>);

async fn secret_pipe() -> (SecretConnection<DuplexStream>, SecretConnection<DuplexStream>) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let cfg = SecretConfig::default();
    let (x, y) = tokio::join!(
        SecretConnection::connect(a, &ka, Some(kb.node_id()), &cfg),
        SecretConnection::accept(b, &kb, &cfg)
    );
    (x.unwrap(), y.unwrap())
}

async fn pipe_pair(chans: &[ChannelDescriptor], config: MConnConfig) -> (Conn, Conn) {
    let (x, y) = secret_pipe().await;
    (
        MConnection::new(x, chans, config.clone()).unwrap(),
        MConnection::new(y, chans, config).unwrap(),
    )
}

async fn tcp_pair(chans: &[ChannelDescriptor], config: MConnConfig) -> (Conn, Conn) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let cfg = SecretConfig::default();
    let (x, y) = tokio::join!(
        SecretConnection::connect(a.unwrap(), &ka, Some(kb.node_id()), &cfg),
        SecretConnection::accept(b.unwrap().0, &kb, &cfg)
    );
    (
        MConnection::new(x.unwrap(), chans, config.clone()).unwrap(),
        MConnection::new(y.unwrap(), chans, config).unwrap(),
    )
}

/// A peer that speaks raw plaintext packets through a secret connection.
async fn raw_peer(
    chans: &[ChannelDescriptor],
    config: MConnConfig,
) -> (
    Conn,
    SecretWriter<WriteHalf<DuplexStream>>,
    plexus_p2p::secret::SecretReader<ReadHalf<DuplexStream>>,
) {
    let (x, y) = secret_pipe().await;
    let conn = MConnection::new(x, chans, config).unwrap();
    let (r, w) = y.split();
    (conn, w, r)
}

fn packet(sum: Sum) -> Vec<u8> {
    Packet { sum: Some(sum) }.encode_length_delimited_to_vec()
}

fn ch(id: u8) -> ChannelDescriptor {
    ChannelDescriptor::new(id)
}

#[tokio::test]
async fn messages_from_empty_to_capacity_roundtrip_over_tcp() {
    let cap = 1 << 20;
    let chans = [ch(0x20).recv_message_capacity(cap)];
    let config = MConnConfig { max_packet_msg_payload_size: 16 * 1024, ..MConnConfig::default() };
    let ((a, _ra), (_b, mut rb)) = tcp_pair(&chans, config).await;
    let sizes = [0usize, 1, 100, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 300_000, cap];
    let sender = tokio::spawn(async move {
        for (k, &n) in sizes.iter().enumerate() {
            let msg: Vec<u8> = (0..n).map(|i| (i + k) as u8).collect();
            a.send(0x20, msg).await.unwrap();
        }
        a
    });
    for (k, &n) in sizes.iter().enumerate() {
        let m = rb[0].recv().await.unwrap();
        assert_eq!(m.len(), n);
        assert!(m.iter().enumerate().all(|(i, &b)| b == (i + k) as u8));
    }
    let a = sender.await.unwrap();
    let stats = a.stats();
    assert_eq!(stats.channels[0].msgs_sent, sizes.len() as u64);
    assert_eq!(stats.channels[0].bytes_sent, sizes.iter().sum::<usize>() as u64);
}

#[tokio::test]
async fn messages_roundtrip_over_memory_pipe_both_ways() {
    let chans = [ch(1), ch(2).priority(3)];
    let ((a, mut ra), (b, mut rb)) = pipe_pair(&chans, MConnConfig::default()).await;
    a.send(1, Bytes::from_static(b"a->b on 1")).await.unwrap();
    b.send(2, Bytes::from_static(b"b->a on 2")).await.unwrap();
    assert_eq!(&rb[0].recv().await.unwrap()[..], b"a->b on 1");
    assert_eq!(&ra[1].recv().await.unwrap()[..], b"b->a on 2");
    assert_ne!(a.remote_id(), b.remote_id());
}

#[tokio::test]
async fn local_send_on_unknown_channel_is_an_error() {
    let ((a, _), _b) = pipe_pair(&[ch(1)], MConnConfig::default()).await;
    assert_eq!(a.send(9, Bytes::new()).await, Err(SendError::UnknownChannel(9)));
    assert_eq!(a.try_send(9, Bytes::new()), Err(TrySendError::UnknownChannel(9)));
    assert!(!a.can_send(9));
}

#[tokio::test(start_paused = true)]
async fn try_send_on_full_queue_fails_and_send_times_out() {
    // The peer never consumes and its window is small, so the queue fills.
    let chans =
        [ch(1).send_queue_capacity(2).recv_message_capacity(1000).recv_buffer_capacity(2000)];
    let config = MConnConfig { send_timeout: Duration::from_secs(3), ..MConnConfig::default() };
    let ((a, _ra), (_b, _rb)) = pipe_pair(&chans, config).await;
    let mut full = false;
    for _ in 0..20 {
        match a.try_send(1, vec![0u8; 900]) {
            Ok(()) => tokio::task::yield_now().await,
            Err(TrySendError::Full(m)) => {
                assert_eq!(m.len(), 900);
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full, "queue never filled");
    assert!(!a.can_send(1));
    let t0 = tokio::time::Instant::now();
    assert_eq!(a.send(1, vec![0u8; 900]).await, Err(SendError::Timeout));
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
}

#[tokio::test]
async fn send_waits_for_room_then_succeeds() {
    let chans =
        [ch(1).send_queue_capacity(1).recv_message_capacity(1000).recv_buffer_capacity(2000)];
    let ((a, _ra), (_b, mut rb)) = pipe_pair(&chans, MConnConfig::default()).await;
    let sender = tokio::spawn(async move {
        for i in 0..50u8 {
            a.send(1, vec![i; 900]).await.unwrap();
        }
        a
    });
    for i in 0..50u8 {
        assert_eq!(rb[0].recv().await.unwrap()[0], i);
    }
    sender.await.unwrap();
}

/// A consumer that never reads channel A does not hold up channel B.
#[tokio::test]
async fn slow_consumer_on_one_channel_does_not_stall_another() {
    let chans = [
        ch(1).recv_message_capacity(10_000).recv_buffer_capacity(50_000).send_queue_capacity(1000),
        ch(2),
    ];
    let ((a, _ra), (_b, mut rb)) = tcp_pair(&chans, MConnConfig::default()).await;
    let a = std::sync::Arc::new(a);
    let bulk = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..500 {
                if a.send(1, vec![1u8; 10_000]).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut slow = rb.remove(0);
    let mut fast = rb.remove(0);
    for i in 0..200u32 {
        a.send(2, i.to_be_bytes().to_vec()).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), fast.recv())
            .await
            .expect("B stalled")
            .unwrap();
        assert_eq!(m[..], i.to_be_bytes());
    }
    // A was held back by credit, not dropped: everything arrives once read.
    let stats = a.stats();
    assert!(stats.channels[0].send_queue_len > 0, "A's sender is backed up");
    let mut n = 0;
    while n < 500 {
        let m = tokio::time::timeout(Duration::from_secs(10), slow.recv())
            .await
            .expect("A never resumed")
            .unwrap();
        assert_eq!(m.len(), 10_000);
        n += 1;
    }
    bulk.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn missing_pong_closes_with_pong_timeout() {
    let config = MConnConfig {
        ping_interval: Duration::from_secs(60),
        pong_timeout: Duration::from_secs(45),
        ..MConnConfig::default()
    };
    let ((conn, _rx), _w, mut r) = raw_peer(&[ch(1)], config).await;
    // The raw peer reads (so writes never block) but never answers.
    let reader = tokio::spawn(async move {
        let mut sink = BytesMut::new();
        while r.read_into(&mut sink).await.is_ok() {
            sink.clear();
        }
    });
    let t0 = tokio::time::Instant::now();
    let reason = conn.closed().await;
    assert!(
        matches!(reason, MConnError::PongTimeout(d) if d == Duration::from_secs(45)),
        "{reason}"
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(105));
    reader.abort();
}

#[tokio::test(start_paused = true)]
async fn pongs_keep_an_idle_connection_alive() {
    let config = MConnConfig {
        ping_interval: Duration::from_secs(10),
        pong_timeout: Duration::from_secs(5),
        ..MConnConfig::default()
    };
    let ((a, _ra), (_b, _rb)) = pipe_pair(&[ch(1)], config).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!a.is_closed());
    assert!(a.stats().last_rtt.is_some());
}

#[tokio::test(start_paused = true)]
async fn send_rate_limit_holds_throughput() {
    let config =
        MConnConfig { send_rate: 1_000_000, rate_burst: 100_000, ..MConnConfig::default() };
    let chans = [ch(1).send_queue_capacity(100)];
    let ((a, _ra), (_b, mut rb)) = pipe_pair(&chans, config).await;
    let t0 = tokio::time::Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..50 {
            a.send(1, vec![0u8; 100_000]).await.unwrap();
        }
        a
    });
    for _ in 0..50 {
        rb[0].recv().await.unwrap();
    }
    // 5 MB at 1 MB/s after a 100 kB burst: about 4.9 s of (paused) time.
    let secs = t0.elapsed().as_secs_f64();
    assert!((4.8..5.3).contains(&secs), "took {secs} s");
    sender.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn recv_rate_limit_holds_throughput() {
    let receiver_config =
        MConnConfig { recv_rate: 1_000_000, rate_burst: 200_000, ..MConnConfig::default() };
    let chans = [ch(1).send_queue_capacity(100)];
    let (x, y) = secret_pipe().await;
    let (a, _ra) = MConnection::new(x, &chans, MConnConfig::default()).unwrap();
    let (_b, mut rb) = MConnection::new(y, &chans, receiver_config).unwrap();
    let t0 = tokio::time::Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..40 {
            a.send(1, vec![0u8; 100_000]).await.unwrap();
        }
        a
    });
    for _ in 0..40 {
        rb[0].recv().await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    assert!((3.6..4.4).contains(&secs), "took {secs} s");
    sender.await.unwrap();
}

async fn expect_closed_by(bytes: Vec<u8>, want: fn(&MConnError) -> bool) {
    let chans = [ch(1).recv_message_capacity(1000).recv_buffer_capacity(4000)];
    let config = MConnConfig { max_packet_msg_payload_size: 1024, ..MConnConfig::default() };
    let ((conn, _rx), mut w, _r) = raw_peer(&chans, config).await;
    w.write_all(&bytes).await.unwrap();
    let reason =
        tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("not closed");
    assert!(want(&reason), "closed with {reason}");
}

#[tokio::test]
async fn malformed_packets_close_the_connection_with_typed_errors() {
    // Largest packet: the largest recv_message_capacity (here 1000, raised
    // to the 1 KiB floor) plus 16.
    let mut too_big = Vec::new();
    prost::encoding::encode_varint(1024 + 17, &mut too_big);
    expect_closed_by(too_big, |e| matches!(e, MConnError::PacketTooLarge { len: 1041, max: 1040 }))
        .await;
    expect_closed_by(vec![4, 0xff, 0xff, 0xff, 0xff], |e| matches!(e, MConnError::Malformed(_)))
        .await;
    expect_closed_by(Packet { sum: None }.encode_length_delimited_to_vec(), |e| {
        matches!(e, MConnError::EmptyPacket)
    })
    .await;
    let unknown = packet(Sum::Msg(PacketMsg { channel_id: 7, eof: true, data: Bytes::new() }));
    expect_closed_by(unknown, |e| matches!(e, MConnError::UnknownChannel(7))).await;
    let no_channel =
        packet(Sum::Msg(PacketMsg { channel_id: 0, eof: true, data: Bytes::from_static(b"x") }));
    expect_closed_by(no_channel, |e| matches!(e, MConnError::UnknownChannel(0))).await;
    let mut over = Vec::new();
    for _ in 0..2 {
        over.extend(packet(Sum::Msg(PacketMsg {
            channel_id: 1,
            eof: false,
            data: vec![0u8; 600].into(),
        })));
    }
    expect_closed_by(over, |e| matches!(e, MConnError::MessageTooLarge { channel: 1, .. })).await;
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.extend(packet(Sum::Msg(PacketMsg {
            channel_id: 1,
            eof: true,
            data: vec![0u8; 900].into(),
        })));
    }
    expect_closed_by(flood, |e| matches!(e, MConnError::CreditExceeded { channel: 1, .. })).await;
    let bad_credit = packet(Sum::Credit(PacketCredit { channel_id: 300, bytes: 1 }));
    expect_closed_by(bad_credit, |e| matches!(e, MConnError::UnknownChannel(300))).await;
}

#[tokio::test]
async fn peer_disconnect_closes_with_secret_error_and_ends_receivers() {
    let ((a, mut ra), (b, _rb)) = pipe_pair(&[ch(1)], MConnConfig::default()).await;
    drop(b);
    let reason = a.closed().await;
    assert!(matches!(reason, MConnError::Secret(_)), "{reason}");
    assert!(ra[0].recv().await.is_none());
    assert_eq!(a.send(1, Bytes::new()).await, Err(SendError::Closed));
    assert_eq!(a.try_send(1, Bytes::new()), Err(TrySendError::Closed));
}

#[tokio::test]
async fn flush_stop_delivers_everything_queued() {
    let chans = [ch(1).send_queue_capacity(200)];
    let ((a, _ra), (_b, mut rb)) = pipe_pair(&chans, MConnConfig::default()).await;
    for i in 0..200u32 {
        a.try_send(1, i.to_be_bytes().to_vec()).unwrap();
    }
    let reason = a.flush_stop().await;
    assert!(matches!(reason, MConnError::Stopped), "{reason}");
    for i in 0..200u32 {
        assert_eq!(rb[0].recv().await.unwrap()[..], i.to_be_bytes());
    }
    assert!(rb[0].recv().await.is_none(), "stream ends after the flush");
}

#[tokio::test]
async fn stop_closes_at_once() {
    let ((a, _ra), (b, mut rb)) = pipe_pair(&[ch(1)], MConnConfig::default()).await;
    a.stop();
    assert!(a.is_closed());
    assert!(matches!(a.closed().await, MConnError::Stopped));
    assert!(rb[0].recv().await.is_none());
    assert!(matches!(b.closed().await, MConnError::Secret(_)));
}

#[tokio::test]
async fn priorities_share_bandwidth_under_saturation() {
    let chans = [
        ch(1).priority(1).send_queue_capacity(4).recv_message_capacity(100_000),
        ch(2).priority(4).send_queue_capacity(4).recv_message_capacity(100_000),
    ];
    let config = MConnConfig { max_packet_msg_payload_size: 8 * 1024, ..MConnConfig::default() };
    let ((a, _ra), (_b, mut rb)) = pipe_pair(&chans, config).await;
    // Fill both queues before the writer runs, so both are saturated.
    let a = std::sync::Arc::new(a);
    let mut feeders = Vec::new();
    for c in [1u8, 2] {
        let a = a.clone();
        feeders
            .push(tokio::spawn(async move { while a.send(c, vec![c; 100_000]).await.is_ok() {} }));
    }
    let mut r2 = rb.remove(1);
    let mut r1 = rb.remove(0);
    let mut got = [0usize; 2];
    // Count until channel 2 has delivered 40 messages.
    while got[1] < 40 {
        tokio::select! {
            Some(_) = r1.recv() => got[0] += 1,
            Some(_) = r2.recv() => got[1] += 1,
        }
    }
    let ratio = got[1] as f64 / got[0].max(1) as f64;
    assert!((2.5..6.0).contains(&ratio), "priority 4 vs 1 delivered ratio {ratio} ({got:?})");
    a.stop();
    for f in feeders {
        f.await.unwrap();
    }
}

/// A dropped receiver gives its credit back: the peer keeps sending
/// (into the void) instead of stalling on that channel.
#[tokio::test]
async fn dropped_receiver_does_not_stall_the_sender() {
    let chans = [ch(1).recv_message_capacity(10_000).recv_buffer_capacity(30_000), ch(2)];
    let ((a, _ra), (_b, mut rb)) = pipe_pair(&chans, MConnConfig::default()).await;
    let fast = rb.remove(1);
    drop(rb); // channel 1's receiver, with whatever it had queued
    for _ in 0..100 {
        tokio::time::timeout(Duration::from_secs(5), a.send(1, vec![0u8; 10_000]))
            .await
            .expect("sender stalled")
            .unwrap();
    }
    drop(fast);
}

/// A peer that stops reading cannot block the writer forever: the
/// keepalive deadline closes the connection.
#[tokio::test(start_paused = true)]
async fn peer_that_stops_reading_is_dropped_at_the_keepalive_deadline() {
    let config = MConnConfig {
        ping_interval: Duration::from_secs(60),
        pong_timeout: Duration::from_secs(45),
        max_unacked_bytes: 0,
        ..MConnConfig::default()
    };
    // A tiny pipe, and a peer that never reads from it.
    let (a, b) = tokio::io::duplex(1024);
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let cfg = SecretConfig::default();
    let (x, y) = tokio::join!(
        SecretConnection::connect(a, &ka, None, &cfg),
        SecretConnection::accept(b, &kb, &cfg)
    );
    // The peer grants plenty of credit, then never reads again.
    let (_peer_r, mut peer_w) = y.unwrap().split();
    peer_w
        .write_all(&packet(Sum::Credit(PacketCredit { channel_id: 1, bytes: 1 << 30 })))
        .await
        .unwrap();
    let chans = [ch(1).send_queue_capacity(10)];
    let (conn, _rx) = MConnection::new(x.unwrap(), &chans, config).unwrap();
    for _ in 0..10 {
        conn.try_send(1, vec![0u8; 100_000]).unwrap();
    }
    let t0 = tokio::time::Instant::now();
    let reason = conn.closed().await;
    assert!(matches!(reason, MConnError::PongTimeout(_)), "{reason}");
    // The ping due at 60 s could not be sent; 45 s later the writer gives up.
    assert_eq!(t0.elapsed(), Duration::from_secs(105));
    // (Without the deadline on blocked writes this test never ends: the
    // writer would wait on the full pipe forever.)
}

#[tokio::test]
async fn oversized_send_is_refused_before_queueing() {
    let chans = [ch(1).recv_message_capacity(1000)];
    let ((a, _ra), _b) = pipe_pair(&chans, MConnConfig::default()).await;
    assert_eq!(a.send(1, vec![0u8; 1001]).await, Err(SendError::TooLarge { len: 1001, max: 1000 }));
    assert_eq!(
        a.try_send(1, vec![0u8; 1001]),
        Err(TrySendError::TooLarge { len: 1001, max: 1000 })
    );
}

/// With a flush throttle, a lone message still arrives, after at most
/// the throttle.
#[tokio::test(start_paused = true)]
async fn flush_throttle_delays_a_lone_message_at_most_the_throttle() {
    let config =
        MConnConfig { flush_throttle: Duration::from_millis(10), ..MConnConfig::default() };
    let ((a, _ra), (_b, mut rb)) = pipe_pair(&[ch(1)], config).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // let the initial grants settle
    let t0 = tokio::time::Instant::now();
    a.send(1, Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(&rb[0].recv().await.unwrap()[..], b"x");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(10) && waited <= Duration::from_millis(11),
        "{waited:?}"
    );
}

#[tokio::test]
async fn flush_stop_waits_for_the_peer_to_close() {
    let ((a, _ra), (b, mut rb)) = pipe_pair(&[ch(1)], MConnConfig::default()).await;
    a.send(1, Bytes::from_static(b"last words")).await.unwrap();
    let stop = tokio::spawn(async move { a.flush_stop().await });
    assert_eq!(&rb[0].recv().await.unwrap()[..], b"last words");
    // b sees the end of the stream and closes; then a's flush_stop returns.
    assert!(matches!(b.closed().await, MConnError::Secret(_)));
    drop(b);
    assert!(matches!(stop.await.unwrap(), MConnError::Stopped));
}
