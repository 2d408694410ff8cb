//! Plexus reactors. Today: [`pex`], the address book (the PEX reactor,
//! seeds and DNS seeds follow). Chain, mempool, consensus, block sync and
//! mining arrive with their issues (see ARCHITECTURE.md).
#![warn(missing_docs)]

pub mod pex;
