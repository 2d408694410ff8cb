//! Request/response over a channel: [`Requester`] gives each request an id
//! (from one counter per requester, matched per peer, so ids are unique on
//! each connection) and waits for the matching response with a timeout
//! (Chia's optional message id), so reactors need not hand-roll it.
//!
//! Wire form: every message on the channel is a `plexus.p2p.RpcFrame`
//! `{id, response, payload}`. The reactor that owns the channel declares
//! `type Message = RpcFrame`, passes each received frame to
//! [`Requester::handle`], serves the requests it gets back, and answers
//! with [`respond`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
pub use plexus_proto::p2p::RpcFrame;
use prost::Message;
use tokio::sync::oneshot;

use super::Peer;
use crate::key::NodeId;
use crate::mconn::SendError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request could not be queued.
    #[error("send: {0}")]
    Send(#[from] SendError),
    /// No response within the timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// `max_pending` requests are already waiting.
    #[error("too many pending requests ({0})")]
    TooManyPending(usize),
    /// The response did not decode as the expected type.
    #[error("response does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The peer went away before answering.
    #[error("peer disconnected")]
    Disconnected,
}

/// A response arrived for no pending request: a protocol error of the peer
/// (report it as misbehaviour).
#[derive(Debug, thiserror::Error)]
#[error("unsolicited response {id} from {peer}")]
pub struct UnsolicitedResponse {
    /// The peer.
    pub peer: NodeId,
    /// The id it used.
    pub id: u64,
}

/// A request received from a peer, to be served and answered with
/// [`respond`] using its `id`.
#[derive(Debug, Clone)]
pub struct Request {
    /// The requester's id for it.
    pub id: u64,
    /// The encoded request.
    pub payload: Bytes,
}

/// Tracks this node's pending requests.
#[derive(Debug)]
pub struct Requester {
    pending: Mutex<HashMap<(NodeId, u64), oneshot::Sender<Bytes>>>,
    next_id: AtomicU64,
    timeout: Duration,
    max_pending: usize,
}

impl Requester {
    /// A requester whose requests time out after `timeout`, with at most
    /// `max_pending` requests waiting at once (over all peers).
    pub fn new(timeout: Duration, max_pending: usize) -> Self {
        Requester {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            timeout,
            max_pending,
        }
    }

    /// Sends `req` to `peer` on `channel` and waits for the response.
    ///
    /// # Errors
    /// [`RequestError`].
    pub async fn request<Req: Message, Resp: Message + Default>(
        &self,
        peer: &Peer,
        channel: u8,
        req: &Req,
    ) -> Result<Resp, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (peer.id(), id);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_pending {
                return Err(RequestError::TooManyPending(self.max_pending));
            }
            pending.insert(key, tx);
        }
        // Removes the entry however this future ends, dropped included.
        struct Pending<'a>(&'a Requester, (NodeId, u64));
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                self.0.pending.lock().remove(&self.1);
            }
        }
        let _pending = Pending(self, key);
        let frame = RpcFrame { id, response: false, payload: req.encode_to_vec().into() };
        peer.send_msg(channel, &frame).await?;
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(RequestError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(RequestError::Disconnected),
            Ok(Ok(bytes)) => Ok(Resp::decode(bytes)?),
        }
    }

    /// Handles a frame received from `peer`: a response completes its
    /// pending request (`Ok(None)`); a request is returned to be served.
    ///
    /// # Errors
    /// [`UnsolicitedResponse`] for a response nobody waits for (or one
    /// that arrived after its timeout).
    pub fn handle(
        &self,
        peer: &Peer,
        frame: RpcFrame,
    ) -> Result<Option<Request>, UnsolicitedResponse> {
        if !frame.response {
            return Ok(Some(Request { id: frame.id, payload: frame.payload }));
        }
        match self.pending.lock().remove(&(peer.id(), frame.id)) {
            Some(tx) => {
                let _ = tx.send(frame.payload);
                Ok(None)
            }
            None => Err(UnsolicitedResponse { peer: peer.id(), id: frame.id }),
        }
    }

    /// Fails every request pending on `peer` with
    /// [`RequestError::Disconnected`]; call it from `remove_peer`.
    pub fn peer_gone(&self, peer: &NodeId) {
        self.pending.lock().retain(|(p, _), _| p != peer);
    }

    /// Requests waiting now.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Answers request `id` of `peer` on `channel` with `resp`.
///
/// # Errors
/// [`SendError`].
pub async fn respond<Resp: Message>(
    peer: &Peer,
    channel: u8,
    id: u64,
    resp: &Resp,
) -> Result<(), SendError> {
    peer.send_msg(channel, &RpcFrame { id, response: true, payload: resp.encode_to_vec().into() })
        .await
}
