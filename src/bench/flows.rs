//! `fedsx bench flows`: starts a log-store and a kernel, starts N `publish-digest` instances
//! (each suspends awaiting approval), restarts the kernel and times how long it takes to
//! recover them, then rejects them all. Beside it: plain synced appends/s through gRPC to
//! the same log-store at the same concurrency (a start is 2 journal appends, a reject 2).

use super::{KillOnDrop, path, spawn_service};
use anyhow::Context;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{
    CreateActorRequest, FlowStatus, ListFlowsRequest, PublishRequest, SignalRequest, StartFlowRequest,
};
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::wire::v1::ActivityType;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const CONNECTIONS: usize = 4;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Flow instances started (and recovered, and signalled).
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Concurrent calls.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where the temp data dirs go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

struct Kernel {
    url: String,
    process: KillOnDrop,
}

fn start_kernel(log_store: &str, secret: &str) -> anyhow::Result<Kernel> {
    let (url, process) = super::spawn_kernel(log_store, super::NO_DELIVERY, secret, &[])?;
    Ok(Kernel { url, process })
}

async fn connect(url: &str) -> anyhow::Result<Vec<KernelClient<Channel>>> {
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(KernelClient::new(
            Channel::from_shared(url.to_owned())?.connect().await?,
        ));
    }
    Ok(connections)
}

/// Suspended instances, counted page by page.
async fn suspended(client: &mut KernelClient<Channel>) -> anyhow::Result<usize> {
    let (mut count, mut after) = (0, String::new());
    loop {
        let request = ListFlowsRequest {
            status: FlowStatus::Suspended.into(),
            after,
            limit: 1000,
            ..ListFlowsRequest::default()
        };
        let page = client.list_flows(request).await?.into_inner();
        count += page.flows.len();
        if page.next.is_empty() {
            return Ok(count);
        }
        after = page.next;
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("fedsx-bench-").tempdir_in(&args.dir)?;
    let data = scratch.path().join("log-store");
    let secret = scratch.path().join("node-secret");
    let secret = path(&secret)?;
    let (log_store, _log_store) = spawn_service(&["log-store", "--listen", "127.0.0.1:0", "--data-dir", path(&data)?])?;
    let began = Instant::now();
    let kernel = start_kernel(&log_store, secret)?;
    let empty_start = began.elapsed();
    let connections = connect(&kernel.url).await?;
    let mut client = connections[0].clone();
    client
        .create_actor(CreateActorRequest { name: "editor".into() })
        .await
        .context("creating the actor")?;
    for i in 0..20 {
        let note = PublishRequest {
            actor: "editor".into(),
            r#type: ActivityType::Create.into(),
            to: vec!["followers".into()],
            content: format!("note {i}: something worth a digest"),
            once_key: Default::default(),
            ..PublishRequest::default()
        };
        client.publish(note).await?;
    }
    println!("machine: {} cores", std::thread::available_parallelism()?);

    let ids = Arc::new(Mutex::new(Vec::with_capacity(args.instances)));
    let starts = {
        let (connections, ids) = (Arc::new(connections), ids.clone());
        super::drive(args.instances, args.concurrency, move |i| {
            let mut client = connections[i % CONNECTIONS].clone();
            let ids = ids.clone();
            async move {
                let request = StartFlowRequest {
                    name: "publish-digest".into(),
                    input: r#"{"actor":"editor","notes":10}"#.into(),
                };
                match client.start_flow(request).await {
                    Ok(flow) if flow.get_ref().status() == FlowStatus::Suspended => {
                        ids.lock().expect("ids").push(flow.into_inner().id);
                        true
                    }
                    _ => false,
                }
            }
        })
        .await?
    };
    println!(
        "\nStartFlow publish-digest (gather 10 notes, suspend), concurrency {}: {:.0}/s ({} ok, {} errors, p50 {:?}, p99 {:?})",
        args.concurrency, starts.rate, starts.ok, starts.errors, starts.p50, starts.p99
    );

    drop(kernel.process);
    let began = Instant::now();
    let kernel = start_kernel(&log_store, secret)?;
    let recovered_in = began.elapsed();
    let connections = connect(&kernel.url).await?;
    let mut client = connections[0].clone();
    let recovered = suspended(&mut client).await?;
    println!(
        "kernel restart with {recovered} suspended instances: serving after {recovered_in:?} (an empty kernel: {empty_start:?})"
    );
    anyhow::ensure!(
        recovered == starts.ok,
        "{} started but {recovered} recovered",
        starts.ok
    );

    let ids = Arc::new(std::mem::take(&mut *ids.lock().expect("ids")));
    let signals = {
        let (connections, ids) = (Arc::new(connections), ids.clone());
        super::drive(ids.len(), args.concurrency, move |i| {
            let mut client = connections[i % CONNECTIONS].clone();
            let request = SignalRequest {
                id: ids[i].clone(),
                signal: "reject".into(),
                payload: r#""bench""#.into(),
            };
            async move {
                client
                    .signal(request)
                    .await
                    .is_ok_and(|flow| flow.get_ref().status() == FlowStatus::Done)
            }
        })
        .await?
    };
    println!(
        "Signal reject (resume, end), concurrency {}: {:.0}/s ({} ok, {} errors, p50 {:?}, p99 {:?})",
        args.concurrency, signals.rate, signals.ok, signals.errors, signals.p50, signals.p99
    );

    let mut appenders = Vec::new();
    for _ in 0..CONNECTIONS {
        appenders.push(LogStoreClient::new(
            Channel::from_shared(log_store.clone())?.connect().await?,
        ));
    }
    let appends =
        super::log_store::grpc_appends(&appenders, "flows-9", 1000, args.concurrency, Duration::from_secs(5)).await?;
    println!(
        "same log-store, plain synced appends through gRPC, concurrency {}: {appends:.0}/s",
        args.concurrency
    );
    println!(
        "ratio (journal appends per second / plain appends per second): starts {:.2}, signals {:.2}",
        starts.rate * 2.0 / appends,
        signals.rate * 2.0 / appends
    );
    Ok(())
}
