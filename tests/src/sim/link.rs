//! The simulated network's links: [`SimTransport`] is the memory
//! transport with every connection passed through two delay pumps (one
//! per direction) that model the link between the two nodes' regions:
//! one-way latency from a [`RegionTable`], a bandwidth (bytes/s, each
//! direction) and a loss rate. TCP never loses bytes, it retransmits: a
//! lost chunk arrives one retransmission timeout late and holds up the
//! chunks behind it (in-order delivery). Times come from tokio's clock
//! and loss from a seeded RNG per connection, so links are deterministic.
//!
//! A partition ([`NetModel::partition`]) cuts the links between groups:
//! bytes already sent wait at the cut (as in a network that drops every
//! packet, the connection stalls until its pings time out) and a dial
//! across it fails after [`DIAL_ACROSS_CUT`], as a SYN that gets no
//! answer. [`NetModel::heal`] lets everything through again.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_p2p::transport::MemoryListener;
use plexus_p2p::{MemoryTransport, Transport};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Regions and the one-way delay between each pair (ms), symmetric.
#[derive(Debug, Clone)]
pub struct RegionTable {
    /// Region names, in index order.
    pub names: Vec<&'static str>,
    /// `one_way_ms[a][b]`: one-way delay from region a to region b, ms.
    pub one_way_ms: Vec<Vec<u32>>,
}

impl RegionTable {
    /// Five regions with one-way delays of about half the round-trip
    /// times public cloud regions measure between them (North America
    /// east and west, Europe, East Asia, South America; 5 ms inside one).
    pub fn earth() -> RegionTable {
        let names = vec!["na-east", "na-west", "europe", "asia", "south-america"];
        let one_way_ms = vec![
            vec![5, 35, 40, 90, 60],
            vec![35, 5, 70, 55, 90],
            vec![40, 70, 5, 110, 100],
            vec![90, 55, 110, 5, 150],
            vec![60, 90, 100, 150, 5],
        ];
        RegionTable { names, one_way_ms }
    }

    /// One region, `ms` one way inside it (a LAN: `ms` = 0).
    pub fn single(ms: u32) -> RegionTable {
        RegionTable { names: vec!["local"], one_way_ms: vec![vec![ms]] }
    }

    /// How many regions.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What a link does to the bytes crossing it, one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way delay.
    pub latency: Duration,
    /// Bytes per second; 0 for no limit.
    pub bandwidth: u64,
    /// Share of chunks lost and retransmitted after `rto`, 0.0..=1.0.
    pub loss: f64,
    /// Retransmission timeout added to a lost chunk.
    pub rto: Duration,
}

/// The network model: every node's region and the link between two.
pub struct NetModel {
    regions: RegionTable,
    /// Region of each node IP.
    region_of: Box<dyn Fn(IpAddr) -> usize + Send + Sync>,
    bandwidth: u64,
    loss: f64,
    rto: Duration,
    seed: u64,
    connections: AtomicU64,
    /// Each IP's side of a partition; none while whole.
    sides: Mutex<Option<IpMap>>,
    /// IPs whose every link is cut.
    isolated: Mutex<std::collections::HashSet<IpAddr>>,
}

/// A node IP to a number (its side of a partition).
type IpMap = Box<dyn Fn(IpAddr) -> u32 + Send + Sync>;

/// How long a dial across a partition takes to fail.
pub const DIAL_ACROSS_CUT: Duration = Duration::from_secs(3);

/// How often bytes held at a cut look again.
const CUT_POLL: Duration = Duration::from_millis(100);

impl NetModel {
    /// A model over `regions`, node IPs placed by `region_of` (an index
    /// into the table), every link with `bandwidth` (bytes/s) and `loss`;
    /// `seed` seeds each connection's loss RNG (with a counter).
    pub fn new(
        regions: RegionTable,
        region_of: impl Fn(IpAddr) -> usize + Send + Sync + 'static,
        bandwidth: u64,
        loss: f64,
        seed: u64,
    ) -> NetModel {
        NetModel {
            regions,
            region_of: Box::new(region_of),
            bandwidth,
            loss: loss.clamp(0.0, 1.0),
            rto: Duration::from_millis(200),
            seed,
            connections: AtomicU64::new(0),
            sides: Mutex::new(None),
            isolated: Mutex::default(),
        }
    }

    /// Splits the network: `side(ip)` names each node's side, and links
    /// between different sides carry nothing until [`NetModel::heal`].
    pub fn partition(&self, side: impl Fn(IpAddr) -> u32 + Send + Sync + 'static) {
        *self.sides.lock().expect("not poisoned") = Some(Box::new(side));
    }

    /// Joins the network again.
    pub fn heal(&self) {
        *self.sides.lock().expect("not poisoned") = None;
    }

    /// Whether a partition separates `a` and `b` now.
    pub fn cut(&self, a: IpAddr, b: IpAddr) -> bool {
        let isolated = self.isolated.lock().expect("not poisoned");
        if isolated.contains(&a) || isolated.contains(&b) {
            return true;
        }
        drop(isolated);
        self.sides.lock().expect("not poisoned").as_ref().is_some_and(|side| side(a) != side(b))
    }

    /// Cuts every link of `ip` (a paused process: nothing in, nothing
    /// out) until [`NetModel::reconnect`].
    pub fn isolate(&self, ip: IpAddr) {
        self.isolated.lock().expect("not poisoned").insert(ip);
    }

    /// Ends [`NetModel::isolate`] for `ip`.
    pub fn reconnect(&self, ip: IpAddr) {
        self.isolated.lock().expect("not poisoned").remove(&ip);
    }

    /// The link from `a` to `b`.
    pub fn link(&self, a: IpAddr, b: IpAddr) -> Link {
        let n = self.regions.len().max(1);
        let (ra, rb) = ((self.region_of)(a) % n, (self.region_of)(b) % n);
        let ms = self.regions.one_way_ms.get(ra).and_then(|r| r.get(rb)).copied().unwrap_or(0);
        Link {
            latency: Duration::from_millis(u64::from(ms)),
            bandwidth: self.bandwidth,
            loss: self.loss,
            rto: self.rto,
        }
    }

    /// The region (index) of `ip`.
    pub fn region(&self, ip: IpAddr) -> usize {
        (self.region_of)(ip) % self.regions.len().max(1)
    }
}

/// The memory transport seen through [`NetModel`]: a dial returns a pipe
/// whose bytes cross the modelled link each way.
#[derive(Clone)]
pub struct SimTransport {
    inner: MemoryTransport,
    model: Arc<NetModel>,
}

impl SimTransport {
    /// `inner` (which fixes this node's IP) through `model`.
    pub fn new(inner: MemoryTransport, model: Arc<NetModel>) -> SimTransport {
        SimTransport { inner, model }
    }
}

/// Largest chunk a pump moves at once (bytes).
const CHUNK: usize = 16 * 1024;

impl Transport for SimTransport {
    type Stream = DuplexStream;
    type Listener = MemoryListener;

    async fn listen(&self, addr: SocketAddr) -> io::Result<MemoryListener> {
        self.inner.listen(addr).await
    }

    async fn dial(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        if self.model.cut(self.inner.ip(), addr.ip()) {
            tokio::time::sleep(DIAL_ACROSS_CUT).await;
            return Err(io::ErrorKind::TimedOut.into());
        }
        let remote = self.inner.dial(addr).await?;
        let (app, local) = tokio::io::duplex(self.inner.buffer);
        let me = self.inner.ip();
        let n = self.model.connections.fetch_add(1, Ordering::Relaxed);
        let (up, down) = (self.model.link(me, addr.ip()), self.model.link(addr.ip(), me));
        let (local_r, local_w) = tokio::io::split(local);
        let (remote_r, remote_w) = tokio::io::split(remote);
        let seed = self.model.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let m = &self.model;
        pump(local_r, remote_w, up, StdRng::seed_from_u64(seed), (m.clone(), me, addr.ip()));
        pump(remote_r, local_w, down, StdRng::seed_from_u64(seed ^ 1), (m.clone(), addr.ip(), me));
        Ok(app)
    }
}

/// Moves bytes from `r` to `w` as `link` would: each chunk leaves when
/// the link is free (bandwidth), arrives `latency` later, `rto` more when
/// lost, never before the chunk ahead of it; while a partition cuts
/// `from` and `to` (`path`), it waits at the cut. EOF and errors close
/// `w`.
fn pump(
    mut r: ReadHalf<DuplexStream>,
    mut w: WriteHalf<DuplexStream>,
    link: Link,
    mut rng: StdRng,
    path: (Arc<NetModel>, IpAddr, IpAddr),
) {
    // In flight: bounded in chunks, so a full link pushes back on the
    // writer like a TCP window.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    tokio::spawn(async move {
        let (mut free_at, mut last) = (Instant::now(), Instant::now());
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let send = if link.bandwidth == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(n as f64 / link.bandwidth as f64)
            };
            free_at = free_at.max(now) + send;
            let mut at = free_at + link.latency;
            if link.loss > 0.0 && rng.random::<f64>() < link.loss {
                at += link.rto;
            }
            at = at.max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let (model, from, to) = path;
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            while model.cut(from, to) {
                tokio::time::sleep(CUT_POLL).await;
            }
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    });
}
