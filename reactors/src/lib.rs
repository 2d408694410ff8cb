//! Plexus reactors and the chain behind them: [`pex`] (the address book
//! and the PEX reactor), [`chain`] (blocks, the `Blockchain`, its store),
//! [`service`] (the `ChainService`, the one owner of chain, mempool, chain
//! events and peer-chain statuses), [`consensus`] (block relay, 0x20),
//! [`blocksync`] (headers-first sync, 0x40), [`mempool`] (0x30) and
//! [`mining`]. See ARCHITECTURE.md.
#![warn(missing_docs)]

pub mod blocksync;
pub mod chain;
pub mod consensus;
pub mod mempool;
pub mod mining;
pub mod pex;
pub mod service;
