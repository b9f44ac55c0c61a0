//! What the kernel needs of its log-store, as a trait, with typed errors: the seam the
//! kernel's code is written against (`Logs` wraps it), served over gRPC by `GrpcLogs`.

use bytes::Bytes;
use fedsx_proto::logstore::v1::{AppendResponse, Entry, Lease, StreamKind};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::time::Duration;

/// Why a log-store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The log-store (or its engine) cannot answer now; the same call may succeed later.
    #[error("log-store unavailable: {0}")]
    Unavailable(String),
    /// An append's expected tip is not the stream's tip.
    #[error("the stream's tip is {tip}, not the expected one")]
    Conflict { tip: u64 },
    /// The log-store refused the request as malformed (a bug in the kernel).
    #[error("log-store refused the request: {0}")]
    Invalid(String),
    /// The log-store failed.
    #[error("log-store failed: {0}")]
    Internal(String),
}

/// The log-store, as the kernel uses it: per-actor streams, appended idempotently by entry
/// id, and leases.
pub trait LogPort: Send + Sync + 'static {
    /// Appends one entry (idempotent by `id`), after `expected_tip` when given.
    fn append<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        id: Bytes,
        data: Bytes,
        expected_tip: Option<u64>,
    ) -> BoxFuture<'a, Result<AppendResponse, LogError>>;

    /// Entries after `after_seq` (one page; `limit` 0: the log-store's page size) and the tip.
    fn read<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        after_seq: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<Entry>, u64), LogError>>;

    /// Entries after `after_seq`, then new ones as they are appended.
    fn subscribe<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Entry, LogError>>, LogError>>;

    /// The seq of the entry with `id`, if the stream holds one.
    fn lookup<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        id: Bytes,
    ) -> BoxFuture<'a, Result<Option<u64>, LogError>>;

    fn tip<'a>(&'a self, actor: &'a str, kind: StreamKind) -> BoxFuture<'a, Result<u64, LogError>>;

    /// Takes or renews lease `name` for `holder` on the log-store's clock; the lease as it
    /// stands after (someone else's when `holder` does not hold it).
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Lease, LogError>>;

    /// Gives lease `name` up if `holder` holds it; whether it did.
    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool, LogError>>;

    /// The leases held now whose names start with `prefix`.
    fn leases<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Lease>, LogError>>;
}
