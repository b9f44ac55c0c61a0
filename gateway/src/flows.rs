//! The flow routes: start an instance, signal it, read it, list them. Each is one kernel
//! call. When an admin token is configured they require `Authorization: Bearer <token>`,
//! since a signal such as `approve` makes an actor publish.

use crate::error::ApiError;
use crate::routes::Shared;
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use fedsx_proto::kernel::v1::{Flow, FlowStatus, GetFlowRequest, ListFlowsRequest, SignalRequest, StartFlowRequest};
use http::StatusCode;
use serde_json::{Value, json};

/// Largest flow input or signal payload accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A flow instance as JSON: its input, output and data embedded as JSON values.
pub fn to_json(flow: &Flow) -> Value {
    let embedded = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    json!({
        "id": flow.id,
        "name": flow.name,
        "status": flow.status().label(),
        "awaiting": flow.awaiting,
        "wake_at_ms": flow.wake_at_ms,
        "input": embedded(&flow.input),
        "output": embedded(&flow.output),
        "error": flow.error,
        "data": embedded(&flow.data),
        "created_ms": flow.created_ms,
        "updated_ms": flow.updated_ms,
        "version": flow.version,
    })
}

fn body_text(body: &Bytes) -> Result<String, ApiError> {
    String::from_utf8(body.to_vec()).map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "body is not UTF-8 JSON"))
}

/// `POST /flows/{name}` with a JSON object as input: 201 and the instance.
pub async fn start(
    State(app): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, [(http::HeaderName, String); 1], Json<Value>), ApiError> {
    let input = body_text(&body)?;
    let flow = app
        .kernels
        .any()
        .start_flow(StartFlowRequest { name, input })
        .await?
        .into_inner();
    let location = format!("/flows/{}", flow.id);
    Ok((
        StatusCode::CREATED,
        [(http::header::LOCATION, location)],
        Json(to_json(&flow)),
    ))
}

/// `POST /flows/{id}/signal/{signal}` with an optional JSON payload.
pub async fn signal(
    State(app): Shared,
    Path((id, signal)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let payload = body_text(&body)?;
    let flow = app
        .kernels
        .any()
        .signal(SignalRequest { id, signal, payload })
        .await?
        .into_inner();
    Ok(Json(to_json(&flow)))
}

/// `GET /flows/{id}`.
pub async fn get(State(app): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let flow = app.kernels.any().get_flow(GetFlowRequest { id }).await?.into_inner();
    Ok(Json(to_json(&flow)))
}

#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: u32,
}

/// `GET /flows?name=&status=&after=&limit=`.
pub async fn list(State(app): Shared, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let status = if query.status.is_empty() {
        FlowStatus::Unspecified
    } else {
        FlowStatus::from_label(&query.status).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown status {:?}: use running, suspended, done or failed",
                    query.status
                ),
            )
        })?
    };
    let request = ListFlowsRequest {
        name: query.name,
        status: status.into(),
        after: query.after,
        limit: query.limit,
        ..ListFlowsRequest::default()
    };
    let answer = app.kernels.any().list_flows(request).await?.into_inner();
    let flows: Vec<Value> = answer.flows.iter().map(to_json).collect();
    Ok(Json(json!({ "flows": flows, "next": answer.next })))
}

/// Requires the admin bearer token, when one is configured.
pub async fn authorize(State(app): Shared, request: Request, next: Next) -> Result<Response, ApiError> {
    if let Some(token) = &app.admin_token {
        let given = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "flow routes need Authorization: Bearer <admin token>",
            ));
        }
    }
    Ok(next.run(request).await)
}
