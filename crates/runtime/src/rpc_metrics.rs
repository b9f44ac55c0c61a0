//! `rpc.server.call.duration` for every gRPC call a service answers: a histogram (seconds)
//! by `rpc.service`, `rpc.method` and `rpc.response.status_code`, so its count is the
//! request count by method and code.

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Clone)]
pub struct RpcMetricsLayer {
    duration: Histogram<f64>,
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        let duration = crate::metrics::meter()
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("gRPC calls answered, by method and status code, and how long they took")
            .with_boundaries(crate::metrics::LATENCY_BUCKETS.to_vec())
            .build();
        RpcMetricsLayer { duration }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            duration: self.duration.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    duration: Histogram<f64>,
}

/// `UNAVAILABLE` for `Code::Unavailable`: the status code names of the gRPC spec.
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// tonic refuses a request over the service's message limit with OUT_OF_RANGE; the gRPC
/// code for "too large" is RESOURCE_EXHAUSTED (what grpc-go answers, and what our error
/// table and docs promise), so the answer is rewritten to it, message kept.
fn oversize_is_resource_exhausted(headers: &mut http::HeaderMap) {
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let oversize = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if out_of_range && oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // "/pkg.Service/Method"; anything else (GET /metrics over HTTP/1) is not an RPC.
        let method = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map(|(service, method)| (service.to_owned(), method.to_owned()));
        let started = Instant::now();
        let answer = self.inner.call(request);
        let duration = self.duration.clone();
        Box::pin(async move {
            let mut result = answer.await;
            if let Ok(response) = &mut result {
                oversize_is_resource_exhausted(response.headers_mut());
            }
            if let Some((service, method)) = method {
                // Errors are trailers-only (grpc-status in the headers); a success carries
                // its status in the trailers.
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from),
                    Err(_) => tonic::Code::Unknown,
                };
                let attributes = [
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.response.status_code", code_name(code)),
                ];
                duration.record(started.elapsed().as_secs_f64(), &attributes);
                // This future runs inside the call's server span (tonic's trace_fn).
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                if code != tonic::Code::Ok {
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_names_are_the_spec_names() {
        assert_eq!(super::code_name(tonic::Code::Ok), "OK");
        assert_eq!(super::code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(super::code_name(tonic::Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
