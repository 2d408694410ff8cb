//! [`NetAddress`]: a peer address `id@host:port`, as in CometBFT's
//! `p2p/netaddress.go`.
//!
//! The host is an IPv4 address, an IPv6 address in brackets
//! (`id@[::1]:26656`) or a DNS name, resolved with hickory-resolver when
//! dialed. The id is the 40-hex-digit [`NodeId`] the dialer expects the
//! secret handshake to authenticate.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use crate::key::{NodeId, NodeIdError};

/// The network group of an IP, as Bitcoin Core's `CNetAddr::GetGroup`
/// simplified: /16 for IPv4 (`[4, a, b]`), /32 for IPv6 (`[6, a, b, c, d]`),
/// and one group each for loopback, the private ranges (10/8, 172.16/12,
/// 192.168/16, fc00::/7), link-local, carrier-grade NAT and reserved space
/// (`[0xff, n]`). The address book buckets by it and the peer manager
/// limits and evicts by it.
pub fn netgroup(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                vec![0xff, 1]
            } else if o[0] == 10 {
                vec![0xff, 2]
            } else if o[0] == 172 && (16..32).contains(&o[1]) {
                vec![0xff, 3]
            } else if o[0] == 192 && o[1] == 168 {
                vec![0xff, 4]
            } else if v4.is_link_local() {
                vec![0xff, 5]
            } else if o[0] == 100 && (64..128).contains(&o[1]) {
                vec![0xff, 8] // carrier-grade NAT
            } else if o[0] == 0 || o[0] >= 240 {
                vec![0xff, 9] // "this network", reserved and broadcast
            } else {
                vec![4, o[0], o[1]]
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return netgroup(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                vec![0xff, 1]
            } else if s[0] & 0xfe00 == 0xfc00 {
                vec![0xff, 6] // unique local
            } else if s[0] & 0xffc0 == 0xfe80 {
                vec![0xff, 7] // link local
            } else {
                let o = v6.octets();
                vec![6, o[0], o[1], o[2], o[3]]
            }
        }
    }
}

/// The host part of a [`NetAddress`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name (letters, digits, `-` and `.`; at most 253 bytes), lower
    /// cased.
    Dns(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

/// A peer address: the node's id, a host and a TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetAddress {
    /// The id the handshake must authenticate.
    pub id: NodeId,
    /// Where to connect.
    pub host: Host,
    /// TCP port (1..=65535).
    pub port: u16,
}

/// Why a string is not a [`NetAddress`]. Each variant names the part that
/// is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetAddressError {
    /// No `id@` in front.
    #[error("address {0:?} has no node id (expected id@host:port)")]
    MissingId(String),
    /// The id is not 40 lowercase hex digits.
    #[error("address {addr:?}: bad node id: {source}")]
    BadId {
        /// The address.
        addr: String,
        /// Why the id is invalid.
        source: NodeIdError,
    },
    /// No `:port` at the end.
    #[error("address {0:?} has no port (expected id@host:port)")]
    MissingPort(String),
    /// The port is not a number in 1..=65535.
    #[error("address {addr:?}: bad port {port:?} (expected 1..=65535)")]
    BadPort {
        /// The address.
        addr: String,
        /// The port text.
        port: String,
    },
    /// The host is neither an IP address nor a valid DNS name.
    #[error("address {addr:?}: bad host {host:?} (expected IPv4, [IPv6] or a DNS name)")]
    BadHost {
        /// The address.
        addr: String,
        /// The host text.
        host: String,
    },
}

fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A name of digits and dots only would be a malformed IPv4 address.
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl FromStr for NetAddress {
    type Err = NetAddressError;

    /// Parses `id@host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let addr = s.to_string();
        let (id, rest) =
            s.split_once('@').ok_or_else(|| NetAddressError::MissingId(addr.clone()))?;
        let id: NodeId =
            id.parse().map_err(|source| NetAddressError::BadId { addr: addr.clone(), source })?;
        let (host, port) =
            rest.rsplit_once(':').ok_or_else(|| NetAddressError::MissingPort(addr.clone()))?;
        let bad_port = || NetAddressError::BadPort { addr: addr.clone(), port: port.to_string() };
        let port: u16 = port.parse().map_err(|_| bad_port())?;
        if port == 0 {
            return Err(bad_port());
        }
        let bad_host = || NetAddressError::BadHost { addr: addr.clone(), host: host.to_string() };
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(IpAddr::V6(v6.parse().map_err(|_| bad_host())?))
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if valid_dns_name(host) {
            Host::Dns(host.to_ascii_lowercase())
        } else {
            return Err(bad_host());
        };
        Ok(NetAddress { id, host, port })
    }
}

impl fmt::Display for NetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.id, self.host, self.port)
    }
}

/// DNS resolution failed or returned nothing.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name:?}: {reason}")]
pub struct ResolveError {
    /// The name.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl NetAddress {
    /// A `NetAddress` for a known socket address.
    pub fn new(id: NodeId, addr: SocketAddr) -> Self {
        NetAddress { id, host: Host::Ip(addr.ip()), port: addr.port() }
    }

    /// The socket addresses to dial: the IP itself, or every address the
    /// DNS name resolves to (system resolver configuration, through
    /// hickory-resolver).
    ///
    /// # Errors
    /// [`ResolveError`] if the name does not resolve.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Dns(name) => Ok(resolve_host(name)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect()),
        }
    }
}

/// The IP addresses (A and AAAA) of a DNS name, from the system resolver
/// configuration through hickory-resolver; `localhost` is answered locally.
///
/// # Errors
/// [`ResolveError`] if the name does not resolve or has no address.
pub async fn resolve_host(name: &str) -> Result<Vec<IpAddr>, ResolveError> {
    let err = |reason: String| ResolveError { name: name.to_string(), reason };
    if name == "localhost" {
        return Ok(vec![IpAddr::from([127, 0, 0, 1])]);
    }
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .map_err(|e| err(e.to_string()))?
        .build()
        .map_err(|e| err(e.to_string()))?;
    let ips = resolver.lookup_ip(name).await.map_err(|e| err(e.to_string()))?;
    let out: Vec<IpAddr> = ips.iter().collect();
    if out.is_empty() {
        return Err(err("no addresses".into()));
    }
    Ok(out)
}

/// Whether [`netgroup`] puts `ip` in one of the local groups (loopback,
/// private, link-local, CGNAT, reserved) rather than a routable /16 or /32.
pub fn is_local_group(ip: IpAddr) -> bool {
    netgroup(ip)[0] == 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn parses_and_prints_every_host_kind() {
        for s in [
            format!("{ID}@127.0.0.1:26656"),
            format!("{ID}@[::1]:26656"),
            format!("{ID}@[2001:db8::7]:1"),
            format!("{ID}@seed.plexus.example:65535"),
        ] {
            let a: NetAddress = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        let a: NetAddress = format!("{ID}@Seed.Example:5").parse().unwrap();
        assert_eq!(a.host, Host::Dns("seed.example".into()));
    }

    #[test]
    fn bad_strings_name_the_bad_part() {
        use NetAddressError::*;
        let e = |s: String| s.parse::<NetAddress>().unwrap_err();
        assert!(matches!(e("127.0.0.1:1".into()), MissingId(_)));
        assert!(matches!(e("abc@127.0.0.1:1".into()), BadId { .. }));
        assert!(matches!(e(format!("{ID}@127.0.0.1")), MissingPort(_)));
        assert!(matches!(e(format!("{ID}@127.0.0.1:0")), BadPort { .. }));
        assert!(matches!(e(format!("{ID}@127.0.0.1:70000")), BadPort { .. }));
        assert!(matches!(e(format!("{ID}@127.0.0.1:x")), BadPort { .. }));
        assert!(matches!(e(format!("{ID}@::1:5")), BadHost { .. }));
        assert!(matches!(e(format!("{ID}@[::zz]:5")), BadHost { .. }));
        assert!(matches!(e(format!("{ID}@300.1.1.1:5")), BadHost { .. }));
        assert!(matches!(e(format!("{ID}@bad_host:5")), BadHost { .. }));
        assert!(matches!(e(format!("{ID}@:5")), BadHost { .. }));
        let msg = e(format!("{ID}@127.0.0.1:0")).to_string();
        assert!(msg.contains("bad port"), "{msg}");
    }

    #[tokio::test]
    async fn ip_and_localhost_resolve_without_dns() {
        let a: NetAddress = format!("{ID}@127.0.0.1:9").parse().unwrap();
        assert_eq!(a.resolve().await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
        let a: NetAddress = format!("{ID}@localhost:9").parse().unwrap();
        assert_eq!(a.resolve().await.unwrap(), vec!["127.0.0.1:9".parse().unwrap()]);
    }
}
