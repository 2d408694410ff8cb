//! Routing to reactors: once a peer is admitted, one task per channel hands
//! its messages to the reactor that owns the channel, and one task waits
//! for the connection's end, scores a wire violation, lets the reactors
//! finish within `remove_grace`, and removes the peer (CometBFT's
//! `Switch.addPeer` / `StopPeerForError` flow).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::Instrument;

use super::metrics::{ChannelLabel, DirLabel};
use super::peer::Peer;
use super::{now_ms, StopReason, Switch, SwitchEvent};
use crate::fault::Misbehavior;
use crate::mconn::ChannelReceiver;

/// Takes an admitted peer back out of the manager and the peer set if the
/// task setting it up ends before its removal task exists (a reactor's
/// `add_peer` panicked, or the task was aborted): the id is never left
/// admitted with nobody to remove it.
struct Admitted {
    sw: Switch,
    peer: Option<Peer>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(peer) = self.peer.take() {
            peer.0.conn.stop();
            self.sw.forget(&peer);
        }
    }
}

impl Switch {
    /// Removes `peer` from the manager and the peer set (if it is still
    /// the one there) and wakes those waiting for a peer to leave.
    fn forget(&self, peer: &Peer) {
        {
            let mut manager = self.0.manager.lock();
            manager.disconnected(&peer.id(), peer.conn_id());
            let mut set = self.0.peers.lock();
            if set.get(&peer.id()).is_some_and(|p| Arc::ptr_eq(&p.0, &peer.0)) {
                set.peers.remove(&peer.id());
            }
        }
        self.0.metrics.peers.get_or_create(&DirLabel { direction: peer.direction().into() }).dec();
        self.0.peer_left.notify_waiters();
    }

    /// Notifies reactors, starts one task per channel, and a task that
    /// waits for the end of the connection.
    pub(super) async fn run_peer(&self, peer: Peer, receivers: Vec<ChannelReceiver>) {
        let mut admitted = Admitted { sw: self.clone(), peer: Some(peer.clone()) };
        let span = tracing::info_span!("peer", id = %peer.id(), addr = %peer.socket_addr(), dir = ?peer.direction());
        for r in &self.0.reactors {
            r.add_peer(&peer).await;
        }
        tracing::info!(parent: &span, moniker = %peer.node_info().moniker, kind = ?peer.kind(), "peer added");
        self.emit(SwitchEvent::PeerAdded { id: peer.id(), direction: peer.direction() });
        let mut tasks = tokio::task::JoinSet::new();
        for mut rx in receivers {
            let ch = rx.id();
            let reactor = self.0.reactors[self.0.routes[&ch]].clone();
            let (sw, p) = (self.clone(), peer.clone());
            tasks.spawn(
                async move {
                    let label = ChannelLabel::of(ch);
                    while let Some(bytes) = rx.recv().await {
                        p.0.last_msg_ms.store(now_ms(p.0.connected_at).max(1), Ordering::Relaxed);
                        p.0.metrics.bytes_received.get_or_create(&label).inc_by(bytes.len() as u64);
                        p.0.metrics.messages_received.get_or_create(&label).inc();
                        if let Err(e) = reactor.receive(sw.clone(), p.clone(), ch, bytes).await {
                            let why = format!("undecodable message on channel {ch:#04x}: {e}");
                            sw.report(&p, Misbehavior::MalformedMessage, why).await;
                            break;
                        }
                    }
                }
                .instrument(span.clone()),
            );
        }
        let sw = self.clone();
        tokio::spawn(
            async move {
                let conn_reason = peer.0.conn.closed().await;
                // A wire violation closed the connection: score it like any
                // other misbehaviour, so a peer repeating it is banned.
                if let Some(kind) = conn_reason.misbehavior() {
                    sw.report(&peer, kind, conn_reason.to_string()).await;
                }
                // Let every reactor see the last messages before remove_peer,
                // within the grace period; a stuck receive is aborted.
                let grace = sw.0.config.remove_grace;
                let drained = tokio::time::timeout(grace, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        ?grace,
                        "a reactor did not finish in time; aborting its receive"
                    );
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
                let reason = peer
                    .0
                    .stop_reason
                    .lock()
                    .clone()
                    .unwrap_or(StopReason::Connection(conn_reason));
                for r in &sw.0.reactors {
                    r.remove_peer(&peer, &reason).await;
                }
                {
                    let mut last = sw.0.last_stop.lock();
                    if last.len() >= 1024 {
                        last.clear();
                    }
                    last.insert(peer.id(), reason.clone());
                }
                sw.forget(&peer);
                tracing::info!(%reason, "peer removed");
                sw.emit(SwitchEvent::PeerRemoved { id: peer.id(), reason });
            }
            .instrument(span),
        );
        // The removal task owns the peer's end from here.
        admitted.peer = None;
    }
}
