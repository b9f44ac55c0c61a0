//! Why a log-store call or opening the store failed.

use crate::stream::limits;
use fedsx_runtime::ErrorCode;
use fedsx_runtime::error::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream is missing")]
    MissingStream,
    #[error("stream actor is empty")]
    EmptyActor,
    #[error("stream actor is {len} bytes, over the limit of {}", limits::MAX_ACTOR_BYTES)]
    ActorTooLong { len: usize },
    #[error("unknown stream kind {0}")]
    UnknownKind(i32),
    #[error("append has no entries")]
    NoEntries,
    #[error("append has {count} entries, over the limit of {}", limits::MAX_ENTRIES_PER_APPEND)]
    TooManyEntries { count: usize },
    #[error("entry {index}: id is {len} bytes, must be 1 to {}", limits::MAX_ID_BYTES)]
    BadId { index: usize, len: usize },
    #[error("entry {index}: data is {len} bytes, over the limit of {}", limits::MAX_ENTRY_BYTES)]
    EntryTooLarge { index: usize, len: usize },
    #[error("expected tip {expected} but the stream's tip is {tip}")]
    TipMismatch { expected: u64, tip: u64 },
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("log-store is shutting down")]
    ShuttingDown,
}

impl From<rocksdb::Error> for StoreError {
    fn from(err: rocksdb::Error) -> Self {
        StoreError::Storage(err.into_string())
    }
}

impl ServiceError for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::TipMismatch { .. } => ErrorCode::FailedPrecondition,
            StoreError::Storage(_) => ErrorCode::Internal,
            StoreError::ShuttingDown => ErrorCode::Unavailable,
            _ => ErrorCode::InvalidArgument,
        }
    }

    fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code().grpc(), self.to_string());
        if let StoreError::TipMismatch { tip, .. } = self {
            status
                .metadata_mut()
                .insert(fedsx_proto::TIP_METADATA_KEY, (*tip).into());
        }
        status
    }
}

/// Why the database could not be opened. The process must not start in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} is not empty but holds no log-store database; refusing to start over it")]
    ForeignData(String),
    #[error("cannot open the database: {0}")]
    RocksDb(String),
    #[error("the database has format version {found}, this build reads version {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
