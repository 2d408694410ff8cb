//! A deterministic network of full Plexus nodes in one process.
//!
//! Each node is the whole stack a `plexus` node runs (Switch, PEX with an
//! address book, consensus, block sync, mempool, a miner on some), over
//! the in-memory transport, with an in-memory SQLite chain. Everything
//! that reads time or randomness is injected: node keys, switch, PEX and
//! book RNGs come from the run's seed; every wall clock is the simulated
//! one ([`SIM_EPOCH_MS`] plus tokio's paused time since the start); the
//! chain's blocking work runs inline
//! ([`ChainServiceConfig::inline_blocking`]). On a current-thread runtime
//! with a paused clock ([`runtime`]) a run is then a function of its seed:
//! [`Sim::digest`] is the same for two runs of one seed.
//!
//! Mining costs no CPU: the genesis target is the proof-of-work limit
//! (about two hashes a block), and each miner finds its next block after
//! a seeded exponential wait whose mean is `block_interval × miners`
//! (so the network as a whole finds one every `block_interval`).
//!
//! Embedders add their own reactors with [`Sim::start_with`]:
//!
//! ```no_run
//! use plexus_tests::sim::{runtime, Sim, SimConfig};
//! runtime().block_on(async {
//!     let sim = Sim::start_with(SimConfig { nodes: 10, ..SimConfig::default() }, |_node, b| {
//!         b // .shared_reactor(my_reactor.clone())
//!     })
//!     .await;
//!     sim.run_for(std::time::Duration::from_secs(600)).await;
//!     println!("{}", sim.digest());
//!     sim.stop().await;
//! });
//! ```
//!
//! Links ([`link`]): each node sits in a region of a [`RegionTable`]
//! (seeded choice); a connection's bytes take the one-way delay between
//! the two regions, share the link's bandwidth and are sometimes lost
//! (arriving one retransmission timeout late). Each node's wall clock is
//! off by a seeded skew of up to `clock_skew` either way.
//!
//! Not yet modelled (issue 19): perturbations (kill, pause, partition),
//! attackers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub mod attack;
pub mod link;

pub use link::{Link, NetModel, RegionTable, SimTransport};
use plexus_p2p::switch::SwitchBuilder;
use plexus_p2p::{MemoryTransport, NetAddress, NodeInfo, NodeKey, NodeType, Switch, SwitchConfig};
use plexus_reactors::blocksync::{BlockSyncConfig, BlockSyncReactor};
use plexus_reactors::chain::{
    bits_from_target, BlockHash, Blockchain, BlockchainConfig, Genesis, NetworkParams, Store, U256,
};
use plexus_reactors::consensus::{Clock, ConsensusConfig, ConsensusReactor};
use plexus_reactors::mempool::{Mempool, MempoolConfig, MempoolReactor};
use plexus_reactors::mining::solve;
use plexus_reactors::pex::{AddrBook, AddrBookConfig, PexConfig, PexReactor};
use plexus_reactors::service::{ChainService, ChainServiceConfig};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The simulated Unix time at the start of every run, in ms (2027-01-15).
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes, the seed (node 0) included. Default 50.
    pub nodes: usize,
    /// The run's seed: keys, RNGs and mining times all derive from it.
    /// Default 1.
    pub seed: u64,
    /// Nodes 1..=`miners` mine. Default 5.
    pub miners: usize,
    /// Mean time between blocks of the whole network. Default 10 s.
    pub block_interval: Duration,
    /// PEX's `ensure_peers_period`. Default 10 s (the node's default is
    /// 30 s; shorter makes a simulated network form sooner).
    pub pex_period: Duration,
    /// Where nodes live and the one-way delays between regions. Default
    /// [`RegionTable::earth`]; each node's region is a seeded choice.
    pub regions: RegionTable,
    /// Each direction of each link, bytes/s; 0 for no limit. Default
    /// 12,500,000 (100 Mbit/s).
    pub bandwidth: u64,
    /// Share of 16 KiB chunks lost (and retransmitted 200 ms later).
    /// Default 0.001.
    pub loss: f64,
    /// Each node's clock is off by a seeded amount within ± this. Default
    /// 500 ms.
    pub clock_skew: Duration,
    /// The last this many nodes are attackers in one /16 ([`attack`]):
    /// PEX answers of attacker addresses only, a heavier chain claimed and
    /// never shown, invalid blocks pushed. Default 0.
    pub attackers: usize,
    /// Whether attackers also lie on the consensus channel (a heavier
    /// chain claimed, invalid blocks). Without, they only flood PEX and
    /// look honest otherwise, which is what tests the address book's
    /// eclipse resistance (a liar is banned at its first invalid block).
    /// Default true.
    pub attackers_lie: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 50,
            seed: 1,
            miners: 5,
            block_interval: Duration::from_secs(10),
            pex_period: Duration::from_secs(10),
            regions: RegionTable::earth(),
            bandwidth: 12_500_000,
            loss: 0.001,
            clock_skew: Duration::from_millis(500),
            attackers: 0,
            attackers_lie: true,
        }
    }
}

/// One simulated node: its switch and reactors (public, so a scenario can
/// drive or inspect any of them).
pub struct SimNode {
    /// Index in the network (0 is the seed).
    pub index: usize,
    /// Its IP on the simulated network.
    pub ip: IpAddr,
    /// The switch.
    pub sw: Switch,
    /// Its chain service (Blockchain, Mempool, status table).
    pub chain: Arc<ChainService>,
    /// Its PEX reactor and address book.
    pub pex: Arc<PexReactor>,
    /// Consensus (block and status gossip).
    pub cons: Arc<ConsensusReactor>,
    /// Mempool gossip.
    pub mem: Arc<MempoolReactor>,
    /// Block sync.
    pub sync: Arc<BlockSyncReactor>,
    /// False between [`Sim::kill`] and [`Sim::restart`].
    pub alive: bool,
    /// Between [`Sim::pause`] and [`Sim::resume`] (its miner waits too).
    paused: Arc<AtomicBool>,
    miner: Option<JoinHandle<()>>,
    kept: Kept,
}

impl SimNode {
    /// The address it listens on (`id@ip:port`).
    pub fn net_address(&self) -> NetAddress {
        NetAddress::new(self.kept.key.node_id(), self.kept.listen)
    }
}

/// What a node keeps across a restart: its identity, chain store, address
/// book, clock and listen address.
#[derive(Clone)]
struct Kept {
    key: NodeKey,
    chain: Arc<ChainService>,
    book: Arc<parking_lot::Mutex<AddrBook>>,
    clock: Clock,
    listen: SocketAddr,
}

/// Adds to each node's switch before it is built (see [`Sim::start_with`]).
pub type Hook = Box<dyn FnMut(&SimNodeCtx<'_>, SwitchBuilder) -> SwitchBuilder>;

/// What [`Sim::start_with`]'s hook sees of a node being built.
pub struct SimNodeCtx<'a> {
    /// Index in the network.
    pub index: usize,
    /// The node's chain service.
    pub chain: &'a Arc<ChainService>,
}

/// A running simulated network. See the module documentation.
pub struct Sim {
    cfg: SimConfig,
    /// The nodes, by index.
    pub nodes: Vec<SimNode>,
    /// The network's parameters (genesis at the proof-of-work limit).
    pub params: Arc<NetworkParams>,
    start: Instant,
    arrivals: Arrivals,
    /// The links.
    pub model: Arc<NetModel>,
    /// Each node's region (index into `SimConfig::regions`).
    pub regions: Vec<usize>,
    /// Each miner's mean wait between blocks, ms (`block_interval ×
    /// miners`; [`Sim::set_block_interval`]).
    miner_mean_ms: Arc<AtomicU64>,
    /// Whether miners mine ([`Sim::stop_mining`]).
    mining: Arc<AtomicBool>,
    net: MemoryTransport,
    hook: Hook,
    /// Restarts per node (varies the restarted node's RNG seeds).
    restarts: Vec<u64>,
    /// Every attacker's address, as they start (their PEX answers).
    attacker_addrs: Arc<parking_lot::Mutex<Vec<NetAddress>>>,
}

/// When each block joined each node's main chain: hash to (node, time
/// since the start). Metrics only; nothing in a run reads it.
type Arrivals = Arc<Mutex<HashMap<BlockHash, Vec<(usize, Duration)>>>>;

/// How fast blocks spread: over the blocks that reached every node that
/// follows the chain (all but the seed), the delay from the first node
/// holding a block (its miner) to 90 % and to 100 % of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Propagation {
    /// Blocks measured.
    pub blocks: usize,
    /// Median delay to 90 % of the nodes, seconds.
    pub p50_to_90: f64,
    /// 99th percentile delay to 90 % of the nodes, seconds.
    pub p99_to_90: f64,
    /// Median delay to every node, seconds.
    pub p50_to_100: f64,
    /// 99th percentile delay to every node, seconds.
    pub p99_to_100: f64,
}

/// A current-thread tokio runtime with a paused clock: a simulation's
/// home. Time only moves when every task waits, straight to the next
/// timer.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

impl SimConfig {
    /// How many honest nodes: the first `nodes - attackers`.
    pub fn honest(&self) -> usize {
        self.nodes.saturating_sub(self.attackers)
    }

    /// Whether node `i` is an attacker.
    pub fn is_attacker(&self, i: usize) -> bool {
        i >= self.honest()
    }

    /// Node `i`'s IP, public (the address book is strict): an honest node
    /// has a /16 of its own (`31+i/256 . i%256 . 0.1`), the attackers
    /// share `66.66.0.0/16`.
    pub fn ip(&self, i: usize) -> IpAddr {
        match i.checked_sub(self.honest()) {
            Some(j) => IpAddr::from([66, 66, (j >> 8) as u8, j as u8]),
            None => IpAddr::from([31 + (i >> 8) as u8, i as u8, 0, 1]),
        }
    }

    /// The node with this IP.
    pub fn index(&self, ip: IpAddr) -> Option<usize> {
        let IpAddr::V4(v4) = ip else { return None };
        let [a, b, c, d] = v4.octets();
        let i = match (a, b) {
            (66, 66) => self.honest() + usize::from(c) * 256 + usize::from(d),
            (31.., _) => usize::from(a - 31) * 256 + usize::from(b),
            _ => return None,
        };
        (i < self.nodes && self.ip(i) == ip).then_some(i)
    }
}

/// What a derived seed is for (its number is part of the derivation, so
/// these values fix every run's outcome: never renumber them).
#[derive(Clone, Copy)]
enum Purpose {
    Key = 1,
    Book = 2,
    Pex = 3,
    Switch = 4,
    Miner = 5,
    Region = 6,
    Links = 7,
    Skew = 8,
    AttackerDials = 9,
    Churn = 10,
}

/// A seed for one purpose of one node, from the run's seed.
fn derive(seed: u64, node: usize, purpose: Purpose) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update((node as u64).to_le_bytes());
    h.update((purpose as u64).to_le_bytes());
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

impl Sim {
    /// Starts the network (inside [`runtime`]): the seed first, then
    /// every other node knowing only the seed.
    pub async fn start(cfg: SimConfig) -> Sim {
        Self::start_with(cfg, |_, b| b).await
    }

    /// As [`Sim::start`], with `hook` adding to each node's switch (its
    /// own reactors, say) before it is built.
    pub async fn start_with(
        cfg: SimConfig,
        hook: impl FnMut(&SimNodeCtx<'_>, SwitchBuilder) -> SwitchBuilder + 'static,
    ) -> Sim {
        let easy = bits_from_target(U256::MAX >> 1);
        let genesis = Genesis {
            network_name: "plexus-sim".into(),
            timestamp_ms: SIM_EPOCH_MS - 1_000,
            bits: easy,
            pow_limit_bits: easy,
            target_block_time_ms: cfg.block_interval.as_millis().max(1) as u64,
            retarget_window: 0,
            message: "plexus-sim genesis".into(),
            ..NetworkParams::regtest().genesis
        };
        let params = Arc::new(NetworkParams::from_genesis(genesis).expect("a valid sim genesis"));
        let start = Instant::now();
        let regions: Vec<usize> = (0..cfg.nodes)
            .map(|i| {
                (derive(cfg.seed, i, Purpose::Region) % cfg.regions.len().max(1) as u64) as usize
            })
            .collect();
        let (placed, placing) = (regions.clone(), cfg.clone());
        let model = Arc::new(NetModel::new(
            cfg.regions.clone(),
            move |ip| placing.index(ip).and_then(|i| placed.get(i).copied()).unwrap_or(0),
            cfg.bandwidth,
            cfg.loss,
            derive(cfg.seed, usize::MAX, Purpose::Links),
        ));
        let net = MemoryTransport::new();
        let arrivals = Arrivals::default();
        let mean = cfg.block_interval * cfg.miners.max(1) as u32;
        let miner_mean_ms = Arc::new(AtomicU64::new(mean.as_millis().max(1) as u64));
        let mut sim = Sim {
            cfg: cfg.clone(),
            nodes: Vec::new(),
            params,
            start,
            arrivals,
            model,
            regions,
            miner_mean_ms,
            mining: Arc::new(AtomicBool::new(true)),
            net,
            hook: Box::new(hook),
            restarts: vec![0; cfg.nodes],
            attacker_addrs: Arc::default(),
        };
        for i in 0..cfg.nodes {
            let node = sim.build_node(i).await;
            sim.nodes.push(node);
        }
        sim
    }

    async fn build_node(&mut self, i: usize) -> SimNode {
        let cfg = &self.cfg;
        // This node's wall clock: simulated time, off by its seeded skew.
        let max_skew = cfg.clock_skew.as_millis() as i64;
        let skew = if max_skew == 0 {
            0
        } else {
            StdRng::seed_from_u64(derive(cfg.seed, i, Purpose::Skew))
                .random_range(-max_skew..=max_skew)
        };
        let start = self.start;
        let clock: Clock = Arc::new(move || {
            let t =
                SIM_EPOCH_MS + Instant::now().saturating_duration_since(start).as_millis() as u64;
            t.saturating_add_signed(skew)
        });
        let mut key = [0u8; 32];
        StdRng::seed_from_u64(derive(cfg.seed, i, Purpose::Key)).fill_bytes(&mut key);
        let key = NodeKey::from_private_key(&key).expect("any 32 bytes are an X25519 key");
        let store = Store::open_in_memory().expect("an in-memory store");
        let chain = Blockchain::open(self.params.clone(), store, BlockchainConfig::default())
            .expect("a new chain");
        let service_cfg = ChainServiceConfig { inline_blocking: true, ..Default::default() };
        let mempool = Mempool::new(MempoolConfig::default());
        let chain = ChainService::with_clock(service_cfg, chain, mempool, clock.clone());
        let book = Arc::new(parking_lot::Mutex::new(AddrBook::new(
            AddrBookConfig::default(),
            Box::new(StdRng::seed_from_u64(derive(cfg.seed, i, Purpose::Book))),
        )));
        let mut events = chain.subscribe();
        let (arrivals, start) = (self.arrivals.clone(), self.start);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        let at = Instant::now().saturating_duration_since(start);
                        let mut a = arrivals.lock().expect("not poisoned");
                        for b in &ev.connected {
                            a.entry(b.hash).or_default().push((i, at));
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        let kept = Kept { key, chain, book, clock, listen: SocketAddr::new(cfg.ip(i), 0) };
        self.start_stack(i, kept).await
    }

    /// Starts node `i`'s switch, reactors and miner over what it keeps
    /// (key, chain, book, clock, listen address).
    async fn start_stack(&mut self, i: usize, mut kept: Kept) -> SimNode {
        let cfg = &self.cfg;
        let ip = cfg.ip(i);
        let chain = kept.chain.clone();
        let mem = Arc::new(MempoolReactor::new(chain.clone()));
        let cons = Arc::new(ConsensusReactor::new(ConsensusConfig::default(), chain.clone()));
        let sync = Arc::new(BlockSyncReactor::new(BlockSyncConfig::default(), chain.clone()));
        let seeds = match self.nodes.first() {
            Some(seed) if i > 0 => vec![seed.net_address()],
            _ => Vec::new(),
        };
        let pex_cfg = PexConfig {
            seeds,
            seed_mode: i == 0,
            ensure_peers_period: cfg.pex_period,
            ..PexConfig::default()
        };
        let pex = Arc::new(
            PexReactor::with_shared_book(pex_cfg, kept.book.clone())
                .with_rng_seed(derive(cfg.seed, i, Purpose::Pex) ^ self.restarts[i])
                .with_clock(kept.clock.clone()),
        );
        let mining = (1..=cfg.miners).contains(&i) && !cfg.is_attacker(i);
        let mut info = NodeInfo::new(&self.params.network_id(), &format!("sim-{i}"));
        info.node_type = match (i, mining) {
            (0, _) => NodeType::Introducer,
            (_, true) => NodeType::Miner,
            _ => NodeType::FullNode,
        };
        let sw_cfg = SwitchConfig { listen_addr: Some(kept.listen), ..SwitchConfig::default() };
        let transport = SimTransport::new(self.net.with_ip(ip), self.model.clone());
        let builder = Switch::builder(kept.key.clone(), info, sw_cfg, transport)
            .rng_seed(derive(cfg.seed, i, Purpose::Switch) ^ self.restarts[i]);
        let attacker = cfg.is_attacker(i);
        let builder = if attacker {
            let max_addrs = PexConfig::default().max_addrs_per_msg;
            let eclipse = attack::EclipsePex { attackers: self.attacker_addrs.clone(), max_addrs };
            let builder = builder.reactor(eclipse);
            if cfg.attackers_lie {
                builder.reactor(attack::LiarConsensus { params: self.params.clone() })
            } else {
                // Looks like a node on genesis that has nothing to say.
                builder.reactor(attack::Mute)
            }
        } else {
            let b = builder
                .shared_reactor(pex.clone())
                .shared_reactor(cons.clone())
                .shared_reactor(mem.clone())
                .shared_reactor(sync.clone());
            (self.hook)(&SimNodeCtx { index: i, chain: &chain }, b)
        };
        let sw = builder.build().expect("a valid simulated switch");
        sw.start().await.expect("the memory transport listens");
        // A restart listens where the node listened before.
        if let Some(a) = sw.listen_addr() {
            kept.listen = a;
        }
        if attacker {
            self.attacker_addrs.lock().push(NetAddress::new(kept.key.node_id(), kept.listen));
            // Into the seed's book and a few honest nodes' (inbound: they
            // learn its listen address), seeded picks.
            let mut rng = StdRng::seed_from_u64(
                derive(cfg.seed, i, Purpose::AttackerDials) ^ self.restarts[i],
            );
            let honest = cfg.honest().max(1);
            let mut targets = vec![0];
            targets.extend((0..8).map(|_| rng.random_range(0..honest)));
            for t in targets {
                if let Some(n) = self.nodes.get(t) {
                    let (sw, addr) = (sw.clone(), n.net_address());
                    tokio::spawn(async move {
                        let _ = sw.dial(&addr).await;
                    });
                }
            }
        } else {
            pex.start(&sw);
            cons.start(&sw);
            mem.start(&sw);
            sync.start(&sw);
        }
        let paused = Arc::new(AtomicBool::new(false));
        let miner = mining.then(|| {
            let (mean, on) = (self.miner_mean_ms.clone(), self.mining.clone());
            let rng = StdRng::seed_from_u64(derive(cfg.seed, i, Purpose::Miner) ^ self.restarts[i]);
            let stopped = paused.clone();
            tokio::spawn(mine(chain.clone(), kept.clock.clone(), mean, on, stopped, rng))
        });
        let alive = true;
        SimNode { index: i, ip, sw, chain, pex, cons, mem, sync, miner, alive, paused, kept }
    }

    /// Kills node `i` (its switch stops, every connection closes, its
    /// miner stops); its chain store and address book are kept for
    /// [`Sim::restart`]. Killing a dead node does nothing.
    pub async fn kill(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if !n.alive {
            return;
        }
        if let Some(m) = n.miner.take() {
            m.abort();
        }
        n.sw.stop().await;
        n.alive = false;
    }

    /// Pauses node `i` as SIGSTOP would be seen from outside: every link
    /// of it carries nothing (its peers' pings go unanswered) and its
    /// miner waits, until [`Sim::resume`]. (Its own timers still run,
    /// where a stopped process's would fire late at resume.)
    pub fn pause(&self, i: usize) {
        self.model.isolate(self.cfg.ip(i));
        self.nodes[i].paused.store(true, Ordering::Relaxed);
    }

    /// Ends [`Sim::pause`].
    pub fn resume(&self, i: usize) {
        self.model.reconnect(self.cfg.ip(i));
        self.nodes[i].paused.store(false, Ordering::Relaxed);
    }

    /// Closes the connection between nodes `i` and `j`, if any (either
    /// may dial the other again later).
    pub async fn disconnect(&self, i: usize, j: usize) {
        let (a, b) = (&self.nodes[i], &self.nodes[j]);
        if let Some(p) = a.sw.peer(&b.sw.node_id()) {
            a.sw.stop_peer_for_error(&p, "simulated disconnect").await;
        }
    }

    /// Churn: every `every`, for `rounds` rounds, kills one live honest
    /// node (never the seed) and restarts one that was killed earlier,
    /// both seeded picks; returns the nodes killed and not yet restarted.
    pub async fn churn(&mut self, every: Duration, rounds: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(derive(self.cfg.seed, usize::MAX, Purpose::Churn));
        let mut down: Vec<usize> = Vec::new();
        for _ in 0..rounds {
            self.run_for(every).await;
            let live: Vec<usize> =
                (1..self.cfg.honest()).filter(|&i| self.nodes[i].alive).collect();
            if live.len() > 1 {
                let k = live[rng.random_range(0..live.len())];
                self.kill(k).await;
                down.push(k);
            }
            if down.len() > 1 {
                let back = down.remove(rng.random_range(0..down.len() - 1));
                self.restart(back).await;
            }
        }
        down
    }

    /// Starts a killed node again on its chain store and address book,
    /// same key and listen address (a process restarted on its home).
    /// Restarting a live node does nothing.
    pub async fn restart(&mut self, i: usize) {
        if self.nodes[i].alive {
            return;
        }
        self.restarts[i] += 1;
        let kept = self.nodes[i].kept.clone();
        let node = self.start_stack(i, kept).await;
        self.nodes[i] = node;
    }

    /// Lets `d` of simulated time pass.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Changes the network's mean time between blocks from the next block
    /// of each miner on (the difficulty does not follow: the simulated
    /// genesis has no retarget).
    pub fn set_block_interval(&self, d: Duration) {
        let mean = d * self.cfg.miners.max(1) as u32;
        self.miner_mean_ms.store(mean.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Splits the network: `side(i)` is node i's side; links between
    /// sides carry nothing until [`Sim::heal`] (see [`link`]).
    pub fn partition(&self, side: impl Fn(usize) -> u32 + Send + Sync + 'static) {
        let cfg = self.cfg.clone();
        self.model.partition(move |ip| cfg.index(ip).map_or(0, &side));
    }

    /// Joins a partitioned network again.
    pub fn heal(&self) {
        self.model.heal();
    }

    /// Runs until `done` holds (looked at every simulated second) or
    /// `max` passed; how long it took, `None` on `max`.
    pub async fn run_until(
        &self,
        max: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let from = Instant::now();
        loop {
            if done(self) {
                return Some(from.elapsed());
            }
            if from.elapsed() >= max {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Whether every honest node but the seed has one tip.
    pub fn converged(&self) -> bool {
        let tips = &self.tips()[..self.cfg.honest()];
        tips.iter().skip(2).all(|t| Some(t) == tips.get(1))
    }

    /// The fork scenario: splits the network in two (even and odd nodes),
    /// lets both sides mine until each has `depth` blocks of its own past
    /// the split (within `max`), heals it, and returns how long after the
    /// heal every node had one tip (`None` if not within `max`, or if a
    /// side never got that deep). Both sides need miners (`miners` ≥ 2).
    pub async fn fork_and_heal(&self, depth: u64, max: Duration) -> Option<Duration> {
        let fork = self.nodes.iter().map(|n| n.chain.status().height).max().unwrap_or(0);
        self.partition(|i| (i % 2) as u32);
        let deep = |sim: &Sim| {
            (0..2).all(|side| {
                sim.nodes
                    .iter()
                    .filter(|n| n.index > 0 && n.index % 2 == side)
                    .map(|n| n.chain.status().height)
                    .max()
                    .is_some_and(|h| h >= fork + depth)
            })
        };
        let reached = self.run_until(max, deep).await;
        self.heal();
        reached?;
        self.run_until(max, Sim::converged).await
    }

    /// The mean over live honest nodes but the seed of `share(node,
    /// attacker ids)`, skipping nodes for which it is `None`.
    fn mean_honest_share(
        &self,
        share: impl Fn(&SimNode, &HashSet<plexus_p2p::NodeId>) -> Option<f64>,
    ) -> f64 {
        let attackers: HashSet<_> =
            self.nodes[self.cfg.honest()..].iter().map(|n| n.sw.node_id()).collect();
        let shares: Vec<f64> = self.nodes[1..self.cfg.honest()]
            .iter()
            .filter(|n| n.alive)
            .filter_map(|n| share(n, &attackers))
            .collect();
        shares.iter().sum::<f64>() / shares.len().max(1) as f64
    }

    /// Over honest nodes but the seed, the mean share of their address
    /// book entries that are attackers.
    pub fn attacker_book_share(&self) -> f64 {
        self.mean_honest_share(|n, attackers| {
            let book = n.pex.book();
            let book = book.lock();
            let bad = book.entries().filter(|e| attackers.contains(&e.id)).count();
            Some(bad as f64 / book.len().max(1) as f64)
        })
    }

    /// The eclipse measure: over honest nodes but the seed, the mean share
    /// of their outbound peers that are attackers (0 without attackers).
    pub fn eclipse_share(&self) -> f64 {
        self.mean_honest_share(|n, attackers| {
            let out: Vec<_> = n.sw.peers().into_iter().filter(|p| p.is_outbound()).collect();
            let bad = out.iter().filter(|p| attackers.contains(&p.id())).count();
            (!out.is_empty()).then(|| bad as f64 / out.len() as f64)
        })
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// Each node's tip, by index.
    pub fn tips(&self) -> Vec<BlockHash> {
        self.nodes.iter().map(|n| n.chain.status().tip).collect()
    }

    /// Propagation of the blocks mined at or after `since` (simulated
    /// time from the start; a warm-up excludes blocks mined while the
    /// network was still forming). See [`Propagation`].
    pub fn propagation(&self, since: Duration) -> Propagation {
        let followers = self.cfg.honest().saturating_sub(1).max(1);
        let k90 = (followers * 9).div_ceil(10).max(1);
        let (mut to90, mut to100) = (Vec::new(), Vec::new());
        for times in self.arrivals.lock().expect("not poisoned").values() {
            // First arrival per follower (a block can rejoin after a reorg).
            let mut first: HashMap<usize, Duration> = HashMap::new();
            let mut origin = Duration::MAX;
            for &(node, at) in times {
                origin = origin.min(at);
                if node != 0 && !self.cfg.is_attacker(node) {
                    let e = first.entry(node).or_insert(at);
                    *e = (*e).min(at);
                }
            }
            if first.len() < followers || origin < since {
                continue;
            }
            let mut t: Vec<Duration> = first.into_values().collect();
            t.sort();
            to90.push((t[k90 - 1] - origin).as_secs_f64());
            to100.push((t[followers - 1] - origin).as_secs_f64());
        }
        let pct = |v: &mut Vec<f64>, p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        Propagation {
            blocks: to90.len(),
            p50_to_90: pct(&mut to90, 0.5),
            p99_to_90: pct(&mut to90, 0.99),
            p50_to_100: pct(&mut to100, 0.5),
            p99_to_100: pct(&mut to100, 0.99),
        }
    }

    /// SHA-256 (hex) over every node's tip, height, peers and address
    /// book, in index order: equal for two runs of one seed.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for n in &self.nodes {
            let st = n.chain.status();
            h.update((n.index as u64).to_le_bytes());
            h.update(st.tip.0);
            h.update(st.height.to_le_bytes());
            for p in n.sw.peers() {
                h.update(p.id().to_string());
            }
            h.update(b"|");
            for e in n.pex.book().lock().entries() {
                h.update(e.id.to_string());
            }
            h.update(b"/");
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Pauses every miner (the network then settles on one chain); each
    /// stops before its next block.
    pub fn stop_mining(&self) {
        self.mining.store(false, Ordering::Relaxed);
    }

    /// Lets the miners go on after [`Sim::stop_mining`].
    pub fn resume_mining(&self) {
        self.mining.store(true, Ordering::Relaxed);
    }

    /// Stops every node.
    pub async fn stop(self) {
        for n in &self.nodes {
            if let Some(m) = &n.miner {
                m.abort();
            }
            n.sw.stop().await;
        }
    }
}

/// A miner with no proof-of-work cost: waits an exponential time of mean
/// `mean` ms (seeded; read at each block), then builds a block on its tip with what its mempool
/// holds and submits it as a local block.
async fn mine(
    chain: Arc<ChainService>,
    clock: Clock,
    mean: Arc<AtomicU64>,
    on: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    // Room for the header and the block's own framing (fixed by genesis).
    let room = chain.with_chain(|c| c.params().genesis.max_block_bytes.saturating_sub(512));
    let on = move || on.load(Ordering::Relaxed) && !paused.load(Ordering::Relaxed);
    loop {
        if !on() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Inverse transform: -ln(1 - u) is Exp(1) for u uniform in [0, 1).
        let u: f64 = rng.random();
        let mean = Duration::from_millis(mean.load(Ordering::Relaxed));
        let wait = mean.mul_f64(-(1.0 - u).ln()).max(Duration::from_millis(1));
        tokio::time::sleep(wait).await;
        if !on() {
            continue;
        }
        let txs = chain.with_mempool(|m| m.select(room));
        let mut block = chain.with_chain(|c| c.template(txs, clock()));
        block.header.nonce = rng.random();
        if !solve(&mut block.header, u64::MAX) {
            continue;
        }
        if let Err(e) = chain.submit_block(block).await {
            tracing::warn!(error = %e, "simulated miner: block refused");
        }
    }
}
