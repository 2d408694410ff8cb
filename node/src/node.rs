//! A running node: the switch over TCP with the PEX, consensus, mempool
//! and block sync reactors, the chain in `<home>/data/chain.sqlite`, the
//! optional miner, and the web/RPC server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::Mutex;
use plexus_p2p::switch::RejectReason;
use plexus_p2p::{NetAddress, NodeInfo, NodeType, Switch, SwitchConfig, TcpTransport};
use plexus_reactors::blocksync::BlockSyncReactor;
use plexus_reactors::chain::{BlockchainConfig, NetworkParams, Store};
use plexus_reactors::consensus::ConsensusReactor;
use plexus_reactors::mempool::{Mempool, MempoolReactor};
use plexus_reactors::mining::{Miner, MinerConfig};
use plexus_reactors::pex::{AddrBook, AddrBookConfig, PexConfig, PexReactor};
use plexus_reactors::service::ChainService;
use rand::SeedableRng;
use tokio::sync::Notify;

use crate::config::NodeConfig;
use crate::home::{Home, HomeLock, StartOptions};

/// Writes what a home directory lacks: `config.toml` (from `cfg`),
/// `node_key.json` (0600) and `genesis.json` (a copy of `genesis`, or the
/// embedded devnet). Existing files are kept; a node key missing from a
/// home that had one is refused unless `opts.new_node_key`
/// ([`crate::home::node_key`]). The caller holds the home's lock.
pub fn init(
    home: &Home,
    cfg: &NodeConfig,
    genesis: Option<&std::path::Path>,
    opts: &StartOptions,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(home.dir())
        .with_context(|| format!("creating {}", home.dir().display()))?;
    if !home.config().exists() {
        std::fs::write(home.config(), cfg.render())
            .with_context(|| format!("writing {}", home.config().display()))?;
    }
    crate::home::node_key(home, opts)?;
    crate::tls::generate(home, &cfg.rpc)?;
    if !home.genesis().exists() {
        let text = match genesis {
            Some(path) => {
                // Refuse a bad file now rather than at start.
                NetworkParams::load(path)?;
                std::fs::read_to_string(path)?
            }
            None => serde_json::to_string_pretty(&NetworkParams::devnet().genesis)?,
        };
        std::fs::write(home.genesis(), text)
            .with_context(|| format!("writing {}", home.genesis().display()))?;
    }
    Ok(())
}

/// A `-k` dial's outcome.
enum Join {
    /// Connected, already connected (`Duplicate`), or stopping.
    Done,
    /// Not now (unreachable, timed out, full): try again later.
    Retry(String),
    /// Never (ourselves, another network or protocol, or the peer refused
    /// us, e.g. as a duplicate of our node id): retrying would only repeat.
    GiveUp(String),
}

fn joined(r: Result<plexus_p2p::Peer, RejectReason>) -> Join {
    match r {
        Ok(_) | Err(RejectReason::Duplicate(_)) | Err(RejectReason::Stopped) => Join::Done,
        Err(e @ RejectReason::SelfConnection) => Join::GiveUp(e.to_string()),
        Err(e) if e.fault() == plexus_p2p::fault::Fault::Incompatible => {
            Join::GiveUp(e.to_string())
        }
        Err(e) => Join::Retry(e.to_string()),
    }
}

/// The address to listen on for `host` (an IPv4 or IPv6 address, bare or
/// in brackets, or a name such as `localhost`, resolved) and `port`.
async fn listen_addr(what: &str, host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let ips = plexus_p2p::netaddr::resolve_host(bare)
        .await
        .with_context(|| format!("{what} host {host:?}"))?;
    Ok(SocketAddr::new(ips[0], port))
}

/// A peer given as `-k`: with its id, or an address to dial and learn.
#[derive(Clone, Debug)]
pub enum PeerArg {
    /// `id@host:port`.
    Known(NetAddress),
    /// `host:port`.
    Unknown(String),
}

impl PeerArg {
    /// Parses `id@host:port` or `host:port`.
    pub fn parse(s: &str) -> anyhow::Result<PeerArg> {
        if s.contains('@') {
            Ok(PeerArg::Known(s.parse().map_err(|e| anyhow::anyhow!("peer {s}: {e}"))?))
        } else if s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            Ok(PeerArg::Unknown(s.to_string()))
        } else {
            anyhow::bail!("peer {s}: expected id@host:port or host:port")
        }
    }
}

/// The running node.
pub struct Node {
    /// Its home directory.
    pub home: Home,
    /// Its configuration (flags applied).
    pub cfg: NodeConfig,
    /// The network.
    pub params: Arc<NetworkParams>,
    /// The switch.
    pub sw: Switch,
    /// The chain service: chain, mempool, chain events, peer statuses.
    pub chain: Arc<ChainService>,
    /// Transactions.
    pub mem: Arc<MempoolReactor>,
    /// Catching up.
    pub sync: Arc<BlockSyncReactor>,
    /// Peer discovery.
    pub pex: Arc<PexReactor>,
    /// The miner, when mining.
    pub miner: Mutex<Option<Miner>>,
    /// Where the web page and RPC listen.
    pub rpc_addr: SocketAddr,
    /// When it started.
    pub started: Instant,
    /// Notified by `stop_node` (RPC) to shut down.
    pub stop_requested: Notify,
    /// The metrics registry (switch series and node gauges).
    pub metrics: crate::rpc::Metrics,
    /// Connected WebSocket clients.
    pub ws_clients: std::sync::atomic::AtomicUsize,
    /// Connected WebSocket clients by IP address.
    pub ws_per_ip: crate::http::IpCounts,
    /// The home's exclusive lock, held while the node lives.
    _home_lock: HomeLock,
    /// A read-only connection to the chain database for the RPC's block
    /// reads, so they never take the chain lock an import holds.
    pub reader: Mutex<Store>,
}

impl Node {
    /// Starts a node from `home`, whose lock the caller took
    /// ([`Home::lock`]; the node holds it while it lives), initialising
    /// what is missing, with `cfg`. Errors name the file and the way out
    /// ([`crate::home`]): an unreadable or damaged file, a node key or
    /// chain store lost from a home that had one (unless `opts` says so),
    /// a store of another network or a newer schema; ports in use.
    pub async fn start(
        home: Home,
        lock: HomeLock,
        cfg: NodeConfig,
        opts: StartOptions,
    ) -> anyhow::Result<Arc<Node>> {
        init(&home, &cfg, None, &opts)?;
        // A bad certificate or key stops the start before anything runs.
        let tls = crate::tls::acceptor(&home, &cfg.rpc)?;
        let key = crate::home::node_key(&home, &opts)?;
        let params = Arc::new(crate::home::genesis(&home)?);
        let (chain, reader) =
            crate::home::open_chain(&home, params.clone(), BlockchainConfig::default(), &opts)?;
        let reader = Mutex::new(reader);
        let mempool = Mempool::new(cfg.mempool.config());
        let chain = ChainService::new(cfg.sync.service(), chain, mempool);
        let mem = Arc::new(MempoolReactor::new(chain.clone()));
        let cons = Arc::new(ConsensusReactor::new(cfg.sync.consensus(), chain.clone()));
        let sync = Arc::new(BlockSyncReactor::new(cfg.sync.block_sync(), chain.clone()));

        let peers =
            cfg.p2p.peers.iter().map(|p| PeerArg::parse(p)).collect::<anyhow::Result<Vec<_>>>()?;
        let seeds: Vec<NetAddress> = peers
            .iter()
            .filter_map(|p| if let PeerArg::Known(a) = p { Some(a.clone()) } else { None })
            .collect();
        let book_cfg =
            AddrBookConfig { strict: cfg.p2p.addr_book_strict, ..AddrBookConfig::default() };
        let book =
            AddrBook::load(book_cfg, &home.addrbook(), Box::new(rand::rngs::StdRng::from_os_rng()));
        let pex_cfg = PexConfig {
            seeds,
            book_path: Some(home.addrbook()),
            seed_mode: cfg.p2p.seed_mode,
            ensure_peers_period: Duration::from_secs(cfg.p2p.pex_period_s.max(1)),
            extra_outbound_interval: Duration::from_secs(cfg.p2p.extra_outbound_interval_s),
            ..PexConfig::default()
        };
        let pex = Arc::new(PexReactor::new(pex_cfg, book));

        let mut info = NodeInfo::new(&params.network_id(), &cfg.moniker);
        info.node_type = if cfg.p2p.seed_mode {
            NodeType::Introducer
        } else if cfg.mining.enabled {
            NodeType::Miner
        } else {
            NodeType::FullNode
        };
        let listen = listen_addr("p2p", &cfg.p2p.host, cfg.p2p.port).await?;
        let sw_cfg = SwitchConfig {
            listen_addr: Some(listen),
            peers: cfg.p2p.peer_manager(),
            max_peer_memory_bytes: match cfg.p2p.max_peer_memory_mib {
                0 => plexus_p2p::switch::config::default_peer_memory(),
                mib => mib << 20,
            },
            ..SwitchConfig::default()
        };
        // Reputations were saved with the address book on the last run.
        let reputation = pex.book().lock().reputation().to_vec();
        let sw = Switch::builder(key, info, sw_cfg, TcpTransport)
            .reputation(reputation)
            .shared_reactor(pex.clone())
            .shared_reactor(cons.clone())
            .shared_reactor(mem.clone())
            .shared_reactor(sync.clone())
            .build()?;
        sw.start().await.with_context(|| format!("listening for peers on {listen}"))?;
        pex.start(&sw);
        cons.start(&sw);
        mem.start(&sw);
        sync.start(&sw);
        // Each -k peer is dialed until we have joined through it once (or
        // are connected to it anyway), retrying after 1 s, doubling up to
        // p2p.join_retry_max_s: a peer that is not up yet is not given up.
        let retry_max = Duration::from_secs(cfg.p2p.join_retry_max_s.max(1));
        for p in peers {
            let sw = sw.clone();
            tokio::spawn(async move {
                let mut wait = Duration::from_secs(1);
                loop {
                    let r = match &p {
                        PeerArg::Known(a) => joined(sw.dial(a).await),
                        PeerArg::Unknown(hp) => match tokio::net::lookup_host(hp.as_str()).await {
                            Ok(mut addrs) => match addrs.next() {
                                Some(a) => joined(sw.dial_unknown(a).await),
                                None => Join::Retry("the address resolves to nothing".into()),
                            },
                            Err(e) => Join::Retry(format!("the address does not resolve: {e}")),
                        },
                    };
                    match r {
                        Join::Done => break,
                        Join::GiveUp(e) => {
                            tracing::warn!(peer = ?p, reason = %e, "could not join through peer; not retrying");
                            break;
                        }
                        Join::Retry(e) => tracing::warn!(
                            peer = ?p, reason = %e, retry_in_s = wait.as_secs(),
                            "could not join through peer"
                        ),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = sw.stopped() => break,
                    }
                    wait = (wait * 2).min(retry_max);
                }
            });
        }
        let miner = cfg.mining.enabled.then(|| {
            let mc = MinerConfig {
                threads: cfg.mining.threads.max(1),
                store_retry: Duration::from_secs(cfg.mining.store_retry_s),
                store_retry_max: Duration::from_secs(cfg.mining.store_retry_max_s),
                ..MinerConfig::default()
            };
            chain.start_miner(mc)
        });
        let rpc_listen = listen_addr("rpc", &cfg.rpc.host, cfg.rpc.port).await?;
        let listener = tokio::net::TcpListener::bind(rpc_listen)
            .await
            .with_context(|| format!("listening for the web page and RPC on {rpc_listen}"))?;
        let rpc_addr = listener.local_addr()?;
        let metrics = crate::rpc::Metrics::new(&sw);
        let node = Arc::new(Node {
            home,
            cfg,
            params,
            sw,
            chain,
            mem,
            sync,
            pex,
            miner: Mutex::new(miner),
            rpc_addr,
            started: Instant::now(),
            stop_requested: Notify::new(),
            metrics,
            ws_clients: std::sync::atomic::AtomicUsize::new(0),
            ws_per_ip: crate::http::IpCounts::default(),
            reader,
            _home_lock: lock,
        });
        crate::rpc::serve(node.clone(), listener, tls)?;
        tracing::info!(
            node_id = %node.sw.node_id(),
            p2p = ?node.sw.listen_addr(),
            web = %node.web_url(),
            network = %node.params.network_id(),
            height = node.chain.status().height,
            "node started"
        );
        Ok(node)
    }

    /// Stops mining, disconnects peers gracefully, saves the address book;
    /// the store closes when the last handle drops.
    pub async fn shutdown(&self) {
        let miner = self.miner.lock().take();
        if let Some(m) = miner {
            let _ = tokio::task::spawn_blocking(move || m.stop()).await;
        }
        self.sw.stop().await;
        self.pex.save();
        // The chain file alone holds the chain after a clean stop.
        match self.chain.with_chain(|c| c.store().checkpoint()) {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                "the chain store's WAL is not fully checkpointed (a read was still open); \
                 SQLite replays it at the next start"
            ),
            Err(e) => tracing::warn!(error = %e, "could not checkpoint the chain store's WAL"),
        }
        tracing::info!(height = self.chain.status().height, "node stopped");
    }

    /// The web page's URL: `http://` or, with `rpc.tls`, `https://`.
    pub fn web_url(&self) -> String {
        let scheme = if self.cfg.rpc.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.rpc_addr)
    }

    /// The `id@host:port` peers can dial.
    pub fn p2p_address(&self) -> Option<NetAddress> {
        self.sw.net_address()
    }
}
