//! The web port's server: the accept loop, its limits and its guard.
//!
//! - Connections: at most `rpc.max_connections` open, and
//!   `rpc.max_connections_per_ip` from one address (an IPv6 /64), WebSocket
//!   ones included: the slot lives in the connection's IO, which an
//!   upgrade takes along; one beyond either is closed at once. A request
//!   must be answered within `rpc.request_timeout_s` (its body included),
//!   else it gets 408 and the connection closes. Each is served by
//!   hyper's HTTP/1.1 server with `header_read_timeout` =
//!   `rpc.header_read_timeout_s`: a client trickling header bytes is
//!   closed, and so is a keep-alive connection idle that long. With
//!   `rpc.tls` each is a TLS connection first ([`crate::tls`]), its
//!   handshake bounded by the same timeout.
//! - The guard ([`guard`]) runs before every route: the `Host` header
//!   must name this node (a local name, an IP address, `rpc.host`, or one
//!   of `rpc.allowed_hosts`, as geth's `--http.vhosts`), which defeats DNS
//!   rebinding; a browser's `Origin` must be the node's own page (its
//!   scheme and the checked `Host`) or in `rpc.cors_allowed_origins`.
//! - On stop the listener closes and open connections finish their
//!   request and close (hyper's graceful shutdown).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

use crate::config::RpcConfig;
use crate::node::Node;
use crate::rpc::{code, err, reply};

/// Open things (connections, WebSocket clients) by address ([`ip_key`]),
/// for a per-IP limit; cheap to clone (one shared table).
#[derive(Clone, Debug, Default)]
pub struct IpCounts(Arc<parking_lot::Mutex<HashMap<IpAddr, usize>>>);

/// One place in an [`IpCounts`], given back on drop.
#[derive(Debug)]
pub struct IpPlace {
    counts: IpCounts,
    ip: IpAddr,
}

impl IpCounts {
    /// A place for `ip` (keyed by [`ip_key`]), or `None` when `max` are
    /// taken.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<IpPlace> {
        let ip = ip_key(ip);
        let mut map = self.0.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpPlace { counts: self.clone(), ip })
    }
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A connection's places in `max_connections` and in its address's count.
struct Slot {
    _ip: IpPlace,
    _total: OwnedSemaphorePermit,
}

impl Slot {
    /// Takes both places, or `None` when either limit is full.
    fn take(
        slots: &Arc<Semaphore>,
        per_ip: &IpCounts,
        max_per_ip: usize,
        ip: IpAddr,
    ) -> Option<Slot> {
        let place = per_ip.take(ip, max_per_ip)?;
        let total = slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _ip: place, _total: total })
    }
}

/// The address a per-IP limit counts: IPv4 (IPv4-mapped IPv6 as IPv4),
/// or an IPv6 address's /64 (one host's usual allocation).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// A connection's IO with its [`Slot`]: the slot is given back when the IO
/// drops, after an upgrade too.
struct Counted<S> {
    io: S,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `stopped` resolves, with the limits
/// of `cfg` (see the module docs) and TLS when `tls` is given.
pub fn serve(
    cfg: &RpcConfig,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let per_ip = IpCounts::default();
    let max_per_ip = cfg.max_connections_per_ip;
    let header_timeout = Duration::from_secs(cfg.header_read_timeout_s.max(1));
    let request_timeout = Duration::from_secs(cfg.request_timeout_s.max(1));
    // Tells open connections to finish the request they serve and close.
    let (closing, _) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::pin!(stopped);
        loop {
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!(error = %e, "web/RPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut stopped => break,
            };
            let Some(slot) = Slot::take(&slots, &per_ip, max_per_ip, remote.ip()) else {
                tracing::debug!(
                    %remote,
                    "web/RPC connection refused: rpc.max_connections or max_connections_per_ip open"
                );
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let tls = tls.clone();
            let mut closing = closing.subscribe();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(remote));
                        let answer = app.clone().oneshot(req.map(Body::new));
                        // A body that never ends (or a handler that never
                        // answers) does not hold the connection for ever.
                        async move {
                            match tokio::time::timeout(request_timeout, answer).await {
                                Ok(r) => r,
                                Err(_) => Ok(timed_out(request_timeout)),
                            }
                        }
                    });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
                // Serves one connection until it ends, or asks it to close
                // once the server stops.
                macro_rules! drive {
                    ($io:expr) => {{
                        let conn =
                            http.serve_connection(TokioIo::new($io), service).with_upgrades();
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => r,
                            _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        }
                    }};
                }
                let r = match tls {
                    None => drive!(Counted { io: stream, _slot: slot }),
                    Some(acceptor) => {
                        let accepted =
                            tokio::time::timeout(header_timeout, acceptor.accept(stream)).await;
                        let stream = match accepted {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        drive!(Counted { io: stream, _slot: slot })
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "web/RPC connection ended");
                }
            });
        }
        drop(listener);
        let _ = closing.send(true);
    });
}

/// The answer to a request that took longer than `rpc.request_timeout_s`
/// (HTTP 408; hyper closes the connection after it, its body unread).
fn timed_out(t: Duration) -> Response {
    let msg = format!("the request took longer than {} s (rpc.request_timeout_s)", t.as_secs());
    let body = reply(Value::Null, Err(err(code::INVALID_REQUEST, msg)));
    (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response()
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]`,
/// `[v6]:port`), lower-cased, brackets removed.
fn host_name(host: &str) -> String {
    let h = host.trim();
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match h.rsplit_once(':') {
            Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
            _ => h,
        }
    };
    name.to_ascii_lowercase()
}

/// Whether the `Host` header names this node: absent (not a browser: every
/// browser sends one), a local name (`localhost`, `*.localhost`), an IP
/// address (a rebinding page is served under a name, never an address),
/// `rpc.host`, or one of `rpc.allowed_hosts` (`"*"`: any).
pub fn host_allowed(cfg: &RpcConfig, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = host_name(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok()
        || name == host_name(&cfg.host)
        || cfg.allowed_hosts.iter().any(|a| a == "*" || host_name(a) == name)
}

/// Whether a browser request's `Origin` may use the API: no `Origin` (not
/// a browser), the node's own page (`Origin` = `http(s)://` + a `Host`
/// that passed [`host_allowed`]), or one of `rpc.cors_allowed_origins`
/// (`"*"` allows all), as CometBFT's `cors_allowed_origins`.
pub fn origin_allowed(cfg: &RpcConfig, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    if cfg.cors_allowed_origins.iter().any(|o| o == "*" || o == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let bare = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    !host.is_empty() && bare == Some(host) && host_allowed(cfg, headers)
}

fn forbidden(message: String) -> Response {
    let body = reply(Value::Null, Err(err(code::NOT_ALLOWED, message)));
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

/// The middleware before every route: [`host_allowed`], then
/// [`origin_allowed`]; a refusal is 403 with a JSON-RPC error naming the
/// config key that would allow it.
pub async fn guard(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let cfg = &node.cfg.rpc;
    let headers = req.headers();
    if !host_allowed(cfg, headers) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("?");
        let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        tracing::info!(host, ?remote, "web/RPC request refused: Host is not this node");
        return forbidden(format!(
            "requests for host {host} are refused; add it to rpc.allowed_hosts"
        ));
    }
    if !origin_allowed(cfg, headers) {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("?");
        return forbidden(format!(
            "requests from {origin} are refused; add it to rpc.cors_allowed_origins"
        ));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, v.parse().unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_names_of_this_node_pass_the_host_check() {
        let cfg = RpcConfig::default();
        for ok in ["127.0.0.1:26657", "localhost:26657", "LOCALHOST", "[::1]:26657", "10.1.2.3"] {
            assert!(host_allowed(&cfg, &headers(Some(ok), None)), "{ok}");
        }
        assert!(host_allowed(&cfg, &headers(None, None)), "no Host: not a browser");
        for bad in ["attacker.example:26657", "attacker.example", "localhost.attacker.example"] {
            assert!(!host_allowed(&cfg, &headers(Some(bad), None)), "{bad}");
        }
        let cfg = RpcConfig {
            host: "node.lan".into(),
            allowed_hosts: vec!["rpc.example.org".into()],
            ..RpcConfig::default()
        };
        assert!(host_allowed(&cfg, &headers(Some("node.lan:1"), None)));
        assert!(host_allowed(&cfg, &headers(Some("RPC.example.org:443"), None)));
        assert!(!host_allowed(&cfg, &headers(Some("other.example.org"), None)));
    }

    #[test]
    fn a_rebinding_page_is_not_its_own_origin() {
        let cfg = RpcConfig::default();
        // DNS rebinding: Host and Origin agree, but name the attacker.
        let h = headers(Some("attacker.example:26657"), Some("http://attacker.example:26657"));
        assert!(!origin_allowed(&cfg, &h));
        let own = headers(Some("127.0.0.1:26657"), Some("http://127.0.0.1:26657"));
        assert!(origin_allowed(&cfg, &own));
        let tls = headers(Some("localhost:26657"), Some("https://localhost:26657"));
        assert!(origin_allowed(&cfg, &tls));
        let cross = headers(Some("127.0.0.1:26657"), Some("http://evil.example"));
        assert!(!origin_allowed(&cfg, &cross));
        let cfg = RpcConfig { cors_allowed_origins: vec!["http://evil.example".into()], ..cfg };
        assert!(origin_allowed(&cfg, &cross));
    }
}
