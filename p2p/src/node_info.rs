//! [`NodeInfo`]: what each side tells the other right after the secret
//! handshake (CometBFT's `DefaultNodeInfo` with Chia's node type and
//! capabilities), its validation and the compatibility check, and the
//! exchange itself.
//!
//! Wire form: one transport frame holding the uvarint-length-prefixed
//! protobuf `plexus.p2p.NodeInfo`, at most [`MAX_NODE_INFO_SIZE`] bytes.
//! Both sides send theirs at once, then read the other's.

use std::net::SocketAddr;
use std::time::Duration;

use plexus_proto::p2p as pb;
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::fault::{Fault, Misbehavior};
use crate::key::NodeId;
use crate::secret::{SecretConnection, SecretError};

/// Largest encoded NodeInfo accepted, bytes (10 KiB).
pub const MAX_NODE_INFO_SIZE: usize = 10 * 1024;
/// Most channels a NodeInfo may list (CometBFT's `maxNumChannels`).
pub const MAX_CHANNELS: usize = 16;
/// Longest moniker, bytes.
pub const MAX_MONIKER_LEN: usize = 64;

/// Protocol versions: p2p (this wire protocol), block (the chain's rules)
/// and app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProtocolVersion {
    /// p2p protocol version.
    pub p2p: u64,
    /// Block protocol version; peers must agree.
    pub block: u64,
    /// Application version.
    pub app: u64,
}

/// The kind of node (Chia's `NodeType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeType {
    /// Stores and serves the full chain.
    #[default]
    FullNode,
    /// A seed / introducer: hands out addresses, then disconnects.
    Introducer,
    /// Mines blocks.
    Miner,
    /// A wallet or light client.
    Wallet,
}

impl NodeType {
    fn to_pb(self) -> pb::NodeType {
        match self {
            NodeType::FullNode => pb::NodeType::FullNode,
            NodeType::Introducer => pb::NodeType::Introducer,
            NodeType::Miner => pb::NodeType::Miner,
            NodeType::Wallet => pb::NodeType::Wallet,
        }
    }
    fn from_pb(v: i32) -> Option<NodeType> {
        match pb::NodeType::try_from(v).ok()? {
            pb::NodeType::FullNode => Some(NodeType::FullNode),
            pb::NodeType::Introducer => Some(NodeType::Introducer),
            pb::NodeType::Miner => Some(NodeType::Miner),
            pb::NodeType::Wallet => Some(NodeType::Wallet),
            pb::NodeType::Unspecified => None,
        }
    }
}

/// A node's self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Protocol versions.
    pub protocol_version: ProtocolVersion,
    /// The node's id; must equal the id its handshake proved.
    pub node_id: NodeId,
    /// Where the node accepts connections (`host:port`), for PEX.
    pub listen_addr: String,
    /// Network name: the genesis hash (Chia's `network_id`); peers must agree.
    pub network: String,
    /// Software version, informational.
    pub version: String,
    /// Channel ids the node serves, unique, at most 16.
    pub channels: Vec<u8>,
    /// Human-readable name, printable ASCII, at most 64 bytes.
    pub moniker: String,
    /// Node type.
    pub node_type: NodeType,
    /// Capabilities as (id, value) pairs (Chia's Handshake).
    pub capabilities: Vec<(u16, String)>,
}

/// Why the sender of a NodeInfo will close the connection after the
/// exchange (NodeInfo field 10, a Plexus extension): the refused side
/// learns why instead of seeing the stream end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of refusal.
    pub code: RefusalCode,
    /// For a person; cut to [`MAX_REFUSAL_REASON`] bytes on the wire.
    pub reason: String,
}

/// `protocol_version.p2p` this release sends: the SecretConnection,
/// NodeInfo and MConnection wire of docs/protocol.md §2–§4.
pub const P2P_PROTOCOL: u64 = 1;
/// `protocol_version.block` this release sends: the block and message
/// formats of docs/protocol.md §8–§10; peers must send the same.
pub const BLOCK_PROTOCOL: u64 = 0;
/// `protocol_version.app` this release sends (informational).
pub const APP_PROTOCOL: u64 = 0;

/// Longest [`Refusal::reason`] sent or shown, bytes.
pub const MAX_REFUSAL_REASON: usize = 256;

/// `reason` cut to at most [`MAX_REFUSAL_REASON`] bytes, on a character
/// boundary.
fn cut_reason(mut reason: String) -> String {
    while reason.len() > MAX_REFUSAL_REASON {
        reason.pop();
    }
    reason
}

/// [`Refusal::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The sender already holds a connection from the receiver's node id:
    /// another process runs with the receiver's node key (a copied home),
    /// or an old connection of the receiver's has not timed out yet.
    Duplicate,
    /// A code this release does not know (from a newer one).
    Other(i32),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reason: String = self.reason.chars().filter(|c| !c.is_control()).collect();
        match self.code {
            RefusalCode::Duplicate => write!(
                f,
                "{reason}: it already holds a connection from our node id (another process \
                 with this node key, a copied home?)"
            ),
            RefusalCode::Other(c) => write!(f, "{reason} (refusal code {c})"),
        }
    }
}

/// Why a NodeInfo is refused or its exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeInfoError {
    /// The secret connection failed during the exchange.
    #[error("secret connection: {0}")]
    Secret(#[from] SecretError),
    /// The exchange did not finish in time.
    #[error("node info exchange timed out after {0:?}")]
    Timeout(Duration),
    /// The frame is not one length-prefixed message of at most 10 KiB.
    #[error("node info frame malformed: {0}")]
    Malformed(String),
    /// The NodeInfo breaks a rule of [`NodeInfo::validate`].
    #[error("invalid node info: {0}")]
    Invalid(String),
    /// A field this release does not know (a node type or capability id
    /// from a newer release): incompatible, not misbehaviour.
    #[error("unsupported node info: {0}")]
    Unsupported(String),
    /// Our own NodeInfo encodes to more than 10 KiB (our configuration).
    #[error("our node info is {0} bytes, more than 10 KiB")]
    OursTooLarge(usize),
    /// The peer's NodeInfo carried a [`Refusal`]: it closes the connection
    /// and says why. Its decision, not a fault of anyone's.
    #[error("the peer refused the connection: {0}")]
    Refused(Refusal),
}

impl NodeInfoError {
    /// Whose fault: a malformed or invalid NodeInfo is the peer's, a
    /// timeout is the network's, a secret-connection error says itself.
    pub fn fault(&self) -> Fault {
        match self {
            NodeInfoError::Secret(e) => e.fault(),
            NodeInfoError::Timeout(_) => Fault::Io,
            NodeInfoError::Malformed(_) | NodeInfoError::Invalid(_) => Fault::Peer,
            NodeInfoError::Unsupported(_) | NodeInfoError::Refused(_) => Fault::Incompatible,
            NodeInfoError::OursTooLarge(_) => Fault::Local,
        }
    }

    /// The reputation-table entry of a peer fault (`None` otherwise).
    pub fn misbehavior(&self) -> Option<Misbehavior> {
        match self {
            NodeInfoError::Secret(e) => e.misbehavior(),
            NodeInfoError::Malformed(_) | NodeInfoError::Invalid(_) => {
                Some(Misbehavior::MalformedMessage)
            }
            NodeInfoError::Timeout(_)
            | NodeInfoError::Unsupported(_)
            | NodeInfoError::OursTooLarge(_)
            | NodeInfoError::Refused(_) => None,
        }
    }
}

impl NodeInfo {
    /// A NodeInfo for `network` with `moniker`: a full node speaking p2p
    /// protocol 1, block and app 0, no capabilities. The switch fills in
    /// `node_id` and `channels` when it is built, and `listen_addr` from
    /// its config when left empty.
    pub fn new(network: &str, moniker: &str) -> NodeInfo {
        NodeInfo {
            protocol_version: ProtocolVersion {
                p2p: P2P_PROTOCOL,
                block: BLOCK_PROTOCOL,
                app: APP_PROTOCOL,
            },
            node_id: NodeId::from_public_key(&[0; 32]),
            listen_addr: String::new(),
            network: network.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            channels: Vec::new(),
            moniker: moniker.into(),
            node_type: NodeType::FullNode,
            capabilities: Vec::new(),
        }
    }

    /// Checks the rules every NodeInfo must follow: at most 16 unique
    /// channels, a printable moniker of at most 64 bytes, a `listen_addr`
    /// that parses as `host:port`, known node type, capability ids unique.
    ///
    /// # Errors
    /// [`NodeInfoError::Invalid`] naming the rule broken.
    pub fn validate(&self) -> Result<(), NodeInfoError> {
        let bad = |s: String| Err(NodeInfoError::Invalid(s));
        if self.channels.len() > MAX_CHANNELS {
            return bad(format!("{} channels, at most {MAX_CHANNELS}", self.channels.len()));
        }
        let mut seen = [false; 256];
        for &c in &self.channels {
            if std::mem::replace(&mut seen[c as usize], true) {
                return bad(format!("channel {c:#04x} listed twice"));
            }
        }
        if self.moniker.len() > MAX_MONIKER_LEN
            || !self.moniker.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return bad(format!(
                "moniker {:?} is not printable ASCII of at most 64 bytes",
                self.moniker
            ));
        }
        // Port 0 means the node does not accept connections (dial-only);
        // address books refuse such an address.
        let ok = self.listen_addr.parse::<SocketAddr>().is_ok()
            || self
                .listen_addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return bad(format!("listen_addr {:?} is not host:port", self.listen_addr));
        }
        let mut ids: Vec<u16> = self.capabilities.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("capability id listed twice".into());
        }
        Ok(())
    }

    /// Whether a peer with `other` may connect to us: same network, same
    /// block protocol version, and at least one channel in common.
    ///
    /// # Errors
    /// A message naming the mismatch.
    pub fn compatible_with(&self, other: &NodeInfo) -> Result<(), String> {
        if self.network != other.network {
            return Err(format!(
                "peer is on network {:?}, we are on {:?}",
                other.network, self.network
            ));
        }
        if self.protocol_version.block != other.protocol_version.block {
            return Err(format!(
                "peer speaks block protocol {}, we speak {}",
                other.protocol_version.block, self.protocol_version.block
            ));
        }
        if !self.channels.iter().any(|c| other.channels.contains(c)) {
            return Err(format!(
                "no channel in common (peer has {:x?}, we have {:x?})",
                other.channels, self.channels
            ));
        }
        Ok(())
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::NodeInfo {
        pb::NodeInfo {
            protocol_version: Some(pb::ProtocolVersion {
                p2p: self.protocol_version.p2p,
                block: self.protocol_version.block,
                app: self.protocol_version.app,
            }),
            node_id: self.node_id.to_string(),
            listen_addr: self.listen_addr.clone(),
            network: self.network.clone(),
            version: self.version.clone(),
            channels: self.channels.clone().into(),
            moniker: self.moniker.clone(),
            node_type: self.node_type.to_pb() as i32,
            capabilities: self
                .capabilities
                .iter()
                .map(|(id, value)| pb::Capability { id: u32::from(*id), value: value.clone() })
                .collect(),
            refusal: None,
        }
    }

    /// From the protobuf form, then [`NodeInfo::validate`].
    ///
    /// # Errors
    /// [`NodeInfoError::Invalid`] for a bad id, node type, capability id or
    /// any rule of `validate`.
    pub fn from_proto(p: pb::NodeInfo) -> Result<NodeInfo, NodeInfoError> {
        let bad = |s: String| NodeInfoError::Invalid(s);
        let v = p.protocol_version.unwrap_or_default();
        let info = NodeInfo {
            protocol_version: ProtocolVersion { p2p: v.p2p, block: v.block, app: v.app },
            node_id: p.node_id.parse().map_err(|e| bad(format!("node_id: {e}")))?,
            listen_addr: p.listen_addr,
            network: p.network,
            version: p.version,
            channels: p.channels.to_vec(),
            moniker: p.moniker,
            node_type: NodeType::from_pb(p.node_type)
                .ok_or_else(|| NodeInfoError::Unsupported(format!("node_type {}", p.node_type)))?,
            capabilities: p
                .capabilities
                .into_iter()
                .map(|c| {
                    Ok((
                        u16::try_from(c.id).map_err(|_| {
                            NodeInfoError::Unsupported(format!("capability id {}", c.id))
                        })?,
                        c.value,
                    ))
                })
                .collect::<Result<_, NodeInfoError>>()?,
        };
        info.validate()?;
        Ok(info)
    }
}

/// Sends `ours` (with `refusal` when we will close the connection after
/// the exchange) and reads the peer's NodeInfo over `conn`, within
/// `timeout`.
///
/// # Errors
/// [`NodeInfoError`]: a frame that is not one message of at most 10 KiB,
/// protobuf that does not decode, a NodeInfo that fails validation, a
/// timeout, a connection failure, or the peer's [`Refusal`]
/// ([`NodeInfoError::Refused`]).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut SecretConnection<S>,
    ours: &NodeInfo,
    refusal: Option<&Refusal>,
    timeout: Duration,
) -> Result<NodeInfo, NodeInfoError> {
    tokio::time::timeout(timeout, async {
        let mut p = ours.to_proto();
        p.refusal = refusal.map(|r| {
            let reason = cut_reason(r.reason.clone());
            let code = match r.code {
                RefusalCode::Duplicate => pb::RefusalCode::Duplicate as i32,
                RefusalCode::Other(c) => c,
            };
            pb::Refusal { code, reason }
        });
        let bytes = p.encode_length_delimited_to_vec();
        if bytes.len() > MAX_NODE_INFO_SIZE {
            return Err(NodeInfoError::OursTooLarge(bytes.len()));
        }
        conn.send_frame(&bytes).await?;
        let frame = conn.recv_frame().await?;
        let mut buf = &frame[..];
        let len = prost::encoding::decode_varint(&mut buf)
            .map_err(|e| NodeInfoError::Malformed(e.to_string()))?;
        if len as usize > MAX_NODE_INFO_SIZE {
            return Err(NodeInfoError::Malformed(format!(
                "{len} bytes, at most {MAX_NODE_INFO_SIZE}"
            )));
        }
        if len as usize != buf.len() {
            return Err(NodeInfoError::Malformed(format!(
                "length prefix says {len} bytes, frame holds {}",
                buf.len()
            )));
        }
        let mut p =
            pb::NodeInfo::decode(buf).map_err(|e| NodeInfoError::Malformed(e.to_string()))?;
        if let Some(r) = p.refusal.take() {
            let code = match pb::RefusalCode::try_from(r.code) {
                Ok(pb::RefusalCode::Duplicate) => RefusalCode::Duplicate,
                _ => RefusalCode::Other(r.code),
            };
            let reason = cut_reason(r.reason);
            return Err(NodeInfoError::Refused(Refusal { code, reason }));
        }
        NodeInfo::from_proto(p)
    })
    .await
    .map_err(|_| NodeInfoError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/protocol.md §3 states the versions a node sends; they come
    /// from these constants, so the spec cannot drift from them.
    #[test]
    fn the_spec_states_the_protocol_versions_sent() {
        let spec =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
                .unwrap();
        let line = format!(
            "`protocol_version` = `{{p2p: {P2P_PROTOCOL}, block: {BLOCK_PROTOCOL}, app: {APP_PROTOCOL}}}`"
        );
        assert!(spec.contains(&line), "docs/protocol.md §3 should say {line}");
    }
    use crate::{NodeKey, SecretConfig};

    pub(crate) fn info(key: &NodeKey) -> NodeInfo {
        NodeInfo {
            protocol_version: ProtocolVersion { p2p: 1, block: 1, app: 0 },
            node_id: key.node_id(),
            listen_addr: "127.0.0.1:26656".into(),
            network: "devnet-abc".into(),
            version: "0.1.0".into(),
            channels: vec![0x00, 0x20],
            moniker: "node-1".into(),
            node_type: NodeType::FullNode,
            capabilities: vec![(1, "1".into())],
        }
    }

    #[test]
    fn roundtrips_through_proto() {
        let k = NodeKey::generate();
        let i = info(&k);
        assert_eq!(NodeInfo::from_proto(i.to_proto()).unwrap(), i);
    }

    #[test]
    fn validation_rules() {
        let k = NodeKey::generate();
        let check = |f: &dyn Fn(&mut NodeInfo)| {
            let mut i = info(&k);
            f(&mut i);
            i.validate()
        };
        assert!(check(&|_| {}).is_ok());
        assert!(check(&|i| i.channels = (0..17).collect()).is_err());
        assert!(check(&|i| i.channels = vec![1, 1]).is_err());
        assert!(check(&|i| i.moniker = "bad\nname".into()).is_err());
        assert!(check(&|i| i.moniker = "x".repeat(65)).is_err());
        assert!(check(&|i| i.listen_addr = "nowhere".into()).is_err());
        assert!(check(&|i| i.listen_addr = "127.0.0.1:0".into()).is_ok(), "dial-only");
        assert!(check(&|i| i.listen_addr = "[::1]:26656".into()).is_ok());
        assert!(check(&|i| i.listen_addr = "seed.example:26656".into()).is_ok());
        assert!(check(&|i| i.capabilities = vec![(1, "a".into()), (1, "b".into())]).is_err());
    }

    #[test]
    fn compatibility() {
        let k = NodeKey::generate();
        let a = info(&k);
        let mut b = info(&k);
        assert!(a.compatible_with(&b).is_ok());
        b.network = "other".into();
        assert!(a.compatible_with(&b).unwrap_err().contains("network"));
        let mut b = info(&k);
        b.protocol_version.block = 2;
        assert!(a.compatible_with(&b).unwrap_err().contains("block protocol"));
        let mut b = info(&k);
        b.channels = vec![0x77];
        assert!(a.compatible_with(&b).unwrap_err().contains("no channel"));
    }

    /// Two keys and a secret connection between them over a pipe.
    async fn pair() -> (
        NodeKey,
        NodeKey,
        SecretConnection<tokio::io::DuplexStream>,
        SecretConnection<tokio::io::DuplexStream>,
    ) {
        let (x, y) = tokio::io::duplex(1 << 16);
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let cfg = SecretConfig::default();
        let (a, b) = tokio::join!(
            SecretConnection::connect(x, &ka, None, &cfg),
            SecretConnection::accept(y, &kb, &cfg)
        );
        (ka, kb, a.unwrap(), b.unwrap())
    }

    #[tokio::test]
    async fn exchange_over_a_secret_connection_then_data_still_flows() {
        let (ka, kb, mut a, mut b) = pair().await;
        let (ia, ib) = (info(&ka), info(&kb));
        let t = Duration::from_secs(5);
        let (ra, rb) = tokio::join!(exchange(&mut a, &ia, None, t), exchange(&mut b, &ib, None, t));
        assert_eq!(ra.unwrap(), ib);
        assert_eq!(rb.unwrap(), ia);
        // Nonces carry over into the split halves.
        let (_, mut aw) = a.split();
        let (mut br, _) = b.split();
        aw.write_all(b"after").await.unwrap();
        let mut got = bytes::BytesMut::new();
        br.read_into(&mut got).await.unwrap();
        assert_eq!(&got[..], b"after");
    }

    #[tokio::test]
    async fn oversized_or_garbage_node_info_is_refused() {
        let (_ka, kb, mut a, mut b) = pair().await;
        let mut big = Vec::new();
        prost::encoding::encode_varint(20_000, &mut big);
        big.resize(20_003, 0);
        a.send_frame(&big).await.unwrap();
        let err = exchange(&mut b, &info(&kb), None, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, NodeInfoError::Malformed(_)), "{err}");
        a.send_frame(&[3, 0xff, 0xff, 0xff]).await.unwrap();
        let err = exchange(&mut b, &info(&kb), None, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, NodeInfoError::Malformed(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (ka, _kb, mut a, _b) = pair().await;
        let err = exchange(&mut a, &info(&ka), None, Duration::from_secs(10)).await.unwrap_err();
        assert!(matches!(err, NodeInfoError::Timeout(_)), "{err}");
    }
}
