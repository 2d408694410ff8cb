//! SecretConnection: an authenticated, encrypted byte pipe over any
//! `AsyncRead + AsyncWrite` stream, made by a Noise
//! `Noise_XX_25519_ChaChaPoly_SHA256` handshake (the `snow` crate).
//!
//! Wire format (docs/protocol.md, "SecretConnection"): every Noise message,
//! handshake or transport, travels as a frame of a 2-byte big-endian length
//! followed by that many bytes (at most 65535, the Noise maximum). Handshake
//! payloads are empty; the prologue [`PROLOGUE`] binds the protocol name and
//! version, so a peer speaking another version fails the handshake. After the
//! handshake each side knows the other's static key, hence its [`NodeId`].
//!
//! The transport phase uses snow's `StatelessTransportState` with explicit
//! nonces so the connection splits into a [`SecretReader`] and a
//! [`SecretWriter`] that run on different tasks (and cores) sharing the
//! cipher state without a lock (the stream itself is split with
//! `tokio::io::split`, which takes a brief lock per I/O call).
//! Each direction counts its own nonce from 0; a reordered, replayed or
//! altered frame fails authentication ([`SecretError::Decrypt`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use snow::resolvers::DefaultResolver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

pub use crate::crypto::CryptoBackend;
use crate::key::{NodeId, NodeKey};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// The Noise prologue: protocol name and version. Both sides must use the
/// same bytes or the handshake fails (Noise spec §6).
pub const PROLOGUE: &[u8] = b"plexus-p2p/1 Noise_XX_25519_ChaChaPoly_SHA256";
/// Largest Noise message, hence largest frame body, in bytes (Noise spec §3).
pub const MAX_FRAME_LEN: usize = 65535;
/// AEAD tag length in bytes (ChaChaPoly).
pub const TAG_LEN: usize = 16;
/// Largest plaintext carried by one transport frame: 65535 − 16 = 65519 bytes.
pub const MAX_FRAME_PAYLOAD: usize = MAX_FRAME_LEN - TAG_LEN;

/// A snow builder for [`NOISE_PARAMS`] with the given backend.
pub(crate) fn noise_builder(backend: CryptoBackend) -> snow::Builder<'static> {
    let params = NOISE_PARAMS.parse().expect("NOISE_PARAMS is a valid Noise protocol name");
    snow::Builder::with_resolver(params, backend.resolver())
}

/// The X25519 public key of a 32-byte private key.
pub(crate) fn x25519_public(private: &[u8]) -> Result<[u8; 32], String> {
    use snow::resolvers::CryptoResolver;
    if private.len() != 32 {
        return Err(format!("X25519 private key must be 32 bytes, got {}", private.len()));
    }
    let mut dh = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .ok_or("no X25519 implementation in snow's default resolver")?;
    dh.set(private);
    dh.pubkey().try_into().map_err(|_| "X25519 public key is not 32 bytes".to_string())
}

/// Handshake settings.
#[derive(Debug, Clone)]
pub struct SecretConfig {
    /// Whole-handshake deadline: three Noise messages must be exchanged
    /// within it or the handshake fails with [`SecretError::Timeout`].
    /// Default 10 s (CometBFT's `handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Largest handshake frame accepted, in bytes. XX messages with empty
    /// payloads are 32, 96 and 64 bytes; default 1024. A larger length
    /// prefix is refused before its body is read.
    pub max_handshake_frame: usize,
    /// Crypto implementation; default [`CryptoBackend::RingAwsLc`].
    pub backend: CryptoBackend,
}

impl Default for SecretConfig {
    fn default() -> Self {
        SecretConfig {
            handshake_timeout: Duration::from_secs(10),
            max_handshake_frame: 1024,
            backend: CryptoBackend::default(),
        }
    }
}

/// Why a secret handshake or an encrypted frame failed. Every variant is a
/// reason to drop the connection; none is a panic.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The handshake did not finish within `handshake_timeout`.
    #[error("secret handshake timed out after {0:?}")]
    Timeout(Duration),
    /// A frame length prefix exceeds what is allowed at this stage.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Length announced by the peer, bytes.
        len: usize,
        /// Limit, bytes.
        max: usize,
    },
    /// A transport frame too short to hold the AEAD tag.
    #[error("frame of {0} bytes is shorter than the 16-byte tag")]
    FrameTooShort(usize),
    /// The peer closed the stream in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received of the frame (prefix included).
        have: usize,
        /// Bytes the frame needed (prefix included).
        want: usize,
    },
    /// The peer closed the stream between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The peer's handshake message was malformed or failed its checks
    /// (garbage, wrong prologue or protocol, bad key).
    #[error("noise handshake failed: {0}")]
    Handshake(snow::Error),
    /// A transport frame failed authentication (tampered, replayed,
    /// reordered or not Noise at all).
    #[error("frame failed to decrypt (bad tag or nonce)")]
    Decrypt,
    /// The dialer expected one id and the handshake authenticated another.
    #[error("dialed {expected} but the peer authenticated as {actual}")]
    WrongPeer {
        /// The id in the address that was dialed.
        expected: NodeId,
        /// The id proved by the handshake.
        actual: NodeId,
    },
}

/// Reads one frame body into `rbuf`'s front. Returns `Ok(None)` on a clean
/// EOF at a frame boundary.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<Option<BytesMut>, SecretError> {
    loop {
        if rbuf.len() >= 2 {
            let len = u16::from_be_bytes([rbuf[0], rbuf[1]]) as usize;
            if len > max {
                return Err(SecretError::FrameTooLarge { len, max });
            }
            if rbuf.len() >= 2 + len {
                rbuf.advance(2);
                return Ok(Some(rbuf.split_to(len)));
            }
            rbuf.reserve(2 + len - rbuf.len());
        } else {
            rbuf.reserve(2);
        }
        if io.read_buf(rbuf).await? == 0 {
            return match rbuf.len() {
                0 => Ok(None),
                have => {
                    let want = if have >= 2 {
                        2 + u16::from_be_bytes([rbuf[0], rbuf[1]]) as usize
                    } else {
                        2
                    };
                    Err(SecretError::Truncated { have, want })
                }
            };
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    io.write_all(&out).await?;
    io.flush().await
}

/// An established secret connection: the stream, the transport ciphers and
/// the authenticated identity of the remote node.
pub struct SecretConnection<S> {
    io: S,
    rbuf: BytesMut,
    cipher: Arc<snow::StatelessTransportState>,
    remote_id: NodeId,
    remote_public_key: [u8; 32],
}

impl<S> std::fmt::Debug for SecretConnection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretConnection").field("remote_id", &self.remote_id).finish()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SecretConnection<S> {
    /// Runs the Noise XX handshake as the dialer (initiator). With
    /// `expected` set, the remote must authenticate as that id.
    ///
    /// # Errors
    /// [`SecretError::Timeout`] past `config.handshake_timeout`;
    /// [`SecretError::WrongPeer`] if `expected` does not match; any framing,
    /// I/O or Noise error from the peer's messages.
    pub async fn connect(
        io: S,
        key: &NodeKey,
        expected: Option<NodeId>,
        config: &SecretConfig,
    ) -> Result<Self, SecretError> {
        let conn =
            tokio::time::timeout(config.handshake_timeout, Self::handshake(io, key, true, config))
                .await
                .map_err(|_| SecretError::Timeout(config.handshake_timeout))??;
        match expected {
            Some(expected) if expected != conn.remote_id => {
                Err(SecretError::WrongPeer { expected, actual: conn.remote_id })
            }
            _ => Ok(conn),
        }
    }

    /// Runs the Noise XX handshake as the listener (responder).
    ///
    /// # Errors
    /// As [`SecretConnection::connect`], without `WrongPeer`.
    pub async fn accept(io: S, key: &NodeKey, config: &SecretConfig) -> Result<Self, SecretError> {
        tokio::time::timeout(config.handshake_timeout, Self::handshake(io, key, false, config))
            .await
            .map_err(|_| SecretError::Timeout(config.handshake_timeout))?
    }

    async fn handshake(
        mut io: S,
        key: &NodeKey,
        initiator: bool,
        config: &SecretConfig,
    ) -> Result<Self, SecretError> {
        let builder = noise_builder(config.backend)
            .local_private_key(key.private_key())
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(SecretError::Handshake)?;
        let mut hs = if initiator { builder.build_initiator() } else { builder.build_responder() }
            .map_err(SecretError::Handshake)?;
        let mut rbuf = BytesMut::with_capacity(config.max_handshake_frame + 2);
        let mut msg = vec![0u8; MAX_FRAME_LEN];
        let mut payload = vec![0u8; MAX_FRAME_LEN];
        while !hs.is_handshake_finished() {
            if hs.is_my_turn() {
                let n = hs.write_message(&[], &mut msg).map_err(SecretError::Handshake)?;
                write_frame(&mut io, &msg[..n]).await?;
            } else {
                let frame = read_frame(&mut io, &mut rbuf, config.max_handshake_frame)
                    .await?
                    .ok_or(SecretError::Closed)?;
                hs.read_message(&frame, &mut payload).map_err(SecretError::Handshake)?;
            }
        }
        let remote: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(SecretError::Handshake(snow::Error::Input))?;
        let cipher = hs.into_stateless_transport_mode().map_err(SecretError::Handshake)?;
        Ok(SecretConnection {
            io,
            rbuf,
            cipher: Arc::new(cipher),
            remote_id: NodeId::from_public_key(&remote),
            remote_public_key: remote,
        })
    }

    /// The authenticated id of the remote node.
    pub fn remote_id(&self) -> NodeId {
        self.remote_id
    }

    /// The remote node's static X25519 public key (32 bytes).
    pub fn remote_public_key(&self) -> &[u8; 32] {
        &self.remote_public_key
    }

    /// Splits into independently usable read and write halves.
    pub fn split(self) -> (SecretReader<ReadHalf<S>>, SecretWriter<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            SecretReader { io: r, rbuf: self.rbuf, cipher: self.cipher.clone(), nonce: 0 },
            SecretWriter { io: w, cipher: self.cipher, nonce: 0, out: Vec::new() },
        )
    }
}

/// The receiving half of a [`SecretConnection`].
pub struct SecretReader<R> {
    io: R,
    rbuf: BytesMut,
    cipher: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl<R: AsyncRead + Unpin> SecretReader<R> {
    /// Waits for at least one frame, then decrypts every complete frame
    /// already received, appending the plaintext to `out`. Returns the
    /// number of plaintext bytes appended (0 for an empty frame).
    ///
    /// # Errors
    /// [`SecretError::Closed`] on a clean EOF between frames,
    /// [`SecretError::Truncated`] on EOF inside one,
    /// [`SecretError::FrameTooShort`], [`SecretError::Decrypt`], I/O errors.
    pub async fn read_into(&mut self, out: &mut BytesMut) -> Result<usize, SecretError> {
        let start = out.len();
        let Some(frame) = read_frame(&mut self.io, &mut self.rbuf, MAX_FRAME_LEN).await? else {
            return Err(SecretError::Closed);
        };
        self.decrypt(&frame, out)?;
        // Drain frames that are already complete in the buffer, no more I/O.
        while self.rbuf.len() >= 2 {
            let len = u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]) as usize;
            if self.rbuf.len() < 2 + len {
                break;
            }
            self.rbuf.advance(2);
            let frame = self.rbuf.split_to(len);
            self.decrypt(&frame, out)?;
        }
        // Keep the read buffer large enough for a full 64 KiB socket read.
        if self.rbuf.capacity() < 2 * (MAX_FRAME_LEN + 2) {
            self.rbuf.reserve(2 * (MAX_FRAME_LEN + 2));
        }
        Ok(out.len() - start)
    }

    fn decrypt(&mut self, frame: &[u8], out: &mut BytesMut) -> Result<(), SecretError> {
        if frame.len() < TAG_LEN {
            return Err(SecretError::FrameTooShort(frame.len()));
        }
        let at = out.len();
        out.resize(at + frame.len() - TAG_LEN, 0);
        let n = match self.cipher.read_message(self.nonce, frame, &mut out[at..]) {
            Ok(n) => n,
            Err(_) => {
                out.truncate(at);
                return Err(SecretError::Decrypt);
            }
        };
        out.truncate(at + n);
        self.nonce += 1;
        Ok(())
    }
}

/// The sending half of a [`SecretConnection`].
pub struct SecretWriter<W> {
    io: W,
    cipher: Arc<snow::StatelessTransportState>,
    nonce: u64,
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> SecretWriter<W> {
    /// Encrypts `plain` as frames of at most [`MAX_FRAME_PAYLOAD`] bytes and
    /// writes them all with one `write_all`. An empty `plain` writes nothing.
    ///
    /// # Errors
    /// I/O errors of the stream.
    /// Does not flush; call [`SecretWriter::flush`] for buffered streams.
    pub async fn write_all(&mut self, plain: &[u8]) -> Result<(), SecretError> {
        self.seal(plain);
        let res = self.io.write_all(&self.out).await;
        self.out.clear();
        res.map_err(SecretError::Io)
    }

    fn seal(&mut self, plain: &[u8]) {
        self.out.clear();
        let frames = plain.len().div_ceil(MAX_FRAME_PAYLOAD);
        self.out.reserve(plain.len() + frames * (2 + TAG_LEN));
        for chunk in plain.chunks(MAX_FRAME_PAYLOAD) {
            let at = self.out.len();
            let len = chunk.len() + TAG_LEN;
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
            self.out.resize(at + 2 + len, 0);
            let n = self
                .cipher
                .write_message(self.nonce, chunk, &mut self.out[at + 2..])
                .expect("chunk + tag fits the 65535-byte Noise limit and the buffer");
            debug_assert_eq!(n, len);
            self.nonce += 1;
        }
    }

    /// Flushes the stream.
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn flush(&mut self) -> Result<(), SecretError> {
        self.io.flush().await.map_err(SecretError::Io)
    }

    /// Shuts down the write side of the stream (TCP FIN).
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn shutdown(&mut self) -> Result<(), SecretError> {
        self.io.shutdown().await.map_err(SecretError::Io)
    }
}
