//! Peer exchange: the [`AddrBook`] (Bitcoin Core's addrman design, sans-IO)
//! and the [`PexReactor`] on channel 0x00.

pub mod addrbook;
pub mod reactor;

pub use addrbook::{AddrBook, AddrBookConfig, AddrBookError, KnownAddress};
pub use reactor::{to_pb, HickoryResolver, PexConfig, PexReactor, SeedResolver, PEX_CHANNEL};
