//! Why a delivery call failed.

use fedsx_runtime::ErrorCode;
use fedsx_runtime::error::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no queue for peer {0}")]
    NoSuchPeer(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

impl ServiceError for DeliveryError {
    fn code(&self) -> ErrorCode {
        match self {
            DeliveryError::BadRequest(_) => ErrorCode::InvalidArgument,
            DeliveryError::NoSuchPeer(_) => ErrorCode::NotFound,
            DeliveryError::Storage(_) => ErrorCode::Internal,
        }
    }
}
