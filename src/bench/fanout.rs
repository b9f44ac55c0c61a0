//! `fedsx bench fanout`: one actor with `--followers` followers spread over `--destinations`
//! fake destination nodes on loopback (each advertising a node inbox; `--dead` of them
//! refuse every connection), publishing `--publishes` notes to its followers at `--rate`
//! per second through a real kernel, log-store and delivery. Reports the requests the
//! destinations received against destinations × publishes, the time from each publish's
//! acknowledgement until every live destination had it (p50/p99/max), and delivery's
//! resident memory and CPU over the run.

use super::{KillOnDrop, drive, path, spawn_service};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{CreateActorRequest, IngestRequest, PublishRequest};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_wire::ActivityId;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    followers: usize,
    /// Destination nodes the followers are spread over, round-robin.
    #[arg(long, default_value_t = 100)]
    destinations: usize,
    /// Of the destinations, this many refuse every connection.
    #[arg(long, default_value_t = 0)]
    dead: usize,
    #[arg(long, default_value_t = 1000)]
    publishes: usize,
    /// Publishes per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Where the temp data dirs go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

const PUBLIC_URL: &str = "http://fanout.bench.local";

/// What the live destinations received: every POST, and per note when the last
/// destination got it and how many did.
#[derive(Default)]
struct Arrivals {
    requests: AtomicUsize,
    notes: Mutex<HashMap<ActivityId, (usize, Instant)>>,
}

/// A destination node answering 202 at its node inbox, counting into `arrivals`.
async fn live_node(arrivals: Arc<Arrivals>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrivals = arrivals.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let arrivals = arrivals.clone();
                async move {
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    arrivals.requests.fetch_add(1, Ordering::Relaxed);
                    if let Ok(received) = fedsx_wire::decode(&body)
                        && received.kind == ActivityType::Create
                    {
                        let mut notes = arrivals.notes.lock().expect("arrivals lock");
                        let entry = notes.entry(received.id).or_insert((0, Instant::now()));
                        *entry = (entry.0 + 1, Instant::now());
                    }
                    hyper::Response::builder().status(202).body(Full::new(Bytes::new()))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::spawn(connection);
        }
    });
    Ok(base)
}

/// A node nobody answers at: a port that was free a moment ago.
fn dead_node() -> anyhow::Result<String> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok(format!("http://{addr}"))
}

struct Node {
    kernel: KernelClient<Channel>,
    delivery: fedsx_proto::delivery::v1::delivery_client::DeliveryClient<Channel>,
    delivery_pid: u32,
    kernel_pid: u32,
    _children: Vec<KillOnDrop>,
}

async fn start_node(dir: &std::path::Path) -> anyhow::Result<Node> {
    let (log_store, log_child) = spawn_service(&[
        "log-store",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path(&dir.join("log-store"))?,
    ])?;
    let (delivery, delivery_child) = spawn_service(&[
        "delivery",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        path(&dir.join("delivery"))?,
        "--allow-private-peers",
    ])?;
    let secret = dir.join("node-secret");
    let flags = ["--public-url", PUBLIC_URL, "--allow-private-peers"];
    let (kernel, kernel_child) = super::spawn_kernel(&log_store, &delivery, path(&secret)?, &flags)?;
    Ok(Node {
        kernel: KernelClient::new(Channel::from_shared(kernel)?.connect().await?),
        delivery: fedsx_proto::delivery::v1::delivery_client::DeliveryClient::new(
            Channel::from_shared(delivery)?.connect().await?,
        ),
        delivery_pid: delivery_child.pid(),
        kernel_pid: kernel_child.pid(),
        _children: vec![kernel_child, delivery_child, log_child],
    })
}

/// Follower `i` on the node at `base`: its key and a signed Follow of `star`.
fn follower(i: usize, base: &str, star: &str) -> (fedsx_proto::kernel::v1::ActorDocument, Vec<u8>) {
    let seed: [u8; 32] = std::array::from_fn(|b| (i.wrapping_mul(7919) >> (b % 4 * 8)) as u8 ^ b as u8);
    let key = SigningKey::from_bytes(&seed);
    let url = format!("{base}/actors/f{i}");
    let document = fedsx_wire::document::new(&url, "f", &key.verifying_key(), &format!("{base}/inbox"));
    let follow = Activity {
        r#type: ActivityType::Follow.into(),
        actor: url.clone(),
        seq: 1,
        object: star.to_owned(),
        to: vec![star.to_owned()],
        published_ms: 1_767_225_600_000,
        ..Activity::default()
    };
    let signed = fedsx_wire::sign(&follow, &key, &document.key_id);
    (document, signed.to_bytes())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.dead < args.destinations, "--dead must leave a live destination");
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let scratch = tempfile::Builder::new().prefix("fedsx-bench-").tempdir_in(&args.dir)?;
    let node = start_node(scratch.path()).await?;
    let mut kernel = node.kernel.clone();
    let star = kernel
        .create_actor(CreateActorRequest { name: "star".into() })
        .await?
        .into_inner()
        .id;

    let arrivals = Arc::new(Arrivals::default());
    let mut bases = Vec::with_capacity(args.destinations);
    for d in 0..args.destinations {
        bases.push(if d < args.dead {
            dead_node()?
        } else {
            live_node(arrivals.clone()).await?
        });
    }
    let live = args.destinations - args.dead;
    let live_followers = (0..args.followers)
        .filter(|i| i % args.destinations >= args.dead)
        .count();
    println!(
        "fan-out: {} followers on {} destination nodes ({} dead), {} publishes at {}/s",
        args.followers, args.destinations, args.dead, args.publishes, args.rate
    );

    // Followers: documents registered, Follows ingested (each auto-accepted and the Accept
    // delivered to its follower's node).
    let started = Instant::now();
    let (bases, star_url) = (Arc::new(bases), Arc::new(star));
    let n = args.destinations;
    let follows = drive(args.followers, 32, {
        let (kernel, bases, star_url) = (kernel.clone(), bases.clone(), star_url.clone());
        move |i| {
            let (mut kernel, bases, star_url) = (kernel.clone(), bases.clone(), star_url.clone());
            async move {
                let (document, follow) = follower(i, &bases[i % n], &star_url);
                let registered = kernel.register_peer(document).await.is_ok();
                let request = IngestRequest {
                    recipient: "star".into(),
                    envelope: follow.into(),
                };
                registered && kernel.ingest(request).await.is_ok()
            }
        }
    })
    .await?;
    anyhow::ensure!(follows.errors == 0, "{} follows failed", follows.errors);
    while arrivals.requests.load(Ordering::Relaxed) < live_followers {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the Accepts did not arrive in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "setup: {} follows ingested and their Accepts delivered in {:.1}s ({:.0} follows/s)",
        args.followers,
        started.elapsed().as_secs_f64(),
        follows.rate
    );

    // The publishes, paced; each acknowledgement's time kept by activity id.
    let requests_before = arrivals.requests.load(Ordering::Relaxed);
    let (ticks_before, rss_before) = super::usage(node.delivery_pid)?;
    let (kernel_ticks_before, _) = super::usage(node.kernel_pid)?;
    let acks: Arc<Mutex<HashMap<ActivityId, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut publishing = Vec::with_capacity(args.publishes);
    let peak_rss = Arc::new(AtomicUsize::new(rss_before as usize));
    let sampler = {
        let (peak, pid) = (peak_rss.clone(), node.delivery_pid);
        let (mut delivery, arrivals) = (node.delivery.clone(), arrivals.clone());
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                if let Ok((_, rss)) = super::usage(pid) {
                    peak.fetch_max(rss as usize, Ordering::Relaxed);
                }
                tick += 1;
                if tick.is_multiple_of(50) {
                    // Where the work is: still queued at delivery, or already received.
                    let request = fedsx_proto::delivery::v1::ListPeersRequest {
                        page_size: 1000,
                        page_token: String::new(),
                    };
                    if let Ok(peers) = delivery.list_peers(request).await {
                        let pending: u64 = peers.into_inner().peers.iter().map(|p| p.pending).sum();
                        let received = arrivals.requests.load(Ordering::Relaxed) - requests_before;
                        println!(
                            "  {:>4}s: {received} requests received, {pending} queued at delivery",
                            tick / 10
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    for i in 0..args.publishes {
        let due = started + Duration::from_micros(i as u64 * 1_000_000 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        let (mut kernel, acks) = (kernel.clone(), acks.clone());
        publishing.push(tokio::spawn(async move {
            let request = PublishRequest {
                actor: "star".into(),
                r#type: ActivityType::Create.into(),
                object: String::new(),
                to: vec!["followers".into()],
                content: format!("note {i} to every follower"),
                once_key: Default::default(),
            };
            let published = kernel.publish(request).await?.into_inner();
            let id = ActivityId::from_slice(&published.id).ok_or_else(|| anyhow::anyhow!("bad id"))?;
            acks.lock().expect("acks lock").insert(id, Instant::now());
            anyhow::Ok(())
        }));
    }
    for publish in publishing {
        publish.await??;
    }
    let published_in = started.elapsed();
    let complete = |arrivals: &Arrivals| {
        let notes = arrivals.notes.lock().expect("arrivals lock");
        notes.values().filter(|(count, _)| *count >= live).count()
    };
    while complete(&arrivals) < args.publishes {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "only {} of {} publishes reached every live destination in 10 minutes",
                complete(&arrivals),
                args.publishes
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_delivered = started.elapsed();
    // Anything sent twice would show up a moment later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampler.abort();
    let (ticks_after, _) = super::usage(node.delivery_pid)?;
    let (kernel_ticks_after, _) = super::usage(node.kernel_pid)?;
    let requests = arrivals.requests.load(Ordering::Relaxed) - requests_before;

    let acks = acks.lock().expect("acks lock");
    let notes = arrivals.notes.lock().expect("arrivals lock");
    let mut latencies: Vec<Duration> = acks
        .iter()
        .filter_map(|(id, acked)| notes.get(id).map(|(_, last)| last.saturating_duration_since(*acked)))
        .collect();
    latencies.sort_unstable();
    let at = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    let cpu = |before: u64, after: u64| (after - before) as f64 / super::TICKS_PER_SECOND / all_delivered.as_secs_f64();
    println!(
        "published {} in {:.1}s; all delivered to the {live} live destinations {:.1}s after the first",
        args.publishes,
        published_in.as_secs_f64(),
        all_delivered.as_secs_f64()
    );
    // Each note should have arrived once per live destination; the rest of the requests
    // are other activities (Accepts of the setup still arriving).
    let creates: usize = notes.values().map(|(count, _)| *count).sum();
    let twice: usize = notes.values().map(|(count, _)| count.saturating_sub(live)).sum();
    println!(
        "requests received: {requests} (live destinations × publishes = {}), of them {creates} notes, {twice} sent more than once",
        live * args.publishes
    );
    println!(
        "publish acknowledged → at every live destination: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        at(50).as_secs_f64() * 1e3,
        at(99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "delivery: resident {} MB at the start, {} MB at the peak; CPU {:.2} cores (kernel {:.2} cores)",
        rss_before / 1024,
        peak_rss.load(Ordering::Relaxed) / 1024,
        cpu(ticks_before, ticks_after),
        cpu(kernel_ticks_before, kernel_ticks_after)
    );
    Ok(())
}
