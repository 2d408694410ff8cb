//! [`Transport`]: how the switch listens, accepts and dials, over any
//! stream that is `AsyncRead + AsyncWrite`. Ships [`TcpTransport`] (tokio)
//! and [`MemoryTransport`] (in-process pipes, for tests and simulations);
//! a simulated network implements the same two traits.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A way to reach and be reached by peers.
pub trait Transport: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound listener.
    type Listener: Listener<Stream = Self::Stream>;
    /// Binds `addr` (port 0 picks a free port).
    fn listen(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    /// Connects to `addr`. The switch bounds this with `dial_timeout`.
    fn dial(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A bound listener of a [`Transport`].
pub trait Listener: Send + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next inbound connection and the remote socket address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
    /// The bound address.
    fn local_addr(&self) -> SocketAddr;
}

/// TCP over tokio, with `TCP_NODELAY` set on every connection (the
/// MConnection batches writes itself).
#[derive(Debug, Clone, Default)]
pub struct TcpTransport;

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpTransportListener {
    inner: TcpListener,
    local: SocketAddr,
}

impl Transport for TcpTransport {
    type Stream = TcpStream;
    type Listener = TcpTransportListener;

    async fn listen(&self, addr: SocketAddr) -> io::Result<TcpTransportListener> {
        let inner = TcpListener::bind(addr).await?;
        let local = inner.local_addr()?;
        Ok(TcpTransportListener { inner, local })
    }

    async fn dial(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

impl Listener for TcpTransportListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (s, addr) = self.inner.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, addr))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

type Inbox = mpsc::Sender<(DuplexStream, SocketAddr)>;

#[derive(Default)]
struct MemoryNet {
    listeners: HashMap<SocketAddr, Inbox>,
    next_port: u16,
}

/// In-process transport: a dial creates a `tokio::io::duplex` pipe and
/// hands one end to the listener bound at that address. Each transport
/// value has its own IP (so per-IP limits can be tested) and shares a
/// network with the transports made by [`MemoryTransport::with_ip`] from it.
#[derive(Clone)]
pub struct MemoryTransport {
    net: Arc<Mutex<MemoryNet>>,
    ip: IpAddr,
    /// Pipe buffer in bytes per direction (default 256 KiB).
    pub buffer: usize,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport").field("ip", &self.ip).finish()
    }
}

impl MemoryTransport {
    /// A new, empty in-memory network, seen from 127.0.0.1.
    pub fn new() -> Self {
        MemoryTransport {
            net: Arc::new(Mutex::new(MemoryNet { next_port: 20_000, ..MemoryNet::default() })),
            ip: IpAddr::from([127, 0, 0, 1]),
            buffer: 256 * 1024,
        }
    }

    /// The same network, seen from another IP.
    pub fn with_ip(&self, ip: IpAddr) -> Self {
        MemoryTransport { net: self.net.clone(), ip, buffer: self.buffer }
    }

    /// The IP this transport dials from and listens on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn next_addr(&self) -> SocketAddr {
        let mut net = self.net.lock();
        net.next_port = net.next_port.wrapping_add(1).max(1024);
        SocketAddr::new(self.ip, net.next_port)
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

/// A listener of a [`MemoryTransport`]; unbinds when dropped.
pub struct MemoryListener {
    inbox: mpsc::Receiver<(DuplexStream, SocketAddr)>,
    local: SocketAddr,
    net: Arc<Mutex<MemoryNet>>,
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        self.net.lock().listeners.remove(&self.local);
    }
}

impl Transport for MemoryTransport {
    type Stream = DuplexStream;
    type Listener = MemoryListener;

    async fn listen(&self, addr: SocketAddr) -> io::Result<MemoryListener> {
        let local = if addr.port() == 0 { self.next_addr() } else { addr };
        let (tx, rx) = mpsc::channel(64);
        let mut net = self.net.lock();
        if net.listeners.contains_key(&local) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        net.listeners.insert(local, tx);
        Ok(MemoryListener { inbox: rx, local, net: self.net.clone() })
    }

    async fn dial(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        let inbox = self.net.lock().listeners.get(&addr).cloned();
        let inbox = inbox.ok_or(io::ErrorKind::ConnectionRefused)?;
        let (ours, theirs) = tokio::io::duplex(self.buffer);
        let from = self.next_addr();
        inbox
            .send((theirs, from))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionRefused))?;
        Ok(ours)
    }
}

impl Listener for MemoryListener {
    type Stream = DuplexStream;

    async fn accept(&mut self) -> io::Result<(DuplexStream, SocketAddr)> {
        self.inbox.recv().await.ok_or_else(|| io::ErrorKind::BrokenPipe.into())
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_roundtrip<T: Transport>(t: T, bind: SocketAddr) {
        let mut l = t.listen(bind).await.unwrap();
        let addr = l.local_addr();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let mut c = t.dial(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn tcp_and_memory_carry_bytes() {
        echo_roundtrip(TcpTransport, "127.0.0.1:0".parse().unwrap()).await;
        echo_roundtrip(MemoryTransport::new(), "10.0.0.1:0".parse().unwrap()).await;
    }

    #[tokio::test]
    async fn memory_dial_to_nobody_is_refused_and_ips_are_kept() {
        let net = MemoryTransport::new();
        let err = net.dial("127.0.0.1:1".parse().unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let mut l = net.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let other = net.with_ip("10.1.2.3".parse().unwrap());
        let _c = other.dial(l.local_addr()).await.unwrap();
        let (_, from) = l.accept().await.unwrap();
        assert_eq!(from.ip(), "10.1.2.3".parse::<IpAddr>().unwrap());
        // A dropped listener unbinds.
        let addr = l.local_addr();
        drop(l);
        assert!(net.dial(addr).await.is_err());
    }
}
