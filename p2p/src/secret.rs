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
//! The transport phase follows the Noise spec's `CipherState` with the two
//! keys of `Split()` (taken from snow with its `risky-raw-split` feature):
//! ChaCha20-Poly1305 from ring, empty associated data, and the 96-bit nonce
//! `0x00000000 || LE64(n)` with `n` counting frames from 0 in each
//! direction. ring seals and opens in place, so neither side copies a frame
//! (snow's transport API copies every frame once). A reordered, replayed or
//! altered frame fails authentication ([`SecretError::Decrypt`]).
//!
//! The connection splits into a [`SecretReader`] and a [`SecretWriter`]
//! that run on different tasks (and cores); each owns its direction's key
//! and nonce. The stream itself is split with `tokio::io::split`, which
//! takes a brief lock per I/O call.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use snow::resolvers::DefaultResolver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

pub use crate::crypto::CryptoBackend;
use crate::fault::{Fault, Misbehavior};
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
#[non_exhaustive]
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

impl SecretError {
    /// Whose fault: a garbage handshake, a bad frame length or a frame
    /// that fails to decrypt is the peer's; I/O, EOF and timeouts are the
    /// network's; a dialed id mismatch is the peer's (it is not who the
    /// address said).
    pub fn fault(&self) -> Fault {
        match self {
            SecretError::Io(_)
            | SecretError::Timeout(_)
            | SecretError::Truncated { .. }
            | SecretError::Closed => Fault::Io,
            SecretError::FrameTooLarge { .. }
            | SecretError::FrameTooShort(_)
            | SecretError::Handshake(_)
            | SecretError::Decrypt
            | SecretError::WrongPeer { .. } => Fault::Peer,
        }
    }

    /// The reputation-table entry of a peer fault after the handshake
    /// (`None` otherwise; before the handshake there is no identity to
    /// score, and the peer manager counts the failure against the IP).
    pub fn misbehavior(&self) -> Option<Misbehavior> {
        match self.fault() {
            Fault::Peer => Some(Misbehavior::MalformedFrame),
            _ => None,
        }
    }
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
    send_key: LessSafeKey,
    recv_key: LessSafeKey,
    send_nonce: u64,
    recv_nonce: u64,
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
        // Split(): the first key encrypts initiator -> responder.
        let (k1, k2) = hs.dangerously_get_raw_split();
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        Ok(SecretConnection {
            io,
            rbuf,
            send_key: chacha_key(&send),
            recv_key: chacha_key(&recv),
            send_nonce: 0,
            recv_nonce: 0,
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

    /// Sends `plain` (at most [`MAX_FRAME_PAYLOAD`] bytes) as one
    /// transport frame, before the connection is split: used for the
    /// NodeInfo exchange.
    ///
    /// # Errors
    /// [`SecretError::FrameTooLarge`] for more than one frame; I/O errors.
    pub async fn send_frame(&mut self, plain: &[u8]) -> Result<(), SecretError> {
        if plain.len() > MAX_FRAME_PAYLOAD {
            return Err(SecretError::FrameTooLarge { len: plain.len(), max: MAX_FRAME_PAYLOAD });
        }
        let mut body = plain.to_vec();
        let tag = self
            .send_key
            .seal_in_place_separate_tag(nonce(self.send_nonce), Aad::empty(), &mut body)
            .expect("ChaCha20-Poly1305 seals a frame");
        self.send_nonce += 1;
        body.extend_from_slice(tag.as_ref());
        write_frame(&mut self.io, &body).await?;
        Ok(())
    }

    /// Receives one transport frame's plaintext, before the connection is
    /// split. Frames after it stay buffered for the split reader.
    ///
    /// # Errors
    /// As [`SecretReader::read_frames`].
    pub async fn recv_frame(&mut self) -> Result<Bytes, SecretError> {
        let frame = read_frame(&mut self.io, &mut self.rbuf, MAX_FRAME_LEN)
            .await?
            .ok_or(SecretError::Closed)?;
        open_frame(&self.recv_key, &mut self.recv_nonce, frame)
    }

    /// Splits into independently usable read and write halves.
    pub fn split(self) -> (SecretReader<ReadHalf<S>>, SecretWriter<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.io);
        (
            SecretReader {
                io: r,
                rbuf: self.rbuf,
                key: self.recv_key,
                nonce: self.recv_nonce,
                failed: None,
                bulk: false,
                small_reads: 0,
            },
            SecretWriter {
                io: w,
                key: self.send_key,
                nonce: self.send_nonce,
                heads: Vec::new(),
                tags: Vec::new(),
                out: Vec::new(),
            },
        )
    }
}

/// Cuts `len` plaintext bytes into frames: each frame ends at the last of
/// the ascending `cuts` that keeps it within [`MAX_FRAME_PAYLOAD`] bytes, or
/// at that size when no cut fits.
fn frame_ranges(len: usize, cuts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let (mut out, mut start, mut k) = (Vec::new(), 0usize, 0usize);
    while start < len {
        let limit = (start + MAX_FRAME_PAYLOAD).min(len);
        let mut end = start;
        while k < cuts.len() && cuts[k] <= limit {
            if cuts[k] > start {
                end = cuts[k];
            }
            k += 1;
        }
        if end == start {
            end = limit;
        }
        out.push(start..end);
        start = end;
    }
    out
}

fn chacha_key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte ChaCha20 key"))
}

/// Opens one transport frame body in place with the next nonce; returns
/// its plaintext as a slice of the same buffer.
fn open_frame(
    key: &LessSafeKey,
    counter: &mut u64,
    mut frame: BytesMut,
) -> Result<Bytes, SecretError> {
    if frame.len() < TAG_LEN {
        return Err(SecretError::FrameTooShort(frame.len()));
    }
    let n = key
        .open_in_place(nonce(*counter), Aad::empty(), &mut frame)
        .map_err(|_| SecretError::Decrypt)?
        .len();
    *counter += 1;
    frame.truncate(n);
    Ok(frame.freeze())
}

/// The Noise ChaChaPoly nonce for counter `n`: four zero bytes, then `n`
/// little-endian (Noise spec §12.3).
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

/// The receiving half of a [`SecretConnection`].
pub struct SecretReader<R> {
    io: R,
    rbuf: BytesMut,
    key: LessSafeKey,
    nonce: u64,
    failed: Option<SecretError>,
    /// Reading in bulk: ask the stream for [`READ_CHUNK`] at a time.
    bulk: bool,
    /// Small reads in a row while in bulk mode.
    small_reads: u32,
}

/// Bytes requested from the stream per read in bulk: two full frames.
const READ_CHUNK: usize = 2 * (MAX_FRAME_LEN + 2);

/// Bytes requested per read while traffic is light. An idle connection
/// (pings, small messages) then holds a few KiB of read buffer instead of
/// [`READ_CHUNK`], whose pages a buffer advancing frame by frame would
/// otherwise touch one after another.
const SMALL_READ: usize = 4096;

/// A read of at least this many plaintext bytes switches to bulk reads.
const BULK_AFTER: usize = 16 * 1024;

/// Reads below [`SMALL_READ`] in a row that end bulk reads (and free the
/// large buffer once it is empty).
const SMALL_READS_TO_IDLE: u32 = 64;

impl<R: AsyncRead + Unpin> SecretReader<R> {
    /// Waits for at least one frame, then decrypts every complete frame
    /// already received, in place, and appends each frame's plaintext to
    /// `out` as a zero-copy slice of the read buffer. Returns the number of
    /// plaintext bytes appended (0 for empty frames).
    ///
    /// # Errors
    /// [`SecretError::Closed`] on a clean EOF between frames,
    /// [`SecretError::Truncated`] on EOF inside one,
    /// [`SecretError::FrameTooShort`], [`SecretError::Decrypt`], I/O errors.
    pub async fn read_frames(&mut self, out: &mut Vec<Bytes>) -> Result<usize, SecretError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.bulk && self.rbuf.capacity() - self.rbuf.len() < MAX_FRAME_LEN + 2 {
            self.rbuf.reserve(READ_CHUNK);
        } else if !self.bulk && self.rbuf.capacity() - self.rbuf.len() < SMALL_READ / 2 {
            self.rbuf.reserve(SMALL_READ);
        }
        let Some(frame) = read_frame(&mut self.io, &mut self.rbuf, MAX_FRAME_LEN).await? else {
            return Err(SecretError::Closed);
        };
        let mut n = self.open(frame, out)?;
        // Frames already complete in the buffer, without more I/O. A bad
        // one among them is reported on the next call, after the good
        // frames before it have been handed over.
        while self.rbuf.len() >= 2 {
            let len = u16::from_be_bytes([self.rbuf[0], self.rbuf[1]]) as usize;
            if self.rbuf.len() < 2 + len {
                break;
            }
            self.rbuf.advance(2);
            let frame = self.rbuf.split_to(len);
            match self.open(frame, out) {
                Ok(k) => n += k,
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        self.adapt(n);
        Ok(n)
    }

    /// Chooses the next read size from this one's plaintext bytes `n`.
    fn adapt(&mut self, n: usize) {
        if n >= BULK_AFTER {
            self.bulk = true;
            self.small_reads = 0;
        } else if self.bulk && n < SMALL_READ {
            self.small_reads += 1;
            if self.small_reads >= SMALL_READS_TO_IDLE {
                self.bulk = false;
                self.small_reads = 0;
                if self.rbuf.is_empty() {
                    // Let go of the large buffer (freed once the frames
                    // handed out of it are dropped).
                    self.rbuf = BytesMut::new();
                }
            }
        }
    }

    /// Like [`SecretReader::read_frames`], copying the plaintext into one
    /// contiguous buffer.
    ///
    /// # Errors
    /// As [`SecretReader::read_frames`].
    pub async fn read_into(&mut self, out: &mut BytesMut) -> Result<usize, SecretError> {
        let mut frames = Vec::new();
        let n = self.read_frames(&mut frames).await?;
        for f in frames {
            out.extend_from_slice(&f);
        }
        Ok(n)
    }

    fn open(&mut self, frame: BytesMut, out: &mut Vec<Bytes>) -> Result<usize, SecretError> {
        let plain = open_frame(&self.key, &mut self.nonce, frame)?;
        let n = plain.len();
        out.push(plain);
        Ok(n)
    }
}

/// The sending half of a [`SecretConnection`].
pub struct SecretWriter<W> {
    io: W,
    key: LessSafeKey,
    nonce: u64,
    heads: Vec<[u8; 2]>,
    tags: Vec<ring::aead::Tag>,
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> SecretWriter<W> {
    /// Encrypts `plain` as frames of at most [`MAX_FRAME_PAYLOAD`] bytes and
    /// writes them all. An empty `plain` writes nothing. Does not flush.
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn write_all(&mut self, plain: &[u8]) -> Result<(), SecretError> {
        let mut buf = plain.to_vec();
        self.write_stream(&mut buf, &[]).await
    }

    /// Encrypts `buf` in place as frames and writes them. `cuts` are
    /// ascending offsets where a frame may end (ends of packets): each
    /// frame ends at the last cut that keeps it within
    /// [`MAX_FRAME_PAYLOAD`] bytes, or is cut at that size when no cut
    /// fits, so whole packets travel in one frame whenever they can. The
    /// contents of `buf` are ciphertext afterwards. Uses one vectored write
    /// when the stream supports it, else copies into one buffer.
    ///
    /// # Errors
    /// I/O errors of the stream.
    pub async fn write_stream(
        &mut self,
        buf: &mut [u8],
        cuts: &[usize],
    ) -> Result<(), SecretError> {
        self.heads.clear();
        self.tags.clear();
        let ranges = frame_ranges(buf.len(), cuts);
        for r in &ranges {
            let tag = self
                .key
                .seal_in_place_separate_tag(nonce(self.nonce), Aad::empty(), &mut buf[r.clone()])
                .expect("ChaCha20-Poly1305 seals up to 2^38 bytes");
            self.nonce += 1;
            self.heads.push(((r.len() + TAG_LEN) as u16).to_be_bytes());
            self.tags.push(tag);
        }
        if ranges.is_empty() {
            return Ok(());
        }
        if self.io.is_write_vectored() {
            let mut slices = Vec::with_capacity(3 * ranges.len());
            for (i, r) in ranges.iter().enumerate() {
                slices.push(IoSlice::new(&self.heads[i]));
                slices.push(IoSlice::new(&buf[r.clone()]));
                slices.push(IoSlice::new(self.tags[i].as_ref()));
            }
            let mut rest = &mut slices[..];
            while !rest.is_empty() {
                let n = self.io.write_vectored(rest).await?;
                if n == 0 {
                    return Err(SecretError::Io(io::ErrorKind::WriteZero.into()));
                }
                IoSlice::advance_slices(&mut rest, n);
            }
        } else {
            self.out.clear();
            for (i, r) in ranges.iter().enumerate() {
                self.out.extend_from_slice(&self.heads[i]);
                self.out.extend_from_slice(&buf[r.clone()]);
                self.out.extend_from_slice(self.tags[i].as_ref());
            }
            self.io.write_all(&self.out).await?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Our in-place transport is the Noise transport: frames sealed here
    /// open with snow's own `TransportState`, and the other way round.
    #[tokio::test]
    async fn transport_matches_snow() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let cfg = SecretConfig::default();
        // Our side is the initiator; the responder is plain snow.
        let responder = tokio::spawn(async move {
            let mut io = b;
            let mut hs = noise_builder(CryptoBackend::RustCrypto)
                .local_private_key(kb.private_key())
                .unwrap()
                .prologue(PROLOGUE)
                .unwrap()
                .build_responder()
                .unwrap();
            let mut rbuf = BytesMut::new();
            let (mut m, mut p) = (vec![0u8; 65535], vec![0u8; 65535]);
            let f = read_frame(&mut io, &mut rbuf, 1024).await.unwrap().unwrap();
            hs.read_message(&f, &mut p).unwrap();
            let n = hs.write_message(&[], &mut m).unwrap();
            write_frame(&mut io, &m[..n]).await.unwrap();
            let f = read_frame(&mut io, &mut rbuf, 1024).await.unwrap().unwrap();
            hs.read_message(&f, &mut p).unwrap();
            let mut t = hs.into_transport_mode().unwrap();
            // Two frames from us: 70000 bytes cut at 65519.
            let mut got = Vec::new();
            for _ in 0..2 {
                let f = read_frame(&mut io, &mut rbuf, MAX_FRAME_LEN).await.unwrap().unwrap();
                let n = t.read_message(&f, &mut p).unwrap();
                got.extend_from_slice(&p[..n]);
            }
            let n = t.write_message(b"from snow", &mut m).unwrap();
            write_frame(&mut io, &m[..n]).await.unwrap();
            got
        });
        let conn = SecretConnection::connect(a, &ka, None, &cfg).await.unwrap();
        let (mut r, mut w) = conn.split();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).await.unwrap();
        let mut back = BytesMut::new();
        r.read_into(&mut back).await.unwrap();
        assert_eq!(&back[..], b"from snow");
        assert_eq!(responder.await.unwrap(), data);
    }

    #[test]
    fn frames_end_at_cuts() {
        let frames = |len, cuts: &[usize]| -> Vec<usize> {
            frame_ranges(len, cuts).iter().map(|r| r.len()).collect()
        };
        assert_eq!(frames(100, &[]), vec![100]);
        assert_eq!(frames(70_000, &[]), vec![65519, 4481]);
        // Three 30000-byte packets: two fit a frame.
        assert_eq!(frames(90_000, &[30_000, 60_000, 90_000]), vec![60_000, 30_000]);
        // A packet larger than a frame is split.
        assert_eq!(frames(100_000, &[10, 100_000]), vec![10, 65519, 34471]);
        assert!(frames(0, &[]).is_empty());
    }
}
