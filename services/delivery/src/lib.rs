//! The fed-sx delivery service: a durable retry queue per peer (recipient actor) on RocksDB,
//! and one worker per peer that POSTs signed envelopes to the peer's inbox, retries on the
//! configured schedule, dead-letters what cannot be delivered and lets operators redrive it.
//! The decisions are the pure functions in [`queue`]; this crate persists and drives them.

mod config;
mod dispatch;
mod error;
mod metrics;
mod peer;
pub mod queue;
mod service;
mod store;

pub use config::Config;
pub use error::DeliveryError;

use anyhow::Context;
use fedsx_runtime::CancellationToken;
use fedsx_runtime::http_client::PeerHttp;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;

/// The gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "fedsx.delivery.v1.Delivery";

/// Opens the queue in `config.data_dir`, resumes every peer's worker where it stopped, and
/// serves delivery on `listener` until `shutdown` is cancelled.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let (store, loaded) = tokio::task::spawn_blocking(move || {
        let store = store::Store::open(&data_dir)?;
        let loaded = store.load()?;
        Ok::<_, String>((store, loaded))
    })
    .await
    .context("opening the queue panicked")?
    .map_err(|err| anyhow::anyhow!("--data-dir {}: {err}", config.data_dir.display()))?;

    let shared = Arc::new(peer::Shared {
        order: AtomicU64::new(store::Store::max_order(&loaded) + 1),
        store,
        http: PeerHttp::new(config.allow_private_peers, config.send_timeout),
        schedule: config.retry_schedule.clone(),
        max_in_flight: config.max_in_flight as usize,
        inbox_overrides: config.peer_inboxes(),
        shutdown: shutdown.clone(),
    });
    let mut peers = HashMap::new();
    let (mut pending, mut dead) = (0, 0);
    for loaded_peer in loaded {
        let queue = Arc::new(peer::PeerQueue::restore(loaded_peer));
        let status = queue.status();
        pending += status.pending;
        dead += status.dead_letters;
        tokio::spawn(queue.clone().run(shared.clone()));
        peers.insert(status.peer, queue);
    }
    tracing::info!(
        peers = peers.len(),
        pending,
        dead_letters = dead,
        "delivery queue resumed"
    );
    let queues = Arc::new(service::Queues {
        shared,
        peers: std::sync::Mutex::new(peers),
    });
    let _gauges = metrics::register(&queues);
    let routes = tonic::service::Routes::new(service::server(queues));
    fedsx_runtime::grpc::serve(SERVICE_NAME, routes, listener, shutdown).await
}
