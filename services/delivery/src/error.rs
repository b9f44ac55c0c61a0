//! Why a delivery call failed.

use crate::storage::QueueError;
use fedsx_runtime::ErrorCode;
use fedsx_runtime::error::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no queue for peer {0}")]
    NoSuchPeer(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl ServiceError for DeliveryError {
    fn code(&self) -> ErrorCode {
        match self {
            DeliveryError::BadRequest(_) => ErrorCode::InvalidArgument,
            DeliveryError::NoSuchPeer(_) => ErrorCode::NotFound,
            DeliveryError::Queue(err) => err.code(),
        }
    }
}
