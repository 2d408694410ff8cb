//! The home directory: its files, its lock (`LOCK`), its record
//! (`home.json`: what it has held) and opening what it holds, with errors
//! that name the file, what is wrong with it and the way out.
//!
//! A file that disappears from a home that had it is refused, never
//! replaced silently: a deleted `node_key.json` would make the node a
//! stranger to every peer that knew it, a deleted or emptied
//! `chain.sqlite` would start over at height 0. `--new-node-key` and
//! `--resync` say it on purpose (Bitcoin Core's `-reindex` is the model:
//! a damaged block store stops the node until told).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use plexus_p2p::NodeKey;
use plexus_reactors::chain::{Blockchain, BlockchainConfig, NetworkParams, Store, StoreError};
use serde::{Deserialize, Serialize};

/// The files of a home directory.
#[derive(Clone, Debug)]
pub struct Home(pub PathBuf);

/// The exclusive lock on a home ([`Home::lock`]); released on drop.
#[derive(Debug)]
pub struct HomeLock {
    _file: std::fs::File,
}

/// What to do about a missing or damaged file instead of refusing to
/// start (`plexus start` flags). Default: refuse.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions {
    /// `--resync`: start a chain store that is missing, empty or damaged
    /// again from genesis (a damaged one is kept beside it, renamed
    /// `chain.sqlite.damaged-<unix seconds>`), and sync from peers.
    pub resync: bool,
    /// `--new-node-key`: generate a node key where this home's is missing
    /// (the node takes a new identity).
    pub new_node_key: bool,
}

/// `home.json`: what this home has held, so a file that disappears is
/// noticed. Written atomically (a temporary file renamed over it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HomeRecord {
    /// The node id of the home's node key, once it had one.
    pub node_id: Option<String>,
    /// Whether a chain store was opened here.
    pub chain_store: bool,
}

impl Home {
    /// `--home`, else `$PLEXUS_HOME`, else `~/.plexus`.
    pub fn resolve(flag: Option<PathBuf>) -> Home {
        let dir = flag
            .or_else(|| std::env::var_os("PLEXUS_HOME").map(PathBuf::from))
            .unwrap_or_else(|| {
                let home =
                    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
                home.join(".plexus")
            });
        Home(dir)
    }

    /// `LOCK`: held exclusively by the process running on this home.
    pub fn lock_file(&self) -> PathBuf {
        self.0.join("LOCK")
    }

    /// Takes the home's exclusive lock (an OS file lock on `<home>/LOCK`,
    /// `std::fs::File::try_lock`: `flock` on Unix, `LockFileEx` on
    /// Windows), held until the returned [`HomeLock`] drops or the process
    /// ends (also on SIGKILL: the OS releases it), and writes our pid into
    /// the file. Bitcoin Core's `.lock` in its data directory is the
    /// model: two processes on one home would both write its chain store.
    /// Errors: the home is in use (`home <path> is in use by process
    /// <pid>`), or the file cannot be created or locked.
    pub fn lock(&self) -> anyhow::Result<HomeLock> {
        use std::io::Write;
        let path = self.lock_file();
        std::fs::create_dir_all(&self.0)
            .map_err(|e| anyhow!("cannot create home {}: {e}", self.0.display()))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = pid.trim();
                let pid = if pid.is_empty() { "unknown" } else { pid };
                bail!(
                    "home {} is in use by process {pid} (it holds {}); stop it, or give this \
                     node another --home",
                    self.0.display(),
                    path.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => bail!("cannot lock {}: {e}", path.display()),
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(HomeLock { _file: file })
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    /// `node_key.json`.
    pub fn node_key(&self) -> PathBuf {
        self.0.join("node_key.json")
    }
    /// `genesis.json`.
    pub fn genesis(&self) -> PathBuf {
        self.0.join("genesis.json")
    }
    /// `home.json` ([`HomeRecord`]).
    pub fn record(&self) -> PathBuf {
        self.0.join("home.json")
    }
    /// `data/chain.sqlite` (the chain store; `-wal` and `-shm` beside it).
    pub fn chain_store(&self) -> PathBuf {
        self.0.join(plexus_reactors::chain::store::DEFAULT_DB_PATH)
    }
    /// `data/addrbook.json`.
    pub fn addrbook(&self) -> PathBuf {
        self.0.join("data/addrbook.json")
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.0
    }
}

impl HomeRecord {
    /// Reads `home.json`; a home without one has held nothing yet.
    /// Errors: the file cannot be read or is not valid JSON (named).
    pub fn load(home: &Home) -> anyhow::Result<HomeRecord> {
        let path = home.record();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow!(
                    "{} is not valid ({e}); it records what this home held: fix it, or delete \
                     it to stop those checks",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HomeRecord::default()),
            Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Writes `home.json` (temporary file, then rename).
    pub fn save(&self, home: &Home) -> anyhow::Result<()> {
        let path = home.record();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// The home's node key: loaded, or generated when the home never had one
/// (or `opts.new_node_key`). Records its id in `home.json`. Errors: the
/// file is unreadable or invalid (named, with the way out), or missing
/// in a home that had one.
pub fn node_key(home: &Home, opts: &StartOptions) -> anyhow::Result<NodeKey> {
    let path = home.node_key();
    let mut rec = HomeRecord::load(home)?;
    let key = if path.exists() {
        NodeKey::load(&path).map_err(|e| {
            anyhow!(
                "{e}; restore the file from a backup, or move it aside and start with \
                 --new-node-key to take a new identity"
            )
        })?
    } else {
        match (&rec.node_id, opts.new_node_key) {
            (Some(id), false) => bail!(
                "node key {} is missing, but this home ran as node {id} (recorded in {}); \
                 restore the file from a backup to keep that identity, or start with \
                 --new-node-key to take a new one",
                path.display(),
                home.record().display()
            ),
            (old, _) => {
                let key = NodeKey::generate();
                key.save(&path).with_context(|| format!("writing {}", path.display()))?;
                if let Some(old) = old {
                    tracing::warn!(old = %old, new = %key.node_id(), "--new-node-key: this home's node has a new identity");
                }
                key
            }
        }
    };
    let id = key.node_id().to_string();
    if rec.node_id.as_deref() != Some(id.as_str()) {
        rec.node_id = Some(id);
        rec.save(home)?;
    }
    Ok(key)
}

/// The network of the home's `genesis.json`. Errors name the file.
pub fn genesis(home: &Home) -> anyhow::Result<NetworkParams> {
    NetworkParams::load(&home.genesis()).map_err(|e| {
        anyhow!(
            "{e}; restore the file (the network's genesis file; `plexus init` in an empty home \
             writes the devnet's)"
        )
    })
}

/// Renames the chain store and its `-wal`/`-shm` files to
/// `<name>.damaged-<unix seconds>`; returns the new store path.
fn move_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let kept = PathBuf::from(format!("{}.damaged-{secs}", path.display()));
    // The log first: were the main file moved and the log left, a fresh
    // store opened beside it would have SQLite drop that log.
    for suffix in ["-wal", "-shm", ""] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", kept.display()));
            std::fs::rename(&from, &to)
                .with_context(|| format!("moving {} aside to {}", from.display(), to.display()))?;
        }
    }
    Ok(kept)
}

/// Opens the home's chain store and the chain on it, and a read-only
/// connection beside it (for the RPC). Refuses, naming the file and the
/// way out: a store missing or empty in a home that had one, a damaged
/// store (not SQLite, malformed, inconsistent tables), a store of another
/// network than `genesis.json` (an edited genesis file). With
/// `opts.resync` those start again from genesis instead (a damaged file
/// is kept, renamed).
pub fn open_chain(
    home: &Home,
    params: Arc<NetworkParams>,
    cfg: BlockchainConfig,
    opts: &StartOptions,
) -> anyhow::Result<(Blockchain, Store)> {
    let path = home.chain_store();
    let shown = path.display();
    let mut rec = HomeRecord::load(home)?;
    let size = std::fs::metadata(&path).map(|m| m.len()).ok();
    if rec.chain_store && size.unwrap_or(0) == 0 {
        let what = if size.is_none() { "is missing" } else { "is empty (0 bytes)" };
        if !opts.resync {
            bail!(
                "chain store {shown} {what}, but this home had one (recorded in {}); if it was \
                 moved, put it back; to download the chain again from peers, start with --resync",
                home.record().display()
            );
        }
        tracing::warn!(path = %shown, "--resync: the chain store {what}; syncing again from genesis");
    }
    if size == Some(0) {
        // SQLite would take a 0-byte file as a new database, but a `-wal`
        // left beside it belongs to the lost one.
        move_aside(&path)?;
    }
    let open = |params: Arc<NetworkParams>| {
        Store::open(&path).and_then(|s| Blockchain::open(params, s, cfg.clone()))
    };
    let chain = match open(params.clone()) {
        Ok(chain) => chain,
        Err(e) if e.is_damage() && opts.resync => {
            let kept = move_aside(&path)?;
            tracing::warn!(
                path = %shown, kept = %kept.display(), error = %e,
                "--resync: the chain store is damaged; it is kept aside and the chain synced again"
            );
            open(params.clone()).map_err(|e| anyhow!("chain store {shown}: {e}"))?
        }
        Err(e) if e.is_damage() => bail!(
            "chain store {shown} is damaged ({e}); start with --resync to move it aside (it is \
             kept, renamed) and download the chain again from peers"
        ),
        Err(StoreError::WrongNetwork { stored, expected }) => bail!(
            "chain store {shown} holds the chain of genesis {stored}, but genesis file {} gives \
             genesis {expected}: if the genesis file was edited or replaced, restore it; to run \
             another network, use another --home",
            home.genesis().display()
        ),
        Err(e) => bail!("chain store {shown}: {e}"),
    };
    if !rec.chain_store {
        rec.chain_store = true;
        rec.save(home)?;
    }
    let reader = Store::open_reader(&path)
        .map_err(|e| anyhow!("chain store {shown} (a read-only connection): {e}"))?;
    Ok((chain, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_is_locked_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home(dir.path().join("h"));
        let held = home.lock().unwrap();
        let pid = std::process::id().to_string();
        assert_eq!(std::fs::read_to_string(home.lock_file()).unwrap().trim(), pid);
        // A second holder (another open file: flock locks are per open
        // file, so this is what a second process sees) is refused, named.
        let e = home.lock().unwrap_err().to_string();
        assert!(e.contains("is in use by process") && e.contains(&pid), "{e}");
        drop(held);
        home.lock().expect("free again once the holder is gone");
    }

    fn params() -> Arc<NetworkParams> {
        Arc::new(NetworkParams::regtest())
    }

    fn open(home: &Home, opts: StartOptions) -> anyhow::Result<(Blockchain, Store)> {
        open_chain(home, params(), BlockchainConfig::default(), &opts)
    }

    #[test]
    fn a_lost_node_key_is_refused_unless_a_new_one_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home(dir.path().to_path_buf());
        let first = node_key(&home, &StartOptions::default()).unwrap();
        assert_eq!(node_key(&home, &StartOptions::default()).unwrap().node_id(), first.node_id());
        std::fs::remove_file(home.node_key()).unwrap();
        let e = node_key(&home, &StartOptions::default()).unwrap_err().to_string();
        let path = home.node_key().display().to_string();
        assert!(e.contains(&path) && e.contains(&first.node_id().to_string()), "{e}");
        assert!(e.contains("--new-node-key"), "{e}");
        assert!(!home.node_key().exists(), "a key was written anyway");
        let opts = StartOptions { new_node_key: true, ..StartOptions::default() };
        let new = node_key(&home, &opts).unwrap();
        assert_ne!(new.node_id(), first.node_id());
        // A garbled key names its file.
        std::fs::write(home.node_key(), "{").unwrap();
        let e = node_key(&home, &StartOptions::default()).unwrap_err().to_string();
        assert!(e.contains(&path), "{e}");
    }

    #[test]
    fn a_lost_or_damaged_chain_store_is_refused_and_resynced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home(dir.path().to_path_buf());
        let path = home.chain_store();
        let shown = path.display().to_string();
        // A fresh home opens at genesis and records its store.
        drop(open(&home, StartOptions::default()).unwrap());
        assert!(HomeRecord::load(&home).unwrap().chain_store);
        drop(open(&home, StartOptions::default()).unwrap());
        let resync = StartOptions { resync: true, ..StartOptions::default() };

        // Deleted, then emptied: refused, naming the file; --resync opens.
        for what in ["is missing", "is empty"] {
            let _ = std::fs::remove_file(format!("{shown}-wal"));
            if what == "is missing" {
                std::fs::remove_file(&path).unwrap();
            } else {
                std::fs::write(&path, b"").unwrap();
            }
            let e = open(&home, StartOptions::default()).unwrap_err().to_string();
            assert!(e.contains(&shown) && e.contains(what) && e.contains("--resync"), "{e}");
            let (chain, _) = open(&home, resync).unwrap();
            assert_eq!(chain.height(), 0);
        }

        // Truncated (after a clean stop's checkpoint): named as damaged.
        let (chain, _) = open(&home, StartOptions::default()).unwrap();
        assert!(chain.store().checkpoint().unwrap());
        drop(chain);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
        let e = open(&home, StartOptions::default()).unwrap_err().to_string();
        assert!(e.contains(&shown) && e.contains("truncated"), "{e}");

        // Garbled: named as damaged; --resync keeps the bad file aside and
        // starts again.
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = open(&home, StartOptions::default()).unwrap_err().to_string();
        assert!(e.contains(&shown) && e.contains("is damaged"), "{e}");
        let bad = std::fs::read(&path).unwrap();
        open(&home, resync).unwrap();
        let kept: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("chain.sqlite.damaged-"))
            .collect();
        assert!(kept.iter().any(|k| std::fs::read(k.path()).unwrap() == bad), "not kept");
    }

    #[test]
    fn a_store_of_another_genesis_blames_the_genesis_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home(dir.path().to_path_buf());
        drop(open(&home, StartOptions::default()).unwrap());
        let other = Arc::new(NetworkParams::devnet());
        let e = open_chain(&home, other, BlockchainConfig::default(), &StartOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&home.genesis().display().to_string()), "{e}");
        assert!(e.contains(&home.chain_store().display().to_string()), "{e}");
    }
}
