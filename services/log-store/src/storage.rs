//! The seam between the log-store service and its storage engine. The gRPC handlers hold a
//! [`LogStorage`]; RocksDB ([`crate::RocksStore`], embedded, the default) and PostgreSQL
//! ([`crate::PgStore`], replicated by the operator's tooling) implement it, and one
//! conformance suite (`conformance.rs`) holds every engine to the same promises:
//!
//! - entries of a stream are numbered 1, 2, 3… without gaps; the tip is the last number;
//! - an append is atomic, and acknowledged only once durable (synced / committed);
//! - an entry id already in the stream answers its first seq and writes nothing, also when
//!   the earlier append's answer was lost;
//! - an expected tip that is not the tip appends nothing (`TipMismatch`);
//! - of concurrent appends to one stream, each tip is won by exactly one;
//! - reads are bounded in entries and bytes; missing streams read as empty with tip 0;
//! - a wake-up follows every committed append; one made by another process, for every
//!   stream a reader watches (within a second of the watch starting).

use crate::error::StoreError;
use crate::lease::{Acquire, Lease};
use crate::stream::{Entry, NewEntry, StreamId};
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// The seq one entry of an append got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// False when the id was already in the stream and nothing was written for it.
    pub appended: bool,
}

/// The answer to an append: one result per entry, in order, and the stream's tip after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub entries: Vec<Appended>,
    pub tip: u64,
}

/// A page of a stream: entries after the asked seq, and the tip when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub tip: u64,
}

/// A wake-up for readers waiting on streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This stream has new entries.
    Appended(StreamId),
    /// Notices may have been missed (a reconnect, a slow reader): every stream may have
    /// new entries.
    Unknown,
}

/// A reader's watch of a stream, held while it waits (an engine's own guard inside;
/// nothing for engines of one process).
#[derive(Default)]
pub struct Watching {
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Watching {
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Watching {
        Watching {
            _guard: Some(Box::new(guard)),
        }
    }
}

/// What the log-store needs of a storage engine.
pub trait LogStorage: Clone + Send + Sync + 'static {
    /// Appends `entries` to `stream` atomically, if `expected_tip` (when given) is the
    /// stream's tip; answers once the entries are durable.
    fn append(
        &self,
        stream: StreamId,
        entries: Vec<NewEntry>,
        expected_tip: Option<u64>,
    ) -> impl Future<Output = Result<AppendOutcome, StoreError>> + Send;

    /// Entries with seq > `after_seq`, at most [`crate::limits::read_limit`]`(limit)` of
    /// them and about [`crate::limits::MAX_READ_BYTES`], with the tip, from one snapshot.
    fn read(
        &self,
        stream: StreamId,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Page, StoreError>> + Send;

    /// The last seq of `stream`, 0 when it was never written.
    fn tip(&self, stream: StreamId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The seq of the entry with `id` in `stream`, if it holds one.
    fn lookup(&self, stream: StreamId, id: Bytes) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Takes or renews a lease (`lease.rs` has the rule) on the engine's clock, durably;
    /// the lease as it stands after.
    fn acquire_lease(&self, request: Acquire) -> impl Future<Output = Result<Lease, StoreError>> + Send;

    /// Gives lease `name` up when `holder` holds it; whether it did.
    fn release_lease(&self, name: String, holder: String) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The leases held now whose names start with `prefix`, by name, at most
    /// [`crate::lease::MAX_LISTED`].
    fn leases(&self, prefix: String) -> impl Future<Output = Result<Vec<Lease>, StoreError>> + Send;

    /// Wake-ups after committed appends.
    fn notices(&self) -> broadcast::Receiver<Notice>;

    /// Says a reader here waits on `stream` until the answer is dropped: engines shared by
    /// several processes announce appends to the others only for watched streams.
    fn watch(&self, _stream: &StreamId) -> Watching {
        Watching::default()
    }

    /// How long a waiting reader may go without a notice before it reads again anyway
    /// (None: notices are never lost).
    fn poll_interval(&self) -> Option<Duration>;

    /// Whether the engine can serve right now (false while its database is unreachable).
    fn readiness(&self) -> watch::Receiver<bool>;

    /// Finishes what was acknowledged and releases the engine; later calls fail with
    /// `ShuttingDown`.
    fn close(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
