//! SecretConnection over loopback TCP and in-memory pipes: good handshakes,
//! and every kind of bad input ending in a typed error, never a hang.

use std::time::Duration;

use bytes::BytesMut;
use plexus_p2p::secret::{SecretConfig, SecretConnection, SecretError, PROLOGUE};
use plexus_p2p::{CryptoBackend, NodeKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

static CFG: std::sync::LazyLock<SecretConfig> = std::sync::LazyLock::new(SecretConfig::default);

fn cfg() -> &'static SecretConfig {
    &CFG
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.unwrap(), b.unwrap().0)
}

fn pipe() -> (DuplexStream, DuplexStream) {
    tokio::io::duplex(1 << 20)
}

#[tokio::test]
async fn handshake_over_tcp_authenticates_both_sides() {
    let (a, b) = tcp_pair().await;
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let (x, y) = tokio::join!(
        SecretConnection::connect(a, &ka, Some(kb.node_id()), cfg()),
        SecretConnection::accept(b, &kb, cfg())
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.remote_id(), kb.node_id());
    assert_eq!(y.remote_id(), ka.node_id());
    assert_eq!(x.remote_public_key(), kb.public_key());

    // Data flows both ways, in frames larger and smaller than one Noise message.
    let (mut xr, mut xw) = x.split();
    let (mut yr, mut yw) = y.split();
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let send = tokio::spawn(async move {
        xw.write_all(&big).await.unwrap();
        xw.write_all(b"").await.unwrap();
        xw
    });
    let mut got = BytesMut::new();
    while got.len() < 200_000 {
        yr.read_into(&mut got).await.unwrap();
    }
    assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
    send.await.unwrap();
    yw.write_all(b"pong").await.unwrap();
    let mut back = BytesMut::new();
    xr.read_into(&mut back).await.unwrap();
    assert_eq!(&back[..], b"pong");
}

#[tokio::test]
async fn every_backend_pair_interoperates_over_a_pipe() {
    let all = [CryptoBackend::RustCrypto, CryptoBackend::Ring, CryptoBackend::RingAwsLc];
    for ba in all {
        for bb in all {
            let (a, b) = pipe();
            let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
            let ca = SecretConfig { backend: ba, ..cfg().clone() };
            let cb = SecretConfig { backend: bb, ..cfg().clone() };
            let (x, y) = tokio::join!(
                SecretConnection::connect(a, &ka, Some(kb.node_id()), &ca),
                SecretConnection::accept(b, &kb, &cb)
            );
            let (_, mut xw) = x.unwrap().split();
            let (mut yr, _) = y.unwrap().split();
            xw.write_all(b"hello").await.unwrap();
            let mut got = BytesMut::new();
            yr.read_into(&mut got).await.unwrap();
            assert_eq!(&got[..], b"hello", "{ba:?} -> {bb:?}");
        }
    }
}

#[tokio::test]
async fn dialer_expecting_another_id_gets_wrong_peer() {
    let (a, b) = pipe();
    let (ka, kb, other) = (NodeKey::generate(), NodeKey::generate(), NodeKey::generate());
    let (x, _y) = tokio::join!(
        SecretConnection::connect(a, &ka, Some(other.node_id()), cfg()),
        SecretConnection::accept(b, &kb, cfg())
    );
    match x {
        Err(SecretError::WrongPeer { expected, actual }) => {
            assert_eq!(expected, other.node_id());
            assert_eq!(actual, kb.node_id());
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_over_tcp_is_a_handshake_error() {
    let (mut a, b) = tcp_pair().await;
    let kb = NodeKey::generate();
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let err = SecretConnection::accept(b, &kb, cfg()).await.unwrap_err();
    // "GE" read as a length of 0x4745 = 18245 bytes: over the handshake limit.
    assert!(matches!(err, SecretError::FrameTooLarge { len: 18245, max: 1024 }), "{err}");
}

#[tokio::test]
async fn garbage_from_the_dialer_is_a_handshake_error() {
    let (mut a, b) = pipe();
    let kb = NodeKey::generate();
    // A well-framed first message of the wrong size for XX's `e` token.
    a.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    let err = SecretConnection::accept(b, &kb, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::Handshake(_)), "{err}");
}

#[tokio::test]
async fn garbage_reply_to_the_dialer_is_a_handshake_error() {
    let (a, mut b) = pipe();
    let ka = NodeKey::generate();
    let peer = tokio::spawn(async move {
        let mut first = [0u8; 34];
        b.read_exact(&mut first).await.unwrap();
        let mut junk = vec![0u8, 96];
        junk.extend((0..96).map(|i| (i * 31) as u8));
        b.write_all(&junk).await.unwrap();
        b
    });
    let err = SecretConnection::connect(a, &ka, None, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::Handshake(_)), "{err}");
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn other_prologue_fails_the_handshake() {
    // A peer speaking another protocol version (different prologue).
    let (a, mut b) = pipe();
    let ka = NodeKey::generate();
    let kb = NodeKey::generate();
    let peer = tokio::spawn(async move {
        let params = plexus_p2p::secret::NOISE_PARAMS.parse().unwrap();
        let mut hs = snow::Builder::new(params)
            .local_private_key(kb.private_key())
            .unwrap()
            .prologue(b"plexus-p2p/0 something else")
            .unwrap()
            .build_responder()
            .unwrap();
        let (mut buf, mut out) = ([0u8; 1024], [0u8; 1024]);
        let mut len = [0u8; 2];
        b.read_exact(&mut len).await.unwrap();
        let n = u16::from_be_bytes(len) as usize;
        b.read_exact(&mut buf[..n]).await.unwrap();
        hs.read_message(&buf[..n], &mut out).unwrap();
        let n = hs.write_message(&[], &mut buf).unwrap();
        b.write_all(&(n as u16).to_be_bytes()).await.unwrap();
        b.write_all(&buf[..n]).await.unwrap();
        b
    });
    assert_ne!(PROLOGUE, b"plexus-p2p/0 something else");
    let err = SecretConnection::connect(a, &ka, None, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::Handshake(_)), "{err}");
    drop(peer.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn stalled_peer_times_out() {
    let (a, _b) = pipe();
    let ka = NodeKey::generate();
    let config = SecretConfig { handshake_timeout: Duration::from_secs(10), ..cfg().clone() };
    let t0 = tokio::time::Instant::now();
    let err = SecretConnection::connect(a, &ka, None, &config).await.unwrap_err();
    assert!(matches!(err, SecretError::Timeout(d) if d == Duration::from_secs(10)), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn peer_stalling_mid_handshake_times_out() {
    let (mut a, b) = pipe();
    let kb = NodeKey::generate();
    let dialer = tokio::spawn(async move {
        // Send a valid first message, then go silent.
        let params = plexus_p2p::secret::NOISE_PARAMS.parse().unwrap();
        let ka = NodeKey::generate();
        let mut hs = snow::Builder::new(params)
            .local_private_key(ka.private_key())
            .unwrap()
            .prologue(PROLOGUE)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = [0u8; 128];
        let n = hs.write_message(&[], &mut buf).unwrap();
        a.write_all(&(n as u16).to_be_bytes()).await.unwrap();
        a.write_all(&buf[..n]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        a
    });
    let err = SecretConnection::accept(b, &kb, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::Timeout(_)), "{err}");
    dialer.abort();
}

#[tokio::test]
async fn oversized_handshake_frame_is_refused_unread() {
    let (mut a, b) = pipe();
    let kb = NodeKey::generate();
    a.write_all(&[0xff, 0xff]).await.unwrap();
    let err = SecretConnection::accept(b, &kb, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::FrameTooLarge { len: 65535, max: 1024 }), "{err}");
}

#[tokio::test]
async fn truncated_frame_and_closed_stream() {
    let (mut a, b) = pipe();
    let kb = NodeKey::generate();
    a.write_all(&[0, 32, 1, 2, 3]).await.unwrap();
    drop(a);
    let err = SecretConnection::accept(b, &kb, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::Truncated { have: 5, want: 34 }), "{err}");

    let (a, b) = pipe();
    drop(a);
    let err = SecretConnection::accept(b, &kb, cfg()).await.unwrap_err();
    assert!(matches!(err, SecretError::Closed), "{err}");
}

/// After the handshake: a flipped bit, a replayed frame and a runt frame
/// all fail with typed errors.
#[tokio::test]
async fn tampered_transport_frames_fail_to_decrypt() {
    for case in ["flip", "replay", "runt"] {
        let (a, b) = pipe();
        // A man in the middle: forward a->b through a tamperable hop.
        let (mitm_a, mitm_b_side) = pipe();
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let mut a_side = a;
        let mut b_side = mitm_a;
        let relay = tokio::spawn(async move {
            // Relay the handshake untouched in both directions, then tamper
            // with the first transport frame a sends.
            let mut hs_frames = 0;
            let mut a_buf = [0u8; 2];
            loop {
                tokio::select! {
                    r = a_side.read_exact(&mut a_buf) => {
                        if r.is_err() { break; }
                        let n = u16::from_be_bytes(a_buf) as usize;
                        let mut body = vec![0u8; n];
                        a_side.read_exact(&mut body).await.unwrap();
                        hs_frames += 1;
                        if hs_frames <= 2 {
                            b_side.write_all(&a_buf).await.unwrap();
                            b_side.write_all(&body).await.unwrap();
                            continue;
                        }
                        match case {
                            "flip" => {
                                body[3] ^= 1;
                                b_side.write_all(&a_buf).await.unwrap();
                                b_side.write_all(&body).await.unwrap();
                            }
                            "replay" => {
                                for _ in 0..2 {
                                    b_side.write_all(&a_buf).await.unwrap();
                                    b_side.write_all(&body).await.unwrap();
                                }
                            }
                            _ => {
                                b_side.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
                            }
                        }
                    }
                    r = b_side.read_u8() => {
                        let Ok(x) = r else { break };
                        a_side.write_u8(x).await.unwrap();
                    }
                }
            }
        });
        let (x, y) = tokio::join!(
            SecretConnection::connect(b, &ka, Some(kb.node_id()), cfg()),
            SecretConnection::accept(mitm_b_side, &kb, cfg())
        );
        let (_, mut xw) = x.unwrap().split();
        let (mut yr, _) = y.unwrap().split();
        xw.write_all(b"secret message").await.unwrap();
        let mut got = BytesMut::new();
        let res = async {
            loop {
                yr.read_into(&mut got).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), SecretError>(())
        }
        .await;
        let err = res.unwrap_err();
        match case {
            "flip" => assert!(matches!(err, SecretError::Decrypt), "{case}: {err}"),
            "replay" => {
                assert_eq!(&got[..], b"secret message");
                assert!(matches!(err, SecretError::Decrypt), "{case}: {err}");
            }
            _ => assert!(matches!(err, SecretError::FrameTooShort(3)), "{case}: {err}"),
        }
        relay.abort();
    }
}
