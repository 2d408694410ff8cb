//! Blocks, headers and their hashes: the 96-byte canonical header layout,
//! double SHA-256 block hashes, the transaction merkle root, and the
//! compact difficulty target with its work (docs/protocol.md §8).

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use plexus_proto::chain as pb;
use ruint::aliases::U256;
use sha2::{Digest, Sha256};

use super::BlockError;

/// A 32-byte SHA-256 digest: a block hash or a transaction id. Shown and
/// parsed as 64 lowercase hex digits; compared to a target as a
/// big-endian 256-bit integer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl std::hash::Hash for Hash {
    /// Feeds the map's hasher the 32 bytes alone (the derived impl adds a
    /// length prefix for the slice). Every byte counts, so ids a peer
    /// makes up cannot be aimed at one bucket of a keyed map.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// A block hash: SHA-256(SHA-256(canonical header bytes)).
pub type BlockHash = Hash;
/// A transaction id: SHA-256 of the transaction bytes.
pub type TxId = Hash;

impl Hash {
    /// All zero bytes: the `prev_hash` of the genesis block.
    pub const ZERO: Hash = Hash([0; 32]);

    /// The hash from a slice that must be 32 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Hash> {
        Some(Hash(b.try_into().ok()?))
    }

    /// The digest as a big-endian 256-bit integer.
    pub fn to_u256(&self) -> U256 {
        U256::from_be_bytes(self.0)
    }

    /// SHA-256 of `data` (the transaction id of a transaction).
    pub fn sha256(data: &[u8]) -> Hash {
        Hash(Sha256::digest(data).into())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &hex::encode(&self.0[..6]))
    }
}

impl FromStr for Hash {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Hash, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Hash(out))
    }
}

impl serde::Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A block header. Its hash is taken over [`Header::to_bytes`], a fixed
/// 96-byte layout (all integers little-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | version |
/// | 4 | 8 | height |
/// | 12 | 32 | prev_hash |
/// | 44 | 32 | merkle_root |
/// | 76 | 8 | timestamp_ms (Unix milliseconds) |
/// | 84 | 4 | bits (compact target) |
/// | 88 | 8 | nonce |
///
/// 96 bytes plus SHA-256 padding fill exactly two 64-byte compression
/// blocks, and the nonce sits in the second, so a miner hashes the first
/// block once per job (the "midstate") and two compressions per nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Block format version; [`Header::VERSION`] today.
    pub version: u32,
    /// Height: genesis is 0, a block is its parent's height + 1.
    pub height: u64,
    /// Hash of the parent block ([`Hash::ZERO`] for genesis).
    pub prev_hash: BlockHash,
    /// [`merkle_root`] of the transactions.
    pub merkle_root: Hash,
    /// Block time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The difficulty target in Bitcoin's compact form (nBits).
    pub bits: u32,
    /// The proof-of-work nonce.
    pub nonce: u64,
}

impl Header {
    /// The canonical header length in bytes.
    pub const SIZE: usize = 96;
    /// The only block version this release accepts.
    pub const VERSION: u32 = 1;
    /// Offset of the nonce in the canonical bytes.
    pub const NONCE_OFFSET: usize = 88;

    /// The canonical 96 bytes (layout in the type's documentation).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.version.to_le_bytes());
        b[4..12].copy_from_slice(&self.height.to_le_bytes());
        b[12..44].copy_from_slice(&self.prev_hash.0);
        b[44..76].copy_from_slice(&self.merkle_root.0);
        b[76..84].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        b[84..88].copy_from_slice(&self.bits.to_le_bytes());
        b[88..96].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// The header back from its canonical bytes.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Header {
            version: u32_at(0),
            height: u64_at(4),
            prev_hash: Hash(b[12..44].try_into().expect("32 bytes")),
            merkle_root: Hash(b[44..76].try_into().expect("32 bytes")),
            timestamp_ms: u64_at(76),
            bits: u32_at(84),
            nonce: u64_at(88),
        }
    }

    /// The block hash: SHA-256(SHA-256(canonical bytes)).
    pub fn hash(&self) -> BlockHash {
        Hash(Sha256::digest(Sha256::digest(self.to_bytes())).into())
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::Header {
        pb::Header {
            version: self.version,
            height: self.height,
            prev_hash: Bytes::copy_from_slice(&self.prev_hash.0),
            merkle_root: Bytes::copy_from_slice(&self.merkle_root.0),
            timestamp_ms: self.timestamp_ms,
            bits: self.bits,
            nonce: self.nonce,
        }
    }

    /// From the protobuf form. Errors: [`BlockError::Malformed`] when a
    /// hash field is not 32 bytes.
    pub fn from_proto(h: &pb::Header) -> Result<Header, BlockError> {
        let hash = |b: &Bytes, what: &str| {
            Hash::from_slice(b).ok_or_else(|| {
                BlockError::Malformed(format!("{what} is {} bytes, not 32", b.len()))
            })
        };
        Ok(Header {
            version: h.version,
            height: h.height,
            prev_hash: hash(&h.prev_hash, "prev_hash")?,
            merkle_root: hash(&h.merkle_root, "merkle_root")?,
            timestamp_ms: h.timestamp_ms,
            bits: h.bits,
            nonce: h.nonce,
        })
    }
}

/// A block: a header and opaque transactions ("words").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The header; its hash is the block's hash.
    pub header: Header,
    /// The transactions, each at most the network's `max_tx_bytes`.
    pub txs: Vec<Bytes>,
}

impl Block {
    /// The block hash (of the header).
    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::Block {
        pb::Block { header: Some(self.header.to_proto()), txs: self.txs.clone() }
    }

    /// From the protobuf form. Errors: [`BlockError::Malformed`] without a
    /// header or with a hash field that is not 32 bytes.
    pub fn from_proto(b: pb::Block) -> Result<Block, BlockError> {
        let h = b.header.as_ref().ok_or_else(|| BlockError::Malformed("no header".into()))?;
        Ok(Block { header: Header::from_proto(h)?, txs: b.txs })
    }

    /// The block's size in bytes: the length of its protobuf encoding,
    /// which is what travels and what `max_block_bytes` limits.
    pub fn size(&self) -> usize {
        prost::Message::encoded_len(&self.to_proto())
    }

    /// The merkle root of this block's transactions.
    pub fn compute_merkle_root(&self) -> Hash {
        merkle_root(&self.txs)
    }
}

/// The merkle root of `txs` (RFC 6962 hashing, level by level): a leaf is
/// SHA-256(0x00 ‖ tx), an inner node SHA-256(0x01 ‖ left ‖ right), an odd
/// node at the end of a level moves up unchanged, and no transactions give
/// SHA-256 of nothing. The domain prefixes keep a leaf from passing as an
/// inner node, and no node is duplicated (Bitcoin's CVE-2012-2459 cannot
/// happen).
pub fn merkle_root(txs: &[Bytes]) -> Hash {
    if txs.is_empty() {
        return Hash::sha256(&[]);
    }
    let mut level: Vec<[u8; 32]> = txs
        .iter()
        .map(|t| Sha256::new().chain_update([0u8]).chain_update(t).finalize().into())
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => Sha256::new()
                    .chain_update([1u8])
                    .chain_update(l)
                    .chain_update(r)
                    .finalize()
                    .into(),
                [one] => *one,
                _ => unreachable!("chunks(2)"),
            })
            .collect();
    }
    Hash(level[0])
}

/// The target encoded by compact `bits` (Bitcoin's nBits: a one-byte
/// base-256 exponent and a three-byte mantissa). `None` for a negative or
/// overflowing encoding, or zero.
pub fn target_from_bits(bits: u32) -> Option<U256> {
    let exp = (bits >> 24) as usize;
    let mantissa = bits & 0x007f_ffff;
    if bits & 0x0080_0000 != 0 && mantissa != 0 {
        return None;
    }
    let t = if exp <= 3 {
        U256::from(mantissa >> (8 * (3 - exp)))
    } else {
        if exp > 32 + (mantissa <= 0xffff) as usize + (mantissa <= 0xff) as usize {
            return None;
        }
        U256::from(mantissa) << (8 * (exp - 3))
    };
    (t != U256::ZERO).then_some(t)
}

/// The compact form of `target` (rounded down to three significant bytes).
pub fn bits_from_target(target: U256) -> u32 {
    let mut size = target.bit_len().div_ceil(8);
    let mut compact: u32 = if size <= 3 {
        target.to::<u32>() << (8 * (3 - size))
    } else {
        (target >> (8 * (size - 3))).to::<u32>()
    };
    if compact & 0x0080_0000 != 0 {
        compact >>= 8;
        size += 1;
    }
    compact | (size as u32) << 24
}

/// The expected number of hashes to meet `target`: 2^256 / (target + 1),
/// computed as !target / (target + 1) + 1 (Bitcoin's `GetBlockProof`).
pub fn work(target: U256) -> U256 {
    if target == U256::MAX {
        return U256::from(1);
    }
    (!target / (target + U256::from(1))) + U256::from(1)
}
