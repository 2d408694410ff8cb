//! Shared helpers of the block sync tests: pre-mined chains, nodes with
//! the consensus, mempool and block sync reactors, and a faulty peer.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, MemoryTransport, NodeId, NodeInfo, NodeKey, Reactor, StopReason,
    Switch, SwitchConfig, Transport,
};
use plexus_proto::blocksync::{self as pb, message::Sum};
use plexus_reactors::blocksync::{
    BlockSyncConfig, BlockSyncReactor, PoolConfig, BLOCKSYNC_CHANNEL,
};
use plexus_reactors::chain::{
    Block, BlockHash, Blockchain, BlockchainConfig, Hash, NetworkParams, Store,
};
use plexus_reactors::consensus::{ConsensusConfig, ConsensusReactor, CONSENSUS_CHANNEL};
use plexus_reactors::mempool::{Mempool, MempoolConfig, MempoolReactor};
use plexus_reactors::mining::solve;
use plexus_reactors::service::{ChainService, ChainServiceConfig};
use ruint::aliases::U256;

pub fn params() -> Arc<NetworkParams> {
    static P: OnceLock<Arc<NetworkParams>> = OnceLock::new();
    P.get_or_init(|| Arc::new(NetworkParams::regtest())).clone()
}

/// Mines `n` blocks on `parent` (a block of `c`), each with a few words.
pub fn mine_on(c: &mut Blockchain, n: usize, salt: &str) -> Vec<Block> {
    let mut out = Vec::new();
    for _ in 0..n {
        let now = c.tip_header().timestamp_ms + 1000;
        let h = c.height() + 1;
        let txs = (0..3).map(|i| Bytes::from(format!("{salt} word {h}.{i}"))).collect();
        let mut b = c.template(txs, now);
        assert!(solve(&mut b.header, u64::MAX));
        c.process_block(b.clone(), None, u64::MAX / 2).unwrap();
        out.push(b);
    }
    out
}

/// The same `n` pre-mined blocks for every test of a binary.
pub fn premined(n: usize) -> Vec<Block> {
    static B: OnceLock<Vec<Block>> = OnceLock::new();
    let all = B.get_or_init(|| {
        let mut c = chain_with(&params(), &[]);
        mine_on(&mut c, 3000, "main")
    });
    all[..n].to_vec()
}

/// A fork of `len` blocks on top of `blocks[..at]`.
pub fn fork_of(p: &Arc<NetworkParams>, blocks: &[Block], at: usize, len: usize) -> Vec<Block> {
    let mut c = chain_with(p, &blocks[..at]);
    mine_on(&mut c, len, "fork")
}

pub fn import(c: &mut Blockchain, blocks: &[Block]) {
    for b in blocks {
        c.process_block(b.clone(), None, u64::MAX / 2).unwrap();
    }
}

pub fn chain_with(p: &Arc<NetworkParams>, blocks: &[Block]) -> Blockchain {
    chain_in(p, Store::open_in_memory().unwrap(), blocks)
}

pub fn chain_in(p: &Arc<NetworkParams>, store: Store, blocks: &[Block]) -> Blockchain {
    let mut c = Blockchain::open(p.clone(), store, BlockchainConfig::default()).unwrap();
    import(&mut c, blocks);
    c
}

pub fn sync_cfg() -> BlockSyncConfig {
    BlockSyncConfig {
        pool: PoolConfig {
            request_timeout: Duration::from_secs(2),
            min_request_timeout: Duration::from_millis(500),
            // Small batches so that every peer gets work on short chains.
            blocks_per_request: 8,
            ..PoolConfig::default()
        },
        status_wait: Duration::from_millis(500),
        status_interval: Duration::from_millis(500),
        headers_timeout: Duration::from_secs(3),
        // Several header batches on short chains: blocks download while
        // later headers arrive, and the weight check comes at the end.
        max_headers_per_request: 64,
        ..BlockSyncConfig::default()
    }
}

pub struct SyncNode {
    pub sw: Switch,
    pub chain: Arc<ChainService>,
    pub cons: Arc<ConsensusReactor>,
    pub mem: Arc<MempoolReactor>,
    pub sync: Arc<BlockSyncReactor>,
}

impl SyncNode {
    pub fn tip(&self) -> BlockHash {
        self.chain.status().tip
    }
    pub fn height(&self) -> u64 {
        self.chain.status().height
    }
}

pub async fn sync_node(
    net: &MemoryTransport,
    i: u8,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    cfg: BlockSyncConfig,
) -> SyncNode {
    let ip = IpAddr::from([10, 1, 0, i]);
    sync_node_on(net.with_ip(ip), SocketAddr::new(ip, 0), p, c, cfg).await
}

pub async fn sync_node_on<T: Transport>(
    t: T,
    listen: SocketAddr,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    cfg: BlockSyncConfig,
) -> SyncNode {
    let scfg = SwitchConfig { listen_addr: Some(listen), ..SwitchConfig::default() };
    let ccfg = ConsensusConfig {
        status_interval: Duration::from_millis(500),
        ..ConsensusConfig::default()
    };
    sync_node_with(t, scfg, ccfg, p, c, cfg).await
}

/// A node with the three reactors on `t`, with these switch and consensus
/// settings.
pub async fn sync_node_with<T: Transport>(
    t: T,
    scfg: SwitchConfig,
    ccfg: ConsensusConfig,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    cfg: BlockSyncConfig,
) -> SyncNode {
    sync_node_mempool(t, scfg, ccfg, MempoolConfig::default(), p, c, cfg).await
}

/// As [`sync_node_with`], with these mempool settings too.
pub async fn sync_node_mempool<T: Transport>(
    t: T,
    scfg: SwitchConfig,
    ccfg: ConsensusConfig,
    mcfg: MempoolConfig,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    cfg: BlockSyncConfig,
) -> SyncNode {
    let chain = ChainService::new(ChainServiceConfig::default(), c, Mempool::new(mcfg));
    let mem = Arc::new(MempoolReactor::new(chain.clone()));
    let cons = Arc::new(ConsensusReactor::new(ccfg, chain.clone()));
    let sync = Arc::new(BlockSyncReactor::new(cfg, chain.clone()));
    let info = NodeInfo::new(&p.network_id(), "n");
    let sw = Switch::builder(NodeKey::generate(), info, scfg, t)
        .shared_reactor(cons.clone())
        .shared_reactor(mem.clone())
        .shared_reactor(sync.clone())
        .build()
        .unwrap();
    sw.start().await.unwrap();
    cons.start(&sw);
    mem.start(&sw);
    sync.start(&sw);
    SyncNode { sw, chain, cons, mem, sync }
}

pub async fn connect(a: &SyncNode, b: &SyncNode) {
    a.sw.dial(&b.sw.net_address().unwrap()).await.unwrap();
}

/// Waits for `n` to reach `tip`, on its tip watch.
pub async fn wait_tip(n: &SyncNode, tip: BlockHash, secs: u64) -> bool {
    let mut rx = n.chain.watch_tip();
    let wait = async {
        while n.tip() != tip {
            if rx.changed().await.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(secs), wait).await.unwrap_or(false)
}

/// Waits for `id` to be banned by `n` (and so disconnected).
pub async fn wait_banned(n: &SyncNode, id: &NodeId, secs: u64) -> bool {
    let mut events = n.sw.subscribe();
    let wait = async {
        loop {
            if n.sw.is_banned(id) {
                return true;
            }
            if events.recv().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), wait).await.unwrap_or(false)
}

/// Messages a node sent on the block sync channel, all peers.
pub fn sent_on_blocksync(n: &SyncNode) -> u64 {
    n.sw.peers()
        .iter()
        .map(|p| {
            p.stats()
                .channels
                .iter()
                .filter(|c| c.id == BLOCKSYNC_CHANNEL)
                .map(|c| c.msgs_sent)
                .sum::<u64>()
        })
        .sum()
}

/// How a faulty block sync peer misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Honest status and headers; never answers block requests.
    Mute,
    /// Honest status and headers; answers every block request with
    /// NoBlockResponse.
    NoBlock,
    /// Honest until `height`; from there it sends blocks with an altered
    /// body (the header hash still matches).
    CorruptFrom(u64),
    /// Claims a hundred times its real height and weight; headers honest.
    LieWeight,
    /// Claims as `LieWeight` does, and answers every headers request with
    /// no headers.
    NoHeaders,
    /// Claims as `LieWeight` does, and never answers a headers request.
    SilentHeaders,
}

pub struct Faulty {
    chain: Mutex<Blockchain>,
    fault: Fault,
}

pub struct FaultyNode {
    pub node: SyncNode,
}

/// The faulty node's consensus channel: its `Status` on connect (a lie
/// for the lying faults), nothing else.
pub struct FaultyStatus(Arc<Faulty>);

impl Reactor for FaultyStatus {
    type Message = plexus_proto::chain::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(CONSENSUS_CHANNEL).recv_message_capacity(8 << 20)]
    }

    async fn add_peer(&self, peer: &plexus_p2p::Peer) {
        use plexus_proto::chain as cpb;
        let status = {
            let c = self.0.chain.lock();
            let (mut weight, mut height) = (c.weight(), c.height());
            if let Fault::LieWeight | Fault::NoHeaders | Fault::SilentHeaders = self.0.fault {
                weight *= U256::from(100);
                height *= 100;
            }
            cpb::Status {
                height,
                weight: weight.to_be_bytes::<32>().to_vec().into(),
                tip_hash: c.tip().0.to_vec().into(),
            }
        };
        let m = cpb::Message { sum: Some(cpb::message::Sum::Status(status)) };
        let _ = peer.send_msg(CONSENSUS_CHANNEL, &m).await;
    }

    async fn receive(&self, _env: Envelope<plexus_proto::chain::Message>) {}
}

impl Reactor for Faulty {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(BLOCKSYNC_CHANNEL).recv_message_capacity(8 << 20)]
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let peer = &env.peer;
        let send = |sum: Sum| pb::Message { sum: Some(sum) };
        match env.message.sum {
            Some(Sum::HeadersRequest(_)) if matches!(self.fault, Fault::SilentHeaders) => {}
            Some(Sum::HeadersRequest(req)) => {
                let locator: Vec<Hash> =
                    req.locator.iter().filter_map(|h| Hash::from_slice(h)).collect();
                let stop = Hash::from_slice(&req.stop_hash).unwrap_or(Hash::ZERO);
                let headers = if let Fault::NoHeaders = self.fault {
                    Vec::new()
                } else {
                    self.chain.lock().main_headers_after(
                        &locator,
                        &stop,
                        req.max.min(2000) as usize,
                    )
                };
                let r =
                    pb::HeadersResponse { headers: headers.iter().map(|h| h.to_proto()).collect() };
                let _ = peer.send_msg(BLOCKSYNC_CHANNEL, &send(Sum::HeadersResponse(r))).await;
            }
            Some(Sum::BlockRequest(req)) => {
                for h in req.hashes.iter().filter_map(|h| Hash::from_slice(h)) {
                    let reply = match self.fault {
                        Fault::Mute => continue,
                        Fault::NoBlock => {
                            Sum::NoBlockResponse(pb::NoBlockResponse { hash: h.0.to_vec().into() })
                        }
                        Fault::CorruptFrom(_)
                        | Fault::LieWeight
                        | Fault::NoHeaders
                        | Fault::SilentHeaders => {
                            let mut b = { self.chain.lock().block(&h).unwrap().unwrap() };
                            if matches!(self.fault, Fault::CorruptFrom(x) if b.header.height >= x) {
                                b.txs.push(Bytes::from_static(b"forged"));
                            }
                            Sum::BlockResponse(pb::BlockResponse { block: Some(b.to_proto()) })
                        }
                    };
                    let _ = peer.send_msg(BLOCKSYNC_CHANNEL, &send(reply)).await;
                }
            }
            _ => {}
        }
    }

    async fn remove_peer(&self, _: &plexus_p2p::Peer, _: &StopReason) {}
}

/// A node whose block sync channel is served by [`Faulty`].
pub async fn faulty_node(
    net: &MemoryTransport,
    i: u8,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    fault: Fault,
) -> FaultyNode {
    let ip = IpAddr::from([10, 1, 0, i]);
    let scfg =
        SwitchConfig { listen_addr: Some(SocketAddr::new(ip, 0)), ..SwitchConfig::default() };
    // Its consensus channel only tells its (faulty) status, so only block
    // sync (the faulty one) can feed the syncing node. The service and the
    // reactors below are not registered (the handles tests expect).
    let chain = ChainService::new(
        ChainServiceConfig::default(),
        chain_with(p, &[]),
        Mempool::new(MempoolConfig::default()),
    );
    let mem = Arc::new(MempoolReactor::new(chain.clone()));
    let cons = Arc::new(ConsensusReactor::new(ConsensusConfig::default(), chain.clone()));
    let faulty = Arc::new(Faulty { chain: Mutex::new(c), fault });
    let info = NodeInfo::new(&p.network_id(), "faulty");
    let sw = Switch::builder(NodeKey::generate(), info, scfg, net.with_ip(ip))
        .shared_reactor(Arc::new(FaultyStatus(faulty.clone())))
        .shared_reactor(faulty)
        .build()
        .unwrap();
    sw.start().await.unwrap();
    let sync = Arc::new(BlockSyncReactor::new(sync_cfg(), chain.clone()));
    FaultyNode { node: SyncNode { sw, chain, cons, mem, sync } }
}
