//! `fedsx bench inbound`: the load generator. Registers M remote actors with a node, signs N
//! activities with their keys, POSTs them to the node's inbox over HTTP (keep-alive) at a
//! given concurrency, and prints activities/s, p50/p99 latency and non-202 answers. In the
//! same run it measures the ceiling: a minimal axum handler in this process that verifies
//! the same envelopes and answers 202. With `--activitypub`, then the same for signed
//! ActivityPub POSTs (`inbound_ap.rs`). Then the resident memory of the node's processes.

use super::Run;
use axum::body::Bytes;
use ed25519_dalek::VerifyingKey;
use fedsx_proto::kernel::v1::CreateActorRequest;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node's gateway.
    #[arg(long, default_value = "http://127.0.0.1:8700")]
    target: String,
    /// The node's kernel (to register the remote actors and create the recipient).
    #[arg(long, env = "FEDSX_KERNEL", default_value = "http://127.0.0.1:8701")]
    kernel: String,
    /// The local actor receiving the activities (created when missing).
    #[arg(long, default_value = "bench")]
    recipient: String,
    #[arg(long, default_value_t = 100)]
    actors: usize,
    #[arg(long, default_value_t = 20_000)]
    activities: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Also POST signed ActivityPub activities (RSA, draft-cavage) in the same run, by actors
    /// whose documents this process serves on loopback (the node needs
    /// --allow-private-peers to fetch them).
    #[arg(long)]
    activitypub: bool,
    #[arg(long, default_value_t = 10)]
    activitypub_actors: usize,
    #[arg(long, default_value_t = 5_000)]
    activitypub_activities: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.kernel.clone())?.connect().await?;
    let mut kernel = KernelClient::new(fedsx_runtime::trace_context::traced(channel));
    if let Err(status) = kernel
        .create_actor(CreateActorRequest {
            name: args.recipient.clone(),
        })
        .await
        && status.code() != tonic::Code::AlreadyExists
    {
        anyhow::bail!("creating {}: {}", args.recipient, status.message());
    }
    // Fresh actors each run, so every activity is new to the node.
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let peers: Vec<_> = super::remote_actors(args.actors)
        .into_iter()
        .map(|(key, url)| (key, url.replace("bench.example", &format!("bench-{salt}.example"))))
        .collect();
    super::register(&mut kernel, &peers).await?;
    let envelopes = super::sign_all(&peers, args.activities);
    println!(
        "machine: {} cores; {} activities by {} actors, concurrency {}",
        std::thread::available_parallelism()?,
        args.activities,
        args.actors,
        args.concurrency
    );

    let inbox = format!("{}/actors/{}/inbox", args.target.trim_end_matches('/'), args.recipient);
    let requests = native_requests(&envelopes);
    let node = load(&inbox, &requests, args.concurrency).await?;
    println!(
        "node {inbox}: {:.0} activities/s durable, p50 {:?}, p99 {:?}, {} accepted, {} not 202",
        node.rate, node.p50, node.p99, node.ok, node.errors
    );

    let keys: HashMap<String, VerifyingKey> = peers.iter().map(|(k, u)| (u.clone(), k.verifying_key())).collect();
    let ceiling_url = ceiling(Arc::new(keys)).await?;
    let ceiling = load(&ceiling_url, &requests, args.concurrency).await?;
    println!(
        "ceiling (one process: axum, decode + strict verify, 202): {:.0}/s, p50 {:?}, p99 {:?}, {} not 202",
        ceiling.rate, ceiling.p50, ceiling.p99, ceiling.errors
    );
    println!("ratio node/ceiling: {:.2}", node.rate / ceiling.rate);
    if args.activitypub {
        let recipient = format!("{}/actors/{}", args.target.trim_end_matches('/'), args.recipient);
        let ap = super::inbound_ap::run(
            &inbox,
            &recipient,
            args.activitypub_actors,
            args.activitypub_activities,
            args.concurrency,
        )
        .await?;
        println!(
            "activitypub {inbox}: {:.0} activities/s durable, p50 {:?}, p99 {:?}, {} accepted, {} not 202",
            ap.rate, ap.p50, ap.p99, ap.ok, ap.errors
        );
        println!("ratio activitypub/native: {:.2}", ap.rate / node.rate);
    }
    println!("resident memory after:");
    for (pid, command, rss) in fedsx_processes() {
        println!("  {pid:>7} {:>6} MB  {command}", rss / 1024);
    }
    Ok(())
}

/// One request of a load: its headers (content type among them) and body.
pub(super) type Prepared = (Vec<(&'static str, String)>, Vec<u8>);

/// fed-sx envelopes as inbox POSTs.
fn native_requests(envelopes: &[Vec<u8>]) -> Arc<Vec<Prepared>> {
    let content_type = vec![("content-type", fedsx_wire::CONTENT_TYPE.to_owned())];
    Arc::new(envelopes.iter().map(|e| (content_type.clone(), e.clone())).collect())
}

/// POSTs every prepared request to `url` from `concurrency` keep-alive connections; a 202
/// is a success.
pub(super) async fn load(url: &str, requests: &Arc<Vec<Prepared>>, concurrency: usize) -> anyhow::Result<Run> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector);
    let uri: http::Uri = url.parse()?;
    let requests = requests.clone();
    super::drive(requests.len(), concurrency, move |i| {
        let (client, uri) = (client.clone(), uri.clone());
        let (headers, body) = &requests[i];
        let mut request = http::Request::post(uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.clone())))
            .expect("a valid request");
        async move {
            match client.request(request).await {
                Ok(response) => {
                    let accepted = response.status() == http::StatusCode::ACCEPTED;
                    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    accepted
                }
                Err(_) => false,
            }
        }
    })
    .await
}

/// The one-process ceiling: decode, strict verify against the known keys, answer 202.
async fn ceiling(keys: Arc<HashMap<String, VerifyingKey>>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/inbox", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/inbox",
        axum::routing::post(move |body: Bytes| {
            let keys = keys.clone();
            async move {
                let verified = fedsx_wire::decode(&body)
                    .ok()
                    .and_then(|r| keys.get(&r.activity.actor).map(|key| r.verify(key).is_ok()))
                    .unwrap_or(false);
                if verified {
                    http::StatusCode::ACCEPTED
                } else {
                    http::StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// (pid, command line, resident KB) of every running `fedsx` service process.
fn fedsx_processes() -> Vec<(u32, String, u64)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_service = args.first().is_some_and(|a| a.ends_with("fedsx"))
            && args
                .get(1)
                .is_some_and(|a| ["log-store", "kernel", "delivery", "gateway"].contains(&a.as_str()));
        if !is_service {
            continue;
        }
        let rss = std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        found.push((pid, args[..2.min(args.len())].join(" "), rss));
    }
    found
}
