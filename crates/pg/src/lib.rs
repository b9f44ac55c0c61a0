//! What the PostgreSQL engines of fed-sx (the log-store's and the delivery queue's) share,
//! written once: a bounded connection pool from a libpq-style URL (multi-host with
//! `target_session_attrs=read-write` follows a failover), the classes of PostgreSQL errors
//! (retryable or not), versioned schema migrations that refuse a newer schema, a LISTEN
//! connection that turns notifications into wake-ups, batched NOTIFY off the commit path,
//! group commit per key (stream, destination),
//! a readiness probe, and — with the `testing` feature — throwaway servers for tests and
//! benchmarks.

mod database;
mod error;
mod group;
mod listen;
mod migrate;
mod notify;
mod pool;
mod ready;
mod shared;
#[cfg(feature = "testing")]
pub mod testing;

pub use database::{Database, OpenError};
pub use deadpool_postgres::{Object as Client, Pool, PoolError};
pub use error::{PgError, is_retryable};
pub use group::{Closed, GroupCommit, GroupWriter};
pub use listen::{Listener, Notice, Wakeups};
pub use migrate::{MigrateError, Migration, migrate};
pub use notify::Notifier;
pub use pool::{PoolOptions, connect, parse_store_url, redact};
pub use ready::Readiness;
pub use shared::SharedClients;
pub use tokio_postgres;

/// A new replica name for lease and watch rows: the host (the pod, in a cluster), the
/// process, when it asked, and a count (several stores may open in one process), so a
/// restarted process never inherits its predecessor's rows.
pub fn replica_name() -> String {
    static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{host}/{}/{now}/{n}", std::process::id())
}
