//! `fedsx bench kernel`: starts a log-store and a kernel, registers M remote actors, signs N
//! activities with their keys, and ingests them through `Kernel.Ingest` at a given
//! concurrency (each one verified and durably appended); then measures ed25519 strict
//! verifications/s of the same envelopes on one core, and prints the ratio.

use super::{path, spawn_service};
use anyhow::Context;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{CreateActorRequest, IngestRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const CONNECTIONS: usize = 4;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remote actors signing the activities.
    #[arg(long, default_value_t = 100)]
    actors: usize,
    /// Activities ingested.
    #[arg(long, default_value_t = 20_000)]
    activities: usize,
    /// Concurrent ingest calls.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where the temp data dirs go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("fedsx-bench-").tempdir_in(&args.dir)?;
    let data = scratch.path().join("log-store");
    let secret = scratch.path().join("node-secret");
    let (log_store, _log_store) = spawn_service(&["log-store", "--listen", "127.0.0.1:0", "--data-dir", path(&data)?])?;
    let (kernel, _kernel) = super::spawn_kernel(&log_store, super::NO_DELIVERY, path(&secret)?, &[])?;
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(KernelClient::new(
            Channel::from_shared(kernel.clone())?.connect().await?,
        ));
    }
    let mut client = connections[0].clone();
    client
        .create_actor(CreateActorRequest { name: "bench".into() })
        .await
        .context("creating the recipient")?;

    println!("machine: {} cores", std::thread::available_parallelism()?);
    println!(
        "signing {} activities by {} remote actors…",
        args.activities, args.actors
    );
    let peers = super::remote_actors(args.actors);
    super::register(&mut client, &peers).await?;
    let signed = super::sign_all(&peers, args.activities);
    let envelopes = Arc::new(signed.clone());
    let connections = Arc::new(connections);

    let run = super::drive(envelopes.len(), args.concurrency, move |i| {
        let mut client = connections[i % CONNECTIONS].clone();
        let envelope = envelopes[i].clone();
        async move {
            let request = IngestRequest {
                recipient: "bench".into(),
                envelope: envelope.into(),
            };
            client.ingest(request).await.is_ok_and(|answer| answer.get_ref().new)
        }
    })
    .await?;
    let rate = run.rate;
    println!(
        "\ningest through kernel → log-store, concurrency {}: {rate:.0}/s durable ({} ok, {} errors, p50 {:?}, p99 {:?})",
        args.concurrency, run.ok, run.errors, run.p50, run.p99
    );

    let verify_rate = tokio::task::block_in_place(|| verifies_per_second(&signed, &peers));
    println!("ed25519 strict decode+verify of the same envelopes, one core: {verify_rate:.0}/s");
    println!("ratio ingest/verify: {:.2}", rate / verify_rate);
    Ok(())
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
