//! `fedsx bench kernel`: one node's kernel — 1 or more replicas — on a log-store over
//! RocksDB or PostgreSQL, in scenarios run one after the other in one run (default: RocksDB
//! with 1 replica, PostgreSQL with 1 and with 3). In each, `--peers` remote actors follow
//! each of `--recipients` local actors (one per partition), then
//! - ingests: `--activities` signed Creates through `Kernel.Ingest` (each verified and
//!   durably appended), spread over the recipients and sent to the replicas in turn (a
//!   replica forwards what another serves, as behind a load balancer);
//! - publishes: `--publishes` notes to followers through `Kernel.Publish` (each signed,
//!   chained and durably appended; the relay then works out their destinations);
//!
//! and prints rates and latencies, with ed25519 strict verifications/s on one core as the
//! machine's reference.

use super::{KillOnDrop, path, spawn_service};
use anyhow::Context;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{CreateActorRequest, IngestRequest, PublishRequest};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Client = fedsx_gateway::kernels::Client;

/// Partitions of the bench node.
const PARTITIONS: u32 = 16;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remote actors following the recipients and signing the activities.
    #[arg(long, default_value_t = 100)]
    peers: usize,
    /// Local actors receiving the activities (1 to 16: one per partition, in turn).
    #[arg(long, default_value_t = 16)]
    recipients: usize,
    /// Activities ingested per scenario.
    #[arg(long, default_value_t = 20_000)]
    activities: usize,
    /// Notes published per scenario.
    #[arg(long, default_value_t = 2_000)]
    publishes: usize,
    /// Concurrent calls.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Scenarios `<engine>:<replicas>`, engine `rocksdb` or `postgres` (a throwaway server,
    /// fsync on), run in this order.
    #[arg(long = "scenario", default_values_t = ["rocksdb:1".to_owned(), "postgres:1".to_owned(), "postgres:3".to_owned()])]
    scenarios: Vec<String>,
    /// Caps each kernel replica at this many cores (a control group of its own; needs a
    /// writable cgroup filesystem): replicas then have the compute that machines of their
    /// own would give them, and the run measures how the kernel scales with replicas
    /// rather than how busy this machine already is.
    #[arg(long)]
    kernel_cpu: Option<f64>,
    /// Where each call goes: `any` — the replicas in turn, as behind a load balancer (a
    /// replica forwards what another serves); `owner` — the replica serving the actor's
    /// partition (as `Kernel.ListReplicas` says), as a caller that knows the owners would.
    #[arg(long, default_value = "any", value_parser = ["any", "owner"])]
    route: String,
    /// Where the temp data dirs go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

struct Scenario {
    postgres: bool,
    replicas: usize,
}

fn scenario(text: &str) -> anyhow::Result<Scenario> {
    let (engine, replicas) = text
        .split_once(':')
        .with_context(|| format!("--scenario {text}: use <engine>:<replicas>"))?;
    let postgres = match engine {
        "rocksdb" => false,
        "postgres" => true,
        other => anyhow::bail!("--scenario {text}: engine {other:?} is neither rocksdb nor postgres"),
    };
    let replicas = replicas
        .parse()
        .ok()
        .filter(|n| (1..=8).contains(n))
        .with_context(|| format!("--scenario {text}: 1 to 8 replicas"))?;
    Ok(Scenario { postgres, replicas })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=16).contains(&args.recipients), "--recipients: 1 to 16");
    let scenarios = args
        .scenarios
        .iter()
        .map(|s| scenario(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let scratch = tempfile::Builder::new().prefix("fedsx-bench-").tempdir_in(&args.dir)?;
    let postgres = if scenarios.iter().any(|s| s.postgres) {
        let (_, servers) = super::throwaway_postgres(true, false).await?;
        servers.into_iter().next()
    } else {
        None
    };
    println!("machine: {} cores", std::thread::available_parallelism()?);
    let peers = super::remote_actors(args.peers);
    let mut results = Vec::new();
    for (n, scenario) in scenarios.iter().enumerate() {
        let log_store_args: Vec<String> = match (&postgres, scenario.postgres) {
            (Some(server), true) => {
                let url = server
                    .create_database(&format!("kernel{n}"))
                    .await
                    .map_err(anyhow::Error::msg)?;
                vec!["--store".into(), url]
            }
            _ => vec![
                "--data-dir".into(),
                path(&scratch.path().join(format!("log-store-{n}")))?.to_owned(),
            ],
        };
        let label = format!(
            "{} × {}{}",
            if scenario.postgres { "postgres" } else { "rocksdb" },
            scenario.replicas,
            args.kernel_cpu
                .map(|c| format!(" ({c} cores each)"))
                .unwrap_or_default()
        );
        println!("\n{label}: starting…");
        let secret = scratch.path().join(format!("node-secret-{n}"));
        let measured = measure(&args, &peers, scenario.replicas, &log_store_args, &secret).await?;
        println!(
            "{label}: ingest {:.0}/s (p50 {:?}, p99 {:?}, {} errors); publish {:.0}/s (p50 {:?}, p99 {:?}, {} errors)",
            measured.0.rate,
            measured.0.p50,
            measured.0.p99,
            measured.0.errors,
            measured.1.rate,
            measured.1.p50,
            measured.1.p99,
            measured.1.errors
        );
        results.push((label, measured));
    }

    let envelopes = super::sign_all(&peers, 2_000);
    let verify_rate = tokio::task::block_in_place(|| verifies_per_second(&envelopes, &peers));
    println!(
        "\n| scenario | ingests/s | ingest p99 | publishes/s | publish p99 | ingests per kernel core-second | machine busy while ingesting |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, (ingest, publish, cpu)) in &results {
        println!(
            "| {label} | {:.0} | {:?} | {:.0} | {:?} | {:.0} | {:.0}% |",
            ingest.rate,
            ingest.p99,
            publish.rate,
            publish.p99,
            ingest.ok as f64 / cpu.kernels.max(0.01),
            cpu.machine_busy * 100.0
        );
    }
    println!("ed25519 strict decode+verify, one core: {verify_rate:.0}/s");
    let rate = |engine: &str, replicas: usize| {
        let label = format!("{engine} × {replicas}");
        let found = results
            .iter()
            .find(|(l, _)| *l == label || l.starts_with(&format!("{label} (")));
        found.map(|(_, m)| m.0.rate)
    };
    if let (Some(one), Some(three)) = (rate("postgres", 1), rate("postgres", 3)) {
        println!("ingest, postgres: 3 replicas / 1 replica = {:.2}", three / one);
        // With every core busy, more replicas cannot ingest more on this machine; the
        // kernel CPU per ingest says whether they would where each has cores of its own.
        println!("(compare the ingests per kernel core-second: the same cost per ingest scales with cores)");
    }
    Ok(())
}

/// Where the CPU went during one scenario's ingest run.
struct IngestCpu {
    /// Core-seconds the kernel replicas used, together.
    kernels: f64,
    /// The whole machine's busy share (0 to 1).
    machine_busy: f64,
}

/// One scenario: (ingest run, publish run) and the CPU of the ingest run.
async fn measure(
    args: &Args,
    peers: &[(SigningKey, String)],
    replicas: usize,
    log_store_args: &[String],
    secret: &std::path::Path,
) -> anyhow::Result<(super::Run, super::Run, IngestCpu)> {
    let mut store_args = vec!["log-store", "--listen", "127.0.0.1:0"];
    store_args.extend(log_store_args.iter().map(String::as_str));
    let (log_store, _log_store) = spawn_service(&store_args)?;
    let partitions = PARTITIONS.to_string();
    // Declared before the kernels: removed after they ended.
    let mut caps = Vec::new();
    let mut kernels: Vec<(String, KillOnDrop)> = Vec::new();
    for n in 0..replicas {
        let kernel = super::spawn_kernel(
            &log_store,
            super::NO_DELIVERY,
            path(secret)?,
            &["--partitions", &partitions],
        )?;
        if let Some(cores) = args.kernel_cpu {
            let cap = super::cpu_cap::CpuCap::new(&format!("fedsx-bench-kernel{n}"), cores)?;
            cap.add(kernel.1.pid())?;
            caps.push(cap);
        }
        kernels.push(kernel);
    }
    let urls: Vec<String> = kernels.iter().map(|(url, _)| url.clone()).collect();
    settle(&urls).await?;
    let mut clients = Vec::new();
    for url in &urls {
        let channel = Channel::from_shared(url.clone())?.connect().await?;
        clients.push(KernelClient::new(fedsx_runtime::trace_context::traced(channel)));
    }
    let clients = Arc::new(clients);

    // One recipient per partition, each followed by every peer.
    let names = recipients(args.recipients);
    let pick = Arc::new(picker(&args.route, &clients, &urls, &names).await?);
    let mut recipient_urls = Vec::new();
    for name in &names {
        let created = clients[0]
            .clone()
            .create_actor(CreateActorRequest { name: name.clone() })
            .await
            .with_context(|| format!("creating {name}"))?;
        recipient_urls.push(created.into_inner().id);
    }
    super::register(&mut clients[0].clone(), peers).await?;
    let (follows, creates) = sign_chains(peers, &recipient_urls, args.activities);
    let mut following = tokio::task::JoinSet::new();
    for (p, chain) in follows.into_iter().enumerate() {
        let (names, pick) = (names.clone(), pick.clone());
        following.spawn(async move {
            // In the peer's order, so no gap is seen in its sequence.
            for (r, envelope) in chain.into_iter().enumerate() {
                let request = IngestRequest {
                    recipient: names[r].clone(),
                    envelope: envelope.into(),
                };
                pick(p + r, r).ingest(request).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = following.join_next().await {
        done??;
    }

    let creates = Arc::new(creates);
    let kernel_ticks = || -> anyhow::Result<u64> {
        kernels
            .iter()
            .map(|(_, kernel)| Ok(super::usage(kernel.pid())?.0))
            .sum()
    };
    let (kernels_before, machine_before) = (kernel_ticks()?, super::machine_ticks()?);
    let (ingest_names, ingest_pick) = (Arc::new(names.clone()), pick.clone());
    let ingest = super::drive(creates.len(), args.concurrency, move |i| {
        let r = i % ingest_names.len();
        let mut client = ingest_pick(i, r);
        let request = IngestRequest {
            recipient: ingest_names[r].clone(),
            envelope: creates[i].clone().into(),
        };
        async move { client.ingest(request).await.is_ok_and(|answer| answer.get_ref().new) }
    })
    .await?;
    let (kernels_after, machine_after) = (kernel_ticks()?, super::machine_ticks()?);
    let cpu = IngestCpu {
        kernels: (kernels_after - kernels_before) as f64 / super::TICKS_PER_SECOND,
        machine_busy: (machine_after.0 - machine_before.0) as f64 / (machine_after.1 - machine_before.1).max(1) as f64,
    };

    let publish_names = Arc::new(names);
    let publish = super::drive(args.publishes, args.concurrency, move |i| {
        let r = i % publish_names.len();
        let mut client = pick(i, r);
        let request = PublishRequest {
            actor: publish_names[r].clone(),
            r#type: ActivityType::Create.into(),
            to: vec!["followers".into()],
            content: format!("note {i} to every follower"),
            ..Default::default()
        };
        async move { client.publish(request).await.is_ok() }
    })
    .await?;
    Ok((ingest, publish, cpu))
}

/// The client call `i` for recipient `r` goes to: the replicas in turn, or the recipient's
/// owner as the gateway finds it.
type Pick = Box<dyn Fn(usize, usize) -> Client + Send + Sync>;

async fn picker(route: &str, clients: &[Client], urls: &[String], names: &[String]) -> anyhow::Result<Pick> {
    let clients = clients.to_vec();
    if route == "any" {
        return Ok(Box::new(move |i, _| clients[i % clients.len()].clone()));
    }
    let kernels =
        fedsx_gateway::kernels::Kernels::new(fedsx_runtime::trace_context::lazy_channel("--kernel", &urls[0])?);
    kernels.refresh().await?;
    let owners = names
        .iter()
        .map(|name| {
            kernels
                .owner_of(name)
                .map(|owner| owner.client)
                .with_context(|| format!("no replica serves {name}"))
        })
        .collect::<anyhow::Result<Vec<Client>>>()?;
    Ok(Box::new(move |_, r| owners[r].clone()))
}

/// Waits until the replicas at `urls` serve every partition between them, and for a
/// replica that just started, until it got its share.
async fn settle(urls: &[String]) -> anyhow::Result<()> {
    let http = fedsx_runtime::http_client::PeerHttp::new(true, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut served = Vec::new();
        for url in urls {
            let request = http::Request::get(format!("{url}/metrics")).body(bytes::Bytes::new())?;
            let reply = http.send(request, 4 << 20).await.ok();
            let text = reply
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .unwrap_or_default();
            let value = text
                .lines()
                .find_map(|line| line.strip_prefix("fedsx_kernel_partitions_served "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            served.push(value);
        }
        if served.iter().sum::<f64>() == f64::from(PARTITIONS) && served.iter().all(|s| *s > 0.0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replicas did not share the partitions within 60 s: {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` local actor names in different partitions.
fn recipients(n: usize) -> Vec<String> {
    fedsx_kernel::one_name_per_partition("bench", n, PARTITIONS)
}

/// Each peer's chain: a Follow of every recipient (one chain per peer, in order), then
/// `creates` Creates round-robin over the peers, continuing each peer's chain.
fn sign_chains(
    peers: &[(SigningKey, String)],
    recipients: &[String],
    creates: usize,
) -> (Vec<Vec<Vec<u8>>>, Vec<Vec<u8>>) {
    let mut chains: Vec<(u64, Option<fedsx_wire::ActivityId>)> = vec![(0, None); peers.len()];
    let mut sign = |p: usize, kind: ActivityType, object: &str, content: String| {
        let (key, url) = &peers[p];
        let (seq, prev) = &mut chains[p];
        *seq += 1;
        let activity = Activity {
            r#type: kind.into(),
            actor: url.clone(),
            seq: *seq,
            object: object.to_owned(),
            to: recipients.to_vec(),
            published_ms: 1_767_225_600_000 + *seq as i64,
            content,
            prev: prev.map(|id| id.0.to_vec().into()).unwrap_or_default(),
        };
        let signed = fedsx_wire::sign(&activity, key, &fedsx_wire::key_id(url, &key.verifying_key()));
        *prev = Some(signed.id);
        signed.to_bytes()
    };
    let follows = (0..peers.len())
        .map(|p| {
            recipients
                .iter()
                .map(|r| sign(p, ActivityType::Follow, r, String::new()))
                .collect()
        })
        .collect();
    let creates = (0..creates)
        .map(|i| {
            let content = format!("note {i}, about the length of a short post on a federated server");
            sign(i % peers.len(), ActivityType::Create, "", content)
        })
        .collect();
    (follows, creates)
}

pub fn verifies_per_second(envelopes: &[Vec<u8>], peers: &[(SigningKey, String)]) -> f64 {
    let keys: std::collections::HashMap<&str, ed25519_dalek::VerifyingKey> =
        peers.iter().map(|(k, u)| (u.as_str(), k.verifying_key())).collect();
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        let envelope = &envelopes[done % envelopes.len()];
        let received = fedsx_wire::decode(envelope).expect("bench envelopes decode");
        received
            .verify(&keys[received.activity.actor.as_str()])
            .expect("bench envelopes verify");
        done += 1;
    }
    done as f64 / started.elapsed().as_secs_f64()
}
