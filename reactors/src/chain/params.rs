//! Network parameters from a genesis file: the genesis block, the target
//! block time, the retarget window, size limits. The network id is the
//! genesis hash (Chia's `network_id`), which goes into NodeInfo.network.

use std::path::Path;

use bytes::Bytes;
use ruint::aliases::U256;
use serde::{Deserialize, Serialize};

use super::block::{
    bits_from_target, merkle_root, target_from_bits, Block, BlockHash, Hash, Header,
};

/// Largest `max_block_bytes` a genesis may set, bytes: 8 MiB less 64, so
/// that a largest block wrapped in a `NewBlock` or `BlockResponse` message
/// (10 bytes of protobuf around it) fits the consensus and block sync
/// channels' default message cap of 8 MiB (docs/protocol.md §4.2, §8.5).
pub const MAX_BLOCK_BYTES: usize = (8 << 20) - 64;

/// The genesis file (JSON): everything that must be equal on every node of
/// a network. The genesis block's one transaction is this struct as
/// compact JSON (fields in the order below), so changing any field makes
/// another genesis hash, that is another network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// A human name for the network ("devnet"); only the hash is compared.
    pub network_name: String,
    /// Genesis block time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The first blocks' difficulty target, compact form.
    pub bits: u32,
    /// The easiest target ever allowed ("pow limit"), compact form.
    pub pow_limit_bits: u32,
    /// Target time between blocks, milliseconds. Devnet: 10,000.
    pub target_block_time_ms: u64,
    /// Blocks between difficulty retargets; 0 never retargets (regtest),
    /// otherwise at least 2. Each retarget moves the target by at most ×4
    /// or ÷4 (Bitcoin).
    pub retarget_window: u64,
    /// Largest block, bytes of its protobuf encoding.
    pub max_block_bytes: usize,
    /// Largest transaction, bytes. At most 65,536.
    pub max_tx_bytes: usize,
    /// How far a block time may lie ahead of the local clock, milliseconds
    /// (Bitcoin: 2 hours).
    pub max_future_ms: u64,
    /// Free text (a headline, a motto) to make a network's genesis unique.
    pub message: String,
}

/// Errors of a genesis file.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// The file could not be read.
    #[error("reading genesis file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid genesis JSON (truncated, garbled, a field of
    /// the wrong type).
    #[error("genesis file {path} is not valid JSON: {source}")]
    Json {
        /// The path.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A field is out of range.
    #[error("genesis field {field}: {why}")]
    Invalid {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The network parameters derived from a [`Genesis`].
#[derive(Clone, Debug)]
pub struct NetworkParams {
    /// The genesis file as read.
    pub genesis: Genesis,
    /// The genesis block built from it (height 0, zero parent).
    pub genesis_block: Block,
    /// Its hash: the network id.
    pub genesis_hash: BlockHash,
    /// The easiest target allowed.
    pub pow_limit: U256,
}

impl NetworkParams {
    /// Builds the parameters. Errors: [`GenesisError::Invalid`] for a bad
    /// compact target, a first target above the pow limit, a retarget
    /// window of 1, a zero block time, or size limits that cannot hold a
    /// block.
    pub fn from_genesis(g: Genesis) -> Result<NetworkParams, GenesisError> {
        let invalid = |field, why: &str| GenesisError::Invalid { field, why: why.to_string() };
        let pow_limit = target_from_bits(g.pow_limit_bits)
            .ok_or_else(|| invalid("pow_limit_bits", "not a valid compact target"))?;
        let first = target_from_bits(g.bits)
            .ok_or_else(|| invalid("bits", "not a valid compact target"))?;
        if first > pow_limit {
            return Err(invalid("bits", "easier than pow_limit_bits"));
        }
        if g.retarget_window == 1 {
            return Err(invalid("retarget_window", "must be 0 (off) or at least 2"));
        }
        if g.target_block_time_ms == 0 {
            return Err(invalid("target_block_time_ms", "must be positive"));
        }
        // The retarget's expected window time and its ×4 clamp must fit a
        // u64, and its ÷4 clamp must not be 0 (a zero span would give a
        // zero target, which no block can carry: the chain would stop).
        let expected = g.retarget_window.saturating_sub(1).checked_mul(g.target_block_time_ms);
        if g.retarget_window != 0 && !expected.is_some_and(|e| (4..=u64::MAX / 4).contains(&e)) {
            return Err(invalid(
                "target_block_time_ms",
                "(retarget_window - 1) × target_block_time_ms must be 4 ..= 2^62 - 1",
            ));
        }
        if g.max_tx_bytes == 0 || g.max_tx_bytes > 64 * 1024 {
            return Err(invalid("max_tx_bytes", "must be 1..=65536"));
        }
        if g.max_block_bytes < Header::SIZE * 2 + g.max_tx_bytes {
            return Err(invalid(
                "max_block_bytes",
                "must hold a header and one largest transaction",
            ));
        }
        if g.max_block_bytes > MAX_BLOCK_BYTES {
            return Err(invalid(
                "max_block_bytes",
                "must be at most 8,388,544 (a block travels as one message of at most 8 MiB)",
            ));
        }
        // The one genesis transaction is the file itself, so the genesis
        // hash (the network id) commits to every parameter.
        let encoded = serde_json::to_vec(&g).map_err(|e| invalid("genesis", &e.to_string()))?;
        let txs = vec![Bytes::from(encoded)];
        let header = Header {
            version: Header::VERSION,
            height: 0,
            prev_hash: Hash::ZERO,
            merkle_root: merkle_root(&txs),
            timestamp_ms: g.timestamp_ms,
            bits: g.bits,
            nonce: 0,
        };
        let genesis_block = Block { header, txs };
        let genesis_hash = genesis_block.hash();
        Ok(NetworkParams { genesis: g, genesis_block, genesis_hash, pow_limit })
    }

    /// Reads and checks a genesis JSON file.
    pub fn load(path: &Path) -> Result<NetworkParams, GenesisError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GenesisError::Io { path: path.display().to_string(), source })?;
        let genesis = serde_json::from_str(&text)
            .map_err(|source| GenesisError::Json { path: path.display().to_string(), source })?;
        Self::from_genesis(genesis).map_err(|e| match e {
            GenesisError::Invalid { field, why } => {
                GenesisError::Invalid { field, why: format!("{why} (in {})", path.display()) }
            }
            e => e,
        })
    }

    /// The embedded devnet: 10 s blocks, retarget every 20 blocks, 1 MiB
    /// blocks, a first target one CPU thread meets in about a second.
    pub fn devnet() -> NetworkParams {
        Self::local("plexus-devnet", 24, 10_000, 20)
    }

    /// A local test network (Bitcoin's regtest): a block takes about 256
    /// hashes, the target never retargets, 1 s target block time, 1 MiB
    /// blocks.
    pub fn regtest() -> NetworkParams {
        Self::local("plexus-regtest", 8, 1_000, 0)
    }

    /// A built-in network: first target 2^(256 - `shift`) (about 2^`shift`
    /// hashes a block), pow limit 2^255, 1 MiB blocks, 64 KiB transactions,
    /// 2 h clock tolerance.
    fn local(name: &str, shift: usize, block_time_ms: u64, window: u64) -> NetworkParams {
        Self::from_genesis(Genesis {
            network_name: name.into(),
            timestamp_ms: 1_795_000_000_000,
            bits: bits_from_target(U256::MAX >> shift),
            pow_limit_bits: bits_from_target(U256::MAX >> 1),
            target_block_time_ms: block_time_ms,
            retarget_window: window,
            max_block_bytes: 1 << 20,
            max_tx_bytes: 64 * 1024,
            max_future_ms: 2 * 3600 * 1000,
            message: format!("{name} genesis"),
        })
        .expect("the built-in genesis files are valid")
    }

    /// The network id: the genesis hash in hex (NodeInfo.network).
    pub fn network_id(&self) -> String {
        self.genesis_hash.to_string()
    }
}
