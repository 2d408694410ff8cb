//! MConnection benchmark against its ceiling, measured in one run on
//! loopback TCP.
//!
//! ```text
//! cargo run --release -p plexus-p2p --example throughput -- --json
//! ```
//!
//! Prints one JSON object (with `--json`; a readable table otherwise):
//! - `raw_noise_mb_s`: `--bytes` of payload (default 1e9; 1 MB = 1e6 bytes)
//!   through bare snow transport frames (ring resolver), the ceiling;
//! - `mconn_mb_s`: the same bytes as 1 MiB messages over one MConnection
//!   channel, and `ratio` = mconn / raw (each the median of `--repeat`
//!   alternating runs);
//! - `two_channel_share`: bytes delivered on a priority-5 channel over a
//!   priority-1 channel, both saturated (ideal 5.0);
//! - `hi_prio_latency_us_p50` / `_p99`: 100-byte messages on a priority-10
//!   channel while another channel is saturated with 1 MiB messages;
//! - `handshakes_per_s`: TCP connect + Noise XX, sequentially;
//! - `rtt_us_p50` (64-byte message echoed over an MConnection channel) and
//!   `raw_noise_rtt_us_p50` (the same over bare snow frames), and their ratio.
//!
//! `--tendermint` adds `tendermint_handshakes_per_s` and `tendermint_mb_s`,
//! tendermint-rs's SecretConnection measured in the same run.
//! `--backend-compare` adds `raw_noise_rustcrypto_mb_s` and the handshake
//! rate with each backend, the measurement behind [`CryptoBackend`]'s
//! default. `--payload-size N` overrides `max_packet_msg_payload_size`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use plexus_p2p::secret::{CryptoBackend, NOISE_PARAMS};
use plexus_p2p::{
    ChannelDescriptor, ChannelReceiver, MConnConfig, MConnection, NodeKey, SecretConfig,
    SecretConnection,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Payload bytes for the throughput figures.
    #[arg(long, default_value_t = 1_000_000_000)]
    bytes: u64,
    /// MConnection max_packet_msg_payload_size, bytes.
    #[arg(long)]
    payload_size: Option<usize>,
    /// MConnection write_batch_size, bytes.
    #[arg(long)]
    write_batch: Option<usize>,
    /// MConnection max_unacked_bytes (0 = no limit).
    #[arg(long)]
    max_unacked: Option<u64>,
    /// Also measure tendermint-rs's SecretConnection (tendermint-p2p) in the
    /// same run: sequential handshakes, and 200 MB through one connection.
    #[arg(long)]
    tendermint: bool,
    /// Only run the MConnection throughput (for profiling).
    #[arg(long)]
    mconn_only: bool,
    /// Also measure snow's default (RustCrypto) resolver.
    #[arg(long)]
    backend_compare: bool,
    /// Sequential handshakes to time.
    #[arg(long, default_value_t = 2000)]
    handshakes: u32,
    /// Alternating runs of the ceiling and the MConnection (median kept).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Round trips to time.
    #[arg(long, default_value_t = 5000)]
    round_trips: u32,
}

const MIB: usize = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Run on the two workers, not on the calling thread, so that the two
    // ends of each connection get one core each.
    rt.block_on(rt.spawn(run(args)))?
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = MConnConfig::default();
    if let Some(p) = args.payload_size {
        config.max_packet_msg_payload_size = p;
    }
    if let Some(b) = args.write_batch {
        config.write_batch_size = b;
    }
    if let Some(u) = args.max_unacked {
        config.max_unacked_bytes = u;
    }
    config.validate()?;
    let mut out = serde_json::Map::new();
    if args.mconn_only {
        let mbs = mconn_throughput(args.bytes, &config).await?;
        println!("mconn_mb_s {mbs:.1}");
        return Ok(());
    }
    // The ceiling uses snow's ring resolver (cipher from ring) whatever
    // backend the MConnection uses. Ceiling and MConnection runs alternate
    // and each figure is the median of its runs, so a noisy neighbour on
    // the machine affects both alike.
    let (mut raws, mut mconns) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        raws.push(raw_noise_throughput(args.bytes, CryptoBackend::Ring).await?);
        mconns.push(mconn_throughput(args.bytes, &config).await?);
    }
    let raw = percentile(&mut raws, 0.5);
    let mconn = percentile(&mut mconns, 0.5);
    out.insert("repeat".into(), args.repeat.into());
    out.insert("bytes".into(), args.bytes.into());
    out.insert("max_packet_msg_payload_size".into(), config.max_packet_msg_payload_size.into());
    out.insert("write_batch_size".into(), config.write_batch_size.into());
    out.insert("max_unacked_bytes".into(), config.max_unacked_bytes.into());
    out.insert("raw_noise_mb_s".into(), round(raw).into());
    out.insert("mconn_mb_s".into(), round(mconn).into());
    out.insert("ratio".into(), round3(mconn / raw).into());
    if args.backend_compare {
        let rc = raw_noise_throughput(args.bytes, CryptoBackend::RustCrypto).await?;
        out.insert("raw_noise_rustcrypto_mb_s".into(), round(rc).into());
        let hs = handshakes(args.handshakes, CryptoBackend::RustCrypto).await?;
        out.insert("handshakes_per_s_rustcrypto".into(), round(hs).into());
        let hs = handshakes(args.handshakes, CryptoBackend::Ring).await?;
        out.insert("handshakes_per_s_ring_dalek".into(), round(hs).into());
    }
    let share = two_channel_share(&config).await?;
    out.insert("two_channel_share".into(), round3(share).into());
    let (p50, p99) = hi_prio_latency(&config).await?;
    out.insert("hi_prio_latency_us_p50".into(), round(p50).into());
    out.insert("hi_prio_latency_us_p99".into(), round(p99).into());
    let hs = handshakes(args.handshakes, CryptoBackend::default()).await?;
    out.insert("handshakes_per_s".into(), round(hs).into());
    let n = args.handshakes;
    let hs1 = on_one_thread(move || handshakes(n, CryptoBackend::default())).await?;
    out.insert("handshakes_per_s_one_thread".into(), round(hs1).into());
    if args.tendermint {
        let (ths, tmbs) =
            tokio::task::spawn_blocking(move || tendermint_baseline(n, 200_000_000)).await??;
        out.insert("tendermint_handshakes_per_s".into(), round(ths).into());
        out.insert("tendermint_mb_s".into(), round(tmbs).into());
    }
    let rtt = mconn_rtt(args.round_trips, &config).await?;
    let raw_rtt = raw_noise_rtt(args.round_trips).await?;
    out.insert("rtt_us_p50".into(), round(rtt).into());
    out.insert("raw_noise_rtt_us_p50".into(), round(raw_rtt).into());
    out.insert("rtt_ratio".into(), round3(rtt / raw_rtt).into());
    let (n, cfg1) = (args.round_trips, config.clone());
    let (rtt1, raw1) = on_one_thread(move || async move {
        anyhow::Ok((mconn_rtt(n, &cfg1).await?, raw_noise_rtt(n).await?))
    })
    .await?;
    out.insert("rtt_us_p50_one_thread".into(), round(rtt1).into());
    out.insert("raw_noise_rtt_us_p50_one_thread".into(), round(raw1).into());
    out.insert("rtt_ratio_one_thread".into(), round3(rtt1 / raw1).into());
    if args.json {
        println!("{}", serde_json::Value::Object(out));
    } else {
        for (k, v) in out {
            println!("{k:32} {v}");
        }
    }
    Ok(())
}

/// Runs a future on a fresh current-thread runtime (both ends of a
/// connection on one thread: the cost of the work itself, without the
/// cross-thread wake-ups of the two-worker runtime).
async fn on_one_thread<F, Fut, T>(f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(f())
    })
    .await?
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn tcp_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let buf: Option<u32> = std::env::var("SOCKBUF").ok().and_then(|v| v.parse().ok());
    let ls = tokio::net::TcpSocket::new_v4()?;
    if let Some(b) = buf {
        ls.set_recv_buffer_size(b)?;
        ls.set_send_buffer_size(b)?;
    }
    ls.bind("127.0.0.1:0".parse()?)?;
    let l = ls.listen(16)?;
    let addr = l.local_addr()?;
    let cs = tokio::net::TcpSocket::new_v4()?;
    if let Some(b) = buf {
        cs.set_recv_buffer_size(b)?;
        cs.set_send_buffer_size(b)?;
    }
    let (a, b) = tokio::join!(cs.connect(addr), l.accept());
    let (a, b) = (a?, b?.0);
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

async fn secret_pair(
    backend: CryptoBackend,
) -> anyhow::Result<(SecretConnection<TcpStream>, SecretConnection<TcpStream>)> {
    let (a, b) = tcp_pair().await?;
    let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
    let cfg = SecretConfig { backend, ..SecretConfig::default() };
    let (x, y) = tokio::join!(
        SecretConnection::connect(a, &ka, Some(kb.node_id()), &cfg),
        SecretConnection::accept(b, &kb, &cfg)
    );
    Ok((x?, y?))
}

async fn mconn_pair(
    channels: &[ChannelDescriptor],
    config: &MConnConfig,
) -> anyhow::Result<((MConnection, Vec<ChannelReceiver>), (MConnection, Vec<ChannelReceiver>))> {
    let (a, b) = secret_pair(CryptoBackend::default()).await?;
    Ok((
        MConnection::new(a, channels, config.clone())?,
        MConnection::new(b, channels, config.clone())?,
    ))
}

/// Bare snow: a handshake, then `total` bytes as full 65519-byte frames,
/// four frames per write, read back and decrypted on the other side. The
/// two ends run on two dedicated OS threads with blocking sockets, so the
/// figure is the machine's ceiling for Noise over loopback TCP.
async fn raw_noise_throughput(total: u64, backend: CryptoBackend) -> anyhow::Result<f64> {
    let (mut a, mut b) = tcp_pair().await?;
    let (mut ta, mut tb) = raw_handshake(&mut a, &mut b, backend).await?;
    let (a, b) = (a.into_std()?, b.into_std()?);
    a.set_nonblocking(false)?;
    b.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let (mut a, mut b) = (a, b);
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            let payload = vec![7u8; 65519];
            let mut out = vec![0u8; 4 * 65537];
            let mut left = total;
            while left > 0 {
                let mut n = 0;
                for _ in 0..4 {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(payload.len() as u64) as usize;
                    let len = ta.write_message(&payload[..take], &mut out[n + 2..]).expect("fits");
                    out[n..n + 2].copy_from_slice(&(len as u16).to_be_bytes());
                    n += 2 + len;
                    left -= take as u64;
                }
                a.write_all(&out[..n])?;
            }
            anyhow::Ok(())
        });
        let mut got = 0u64;
        let mut buf = vec![0u8; 65537 * 4];
        let mut plain = vec![0u8; 65535];
        let (mut have, mut pos) = (0usize, 0usize);
        while got < total {
            let need = if have - pos < 2 {
                2
            } else {
                2 + u16::from_be_bytes([buf[pos], buf[pos + 1]]) as usize
            };
            if have - pos < need {
                buf.copy_within(pos..have, 0);
                have -= pos;
                pos = 0;
                let n = b.read(&mut buf[have..])?;
                anyhow::ensure!(n > 0, "raw sender closed early");
                have += n;
                continue;
            }
            let n = tb.read_message(&buf[pos + 2..pos + need], &mut plain)?;
            got += n as u64;
            pos += need;
        }
        let secs = start.elapsed().as_secs_f64();
        sender.join().expect("sender thread")?;
        Ok(total as f64 / secs / 1e6)
    })
    .await?
}

async fn raw_handshake(
    a: &mut TcpStream,
    b: &mut TcpStream,
    backend: CryptoBackend,
) -> anyhow::Result<(snow::TransportState, snow::TransportState)> {
    let resolver = || backend.resolver();
    let ka = NodeKey::generate();
    let kb = NodeKey::generate();
    let mut ia = snow::Builder::with_resolver(NOISE_PARAMS.parse()?, resolver())
        .local_private_key(ka.private_key())?
        .build_initiator()?;
    let mut ib = snow::Builder::with_resolver(NOISE_PARAMS.parse()?, resolver())
        .local_private_key(kb.private_key())?
        .build_responder()?;
    let mut m = vec![0u8; 1024];
    let mut p = vec![0u8; 1024];
    // Three messages; both ends are in this task, so no framing is needed
    // for the handshake itself (its cost is measured by `handshakes`).
    let n = ia.write_message(&[], &mut m)?;
    ib.read_message(&m[..n], &mut p)?;
    let n = ib.write_message(&[], &mut m)?;
    ia.read_message(&m[..n], &mut p)?;
    let n = ia.write_message(&[], &mut m)?;
    ib.read_message(&m[..n], &mut p)?;
    let _ = (a, b);
    Ok((ia.into_transport_mode()?, ib.into_transport_mode()?))
}

async fn mconn_throughput(total: u64, config: &MConnConfig) -> anyhow::Result<f64> {
    let ch = [ChannelDescriptor::new(1).recv_message_capacity(MIB).send_queue_capacity(8)];
    let ((a, _ra), (_b, mut rb)) = mconn_pair(&ch, config).await?;
    let msg = Bytes::from(vec![7u8; MIB]);
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let take = left.min(MIB as u64) as usize;
            a.send(1, msg.slice(..take)).await?;
            left -= take as u64;
        }
        // Keep the connection open until the receiver is done.
        a.closed().await;
        anyhow::Ok(())
    });
    let mut got = 0u64;
    let mut rx = rb.remove(0);
    while got < total {
        let m = rx.recv().await.ok_or_else(|| anyhow::anyhow!("connection closed early"))?;
        got += m.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    sender.abort();
    Ok(total as f64 / secs / 1e6)
}

async fn saturate(conn: std::sync::Arc<MConnection>, ch: u8, msg: Bytes) {
    while conn.send(ch, msg.clone()).await.is_ok() {}
}

async fn two_channel_share(config: &MConnConfig) -> anyhow::Result<f64> {
    let chans = [
        ChannelDescriptor::new(1).priority(1).recv_message_capacity(MIB).send_queue_capacity(4),
        ChannelDescriptor::new(2).priority(5).recv_message_capacity(MIB).send_queue_capacity(4),
    ];
    let ((a, _ra), (_b, rb)) = mconn_pair(&chans, config).await?;
    let a = std::sync::Arc::new(a);
    let msg = Bytes::from(vec![1u8; MIB]);
    let t1 = tokio::spawn(saturate(a.clone(), 1, msg.clone()));
    let t2 = tokio::spawn(saturate(a.clone(), 2, msg));
    let counts = std::sync::Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let mut readers = Vec::new();
    for (i, mut rx) in rb.into_iter().enumerate() {
        let counts = counts.clone();
        readers.push(tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                counts[i].fetch_add(m.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    // Warm up, then measure the bytes delivered over a window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c0 = [
        counts[0].load(std::sync::atomic::Ordering::Relaxed),
        counts[1].load(std::sync::atomic::Ordering::Relaxed),
    ];
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c1 = [
        counts[0].load(std::sync::atomic::Ordering::Relaxed),
        counts[1].load(std::sync::atomic::Ordering::Relaxed),
    ];
    a.stop();
    t1.abort();
    t2.abort();
    for r in readers {
        r.abort();
    }
    Ok((c1[1] - c0[1]) as f64 / ((c1[0] - c0[0]) as f64).max(1.0))
}

async fn hi_prio_latency(config: &MConnConfig) -> anyhow::Result<(f64, f64)> {
    let chans = [
        ChannelDescriptor::new(1).priority(1).recv_message_capacity(MIB).send_queue_capacity(4),
        ChannelDescriptor::new(2).priority(10).send_queue_capacity(16),
    ];
    let ((a, _ra), (_b, mut rb)) = mconn_pair(&chans, config).await?;
    let a = std::sync::Arc::new(a);
    let bulk = tokio::spawn(saturate(a.clone(), 1, Bytes::from(vec![1u8; MIB])));
    let mut bulk_rx = rb.remove(0);
    let drain = tokio::spawn(async move { while bulk_rx.recv().await.is_some() {} });
    let mut hi = rb.remove(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lat = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        a.send(2, Bytes::from(vec![9u8; 100])).await?;
        hi.recv().await.ok_or_else(|| anyhow::anyhow!("closed"))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    a.stop();
    bulk.abort();
    drain.abort();
    Ok((percentile(&mut lat, 0.5), percentile(&mut lat, 0.99)))
}

async fn handshakes(n: u32, backend: CryptoBackend) -> anyhow::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let server_key = NodeKey::generate();
    let client_key = NodeKey::generate();
    let cfg = SecretConfig { backend, ..SecretConfig::default() };
    let scfg = cfg.clone();
    let server = tokio::spawn(async move {
        for _ in 0..n {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            SecretConnection::accept(s, &server_key, &scfg).await?;
        }
        anyhow::Ok(())
    });
    let start = Instant::now();
    for _ in 0..n {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        SecretConnection::connect(s, &client_key, None, &cfg).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    server.await??;
    Ok(n as f64 / secs)
}

async fn mconn_rtt(n: u32, config: &MConnConfig) -> anyhow::Result<f64> {
    let ch = [ChannelDescriptor::new(1)];
    let ((a, mut ra), (b, mut rb)) = mconn_pair(&ch, config).await?;
    let echo = tokio::spawn(async move {
        while let Some(m) = rb[0].recv().await {
            if b.send(1, m).await.is_err() {
                break;
            }
        }
    });
    let msg = Bytes::from(vec![5u8; 64]);
    let mut rtts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        a.send(1, msg.clone()).await?;
        ra[0].recv().await.ok_or_else(|| anyhow::anyhow!("closed"))?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    a.stop();
    echo.abort();
    Ok(percentile(&mut rtts, 0.5))
}

async fn raw_noise_rtt(n: u32) -> anyhow::Result<f64> {
    let (mut a, mut b) = tcp_pair().await?;
    let (mut ta, mut tb) = raw_handshake(&mut a, &mut b, CryptoBackend::Ring).await?;
    /// Sends `send` as one frame, or (with `None`) reads one frame into
    /// `plain`; `buf` and `plain` are reused across calls.
    async fn frame_io(
        s: &mut TcpStream,
        t: &mut snow::TransportState,
        send: Option<&[u8]>,
        buf: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        if let Some(p) = send {
            let len = t.write_message(p, &mut buf[2..])?;
            buf[..2].copy_from_slice(&(len as u16).to_be_bytes());
            s.write_all(&buf[..2 + len]).await?;
            return Ok(());
        }
        s.read_exact(&mut buf[..2]).await?;
        let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        s.read_exact(&mut buf[2..2 + len]).await?;
        plain.resize(len, 0);
        let n = t.read_message(&buf[2..2 + len], plain)?;
        plain.truncate(n);
        Ok(())
    }
    let echo = tokio::spawn(async move {
        let (mut buf, mut plain) = (vec![0u8; 2 + 65535], Vec::new());
        loop {
            frame_io(&mut b, &mut tb, None, &mut buf, &mut plain).await?;
            let m = plain.clone();
            frame_io(&mut b, &mut tb, Some(&m), &mut buf, &mut plain).await?;
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let (mut buf, mut plain) = (vec![0u8; 2 + 65535], Vec::new());
    let msg = vec![5u8; 64];
    let mut rtts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        frame_io(&mut a, &mut ta, Some(&msg), &mut buf, &mut plain).await?;
        frame_io(&mut a, &mut ta, None, &mut buf, &mut plain).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    echo.abort();
    Ok(percentile(&mut rtts, 0.5))
}

/// tendermint-rs's SecretConnection (blocking std sockets, two threads):
/// sequential TCP connect + handshake rate, then MB/s of 1 MiB writes.
fn tendermint_baseline(n: u32, bytes: u64) -> anyhow::Result<(f64, f64)> {
    use std::io::{Read, Write};
    use tendermint_p2p::secret_connection::{SecretConnection as TmConn, Version};
    let key = || ed25519_consensus::SigningKey::from(rand::random::<[u8; 32]>());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server_key = key();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        for i in 0..=n {
            let (s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut c = TmConn::new(s, server_key.clone(), Version::V0_34)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if i == n {
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                while got < bytes {
                    let k = c.read(&mut buf)?;
                    anyhow::ensure!(k > 0, "tendermint sender closed early");
                    got += k as u64;
                }
                c.write_all(b"done")?;
            }
        }
        Ok(())
    });
    let client_key = key();
    let start = Instant::now();
    for _ in 0..n {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        TmConn::new(s, client_key.clone(), Version::V0_34).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let hs = n as f64 / start.elapsed().as_secs_f64();
    let s = std::net::TcpStream::connect(addr)?;
    let mut c = TmConn::new(s, client_key, Version::V0_34).map_err(|e| anyhow::anyhow!("{e}"))?;
    let chunk = vec![3u8; 1 << 20];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        c.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    let mut done = [0u8; 4];
    c.read_exact(&mut done)?;
    let mbs = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    server.join().expect("server thread")?;
    Ok((hs, mbs))
}
