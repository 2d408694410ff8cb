//! Switch and peer-manager settings. Every field is read by the code; the
//! defaults are documented on each field and collected in README's
//! configuration reference.

use std::net::SocketAddr;
use std::time::Duration;

use crate::key::NodeId;
use crate::mconn::MConnConfig;
use crate::netaddr::NetAddress;
use crate::secret::SecretConfig;

/// Switch settings. Every field is read by the code.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Where to listen; `None` for a dial-only switch.
    pub listen_addr: Option<SocketAddr>,
    /// Deadline for a transport dial. Default 3 s.
    pub dial_timeout: Duration,
    /// Deadline for the secret (Noise) handshake, from the first byte.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Deadline for the NodeInfo exchange after it. Default 10 s.
    pub node_info_timeout: Duration,
    /// Deadline for each call of the application filters. Default 5 s.
    pub filter_timeout: Duration,
    /// A peer that sends nothing but pings and pongs for this long is
    /// disconnected (Chia's rule); zero disables. Default 30 min.
    pub idle_timeout: Duration,
    /// How often the switch feeds the peer manager each peer's round trip
    /// and checks idle peers. Default 10 s.
    pub maintenance_interval: Duration,
    /// Peers to keep connected: redialed with backoff, forever.
    pub persistent_peers: Vec<NetAddress>,
    /// Peers never gossiped to others (PEX reads this).
    pub private_peer_ids: Vec<NodeId>,
    /// Grace period for reactors to finish the messages of a peer that
    /// disconnected; a `receive` still running after it is aborted so the
    /// peer can leave. Default 5 s.
    pub remove_grace: Duration,
    /// Pause after a failed accept (e.g. out of file descriptors) before
    /// accepting again. Default 100 ms.
    pub accept_retry_delay: Duration,
    /// Bytes all peers' send queues may hold together (the node-wide
    /// memory budget for peers). A send that would pass it waits or fails
    /// as if its queue were full, new inbound peers are refused while it is
    /// used up, and the heaviest peer that is neither persistent nor
    /// unconditional is dropped while more than 90 % is in use. Default a
    /// quarter of the machine's memory, at most 1 GiB (512 MiB where the
    /// memory size is unknown).
    pub max_peer_memory_bytes: usize,
    /// Admission, reputation, bans, eviction and redials.
    pub peers: PeerManagerConfig,
    /// Channel settings.
    pub mconn: MConnConfig,
    /// Handshake settings (its timeout is replaced by `handshake_timeout`).
    pub secret: SecretConfig,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            listen_addr: None,
            dial_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            node_info_timeout: Duration::from_secs(10),
            filter_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30 * 60),
            maintenance_interval: Duration::from_secs(10),
            persistent_peers: Vec::new(),
            private_peer_ids: Vec::new(),
            remove_grace: Duration::from_secs(5),
            accept_retry_delay: Duration::from_millis(100),
            max_peer_memory_bytes: default_peer_memory(),
            peers: PeerManagerConfig::default(),
            mconn: MConnConfig::default(),
            secret: SecretConfig::default(),
        }
    }
}

impl SwitchConfig {
    /// Checks the durations and the peer manager's settings.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        at_most_a_year(&[
            ("dial_timeout", self.dial_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("node_info_timeout", self.node_info_timeout),
            ("filter_timeout", self.filter_timeout),
            ("idle_timeout", self.idle_timeout),
            ("maintenance_interval", self.maintenance_interval),
            ("remove_grace", self.remove_grace),
            ("accept_retry_delay", self.accept_retry_delay),
        ])?;
        if self.maintenance_interval.is_zero() {
            return Err("maintenance_interval must be positive".into());
        }
        if self.max_peer_memory_bytes < (1 << 20) {
            return Err("max_peer_memory_bytes must be at least 1 MiB".into());
        }
        self.peers.validate()
    }
}

/// A quarter of `MemTotal` in `/proc/meminfo`, at most 1 GiB; 512 MiB
/// when it cannot be read.
pub fn default_peer_memory() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kib| kib * 1024)
    });
    match total {
        Some(t) => (t / 4).min(1 << 30),
        None => 512 << 20,
    }
}

/// `Err` naming the first of `fields` longer than a year.
fn at_most_a_year(fields: &[(&str, Duration)]) -> Result<(), String> {
    let year = Duration::from_secs(365 * 86_400);
    match fields.iter().find(|(_, d)| *d > year) {
        Some((name, _)) => Err(format!("{name} must be at most a year")),
        None => Ok(()),
    }
}

/// What the [`PeerManager`](super::PeerManager) decides with: limits by
/// direction, IP and netgroup, pending handshakes, reputation and bans,
/// inbound eviction and persistent redials.
#[derive(Debug, Clone)]
pub struct PeerManagerConfig {
    /// Most inbound peers (unconditional peers exempt). When full, a new
    /// inbound peer may evict one (see the `evict_*` fields). Default 40.
    pub max_inbound: usize,
    /// Most outbound peers (unconditional and persistent peers and feelers
    /// exempt). Default 8.
    pub max_outbound: usize,
    /// Most inbound peers from one IP (0 = no limit). Default 1.
    pub max_inbound_per_ip: usize,
    /// Most inbound peers from one routable netgroup (/16 IPv4, /32 IPv6;
    /// 0 = no limit). Local groups (private ranges) are exempt. Default 10.
    pub max_inbound_per_netgroup: usize,
    /// Most outbound peers into one routable netgroup (0 = no limit),
    /// persistent and unconditional peers exempt: outbound diversity as
    /// Bitcoin Core's one-per-netgroup rule, loosened. Default 2.
    pub max_outbound_per_netgroup: usize,
    /// Whether loopback addresses are exempt from the per-IP and
    /// per-netgroup limits, the per-IP pending-handshake limit and the
    /// attempt rate (devnets on one machine). Loopback is never cooled
    /// off or banned, whatever this says. Default true.
    pub per_ip_exempt_loopback: bool,
    /// Most inbound connections in the handshake at once; more are dropped
    /// unanswered. Default 64.
    pub max_pending_handshakes: usize,
    /// Most inbound connections in the handshake at once from one IP.
    /// Default 8.
    pub max_pending_handshakes_per_ip: usize,
    /// Inbound connection attempts one IP may make per second, sustained
    /// (a token bucket with `attempt_burst` tokens). Default 2.
    pub attempt_rate_per_ip: f64,
    /// Depth of the per-IP attempt bucket. Default 20.
    pub attempt_burst: u32,
    /// Failed handshakes (garbage, bad keys, wrong prologue) from one IP
    /// within `preauth_window` that start a cool-off. Default 10.
    pub preauth_failures: u32,
    /// Window in which pre-authentication failures are counted.
    /// Default 60 s.
    pub preauth_window: Duration,
    /// How long an IP that tripped `preauth_failures` is refused before
    /// the handshake: short, since an IP may be shared. Default 10 s.
    pub ip_cooloff: Duration,
    /// Score at which an identity is disconnected and banned. Default 100.
    pub ban_threshold: u32,
    /// Half-life of a score: it halves every this long without new
    /// offences. Default 30 min.
    pub score_half_life: Duration,
    /// Most identities whose reputation is remembered; the least recently
    /// touched are dropped first. Default 10,000.
    pub reputation_capacity: usize,
    /// First ban for a protocol error. Default 10 s (Chia).
    pub ban_protocol_error: Duration,
    /// First ban for breaking a rate limit. Default 300 s (Chia).
    pub ban_rate_limit: Duration,
    /// First ban for a consensus error (invalid or withheld chain data).
    /// Default 600 s (Chia).
    pub ban_consensus_error: Duration,
    /// Longest ban: a repeat offender's ban doubles each time up to this.
    /// Default 24 h.
    pub ban_max: Duration,
    /// A ban counts as a repeat when it comes within this long of the end
    /// of the previous one; otherwise the tier starts over. Default 24 h.
    pub ban_repeat_window: Duration,
    /// Longest ban of a persistent or unconditional peer, whose score is
    /// also capped at the threshold. Default 10 s.
    pub protected_ban_max: Duration,
    /// Inbound peers protected from eviction for having distinct keyed
    /// netgroups. Default 4 (Bitcoin Core).
    pub evict_protect_netgroups: usize,
    /// Inbound peers protected for the lowest minimum ping. Default 8.
    pub evict_protect_ping: usize,
    /// Inbound peers protected for the most recent novel transactions.
    /// Default 4.
    pub evict_protect_txs: usize,
    /// Inbound peers protected for the most recent novel blocks.
    /// Default 4.
    pub evict_protect_blocks: usize,
    /// Share of the remaining inbound peers protected for the longest
    /// uptime, percent. Default 50.
    pub evict_protect_uptime_percent: u8,
    /// Peers exempt from the inbound and outbound limits and from long
    /// bans; never evicted.
    pub unconditional_peer_ids: Vec<NodeId>,
    /// First redial delay of a persistent peer. Default 1 s.
    pub redial_initial: Duration,
    /// Largest redial delay of a persistent peer. Default 10 min.
    pub redial_max: Duration,
    /// Most extra outbound connections at once ([`ConnKind::Extra`],
    /// Bitcoin Core's extra block-relay-only peer); 0 refuses them.
    /// Default 1.
    ///
    /// [`ConnKind::Extra`]: super::ConnKind::Extra
    pub max_extra_outbound: usize,
    /// Age at which an extra outbound connection is judged by
    /// [`PeerManager::rotate_outbound`](super::PeerManager::rotate_outbound):
    /// kept if it relayed a novel block more recently than some outbound
    /// peer, closed otherwise (Bitcoin Core's `MINIMUM_CONNECT_TIME`).
    /// Default 30 s.
    pub extra_outbound_min_age: Duration,
}

impl Default for PeerManagerConfig {
    fn default() -> Self {
        PeerManagerConfig {
            max_inbound: 40,
            max_outbound: 8,
            max_inbound_per_ip: 1,
            max_inbound_per_netgroup: 10,
            max_outbound_per_netgroup: 2,
            per_ip_exempt_loopback: true,
            max_pending_handshakes: 64,
            max_pending_handshakes_per_ip: 8,
            attempt_rate_per_ip: 2.0,
            attempt_burst: 20,
            preauth_failures: 10,
            preauth_window: Duration::from_secs(60),
            ip_cooloff: Duration::from_secs(10),
            ban_threshold: 100,
            score_half_life: Duration::from_secs(30 * 60),
            reputation_capacity: 10_000,
            ban_protocol_error: Duration::from_secs(10),
            ban_rate_limit: Duration::from_secs(300),
            ban_consensus_error: Duration::from_secs(600),
            ban_max: Duration::from_secs(24 * 3600),
            ban_repeat_window: Duration::from_secs(24 * 3600),
            protected_ban_max: Duration::from_secs(10),
            evict_protect_netgroups: 4,
            evict_protect_ping: 8,
            evict_protect_txs: 4,
            evict_protect_blocks: 4,
            evict_protect_uptime_percent: 50,
            unconditional_peer_ids: Vec::new(),
            redial_initial: Duration::from_secs(1),
            redial_max: Duration::from_secs(600),
            max_extra_outbound: 1,
            extra_outbound_min_age: Duration::from_secs(30),
        }
    }
}

impl PeerManagerConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        at_most_a_year(&[
            ("preauth_window", self.preauth_window),
            ("ip_cooloff", self.ip_cooloff),
            ("score_half_life", self.score_half_life),
            ("ban_protocol_error", self.ban_protocol_error),
            ("ban_rate_limit", self.ban_rate_limit),
            ("ban_consensus_error", self.ban_consensus_error),
            ("ban_max", self.ban_max),
            ("ban_repeat_window", self.ban_repeat_window),
            ("protected_ban_max", self.protected_ban_max),
            ("redial_max", self.redial_max),
            ("extra_outbound_min_age", self.extra_outbound_min_age),
        ])?;
        if self.redial_initial.is_zero() || self.redial_max < self.redial_initial {
            return Err("redial_initial must be positive and at most redial_max".into());
        }
        if self.max_pending_handshakes == 0 || self.max_pending_handshakes_per_ip == 0 {
            return Err(
                "max_pending_handshakes and max_pending_handshakes_per_ip must be positive".into(),
            );
        }
        if !(self.attempt_rate_per_ip > 0.0 && self.attempt_rate_per_ip.is_finite())
            || self.attempt_burst == 0
        {
            return Err("attempt_rate_per_ip and attempt_burst must be positive".into());
        }
        if self.ban_threshold == 0 {
            return Err("ban_threshold must be positive".into());
        }
        if self.score_half_life.is_zero() {
            return Err("score_half_life must be positive".into());
        }
        if self.reputation_capacity == 0 {
            return Err("reputation_capacity must be positive".into());
        }
        if self.evict_protect_uptime_percent > 100 {
            return Err("evict_protect_uptime_percent must be at most 100".into());
        }
        Ok(())
    }
}
