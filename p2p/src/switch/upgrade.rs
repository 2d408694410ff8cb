//! The upgrade of a raw stream into a [`Peer`]: the secret handshake, the
//! NodeInfo exchange and the checks, in order (CometBFT's
//! `p2p/transport.go` upgrade), each failure a typed [`RejectReason`] that
//! says whose fault it is.
//!
//! 1. the secret handshake within `handshake_timeout`; the dialed id
//!    matches the authenticated id;
//! 2. the authenticated id is not banned (checked before our NodeInfo
//!    is sent, so a banned peer sees the connection close right after the
//!    handshake);
//! 3. the NodeInfo exchange within `node_info_timeout`; the peer's
//!    NodeInfo is valid and carries no refusal; a duplicate of a connected
//!    id is refused here, after our NodeInfo told it why (a
//!    [`crate::Refusal`]);
//! 4. the NodeInfo id equals the authenticated id;
//! 5. not ourselves;
//! 6. compatible: same network and block protocol, a shared channel;
//! 7. the application filter by NodeInfo (within `filter_timeout`).
//!
//! Admission to the peer set (limits, duplicates, eviction) follows in
//! [`super::PeerManager::admit`]. An error after step 1 that is the peer's
//! fault is scored against the authenticated id; one before it counts
//! against the IP (see [`super::PeerManager::handshake_finished`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;

use super::manager::ConnKind;
use super::peer::{Peer, PeerInner};
use super::reject::RejectReason;
use super::{BoxStream, Switch};
use crate::fault::Misbehavior;
use crate::key::NodeId;
use crate::mconn::{ChannelDescriptor, ChannelReceiver, MConnection};
use crate::node_info;
use crate::secret::{SecretConfig, SecretConnection};

/// How an upgrade starts: who dialed, and which id the dialer expects.
#[derive(Debug, Clone)]
pub(super) struct Upgrade {
    /// Kind of connection (sets the direction and the limits that apply).
    pub kind: ConnKind,
    /// The id the dialed address named (outbound only).
    pub expected: Option<NodeId>,
    /// Cancelled when a newer inbound connection displaces this pending
    /// handshake (inbound only); checked until admission.
    pub displaced: Option<tokio_util::sync::CancellationToken>,
}

impl Switch {
    /// Runs steps 1-7 on `stream` from/to `remote` and admits the peer.
    /// A peer fault after the handshake is scored against the
    /// authenticated id.
    pub(super) async fn upgrade(
        &self,
        stream: BoxStream,
        remote: SocketAddr,
        up: Upgrade,
    ) -> Result<Peer, RejectReason> {
        let displaced = up.displaced.clone();
        let work = async {
            let conn = self.handshake(stream, &up).await?;
            let actual = conn.remote_id();
            match self.check_authenticated(conn, remote, &up).await {
                Ok(x) => Ok(x),
                Err(e) => {
                    let kind = match &e {
                        RejectReason::NodeInfo(ni) => ni.misbehavior(),
                        RejectReason::NodeInfoIdMismatch { .. } => {
                            Some(Misbehavior::MalformedMessage)
                        }
                        _ => None,
                    };
                    if let Some(kind) = kind {
                        self.score_id(actual, kind, &e.to_string());
                    }
                    Err(e)
                }
            }
        };
        // Until admission nothing is shared, so a displaced handshake can
        // simply be dropped.
        let (peer, receivers) = match displaced {
            Some(token) => tokio::select! {
                r = work => r?,
                _ = token.cancelled() => return Err(RejectReason::Displaced),
            },
            None => work.await?,
        };
        self.admit(&peer).await?;
        self.run_peer(peer.clone(), receivers).await;
        Ok(peer)
    }

    /// Step 1: the secret handshake, within `handshake_timeout`.
    async fn handshake(
        &self,
        stream: BoxStream,
        up: &Upgrade,
    ) -> Result<SecretConnection<BoxStream>, RejectReason> {
        let cfg = &self.0.config;
        let secret_cfg =
            SecretConfig { handshake_timeout: cfg.handshake_timeout, ..cfg.secret.clone() };
        let conn = match up.kind {
            ConnKind::Inbound => SecretConnection::accept(stream, &self.0.key, &secret_cfg).await,
            _ => SecretConnection::connect(stream, &self.0.key, up.expected, &secret_cfg).await,
        }
        .map_err(RejectReason::Handshake)?;
        Ok(conn)
    }

    /// Steps 2-7, and the MConnection over the channels both sides serve.
    async fn check_authenticated(
        &self,
        mut conn: SecretConnection<BoxStream>,
        remote: SocketAddr,
        up: &Upgrade,
    ) -> Result<(Peer, Vec<ChannelReceiver>), RejectReason> {
        let cfg = &self.0.config;
        let actual = conn.remote_id();
        self.0.manager.lock().check_banned(super::std_now(), &actual)?;
        // A duplicate in the same direction as the connected one is told
        // why in our NodeInfo, then closed: two inbound (or two outbound)
        // connections under one id are two processes with one node key (a
        // copied home) or a restart before the old connection timed out,
        // which its operator should see. Crossed dials of two honest nodes
        // (one each way) are closed without a word, as before.
        let duplicate = self.0.manager.lock().check_duplicate(&actual, up.kind).err();
        let same_way = self.peer(&actual).is_some_and(|p| p.direction() == up.kind.direction());
        let refusal = duplicate.as_ref().filter(|_| same_way).map(|_| node_info::Refusal {
            code: node_info::RefusalCode::Duplicate,
            reason: format!("node {} is already connected to node {actual}", self.node_id()),
        });
        let ours = self.node_info();
        let info = node_info::exchange(&mut conn, &ours, refusal.as_ref(), cfg.node_info_timeout)
            .await
            .map_err(RejectReason::NodeInfo)?;
        if let Some(e) = duplicate {
            return Err(e);
        }
        if info.node_id != actual {
            return Err(RejectReason::NodeInfoIdMismatch { claimed: info.node_id, actual });
        }
        if actual == self.node_id() {
            return Err(RejectReason::SelfConnection);
        }
        ours.compatible_with(&info).map_err(RejectReason::Incompatible)?;
        if let Some(f) = &self.0.id_filter {
            tokio::time::timeout(cfg.filter_timeout, f(info.clone()))
                .await
                .map_err(|_| RejectReason::FilterTimeout)?
                .map_err(RejectReason::Filtered)?;
        }
        // Only channels both sides serve are opened.
        let chans: Vec<ChannelDescriptor> =
            self.0.channels.iter().filter(|d| info.channels.contains(&d.id)).cloned().collect();
        let budget = Some(self.0.budget.clone());
        let (mconn, receivers) = MConnection::with_budget(conn, &chans, cfg.mconn.clone(), budget)
            .map_err(|e| RejectReason::Incompatible(e.to_string()))?;
        let peer = Peer(Arc::new(PeerInner {
            info,
            kind: up.kind,
            conn_id: std::sync::OnceLock::new(),
            socket_addr: remote,
            conn: mconn,
            connected_at: super::std_now(),
            last_msg_ms: AtomicU64::new(0),
            stop_reason: Mutex::new(None),
            metrics: self.0.metrics.clone(),
        }));
        Ok((peer, receivers))
    }
}
