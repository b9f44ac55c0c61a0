//! The two classes of PostgreSQL failure that matter to a caller: the database cannot be
//! reached or cannot take writes right now (retry later: down, failing over, a standby,
//! out of connections), or it refused what we asked (a bug or a damaged schema).

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Retryable: the operation may or may not have taken effect (a commit whose answer
    /// was lost), so what is retried must be idempotent.
    #[error("postgres is unavailable: {reason}")]
    Unavailable { reason: String },
    /// Not worth retrying.
    #[error("postgres refused the statement: {reason}")]
    Refused { reason: String },
}

impl PgError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unavailable { .. })
    }
}

/// Whether `err` says the database is unreachable or not writable right now, rather than
/// that the statement is wrong.
pub fn is_retryable(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(code) = err.code() {
        let class = &code.code()[..2];
        // 08 connection exception, 53 insufficient resources, 57 operator intervention
        // (shutdown, crash, "cannot connect now"), 58 system error (I/O).
        return matches!(class, "08" | "53" | "57" | "58")
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE;
    }
    // No server error: a transport failure (I/O, connect, timeout) is retryable; a type
    // conversion or protocol error is not.
    let text = err.to_string();
    std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
        || text.starts_with("error connecting")
        || text.starts_with("timeout")
        || text.starts_with("error communicating")
}

/// A one-line account of `err`: the server's code and message when it sent one.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(err) {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(err: tokio_postgres::Error) -> Self {
        let reason = describe(&err);
        if is_retryable(&err) {
            PgError::Unavailable { reason }
        } else {
            PgError::Refused { reason }
        }
    }
}

impl From<PoolError> for PgError {
    fn from(err: PoolError) -> Self {
        match err {
            PoolError::Backend(err) => err.into(),
            PoolError::Timeout(kind) => PgError::Unavailable {
                reason: format!("no connection within the pool's {kind:?} timeout"),
            },
            other => PgError::Unavailable {
                reason: other.to_string(),
            },
        }
    }
}
