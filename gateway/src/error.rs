//! Gateway answers for failures: the status from the shared error-code table, and one line
//! of plain text saying why.

use axum::response::{IntoResponse, Response};
use fedsx_runtime::ErrorCode;
use http::StatusCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::from_grpc(status.code());
        let reason = match code {
            ErrorCode::Unavailable => format!("kernel unavailable: {}", status.message()),
            _ => status.message().to_owned(),
        };
        ApiError::new(code.http(), reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let line = self.reason.replace('\n', " ");
        (
            self.status,
            [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{line}\n"),
        )
            .into_response()
    }
}
