//! Why a kernel call failed; each variant fixes its gRPC code (and so the gateway's HTTP
//! status) through the shared error-code table.

use fedsx_runtime::ErrorCode;
use fedsx_runtime::error::ServiceError;
use fedsx_wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("actor name {0:?} is invalid: use 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    InvalidName(String),
    #[error("actor {0} already exists")]
    ActorExists(String),
    #[error("no actor {0} on this node")]
    NoSuchActor(String),
    #[error("no peer {0} is known")]
    NoSuchPeer(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("no flow named {0:?} is registered (known: {1})")]
    NoSuchFlow(String, String),
    #[error("no flow instance {0}")]
    NoSuchFlowInstance(String),
    #[error("{0}")]
    FlowState(String),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("sender {actor}: {reason}")]
    UnknownSender { actor: String, reason: String },
    #[error("bad HTTP signature: {0}")]
    Signature(String),
    #[error("key id {key_id} is not the current key of {actor}")]
    StaleKey { key_id: String, actor: String },
    #[error("remote actor {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{}", not_owner(*partition, owner))]
    NotOwner {
        partition: u32,
        owner: crate::ownership::Owner,
    },
    #[error("log-store: {0}")]
    LogStore(String),
    #[error("log-store unavailable: {0}")]
    LogStoreUnavailable(String),
    /// Another writer kept appending first to a stream the call appends to (a partition
    /// moving between replicas): nothing was written, and the call may succeed later.
    #[error("{0}")]
    Contended(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError for KernelError {
    fn code(&self) -> ErrorCode {
        match self {
            KernelError::InvalidName(_) | KernelError::BadRequest(_) => ErrorCode::InvalidArgument,
            KernelError::ActorExists(_) => ErrorCode::AlreadyExists,
            KernelError::NoSuchActor(_)
            | KernelError::NoSuchPeer(_)
            | KernelError::NoSuchFlow(..)
            | KernelError::NoSuchFlowInstance(_) => ErrorCode::NotFound,
            KernelError::FlowState(_) => ErrorCode::FailedPrecondition,
            KernelError::Wire(WireError::TooLarge(_)) => ErrorCode::TooLarge,
            KernelError::Wire(WireError::ForeignKeyId { .. } | WireError::BadSignature) => ErrorCode::Unauthenticated,
            KernelError::Wire(_) => ErrorCode::InvalidArgument,
            KernelError::UnknownSender { .. } | KernelError::StaleKey { .. } | KernelError::Signature(_) => {
                ErrorCode::Unauthenticated
            }
            KernelError::Unreachable { .. } => ErrorCode::FailedPrecondition,
            KernelError::LogStoreUnavailable(_) | KernelError::NotOwner { .. } | KernelError::Contended(_) => {
                ErrorCode::Unavailable
            }
            KernelError::LogStore(_) | KernelError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl KernelError {
    /// Whether the same call may succeed later (a dependency was down, or a partition is
    /// moving).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self.code(), ErrorCode::Unavailable | ErrorCode::Internal)
    }
}

fn not_owner(partition: u32, owner: &crate::ownership::Owner) -> String {
    use crate::ownership::Owner;
    match owner {
        Owner::Elsewhere { replica, url } => {
            format!("partition {partition} is served by kernel replica {replica} ({url}), not this one")
        }
        Owner::Here | Owner::Nobody => {
            format!("partition {partition} has no kernel replica serving it right now (it is moving); retry")
        }
    }
}

impl From<tonic::Status> for KernelError {
    fn from(status: tonic::Status) -> Self {
        match ErrorCode::from_grpc(status.code()) {
            ErrorCode::Unavailable => KernelError::LogStoreUnavailable(status.message().to_owned()),
            _ => KernelError::LogStore(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// Checks a local actor name: 1 to 64 of `a-z 0-9 - _`, not starting with `-` or `_`.
pub fn check_name(name: &str) -> Result<(), KernelError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(KernelError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_another_writer_kept_moving_is_unavailable_and_worth_retrying() {
        let contended = KernelError::Contended("the outbox of alice kept moving".into());
        assert_eq!(contended.code(), ErrorCode::Unavailable);
        assert!(contended.is_retryable());
    }
}
