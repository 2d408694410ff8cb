//! The chain: blocks and headers ([`block`]), network parameters from a
//! genesis file ([`params`]), the validating [`Blockchain`] with its tips,
//! `height_to_hash`, orphan pool and reorganisations ([`blockchain`]), and
//! its SQLite [`Store`] ([`store`]).

pub mod block;
pub mod blockchain;
pub mod params;
pub mod store;

pub use block::{
    bits_from_target, merkle_root, target_from_bits, work, Block, BlockHash, Hash, Header, TxId,
};
pub use blockchain::{
    locator_heights, median_time, retarget, Blockchain, BlockchainConfig, BodyChecked,
    CheckedBlock, HeaderPath, ProcessStatus, Processed, TipChange, TipInfo,
};
pub use params::{Genesis, GenesisError, NetworkParams, MAX_BLOCK_BYTES};
/// The 256-bit unsigned integer of targets and weights (`ruint`).
pub use ruint::aliases::U256;
pub use store::{Store, StoreError};

/// Why a block was refused. Each consensus rule has its own variant (see
/// docs/protocol.md §8.4); [`BlockError::is_peer_fault`] tells whether the
/// peer that sent it misbehaved.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The protobuf form is incomplete (no header, a hash not 32 bytes).
    #[error("malformed block: {0}")]
    Malformed(String),
    /// A block version this release does not know.
    #[error("unsupported block version {0}")]
    BadVersion(u32),
    /// The block is larger than the network's `max_block_bytes`.
    #[error("block is {size} bytes, more than the limit of {max}")]
    BlockTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction is larger than `max_tx_bytes`.
    #[error("transaction {index} is {size} bytes, more than the limit of {max}")]
    TxTooLarge {
        /// Its position in the block.
        index: usize,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The same transaction twice in one block.
    #[error("transaction {index} repeats an earlier one")]
    DuplicateTx {
        /// The position of the repeat.
        index: usize,
    },
    /// The header's merkle root is not the root of the transactions.
    #[error("merkle root does not match the transactions")]
    BadMerkleRoot,
    /// `bits` is not a valid compact target or is easier than the pow limit.
    #[error("bits {0:#010x} is not a valid target for this network")]
    BadBits(u32),
    /// The hash does not meet the header's own target.
    #[error("proof of work does not meet the target")]
    BadPow,
    /// The block time is too far ahead of the local clock.
    #[error("block time {timestamp_ms} ms is after the limit {limit_ms} ms")]
    TimeTooNew {
        /// The block time.
        timestamp_ms: u64,
        /// Now plus `max_future_ms`.
        limit_ms: u64,
    },
    /// The height is not the parent's height + 1.
    #[error("height {got}, expected {expected}")]
    BadHeight {
        /// Parent height + 1.
        expected: u64,
        /// The block's height.
        got: u64,
    },
    /// `bits` differs from the retarget rule's.
    #[error("bits {got:#010x}, expected {expected:#010x}")]
    BadTarget {
        /// What the retarget rule gives.
        expected: u32,
        /// The header's bits.
        got: u32,
    },
    /// The block time is not after the median of the last 11 blocks.
    #[error("block time {timestamp_ms} ms is not after the median time past {median_ms} ms")]
    TimeTooOld {
        /// The block time.
        timestamp_ms: u64,
        /// Median of the parent and its 10 ancestors.
        median_ms: u64,
    },
    /// A header does not follow the one before it (headers-first sync).
    #[error("header does not link to the one before it")]
    Unlinked,
    /// The block, or an ancestor, was found invalid before.
    #[error("block or an ancestor is known to be invalid")]
    KnownInvalid,
    /// The store failed; the block was not accepted and may be retried.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The import task ended before the block was processed (it panicked
    /// or the runtime is shutting down); the block may be retried.
    #[error("the block import was aborted")]
    ImportAborted,
    /// The block was valid but the batch holding it
    /// ([`Blockchain::batch`]) could not be committed (the error's text);
    /// the block is not stored and may be retried.
    #[error("the block's batch was not committed: {0}")]
    NotCommitted(String),
}

impl BlockError {
    /// Whether the sender broke a rule (score or ban it). A block from the
    /// future may be clock skew and a store error is ours, so neither
    /// counts; a known-invalid block does (Bitcoin bans for it too).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            BlockError::TimeTooNew { .. }
                | BlockError::Store(_)
                | BlockError::ImportAborted
                | BlockError::NotCommitted(_)
        )
    }

    /// The reputation-table entry for the peer that sent this block
    /// (`None` when it is not the peer's fault): a failed proof of work is
    /// [`Misbehavior::BadPow`], any other rule [`Misbehavior::BadBlock`].
    pub fn misbehavior(&self) -> Option<plexus_p2p::Misbehavior> {
        use plexus_p2p::Misbehavior;
        match self {
            _ if !self.is_peer_fault() => None,
            BlockError::BadPow => Some(Misbehavior::BadPow),
            _ => Some(Misbehavior::BadBlock),
        }
    }

    /// Whether the block hash can never be valid (remember it and refuse it
    /// at once next time). A block from the future may become valid later;
    /// a body that does not match its merkle root says nothing about the
    /// header, since anyone can alter the body of a valid block (Bitcoin's
    /// "mutated block"), so the merkle root is checked before every other
    /// body rule.
    pub(crate) fn is_permanent(&self) -> bool {
        self.is_peer_fault()
            && !matches!(self, BlockError::Malformed(_) | BlockError::BadMerkleRoot)
    }
}

#[cfg(test)]
pub(crate) mod tests;
