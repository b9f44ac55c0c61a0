//! The fed-sx log-store: per-actor append-only streams served over gRPC as
//! `fedsx.logstore.v1.LogStore`. A stream is (actor, kind); its entries are numbered
//! 1, 2, 3… with no gaps; its tip is the last number. Appends are idempotent by entry id,
//! may carry an expected tip, are group-committed, and are acknowledged only once durable.
//! Storage sits behind [`LogStorage`]: RocksDB embedded (the default) or PostgreSQL.

mod config;
mod error;
pub mod lease;
mod metrics;
mod migrate;
mod plan;
mod postgres;
mod rocks;
mod service;
mod storage;
mod stream;
mod waiters;

#[cfg(test)]
mod conformance;

pub use config::{Config, Tool};
pub use error::{OpenError, StoreError};
pub use migrate::{MigrateError, MigrateSummary, copy_streams};
pub use postgres::PgStore;
pub use rocks::RocksStore;
pub use storage::{AppendOutcome, Appended, LogStorage, Notice, Page};
pub use stream::{Entry, Kind, NewEntry, StreamId, limits};

use anyhow::Context;
use fedsx_runtime::CancellationToken;
use tokio::net::TcpListener;

/// The gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "fedsx.logstore.v1.LogStore";

/// Opens the engine `config` selects and serves it on `listener` until `shutdown` is
/// cancelled; then stops taking calls, lets in-flight appends finish and closes the engine.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    match &config.store {
        Some(url) => {
            let store = open_postgres(url, config.store_pool_size, &shutdown).await?;
            tracing::info!(store = %fedsx_pg::redact(url), "log-store opened on postgres");
            serve(store, listener, shutdown).await
        }
        None => {
            let data_dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || RocksStore::open(&data_dir))
                .await
                .context("opening the store panicked")?
                .with_context(|| format!("--data-dir {}", config.data_dir.display()))?;
            tracing::info!(data_dir = %config.data_dir.display(), "log-store opened on rocksdb");
            serve(store, listener, shutdown).await
        }
    }
}

/// Serves a log-store on RocksDB under `dir`, on a free port of 127.0.0.1, in a task of this
/// process until `shutdown`; its URL. For tests of the services that use a log-store.
pub async fn spawn_on_loopback(dir: &std::path::Path, shutdown: CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let listen = listener.local_addr()?;
    let config = Config {
        listen,
        data_dir: dir.join("log-store"),
        store: None,
        store_pool_size: 4,
        tool: None,
    };
    tokio::spawn(run(config, listener, shutdown));
    Ok(format!("http://{listen}"))
}

/// Opens the PostgreSQL engine (waiting a while for a database that is not reachable yet;
/// a schema newer than this build fails at once), unless `shutdown` comes first.
pub async fn open_postgres(url: &str, pool_size: u32, shutdown: &CancellationToken) -> anyhow::Result<PgStore> {
    let mut options = fedsx_pg::PoolOptions::new("fedsx-log-store");
    options.max_size = pool_size as usize;
    tokio::select! {
        opened = PgStore::open(url, &options) => opened.with_context(|| format!("--store {}", fedsx_pg::redact(url))),
        () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for postgres"),
    }
}

/// Runs an operator tool (`fedsx log-store migrate …`).
pub async fn run_tool(tool: Tool) -> anyhow::Result<()> {
    match tool {
        Tool::Migrate { from, to } => {
            let dir = from.clone();
            let source = tokio::task::spawn_blocking(move || RocksStore::open(&dir))
                .await
                .context("opening the source panicked")?
                .with_context(|| format!("--from {} (stop the log-store that uses it first)", from.display()))?;
            let target = open_postgres(&to, 8, &CancellationToken::new()).await?;
            let mut streams = 0u64;
            let summary = copy_streams(&source, &target, |stream, tip| {
                streams += 1;
                tracing::debug!(stream = %stream, tip, "stream copied");
                if streams.is_multiple_of(1000) {
                    tracing::info!(streams, "streams copied so far");
                }
            })
            .await
            .with_context(|| format!("migrating {} to {}", from.display(), fedsx_pg::redact(&to)))?;
            target.close().await?;
            source.close().await?;
            println!(
                "migrated {} streams: {} entries copied, {} already there, {} bytes; every tip matches",
                summary.streams, summary.copied, summary.already_there, summary.bytes
            );
            Ok(())
        }
    }
}

async fn serve<S: LogStorage>(store: S, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let routes = tonic::service::Routes::new(service::server(store.clone(), shutdown.clone()));
    let served =
        fedsx_runtime::grpc::serve_with_readiness(SERVICE_NAME, routes, listener, shutdown, store.readiness()).await;
    let closed = store.close().await;
    served?;
    closed.context("closing the store")?;
    tracing::info!("log-store stopped");
    Ok(())
}
