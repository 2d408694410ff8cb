//! SecretConnection (Noise XX, 2-byte frames), both roles:
//! - the responder fed arbitrary bytes as the initiator's handshake, and
//!   the initiator fed arbitrary bytes after its first message;
//! - a real handshake, then arbitrary plaintext frames through a proxy
//!   that flips one byte of the transport bytes (or none): the responder
//!   must deliver exactly the frames sent, in order, up to the first
//!   error, and never a tampered one.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plexus_p2p::secret::{SecretConfig, SecretConnection, MAX_FRAME_PAYLOAD};
use plexus_p2p::NodeKey;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

#[derive(Arbitrary, Debug)]
enum Input {
    ToResponder(Vec<u8>),
    ToInitiator(Vec<u8>),
    Transport { frames: Vec<Vec<u8>>, big: Option<u16>, flip: Option<(u32, u8)> },
}

fn keys() -> &'static (NodeKey, NodeKey) {
    static K: OnceLock<(NodeKey, NodeKey)> = OnceLock::new();
    K.get_or_init(|| {
        (NodeKey::from_private_key(&[1; 32]).unwrap(), NodeKey::from_private_key(&[2; 32]).unwrap())
    })
}

fn rt() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap())
}

async fn to_responder(bytes: Vec<u8>) {
    let (mut c, s) = duplex(1 << 20);
    let cfg = SecretConfig::default();
    let accept = SecretConnection::accept(s, &keys().1, &cfg);
    let feed = async move {
        let _ = c.write_all(&bytes).await;
        let _ = c.shutdown().await;
        // Keep reading what the responder writes, so it never blocks.
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink).await;
    };
    let (r, ()) = tokio::join!(accept, feed);
    if let Ok(mut conn) = r {
        while conn.recv_frame().await.is_ok() {}
    }
}

async fn to_initiator(bytes: Vec<u8>) {
    let (c, mut s) = duplex(1 << 20);
    let cfg = SecretConfig::default();
    let connect = SecretConnection::connect(c, &keys().0, None, &cfg);
    let feed = async move {
        let mut first = [0u8; 34];
        let _ = s.read_exact(&mut first).await;
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    };
    let (r, ()) = tokio::join!(connect, feed);
    if let Ok(mut conn) = r {
        while conn.recv_frame().await.is_ok() {}
    }
}

async fn transport(mut frames: Vec<Vec<u8>>, big: Option<u16>, flip: Option<(u32, u8)>) {
    if let Some(n) = big {
        frames.push(vec![0xab; MAX_FRAME_PAYLOAD - usize::from(n % 64)]);
    }
    for f in &mut frames {
        f.truncate(MAX_FRAME_PAYLOAD);
    }
    let (ci, mut pi) = duplex(1 << 22);
    let (mut pr, rr) = duplex(1 << 22);
    let cfg = SecretConfig::default();
    let sent = frames.clone();
    let initiator = async {
        let mut c = SecretConnection::connect(ci, &keys().0, None, &cfg).await.expect("handshake");
        for f in &sent {
            c.send_frame(f).await.expect("send");
        }
    };
    let responder = async {
        let mut r = SecretConnection::accept(rr, &keys().1, &cfg).await.expect("handshake");
        let mut got = Vec::new();
        while let Ok(f) = r.recv_frame().await {
            got.push(f);
        }
        got
    };
    let proxy = async {
        // The handshake passes untouched: messages 1, 2, 3 (34, 98, 66 bytes).
        let mut m = vec![0u8; 34];
        pi.read_exact(&mut m).await.unwrap();
        pr.write_all(&m).await.unwrap();
        let mut m = vec![0u8; 98];
        pr.read_exact(&mut m).await.unwrap();
        pi.write_all(&m).await.unwrap();
        let mut m = vec![0u8; 66];
        pi.read_exact(&mut m).await.unwrap();
        pr.write_all(&m).await.unwrap();
        let mut rest = Vec::new();
        pi.read_to_end(&mut rest).await.unwrap();
        let flipped = match flip {
            Some((at, x)) if !rest.is_empty() && x != 0 => {
                let at = at as usize % rest.len();
                rest[at] ^= x;
                Some(at)
            }
            _ => None,
        };
        pr.write_all(&rest).await.unwrap();
        pr.shutdown().await.unwrap();
        flipped
    };
    let ((), got, flipped) = tokio::join!(initiator, responder, proxy);
    assert!(got.len() <= frames.len());
    for (g, f) in got.iter().zip(&frames) {
        assert_eq!(&g[..], &f[..], "a frame arrived changed");
    }
    if flipped.is_none() {
        assert_eq!(got.len(), frames.len(), "an untouched frame was lost");
    }
}

fuzz_target!(|input: Input| {
    rt().block_on(async move {
        match input {
            Input::ToResponder(b) => to_responder(b).await,
            Input::ToInitiator(b) => to_initiator(b).await,
            Input::Transport { frames, big, flip } => transport(frames, big, flip).await,
        }
    })
});
