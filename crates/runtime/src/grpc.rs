//! Serving one fed-sx gRPC service the same way everywhere: the service itself plus
//! `grpc.health.v1` health and server reflection, trace context taken from each call, call
//! metrics, Prometheus text at `GET /metrics` (HTTP/1.1 on the same port), and graceful
//! shutdown (NOT_SERVING first, then in-flight calls finish).

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// Accepted connections with Nagle's algorithm off: small gRPC frames go out at once instead
/// of waiting for the peer's delayed ACK (a 40 ms stall per exchange otherwise).
fn nodelay(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |accepted| {
        accepted.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}

/// Serves `routes` (the service named `service_name`, e.g. `fedsx.logstore.v1.LogStore`)
/// on `listener` until `shutdown` is cancelled. The health service reports SERVING for
/// `service_name` and for the whole server (`""`) until shutdown, NOT_SERVING after.
/// Announces the bound address once serving (see [`crate::listen::announce`]).
pub async fn serve(
    service_name: &str,
    routes: Routes,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with_readiness(service_name, routes, listener, shutdown, watch::channel(true).1).await
}

/// Like [`serve`], with the named service's health following `ready` (false while a
/// dependency such as the database is unreachable: readiness), while `""` stays SERVING
/// until shutdown (liveness: the process itself is fine).
pub async fn serve_with_readiness(
    service_name: &str,
    routes: Routes,
    listener: TcpListener,
    shutdown: CancellationToken,
    mut ready: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let status = |ready: bool| {
        if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let now = *ready.borrow_and_update();
    health.set_service_status(service_name, status(now)).await;
    health.set_service_status("", ServingStatus::Serving).await;
    let follow = {
        let (health, name, shutdown) = (health.clone(), service_name.to_owned(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = ready.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let now = *ready.borrow_and_update();
                        health.set_service_status(&name, status(now)).await;
                    }
                }
            }
        })
    };

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fedsx_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let mut routes = routes.add_service(health_service).add_service(reflection);
    // Prometheus scrapes the same port over HTTP/1.1.
    let router = std::mem::take(routes.axum_router_mut());
    *routes.axum_router_mut() = router.route("/metrics", axum::routing::get(crate::metrics::handler));

    crate::listen::announce(service_name, &listener)?;
    let name = service_name.to_owned();
    let stopping = async move {
        shutdown.cancelled().await;
        health.set_service_status(&name, ServingStatus::NotServing).await;
        health.set_service_status("", ServingStatus::NotServing).await;
        tracing::info!(service = %name, "not serving; finishing in-flight calls");
    };

    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .trace_fn(crate::trace_context::grpc_server_span)
        .layer(crate::rpc_metrics::RpcMetricsLayer::default())
        .add_routes(routes)
        .serve_with_incoming_shutdown(nodelay(listener), stopping)
        .await
        .context("gRPC server failed");
    follow.abort();
    served
}
