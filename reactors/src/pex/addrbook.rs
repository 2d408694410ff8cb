//! [`AddrBook`]: the address book, after Bitcoin Core's `addrman`
//! (src/addrman.cpp), as a plain struct with injected time (Unix seconds)
//! and randomness, tested without sockets.
//!
//! - Two tables: **new** (addresses heard of; 1024 buckets × 64 slots) and
//!   **tried** (addresses we connected to outbound; 256 × 64).
//! - Bucket choice is keyed by a secret 256-bit key made per book and saved
//!   with it, so an attacker cannot aim at buckets:
//!   tried bucket = H(key, group(addr), H(key, addr) mod 8) — an address
//!   group reaches at most 8 tried buckets; new bucket =
//!   H(key, group(source), H(key, group(addr), group(source)) mod 64) — one
//!   source group reaches at most 64 new buckets; slot = H(key, bucket,
//!   addr) mod 64.
//! - Groups: /16 for IPv4, /32 for IPv6, one group for loopback and one per
//!   local/private range.
//! - An address may sit in up to 8 new buckets; the n-th extra copy is added
//!   with probability 1/2^n.
//! - [`KnownAddress::is_terrible`] and [`KnownAddress::chance`] drive
//!   eviction and selection; selection is 50/50 new/tried (adjustable),
//!   with the ×1.2 retry factor.
//! - Tried collisions are resolved by test-before-evict: the newcomer is
//!   queued (at most 10) and the incumbent gets a feeler connection; it
//!   stays if it answers, else the newcomer replaces it; a collision
//!   unresolved for 40 min goes to the newcomer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use plexus_p2p::switch::ReputationRecord;
use plexus_p2p::{NetAddress, NodeId};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Address book settings (defaults are Bitcoin Core's).
#[derive(Debug, Clone, PartialEq)]
pub struct AddrBookConfig {
    /// New-table buckets. Default 1024.
    pub new_buckets: usize,
    /// Tried-table buckets. Default 256.
    pub tried_buckets: usize,
    /// Slots per bucket. Default 64.
    pub bucket_size: usize,
    /// New buckets one address may occupy. Default 8.
    pub max_new_copies: u32,
    /// Refuse loopback and private addresses (false for devnets). Default true.
    pub strict: bool,
    /// Queued tried collisions. Default 10.
    pub max_collisions: usize,
    /// Seconds after which an unresolved collision goes to the newcomer.
    /// Default 2400 (40 min).
    pub collision_timeout: u64,
    /// Share of the book in a PEX reply, percent. Default 23.
    pub selection_percent: usize,
    /// Fewest addresses in a PEX reply (when the book has them). Default 32.
    pub selection_min: usize,
    /// Most addresses in a PEX reply. Default 250.
    pub selection_max: usize,
}

impl Default for AddrBookConfig {
    fn default() -> Self {
        AddrBookConfig {
            new_buckets: 1024,
            tried_buckets: 256,
            bucket_size: 64,
            max_new_copies: 8,
            strict: true,
            max_collisions: 10,
            collision_timeout: 40 * 60,
            selection_percent: 23,
            selection_min: 32,
            selection_max: 250,
        }
    }
}

/// What the book knows of one address. Times are Unix seconds (0 = never).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownAddress {
    /// The peer's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Who told us (the IP of the peer that gossiped it, or ours).
    pub source: IpAddr,
    /// When first heard of.
    pub first_seen: u64,
    /// When last heard of (as advertised, capped at now).
    pub last_seen: u64,
    /// When we last tried to connect.
    pub last_attempt: u64,
    /// When we last connected successfully.
    pub last_success: u64,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// Node type tag (Chia's node types), as the peer advertised.
    pub node_type: u8,
    /// Banned until (Unix seconds).
    pub banned_until: u64,
    /// In how many new buckets it is (0 when in tried).
    pub new_refs: u32,
    /// In the tried table.
    pub in_tried: bool,
}

const DAY: u64 = 86_400;

impl KnownAddress {
    /// Bitcoin Core's `IsTerrible`: not worth keeping or selecting. Never
    /// for an address tried in the last minute; otherwise true if it was
    /// last seen more than 10 min in the future, never seen or not seen for
    /// 30 days, failed 3 attempts without ever a success, or failed 10
    /// with no success in 7 days.
    pub fn is_terrible(&self, now: u64) -> bool {
        if self.last_attempt != 0 && now.saturating_sub(self.last_attempt) < 60 {
            return false; // never remove things tried in the last minute
        }
        if self.last_seen > now + 600 {
            return true;
        }
        if self.last_seen == 0 || now.saturating_sub(self.last_seen) > 30 * DAY {
            return true;
        }
        if self.last_success == 0 && self.attempts >= 3 {
            return true;
        }
        now.saturating_sub(self.last_success) > 7 * DAY && self.attempts >= 10
    }

    /// Bitcoin Core's `GetChance`: relative odds of selection, ×0.01 when
    /// tried in the last 10 min, ×0.66 per failed attempt (up to 8).
    pub fn chance(&self, now: u64) -> f64 {
        let mut c = 1.0;
        if now.saturating_sub(self.last_attempt) < 600 {
            c *= 0.01;
        }
        c * 0.66f64.powi(self.attempts.min(8) as i32)
    }

    /// Whether banned at `now`.
    pub fn is_banned(&self, now: u64) -> bool {
        self.banned_until > now
    }

    /// As a `NetAddress`.
    pub fn net_address(&self) -> NetAddress {
        NetAddress::new(self.id, self.addr)
    }
}

/// Why an address was not added, or the book could not be saved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrBookError {
    /// The host is a DNS name; the book stores resolved IPs.
    #[error("address {0} is not an IP address")]
    NotIp(String),
    /// Loopback, private or unspecified while `strict`.
    #[error("address {0} is not routable (addr_book_strict)")]
    NotRoutable(SocketAddr),
    /// Port 0.
    #[error("address {0} has port 0")]
    NoPort(SocketAddr),
    /// The id is banned.
    #[error("{0} is banned")]
    Banned(NodeId),
    /// Saving failed.
    #[error("saving the address book: {0}")]
    Io(String),
}

/// The result of [`AddrBook::mark_good`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Good {
    /// Moved to (or already in) tried.
    Tried,
    /// The tried slot holds another address: the newcomer waits, and the
    /// incumbent should get a feeler connection
    /// ([`AddrBook::collision_to_test`]).
    Collision {
        /// The address already in the slot.
        incumbent: NodeId,
    },
    /// Unknown id.
    Unknown,
}

#[derive(Serialize, Deserialize)]
struct SavedFile {
    version: u32,
    key: String,
    entries: Vec<KnownAddress>,
    /// Table shape the positions below refer to: (new buckets, tried
    /// buckets, bucket size).
    shape: (usize, usize, usize),
    /// Occupied slots: (bucket, slot, id) in the new and tried tables.
    new: Vec<(usize, usize, NodeId)>,
    tried: Vec<(usize, usize, NodeId)>,
    /// The switch's reputations by NodeId, saved with the book (absent in
    /// files written before they were).
    #[serde(default)]
    reputation: Vec<ReputationRecord>,
}

/// The address book. See the module docs.
pub struct AddrBook {
    cfg: AddrBookConfig,
    key: [u8; 32],
    /// By id: selection and PEX answers draw from the same order in
    /// every run, so a seeded RNG replays them (simulation).
    entries: BTreeMap<NodeId, KnownAddress>,
    new: Vec<Vec<Option<NodeId>>>,
    tried: Vec<Vec<Option<NodeId>>>,
    /// Newcomers waiting for a tried slot, with when they were queued.
    collisions: VecDeque<(NodeId, u64)>,
    /// Reputations kept in the same file (the switch's, see
    /// [`AddrBook::set_reputation`]).
    reputation: Vec<ReputationRecord>,
    rng: Box<dyn RngCore + Send>,
}

impl std::fmt::Debug for AddrBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddrBook")
            .field("new", &self.new_count())
            .field("tried", &self.tried_count())
            .finish()
    }
}

/// The group of an IP (one piece with the peer manager's netgroups): see
/// [`plexus_p2p::netaddr::netgroup`].
pub use plexus_p2p::netaddr::netgroup as group;

fn routable(ip: IpAddr) -> bool {
    group(ip)[0] != 0xff && !ip.is_unspecified() && !ip.is_multicast()
}

fn addr_bytes(a: &SocketAddr) -> Vec<u8> {
    let mut v = match a.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    v.extend_from_slice(&a.port().to_be_bytes());
    v
}

impl AddrBook {
    /// An empty book with a fresh random key.
    pub fn new(cfg: AddrBookConfig, mut rng: Box<dyn RngCore + Send>) -> AddrBook {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let new = vec![vec![None; cfg.bucket_size]; cfg.new_buckets];
        let tried = vec![vec![None; cfg.bucket_size]; cfg.tried_buckets];
        AddrBook {
            cfg,
            key,
            entries: BTreeMap::new(),
            new,
            tried,
            collisions: VecDeque::new(),
            reputation: Vec::new(),
            rng,
        }
    }

    /// The reputations saved with the book (loaded from its file; the node
    /// hands them to [`plexus_p2p::switch::SwitchBuilder::reputation`]).
    pub fn reputation(&self) -> &[ReputationRecord] {
        &self.reputation
    }

    /// Replaces the reputations saved with the book (the PEX reactor puts
    /// the switch's [`plexus_p2p::Switch::reputation_snapshot`] here before
    /// each save).
    pub fn set_reputation(&mut self, records: Vec<ReputationRecord>) {
        self.reputation = records;
    }

    fn hash(&self, parts: &[&[u8]]) -> u64 {
        let mut h = Sha256::new();
        h.update(self.key);
        for p in parts {
            h.update((p.len() as u32).to_be_bytes());
            h.update(p);
        }
        u64::from_be_bytes(h.finalize()[..8].try_into().expect("32-byte digest"))
    }

    /// The tried bucket of `addr`.
    pub fn tried_bucket(&self, addr: &SocketAddr) -> usize {
        let h1 = self.hash(&[b"t1", &addr_bytes(addr)]) % 8;
        (self.hash(&[b"t2", &group(addr.ip()), &h1.to_be_bytes()]) % self.cfg.tried_buckets as u64)
            as usize
    }

    /// The new bucket of `addr` heard from `source`.
    pub fn new_bucket(&self, addr: &SocketAddr, source: IpAddr) -> usize {
        let (ga, gs) = (group(addr.ip()), group(source));
        let h1 = self.hash(&[b"n1", &ga, &gs]) % 64;
        (self.hash(&[b"n2", &gs, &h1.to_be_bytes()]) % self.cfg.new_buckets as u64) as usize
    }

    fn slot(&self, table: &[u8], bucket: usize, addr: &SocketAddr) -> usize {
        (self.hash(&[table, &(bucket as u64).to_be_bytes(), &addr_bytes(addr)])
            % self.cfg.bucket_size as u64) as usize
    }

    /// Addresses in the new table.
    pub fn new_count(&self) -> usize {
        self.entries.values().filter(|e| !e.in_tried).count()
    }

    /// Addresses in the tried table.
    pub fn tried_count(&self) -> usize {
        self.entries.values().filter(|e| e.in_tried).count()
    }

    /// Checks addrman's invariants (Bitcoin Core's `AddrMan::CheckAddrman`
    /// in spirit), for tests and fuzzing (`fuzz/`): the tables hold no more
    /// than their buckets, each entry is in exactly one table, every slot
    /// names a known entry (a tried slot an entry in tried), `new_refs`
    /// counts the entry's new-table slots and stays within
    /// `max_new_copies`, and each tried entry holds exactly one slot.
    ///
    /// # Errors
    /// The first invariant broken, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let c = &self.cfg;
        if self.new_count() > c.new_buckets * c.bucket_size
            || self.tried_count() > c.tried_buckets * c.bucket_size
        {
            return Err("a table holds more than its buckets".into());
        }
        let mut refs: HashMap<NodeId, u32> = HashMap::new();
        for id in self.new.iter().flatten().flatten() {
            if !self.entries.contains_key(id) {
                return Err(format!("new-table slot names unknown {id}"));
            }
            *refs.entry(*id).or_default() += 1;
        }
        let mut tried: HashMap<NodeId, u32> = HashMap::new();
        for id in self.tried.iter().flatten().flatten() {
            if !self.entries.get(id).is_some_and(|e| e.in_tried) {
                return Err(format!("tried-table slot names {id}, not in tried"));
            }
            *tried.entry(*id).or_default() += 1;
        }
        for e in self.entries.values() {
            if e.in_tried == (e.new_refs > 0) {
                return Err(format!("{} is in both tables or in neither", e.id));
            }
            if refs.get(&e.id).copied().unwrap_or(0) != e.new_refs || e.new_refs > c.max_new_copies
            {
                return Err(format!("{} has new_refs {} for its slots", e.id, e.new_refs));
            }
            if e.in_tried && tried.get(&e.id) != Some(&1) {
                return Err(format!("{} is in tried without exactly one slot", e.id));
            }
        }
        Ok(())
    }

    /// All addresses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for an id.
    pub fn get(&self, id: &NodeId) -> Option<&KnownAddress> {
        self.entries.get(id)
    }

    /// Every entry, in id order (banned ones included).
    pub fn entries(&self) -> impl Iterator<Item = &KnownAddress> {
        self.entries.values()
    }

    /// How many new-table slots hold an entry, per bucket (for tests and
    /// figures).
    pub fn new_buckets_used(&self) -> usize {
        self.new.iter().filter(|b| b.iter().any(Option::is_some)).count()
    }

    /// Adds (or refreshes) `addr`, heard from `source` at `now`, advertised
    /// as last seen at `seen` (capped at `now`). Returns whether a new
    /// new-table copy was placed.
    ///
    /// The caller must not add the socket address of an inbound connection
    /// (its port is ephemeral); only listen addresses from NodeInfo or PEX.
    ///
    /// # Errors
    /// [`AddrBookError`]: not an IP, not routable while strict, port 0,
    /// banned.
    pub fn add(
        &mut self,
        addr: &NetAddress,
        source: IpAddr,
        seen: u64,
        node_type: u8,
        now: u64,
    ) -> Result<bool, AddrBookError> {
        let sock = match &addr.host {
            plexus_p2p::Host::Ip(ip) => self.admissible(SocketAddr::new(*ip, addr.port))?,
            plexus_p2p::Host::Dns(_) => return Err(AddrBookError::NotIp(addr.to_string())),
        };
        let source = source.to_canonical();
        let seen = seen.min(now);
        if let Some(e) = self.entries.get_mut(&addr.id) {
            if e.is_banned(now) {
                return Err(AddrBookError::Banned(addr.id));
            }
            e.last_seen = e.last_seen.max(seen);
            // Gossip never moves a known id to another address (an attacker
            // could point honest ids at dead IPs); only `set_addr`, fed by
            // authenticated connections, does.
            if e.in_tried || e.new_refs >= self.cfg.max_new_copies {
                return Ok(false);
            }
            // Each extra copy is half as likely as the last (2^n rule).
            let n = e.new_refs;
            if self.rng.random_range(0..(1u64 << n.min(62))) != 0 {
                return Ok(false);
            }
        } else {
            self.entries.insert(
                addr.id,
                KnownAddress {
                    id: addr.id,
                    addr: sock,
                    source,
                    first_seen: now,
                    last_seen: seen,
                    last_attempt: 0,
                    last_success: 0,
                    attempts: 0,
                    node_type,
                    banned_until: 0,
                    new_refs: 0,
                    in_tried: false,
                },
            );
        }
        let placed = self.place_new(addr.id, source, now);
        if self.entries.get(&addr.id).is_some_and(|e| e.new_refs == 0 && !e.in_tried) {
            self.entries.remove(&addr.id);
        }
        Ok(placed)
    }

    /// Puts one new-table copy of `id` in the bucket for `source`, evicting
    /// a terrible or multiply-referenced occupant; keeps a good occupant.
    fn place_new(&mut self, id: NodeId, source: IpAddr, now: u64) -> bool {
        let addr = self.entries[&id].addr;
        let b = self.new_bucket(&addr, source);
        let s = self.slot(b"new", b, &addr);
        match self.new[b][s] {
            Some(other) if other == id => false,
            Some(other) => {
                let o = &self.entries[&other];
                if !(o.is_terrible(now) || o.new_refs > 1) {
                    return false;
                }
                self.unref_new(other);
                self.new[b][s] = Some(id);
                self.entries.get_mut(&id).expect("present").new_refs += 1;
                true
            }
            None => {
                self.new[b][s] = Some(id);
                self.entries.get_mut(&id).expect("present").new_refs += 1;
                true
            }
        }
    }

    /// Drops one new-table reference to `id` (the slot was overwritten);
    /// forgets the entry when none is left.
    fn unref_new(&mut self, id: NodeId) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.new_refs = e.new_refs.saturating_sub(1);
            if e.new_refs == 0 && !e.in_tried {
                self.entries.remove(&id);
            }
        }
    }

    fn clear_new_refs(&mut self, id: NodeId) {
        for bucket in &mut self.new {
            for slot in bucket.iter_mut() {
                if *slot == Some(id) {
                    *slot = None;
                }
            }
        }
        if let Some(e) = self.entries.get_mut(&id) {
            e.new_refs = 0;
        }
    }

    /// `id` was authenticated at `addr` (its NodeInfo listen address on a
    /// live connection): record the address if it moved. The address must
    /// pass the rules of [`AddrBook::add`] (a dial-only peer's port 0, or a
    /// private address while strict, never replaces a dialable one).
    ///
    /// # Errors
    /// [`AddrBookError::NoPort`], [`AddrBookError::NotRoutable`]; the entry
    /// is left as it was.
    pub fn set_addr(&mut self, id: &NodeId, addr: SocketAddr) -> Result<(), AddrBookError> {
        let addr = self.admissible(addr)?;
        if let Some(e) = self.entries.get_mut(id) {
            if e.addr != addr && !e.in_tried {
                e.addr = addr;
            }
        }
        Ok(())
    }

    /// `addr` with its IP canonical (an IPv4-mapped IPv6 address, as a
    /// dual-stack listener sees IPv4 peers, is the IPv4 address), if the
    /// book takes it: a port, and a routable IP while `strict`.
    fn admissible(&self, addr: SocketAddr) -> Result<SocketAddr, AddrBookError> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if addr.port() == 0 {
            return Err(AddrBookError::NoPort(addr));
        }
        if self.cfg.strict && !routable(addr.ip()) {
            return Err(AddrBookError::NotRoutable(addr));
        }
        Ok(addr)
    }

    /// A connection attempt to `id` is failing or starting.
    pub fn mark_attempt(&mut self, id: &NodeId, now: u64) {
        if let Some(e) = self.entries.get_mut(id) {
            e.last_attempt = now;
            e.attempts = e.attempts.saturating_add(1);
        }
    }

    /// An **outbound** connection to `id` succeeded: move it to tried, or
    /// queue it behind the incumbent of its tried slot (test-before-evict).
    /// Inbound successes must not be reported (Bitcoin Core's rule).
    pub fn mark_good(&mut self, id: &NodeId, now: u64) -> Good {
        let Some(e) = self.entries.get_mut(id) else { return Good::Unknown };
        e.last_success = now;
        e.last_seen = now;
        e.last_attempt = now;
        e.attempts = 0;
        if e.in_tried {
            return Good::Tried;
        }
        let addr = e.addr;
        let b = self.tried_bucket(&addr);
        let s = self.slot(b"tried", b, &addr);
        match self.tried[b][s] {
            Some(incumbent) if incumbent != *id => {
                if !self.collisions.iter().any(|(c, _)| c == id)
                    && self.collisions.len() < self.cfg.max_collisions
                {
                    self.collisions.push_back((*id, now));
                }
                Good::Collision { incumbent }
            }
            _ => {
                self.move_to_tried(*id, b, s, now);
                Good::Tried
            }
        }
    }

    fn move_to_tried(&mut self, id: NodeId, b: usize, s: usize, now: u64) {
        self.clear_new_refs(id);
        if let Some(old) = self.tried[b][s].replace(id) {
            if old != id {
                // Evicted from tried back into new, from its own source.
                if let Some(o) = self.entries.get_mut(&old) {
                    o.in_tried = false;
                    let source = o.source;
                    if !self.place_new(old, source, now) {
                        self.entries.remove(&old);
                    }
                }
            }
        }
        self.entries.get_mut(&id).expect("present").in_tried = true;
    }

    /// The incumbent of the oldest queued collision: make a short feeler
    /// connection to it, then report with `mark_good` (it answered) or
    /// `mark_attempt` (it did not), and call [`AddrBook::resolve_collisions`].
    pub fn collision_to_test(&self) -> Option<NetAddress> {
        let (newcomer, _) = self.collisions.front()?;
        let addr = self.entries.get(newcomer)?.addr;
        let b = self.tried_bucket(&addr);
        let s = self.slot(b"tried", b, &addr);
        let inc = self.tried[b][s]?;
        self.entries.get(&inc).map(KnownAddress::net_address)
    }

    /// Settles queued collisions: the incumbent stays if it connected since
    /// the newcomer was queued; it is replaced if a feeler attempt since then
    /// failed, or if the collision is older than `collision_timeout`.
    pub fn resolve_collisions(&mut self, now: u64) {
        let queued: Vec<(NodeId, u64)> = self.collisions.drain(..).collect();
        for (newcomer, at) in queued {
            let Some(addr) = self.entries.get(&newcomer).map(|e| e.addr) else { continue };
            let b = self.tried_bucket(&addr);
            let s = self.slot(b"tried", b, &addr);
            let Some(inc) = self.tried[b][s] else {
                self.move_to_tried(newcomer, b, s, now);
                continue;
            };
            let i = &self.entries[&inc];
            // Strictly after the newcomer was queued.
            let answered = i.last_success > at;
            let failed = i.last_attempt > at && i.last_success < i.last_attempt;
            if answered {
                continue; // the incumbent stays; the newcomer stays in new
            }
            if failed || now.saturating_sub(at) >= self.cfg.collision_timeout {
                self.move_to_tried(newcomer, b, s, now);
            } else {
                self.collisions.push_back((newcomer, at));
            }
        }
    }

    /// Bans `id` until `until` (Unix seconds).
    pub fn ban(&mut self, id: &NodeId, until: u64) {
        if let Some(e) = self.entries.get_mut(id) {
            e.banned_until = e.banned_until.max(until);
        }
    }

    fn usable(&self, e: &KnownAddress, now: u64) -> bool {
        !e.is_banned(now) && !e.is_terrible(now)
    }

    /// Picks an address to dial: tried with probability `tried_bias`
    /// (0.5 is Bitcoin Core's 50/50), then a random entry accepted with
    /// probability `chance × factor`, the factor growing ×1.2 per miss.
    /// The entry is drawn as Bitcoin Core's Select does (a random bucket,
    /// the first entry from a random position in it) while the table holds
    /// at least one entry per bucket; a sparser table draws uniformly from
    /// its entries, since redrawing empty buckets would cost about
    /// `buckets × bucket_size` probes per pick in a near-empty book.
    pub fn select(&mut self, tried_bias: f64, now: u64) -> Option<NetAddress> {
        let (has_new, has_tried) = (self.new_count() > 0, self.tried_count() > 0);
        if !has_new && !has_tried {
            return None;
        }
        let use_tried = has_tried && (!has_new || self.rng.random::<f64>() < tried_bias);
        let candidate = |e: &&KnownAddress| e.in_tried == use_tried && !e.is_banned(now);
        let count = self.entries.values().filter(candidate).count();
        // Every candidate banned: nothing to return (and nothing to spin on).
        if count == 0 {
            return None;
        }
        let buckets = if use_tried { self.tried.len() } else { self.new.len() };
        let sparse = count < buckets;
        let candidates: Vec<NodeId> = if sparse {
            self.entries.values().filter(candidate).map(|e| e.id).collect()
        } else {
            Vec::new()
        };
        let mut factor = 1.0;
        // The factor makes acceptance certain after ~45 refusals, so this
        // ends; empty buckets are redrawn.
        for _ in 0..1_000_000 {
            let id = if sparse {
                candidates[self.rng.random_range(0..candidates.len())]
            } else {
                let table = if use_tried { &self.tried } else { &self.new };
                let b = self.rng.random_range(0..table.len());
                let start = self.rng.random_range(0..self.cfg.bucket_size);
                let Some(id) = (0..self.cfg.bucket_size)
                    .find_map(|i| table[b][(start + i) % self.cfg.bucket_size])
                else {
                    continue;
                };
                id
            };
            let e = &self.entries[&id];
            if e.is_banned(now) {
                continue;
            }
            if self.rng.random::<f64>() < e.chance(now) * factor {
                return Some(e.net_address());
            }
            factor *= 1.2;
        }
        None
    }

    /// Addresses for a PEX reply: `selection_percent` of the book, at least
    /// `selection_min` (if there are that many) and at most
    /// `selection_max`, in random order; never banned, terrible or
    /// `private` ones.
    pub fn get_selection(&mut self, private: &[NodeId], now: u64) -> Vec<NetAddress> {
        let mut all: Vec<NetAddress> = self
            .entries
            .values()
            .filter(|e| self.usable(e, now) && !private.contains(&e.id))
            .map(KnownAddress::net_address)
            .collect();
        let want = (self.entries.len() * self.cfg.selection_percent / 100)
            .max(self.cfg.selection_min)
            .min(self.cfg.selection_max)
            .min(all.len());
        // Partial Fisher-Yates.
        for i in 0..want {
            let j = self.rng.random_range(i..all.len());
            all.swap(i, j);
        }
        all.truncate(want);
        all
    }

    /// The book as JSON (key and every entry).
    pub fn to_json(&self) -> String {
        let mut entries: Vec<KnownAddress> = self.entries.values().cloned().collect();
        entries.sort_by_key(|e| e.id);
        let slots = |t: &[Vec<Option<NodeId>>]| -> Vec<(usize, usize, NodeId)> {
            let mut v = Vec::new();
            for (b, bucket) in t.iter().enumerate() {
                for (s, slot) in bucket.iter().enumerate() {
                    if let Some(id) = slot {
                        v.push((b, s, *id));
                    }
                }
            }
            v
        };
        let shape = (self.cfg.new_buckets, self.cfg.tried_buckets, self.cfg.bucket_size);
        serde_json::to_string(&SavedFile {
            version: 1,
            key: hex::encode(self.key),
            entries,
            shape,
            new: slots(&self.new),
            tried: slots(&self.tried),
            reputation: self.reputation.clone(),
        })
        .expect("plain data serialises")
    }

    /// A book from JSON written by [`AddrBook::to_json`]: the same key, so
    /// every entry lands in the same buckets.
    ///
    /// # Errors
    /// A message if the JSON is not a book.
    pub fn from_json(
        cfg: AddrBookConfig,
        json: &str,
        rng: Box<dyn RngCore + Send>,
    ) -> Result<AddrBook, String> {
        Ok(AddrBook::from_saved(cfg, parse(json)?, rng))
    }

    fn from_saved(cfg: AddrBookConfig, mut saved: Saved, rng: Box<dyn RngCore + Send>) -> AddrBook {
        let shape = (cfg.new_buckets, cfg.tried_buckets, cfg.bucket_size);
        // Judge terribleness as of the newest sighting in the file (about
        // when it was saved), and keep one record per id.
        let now = saved.entries.iter().map(|e| e.last_seen).max().unwrap_or(0);
        let mut seen = std::collections::HashSet::new();
        saved.entries.retain(|e| seen.insert(e.id));
        let mut book = AddrBook::new(cfg, rng);
        book.key = saved.key;
        book.reputation = std::mem::take(&mut saved.reputation);
        if saved.shape == shape {
            // Same tables: restore every slot exactly.
            for mut e in saved.entries {
                e.new_refs = 0;
                e.in_tried = false;
                book.entries.insert(e.id, e);
            }
            for (b, s, id) in saved.new {
                if b < shape.0 && s < shape.2 && book.new[b][s].is_none() {
                    if let Some(e) = book.entries.get_mut(&id) {
                        if !e.in_tried && e.new_refs < book.cfg.max_new_copies {
                            e.new_refs += 1;
                            book.new[b][s] = Some(id);
                        }
                    }
                }
            }
            for (b, s, id) in saved.tried {
                let free = b < shape.1 && s < shape.2 && book.tried[b][s].is_none();
                if free && book.entries.get(&id).is_some_and(|e| e.new_refs == 0 && !e.in_tried) {
                    book.tried[b][s] = Some(id);
                    book.entries.get_mut(&id).expect("present").in_tried = true;
                }
            }
            book.entries.retain(|_, e| e.in_tried || e.new_refs > 0);
            return book;
        }
        // Another table shape: place every entry again.
        let mut tried = Vec::new();
        for mut e in saved.entries {
            let (id, source, in_tried) = (e.id, e.source, e.in_tried);
            e.in_tried = false;
            e.new_refs = 0;
            book.entries.insert(id, e);
            if in_tried {
                tried.push(id);
            } else if !book.place_new(id, source, now) {
                book.entries.remove(&id);
            }
        }
        for id in tried {
            let addr = book.entries[&id].addr;
            let b = book.tried_bucket(&addr);
            let s = book.slot(b"tried", b, &addr);
            if book.tried[b][s].is_none() {
                book.move_to_tried(id, b, s, now);
            } else if !book.place_new(id, book.entries[&id].source, now) {
                book.entries.remove(&id);
            }
        }
        book
    }

    /// Writes the book to `path` atomically (temporary file, fsync, rename).
    ///
    /// # Errors
    /// [`AddrBookError::Io`].
    pub fn save(&self, path: &Path) -> Result<(), AddrBookError> {
        AddrBook::write_json(path, &self.to_json())
    }

    /// Writes `json` (from [`AddrBook::to_json`]) to `path` atomically:
    /// temporary file, fsync, rename.
    ///
    /// # Errors
    /// [`AddrBookError::Io`].
    pub fn write_json(path: &Path, json: &str) -> Result<(), AddrBookError> {
        let io = |e: std::io::Error| AddrBookError::Io(format!("{}: {e}", path.display()));
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut f, json.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Loads the book at `path`. A missing file gives an empty book; a
    /// corrupt or truncated one is moved aside (`<path>.corrupt`) with a
    /// warning and an empty book is returned: never a crash.
    pub fn load(cfg: AddrBookConfig, path: &Path, rng: Box<dyn RngCore + Send>) -> AddrBook {
        let bytes = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AddrBook::new(cfg, rng),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the address book; starting empty");
                return AddrBook::new(cfg, rng);
            }
        };
        let text = String::from_utf8(bytes).map_err(|e| e.to_string());
        match text.and_then(|t| parse(&t)) {
            Ok(saved) => AddrBook::from_saved(cfg, saved, rng),
            Err(why) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                let _ = std::fs::rename(path, &aside);
                tracing::warn!(path = %path.display(), %why, "address book is corrupt; moved aside, starting empty");
                AddrBook::new(cfg, rng)
            }
        }
    }
}

/// The saved form, checked.
struct Saved {
    key: [u8; 32],
    entries: Vec<KnownAddress>,
    shape: (usize, usize, usize),
    new: Vec<(usize, usize, NodeId)>,
    tried: Vec<(usize, usize, NodeId)>,
    reputation: Vec<ReputationRecord>,
}

fn parse(json: &str) -> Result<Saved, String> {
    let file: SavedFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if file.version != 1 {
        return Err(format!("unknown address book version {}", file.version));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(&file.key, &mut key).map_err(|e| format!("key: {e}"))?;
    Ok(Saved {
        key,
        entries: file.entries,
        shape: file.shape,
        new: file.new,
        tried: file.tried,
        reputation: file.reputation,
    })
}

#[cfg(test)]
mod tests;
