//! Plexus reactors. Today: [`pex`], the address book and the PEX reactor
//! (seeds, DNS seeds, seed mode). Chain, mempool, consensus, block sync and
//! mining arrive with their issues (see ARCHITECTURE.md).
#![warn(missing_docs)]

pub mod blocksync;
pub mod chain;
pub mod consensus;
pub mod mempool;
pub mod mining;
pub mod pex;
