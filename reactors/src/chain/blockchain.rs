//! The validating chain index: every known header with its cumulative
//! work, the main chain as `height_to_hash`, the three heaviest tips
//! (Chia's peak candidates), a bounded orphan pool, and reorganisations to
//! the heaviest valid chain.
//!
//! Sans-IO apart from its [`Store`]: the caller passes the time (`now_ms`)
//! to [`Blockchain::process_block`], so tests drive it with any clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use plexus_p2p::NodeId;
use ruint::aliases::U256;
use ruint::Uint;

use super::block::{
    bits_from_target, merkle_root, target_from_bits, work, Block, BlockHash, Header,
};
use super::params::NetworkParams;
use super::store::{MainUpdate, Store, StoreError};
use super::BlockError;

/// Bounds of the in-memory parts of a [`Blockchain`].
#[derive(Clone, Debug)]
pub struct BlockchainConfig {
    /// Most orphan blocks (parent unknown) kept; the oldest go first.
    /// Default 256.
    pub max_orphans: usize,
    /// Most bytes of orphan blocks kept. Default 32 MiB.
    pub max_orphan_bytes: usize,
    /// How many invalid block hashes are remembered, to refuse them (and
    /// their descendants) without validating again. Default 10,000.
    pub max_invalid: usize,
    /// How many blocks from the future (`TimeTooNew`) are remembered by
    /// hash with their time, so the same one is refused without being
    /// checked again until its time comes (then it is checked as new).
    /// Default 1,000.
    pub max_too_new: usize,
}

impl Default for BlockchainConfig {
    fn default() -> Self {
        BlockchainConfig {
            max_orphans: 256,
            max_orphan_bytes: 32 << 20,
            max_invalid: 10_000,
            max_too_new: 1_000,
        }
    }
}

/// One of the heaviest chain tips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TipInfo {
    /// Tip block hash.
    pub hash: BlockHash,
    /// Its height.
    pub height: u64,
    /// Cumulative work of the chain ending there.
    pub weight: U256,
}

/// How the main chain moved: blocks taken off (old tip first) and blocks
/// put on (ascending). A plain extension has `disconnected` empty.
#[derive(Clone, Debug)]
pub struct TipChange {
    /// The tip before.
    pub old_tip: BlockHash,
    /// The tip after.
    pub new_tip: BlockHash,
    /// The highest block both chains share.
    pub fork_height: u64,
    /// Blocks no longer on the main chain, old tip first.
    pub disconnected: Vec<Block>,
    /// Blocks now on the main chain, lowest first.
    pub connected: Vec<Block>,
}

/// Where a processed block went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    /// Valid and on the main chain (extended it or won a reorg).
    MainChain,
    /// Valid, stored, on a lighter fork.
    SideChain,
    /// Parent unknown: kept in the orphan pool until it arrives.
    Orphan,
    /// Seen before (stored or in the orphan pool); nothing done.
    AlreadyKnown,
}

/// What [`Blockchain::process_block`] did.
#[derive(Debug)]
pub struct Processed {
    /// The block's hash.
    pub hash: BlockHash,
    /// Where it went.
    pub status: ProcessStatus,
    /// Blocks accepted by this call: the block, then orphans it unlocked.
    pub accepted: Vec<BlockHash>,
    /// The main-chain change, if the tip moved.
    pub tip_change: Option<TipChange>,
    /// Orphans that turned out invalid once their parent arrived, with the
    /// peer that sent them.
    pub rejected_orphans: Vec<(Option<NodeId>, BlockHash, BlockError)>,
}

struct Entry {
    header: Header,
    /// Cumulative work up to and including this block.
    weight: U256,
    /// Acceptance order; the lower wins a weight tie (first seen).
    seq: u64,
}

struct Orphan {
    block: Block,
    source: Option<NodeId>,
    size: usize,
}

/// Blocks whose parent is unknown, bounded by count and bytes; the oldest
/// is dropped first.
#[derive(Default)]
struct OrphanPool {
    map: HashMap<BlockHash, Orphan>,
    by_parent: HashMap<BlockHash, Vec<BlockHash>>,
    order: VecDeque<BlockHash>,
    bytes: usize,
}

impl OrphanPool {
    fn insert(&mut self, hash: BlockHash, o: Orphan, max: usize, max_bytes: usize) {
        self.bytes += o.size;
        self.by_parent.entry(o.block.header.prev_hash).or_default().push(hash);
        self.map.insert(hash, o);
        self.order.push_back(hash);
        while self.map.len() > max || self.bytes > max_bytes {
            let Some(old) = self.order.pop_front() else { break };
            self.remove(&old);
        }
    }

    fn remove(&mut self, hash: &BlockHash) -> Option<Orphan> {
        let o = self.map.remove(hash)?;
        self.bytes -= o.size;
        if let Some(v) = self.by_parent.get_mut(&o.block.header.prev_hash) {
            v.retain(|h| h != hash);
            if v.is_empty() {
                self.by_parent.remove(&o.block.header.prev_hash);
            }
        }
        self.order.retain(|h| h != hash);
        Some(o)
    }

    fn take_children(&mut self, parent: &BlockHash) -> Vec<(BlockHash, Orphan)> {
        let kids = self.by_parent.get(parent).cloned().unwrap_or_default();
        kids.into_iter().filter_map(|h| Some((h, self.remove(&h)?))).collect()
    }
}

/// The chain. See the module documentation.
pub struct Blockchain {
    params: Arc<NetworkParams>,
    cfg: BlockchainConfig,
    pub(super) store: Store,
    index: HashMap<BlockHash, Entry>,
    /// `height_to_hash` of the main chain.
    main: Vec<BlockHash>,
    /// Blocks without a known child.
    leaves: HashSet<BlockHash>,
    orphans: OrphanPool,
    invalid: HashSet<BlockHash>,
    invalid_order: VecDeque<BlockHash>,
    /// Blocks refused as too new, by hash: their timestamps.
    too_new: HashMap<BlockHash, u64>,
    /// Blocks whose rules ran in full (`check_block`), for metrics.
    checked: u64,
    next_seq: u64,
    /// Set when a failed batch could not be undone: every later write is
    /// refused (memory may not match the disk).
    broken: Option<String>,
}

impl std::fmt::Debug for Blockchain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blockchain")
            .field("height", &self.height())
            .field("tip", &self.tip())
            .field("blocks", &self.index.len())
            .field("orphans", &self.orphans.map.len())
            .finish()
    }
}

impl Blockchain {
    /// Opens the chain on `store`: writes genesis into an empty store, or
    /// rebuilds the index, tips and `height_to_hash` from a used one
    /// (nothing is downloaded again). Errors:
    /// [`StoreError::WrongNetwork`] for another genesis,
    /// [`StoreError::Corrupt`] when the tables contradict each other.
    pub fn open(
        params: Arc<NetworkParams>,
        mut store: Store,
        cfg: BlockchainConfig,
    ) -> Result<Blockchain, StoreError> {
        match store.genesis()? {
            // A database that holds blocks but no genesis record was
            // edited or damaged: writing genesis again would fail on the
            // block already there (`UNIQUE constraint failed`).
            None if store.block_count()? > 0 => {
                return Err(StoreError::Corrupt(format!(
                    "the meta table has no genesis record but {} blocks are stored",
                    store.block_count()?
                )))
            }
            None => store.init_genesis(&params.genesis_block)?,
            Some(g) if g != params.genesis_hash => {
                return Err(StoreError::WrongNetwork { stored: g, expected: params.genesis_hash })
            }
            Some(_) => {}
        }
        let mut chain = Blockchain {
            params,
            cfg,
            store,
            index: HashMap::new(),
            main: Vec::new(),
            leaves: HashSet::new(),
            orphans: OrphanPool::default(),
            invalid: HashSet::new(),
            invalid_order: VecDeque::new(),
            too_new: HashMap::new(),
            checked: 0,
            next_seq: 0,
            broken: None,
        };
        chain.load()?;
        Ok(chain)
    }

    /// Rebuilds the index, tips and `height_to_hash` from the store
    /// (orphans and known-invalid hashes stay). On an error the chain is
    /// left as it was.
    fn load(&mut self) -> Result<(), StoreError> {
        let saved = (
            std::mem::take(&mut self.index),
            std::mem::take(&mut self.leaves),
            std::mem::take(&mut self.main),
            std::mem::replace(&mut self.next_seq, 0),
        );
        let r = self.load_into_empty();
        if r.is_err() {
            (self.index, self.leaves, self.main, self.next_seq) = saved;
        }
        r
    }

    fn load_into_empty(&mut self) -> Result<(), StoreError> {
        let chain = self;
        for h in chain.store.load_headers()? {
            let hash = h.hash();
            let parent_weight = if h.height == 0 {
                if hash != chain.params.genesis_hash {
                    return Err(StoreError::Corrupt("a second block at height 0".into()));
                }
                U256::ZERO
            } else {
                match chain.index.get(&h.prev_hash) {
                    Some(p) => p.weight,
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "block {hash} stored before its parent"
                        )))
                    }
                }
            };
            let target = target_from_bits(h.bits)
                .ok_or_else(|| StoreError::Corrupt(format!("block {hash} has invalid bits")))?;
            chain.add_entry(hash, h, parent_weight + work(target));
        }
        chain.main = chain.store.load_main_chain()?;
        chain.check_main_chain()
    }

    /// Runs `f` with every block it stores written in one SQLite
    /// transaction ([`Store::begin`]), committed when `f` returns: one WAL
    /// commit for the batch instead of one per block, which is most of
    /// the cost of storing a small block. A crash keeps the whole batch or
    /// none of it, so callers report blocks as stored only after this
    /// returns. Inside an open batch `f` just runs.
    ///
    /// Errors: [`StoreError`] when the batch cannot be opened, when a
    /// write in it failed (its blocks got [`BlockError::Store`] inside
    /// `f`; the rest of the batch is refused), or when it cannot be
    /// committed. The batch is then rolled back and the index rebuilt from
    /// the store, so memory again matches the disk: the blocks `f`
    /// accepted, and orphans they connected, are no longer known. If `f`
    /// panics, the same happens before the panic goes on. If even that
    /// fails (the disk is gone), the chain refuses every later write with
    /// [`StoreError::Corrupt`] and must be reopened.
    pub fn batch<R>(&mut self, f: impl FnOnce(&mut Blockchain) -> R) -> Result<R, StoreError> {
        if self.store.in_batch() {
            return Ok(f(self));
        }
        if let Some(why) = &self.broken {
            return Err(StoreError::Corrupt(why.clone()));
        }
        self.store.begin()?;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let r = match r {
            Ok(r) => r,
            Err(panic) => {
                let _ = self.undo_batch("a panic while writing a batch".into());
                std::panic::resume_unwind(panic);
            }
        };
        match self.store.commit() {
            Ok(()) => Ok(r),
            Err(e) => {
                self.undo_batch(e.to_string())?;
                Err(e)
            }
        }
    }

    /// Rolls the open batch back and rebuilds the index from the store;
    /// when either fails, the chain is marked broken (no more writes).
    fn undo_batch(&mut self, why: String) -> Result<(), StoreError> {
        let r = self.store.rollback().and_then(|()| self.load());
        if let Err(e) = &r {
            let why = format!("{why}; then rolling back failed: {e}; reopen the chain");
            tracing::error!("{why}");
            self.broken = Some(why);
        }
        r
    }

    /// Checks that the stored main chain links up from genesis and ends at
    /// the best tip by the fork-choice rule.
    fn check_main_chain(&self) -> Result<(), StoreError> {
        let corrupt = |s: String| Err(StoreError::Corrupt(s));
        if self.main.first() != Some(&self.params.genesis_hash) {
            return corrupt("main chain does not start at genesis".into());
        }
        for (height, pair) in self.main.windows(2).enumerate() {
            match self.index.get(&pair[1]) {
                Some(e)
                    if e.header.prev_hash == pair[0] && e.header.height == height as u64 + 1 => {}
                _ => return corrupt(format!("main chain breaks at height {}", height + 1)),
            }
        }
        let best = self.best_leaf();
        if best != self.tip() {
            return corrupt(format!(
                "main chain ends at {} but the heaviest tip is {best}",
                self.tip()
            ));
        }
        Ok(())
    }

    /// Checks every invariant of the in-memory chain against itself and the
    /// store, for tests and fuzzing (`fuzz/`): each indexed block's weight
    /// is its parent's plus its own work and its height its parent's plus
    /// one; the leaves are exactly the indexed blocks without an indexed
    /// child; the main chain links up from genesis, ends at the heaviest
    /// leaf (first seen on a tie) and matches the store's; `tips()` is
    /// sorted heaviest first; the store holds the same number of blocks
    /// as the index; the orphan pool keeps its bounds. Cost: linear in the
    /// number of blocks.
    ///
    /// # Errors
    /// The first invariant broken, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let g = &self.params.genesis_hash;
        for (hash, e) in &self.index {
            let own = target_from_bits(e.header.bits).map(work);
            if hash == g {
                if e.header.height != 0 || Some(e.weight) != own {
                    return Err("genesis entry has a wrong height or weight".into());
                }
                continue;
            }
            let Some(p) = self.index.get(&e.header.prev_hash) else {
                return Err(format!("block {hash} is indexed without its parent"));
            };
            if e.header.height != p.header.height + 1 {
                return Err(format!("block {hash} is not one above its parent"));
            }
            if own.map(|w| p.weight + w) != Some(e.weight) {
                return Err(format!("block {hash} has a weight other than parent + work"));
            }
        }
        let parents: HashSet<&BlockHash> =
            self.index.iter().filter(|(h, _)| *h != g).map(|(_, e)| &e.header.prev_hash).collect();
        let leaves: HashSet<BlockHash> =
            self.index.keys().filter(|h| !parents.contains(h)).copied().collect();
        if leaves != self.leaves {
            return Err(format!(
                "{} leaves kept, {} blocks without a child",
                self.leaves.len(),
                leaves.len()
            ));
        }
        self.check_main_chain().map_err(|e| e.to_string())?;
        for (height, hash) in self.main.iter().enumerate() {
            if self.height_to_hash(height as u64) != Some(*hash) || !self.on_main(hash) {
                return Err(format!("height_to_hash({height}) disagrees with the main chain"));
            }
        }
        let stored = self.store.load_main_chain().map_err(|e| e.to_string())?;
        if stored != self.main {
            return Err("the store's main chain differs from the index's".into());
        }
        let count = self.store.block_count().map_err(|e| e.to_string())?;
        if count != self.index.len() as u64 {
            return Err(format!("{count} blocks stored, {} indexed", self.index.len()));
        }
        let tips = self.tips();
        if tips.first().map(|t| t.hash) != Some(self.tip())
            || tips.windows(2).any(|w| w[0].weight < w[1].weight)
        {
            return Err("tips() is not heaviest first from the main tip".into());
        }
        let o = &self.orphans;
        if o.map.len() > self.cfg.max_orphans
            || o.bytes > self.cfg.max_orphan_bytes
            || o.order.len() != o.map.len()
            || o.map.values().map(|x| x.size).sum::<usize>() != o.bytes
        {
            return Err("the orphan pool is over its bounds or miscounted".into());
        }
        Ok(())
    }

    fn add_entry(&mut self, hash: BlockHash, header: Header, weight: U256) {
        self.leaves.remove(&header.prev_hash);
        self.leaves.insert(hash);
        self.index.insert(hash, Entry { header, weight, seq: self.next_seq });
        self.next_seq += 1;
    }

    /// The heaviest leaf; the first seen wins a tie.
    fn best_leaf(&self) -> BlockHash {
        *self
            .leaves
            .iter()
            .max_by(|a, b| {
                let (ea, eb) = (&self.index[*a], &self.index[*b]);
                ea.weight.cmp(&eb.weight).then(eb.seq.cmp(&ea.seq))
            })
            .expect("genesis is always a block")
    }

    /// The network parameters.
    pub fn params(&self) -> &Arc<NetworkParams> {
        &self.params
    }

    /// The main-chain tip.
    pub fn tip(&self) -> BlockHash {
        *self.main.last().expect("genesis is always on the main chain")
    }

    /// The main-chain height (genesis is 0).
    pub fn height(&self) -> u64 {
        self.main.len() as u64 - 1
    }

    /// The main chain's cumulative work.
    pub fn weight(&self) -> U256 {
        self.index[&self.tip()].weight
    }

    /// The tip's header.
    pub fn tip_header(&self) -> &Header {
        &self.index[&self.tip()].header
    }

    /// The main-chain block at `height`.
    pub fn height_to_hash(&self, height: u64) -> Option<BlockHash> {
        self.main.get(usize::try_from(height).ok()?).copied()
    }

    /// A known (validated) block's header.
    pub fn header(&self, hash: &BlockHash) -> Option<&Header> {
        self.index.get(hash).map(|e| &e.header)
    }

    /// A known block's cumulative work.
    pub fn weight_of(&self, hash: &BlockHash) -> Option<U256> {
        self.index.get(hash).map(|e| e.weight)
    }

    /// Whether `hash` is a validated block.
    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.index.contains_key(hash)
    }

    /// Whether `hash` is validated or waiting in the orphan pool.
    pub fn is_known(&self, hash: &BlockHash) -> bool {
        self.index.contains_key(hash) || self.orphans.map.contains_key(hash)
    }

    /// Whether `hash` was found invalid (and is still remembered).
    pub fn is_invalid(&self, hash: &BlockHash) -> bool {
        self.invalid.contains(hash)
    }

    /// Whether `hash` was refused as too new and is remembered (its time
    /// has not come yet, as of the last time it was seen).
    pub fn is_too_new(&self, hash: &BlockHash) -> bool {
        self.too_new.contains_key(hash)
    }

    /// How many blocks had their rules checked in full (each check of a
    /// block the chain was given, not counting refusals from memory:
    /// known, known invalid, remembered as too new).
    pub fn blocks_checked(&self) -> u64 {
        self.checked
    }

    /// Whether `hash` is on the main chain.
    pub fn on_main(&self, hash: &BlockHash) -> bool {
        self.index.get(hash).is_some_and(|e| self.height_to_hash(e.header.height) == Some(*hash))
    }

    /// How many validated blocks are known (all forks).
    pub fn block_count(&self) -> usize {
        self.index.len()
    }

    /// How many orphans wait for their parent.
    pub fn orphan_count(&self) -> usize {
        self.orphans.map.len()
    }

    /// The three heaviest tips, heaviest first (first seen first on a tie).
    /// The first is the main-chain tip.
    pub fn tips(&self) -> Vec<TipInfo> {
        let mut v: Vec<(&BlockHash, &Entry)> =
            self.leaves.iter().map(|h| (h, &self.index[h])).collect();
        v.sort_by(|a, b| b.1.weight.cmp(&a.1.weight).then(a.1.seq.cmp(&b.1.seq)));
        v.into_iter()
            .take(3)
            .map(|(h, e)| TipInfo { hash: *h, height: e.header.height, weight: e.weight })
            .collect()
    }

    /// A stored block by hash (from the store).
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        self.store.block(hash)
    }

    /// A stored block, protobuf-encoded (see [`Store::block_encoded`]).
    pub fn block_encoded(&self, hash: &BlockHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.block_encoded(hash)
    }

    /// An upper bound of a stored block's encoded length, without reading
    /// it (see [`Store::block_encoded_size`]).
    pub fn block_encoded_size(&self, hash: &BlockHash) -> Result<Option<usize>, StoreError> {
        self.store.block_encoded_size(hash)
    }

    /// A stored block, encoded after a prefix (see
    /// [`Store::block_encoded_framed`]).
    pub fn block_encoded_framed(
        &self,
        hash: &BlockHash,
        frame: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.block_encoded_framed(hash, frame)
    }

    /// The store (read access).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The ancestor of `hash` at `height` (itself at its own height).
    pub fn ancestor(&self, hash: &BlockHash, height: u64) -> Option<BlockHash> {
        let mut cur = *hash;
        loop {
            let e = self.index.get(&cur)?;
            if e.header.height == height {
                return Some(cur);
            }
            if e.header.height < height {
                return None;
            }
            if self.on_main(&cur) {
                return self.height_to_hash(height);
            }
            cur = e.header.prev_hash;
        }
    }

    /// The header of the ancestor of `hash` at `height`.
    fn ancestor_header(&self, hash: &BlockHash, height: u64) -> Option<Header> {
        self.ancestor(hash, height).map(|a| self.index[&a].header)
    }

    /// The median block time of `hash` and its ten ancestors (fewer near
    /// genesis), milliseconds. A child must be later than this.
    pub fn median_time_past(&self, hash: &BlockHash) -> u64 {
        let parent = self.index[hash].header;
        median_time(&parent, |h| self.ancestor_header(hash, h))
    }

    /// The compact target a child of `parent` must carry (see
    /// [`retarget`]).
    pub fn next_bits(&self, parent: &BlockHash) -> u32 {
        let p = self.index[parent].header;
        retarget(&self.params, &p, |h| self.ancestor_header(parent, h))
    }

    /// A block locator for the main chain: the ten newest hashes, then
    /// exponentially sparser ones, ending with genesis (Bitcoin).
    pub fn locator(&self) -> Vec<BlockHash> {
        self.locator_from(&self.tip())
    }

    /// A locator (as [`Blockchain::locator`]) from `tip`, a validated block
    /// on any branch: its own ancestors down to where it joins the main
    /// chain, then main-chain hashes, with the same spacing. A peer that
    /// sent us a side branch is asked with a locator from the branch's
    /// tip, so its answer continues the branch however deep the fork is
    /// (Bitcoin Core builds its locators from the best header, not only
    /// the active chain). An unknown `tip` gives the main chain's locator.
    pub fn locator_from(&self, tip: &BlockHash) -> Vec<BlockHash> {
        let Some(e) = self.index.get(tip) else {
            // The main tip is always indexed.
            return self.locator_from(&self.tip());
        };
        let top = e.header.height;
        // The branch below `tip` until the main chain: side[i] is at
        // height top - i.
        let mut side = Vec::new();
        let mut h = *tip;
        while !self.on_main(&h) {
            side.push(h);
            h = self.index[&h].header.prev_hash;
        }
        let at = |height: u64| {
            let back = (top - height) as usize;
            if back < side.len() {
                side[back]
            } else {
                self.main[height as usize]
            }
        };
        locator_heights(top).into_iter().map(at).collect()
    }

    /// Main-chain blocks after the first `locator` hash on the main chain
    /// (after genesis when none is), ascending: at most `max_blocks`, and
    /// at most `max_bytes` in all unless that would be none.
    pub fn main_blocks_after(
        &self,
        locator: &[BlockHash],
        max_blocks: usize,
        max_bytes: usize,
    ) -> Result<Vec<Block>, StoreError> {
        let start =
            locator.iter().find(|h| self.on_main(h)).map_or(0, |h| self.index[h].header.height);
        let mut out = Vec::new();
        let mut bytes = 0;
        for h in self.main.iter().skip(start as usize + 1).take(max_blocks) {
            let b = self
                .store
                .block(h)?
                .ok_or_else(|| StoreError::Corrupt(format!("main block {h} missing")))?;
            bytes += b.size();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(b);
        }
        Ok(out)
    }

    /// Main-chain headers after the first `locator` hash on the main chain
    /// (after genesis when none is), ascending, up to `stop` (inclusive)
    /// or `max` headers (Bitcoin's getheaders).
    pub fn main_headers_after(
        &self,
        locator: &[BlockHash],
        stop: &BlockHash,
        max: usize,
    ) -> Vec<Header> {
        let start =
            locator.iter().find(|h| self.on_main(h)).map_or(0, |h| self.index[h].header.height);
        let mut out = Vec::new();
        for h in self.main.iter().skip(start as usize + 1).take(max) {
            out.push(self.index[h].header);
            if h == stop {
                break;
            }
        }
        out
    }

    /// A block to mine on the tip: `txs` (the caller keeps them within
    /// `max_block_bytes`), the next target, a time that is `now_ms` or just
    /// after the median time past, nonce 0.
    pub fn template(&self, txs: Vec<Bytes>, now_ms: u64) -> Block {
        let tip = self.tip();
        let header = Header {
            version: Header::VERSION,
            height: self.height() + 1,
            prev_hash: tip,
            merkle_root: merkle_root(&txs),
            timestamp_ms: now_ms.max(self.median_time_past(&tip) + 1),
            bits: self.next_bits(&tip),
            nonce: 0,
        };
        Block { header, txs }
    }

    /// Checks every rule that needs no parent, in an order that never
    /// blames a header for a body someone altered: version, target, proof
    /// of work, the clock (a block from the future costs no pass over its
    /// body), merkle root, then the other body rules.
    pub fn check_block(
        &self,
        block: &Block,
        hash: &BlockHash,
        now_ms: u64,
    ) -> Result<(), BlockError> {
        let h = &block.header;
        self.check_pow(h, hash)?;
        // The clock before the body: a block from the future costs a
        // header check, not a pass over its transactions.
        self.check_clock(h, now_ms)?;
        check_body_rules(&self.params, block)
    }

    /// Checks the rules that need the (known) parent: height, target from
    /// the retarget rule, time after the median time past.
    fn check_contextual(&self, h: &Header) -> Result<(), BlockError> {
        let parent = self.index[&h.prev_hash].header;
        check_against_parent(&self.params, h, &parent, |x| self.ancestor_header(&h.prev_hash, x))
    }

    /// Starts a header path (headers-first sync) after `fork`, a validated
    /// block. `None` when `fork` is unknown.
    pub fn header_path(&self, fork: &BlockHash) -> Option<HeaderPath> {
        let e = self.index.get(fork)?;
        Some(HeaderPath {
            network: self.params.genesis_hash,
            fork: *fork,
            fork_height: e.header.height,
            fork_weight: e.weight,
            headers: Vec::new(),
            hashes: Vec::new(),
            weights: Vec::new(),
            heights: HashMap::new(),
        })
    }

    /// Validates `new` as headers continuing `path` (linkage, version,
    /// target, proof of work, height, retarget, median time past, clock)
    /// and appends them. Errors: the index in `new` of the first bad
    /// header and why; the headers before it are appended.
    pub fn extend_header_path(
        &self,
        path: &mut HeaderPath,
        new: &[Header],
        now_ms: u64,
    ) -> Result<(), (usize, BlockError)> {
        assert_eq!(path.network, self.params.genesis_hash, "a header path of another network");
        for (i, h) in new.iter().enumerate() {
            let (parent_hash, parent, weight) = match path.headers.last() {
                Some(p) => (*path.hashes.last().expect("same length"), *p, path.weight()),
                None => (path.fork, self.index[&path.fork].header, path.fork_weight),
            };
            if h.prev_hash != parent_hash {
                return Err((i, BlockError::Unlinked));
            }
            let hash = h.hash();
            let target = self.check_pow(h, &hash).map_err(|e| (i, e))?;
            self.check_clock(h, now_ms).map_err(|e| (i, e))?;
            let anc = |x: u64| {
                if x > path.fork_height {
                    path.headers.get((x - path.fork_height - 1) as usize).copied()
                } else {
                    self.ancestor_header(&path.fork, x)
                }
            };
            check_against_parent(&self.params, h, &parent, anc).map_err(|e| (i, e))?;
            path.headers.push(*h);
            path.heights.insert(hash, h.height);
            path.hashes.push(hash);
            path.weights.push(weight + work(target));
        }
        Ok(())
    }

    /// The proof-of-work rules of a header: version, target valid and
    /// within the pow limit, hash meeting it. Returns the target.
    fn check_pow(&self, h: &Header, hash: &BlockHash) -> Result<U256, BlockError> {
        if h.version != Header::VERSION {
            return Err(BlockError::BadVersion(h.version));
        }
        let target = target_from_bits(h.bits)
            .filter(|t| *t <= self.params.pow_limit)
            .ok_or(BlockError::BadBits(h.bits))?;
        if hash.to_u256() > target {
            return Err(BlockError::BadPow);
        }
        Ok(target)
    }

    /// The clock rule: not more than `max_future_ms` ahead of `now_ms`.
    fn check_clock(&self, h: &Header, now_ms: u64) -> Result<(), BlockError> {
        let limit_ms = now_ms.saturating_add(self.params.genesis.max_future_ms);
        if h.timestamp_ms > limit_ms {
            return Err(BlockError::TimeTooNew { timestamp_ms: h.timestamp_ms, limit_ms });
        }
        Ok(())
    }

    /// Remembers a block from the future; when the memory is full, the
    /// entries whose time has come go first, then the furthest in the
    /// future (the least useful to keep).
    fn remember_too_new(&mut self, hash: BlockHash, timestamp_ms: u64, now_ms: u64) {
        let cap = self.cfg.max_too_new;
        if cap == 0 {
            return;
        }
        if self.too_new.len() >= cap {
            let limit = now_ms.saturating_add(self.params.genesis.max_future_ms);
            self.too_new.retain(|_, t| *t > limit);
        }
        if self.too_new.len() >= cap {
            let furthest = self.too_new.iter().max_by_key(|(_, t)| **t).map(|(h, t)| (*h, *t));
            match furthest {
                Some((h, t)) if t > timestamp_ms => {
                    self.too_new.remove(&h);
                }
                _ => return,
            }
        }
        self.too_new.insert(hash, timestamp_ms);
    }

    fn remember_invalid(&mut self, hash: BlockHash) {
        if self.invalid.insert(hash) {
            self.invalid_order.push_back(hash);
            while self.invalid_order.len() > self.cfg.max_invalid {
                if let Some(old) = self.invalid_order.pop_front() {
                    self.invalid.remove(&old);
                }
            }
        }
    }

    /// Validates and stores `block` (sent by `source`, if a peer), then any
    /// orphans it unlocks, and moves the main chain to the heaviest valid
    /// tip. `now_ms` is the local clock (Unix milliseconds).
    ///
    /// Errors: the [`BlockError`] of the first rule the block breaks; its
    /// hash is then remembered as invalid when the failure is permanent.
    /// A block whose parent is unknown is not an error: it goes to the
    /// orphan pool ([`ProcessStatus::Orphan`]).
    pub fn process_block(
        &mut self,
        block: Block,
        source: Option<NodeId>,
        now_ms: u64,
    ) -> Result<Processed, BlockError> {
        let hash = block.hash();
        self.process(block, hash, source, now_ms, false)
    }

    /// As [`Blockchain::process_block`] for a block checked before
    /// ([`CheckedBlock`]): neither its header rules nor its body rules run
    /// again, only what depends on this chain's state (known, known
    /// invalid, parent, fork choice) and the store. A block checked for
    /// another network is processed in full.
    pub fn process_checked(
        &mut self,
        b: CheckedBlock,
        source: Option<NodeId>,
        now_ms: u64,
    ) -> Result<Processed, BlockError> {
        let BodyChecked { block, hash, network } = b.0;
        let checked = network == self.params.genesis_hash;
        self.process(block, hash, source, now_ms, checked)
    }

    fn process(
        &mut self,
        block: Block,
        hash: BlockHash,
        source: Option<NodeId>,
        now_ms: u64,
        checked: bool,
    ) -> Result<Processed, BlockError> {
        let done = |status| Processed {
            hash,
            status,
            accepted: Vec::new(),
            tip_change: None,
            rejected_orphans: Vec::new(),
        };
        if let Some(why) = &self.broken {
            return Err(BlockError::Store(StoreError::Corrupt(why.clone())));
        }
        if self.is_known(&hash) {
            return Ok(done(ProcessStatus::AlreadyKnown));
        }
        if self.invalid.contains(&hash) {
            return Err(BlockError::KnownInvalid);
        }
        if let Some(&timestamp_ms) = self.too_new.get(&hash) {
            let limit_ms = now_ms.saturating_add(self.params.genesis.max_future_ms);
            if timestamp_ms > limit_ms {
                return Err(BlockError::TimeTooNew { timestamp_ms, limit_ms });
            }
            // Its time has come: checked as any new block.
            self.too_new.remove(&hash);
        }
        if !checked {
            self.checked += 1;
            if let Err(e) = self.check_block(&block, &hash, now_ms) {
                if e.is_permanent() {
                    self.remember_invalid(hash);
                } else if let BlockError::TimeTooNew { timestamp_ms, .. } = e {
                    // What can be checked already is: with its parent
                    // known, a wrong height, target or time order makes it
                    // invalid now, not merely early.
                    if self.index.contains_key(&block.header.prev_hash) {
                        if let Err(bad) = self.check_contextual(&block.header) {
                            self.remember_invalid(hash);
                            return Err(bad);
                        }
                    }
                    self.remember_too_new(hash, timestamp_ms, now_ms);
                }
                return Err(e);
            }
        }
        if self.invalid.contains(&block.header.prev_hash) {
            self.remember_invalid(hash);
            return Err(BlockError::KnownInvalid);
        }
        if !self.index.contains_key(&block.header.prev_hash) {
            let size = block.size();
            let (max, max_bytes) = (self.cfg.max_orphans, self.cfg.max_orphan_bytes);
            self.orphans.insert(hash, Orphan { block, source, size }, max, max_bytes);
            return Ok(done(ProcessStatus::Orphan));
        }
        let old_tip = self.tip();
        let mut fresh = HashMap::new();
        self.connect(block, hash, &mut fresh, checked)?;
        let mut out = done(ProcessStatus::SideChain);
        out.accepted.push(hash);
        let mut queue = vec![hash];
        while let Some(parent) = queue.pop() {
            for (h, o) in self.orphans.take_children(&parent) {
                match self.connect(o.block, h, &mut fresh, false) {
                    Ok(()) => {
                        out.accepted.push(h);
                        queue.push(h);
                    }
                    Err(e) => {
                        out.rejected_orphans.push((o.source, h, e));
                        self.reject_descendants(h, &mut out.rejected_orphans);
                    }
                }
            }
        }
        if self.on_main(&hash) {
            out.status = ProcessStatus::MainChain;
        }
        if self.tip() != old_tip {
            out.tip_change = Some(self.tip_change(old_tip, &mut fresh)?);
        }
        Ok(out)
    }

    /// Drops the orphans that descend from invalid `hash`, remembering
    /// them as invalid.
    fn reject_descendants(
        &mut self,
        hash: BlockHash,
        rejected: &mut Vec<(Option<NodeId>, BlockHash, BlockError)>,
    ) {
        let mut queue = vec![hash];
        while let Some(p) = queue.pop() {
            for (h, o) in self.orphans.take_children(&p) {
                self.remember_invalid(h);
                rejected.push((o.source, h, BlockError::KnownInvalid));
                queue.push(h);
            }
        }
    }

    /// Validates `block` against its known parent and stores it, moving
    /// the main chain to it when it is heavier than the tip (strictly: the
    /// first seen keeps a tie). Keeps the block in `fresh` for the
    /// [`TipChange`]. `checked`: its header was validated on a header path
    /// (the rules against its parent are not run again).
    fn connect(
        &mut self,
        block: Block,
        hash: BlockHash,
        fresh: &mut HashMap<BlockHash, Block>,
        checked: bool,
    ) -> Result<(), BlockError> {
        if !checked {
            if let Err(e) = self.check_contextual(&block.header) {
                if e.is_permanent() {
                    self.remember_invalid(hash);
                }
                return Err(e);
            }
        }
        let target = target_from_bits(block.header.bits).expect("checked in check_block");
        let weight = self.index[&block.header.prev_hash].weight + work(target);
        if weight > self.weight() {
            let mut path = vec![hash];
            let mut cur = block.header.prev_hash;
            while !self.on_main(&cur) {
                path.push(cur);
                cur = self.index[&cur].header.prev_hash;
            }
            path.reverse();
            let fork_height = self.index[&cur].header.height;
            let update = MainUpdate { fork_height, hashes: &path };
            self.store.put_block(&block, &hash, Some(update))?;
            self.main.truncate(fork_height as usize + 1);
            self.main.extend_from_slice(&path);
        } else {
            self.store.put_block(&block, &hash, None)?;
        }
        self.add_entry(hash, block.header, weight);
        fresh.insert(hash, block);
        Ok(())
    }

    fn tip_change(
        &self,
        old_tip: BlockHash,
        fresh: &mut HashMap<BlockHash, Block>,
    ) -> Result<TipChange, StoreError> {
        let mut load = |h: &BlockHash| match fresh.remove(h) {
            Some(b) => Ok(b),
            None => self
                .store
                .block(h)?
                .ok_or_else(|| StoreError::Corrupt(format!("block {h} missing"))),
        };
        let mut disconnected = Vec::new();
        let mut cur = old_tip;
        while !self.on_main(&cur) {
            let b = load(&cur)?;
            cur = b.header.prev_hash;
            disconnected.push(b);
        }
        let fork_height = self.index[&cur].header.height;
        let connected = self.main[fork_height as usize + 1..]
            .iter()
            .map(&mut load)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TipChange { old_tip, new_tip: self.tip(), fork_height, disconnected, connected })
    }
}

/// The body rules of [`Blockchain::check_block`], which need no chain
/// state: the merkle root matches the transactions (checked first, so an
/// altered body never condemns its header), each transaction within
/// `max_tx_bytes` and none twice, the block within `max_block_bytes`.
fn check_body_rules(params: &NetworkParams, block: &Block) -> Result<(), BlockError> {
    let g = &params.genesis;
    if block.compute_merkle_root() != block.header.merkle_root {
        return Err(BlockError::BadMerkleRoot);
    }
    let mut seen = HashSet::with_capacity(block.txs.len());
    for (index, tx) in block.txs.iter().enumerate() {
        if tx.len() > g.max_tx_bytes {
            return Err(BlockError::TxTooLarge { index, size: tx.len(), max: g.max_tx_bytes });
        }
        if !seen.insert(tx) {
            return Err(BlockError::DuplicateTx { index });
        }
    }
    let size = block.size();
    if size > g.max_block_bytes {
        return Err(BlockError::BlockTooLarge { size, max: g.max_block_bytes });
    }
    Ok(())
}

/// A block whose body passed the context-free rules of `params`' network
/// (merkle root, transaction sizes and duplicates, block size), with its
/// hash computed: the first half of what block sync checks of a block as
/// it arrives, on the receiving task and without any lock. The header is
/// not checked here; [`HeaderPath::admit`] finds it on a validated path.
#[derive(Clone, Debug)]
pub struct BodyChecked {
    block: Block,
    hash: BlockHash,
    network: BlockHash,
}

impl BodyChecked {
    /// Checks `block`'s body against `params`. Errors: the [`BlockError`]
    /// of the first body rule it breaks (always the sender's fault; the
    /// header may still be valid, so the hash must not be remembered as
    /// invalid).
    pub fn check(params: &NetworkParams, block: Block) -> Result<BodyChecked, BlockError> {
        check_body_rules(params, &block)?;
        let hash = block.hash();
        Ok(BodyChecked { block, hash, network: params.genesis_hash })
    }

    /// The block's hash.
    pub fn hash(&self) -> BlockHash {
        self.hash
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }
}

/// A block checked once before it is applied: its body by
/// [`BodyChecked::check`] and its header (proof of work, target, median
/// time, linkage, clock) as part of a [`HeaderPath`] that a [`Blockchain`]
/// of the same network validated. [`Blockchain::process_checked`] stores
/// it without checking either again (headers-first sync validates each
/// header once, as Chia and Bitcoin Core do, instead of again with its
/// block). Made only by [`HeaderPath::admit`].
#[derive(Clone, Debug)]
pub struct CheckedBlock(BodyChecked);

impl CheckedBlock {
    /// The block's hash.
    pub fn hash(&self) -> BlockHash {
        self.0.hash
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.0.block
    }
}

/// The median time of `parent` and its ten ancestors (fewer near genesis),
/// milliseconds; `anc(height)` gives the header at `height` on its chain.
pub fn median_time(parent: &Header, anc: impl Fn(u64) -> Option<Header>) -> u64 {
    let first = parent.height.saturating_sub(10);
    let mut times: Vec<u64> =
        (first..parent.height).filter_map(&anc).map(|h| h.timestamp_ms).collect();
    times.push(parent.timestamp_ms);
    times.sort_unstable();
    times[times.len() / 2]
}

/// The heights of a block locator from a tip at height `top`, newest
/// first: the ten newest (`top … top − 9`), then steps doubling from 2
/// (`top − 11, top − 15, top − 23, …`), then genesis (0) (Bitcoin's
/// `LocatorEntries`; docs/protocol.md §8.6, vectors in
/// docs/vectors/locator.json). At most 10 + 64 + 1 heights.
pub fn locator_heights(top: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut height = top;
    let mut step = 1u64;
    while height > 0 {
        out.push(height);
        if out.len() >= 10 {
            step = step.saturating_mul(2);
        }
        height = height.saturating_sub(step);
    }
    out.push(0);
    out
}

/// The compact target a child of `parent` must carry; `anc(height)` gives
/// the header at `height` on the parent's chain. Every `retarget_window`
/// blocks the target is scaled by the time the last window took over the
/// time it should have taken, the ratio clamped to [1/4, 4] and the result
/// to the pow limit (Bitcoin's rule, including its window of
/// `retarget_window - 1` intervals).
/// Integer arithmetic throughout: `expected = (W − 1) × target_block_time_ms`,
/// `actual` = the parent's time minus the window's first (0 if it is
/// earlier), clamped to `[⌊expected / 4⌋, expected × 4]`; the new target is
/// `⌊old × actual / expected⌋` (the product exact in 320 bits), capped at
/// the pow limit and raised to at least 1, then compact-encoded (rounded
/// down). Vectors:
/// docs/vectors/retarget.json.
pub fn retarget(
    params: &NetworkParams,
    parent: &Header,
    anc: impl Fn(u64) -> Option<Header>,
) -> u32 {
    let window = params.genesis.retarget_window;
    let height = parent.height + 1;
    if window == 0 || !height.is_multiple_of(window) {
        return parent.bits;
    }
    let first_ts = anc(height - window).map_or(parent.timestamp_ms, |h| h.timestamp_ms);
    let expected = (window - 1) * params.genesis.target_block_time_ms;
    let actual = parent.timestamp_ms.saturating_sub(first_ts).clamp(expected / 4, expected * 4);
    let Some(old) = target_from_bits(parent.bits) else { return parent.bits };
    // old × actual needs up to 320 bits; divide there, then clamp.
    let wide: Uint<320, 5> = old.widening_mul(Uint::<64, 1>::from(actual));
    let new = U256::saturating_from(wide / Uint::<320, 5>::from(expected));
    // Never 0: a zero target is invalid bits, and the chain would stop.
    bits_from_target(new.min(params.pow_limit).max(U256::from(1)))
}

/// The rules that need the parent: height, retarget, median time past.
fn check_against_parent(
    params: &NetworkParams,
    h: &Header,
    parent: &Header,
    anc: impl Fn(u64) -> Option<Header>,
) -> Result<(), BlockError> {
    if h.height != parent.height + 1 {
        return Err(BlockError::BadHeight { expected: parent.height + 1, got: h.height });
    }
    let expected = retarget(params, parent, &anc);
    if h.bits != expected {
        return Err(BlockError::BadTarget { expected, got: h.bits });
    }
    let median_ms = median_time(parent, &anc);
    if h.timestamp_ms <= median_ms {
        return Err(BlockError::TimeTooOld { timestamp_ms: h.timestamp_ms, median_ms });
    }
    Ok(())
}

/// A chain of validated headers above a known block (headers-first sync):
/// each header with its hash and cumulative weight.
#[derive(Clone, Debug)]
pub struct HeaderPath {
    /// The genesis hash of the chain that validates it.
    network: BlockHash,
    fork: BlockHash,
    fork_height: u64,
    fork_weight: U256,
    headers: Vec<Header>,
    hashes: Vec<BlockHash>,
    weights: Vec<U256>,
    /// Height of each hash on the path.
    heights: HashMap<BlockHash, u64>,
}

impl HeaderPath {
    /// The known block the path starts after.
    pub fn fork(&self) -> BlockHash {
        self.fork
    }

    /// Its height.
    pub fn fork_height(&self) -> u64 {
        self.fork_height
    }

    /// Height of the last header (the fork's when empty).
    pub fn tip_height(&self) -> u64 {
        self.fork_height + self.headers.len() as u64
    }

    /// Hash of the last header (the fork's when empty).
    pub fn tip_hash(&self) -> BlockHash {
        self.hashes.last().copied().unwrap_or(self.fork)
    }

    /// Cumulative work at the last header.
    pub fn weight(&self) -> U256 {
        self.weights.last().copied().unwrap_or(self.fork_weight)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether it holds no header.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The hash at `height` (fork height + 1 ..= tip height).
    pub fn hash_at(&self, height: u64) -> Option<BlockHash> {
        let i = height.checked_sub(self.fork_height + 1)?;
        self.hashes.get(usize::try_from(i).ok()?).copied()
    }

    /// The height of `hash` on the path.
    pub fn height_of(&self, hash: &BlockHash) -> Option<u64> {
        if *hash == self.fork {
            return Some(self.fork_height);
        }
        self.heights.get(hash).copied()
    }

    /// The header at `height`.
    pub fn header_at(&self, height: u64) -> Option<&Header> {
        let i = height.checked_sub(self.fork_height + 1)?;
        self.headers.get(usize::try_from(i).ok()?)
    }

    /// `b` as a [`CheckedBlock`] when its hash is the path's at its
    /// height (so its header is one this path validated) and it was
    /// checked for this path's network; else `None`.
    pub fn admit(&self, b: BodyChecked) -> Option<CheckedBlock> {
        if b.network != self.network || self.hash_at(b.block.header.height) != Some(b.hash) {
            return None;
        }
        Some(CheckedBlock(b))
    }
}
