//! Node identity: [`NodeKey`] (the static X25519 Noise keypair) and
//! [`NodeId`] (its public, printable name).
//!
//! As in CometBFT's `p2p/key.go`, the key lives in `node_key.json`; unlike
//! CometBFT the key is the Noise static key itself (X25519), so the identity
//! is proved by the Noise XX handshake with no extra signature step.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of a [`NodeId`] in bytes (20), printed as 40 lowercase hex digits.
pub const NODE_ID_LEN: usize = 20;

/// The public name of a node: the first 20 bytes of SHA-256 of its static
/// X25519 public key, printed as 40 lowercase hex characters (the
/// `id` in `id@host:port`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    /// The id of the node whose static X25519 public key is `pubkey` (32 bytes).
    pub fn from_public_key(pubkey: &[u8]) -> NodeId {
        let digest = Sha256::digest(pubkey);
        let mut id = [0u8; NODE_ID_LEN];
        id.copy_from_slice(&digest[..NODE_ID_LEN]);
        NodeId(id)
    }

    /// The 20 raw bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl Serialize for NodeId {
    /// As its 40-hex-digit string.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a [`NodeId`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    /// Not 40 characters long.
    #[error("node id must be 40 hex characters, got {0}")]
    Length(usize),
    /// Contains something other than lowercase hex digits.
    #[error("node id must be lowercase hex: {0:?}")]
    NotHex(String),
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    /// Parses 40 lowercase hex characters. Upper case is refused so that an
    /// id has exactly one printed form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != NODE_ID_LEN * 2 {
            return Err(NodeIdError::Length(s.len()));
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(NodeIdError::NotHex(s.to_string()));
        }
        let mut id = [0u8; NODE_ID_LEN];
        hex::decode_to_slice(s, &mut id).map_err(|_| NodeIdError::NotHex(s.to_string()))?;
        Ok(NodeId(id))
    }
}

/// A node's static X25519 keypair, the Noise `s` key of the XX handshake.
///
/// Saved as `node_key.json` with mode 0600:
/// `{"type":"plexus/X25519","private_key":"<64 hex>","public_key":"<64 hex>"}`.
#[derive(Clone)]
pub struct NodeKey {
    private: [u8; 32],
    public: [u8; 32],
}

/// Errors loading or saving a [`NodeKey`].
#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    /// The file could not be read or written.
    #[error("node key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid node key (bad JSON, wrong type, bad hex,
    /// or a public key that does not match the private key).
    #[error("node key file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Key generation failed in the crypto backend.
    #[error("node key generation failed: {0}")]
    Generate(String),
}

#[derive(Serialize, Deserialize)]
struct NodeKeyFile {
    #[serde(rename = "type")]
    kind: String,
    private_key: String,
    public_key: String,
}

const KEY_TYPE: &str = "plexus/X25519";

impl NodeKey {
    /// A fresh random keypair (from the OS RNG, through snow's resolver).
    pub fn generate() -> NodeKey {
        let kp = crate::secret::noise_builder(crate::secret::CryptoBackend::default())
            .generate_keypair()
            .expect("X25519 keypair generation with the OS RNG does not fail");
        Self::from_parts(&kp.private, &kp.public).expect("snow returns 32-byte keys")
    }

    /// A keypair from a 32-byte X25519 private key; the public key is derived.
    ///
    /// # Errors
    /// [`NodeKeyError::Generate`] if `private` is not 32 bytes.
    pub fn from_private_key(private: &[u8]) -> Result<NodeKey, NodeKeyError> {
        let public = crate::secret::x25519_public(private).map_err(NodeKeyError::Generate)?;
        Self::from_parts(private, &public)
    }

    fn from_parts(private: &[u8], public: &[u8]) -> Result<NodeKey, NodeKeyError> {
        let private: [u8; 32] = private
            .try_into()
            .map_err(|_| NodeKeyError::Generate("private key is not 32 bytes".into()))?;
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NodeKeyError::Generate("public key is not 32 bytes".into()))?;
        Ok(NodeKey { private, public })
    }

    /// The 32-byte X25519 private key (the Noise static secret).
    pub fn private_key(&self) -> &[u8; 32] {
        &self.private
    }

    /// The 32-byte X25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// This node's [`NodeId`].
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.public)
    }

    /// Writes the key as JSON to `path` with permissions 0600 (on Unix),
    /// atomically: into a temporary file beside it (created 0600), synced,
    /// then renamed over `path`, so a crash never leaves a truncated key.
    ///
    /// # Errors
    /// [`NodeKeyError::Io`] if the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), NodeKeyError> {
        let path = path.as_ref();
        let io = |source| NodeKeyError::Io { path: path.display().to_string(), source };
        let file = NodeKeyFile {
            kind: KEY_TYPE.into(),
            private_key: hex::encode(self.private),
            public_key: hex::encode(self.public),
        };
        let json = serde_json::to_vec_pretty(&file).expect("serialising plain strings succeeds");
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            opts.mode(0o600);
            let f = opts.open(&tmp).map_err(io)?;
            // The mode above applies only to a new file; tighten an old one.
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut f, &json).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; not every platform allows it.
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Reads a key written by [`NodeKey::save`].
    ///
    /// # Errors
    /// [`NodeKeyError::Io`] if the file cannot be read; [`NodeKeyError::Invalid`]
    /// if it is not a Plexus node key or its public key does not match.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeKey, NodeKeyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let invalid = |reason: String| NodeKeyError::Invalid { path: shown.clone(), reason };
        let bytes = std::fs::read(path)
            .map_err(|source| NodeKeyError::Io { path: shown.clone(), source })?;
        let file: NodeKeyFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.kind != KEY_TYPE {
            return Err(invalid(format!("type is {:?}, expected {KEY_TYPE:?}", file.kind)));
        }
        let private =
            hex::decode(&file.private_key).map_err(|e| invalid(format!("private_key: {e}")))?;
        if private.len() != 32 {
            return Err(invalid(format!("private_key is {} bytes, expected 32", private.len())));
        }
        let key = NodeKey::from_private_key(&private).map_err(|e| invalid(e.to_string()))?;
        if hex::decode(&file.public_key).ok().as_deref() != Some(&key.public[..]) {
            return Err(invalid("public_key does not match private_key".into()));
        }
        Ok(key)
    }

    /// Loads the key at `path`, or generates and saves a new one if the file
    /// does not exist (CometBFT's `LoadOrGenNodeKey`).
    ///
    /// # Errors
    /// As [`NodeKey::load`] and [`NodeKey::save`].
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<NodeKey, NodeKeyError> {
        let path = path.as_ref();
        if path.exists() {
            return Self::load(path);
        }
        let key = NodeKey::generate();
        key.save(path)?;
        Ok(key)
    }
}

impl fmt::Debug for NodeKey {
    /// Never prints the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.node_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_sha256_prefix_hex() {
        let id = NodeId::from_public_key(&[7u8; 32]);
        let want = hex::encode(&Sha256::digest([7u8; 32])[..20]);
        assert_eq!(id.to_string(), want);
        assert_eq!(id.to_string().len(), 40);
        assert_eq!(want.parse::<NodeId>().unwrap(), id);
    }

    #[test]
    fn node_id_parse_errors() {
        assert_eq!("abc".parse::<NodeId>(), Err(NodeIdError::Length(3)));
        let upper = "A".repeat(40);
        assert!(matches!(upper.parse::<NodeId>(), Err(NodeIdError::NotHex(_))));
    }

    #[test]
    fn save_load_roundtrip_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key.json");
        let key = NodeKey::load_or_generate(&path).unwrap();
        let again = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(key.node_id(), again.node_id());
        assert_eq!(key.private_key(), again.private_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{key:?}").contains(&hex::encode(key.private_key())));
    }

    #[test]
    fn load_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(NodeKey::load(&path), Err(NodeKeyError::Invalid { .. })));
        let key = NodeKey::generate();
        key.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let tampered = text.replace(&hex::encode(key.public_key()), &"00".repeat(32));
        std::fs::write(&path, tampered).unwrap();
        assert!(matches!(NodeKey::load(&path), Err(NodeKeyError::Invalid { .. })));
        assert!(matches!(NodeKey::load(dir.path().join("missing")), Err(NodeKeyError::Io { .. })));
    }
}
