//! The HTTP/1.1 server under the routes, with the limits a public face needs against
//! clients that are broken or hostile: a deadline for each request's headers, another for a
//! connection left idle between requests (both in [`clock`]), and a cap on open connections
//! — past it, new connections wait in the listen backlog until one closes.

mod clock;

use axum::Router;
use axum::body::Body;
use clock::{Clock, TimedIo};
use fedsx_runtime::CancellationToken;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// How long in-flight requests may take to finish once shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From a connection's opening, or the first byte of a later request, until that
    /// request's headers are complete; past it the connection is closed.
    pub header_timeout: Duration,
    /// From the end of a response until the first byte of the next request; past it the
    /// connection is closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The clock keeps the header and idle deadlines; hyper's own timer would merge them.
    http.header_read_timeout(None);
    let service = router.map_request(|request: http::Request<Incoming>| request.map(Body::new));
    let mut warned_full = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !warned_full {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait until one closes"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        if permits.available_permits() > 0 {
            warned_full = false;
        }
        let clock = Clock::new(limits.header_timeout, limits.idle_timeout);
        let io = TokioIo::new(TimedIo::new(stream, clock.clone()));
        let service = service.clone();
        let handler = hyper::service::service_fn(move |request| {
            let busy = clock.request_started();
            let call = service.clone().oneshot(request);
            async move {
                let response = call.await?;
                // The request counts as served until hyper drops the body it has written.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &busy;
                        frame
                    }))
                }))
            }
        });
        let connection = http.serve_connection(io, handler);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
}
