//! The HTTP routes: each turns a request into one kernel call and the kernel's answer (or
//! error) into an HTTP answer. No logic beyond that lives here.

use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fedsx_proto::kernel::v1::{GetActorRequest, IngestRequest, LogKind, ReadLogRequest};
use fedsx_runtime::trace_context::TracedChannel;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;

pub struct App {
    pub kernels: Arc<crate::kernels::Kernels>,
    pub health: HealthClient<TracedChannel>,
    pub public_url: String,
    pub metrics: Metrics,
    pub request_timeout: Duration,
    /// When set, the flow routes require it as a bearer token.
    pub admin_token: Option<String>,
}

pub type Shared = State<Arc<App>>;

pub async fn welcome(State(app): Shared) -> Json<serde_json::Value> {
    Json(json!({ "software": "fed-sx", "version": env!("CARGO_PKG_VERSION"), "base_url": app.public_url }))
}

/// The actor's document: ActivityStreams when the request asks for it, else fed-sx's.
pub async fn actor(State(app): Shared, Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let document = app
        .kernels
        .any()
        .get_actor(GetActorRequest { name })
        .await?
        .into_inner();
    if crate::activitypub::wants_activitypub(&headers) {
        return Ok(crate::activitypub::actor(&document));
    }
    Ok(Json(fedsx_wire::document::to_json(&document)).into_response())
}

pub async fn inbox(
    State(app): Shared,
    Path(name): Path<String>,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if crate::activitypub::is_activitypub_post(&headers) {
        let body = read_body(body).await?;
        return crate::activitypub::ingest(&app, name, &uri, &headers, body).await;
    }
    let envelope = read_envelope(&headers, body).await?;
    let request = IngestRequest {
        recipient: name,
        envelope,
    };
    let ingested = app
        .kernels
        .routed(&request.recipient, |mut kernel| {
            let request = request.clone();
            async move { kernel.ingest(request).await }
        })
        .await?
        .into_inner();
    let answer = json!({ "seq": ingested.seq, "new": ingested.new, "id": hex::encode(&ingested.id) });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The node inbox: one envelope for every local actor it is for; 202 once it is in all
/// their inboxes (none is fine: verified, then nothing to keep).
pub async fn node_inbox(
    State(app): Shared,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if crate::activitypub::is_activitypub_post(&headers) {
        let body = read_body(body).await?;
        return crate::activitypub::ingest(&app, String::new(), &uri, &headers, body).await;
    }
    let envelope = read_envelope(&headers, body).await?;
    let request = IngestRequest {
        recipient: String::new(),
        envelope,
    };
    let ingested = app.kernels.any().ingest(request).await?.into_inner();
    let recipients: Vec<_> = ingested
        .landed
        .iter()
        .map(|l| json!({ "recipient": l.recipient, "seq": l.seq, "new": l.new }))
        .collect();
    let answer = json!({ "id": hex::encode(&ingested.id), "recipients": recipients });
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// An inbound envelope: the content type checked, the body read under the envelope cap.
async fn read_envelope(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case(fedsx_wire::CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type must be {}, not {content_type:?}",
                fedsx_wire::CONTENT_TYPE
            ),
        ));
    }
    read_body(body).await
}

/// An inbound activity's body, read under the envelope cap (the same for ActivityPub).
async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    // The cap holds while reading, whatever Content-Length says (or when it is absent).
    let envelope = Limited::new(body, fedsx_wire::MAX_ENVELOPE_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is over {} bytes", fedsx_wire::MAX_ENVELOPE_BYTES),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, format!("cannot read the body: {err}"))
            }
        })?
        .to_bytes();
    Ok(envelope)
}

#[derive(Debug, serde::Deserialize)]
pub struct OutboxQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: u32,
    /// ActivityPub paging: the notes before this outbox seq.
    page: Option<u64>,
}

/// The outbox: fed-sx's page of signed envelopes, or the ActivityStreams collection when
/// the request asks for it.
pub async fn outbox(
    State(app): Shared,
    Path(name): Path<String>,
    Query(query): Query<OutboxQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if crate::activitypub::wants_activitypub(&headers) {
        return crate::activitypub::outbox(&app, name, query.page).await;
    }
    let request = ReadLogRequest {
        actor: name,
        kind: LogKind::Outbox.into(),
        after: query.after,
        limit: query.limit,
    };
    let log = app.kernels.any().read_log(request).await?.into_inner();
    let entries = log.entries.iter().map(|e| (e.seq, &e.id[..], &e.envelope[..]));
    Ok(Json(fedsx_wire::outbox::to_json(log.tip, entries)).into_response())
}

/// An actor's followers collection (ActivityPub).
pub async fn followers(State(app): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    crate::activitypub::followers(&app, name).await
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the kernel reports SERVING.
pub async fn readyz(State(app): Shared) -> Result<&'static str, ApiError> {
    let answer = app
        .health
        .clone()
        .check(HealthCheckRequest { service: String::new() })
        .await?;
    if answer.into_inner().status() == ServingStatus::Serving {
        Ok("ready\n")
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "kernel not serving"))
    }
}

/// Any path no route serves: 404 with one line, whatever the path holds.
pub async fn no_route(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route for {method} {}", uri.path()))
}

/// A route that exists, asked with a method it does not serve.
pub async fn wrong_method(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// The most any route takes as a body; each route caps its own below it.
const MAX_BODY_BYTES: usize = if fedsx_wire::MAX_ENVELOPE_BYTES > crate::flows::MAX_BODY_BYTES {
    fedsx_wire::MAX_ENVELOPE_BYTES
} else {
    crate::flows::MAX_BODY_BYTES
};

/// Every request: a server span continuing the caller's trace, the body received within
/// the time limit (408 if it trickles in slower), the answer within it again (504), and a
/// count.
pub async fn around(State(app): Shared, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = fedsx_runtime::trace_context::http_server_span(request.method(), &route, request.headers());
    let (method, started) = (request.method().clone(), std::time::Instant::now());
    let response = match receive_body(request, app.request_timeout)
        .instrument(span.clone())
        .await
    {
        Err(refused) => refused.into_response(),
        Ok(request) => {
            match tokio::time::timeout(app.request_timeout, next.run(request).instrument(span.clone())).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no answer within {:?}", app.request_timeout),
                )
                .into_response(),
            }
        }
    };
    span.record("http.response.status_code", response.status().as_u16());
    app.metrics
        .record(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

/// Reads the whole body (at most [`MAX_BODY_BYTES`]) within `limit`, so a client that
/// sends it too slowly is told so (408) instead of holding a kernel call open.
async fn receive_body(request: Request, limit: std::time::Duration) -> Result<Request, ApiError> {
    let (parts, body) = request.into_parts();
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    let body = match tokio::time::timeout(limit, read).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {limit:?}"),
            ));
        }
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over {MAX_BODY_BYTES} bytes"),
            ));
        }
        Ok(Err(err)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {err}"),
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(Request::from_parts(parts, Body::from(body)))
}
