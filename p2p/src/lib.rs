//! plexus-p2p: the network layers of Plexus, bottom up.
//!
//! - [`key`]: [`NodeKey`] (static X25519 keypair) and [`NodeId`].
//! - [`secret`]: [`SecretConnection`], Noise XX over any async stream.
//! - [`mconn`]: [`MConnection`], prioritized channels multiplexed over a
//!   secret connection, with a sans-IO core ([`mconn::core`]).
//!
//! docs/protocol.md gives the wire protocol byte for byte; ARCHITECTURE.md
//! says how the code is laid out.
#![warn(missing_docs)]

pub mod crypto;
pub mod fault;
pub mod key;
pub mod mconn;
pub mod netaddr;
pub mod node_info;
pub mod rate;
pub mod secret;
pub mod switch;
pub mod transport;

pub use fault::{Fault, Misbehavior};
pub use key::{NodeId, NodeKey};
pub use mconn::{
    ChannelDescriptor, ChannelReceiver, ConnectionStats, MConnConfig, MConnError, MConnection,
};
pub use netaddr::{Host, NetAddress, NetAddressError};
pub use node_info::{NodeInfo, NodeType, ProtocolVersion, Refusal, RefusalCode};
pub use secret::{CryptoBackend, SecretConfig, SecretConnection, SecretError};
pub use switch::{
    ConnKind, Direction, Envelope, Peer, PeerManager, PeerManagerConfig, Reactor, RejectReason,
    StopReason, Switch, SwitchConfig, SwitchEvent,
};
pub use transport::{Listener, MemoryTransport, TcpTransport, Transport};
