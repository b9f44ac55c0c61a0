//! The fed-sx gateway: the node's only public face. HTTP routes (welcome, actor documents,
//! inbox POST, outbox reads, flows, health, readiness, metrics), each turned into a kernel gRPC
//! call; it holds no state. Errors come from the shared error-code table.

mod activitypub;
mod config;
mod error;
pub mod flows;
pub mod kernels;
mod metrics;
mod routes;
mod server;

pub use config::Config;

use axum::Router;
use axum::routing::{get, post};
use fedsx_runtime::CancellationToken;
use fedsx_runtime::trace_context::lazy_channel;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Builds the routes over a kernel at `config.kernel` (connected on first use).
pub fn router(config: &Config) -> anyhow::Result<Router> {
    let channel = lazy_channel("--kernel", &config.kernel)?;
    let app = Arc::new(routes::App {
        kernels: kernels::Kernels::new(channel.clone()),
        health: tonic_health::pb::health_client::HealthClient::new(channel),
        public_url: config.public_url.trim_end_matches('/').to_owned(),
        metrics: metrics::Metrics::default(),
        request_timeout: config.request_timeout,
        admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
    });
    if app.admin_token.is_none() {
        tracing::warn!("no --admin-token: anyone who reaches the gateway may start and signal flows");
    }
    let flow_routes = Router::new()
        .route("/flows", get(flows::list))
        .route("/flows/{name}", post(flows::start).get(flows::get))
        .route("/flows/{id}/signal/{signal}", post(flows::signal))
        .layer(axum::extract::DefaultBodyLimit::max(flows::MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), flows::authorize));
    Ok(Router::new()
        .merge(flow_routes)
        .route("/", get(routes::welcome))
        .route("/actors/{name}", get(routes::actor))
        .route("/actors/{name}/inbox", post(routes::inbox))
        .route("/inbox", post(routes::node_inbox))
        .route("/actors/{name}/outbox", get(routes::outbox))
        .route("/actors/{name}/followers", get(routes::followers))
        .route("/.well-known/webfinger", get(activitypub::webfinger))
        .route("/.well-known/nodeinfo", get(activitypub::nodeinfo_links))
        .route("/nodeinfo/2.1", get(activitypub::nodeinfo))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(fedsx_runtime::metrics::handler))
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(axum::middleware::from_fn_with_state(app.clone(), routes::around))
        .with_state(app))
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let router = router(&config)?;
    fedsx_runtime::listen::announce("gateway", &listener)?;
    let limits = server::Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections as usize,
    };
    server::serve(listener, router, limits, shutdown).await;
    tracing::info!("gateway stopped");
    Ok(())
}
