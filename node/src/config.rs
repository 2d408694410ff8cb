//! `config.toml`: the node's settings, each with a documented default.
//! Command-line flags override them (see `main.rs`).

use std::path::Path;

use std::time::Duration;

use plexus_p2p::PeerManagerConfig;
use plexus_reactors::blocksync::{BlockSyncConfig, PoolConfig};
use plexus_reactors::consensus::ConsensusConfig;
use plexus_reactors::mempool::MempoolConfig;
use plexus_reactors::service::ChainServiceConfig;
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// A human name shown to peers. Default "plexus".
    pub moniker: String,
    /// Peer-to-peer settings.
    pub p2p: P2pConfig,
    /// The web page, JSON-RPC and metrics.
    pub rpc: RpcConfig,
    /// Mining.
    pub mining: MiningConfig,
    /// Block sync and block import.
    pub sync: SyncConfig,
    /// The transaction pool.
    pub mempool: MempoolSection,
    /// Logging.
    pub log: LogConfig,
}

/// `[p2p]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Address to listen on. Default "0.0.0.0".
    pub host: String,
    /// TCP port. Default 26656.
    pub port: u16,
    /// Well-known peers to join through: "id@host:port" or "host:port".
    /// Default none.
    pub peers: Vec<String>,
    /// Run as a seed (introducer): answer PEX, keep no peers. Default false.
    pub seed_mode: bool,
    /// Most inbound peers. Default 40.
    pub max_inbound: usize,
    /// Outbound peers the address book keeps dialing for. Default 10.
    pub max_outbound: usize,
    /// Keep only routable addresses in the address book (false for a
    /// local network). Default true.
    pub addr_book_strict: bool,
    /// How often the address book fills free outbound slots, seconds.
    /// Default 30.
    pub pex_period_s: u64,
    /// About how often a node with full outbound slots tries one extra
    /// outbound peer in a new netgroup, kept if it relays blocks sooner
    /// than an outbound peer (Bitcoin Core's extra block-relay-only peer;
    /// heals partitions), seconds; 0 disables. Default 300.
    pub extra_outbound_interval_s: u64,
    /// Longest wait between attempts to join through a `-k` peer that
    /// could not be reached (retries start at 1 s and double), seconds.
    /// Default 60.
    pub join_retry_max_s: u64,
    /// Bytes all peers' send queues may hold together, MiB; 0 picks a
    /// quarter of the machine's memory, at most 1 GiB. Default 0.
    pub max_peer_memory_mib: usize,
    /// Most inbound peers from one IP, loopback exempt (0: no limit). Default 1.
    pub max_inbound_per_ip: usize,
    /// Most inbound peers from one /16 (IPv4) or /32 (IPv6), private ranges exempt (0: no limit). Default 10.
    pub max_inbound_per_netgroup: usize,
    /// Most outbound peers into one /16 or /32, persistent peers exempt (0: no limit). Default 2.
    pub max_outbound_per_netgroup: usize,
    /// Most inbound handshakes at once. Default 64.
    pub max_pending_handshakes: usize,
    /// Most inbound handshakes at once from one IP, loopback exempt. Default 8.
    pub max_pending_handshakes_per_ip: usize,
    /// An IP that fails `preauth_failures` handshakes within a minute is refused this long before the handshake (never loopback), seconds. Default 10.
    pub ip_cooloff_s: u64,
    /// Failed handshakes from one IP within a minute that start its cool-off. Default 10.
    pub preauth_failures: u32,
    /// Misbehaviour score at which a peer's identity is banned. Default 100.
    pub ban_threshold: u32,
    /// Half-life of a misbehaviour score, seconds. Default 1800.
    pub score_half_life_s: u64,
    /// Identities whose reputation is remembered (oldest dropped first). Default 10000.
    pub reputation_capacity: usize,
    /// First ban for protocol errors, seconds (Chia). Default 10.
    pub ban_protocol_error_s: u64,
    /// First ban for breaking a rate limit, seconds (Chia). Default 300.
    pub ban_rate_limit_s: u64,
    /// First ban for invalid or withheld chain data, seconds (Chia). Default 600.
    pub ban_consensus_error_s: u64,
    /// Longest ban; a repeat offender's ban doubles up to it, seconds. Default 86400.
    pub ban_max_s: u64,
    /// Inbound peers kept from eviction for distinct netgroups. Default 4.
    pub evict_protect_netgroups: usize,
    /// Inbound peers kept from eviction for the lowest ping. Default 8.
    pub evict_protect_ping: usize,
    /// Inbound peers kept from eviction for relaying novel transactions most recently. Default 4.
    pub evict_protect_txs: usize,
    /// Inbound peers kept from eviction for relaying novel blocks most recently. Default 4.
    pub evict_protect_blocks: usize,
    /// Share of the remaining inbound peers kept from eviction for the longest uptime, percent. Default 50.
    pub evict_protect_uptime_percent: u8,
}

/// `[rpc]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// Address to listen on. Default "127.0.0.1" (local only).
    pub host: String,
    /// TCP port of the web page, JSON-RPC and /metrics. Default 26657.
    pub port: u16,
    /// Allow the methods that change the node (dial_peers, stop_peer,
    /// stop_node). Default false.
    #[serde(rename = "unsafe")]
    pub unsafe_methods: bool,
    /// Largest request body, and largest WebSocket message, bytes (as
    /// CometBFT's `max_body_bytes`). Default 1,000,000.
    pub max_body_bytes: usize,
    /// Most WebSocket clients at once (CometBFT's
    /// `max_subscription_clients`); more are refused with 503. Default 100.
    pub max_ws_clients: usize,
    /// A WebSocket client that takes longer than this to accept one
    /// message is disconnected (CometBFT's write wait), seconds.
    /// Default 10.
    pub ws_write_timeout_s: u64,
    /// A WebSocket client that sends nothing, not even a pong to our
    /// pings (sent every half of this), for this long is disconnected
    /// (CometBFT's read wait), seconds. Default 30.
    pub ws_read_timeout_s: u64,
    /// Browser origins allowed to use the API besides the node's own page
    /// (`"*"`: any); other `Origin`s are refused with 403. Default none.
    pub cors_allowed_origins: Vec<String>,
    /// Most addresses in one `dial_peers` call. Default 100.
    pub max_dial_peers: usize,
    /// Host names the API answers to besides local ones (`localhost`,
    /// `*.localhost`, IP literals) and `host`, as geth's `--http.vhosts`;
    /// `"*"` answers any. A request whose `Host` header names another
    /// host is refused with 403: a DNS-rebinding page names its own.
    /// Default none.
    pub allowed_hosts: Vec<String>,
    /// Most open HTTP connections (WebSocket ones included); a connection
    /// beyond it is closed at once. Default 256.
    pub max_connections: usize,
    /// A connection must send each request's whole header within this of
    /// being ready for it, seconds (hyper's `header_read_timeout`): a
    /// client trickling header bytes is closed, and so is a keep-alive
    /// connection idle this long between requests. Default 10.
    pub header_read_timeout_s: u64,
    /// Most open HTTP connections from one IP address (an IPv6 /64),
    /// WebSocket ones included. Default 32.
    pub max_connections_per_ip: usize,
    /// A request (its body included) must be answered within this, else
    /// it gets 408 and its connection closes, seconds. Default 30.
    pub request_timeout_s: u64,
    /// Most WebSocket clients from one IP address (an IPv6 /64;
    /// `max_ws_clients` is the total). Default 10.
    pub max_ws_clients_per_ip: usize,
    /// Most calls in one JSON-RPC batch. Default 100.
    pub max_batch: usize,
    /// Largest JSON-RPC answer, a whole batch's together, bytes; beyond it
    /// the calls get -32008/-32011 errors instead. Default 16,777,216.
    pub max_response_bytes: usize,
    /// Serve the page, RPC and WebSocket over TLS (HTTPS, WSS). Default
    /// false.
    pub tls: bool,
    /// The certificate chain (PEM) for `tls`; relative paths are in the
    /// home. Default "tls/server.crt" (written by `plexus init`, signed by
    /// the home's own CA "tls/ca.crt").
    pub tls_cert: String,
    /// The certificate's private key (PEM) for `tls`. Default
    /// "tls/server.key".
    pub tls_key: String,
}

/// `[mining]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiningConfig {
    /// Mine blocks. Default false.
    pub enabled: bool,
    /// Miner threads. Default 1.
    pub threads: usize,
    /// After a mined block could not be stored (disk full), mining pauses
    /// this long, doubling per further failure, seconds
    /// (`MinerConfig::store_retry`). Default 1.
    pub store_retry_s: u64,
    /// The longest such pause, seconds. Default 60.
    pub store_retry_max_s: u64,
}

/// `[sync]`: block sync (`plexus_reactors::blocksync::BlockSyncConfig`
/// and its `PoolConfig`) and block import
/// (`plexus_reactors::consensus::ConsensusConfig`). Defaults are the
/// library's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Heights requested ahead of the next block to apply. Default 1024.
    pub window: u64,
    /// Blocks asked for per request, 1..=32. Default 32.
    pub blocks_per_request: usize,
    /// Requests pending per peer. Default 16.
    pub max_pending_per_peer: usize,
    /// Longest a block request may take (less for a peer that has been
    /// fast), seconds. Default 15.
    pub request_timeout_s: u64,
    /// Statuses the first round waits for (fewer after `status_wait_s`).
    /// Default 3.
    pub min_status_peers: usize,
    /// Longest the first round waits for them, and the pause after a
    /// round that moved nothing, seconds. Default 3.
    pub status_wait_s: u64,
    /// How often `Status` goes to every peer (consensus channel), and
    /// block sync looks at the table unwoken, seconds. Default 10.
    pub status_interval_s: u64,
    /// A round starts for any heavier claim; one more than this many
    /// blocks above us is logged at INFO, and a heavier tip off a round's
    /// path this far above its target ends the round. Default 16.
    pub resync_distance: u64,
    /// Most blocks handed to the importer at once. Default 256.
    pub apply_batch: usize,
    /// Most blocks written in one SQLite transaction (the chain lock is
    /// held that long). Default 256.
    pub commit_batch: usize,
    /// Most block bytes in one SQLite transaction. Default 8388608 (8 MiB).
    pub commit_batch_bytes: usize,
}

/// `[mempool]`: the transaction pool
/// (`plexus_reactors::mempool::MempoolConfig`; defaults are the library's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MempoolSection {
    /// Most transactions held. Default 10000.
    pub max_txs: usize,
    /// Most bytes of transactions held. Default 67108864 (64 MiB).
    pub max_bytes: usize,
    /// Most of the pool one peer's transactions may hold, percent.
    /// Default 25.
    pub max_peer_share_percent: u8,
    /// Share of the pool kept for transactions submitted to this node,
    /// percent. Default 10.
    pub reserved_local_percent: u8,
    /// Gossip runs at most this often; what arrives meanwhile goes to
    /// each peer together, milliseconds. Default 100.
    pub gossip_interval_ms: u64,
}

impl Default for MempoolSection {
    fn default() -> Self {
        let d = MempoolConfig::default();
        MempoolSection {
            max_txs: d.max_txs,
            max_bytes: d.max_bytes,
            max_peer_share_percent: d.max_peer_share_percent,
            reserved_local_percent: d.reserved_local_percent,
            gossip_interval_ms: d.gossip_interval.as_millis() as u64,
        }
    }
}

impl MempoolSection {
    /// The pool's settings (the rest at the library's defaults).
    pub fn config(&self) -> MempoolConfig {
        MempoolConfig {
            max_txs: self.max_txs,
            max_bytes: self.max_bytes,
            max_peer_share_percent: self.max_peer_share_percent,
            reserved_local_percent: self.reserved_local_percent,
            gossip_interval: std::time::Duration::from_millis(self.gossip_interval_ms),
            ..MempoolConfig::default()
        }
    }
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `RUST_LOG`-style filter; the environment variable wins. Default
    /// "info".
    pub filter: String,
    /// "text" or "json". Default "text".
    pub format: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            moniker: "plexus".into(),
            p2p: P2pConfig::default(),
            rpc: RpcConfig::default(),
            mining: MiningConfig::default(),
            sync: SyncConfig::default(),
            mempool: MempoolSection::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        let (sync, svc) = (BlockSyncConfig::default(), ChainServiceConfig::default());
        SyncConfig {
            window: sync.pool.window,
            blocks_per_request: sync.pool.blocks_per_request,
            max_pending_per_peer: sync.pool.max_pending_per_peer,
            request_timeout_s: sync.pool.request_timeout.as_secs(),
            min_status_peers: sync.min_status_peers,
            status_wait_s: sync.status_wait.as_secs(),
            status_interval_s: sync.status_interval.as_secs(),
            resync_distance: sync.resync_distance,
            apply_batch: sync.apply_batch,
            commit_batch: svc.commit_batch,
            commit_batch_bytes: svc.commit_batch_bytes,
        }
    }
}

impl SyncConfig {
    /// The block sync reactor's settings (the rest at their defaults).
    pub fn block_sync(&self) -> BlockSyncConfig {
        let d = BlockSyncConfig::default();
        BlockSyncConfig {
            pool: PoolConfig {
                window: self.window,
                blocks_per_request: self.blocks_per_request,
                max_pending_per_peer: self.max_pending_per_peer,
                request_timeout: Duration::from_secs(self.request_timeout_s),
                ..d.pool
            },
            min_status_peers: self.min_status_peers,
            status_wait: Duration::from_secs(self.status_wait_s),
            status_interval: Duration::from_secs(self.status_interval_s),
            resync_distance: self.resync_distance,
            apply_batch: self.apply_batch,
            ..d
        }
    }

    /// The consensus reactor's settings (the rest at their defaults).
    pub fn consensus(&self) -> ConsensusConfig {
        ConsensusConfig {
            status_interval: Duration::from_secs(self.status_interval_s),
            ..ConsensusConfig::default()
        }
    }

    /// The chain service's settings (the rest at their defaults).
    pub fn service(&self) -> ChainServiceConfig {
        ChainServiceConfig {
            commit_batch: self.commit_batch,
            commit_batch_bytes: self.commit_batch_bytes,
            ..ChainServiceConfig::default()
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        let d = PeerManagerConfig::default();
        P2pConfig {
            host: "0.0.0.0".into(),
            port: 26656,
            peers: Vec::new(),
            seed_mode: false,
            max_inbound: 40,
            max_outbound: 10,
            addr_book_strict: true,
            pex_period_s: 30,
            extra_outbound_interval_s: 300,
            join_retry_max_s: 60,
            max_peer_memory_mib: 0,
            max_inbound_per_ip: d.max_inbound_per_ip,
            max_inbound_per_netgroup: d.max_inbound_per_netgroup,
            max_outbound_per_netgroup: d.max_outbound_per_netgroup,
            max_pending_handshakes: d.max_pending_handshakes,
            max_pending_handshakes_per_ip: d.max_pending_handshakes_per_ip,
            ip_cooloff_s: d.ip_cooloff.as_secs(),
            preauth_failures: d.preauth_failures,
            ban_threshold: d.ban_threshold,
            score_half_life_s: d.score_half_life.as_secs(),
            reputation_capacity: d.reputation_capacity,
            ban_protocol_error_s: d.ban_protocol_error.as_secs(),
            ban_rate_limit_s: d.ban_rate_limit.as_secs(),
            ban_consensus_error_s: d.ban_consensus_error.as_secs(),
            ban_max_s: d.ban_max.as_secs(),
            evict_protect_netgroups: d.evict_protect_netgroups,
            evict_protect_ping: d.evict_protect_ping,
            evict_protect_txs: d.evict_protect_txs,
            evict_protect_blocks: d.evict_protect_blocks,
            evict_protect_uptime_percent: d.evict_protect_uptime_percent,
        }
    }
}

impl P2pConfig {
    /// The switch's peer-manager settings (the rest at the library's
    /// defaults).
    pub fn peer_manager(&self) -> PeerManagerConfig {
        PeerManagerConfig {
            max_inbound: self.max_inbound,
            max_outbound: self.max_outbound,
            max_inbound_per_ip: self.max_inbound_per_ip,
            max_inbound_per_netgroup: self.max_inbound_per_netgroup,
            max_outbound_per_netgroup: self.max_outbound_per_netgroup,
            max_pending_handshakes: self.max_pending_handshakes,
            max_pending_handshakes_per_ip: self.max_pending_handshakes_per_ip,
            ip_cooloff: Duration::from_secs(self.ip_cooloff_s),
            preauth_failures: self.preauth_failures,
            ban_threshold: self.ban_threshold,
            score_half_life: Duration::from_secs(self.score_half_life_s),
            reputation_capacity: self.reputation_capacity,
            ban_protocol_error: Duration::from_secs(self.ban_protocol_error_s),
            ban_rate_limit: Duration::from_secs(self.ban_rate_limit_s),
            ban_consensus_error: Duration::from_secs(self.ban_consensus_error_s),
            ban_max: Duration::from_secs(self.ban_max_s),
            evict_protect_netgroups: self.evict_protect_netgroups,
            evict_protect_ping: self.evict_protect_ping,
            evict_protect_txs: self.evict_protect_txs,
            evict_protect_blocks: self.evict_protect_blocks,
            evict_protect_uptime_percent: self.evict_protect_uptime_percent,
            ..PeerManagerConfig::default()
        }
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            host: "127.0.0.1".into(),
            port: 26657,
            unsafe_methods: false,
            max_body_bytes: 1_000_000,
            max_ws_clients: 100,
            ws_write_timeout_s: 10,
            ws_read_timeout_s: 30,
            cors_allowed_origins: Vec::new(),
            max_dial_peers: 100,
            allowed_hosts: Vec::new(),
            max_connections: 256,
            header_read_timeout_s: 10,
            max_connections_per_ip: 32,
            request_timeout_s: 30,
            max_ws_clients_per_ip: 10,
            max_batch: 100,
            max_response_bytes: 16 << 20,
            tls: false,
            tls_cert: "tls/server.crt".into(),
            tls_key: "tls/server.key".into(),
        }
    }
}

impl Default for MiningConfig {
    fn default() -> Self {
        let d = plexus_reactors::mining::MinerConfig::default();
        MiningConfig {
            enabled: false,
            threads: 1,
            store_retry_s: d.store_retry.as_secs(),
            store_retry_max_s: d.store_retry_max.as_secs(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info".into(), format: "text".into() }
    }
}

impl NodeConfig {
    /// Reads `path`. Errors name the file and the bad field.
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    /// Refuses values the node cannot run with; the error names the field.
    pub fn validate(&self) -> anyhow::Result<()> {
        let checks = [
            (self.rpc.max_body_bytes >= 1024, "rpc.max_body_bytes must be at least 1024"),
            (self.rpc.ws_read_timeout_s >= 1, "rpc.ws_read_timeout_s must be at least 1"),
            (self.rpc.ws_write_timeout_s >= 1, "rpc.ws_write_timeout_s must be at least 1"),
            (self.rpc.max_connections >= 1, "rpc.max_connections must be at least 1"),
            (self.rpc.header_read_timeout_s >= 1, "rpc.header_read_timeout_s must be at least 1"),
            (self.rpc.max_batch >= 1, "rpc.max_batch must be at least 1"),
            (self.rpc.max_connections_per_ip >= 1, "rpc.max_connections_per_ip must be at least 1"),
            (self.rpc.request_timeout_s >= 1, "rpc.request_timeout_s must be at least 1"),
            (self.rpc.max_ws_clients_per_ip >= 1, "rpc.max_ws_clients_per_ip must be at least 1"),
            (
                self.rpc.max_response_bytes >= 65_536,
                "rpc.max_response_bytes must be at least 65536",
            ),
            (self.p2p.pex_period_s >= 1, "p2p.pex_period_s must be at least 1"),
            (self.p2p.ban_threshold >= 1, "p2p.ban_threshold must be at least 1"),
            (self.p2p.score_half_life_s >= 1, "p2p.score_half_life_s must be at least 1"),
            (self.p2p.reputation_capacity >= 1, "p2p.reputation_capacity must be at least 1"),
            (self.p2p.max_pending_handshakes >= 1, "p2p.max_pending_handshakes must be at least 1"),
            (
                self.p2p.max_pending_handshakes_per_ip >= 1,
                "p2p.max_pending_handshakes_per_ip must be at least 1",
            ),
            (
                self.p2p.evict_protect_uptime_percent <= 100,
                "p2p.evict_protect_uptime_percent must be at most 100",
            ),
            (self.p2p.ban_max_s <= 365 * 86_400, "p2p.ban_max_s must be at most a year"),
            (self.mining.threads >= 1, "mining.threads must be at least 1"),
            (
                self.mining.store_retry_s >= 1
                    && self.mining.store_retry_max_s >= self.mining.store_retry_s,
                "mining.store_retry_s must be at least 1 and at most mining.store_retry_max_s",
            ),
            (self.sync.window >= 1, "sync.window must be at least 1"),
            (
                (1..=32).contains(&self.sync.blocks_per_request),
                "sync.blocks_per_request must be 1 to 32",
            ),
            (self.sync.max_pending_per_peer >= 1, "sync.max_pending_per_peer must be at least 1"),
            (self.sync.request_timeout_s >= 1, "sync.request_timeout_s must be at least 1"),
            (self.sync.status_interval_s >= 1, "sync.status_interval_s must be at least 1"),
            (self.sync.apply_batch >= 1, "sync.apply_batch must be at least 1"),
            (self.sync.commit_batch >= 1, "sync.commit_batch must be at least 1"),
            (self.sync.commit_batch_bytes >= 1, "sync.commit_batch_bytes must be at least 1"),
            (self.mempool.max_txs >= 1, "mempool.max_txs must be at least 1"),
            (
                (1..=60_000).contains(&self.mempool.gossip_interval_ms),
                "mempool.gossip_interval_ms must be 1 to 60000",
            ),
            (self.mempool.max_bytes >= 65_536, "mempool.max_bytes must be at least 65536"),
            (
                (1..=100).contains(&self.mempool.max_peer_share_percent),
                "mempool.max_peer_share_percent must be 1 to 100",
            ),
            (
                self.mempool.reserved_local_percent < 100,
                "mempool.reserved_local_percent must be below 100",
            ),
            (
                matches!(self.log.format.as_str(), "text" | "json"),
                "log.format must be text or json",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => anyhow::bail!("{why}"),
            None => Ok(()),
        }
    }

    /// The file as written by `plexus init`: every field with a comment
    /// giving its meaning, unit and default.
    pub fn render(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let list = |v: &[String]| v.iter().map(|p| q(p)).collect::<Vec<_>>().join(", ");
        let peers = list(&self.p2p.peers);
        format!(
            r#"# Plexus node configuration. Flags of `plexus start` override these.

# A human name shown to peers (default "plexus").
moniker = {moniker}

[p2p]
# Address to listen on (default "0.0.0.0").
host = {p2p_host}
# TCP port for peers (default 26656; flag -p).
port = {p2p_port}
# Well-known peers to join through, "id@host:port" or "host:port" (default none; flag -k).
peers = [{peers}]
# Run as a seed/introducer: answer address requests, keep no peers (default false).
seed_mode = {seed}
# Most inbound peers (default 40).
max_inbound = {max_in}
# Outbound peers to keep (default 10).
max_outbound = {max_out}
# Keep only routable addresses in the address book; false for a local network (default true).
addr_book_strict = {strict}
# How often the address book fills free outbound slots, seconds (default 30).
pex_period_s = {pex_period}
# About how often a node with full outbound slots tries one extra outbound peer
# in a new netgroup, kept if it relays blocks sooner than an outbound peer
# (heals partitions), seconds; 0 disables (default 300).
extra_outbound_interval_s = {extra_outbound}
# Longest wait between attempts to join through a -k peer that could not be
# reached; retries start at 1 s and double, seconds (default 60).
join_retry_max_s = {join_retry_max}
# Bytes all peers' send queues may hold together, MiB; 0 = a quarter of the memory, at most 1024 (default 0).
max_peer_memory_mib = {peer_mem}
# Most inbound peers from one IP, loopback exempt (0: no limit; default 1).
max_inbound_per_ip = {max_inbound_per_ip}
# Most inbound peers from one /16 (IPv4) or /32 (IPv6), private ranges exempt (0: no limit; default 10).
max_inbound_per_netgroup = {max_inbound_per_netgroup}
# Most outbound peers into one /16 or /32, persistent peers exempt (0: no limit; default 2).
max_outbound_per_netgroup = {max_outbound_per_netgroup}
# Most inbound handshakes at once (default 64).
max_pending_handshakes = {max_pending_handshakes}
# Most inbound handshakes at once from one IP, loopback exempt (default 8).
max_pending_handshakes_per_ip = {max_pending_handshakes_per_ip}
# An IP that fails `preauth_failures` handshakes within a minute is refused this long before the handshake (never loopback), seconds (default 10).
ip_cooloff_s = {ip_cooloff_s}
# Failed handshakes from one IP within a minute that start its cool-off (default 10).
preauth_failures = {preauth_failures}
# Misbehaviour score at which a peer's identity is banned (default 100).
ban_threshold = {ban_threshold}
# Half-life of a misbehaviour score, seconds (default 1800).
score_half_life_s = {score_half_life_s}
# Identities whose reputation is remembered (oldest dropped first) (default 10000).
reputation_capacity = {reputation_capacity}
# First ban for protocol errors, seconds (Chia) (default 10).
ban_protocol_error_s = {ban_protocol_error_s}
# First ban for breaking a rate limit, seconds (Chia) (default 300).
ban_rate_limit_s = {ban_rate_limit_s}
# First ban for invalid or withheld chain data, seconds (Chia) (default 600).
ban_consensus_error_s = {ban_consensus_error_s}
# Longest ban; a repeat offender's ban doubles up to it, seconds (default 86400).
ban_max_s = {ban_max_s}
# Inbound peers kept from eviction for distinct netgroups (default 4).
evict_protect_netgroups = {evict_protect_netgroups}
# Inbound peers kept from eviction for the lowest ping (default 8).
evict_protect_ping = {evict_protect_ping}
# Inbound peers kept from eviction for relaying novel transactions most recently (default 4).
evict_protect_txs = {evict_protect_txs}
# Inbound peers kept from eviction for relaying novel blocks most recently (default 4).
evict_protect_blocks = {evict_protect_blocks}
# Share of the remaining inbound peers kept from eviction for the longest uptime, percent (default 50).
evict_protect_uptime_percent = {evict_protect_uptime_percent}

[rpc]
# Address of the web page, JSON-RPC and /metrics (default "127.0.0.1": local only).
host = {rpc_host}
# Its TCP port (default 26657; flag -i).
port = {rpc_port}
# Allow dial_peers, stop_peer and stop_node (default false).
unsafe = {unsafe_methods}
# Largest request body and WebSocket message, bytes (default 1000000).
max_body_bytes = {max_body}
# Most WebSocket clients at once; more get 503 (default 100).
max_ws_clients = {max_ws}
# Disconnect a WebSocket client that takes longer to accept a message, seconds (default 10).
ws_write_timeout_s = {ws_wait}
# Disconnect a WebSocket client silent this long (pinged every half of it), seconds (default 30).
ws_read_timeout_s = {ws_read}
# Browser origins allowed besides the node's own page, "*" for any (default none).
cors_allowed_origins = [{cors}]
# Most addresses in one dial_peers call (default 100).
max_dial_peers = {max_dial}
# Host names the API answers to besides localhost, IP addresses and host;
# "*" for any (geth's --http.vhosts; default none).
allowed_hosts = [{allowed_hosts}]
# Most open HTTP connections, WebSockets included (default 256).
max_connections = {max_conns}
# A request's header must arrive within this; also closes a keep-alive
# connection idle this long, seconds (default 10).
header_read_timeout_s = {header_timeout}
# Most open HTTP connections from one IP address, WebSockets included (default 32).
max_connections_per_ip = {max_conns_ip}
# A request, body included, must be answered within this; else 408, seconds (default 30).
request_timeout_s = {request_timeout}
# Most WebSocket clients from one IP address (default 10).
max_ws_clients_per_ip = {max_ws_ip}
# Most calls in one JSON-RPC batch (default 100).
max_batch = {max_batch}
# Largest JSON-RPC answer, a batch's together, bytes (default 16777216).
max_response_bytes = {max_response}
# Serve over TLS: https:// and wss:// (default false).
tls = {tls}
# Certificate chain and key (PEM), relative to the home; plexus init writes
# these, signed by the home's own CA tls/ca.crt.
tls_cert = {tls_cert}
tls_key = {tls_key}

[mining]
# Mine blocks (default false; flag -m).
enabled = {mine}
# Miner threads (default 1; flag --mine-threads).
threads = {threads}
# After a mined block could not be stored (disk full), mining pauses this
# long, doubling per further failure, seconds (default 1).
store_retry_s = {store_retry}
# The longest such pause, seconds (default 60).
store_retry_max_s = {store_retry_max}

[sync]
# Heights requested ahead of the next block to apply (default 1024).
window = {window}
# Blocks asked for per request, 1 to 32 (default 32).
blocks_per_request = {per_request}
# Requests pending per peer (default 16).
max_pending_per_peer = {pending}
# Longest a block request may take, less for a peer that has been fast, seconds (default 15).
request_timeout_s = {req_timeout}
# Statuses the first sync round waits for, fewer after status_wait_s (default 3).
min_status_peers = {min_status}
# Longest it waits for them, and the pause after a round that moved nothing, seconds (default 3).
status_wait_s = {status_wait}
# How often Status goes to every peer, seconds (default 10).
status_interval_s = {status_interval}
# Sync starts for any heavier peer; this many blocks ahead is logged at INFO, and a heavier fork this far past a round's target ends it (default 16).
resync_distance = {resync}
# Most blocks handed to the importer at once (default 256).
apply_batch = {apply_batch}
# Most blocks written in one SQLite transaction; the chain lock is held that long (default 256).
commit_batch = {commit_batch}
# Most block bytes in one SQLite transaction (default 8388608).
commit_batch_bytes = {commit_bytes}

[mempool]
# Most transactions held (default 10000).
max_txs = {mp_txs}
# Most bytes of transactions held (default 67108864).
max_bytes = {mp_bytes}
# Most of the pool one peer's transactions may hold, percent (default 25).
max_peer_share_percent = {mp_share}
# Share of the pool kept for transactions submitted to this node, percent (default 10).
reserved_local_percent = {mp_local}
# Gossip runs at most this often; what arrives meanwhile goes to each peer together, ms (default 100).
gossip_interval_ms = {mp_gossip}

[log]
# RUST_LOG-style filter; the RUST_LOG environment variable wins (default "info").
filter = {filter}
# "text" or "json" (default "text"; flag --log-format).
format = {format}
"#,
            moniker = q(&self.moniker),
            p2p_host = q(&self.p2p.host),
            p2p_port = self.p2p.port,
            seed = self.p2p.seed_mode,
            max_in = self.p2p.max_inbound,
            max_out = self.p2p.max_outbound,
            strict = self.p2p.addr_book_strict,
            pex_period = self.p2p.pex_period_s,
            extra_outbound = self.p2p.extra_outbound_interval_s,
            join_retry_max = self.p2p.join_retry_max_s,
            peer_mem = self.p2p.max_peer_memory_mib,
            max_inbound_per_ip = self.p2p.max_inbound_per_ip,
            max_inbound_per_netgroup = self.p2p.max_inbound_per_netgroup,
            max_outbound_per_netgroup = self.p2p.max_outbound_per_netgroup,
            max_pending_handshakes = self.p2p.max_pending_handshakes,
            max_pending_handshakes_per_ip = self.p2p.max_pending_handshakes_per_ip,
            ip_cooloff_s = self.p2p.ip_cooloff_s,
            preauth_failures = self.p2p.preauth_failures,
            ban_threshold = self.p2p.ban_threshold,
            score_half_life_s = self.p2p.score_half_life_s,
            reputation_capacity = self.p2p.reputation_capacity,
            ban_protocol_error_s = self.p2p.ban_protocol_error_s,
            ban_rate_limit_s = self.p2p.ban_rate_limit_s,
            ban_consensus_error_s = self.p2p.ban_consensus_error_s,
            ban_max_s = self.p2p.ban_max_s,
            evict_protect_netgroups = self.p2p.evict_protect_netgroups,
            evict_protect_ping = self.p2p.evict_protect_ping,
            evict_protect_txs = self.p2p.evict_protect_txs,
            evict_protect_blocks = self.p2p.evict_protect_blocks,
            evict_protect_uptime_percent = self.p2p.evict_protect_uptime_percent,
            rpc_host = q(&self.rpc.host),
            rpc_port = self.rpc.port,
            unsafe_methods = self.rpc.unsafe_methods,
            max_body = self.rpc.max_body_bytes,
            max_ws = self.rpc.max_ws_clients,
            ws_wait = self.rpc.ws_write_timeout_s,
            ws_read = self.rpc.ws_read_timeout_s,
            cors = list(&self.rpc.cors_allowed_origins),
            max_dial = self.rpc.max_dial_peers,
            allowed_hosts = list(&self.rpc.allowed_hosts),
            max_conns = self.rpc.max_connections,
            header_timeout = self.rpc.header_read_timeout_s,
            max_ws_ip = self.rpc.max_ws_clients_per_ip,
            max_conns_ip = self.rpc.max_connections_per_ip,
            request_timeout = self.rpc.request_timeout_s,
            max_batch = self.rpc.max_batch,
            max_response = self.rpc.max_response_bytes,
            tls = self.rpc.tls,
            tls_cert = q(&self.rpc.tls_cert),
            tls_key = q(&self.rpc.tls_key),
            mine = self.mining.enabled,
            threads = self.mining.threads,
            store_retry = self.mining.store_retry_s,
            store_retry_max = self.mining.store_retry_max_s,
            window = self.sync.window,
            per_request = self.sync.blocks_per_request,
            pending = self.sync.max_pending_per_peer,
            req_timeout = self.sync.request_timeout_s,
            min_status = self.sync.min_status_peers,
            status_wait = self.sync.status_wait_s,
            status_interval = self.sync.status_interval_s,
            resync = self.sync.resync_distance,
            apply_batch = self.sync.apply_batch,
            commit_batch = self.sync.commit_batch,
            commit_bytes = self.sync.commit_batch_bytes,
            mp_txs = self.mempool.max_txs,
            mp_bytes = self.mempool.max_bytes,
            mp_share = self.mempool.max_peer_share_percent,
            mp_local = self.mempool.reserved_local_percent,
            mp_gossip = self.mempool.gossip_interval_ms,
            filter = q(&self.log.filter),
            format = q(&self.log.format),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_file_reads_back() {
        let mut c = NodeConfig::default();
        c.p2p.peers = vec!["127.0.0.1:26656".into()];
        c.mining.enabled = true;
        let back: NodeConfig = toml::from_str(&c.render()).unwrap();
        assert_eq!(back, c);
        let default: NodeConfig = toml::from_str(&NodeConfig::default().render()).unwrap();
        assert_eq!(default, NodeConfig::default());
    }

    #[test]
    fn values_the_node_cannot_use_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[rpc]\nmax_body_bytes = 0\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("rpc.max_body_bytes"), "{e}");
        std::fs::write(&path, "[log]\nformat = \"xml\"\n").unwrap();
        assert!(NodeConfig::load(&path).unwrap_err().to_string().contains("log.format"));
        std::fs::write(&path, "[sync]\nblocks_per_request = 33\n").unwrap();
        let e = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("sync.blocks_per_request"), "{e}");
    }

    #[test]
    fn sync_settings_reach_the_reactors_configs() {
        let d = SyncConfig::default();
        assert_eq!(d.block_sync().pool.window, BlockSyncConfig::default().pool.window);
        assert_eq!(d.service().commit_batch, ChainServiceConfig::default().commit_batch);
        let text = "[sync]\nwindow = 64\nblocks_per_request = 8\nrequest_timeout_s = 4\n\
                    status_interval_s = 2\nresync_distance = 5\ncommit_batch = 7\n";
        let c: NodeConfig = toml::from_str(text).unwrap();
        let (b, k) = (c.sync.block_sync(), c.sync.service());
        assert_eq!((b.pool.window, b.pool.blocks_per_request), (64, 8));
        assert_eq!(b.pool.request_timeout, Duration::from_secs(4));
        assert_eq!((b.status_interval, b.resync_distance), (Duration::from_secs(2), 5));
        assert_eq!((k.commit_batch, k.commit_batch_bytes), (7, 8 << 20));
        assert_eq!(c.sync.consensus().status_interval, Duration::from_secs(2));
    }

    #[test]
    fn peer_manager_settings_reach_the_switch_config() {
        let d = NodeConfig::default().p2p.peer_manager();
        let lib = PeerManagerConfig::default();
        assert_eq!(d.ban_threshold, lib.ban_threshold);
        assert_eq!(d.score_half_life, lib.score_half_life);
        assert_eq!(d.evict_protect_ping, lib.evict_protect_ping);
        let text = "[p2p]\nmax_inbound = 7\nmax_inbound_per_netgroup = 3\nban_threshold = 60\n\
                    score_half_life_s = 90\nban_max_s = 120\nevict_protect_ping = 2\n\
                    ip_cooloff_s = 4\n";
        let c: NodeConfig = toml::from_str(text).unwrap();
        let m = c.p2p.peer_manager();
        assert_eq!((m.max_inbound, m.max_inbound_per_netgroup, m.ban_threshold), (7, 3, 60));
        assert_eq!(m.score_half_life, Duration::from_secs(90));
        assert_eq!((m.ban_max, m.ip_cooloff), (Duration::from_secs(120), Duration::from_secs(4)));
        assert_eq!(m.evict_protect_ping, 2);
        let mut bad = NodeConfig::default();
        bad.p2p.evict_protect_uptime_percent = 101;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("p2p.evict_protect_uptime_percent"), "{e}");
    }

    #[test]
    fn mempool_settings_reach_the_pool() {
        let c: NodeConfig =
            toml::from_str("[mempool]\nmax_txs = 50\nmax_peer_share_percent = 5\n").unwrap();
        let m = c.mempool.config();
        assert_eq!((m.max_txs, m.max_peer_share_percent), (50, 5));
        assert_eq!(m.reserved_local_percent, MempoolConfig::default().reserved_local_percent);
        let mut bad = NodeConfig::default();
        bad.mempool.max_peer_share_percent = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("mempool.max_peer_share_percent"));
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let e = toml::from_str::<NodeConfig>("[p2p]\nprot = 1\n").unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
    }
}
