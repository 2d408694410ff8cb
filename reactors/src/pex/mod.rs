//! Peer exchange: the [`AddrBook`] (Bitcoin Core's addrman design, sans-IO)
//! and, next, the PEX reactor on channel 0x00.

pub mod addrbook;

pub use addrbook::{AddrBook, AddrBookConfig, AddrBookError, KnownAddress};
