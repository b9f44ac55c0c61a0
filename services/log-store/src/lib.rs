//! The fed-sx log-store: per-actor append-only streams on RocksDB, served over gRPC as
//! `fedsx.logstore.v1.LogStore`. A stream is (actor, kind); its entries are numbered
//! 1, 2, 3… with no gaps; its tip is the last number. Appends are idempotent by entry id,
//! may carry an expected tip, are group-committed, and are acknowledged only once synced.

mod config;
mod error;
mod keys;
mod service;
mod store;
mod stream;
mod writer;

pub use config::Config;
pub use error::{OpenError, StoreError};
pub use store::{AppendOutcome, Appended, Store};
pub use stream::{Entry, Kind, NewEntry, StreamId, limits};

use anyhow::Context;
use fedsx_runtime::CancellationToken;
use tokio::net::TcpListener;

/// The gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "fedsx.logstore.v1.LogStore";

/// Opens the store in `config.data_dir` and serves it on `listener` until `shutdown` is
/// cancelled; then stops taking calls, lets in-flight appends finish and closes the
/// database cleanly.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .context("opening the store panicked")?
        .with_context(|| format!("--data-dir {}", config.data_dir.display()))?;
    tracing::info!(data_dir = %config.data_dir.display(), "log-store opened");

    let routes = tonic::service::Routes::new(service::server(store.clone(), shutdown.clone()));
    let served = fedsx_runtime::grpc::serve(SERVICE_NAME, routes, listener, shutdown).await;
    let closed = tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store panicked")?;
    served?;
    closed.context("closing the store")?;
    tracing::info!("log-store stopped");
    Ok(())
}
