//! W3C trace context across gRPC hops: extracted from incoming request headers into the
//! server span, injected from the current span into outgoing request metadata.

pub use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The server span of one gRPC call, a child of the caller's span when the request carries
/// a `traceparent`. Used as tonic's `trace_fn`.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", path));
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    // Fails only when no OpenTelemetry layer is installed; the span is then local only.
    let _ = span.set_parent(parent);
    span
}

/// The server span of one HTTP request, a child of the caller's span when the request carries
/// a `traceparent` (a peer node's delivery, or a client).
pub fn http_server_span(method: &http::Method, route: &str, headers: &http::HeaderMap) -> tracing::Span {
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

/// A tonic interceptor that injects the current span's trace context into the call.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectTraceContext;

impl tonic::service::Interceptor for InjectTraceContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

/// The W3C `traceparent` of the current span, for work that continues it later (a queued
/// delivery); None when no OpenTelemetry context is active.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// A channel to another fed-sx service whose calls carry the caller's trace context.
pub type TracedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, InjectTraceContext>;

/// A traced channel to the service at `url` (named by `flag` in errors) that connects on
/// first use and reconnects, so a service starts even when the one it calls is not up yet.
pub fn lazy_channel(flag: &str, url: &str) -> anyhow::Result<TracedChannel> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|err| anyhow::anyhow!("{flag} {url}: {err}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    Ok(traced(endpoint.connect_lazy()))
}

/// Wraps `channel` so every call made over it carries the current trace context.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    tonic::service::interceptor::InterceptedService::new(channel, InjectTraceContext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tonic::service::Interceptor;
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

            let outgoing = span.in_scope(|| InjectTraceContext.call(tonic::Request::new(())).unwrap());
            let traceparent = outgoing.metadata().get("traceparent").unwrap().to_str().unwrap();
            assert_eq!(
                traceparent,
                format!("00-{TRACE_ID}-{}-01", server.span_id()),
                "the next hop's parent is this server span"
            );
        });
    }

    #[test]
    fn a_call_without_traceparent_starts_a_new_trace() {
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
