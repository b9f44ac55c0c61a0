//! W3C trace context across gRPC hops: extracted from incoming request headers into the
//! server span; each outgoing call gets a client span whose context it carries.

pub use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use std::sync::atomic::{AtomicBool, Ordering};
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether this process exports traces (an OTLP endpoint is configured); set once at start.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Records whether this process exports traces (see [`crate::telemetry::init`]).
pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}

/// Whether a request gets a span: always when this process exports traces; otherwise only
/// to continue a caller's trace (its `traceparent`), so the context still reaches the next
/// hop. A root span that nobody exports would cost every call its building and nothing else.
fn wanted(exporting: bool, headers: &http::HeaderMap) -> bool {
    exporting || headers.contains_key("traceparent")
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The server span of one gRPC call, a child of the caller's span when the request carries
/// a `traceparent`. Used as tonic's `trace_fn`.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if !is_traced(path) || !wanted(EXPORTING.load(Ordering::Relaxed), request.headers()) {
        return tracing::Span::none();
    }
    let span = grpc_span("server", path);
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Fails only when no OpenTelemetry layer is installed; the span is then local only.
    let _ = span.set_parent(parent);
    span
}

/// The span of one gRPC call to `path` (`/package.Service/Method`), as its `kind`
/// ("server" or "client") sees it, named `Service/Method` with the RPC semantic conventions.
fn grpc_span(kind: &'static str, path: &str) -> tracing::Span {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", path));
    tracing::info_span!(
        "grpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = kind,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Whether requests to `path` get a server span: not Prometheus's scrapes of `/metrics`,
/// which come every few seconds and would bury the traces worth reading.
fn is_traced(path: &str) -> bool {
    path != "/metrics"
}

/// The server span of one HTTP request, a child of the caller's span when the request carries
/// a `traceparent` (a peer node's delivery, or a client).
pub fn http_server_span(method: &http::Method, route: &str, headers: &http::HeaderMap) -> tracing::Span {
    if !is_traced(route) || !wanted(EXPORTING.load(Ordering::Relaxed), headers) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    // Fails only when no OpenTelemetry layer is installed; the span is then local only.
    let _ = span.set_parent(parent);
    span
}

/// The client span of one outbound HTTP request (delivery's POST to a peer's inbox), a child
/// of the W3C `traceparent` given (empty: a new trace). Send [`traceparent_of`] this span.
pub fn http_client_span(method: &http::Method, url: &str, traceparent: &str) -> tracing::Span {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned))
        .unwrap_or_default();
    let span = tracing::info_span!(
        "http.client",
        otel.name = %method,
        otel.kind = "client",
        http.request.method = %method,
        url.full = %url,
        server.address = %host,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        fedsx.peer = tracing::field::Empty,
        fedsx.activity_id = tracing::field::Empty,
    );
    if !traceparent.is_empty() {
        let _ = span.set_parent(context_of(traceparent));
    }
    span
}

/// The trace context a W3C `traceparent` names.
pub fn context_of(traceparent: &str) -> opentelemetry::Context {
    let carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

/// The W3C `traceparent` that makes a callee a child of `span`.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// The W3C `traceparent` of the current span, for work that continues it later (a queued
/// delivery); None when no OpenTelemetry context is active.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// A channel to another fed-sx service: every call gets a client span (a child of the
/// caller's current span) whose trace context it carries to the callee.
#[derive(Debug, Clone)]
pub struct TracedChannel {
    inner: tonic::transport::Channel,
}

type CallFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<tonic::body::Body>, tonic::transport::Error>> + Send>,
>;

impl tower::Service<http::Request<tonic::body::Body>> for TracedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        use tracing::Instrument;
        if !EXPORTING.load(Ordering::Relaxed) && tracing::Span::current().is_none() {
            // Nothing to continue and nothing exported here: no span to build.
            return Box::pin(self.inner.call(request));
        }
        let span = start_client_call(&mut request);
        let call = self.inner.call(request);
        let recorder = span.clone();
        Box::pin(
            async move {
                let answer = call.await;
                // A failed call answers its status in the headers ("trailers only"); a
                // successful one in trailers, which this span does not wait for.
                match &answer {
                    Ok(response) => {
                        let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                        if let Some(code) = code.and_then(|c| c.parse::<i32>().ok()) {
                            recorder.record("rpc.grpc.status_code", code);
                            if code != 0 {
                                recorder.record("otel.status_code", "ERROR");
                            }
                        }
                    }
                    Err(_) => {
                        recorder.record("otel.status_code", "ERROR");
                    }
                }
                answer
            }
            .instrument(span),
        )
    }
}

/// The client span of the gRPC call `request` makes, a child of the current span, with its
/// trace context put into the request's headers.
fn start_client_call<B>(request: &mut http::Request<B>) -> tracing::Span {
    let span = grpc_span("client", request.uri().path());
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()));
    });
    span
}

/// A traced channel to the service at `url` (named by `flag` in errors) that connects on
/// first use and reconnects, so a service starts even when the one it calls is not up yet.
pub fn lazy_channel(flag: &str, url: &str) -> anyhow::Result<TracedChannel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|err| anyhow::anyhow!("{flag} {url}: {err}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    Ok(traced(endpoint.connect_lazy()))
}

/// Wraps `channel` so every call made over it has a client span and carries its context.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    TracedChannel { inner: channel }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_call_continues_the_callers_trace_and_passes_it_on() {
        with_otel(|| {
            let request = http::Request::builder()
                .uri("/fedsx.logstore.v1.LogStore/Append")
                .header("traceparent", format!("00-{TRACE_ID}-{PARENT}-01"))
                .body(())
                .unwrap();
            let span = grpc_server_span(&request);
            let context = span.context();
            let server = context.span().span_context().clone();
            assert_eq!(server.trace_id().to_string(), TRACE_ID);
            assert_ne!(server.span_id().to_string(), PARENT, "the server span is a new span");

            let mut outgoing = http::Request::builder()
                .uri("/fedsx.delivery.v1.Delivery/Enqueue")
                .body(())
                .unwrap();
            let client = span.in_scope(|| start_client_call(&mut outgoing));
            let client_context = client.context();
            let client_span = client_context.span().span_context().clone();
            assert_eq!(
                client_span.trace_id().to_string(),
                TRACE_ID,
                "the call continues the trace"
            );
            assert_ne!(
                client_span.span_id(),
                server.span_id(),
                "the call has a span of its own"
            );
            let traceparent = outgoing.headers().get("traceparent").unwrap().to_str().unwrap();
            assert_eq!(
                traceparent,
                format!("00-{TRACE_ID}-{}-01", client_span.span_id()),
                "the next hop's parent is the client span"
            );
        });
    }

    #[test]
    fn without_export_only_a_callers_trace_is_continued() {
        let mut headers = http::HeaderMap::new();
        assert!(!wanted(false, &headers), "no export, no caller's trace: no span");
        assert!(wanted(true, &headers), "exported here: every call has a span");
        headers.insert("traceparent", format!("00-{TRACE_ID}-{PARENT}-01").parse().unwrap());
        assert!(
            wanted(false, &headers),
            "a caller's trace is continued also when not exported here"
        );
    }

    #[test]
    fn a_call_without_traceparent_starts_a_new_trace() {
        set_exporting(true);
        with_otel(|| {
            let request = http::Request::builder()
                .uri("/fedsx.logstore.v1.LogStore/Tip")
                .body(())
                .unwrap();
            let span = grpc_server_span(&request);
            let context = span.context();
            assert!(context.span().span_context().is_valid());
            assert_ne!(context.span().span_context().trace_id().to_string(), TRACE_ID);
        });
    }
}
