//! Why a log-store call or opening the store failed. The variants are the classes a caller
//! acts on — invalid input, a tip conflict, retryable unavailability, an internal failure —
//! and [`ServiceError::code`] maps them to gRPC codes in one place.

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
    #[error("stream actor contains a NUL character")]
    ActorHasNul,
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
    #[error("{reason}")]
    BadLease { reason: String },
    /// Conflict: nothing was appended.
    #[error("expected tip {expected} but the stream's tip is {tip}")]
    TipMismatch { expected: u64, tip: u64 },
    /// Retryable: the engine cannot be reached or cannot write right now. An append that
    /// got this answer may or may not have been committed; retrying it is safe (ids).
    #[error("storage unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("log-store is shutting down")]
    ShuttingDown,
    /// Not retryable: a failing disk, damaged data, a bug.
    #[error("storage failure: {reason}")]
    Internal { reason: String },
}

impl StoreError {
    pub(crate) fn internal(reason: impl std::fmt::Display) -> StoreError {
        StoreError::Internal {
            reason: reason.to_string(),
        }
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(err: rocksdb::Error) -> Self {
        StoreError::internal(err.into_string())
    }
}

impl From<fedsx_pg::PgError> for StoreError {
    fn from(err: fedsx_pg::PgError) -> Self {
        match err {
            fedsx_pg::PgError::Unavailable { reason } => StoreError::Unavailable { reason },
            fedsx_pg::PgError::Refused { reason } => StoreError::Internal { reason },
        }
    }
}

impl From<fedsx_pg::tokio_postgres::Error> for StoreError {
    fn from(err: fedsx_pg::tokio_postgres::Error) -> Self {
        fedsx_pg::PgError::from(err).into()
    }
}

impl From<fedsx_pg::PoolError> for StoreError {
    fn from(err: fedsx_pg::PoolError) -> Self {
        fedsx_pg::PgError::from(err).into()
    }
}

impl ServiceError for StoreError {
    fn code(&self) -> ErrorCode {
        match self {
            StoreError::TipMismatch { .. } => ErrorCode::FailedPrecondition,
            StoreError::Internal { .. } => ErrorCode::Internal,
            StoreError::Unavailable { .. } | StoreError::ShuttingDown => ErrorCode::Unavailable,
            StoreError::MissingStream
            | StoreError::EmptyActor
            | StoreError::ActorTooLong { .. }
            | StoreError::ActorHasNul
            | StoreError::UnknownKind(_)
            | StoreError::NoEntries
            | StoreError::TooManyEntries { .. }
            | StoreError::BadId { .. }
            | StoreError::EntryTooLarge { .. }
            | StoreError::BadLease { .. } => ErrorCode::InvalidArgument,
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

/// Why the store could not be opened. The process must not start in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("{0} is not empty but holds no log-store database; refusing to start over it")]
    ForeignData(String),
    #[error(transparent)]
    Open(#[from] fedsx_runtime::rocks::RocksOpenError),
    #[error("cannot open the database: {0}")]
    RocksDb(String),
    #[error("the database has format version {found}, this build reads version {expected}")]
    FormatVersion { found: u32, expected: u32 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Postgres(#[from] fedsx_pg::OpenError),
}
