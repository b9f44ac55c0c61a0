//! `fedsx bench delivery`: starts a delivery service and fake destination nodes in this
//! process, then measures deliveries/s to one fast node, to one node that answers after
//! 100 ms, and spread over 100 nodes — each activity from one of `--senders` actors (a
//! sender's deliveries to a node go one at a time, so concurrency comes from many senders);
//! and the service's resident memory with 100,000 activities queued for an unreachable node. `--store` (or `--pg-throwaway`) runs it on the PostgreSQL queue;
//! `--sustained SECONDS` instead enqueues and delivers to one fast peer for that long and
//! prints the rate of every 30 s, to show whether it holds.

use super::{path, spawn_service};
use bytes::Bytes;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{EnqueueRequest, ListPeersRequest};
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Activities per throughput scenario.
    #[arg(long, default_value_t = 20_000)]
    activities: usize,
    /// Activities queued for the unreachable peer in the memory scenario.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    /// Where the temp data dir goes.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
    /// Keep the queue in this PostgreSQL database instead of RocksDB.
    #[arg(long, value_parser = fedsx_pg::parse_store_url)]
    store: Option<String>,
    /// Start a throwaway PostgreSQL server (fsync on) and keep the queue there.
    #[arg(long, conflicts_with = "store")]
    pg_throwaway: bool,
    /// Instead of the scenarios: enqueue and deliver to one fast peer for this many seconds,
    /// printing the rate of every 30 s.
    #[arg(long)]
    sustained: Option<u64>,
    /// Local actors the activities come from, round-robin.
    #[arg(long, default_value_t = 1000)]
    senders: usize,
}

/// A node answering 202 after `delay`, counting what it received (into `counter` when
/// given, shared by several nodes).
async fn fake_peer(delay: Duration, counter: Option<Arc<AtomicUsize>>) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let received = counter.unwrap_or_default();
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
                let counter = counter.clone();
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                    hyper::Response::builder().status(202).body(Full::new(Bytes::new()))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::spawn(connection);
        }
    });
    Ok((base, received))
}

async fn start_delivery(
    data: &std::path::Path,
    store: Option<&str>,
) -> anyhow::Result<(DeliveryClient<Channel>, super::KillOnDrop)> {
    let mut args = vec!["delivery", "--listen", "127.0.0.1:0", "--allow-private-peers"];
    match store {
        Some(url) => args.extend(["--store", url]),
        None => args.extend(["--data-dir", path(data)?]),
    }
    let (url, child) = spawn_service(&args)?;
    Ok((DeliveryClient::new(Channel::from_shared(url)?.connect().await?), child))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("fedsx-bench-").tempdir_in(&args.dir)?;
    let (store, servers) = super::throwaway_postgres(args.pg_throwaway, false).await?;
    let store = store.or(args.store.clone());
    let data = scratch.path().join("delivery");
    let (client, child) = start_delivery(&data, store.as_deref()).await?;
    println!(
        "machine: {} cores; default 128 sends in flight per destination; {} senders; queue on {}",
        std::thread::available_parallelism()?,
        args.senders,
        if store.is_some() { "postgres" } else { "rocksdb" }
    );
    if let Some(seconds) = args.sustained {
        return sustained(&client, Duration::from_secs(seconds)).await;
    }

    let senders = args.senders;
    let (fast, fast_count) = fake_peer(Duration::ZERO, None).await?;
    let rate = deliver(&client, &[fast], &fast_count, args.activities, 0, senders).await?;
    println!("one fast node:               {rate:>8.0} deliveries/s");

    let (slow, slow_count) = fake_peer(Duration::from_millis(100), None).await?;
    let n = (args.activities / 4).max(100);
    let rate = deliver(&client, &[slow], &slow_count, n, 1, senders).await?;
    println!("one node answering in 100ms: {rate:>8.0} deliveries/s");

    let many_count = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for _ in 0..100 {
        nodes.push(fake_peer(Duration::ZERO, Some(many_count.clone())).await?.0);
    }
    let rate = deliver(&client, &nodes, &many_count, args.activities, 2, senders).await?;
    println!("100 nodes:                   {rate:>8.0} deliveries/s");

    drop(child);

    // Memory: a fresh process with only the deep queue.
    let data = scratch.path().join("delivery-memory");
    let store = match &store {
        // A fresh queue: the database of the first run still holds its delivered records.
        Some(_) if args.pg_throwaway => Some(servers[0].create_database("memory").await.map_err(anyhow::Error::msg)?),
        other => other.clone(),
    };
    let (client, child) = start_delivery(&data, store.as_deref()).await?;
    let rss_before = rss_kb(child.pid())?;
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let dead = format!("http://{unreachable}");
    let started = Instant::now();
    enqueue_all(&client, &[dead], args.queued, 3, senders).await?;
    let enqueue_rate = args.queued as f64 / started.elapsed().as_secs_f64();
    // Let the first attempts fail and settle into their 30 s backoff.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Resident memory counts the pages of the executable mapped in (about 20 MB, varying
    // by a few MB from build to build); the heap is what the queue costs.
    println!(
        "{} queued for an unreachable peer (enqueued at {enqueue_rate:.0}/s): resident memory {} MB, of it {} MB the executable's and libraries' pages (was {} MB before)",
        args.queued,
        rss_kb(child.pid())? / 1024,
        status_kb(child.pid(), "RssFile:")? / 1024,
        rss_before / 1024
    );
    let status = client
        .clone()
        .list_peers(ListPeersRequest::default())
        .await?
        .into_inner();
    let pending: u64 = status.peers.iter().map(|p| p.pending).sum();
    println!("pending across peers at the end: {pending}");
    Ok(())
}

/// Deliveries queued and not yet received at most: the enqueuers wait past it. The rate
/// printed is the lower of enqueuing and delivering; the backlog printed with it says which
/// (near this: delivering; near zero: delivery keeps up with the enqueuers).
const SUSTAINED_BACKLOG: usize = 20_000;

/// Enqueues to one fast peer from 64 callers for `duration`, keeping about
/// `SUSTAINED_BACKLOG` queued; every 30 s prints what was delivered in that window, and at
/// the end the first and last window's rates.
async fn sustained(client: &DeliveryClient<Channel>, duration: Duration) -> anyhow::Result<()> {
    let (fast, received) = fake_peer(Duration::ZERO, None).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (mut client, next, stop, node) = (client.clone(), next.clone(), stop.clone(), fast.clone());
        let received = received.clone();
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if next
                    .load(Ordering::Relaxed)
                    .saturating_sub(received.load(Ordering::Relaxed))
                    > SUSTAINED_BACKLOG
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let mut id = [9u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                client.enqueue(request(&node, i, id, 1000)).await?;
            }
            anyhow::Ok(())
        }));
    }
    let window = Duration::from_secs(30).min(duration);
    let started = Instant::now();
    let mut rates = Vec::new();
    let mut last = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(window).await;
        let now = received.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / window.as_secs_f64();
        last = now;
        let backlog = next.load(Ordering::Relaxed).saturating_sub(now);
        println!(
            "  {:>4}s: {rate:>8.0} deliveries/s (backlog {backlog})",
            started.elapsed().as_secs()
        );
        rates.push(rate);
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    if let (Some(first), Some(final_rate)) = (rates.first(), rates.last()) {
        println!(
            "sustained {}s to one fast peer: first window {first:.0}/s, last {final_rate:.0}/s ({:.0}% of the first)",
            duration.as_secs(),
            100.0 * final_rate / first
        );
    }
    Ok(())
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    status_kb(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` figure in kB (`field` with its colon).
fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Activity `i` with `id` for a recipient on `node`, from one of `senders` senders.
fn request(node: &str, i: usize, id: [u8; 32], senders: usize) -> EnqueueRequest {
    let recipient = format!("{node}/actors/p{}", i % 100);
    EnqueueRequest {
        inbox_url: format!("{recipient}/inbox"),
        peer: node.to_owned(),
        envelope: Bytes::from_static(&[7u8; 300]),
        id: Bytes::copy_from_slice(&id),
        sender: format!("https://bench.local/actors/s{}", i % senders),
        recipients: vec![fedsx_proto::delivery::v1::Recipient {
            actor: recipient,
            inbox_url: String::new(),
        }],
        ..EnqueueRequest::default()
    }
}

/// Enqueues `n` activities round-robin over `peers` (nodes' base URLs), from `senders`
/// senders, through 64 concurrent callers.
async fn enqueue_all(
    client: &DeliveryClient<Channel>,
    peers: &[String],
    n: usize,
    run: u8,
    senders: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let peers = Arc::new(peers.to_vec());
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (mut client, next, peers) = (client.clone(), next.clone(), peers.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let mut id = [run; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                client.enqueue(request(&peers[i % peers.len()], i, id, senders)).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

/// Enqueues `n` and waits until the peers received them all: deliveries/s end to end.
async fn deliver(
    client: &DeliveryClient<Channel>,
    peers: &[String],
    received: &AtomicUsize,
    n: usize,
    run: u8,
    senders: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    enqueue_all(client, peers, n, run, senders).await?;
    while received.load(Ordering::Relaxed) < n {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "only {} of {n} delivered in 10 minutes",
                received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
