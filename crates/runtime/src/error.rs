//! The one table from a failure's kind to its gRPC code and its HTTP status, so every
//! service (and the gateway's answers) agree on what an error means.

/// What kind of failure happened, independent of the transport that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request itself is wrong (malformed, missing or out-of-range fields).
    InvalidArgument,
    /// The signature or the claimed sender does not check out.
    Unauthenticated,
    /// The named thing (actor, stream, instance) does not exist.
    NotFound,
    /// The thing to create exists already.
    AlreadyExists,
    /// The request is well-formed but the state does not allow it (expected tip moved,
    /// signal not awaited).
    FailedPrecondition,
    /// The request is larger than allowed.
    TooLarge,
    /// A dependency (another service, the disk) is not reachable right now; retry later.
    Unavailable,
    /// A bug or an unexpected condition on our side.
    Internal,
}

impl ErrorCode {
    /// The gRPC status code for this kind of failure.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::TooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status for this kind of failure.
    pub fn http(self) -> http::StatusCode {
        match self {
            ErrorCode::InvalidArgument => http::StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => http::StatusCode::UNAUTHORIZED,
            ErrorCode::NotFound => http::StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists => http::StatusCode::CONFLICT,
            ErrorCode::FailedPrecondition => http::StatusCode::CONFLICT,
            ErrorCode::TooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind of failure a gRPC status from another fed-sx service reports.
    pub fn from_grpc(code: tonic::Code) -> Self {
        match code {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => ErrorCode::InvalidArgument,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ErrorCode::Unauthenticated,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::FailedPrecondition | tonic::Code::Aborted => ErrorCode::FailedPrecondition,
            tonic::Code::ResourceExhausted => ErrorCode::TooLarge,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }
}

/// An error a service reports to its callers.
pub trait ServiceError: std::error::Error {
    /// The kind of failure, which fixes the gRPC code and HTTP status.
    fn code(&self) -> ErrorCode;

    /// The gRPC status carrying this error's code and its message.
    fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code().grpc(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 8] = [
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthenticated,
        ErrorCode::NotFound,
        ErrorCode::FailedPrecondition,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    #[test]
    fn grpc_code_round_trips_to_the_same_kind() {
        for code in ALL {
            assert_eq!(ErrorCode::from_grpc(code.grpc()), code);
        }
    }

    #[test]
    fn the_gateway_table_matches_the_design() {
        assert_eq!(ErrorCode::InvalidArgument.http(), 400);
        assert_eq!(ErrorCode::Unauthenticated.http(), 401);
        assert_eq!(ErrorCode::NotFound.http(), 404);
        assert_eq!(ErrorCode::TooLarge.http(), 413);
        assert_eq!(ErrorCode::Unavailable.http(), 503);
    }
}
