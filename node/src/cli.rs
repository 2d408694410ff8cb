//! The operator commands `plexus status` and `plexus peers`: they read a
//! running node's RPC (HTTP, or HTTPS trusting the home's own CA) and
//! print a short table, as `chia show -s` and `chia show -c` do.

use std::sync::Arc;

use anyhow::{anyhow, Context};
use serde_json::Value;

use crate::config::NodeConfig;
use crate::home::Home;

/// Where a node's RPC is: `--rpc URL`, else the home's `config.toml`
/// (`rpc.host`, `rpc.port`, `rpc.tls`; a wildcard host is reached on
/// 127.0.0.1).
pub fn rpc_url(home: &Home, flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(url) = flag {
        return Ok(url.trim_end_matches('/').to_string());
    }
    let cfg = if home.config().exists() {
        NodeConfig::load(&home.config())?
    } else {
        NodeConfig::default()
    };
    let host = match cfg.rpc.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => cfg.rpc.host.clone(),
    };
    let scheme = if cfg.rpc.tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}:{}", cfg.rpc.port))
}

/// Calls `method` at `url`, trusting `<home>/tls/ca.crt` for HTTPS.
/// Errors: the node cannot be reached (with the URL), or answers with a
/// JSON-RPC error.
pub fn call(home: &Home, url: &str, method: &str) -> anyhow::Result<Value> {
    let mut builder =
        ureq::Agent::config_builder().timeout_global(Some(std::time::Duration::from_secs(10)));
    let ca = crate::tls::ca_cert(home);
    if url.starts_with("https://") && ca.exists() {
        let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
        let cert = ureq::tls::Certificate::from_pem(&pem)
            .map_err(|e| anyhow!("{} is not a certificate: {e}", ca.display()))?
            .to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
            .build();
        builder = builder.tls_config(tls);
    }
    let agent: ureq::Agent = builder.http_status_as_error(false).build().into();
    let mut resp = agent
        .get(&format!("{url}/{method}"))
        .call()
        .map_err(|e| anyhow!("cannot reach the node at {url}: {e} (is it running? --rpc URL)"))?;
    let text = resp.body_mut().read_to_string()?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{url}/{method} did not answer JSON ({e}): {text}"))?;
    if let Some(e) = v.get("error") {
        anyhow::bail!("{url}/{method}: {}", e["message"].as_str().unwrap_or("error"));
    }
    Ok(v["result"].clone())
}

fn short(s: &str) -> String {
    if s.len() > 16 {
        format!("{}…", &s[..16])
    } else {
        s.to_string()
    }
}

/// `plexus status`: the node's chain, sync, mining and peers in a few
/// lines.
pub fn status(s: &Value) -> String {
    let str_of = |k: &str| s[k].as_str().unwrap_or("-").to_string();
    let sync = if s["syncing"].as_bool() == Some(true) {
        format!(
            "yes, {} of {}",
            s["sync"]["height"].as_u64().unwrap_or(0),
            s["sync"]["target_height"].as_u64().unwrap_or(0)
        )
    } else {
        "no".into()
    };
    let mining = if s["mining"].as_bool() == Some(true) {
        format!(
            "yes, {:.0} H/s, {} found",
            s["hash_rate"].as_f64().unwrap_or(0.0),
            s["blocks_found"]
        )
    } else {
        "no".into()
    };
    format!(
        "Network   {} ({})\nNode      {} \"{}\" · plexus {} · up {} s\nListen    {}\nHeight    {} · tip {} · weight {}\nSyncing   {}\nMining    {}\nPeers     {} · mempool {} txs\n",
        str_of("network_name"),
        short(&str_of("network")),
        str_of("node_id"),
        str_of("moniker"),
        str_of("version"),
        s["uptime_s"],
        str_of("listen_addr"),
        s["height"],
        short(&str_of("tip")),
        str_of("weight"),
        sync,
        mining,
        s["n_peers"],
        s["mempool_txs"],
    )
}

/// `plexus peers`: one line per connected peer.
pub fn peers(ni: &Value) -> String {
    let mut out = format!(
        "{:<18} {:<22} {:<4} {:<11} {:>8} {:>8} {:>6} {}\n",
        "ID", "ADDRESS", "DIR", "TYPE", "RTT ms", "UP s", "SCORE", "MONIKER"
    );
    let empty = Vec::new();
    let list = ni["peers"].as_array().unwrap_or(&empty);
    for p in list {
        let rtt = p["rtt_ms"].as_f64().map_or("-".to_string(), |r| format!("{r:.1}"));
        out.push_str(&format!(
            "{:<18} {:<22} {:<4} {:<11} {:>8} {:>8} {:>6} {}\n",
            short(p["id"].as_str().unwrap_or("")),
            p["addr"].as_str().unwrap_or(""),
            if p["outbound"].as_bool() == Some(true) { "out" } else { "in" },
            p["node_type"].as_str().unwrap_or(""),
            rtt,
            p["uptime_s"],
            p["score"].as_f64().map_or("-".to_string(), |s| format!("{s:.0}")),
            p["moniker"].as_str().unwrap_or(""),
        ));
    }
    out.push_str(&format!(
        "{} peers · address book {} addresses\n",
        list.len(),
        ni["address_book"].as_u64().unwrap_or(0)
    ));
    out
}
