//! snow resolvers: which code computes the Noise primitives.
//!
//! Measured on the project machine (Xeon, 2 cores, AVX-512/ADX/SHA-NI) with
//! `cargo run --release -p plexus-p2p --example throughput -- --backend-compare`
//! and a micro-benchmark of each primitive:
//!
//! | primitive | RustCrypto (snow default) | ring | aws-lc-rs |
//! |---|---|---|---|
//! | ChaCha20-Poly1305 seal, 64 KiB | 720 MB/s | 1830 MB/s | 1480 MB/s |
//! | X25519 DH | 81 µs | n/a in snow | 26.5 µs |
//! | X25519 keygen | 49 µs | n/a in snow | 8.8 µs |
//!
//! snow's ring resolver has no DH (ring cannot import a static X25519
//! key), so snow's own `ring-accelerated` arrangement falls back to
//! curve25519-dalek, which caps a Noise XX handshake (6 DH + 2 keygens)
//! near 600 µs of CPU. [`CryptoBackend::RingAwsLc`], the default, takes
//! ChaCha20-Poly1305, SHA-256 and randomness from ring and X25519 from
//! aws-lc-rs (AWS-LC's formally verified s2n-bignum assembly), falling back
//! to snow's default resolver for anything else. All three are sound,
//! constant-time implementations of the same primitives, so every backend
//! interoperates with every other.
//!
//! The backend chooses the handshake's primitives. After the handshake the
//! transport always uses ring's ChaCha20-Poly1305 directly, sealing and
//! opening in place (see [`crate::secret`]), the fastest cipher measured.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{
    BoxedCryptoResolver, CryptoResolver, DefaultResolver, FallbackResolver, RingResolver,
};
use snow::types::{Cipher, Dh, Hash, Random};

/// Which implementation of the Noise primitives snow uses. See the module
/// docs for the measurements behind the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CryptoBackend {
    /// snow's default resolver (RustCrypto chacha20poly1305 and sha2,
    /// curve25519-dalek).
    RustCrypto,
    /// snow's `ring-accelerated` arrangement: ring for cipher, hash and RNG,
    /// curve25519-dalek for X25519.
    Ring,
    /// ring for cipher, hash and RNG; aws-lc-rs for X25519. The default.
    #[default]
    RingAwsLc,
}

impl CryptoBackend {
    /// The snow resolver for this backend.
    pub fn resolver(self) -> BoxedCryptoResolver {
        let ring_then_default =
            || Box::new(FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver)));
        match self {
            CryptoBackend::RustCrypto => Box::new(DefaultResolver),
            CryptoBackend::Ring => ring_then_default(),
            CryptoBackend::RingAwsLc => {
                Box::new(FallbackResolver::new(Box::new(AwsLcDhResolver), ring_then_default()))
            }
        }
    }
}

/// Resolves only X25519, to aws-lc-rs.
struct AwsLcDhResolver;

impl CryptoResolver for AwsLcDhResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(AwsLcX25519::default())),
            _ => None,
        }
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

/// X25519 (RFC 7748) through aws-lc-rs. Keeps the raw private key so snow
/// can read it back, and an aws-lc key object for the DH itself.
#[derive(Default)]
struct AwsLcX25519 {
    private: [u8; 32],
    public: [u8; 32],
    key: Option<aws_lc_rs::agreement::PrivateKey>,
}

impl AwsLcX25519 {
    fn load(&mut self, private: [u8; 32]) -> Result<(), snow::Error> {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        let key = PrivateKey::from_private_key(&X25519, &private).map_err(|_| snow::Error::Dh)?;
        let public = key.compute_public_key().map_err(|_| snow::Error::Dh)?;
        self.public.copy_from_slice(public.as_ref());
        self.private = private;
        self.key = Some(key);
        Ok(())
    }
}

impl Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        let mut k = [0u8; 32];
        let n = privkey.len().min(32);
        k[..n].copy_from_slice(&privkey[..n]);
        // Any 32 bytes are a valid X25519 scalar (clamped), so this only
        // fails if aws-lc itself fails; dh() then reports Error::Dh.
        if self.load(k).is_err() {
            self.key = None;
        }
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut k = [0u8; 32];
        rng.try_fill_bytes(&mut k)?;
        self.load(k)
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private
    }
    /// Fails with `Error::Dh` for a low-order peer key (all-zero shared
    /// secret), which the Noise spec permits an implementation to reject.
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        use aws_lc_rs::agreement::{agree, UnparsedPublicKey, X25519};
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        let peer = UnparsedPublicKey::new(&X25519, pubkey.get(..32).ok_or(snow::Error::Dh)?);
        agree(key, peer, snow::Error::Dh, |shared| {
            out.get_mut(..32).ok_or(snow::Error::Dh)?.copy_from_slice(shared);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 §6.1 test vector, through the snow Dh trait.
    #[test]
    fn aws_lc_x25519_matches_rfc7748() {
        let alice_priv =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let bob_pub =
            hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .unwrap();
        let mut dh = AwsLcX25519::default();
        dh.set(&alice_priv);
        assert_eq!(
            hex::encode(dh.pubkey()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let mut out = [0u8; 32];
        dh.dh(&bob_pub, &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
        // The all-zero (low-order) point is refused.
        assert!(dh.dh(&[0u8; 32], &mut out).is_err());
    }

    /// Every backend completes a handshake with every other.
    #[test]
    fn backends_interoperate() {
        let all = [CryptoBackend::RustCrypto, CryptoBackend::Ring, CryptoBackend::RingAwsLc];
        let params: snow::params::NoiseParams = crate::secret::NOISE_PARAMS.parse().unwrap();
        for a in all {
            for b in all {
                let ka = snow::Builder::with_resolver(params.clone(), a.resolver())
                    .generate_keypair()
                    .unwrap();
                let kb = snow::Builder::with_resolver(params.clone(), b.resolver())
                    .generate_keypair()
                    .unwrap();
                let mut i = snow::Builder::with_resolver(params.clone(), a.resolver())
                    .local_private_key(&ka.private)
                    .unwrap()
                    .build_initiator()
                    .unwrap();
                let mut r = snow::Builder::with_resolver(params.clone(), b.resolver())
                    .local_private_key(&kb.private)
                    .unwrap()
                    .build_responder()
                    .unwrap();
                let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
                let n = i.write_message(b"", &mut m).unwrap();
                r.read_message(&m[..n], &mut p).unwrap();
                let n = r.write_message(b"", &mut m).unwrap();
                i.read_message(&m[..n], &mut p).unwrap();
                let n = i.write_message(b"", &mut m).unwrap();
                r.read_message(&m[..n], &mut p).unwrap();
                assert_eq!(i.get_remote_static().unwrap(), kb.public.as_slice(), "{a:?}->{b:?}");
                let mut ti = i.into_transport_mode().unwrap();
                let mut tr = r.into_transport_mode().unwrap();
                let n = ti.write_message(b"hi", &mut m).unwrap();
                let k = tr.read_message(&m[..n], &mut p).unwrap();
                assert_eq!(&p[..k], b"hi");
            }
        }
    }
}
