//! `plexus`: the node binary. `plexus start` runs a node, `plexus devnet`
//! a local network of nodes; see `plexus --help` and README.md.

use plexus_node::{cli, config, home, node};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rand::Rng;

use config::NodeConfig;
use home::{Home, StartOptions};
use node::Node;

/// Plexus: a Tendermint-style p2p stack and a proof-of-work chain node.
#[derive(Parser)]
#[command(name = "plexus", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write config.toml, node_key.json and genesis.json into the home.
    Init {
        /// Home directory (default $PLEXUS_HOME, else ~/.plexus).
        #[arg(long)]
        home: Option<PathBuf>,
        /// Name shown to peers.
        #[arg(long, default_value = "plexus")]
        moniker: String,
        /// A genesis file to copy (default: the embedded devnet).
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Generate a node key where this home's is missing (a new
        /// identity); without it a lost key is refused.
        #[arg(long)]
        new_node_key: bool,
    },
    /// Run the node (initialising the home with defaults on first start).
    Start(StartArgs),
    /// Print this node's id.
    ShowNodeId {
        /// Home directory.
        #[arg(long)]
        home: Option<PathBuf>,
    },
    /// Print a running node's chain, sync, mining and peer count (its RPC).
    Status {
        /// Home directory: its config.toml gives the RPC address, its
        /// tls/ca.crt is trusted for HTTPS.
        #[arg(long)]
        home: Option<PathBuf>,
        /// The node's RPC URL (default: from the home's config).
        #[arg(long)]
        rpc: Option<String>,
    },
    /// Print a running node's peers, one line each (its RPC).
    Peers {
        /// Home directory (as for `status`).
        #[arg(long)]
        home: Option<PathBuf>,
        /// The node's RPC URL (default: from the home's config).
        #[arg(long)]
        rpc: Option<String>,
    },
    /// Print the version.
    Version,
    /// Run a local network of nodes on loopback until Ctrl-C.
    Devnet {
        /// Nodes (the first is the seed when there are two or more).
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// How many of the others mine.
        #[arg(long, default_value_t = 1)]
        miners: usize,
        /// Homes go under this directory (default: a temporary one).
        #[arg(long)]
        home: Option<PathBuf>,
        /// Each node submits this many random words per minute.
        #[arg(long, default_value_t = 0)]
        words_per_minute: u32,
        /// Log filter (RUST_LOG wins).
        #[arg(long, default_value = "info")]
        log: String,
        /// A genesis file for every node (default: the embedded devnet).
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct StartArgs {
    /// Home directory (default $PLEXUS_HOME, else ~/.plexus).
    #[arg(long)]
    home: Option<PathBuf>,
    /// P2P port.
    #[arg(short = 'p', long = "p2p-port")]
    p2p_port: Option<u16>,
    /// A well-known peer to join through: `-k HOST PORT`, `-k HOST:PORT` or
    /// `-k ID@HOST:PORT`; repeatable.
    #[arg(short = 'k', long = "peer", num_args = 1..=2, action = clap::ArgAction::Append, value_names = ["HOST", "PORT"])]
    peers: Vec<String>,
    /// Mine.
    #[arg(short = 'm', long)]
    mine: bool,
    /// Miner threads.
    #[arg(long)]
    mine_threads: Option<usize>,
    /// Port of the web page, RPC and metrics.
    #[arg(short = 'i', long = "web-port")]
    web_port: Option<u16>,
    /// Mine on the GPU (needs a build with GPU support).
    #[arg(short = 'c', long)]
    cuda: bool,
    /// Run as a seed/introducer.
    #[arg(long)]
    seed: bool,
    /// Name shown to peers.
    #[arg(long)]
    moniker: Option<String>,
    /// "text" or "json".
    #[arg(long)]
    log_format: Option<String>,
    /// Start a chain store that is missing, empty or damaged again from
    /// genesis and sync it from peers (a damaged file is kept, renamed
    /// chain.sqlite.damaged-<time>); without it such a store is refused.
    #[arg(long)]
    resync: bool,
    /// Generate a node key where this home's is missing (a new identity);
    /// without it a lost key is refused.
    #[arg(long)]
    new_node_key: bool,
}

fn init_logging(filter: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Logs go to stderr; stdout carries what commands print for people.
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" { b.json().try_init() } else { b.try_init() };
}

/// Joins `-k` values: a bare port after a host without one (`-k HOST
/// PORT`) belongs to it, giving `HOST:PORT`.
fn peer_strings(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let bare_port = v.parse::<u16>().is_ok();
        match out.last_mut() {
            Some(last) if bare_port && !last.contains(':') => {
                last.push(':');
                last.push_str(v);
            }
            _ => out.push(v.clone()),
        }
    }
    out
}

fn start_config(a: &StartArgs, home: &Home) -> anyhow::Result<NodeConfig> {
    // `start` has written the file if it was missing.
    let mut cfg = NodeConfig::load(&home.config())?;
    if let Some(p) = a.p2p_port {
        cfg.p2p.port = p;
    }
    for p in peer_strings(&a.peers) {
        if !cfg.p2p.peers.contains(&p) {
            cfg.p2p.peers.push(p);
        }
    }
    for p in &cfg.p2p.peers {
        node::PeerArg::parse(p)?;
    }
    if a.mine {
        cfg.mining.enabled = true;
    }
    if let Some(t) = a.mine_threads {
        cfg.mining.threads = t;
    }
    if let Some(p) = a.web_port {
        cfg.rpc.port = p;
    }
    if a.seed {
        cfg.p2p.seed_mode = true;
    }
    if let Some(m) = &a.moniker {
        cfg.moniker = m.clone();
    }
    if let Some(f) = &a.log_format {
        cfg.log.format = f.clone();
    }
    Ok(cfg)
}

/// Waits for Ctrl-C, SIGTERM or an RPC `stop_node`.
async fn until_stop(nodes: &[Arc<Node>]) {
    let term = async {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    };
    let rpc_stop = async {
        let waits: Vec<_> = nodes.iter().map(|n| Box::pin(n.stop_requested.notified())).collect();
        if waits.is_empty() {
            std::future::pending::<()>().await;
        }
        futures_util::future::select_all(waits).await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = rpc_stop => {}
    }
}

async fn devnet(
    nodes: usize,
    miners: usize,
    home: Option<PathBuf>,
    wpm: u32,
    genesis: Option<PathBuf>,
) -> anyhow::Result<()> {
    anyhow::ensure!(nodes >= 1, "--nodes must be at least 1");
    let tmp;
    let root = match home {
        Some(h) => h,
        None => {
            tmp = tempfile::Builder::new().prefix("plexus-devnet-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut running: Vec<Arc<Node>> = Vec::new();
    let mut seed_addr = None;
    for i in 0..nodes {
        let mut cfg = NodeConfig { moniker: format!("node{i}"), ..NodeConfig::default() };
        cfg.p2p.host = "127.0.0.1".into();
        cfg.p2p.port = 0;
        cfg.p2p.addr_book_strict = false;
        cfg.p2p.pex_period_s = 5;
        cfg.rpc.port = 0;
        let seed = nodes > 1 && i == 0;
        cfg.p2p.seed_mode = seed;
        // Miners are the first non-seed nodes.
        let first = usize::from(nodes > 1);
        cfg.mining.enabled = i >= first && i < first + miners;
        if let Some(a) = &seed_addr {
            cfg.p2p.peers = vec![format!("{a}")];
        }
        let home = Home(root.join(format!("node{i}")));
        let lock = home.lock()?;
        // A devnet home is written fresh each time from these settings.
        if home.config().exists() {
            std::fs::remove_file(home.config())?;
        }
        let opts = StartOptions::default();
        node::init(&home, &cfg, genesis.as_deref(), &opts)?;
        let node = Node::start(home, lock, cfg, opts).await?;
        if seed {
            seed_addr = node.p2p_address();
        }
        running.push(node);
    }
    println!("plexus devnet: {nodes} nodes, homes under {}", root.display());
    for n in &running {
        let role = if n.cfg.p2p.seed_mode {
            "seed"
        } else if n.cfg.mining.enabled {
            "miner"
        } else {
            "node"
        };
        println!(
            "  {:<6} {:<5} {}  {}",
            n.cfg.moniker,
            role,
            n.web_url(),
            n.p2p_address().map(|a| a.to_string()).unwrap_or_default()
        );
    }
    println!("Ctrl-C stops every node.");
    if wpm > 0 {
        for n in running.iter().filter(|n| !n.cfg.p2p.seed_mode) {
            let n = n.clone();
            let every = Duration::from_secs_f64(60.0 / f64::from(wpm));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = n.sw.stopped() => break,
                    }
                    let word: String = {
                        let mut rng = rand::rng();
                        (0..8).map(|_| char::from(rng.random_range(b'a'..=b'z'))).collect()
                    };
                    let _ =
                        n.mem.submit(bytes::Bytes::from(format!("{} says {word}", n.cfg.moniker)));
                }
            });
        }
    }
    until_stop(&running).await;
    println!("stopping…");
    for n in &running {
        n.shutdown().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Version) {
        Cmd::Version => println!("plexus {}", env!("CARGO_PKG_VERSION")),
        Cmd::Status { home, rpc } => {
            let home = Home::resolve(home);
            let url = cli::rpc_url(&home, rpc.as_deref())?;
            let s = tokio::task::spawn_blocking(move || cli::call(&home, &url, "status")).await??;
            print!("{}", cli::status(&s));
        }
        Cmd::Peers { home, rpc } => {
            let home = Home::resolve(home);
            let url = cli::rpc_url(&home, rpc.as_deref())?;
            let ni =
                tokio::task::spawn_blocking(move || cli::call(&home, &url, "net_info")).await??;
            print!("{}", cli::peers(&ni));
        }
        Cmd::Init { home, moniker, genesis, new_node_key } => {
            let home = Home::resolve(home);
            let _lock = home.lock()?;
            let cfg = NodeConfig { moniker, ..NodeConfig::default() };
            let opts = StartOptions { new_node_key, ..StartOptions::default() };
            node::init(&home, &cfg, genesis.as_deref(), &opts)?;
            println!("initialised {}", home.dir().display());
        }
        Cmd::ShowNodeId { home } => {
            let home = Home::resolve(home);
            // A running node holds the lock: its key is read, not written.
            if !home.node_key().exists() {
                let _lock = home.lock()?;
                node::init(&home, &NodeConfig::default(), None, &StartOptions::default())?;
            }
            println!("{}", plexus_p2p::NodeKey::load(home.node_key())?.node_id());
        }
        Cmd::Start(a) => {
            if a.cuda {
                anyhow::bail!("--cuda: this build of plexus has no GPU support; mine on the CPU with -m [--mine-threads N]");
            }
            let home = Home::resolve(a.home.clone());
            // Before anything is read or written: one process per home.
            let lock = home.lock()?;
            let opts = StartOptions { resync: a.resync, new_node_key: a.new_node_key };
            // A first start writes the default config; flags apply to this
            // run only (as on every later start).
            node::init(&home, &NodeConfig::default(), None, &opts)?;
            let cfg = start_config(&a, &home)?;
            init_logging(&cfg.log.filter, &cfg.log.format);
            let node = Node::start(home, lock, cfg, opts).await?;
            println!("node {} · web page and RPC at {}", node.sw.node_id(), node.web_url());
            until_stop(std::slice::from_ref(&node)).await;
            node.shutdown().await;
        }
        Cmd::Devnet { nodes, miners, home, words_per_minute, log, genesis } => {
            init_logging(&log, "text");
            devnet(nodes, miners, home, words_per_minute, genesis).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_flags_in_every_form() {
        let cli = Cli::try_parse_from([
            "plexus",
            "start",
            "-k",
            "127.0.0.1",
            "26656",
            "-k",
            "10.0.0.1:7",
            "-k",
            "0123456789abcdef0123456789abcdef01234567@h:9",
        ])
        .unwrap();
        let Some(Cmd::Start(a)) = cli.cmd else { panic!("start") };
        assert_eq!(
            peer_strings(&a.peers),
            vec!["127.0.0.1:26656", "10.0.0.1:7", "0123456789abcdef0123456789abcdef01234567@h:9"]
        );
        for p in peer_strings(&a.peers) {
            node::PeerArg::parse(&p).unwrap();
        }
        assert!(node::PeerArg::parse("nohost").is_err());
    }
}
