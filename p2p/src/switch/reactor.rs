//! The [`Reactor`] API: how an application plugs its protocol into the
//! switch (CometBFT's `p2p.Reactor`, with typed messages).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::{Peer, StopReason, Switch};
use crate::mconn::ChannelDescriptor;

/// A message delivered to a reactor: who sent it, on which channel, and the
/// decoded message. `switch` lets the reactor answer, gossip or report.
#[derive(Debug)]
pub struct Envelope<M> {
    /// The peer it came from.
    pub peer: Peer,
    /// The channel it came on.
    pub channel: u8,
    /// The message, decoded from protobuf.
    pub message: M,
    /// The switch, to broadcast or report misbehaviour.
    pub switch: Switch,
}

/// A protocol running over the switch.
///
/// A reactor names its channels and its protobuf message type once; the
/// switch decodes every message on those channels into `Message` before
/// [`Reactor::receive`] sees it, and a message that does not decode is a
/// protocol error of the peer (it is disconnected and banned for
/// `SwitchConfig::ban_protocol_error`).
///
/// Each channel of each peer is served by its own task, which awaits
/// `receive` before taking the next message of that channel. A slow
/// `receive` therefore holds back only that channel of that peer: the
/// peer's sender waits for credit, while other channels, other peers,
/// other reactors and ping/pong keep going. `receive` must not block the
/// thread (use `spawn_blocking` for heavy work).
///
/// This trait-based design (rather than an event stream per reactor) keeps
/// a custom reactor to one `impl` block with three short methods, and makes
/// the ordering rule "add_peer before any receive from that peer, and
/// remove_peer after the last" the switch's job, not the reactor's.
pub trait Reactor: Send + Sync + 'static {
    /// The protobuf message type of this reactor's channels.
    type Message: prost::Message + Default + Send + 'static;

    /// The channels this reactor owns. Ids must be unique across the
    /// reactors of a switch.
    fn channels(&self) -> Vec<ChannelDescriptor>;

    /// A peer has connected; called before any `receive` from it.
    fn add_peer(&self, peer: &Peer) -> impl Future<Output = ()> + Send {
        let _ = peer;
        async {}
    }

    /// A peer has disconnected for `reason`; called after its last
    /// `receive`, before it leaves the switch's peer set.
    fn remove_peer(&self, peer: &Peer, reason: &StopReason) -> impl Future<Output = ()> + Send {
        let _ = (peer, reason);
        async {}
    }

    /// A message from a peer.
    fn receive(&self, envelope: Envelope<Self::Message>) -> impl Future<Output = ()> + Send;
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reactor with its message type erased, as the switch stores it.
pub(crate) trait DynReactor: Send + Sync {
    fn channels(&self) -> Vec<ChannelDescriptor>;
    fn add_peer<'a>(&'a self, peer: &'a Peer) -> BoxFuture<'a, ()>;
    fn remove_peer<'a>(&'a self, peer: &'a Peer, reason: &'a StopReason) -> BoxFuture<'a, ()>;
    fn receive(
        &self,
        switch: Switch,
        peer: Peer,
        channel: u8,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<(), prost::DecodeError>>;
}

impl<R: Reactor> DynReactor for R {
    fn channels(&self) -> Vec<ChannelDescriptor> {
        Reactor::channels(self)
    }
    fn add_peer<'a>(&'a self, peer: &'a Peer) -> BoxFuture<'a, ()> {
        Box::pin(Reactor::add_peer(self, peer))
    }
    fn remove_peer<'a>(&'a self, peer: &'a Peer, reason: &'a StopReason) -> BoxFuture<'a, ()> {
        Box::pin(Reactor::remove_peer(self, peer, reason))
    }
    fn receive(
        &self,
        switch: Switch,
        peer: Peer,
        channel: u8,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<(), prost::DecodeError>> {
        Box::pin(async move {
            let message = <R::Message as prost::Message>::decode(bytes)?;
            Reactor::receive(self, Envelope { peer, channel, message, switch }).await;
            Ok(())
        })
    }
}
