//! The fed-sx delivery service: a durable retry queue per peer (recipient actor), and one
//! worker per leased peer that POSTs signed envelopes to the peer's inbox, retries on the
//! configured schedule, dead-letters what cannot be delivered and lets operators redrive
//! it. The decisions are the pure functions in [`queue`]; the queue's storage sits behind
//! [`QueueStorage`] — RocksDB embedded (the default) or PostgreSQL, shared by any number of
//! delivery replicas with per-destination leases.

mod config;
#[cfg(test)]
mod conformance;
mod dispatch;
mod dispatcher;
mod error;
mod metrics;
mod postgres;
pub mod queue;
mod rocks;
mod service;
mod sign;
mod storage;

pub use config::Config;
pub use error::DeliveryError;
pub use postgres::PgQueue;
pub use rocks::RocksQueue;
pub use storage::{Due, NewDelivery, Outcome, PeerStatus, QueueError, QueueStorage};

use anyhow::Context;
use dispatcher::{Dispatcher, Settings};
use fedsx_runtime::CancellationToken;
use fedsx_runtime::http_client::PeerHttp;
use tokio::net::TcpListener;

/// The gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "fedsx.delivery.v1.Delivery";

/// Opens the queue `config` selects, resumes the work it holds, and serves delivery on
/// `listener` until `shutdown` is cancelled.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    match &config.store {
        Some(url) => {
            let queue = open_postgres(url, config.store_pool_size, &shutdown).await?;
            tracing::info!(store = %fedsx_pg::redact(url), "delivery queue opened on postgres");
            serve(queue, config, listener, shutdown).await
        }
        None => {
            let data_dir = config.data_dir.clone();
            let queue = tokio::task::spawn_blocking(move || RocksQueue::open(&data_dir))
                .await
                .context("opening the queue panicked")?
                .map_err(|err| anyhow::anyhow!("--data-dir {}: {err}", config.data_dir.display()))?;
            serve(queue, config, listener, shutdown).await
        }
    }
}

/// Opens the PostgreSQL queue (waiting a while for a database that is not reachable yet;
/// a schema newer than this build fails at once), unless `shutdown` comes first.
async fn open_postgres(url: &str, pool_size: u32, shutdown: &CancellationToken) -> anyhow::Result<PgQueue> {
    let mut options = fedsx_pg::PoolOptions::new("fedsx-delivery");
    options.max_size = pool_size as usize;
    tokio::select! {
        opened = PgQueue::open(url, &options) => opened.with_context(|| format!("--store {}", fedsx_pg::redact(url))),
        () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for postgres"),
    }
}

/// Forgets delivered records past `retention`, every quarter of it (between 1 s and 10 min).
async fn expire_delivered<Q: QueueStorage>(queue: Q, retention: std::time::Duration, shutdown: CancellationToken) {
    let every = (retention / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(600));
    let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match queue.expire(dispatcher::now_ms().saturating_sub(retention_ms)).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, ?retention, "records of delivered activities expired"),
            Err(err) => tracing::warn!(error = %err, "expiring delivered records failed; will retry"),
        }
    }
}

async fn serve<Q: QueueStorage>(
    queue: Q,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let statuses = queue.statuses().await?;
    tracing::info!(
        peers = statuses.len(),
        pending = statuses.iter().map(|s| s.pending).sum::<u64>(),
        dead_letters = statuses.iter().map(|s| s.dead_letters).sum::<u64>(),
        "delivery queue resumed"
    );
    let settings = Settings {
        http: PeerHttp::new(config.allow_private_peers, config.send_timeout),
        schedule: config.retry_schedule.clone(),
        max_in_flight: config.max_in_flight as usize,
        requests: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_requests as usize)),
        inbox_overrides: config.peer_inboxes(),
        owner: fedsx_pg::replica_name(),
        lease: config.lease,
        shutdown: shutdown.clone(),
        signer: std::sync::Arc::new(sign::Signer::new(config.node_secret_file.clone())),
    };
    let dispatcher = Dispatcher::new(queue.clone(), settings);
    tokio::spawn(dispatcher.clone().run());
    tokio::spawn(expire_delivered(queue.clone(), config.retention, shutdown.clone()));
    let _gauges = metrics::register(&dispatcher, config.metrics_peers as usize);
    let routes = tonic::service::Routes::new(service::server(dispatcher, config.unavailable_after));
    let served =
        fedsx_runtime::grpc::serve_with_readiness(SERVICE_NAME, routes, listener, shutdown, queue.readiness()).await;
    let closed = queue.close().await;
    served?;
    closed.context("closing the queue")?;
    Ok(())
}
