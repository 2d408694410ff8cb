//! The SQLite block store (rusqlite, bundled SQLite; WAL journal).
//!
//! Only fully validated blocks are written. A block and the main-chain
//! update it causes are one SQLite transaction, so a crash at any point
//! (kill -9 included) leaves either the old or the new state, and the
//! [`Blockchain`](super::Blockchain) is rebuilt from the tables on start.
//! `synchronous = NORMAL` under WAL keeps every committed transaction
//! through a process crash; a power cut may lose the last few commits but
//! never leaves a torn state (SQLite's documented WAL guarantee).
//!
//! Schema (version 1, in `PRAGMA user_version`):
//! - `meta(key TEXT PRIMARY KEY, value BLOB)`: `genesis` = the genesis hash.
//! - `blocks(seq INTEGER PRIMARY KEY, hash BLOB UNIQUE, header BLOB, txs BLOB)`:
//!   every valid block in the order it was accepted (its first-seen order,
//!   which breaks weight ties); `header` is the 96 canonical bytes, `txs`
//!   the protobuf `plexus.chain.Block` with only its `txs` field.
//! - `main_chain(height INTEGER PRIMARY KEY, hash BLOB)`: `height_to_hash`.

use std::path::Path;

use bytes::Bytes;
use plexus_proto::chain as pb;
use prost::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::block::{Block, BlockHash, Hash, Header};

/// Where the node keeps the database, relative to its home directory.
pub const DEFAULT_DB_PATH: &str = "data/chain.sqlite";

/// The schema version this release writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Errors of the block store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, locked, I/O error…).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The directory could not be created.
    #[error("creating {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The database was written by a newer release.
    #[error("chain database schema version {found} is newer than this release supports ({supported}); upgrade plexus or use another home directory")]
    SchemaTooNew {
        /// The version in the file.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
    /// The database belongs to another network.
    #[error("chain database holds network {stored}, not {expected}; use another home directory")]
    WrongNetwork {
        /// Genesis hash in the file.
        stored: BlockHash,
        /// Genesis hash of the configured network.
        expected: BlockHash,
    },
    /// The tables contradict themselves (edited by hand, or a disk fault).
    #[error("chain database is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database file itself is damaged: not an SQLite file,
    /// malformed pages, or tables that contradict themselves. The way out
    /// is another copy or a resync, not a retry (a full disk or an I/O
    /// error is not damage).
    pub fn is_damage(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
        match self {
            StoreError::Corrupt(_) => true,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                matches!(f.code, DatabaseCorrupt | NotADatabase)
            }
            _ => false,
        }
    }
}

/// A main-chain change written with a block: heights above `fork_height`
/// are replaced by `hashes` (the first at `fork_height + 1`).
#[derive(Debug)]
pub struct MainUpdate<'a> {
    /// The last height both chains share.
    pub fork_height: u64,
    /// The new main-chain hashes after it, ascending.
    pub hashes: &'a [BlockHash],
}

/// Bytes the header field of a `plexus.chain.Block` encoding takes at most
/// (a 96-byte header as protobuf fields, with its tag and length).
const MAX_HEADER_FIELD: usize = 160;

/// The block store. See the module documentation for the schema.
pub struct Store {
    conn: Connection,
    /// A batch ([`Store::begin`]) is open.
    batch: bool,
    /// A write of the open batch failed (its text): the batch can only be
    /// rolled back.
    batch_error: Option<String>,
    /// Tests: the next [`Store::commit`] fails (after rolling nothing back).
    #[cfg(test)]
    pub(crate) fail_next_commit: bool,
    /// Tests: the next block write fails.
    #[cfg(test)]
    pub(crate) fail_next_write: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.conn.path()).finish()
    }
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn hash_col(b: Vec<u8>) -> Result<Hash, StoreError> {
    Hash::from_slice(&b).ok_or_else(|| corrupt("a stored hash is not 32 bytes"))
}

impl Store {
    fn from_conn(conn: Connection) -> Store {
        Store {
            conn,
            batch: false,
            batch_error: None,
            #[cfg(test)]
            fail_next_commit: false,
            #[cfg(test)]
            fail_next_write: false,
        }
    }

    /// Opens (or creates) the database at `path`, creating its directory.
    /// Errors: [`StoreError::SchemaTooNew`] for a newer schema,
    /// [`StoreError::Sqlite`] when SQLite cannot open it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::Io { path: dir.display().to_string(), source })?;
        }
        check_length(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// Opens `<home>/data/chain.sqlite` ([`DEFAULT_DB_PATH`]).
    pub fn open_in_home(home: &Path) -> Result<Store, StoreError> {
        Self::open(&home.join(DEFAULT_DB_PATH))
    }

    /// A read-only connection to the existing database at `path`, for
    /// readers beside the one writer (the node's RPC): under WAL a reader
    /// sees the last committed state and neither blocks nor waits for the
    /// writer, so block reads need no chain lock. Writes through it fail.
    /// Errors: [`StoreError::Sqlite`] when the file cannot be opened (open
    /// the writer first, which creates it), [`StoreError::SchemaTooNew`],
    /// [`StoreError::Corrupt`] for a database never initialised.
    pub fn open_reader(path: &Path) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
        }
        if version == 0 {
            return Err(corrupt("the chain database has no schema yet"));
        }
        Ok(Store::from_conn(conn))
    }

    /// [`Store::open_reader`] on `<home>/data/chain.sqlite`.
    pub fn open_reader_in_home(home: &Path) -> Result<Store, StoreError> {
        Self::open_reader(&home.join(DEFAULT_DB_PATH))
    }

    /// A database in memory (tests, benchmarks).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: version, supported: SCHEMA_VERSION });
        }
        if version == 0 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
                 CREATE TABLE blocks(seq INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE,
                                     header BLOB NOT NULL, txs BLOB NOT NULL);
                 CREATE TABLE main_chain(height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        Ok(Store::from_conn(conn))
    }

    /// The genesis hash the database was created for, if any.
    pub fn genesis(&self) -> Result<Option<BlockHash>, StoreError> {
        let v: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'genesis'", [], |r| r.get(0))
            .optional()?;
        v.map(hash_col).transpose()
    }

    /// Writes the genesis block as height 0 of an empty database.
    pub fn init_genesis(&mut self, genesis: &Block) -> Result<(), StoreError> {
        let hash = genesis.hash();
        let tx = self.conn.savepoint()?;
        tx.execute("INSERT INTO meta(key, value) VALUES ('genesis', ?1)", [&hash.0[..]])?;
        insert_block(&tx, genesis, &hash)?;
        tx.execute("INSERT INTO main_chain(height, hash) VALUES (0, ?1)", [&hash.0[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// Writes a validated block and, when it changes the main chain, the
    /// new `height_to_hash` rows, in one transaction.
    pub fn put_block(
        &mut self,
        block: &Block,
        hash: &BlockHash,
        main: Option<MainUpdate<'_>>,
    ) -> Result<(), StoreError> {
        if self.batch {
            if let Some(e) = &self.batch_error {
                return Err(corrupt(format!("an earlier write of this batch failed: {e}")));
            }
            // SQLite rolls a transaction back itself on some errors (disk
            // full, I/O): writing on would commit each block alone.
            if self.conn.is_autocommit() {
                let e = "SQLite rolled the batch back".to_string();
                self.batch_error = Some(e.clone());
                return Err(corrupt(e));
            }
        }
        let r = self.write_block(block, hash, main);
        if let (true, Err(e)) = (self.batch, &r) {
            self.batch_error = Some(e.to_string());
        }
        r
    }

    fn write_block(
        &mut self,
        block: &Block,
        hash: &BlockHash,
        main: Option<MainUpdate<'_>>,
    ) -> Result<(), StoreError> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_write) {
            return Err(corrupt("injected write failure"));
        }
        // A savepoint: its own transaction, or nested in a batch
        // ([`Store::begin`]), rolled back alone if a statement fails.
        let tx = self.conn.savepoint()?;
        insert_block(&tx, block, hash)?;
        if let Some(m) = main {
            let from = i64::try_from(m.fork_height).map_err(|_| corrupt("height overflow"))?;
            tx.prepare_cached("DELETE FROM main_chain WHERE height > ?1")?.execute([from])?;
            let mut ins =
                tx.prepare_cached("INSERT INTO main_chain(height, hash) VALUES (?1, ?2)")?;
            for (i, h) in m.hashes.iter().enumerate() {
                ins.execute(params![from + 1 + i as i64, &h.0[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Opens a batch: the writes until [`Store::commit`] are one SQLite
    /// transaction (one WAL commit instead of one per block; a crash keeps
    /// all of them or none). Errors: [`StoreError::Sqlite`], and
    /// [`StoreError::Corrupt`] when a batch is already open.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        if self.batch {
            return Err(corrupt("a batch is already open"));
        }
        self.conn.execute_batch("BEGIN")?;
        self.batch = true;
        self.batch_error = None;
        Ok(())
    }

    /// Commits the open batch. Errors: the first failed write of the batch
    /// (nothing is committed), or SQLite's; the batch is then still open:
    /// call [`Store::rollback`].
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if let Some(e) = &self.batch_error {
            return Err(corrupt(format!("a write of this batch failed: {e}")));
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_commit) {
            return Err(corrupt("injected commit failure"));
        }
        self.conn.execute_batch("COMMIT")?;
        self.batch = false;
        Ok(())
    }

    /// Drops the open batch's writes (a no-op when none is open). Errors:
    /// SQLite's, and then the batch stays open (every later
    /// [`Store::begin`] fails, so nothing more is written).
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        if !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.batch = false;
        self.batch_error = None;
        Ok(())
    }

    /// Whether a batch ([`Store::begin`]) is open.
    pub fn in_batch(&self) -> bool {
        self.batch
    }

    /// Every stored header in acceptance order (the order that breaks
    /// weight ties), each checked against its stored hash.
    pub fn load_headers(&self) -> Result<Vec<Header>, StoreError> {
        let mut st = self.conn.prepare("SELECT hash, header FROM blocks ORDER BY seq")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, header) = row?;
            let bytes: &[u8; Header::SIZE] =
                header.as_slice().try_into().map_err(|_| corrupt("a header is not 96 bytes"))?;
            let h = Header::from_bytes(bytes);
            if h.hash() != hash_col(hash)? {
                return Err(corrupt(format!(
                    "header at height {} does not hash to its key",
                    h.height
                )));
            }
            out.push(h);
        }
        Ok(out)
    }

    /// The stored main chain, `height_to_hash[0..]`. Errors:
    /// [`StoreError::Corrupt`] when a height is missing.
    pub fn load_main_chain(&self) -> Result<Vec<BlockHash>, StoreError> {
        let mut st = self.conn.prepare("SELECT height, hash FROM main_chain ORDER BY height")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (height, hash) = row?;
            if height != out.len() as i64 {
                return Err(corrupt(format!("main chain has no height {}", out.len())));
            }
            out.push(hash_col(hash)?);
        }
        Ok(out)
    }

    /// A stored block's header and body blob (the txs-only encoding).
    fn block_row(&self, hash: &BlockHash) -> Result<Option<(Header, Vec<u8>)>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT header, txs FROM blocks WHERE hash = ?1")?;
        let row: Option<(Vec<u8>, Vec<u8>)> =
            st.query_row([&hash.0[..]], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let Some((header, txs)) = row else { return Ok(None) };
        let bytes: &[u8; Header::SIZE] =
            header.as_slice().try_into().map_err(|_| corrupt("a header is not 96 bytes"))?;
        Ok(Some((Header::from_bytes(bytes), txs)))
    }

    /// A stored block by hash.
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        let Some((header, txs)) = self.block_row(hash)? else { return Ok(None) };
        let body =
            pb::Block::decode(Bytes::from(txs)).map_err(|e| corrupt(format!("block body: {e}")))?;
        Ok(Some(Block { header, txs: body.txs }))
    }

    /// A stored block as its protobuf `plexus.chain.Block` encoding,
    /// without decoding its transactions: the header field, then the
    /// stored body (which holds only the `txs` field; protobuf encodings
    /// concatenate).
    pub fn block_encoded(&self, hash: &BlockHash) -> Result<Option<Vec<u8>>, StoreError> {
        self.block_encoded_framed(hash, Vec::with_capacity)
    }

    /// An upper bound of [`Store::block_encoded`]'s length for a stored
    /// block, without reading it: the stored body's length plus room for
    /// the header field (at most 160 bytes). `None` when not stored.
    pub fn block_encoded_size(&self, hash: &BlockHash) -> Result<Option<usize>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT length(txs) FROM blocks WHERE hash = ?1")?;
        let n: Option<i64> = st.query_row([&hash.0[..]], |r| r.get(0)).optional()?;
        Ok(n.map(|n| n.max(0) as usize + MAX_HEADER_FIELD))
    }

    /// As [`Store::block_encoded`], written after a prefix: `frame(n)`
    /// returns the prefix for an encoding of `n` bytes, in a vector with
    /// room for `n` more (a message around the block). The stored bytes are
    /// copied once, from SQLite's row into the result, so serving a block
    /// holds one copy of it.
    pub fn block_encoded_framed(
        &self,
        hash: &BlockHash,
        frame: impl FnOnce(usize) -> Vec<u8>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT header, txs FROM blocks WHERE hash = ?1")?;
        let mut rows = st.query([&hash.0[..]])?;
        let Some(row) = rows.next()? else { return Ok(None) };
        let header = row.get_ref(0)?.as_blob().map_err(|_| corrupt("a header is not a blob"))?;
        let header: &[u8; Header::SIZE] =
            header.try_into().map_err(|_| corrupt("a header is not 96 bytes"))?;
        let txs = row.get_ref(1)?.as_blob().map_err(|_| corrupt("a block body is not a blob"))?;
        let head =
            pb::Block { header: Some(Header::from_bytes(header).to_proto()), txs: Vec::new() };
        let mut out = frame(head.encoded_len() + txs.len());
        head.encode(&mut out).expect("a Vec grows");
        out.extend_from_slice(txs);
        Ok(Some(out))
    }

    /// How many blocks are stored.
    pub fn block_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM blocks", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Moves every page of the write-ahead log into the database file and
    /// empties the log (`PRAGMA wal_checkpoint(TRUNCATE)`), so the file
    /// alone holds the chain: at a clean stop, where a process that exits
    /// without closing its last connection would leave the log beside it.
    /// `Ok(false)` when a read open elsewhere kept part of the log (not
    /// damage: SQLite replays it at the next open). Errors: SQLite's (I/O).
    pub fn checkpoint(&self) -> Result<bool, StoreError> {
        let busy: i64 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        Ok(busy == 0)
    }

    /// SQLite's `PRAGMA integrity_check` result ("ok" when sound).
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self.conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// Refuses a database file shorter than its own header says (a truncated
/// copy or a disk fault), which SQLite would only notice when it reads a
/// lost page. The SQLite file format's header: page size at offset 16 (1
/// means 65,536), the page count at 28, valid when the change counter at
/// 24 equals the one at 92. Skipped while a non-empty `-wal` beside it may
/// hold pages past the file's end.
fn check_length(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let io = |source| StoreError::Io { path: path.display().to_string(), source };
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Ok(());
    }
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    let mut h = [0u8; 100];
    if len < 100 || file.read_exact(&mut h).is_err() || &h[..16] != b"SQLite format 3\0" {
        // Empty: a new database; anything else SQLite names itself.
        return Ok(());
    }
    let page_size = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    if h[24..28] != h[92..96] {
        return Ok(());
    }
    let pages = u64::from(u32::from_be_bytes([h[28], h[29], h[30], h[31]]));
    if len < pages * page_size {
        return Err(corrupt(format!(
            "the file is {len} bytes but its header counts {pages} pages of {page_size} bytes ({} \
             bytes): it was truncated",
            pages * page_size
        )));
    }
    Ok(())
}

fn insert_block(
    tx: &rusqlite::Savepoint<'_>,
    block: &Block,
    hash: &BlockHash,
) -> Result<(), StoreError> {
    let body = pb::Block { header: None, txs: block.txs.clone() }.encode_to_vec();
    tx.prepare_cached("INSERT INTO blocks(hash, header, txs) VALUES (?1, ?2, ?3)")?
        .execute(params![&hash.0[..], &block.header.to_bytes()[..], body])?;
    Ok(())
}
