//! One peer's queue in the running service: the pure state behind a lock, its record on
//! disk, and its worker — a task that wakes when something is enqueued, a send finishes, or
//! the next retry falls due (never polling), and keeps at most `max_in_flight` sends going.

use crate::dispatch::dispatch;
use crate::error::DeliveryError;
use crate::queue::{AfterFailure, DeadLetter, Failure, Id, PeerState, Schedule};
use crate::store::{ItemRecord, LoadedPeer, PeerRecord, STATUS_DEAD, STATUS_DELIVERED, STATUS_PENDING, Store};
use bytes::Bytes;
use fedsx_runtime::CancellationToken;
use fedsx_runtime::http_client::PeerHttp;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument;

/// What every queue shares.
pub struct Shared {
    pub store: Store,
    pub http: PeerHttp,
    pub schedule: Schedule,
    pub max_in_flight: usize,
    /// The static map: actor URL → inbox URL, overriding the kernel's.
    pub inbox_overrides: HashMap<String, String>,
    pub order: AtomicU64,
    pub shutdown: CancellationToken,
}

pub struct PeerQueue {
    peer: String,
    inner: Mutex<Inner>,
    wake: Notify,
}

struct Inner {
    state: PeerState,
    record: PeerRecord,
    in_flight: HashSet<Id>,
    /// Ids being enqueued right now (written, not yet acknowledged).
    enqueuing: HashSet<Id>,
}

/// A peer's numbers, as `PeerStatus` reports them.
pub struct Status {
    pub peer: String,
    pub pending: usize,
    pub head_attempts: u32,
    pub head_next_retry_ms: u64,
    pub last_error: String,
    pub dead_letters: usize,
    pub delivered: u64,
    pub in_flight: usize,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, DeliveryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| DeliveryError::Storage(format!("storage task failed: {err}")))?
        .map_err(DeliveryError::Storage)
}

impl PeerQueue {
    pub fn new(peer: &str) -> PeerQueue {
        PeerQueue::from_record(
            PeerRecord {
                peer: peer.to_owned(),
                ..PeerRecord::default()
            },
            PeerState::default(),
        )
    }

    fn from_record(record: PeerRecord, state: PeerState) -> PeerQueue {
        PeerQueue {
            peer: record.peer.clone(),
            inner: Mutex::new(Inner {
                state,
                record,
                in_flight: HashSet::new(),
                enqueuing: HashSet::new(),
            }),
            wake: Notify::new(),
        }
    }

    /// A queue as it was on disk.
    pub fn restore(loaded: LoadedPeer) -> PeerQueue {
        let mut state = PeerState::default();
        for (id, item) in loaded.items {
            if item.status == STATUS_DEAD {
                state.restore_dead(DeadLetter {
                    id,
                    attempts: item.attempts,
                    last_error: item.last_error,
                });
            } else {
                let retry = (item.next_retry_ms > 0).then_some(item.next_retry_ms);
                state.restore(id, item.attempts, retry);
            }
        }
        PeerQueue::from_record(loaded.record, state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("peer queue lock poisoned")
    }

    /// Queues `envelope` durably; false when this id is already queued, dead or delivered.
    pub async fn enqueue(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        id: Id,
        inbox_url: String,
        envelope: Bytes,
        traceparent: String,
    ) -> Result<bool, DeliveryError> {
        {
            let mut inner = self.lock();
            if inner.state.is_pending(&id) || inner.state.is_dead(&id) || !inner.enqueuing.insert(id) {
                return Ok(false);
            }
        }
        let written = self.write_new(shared, id, inbox_url, envelope, traceparent).await;
        let mut inner = self.lock();
        inner.enqueuing.remove(&id);
        let new = written?;
        if new {
            inner.state.enqueue(id);
            drop(inner);
            self.wake.notify_one();
        }
        Ok(new)
    }

    async fn write_new(
        &self,
        shared: &Arc<Shared>,
        id: Id,
        inbox_url: String,
        envelope: Bytes,
        traceparent: String,
    ) -> Result<bool, DeliveryError> {
        let (peer, shared) = (self.peer.clone(), shared.clone());
        let record = self.lock().record.clone();
        blocking(move || {
            // Delivered before (a repeated hand-off after a kernel restart): one delivery.
            if shared.store.item(&peer, &id)?.is_some() {
                return Ok(false);
            }
            let item = ItemRecord {
                order: shared.order.fetch_add(1, Ordering::Relaxed),
                status: STATUS_PENDING,
                inbox_url,
                traceparent,
                enqueued_ms: now_ms(),
                ..ItemRecord::default()
            };
            shared.store.put(&record, &id, &item, Some(&envelope), true)?;
            Ok(true)
        })
        .await
    }

    pub fn status(&self) -> Status {
        let inner = self.lock();
        let head = inner.state.pending().next().copied();
        Status {
            peer: self.peer.clone(),
            pending: inner.state.pending_len(),
            head_attempts: head.map_or(0, |id| inner.state.attempts_for(&id)),
            head_next_retry_ms: head.and_then(|id| inner.state.next_retry_at(&id)).unwrap_or(0),
            last_error: inner.record.last_error.clone(),
            dead_letters: inner.state.dead_letter_len(),
            delivered: inner.record.delivered,
            in_flight: inner.in_flight.len(),
        }
    }

    /// When the oldest pending activity was enqueued, if any is pending (read from the store).
    pub fn oldest_pending_ms(&self, shared: &Shared) -> Option<u64> {
        let head = self.lock().state.pending().next().copied()?;
        match shared.store.item(&self.peer, &head) {
            Ok(Some(item)) if item.enqueued_ms > 0 => Some(item.enqueued_ms),
            _ => None,
        }
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().state.dead_letters().cloned().collect()
    }

    /// Moves dead letters back to pending with attempts reset, on disk and in memory.
    pub async fn redrive(self: &Arc<Self>, shared: &Arc<Shared>, ids: Option<Vec<Id>>) -> Result<usize, DeliveryError> {
        let (moved, record) = {
            let mut inner = self.lock();
            let moved = inner.state.redrive(ids.as_deref());
            (moved, inner.record.clone())
        };
        let (peer, store_shared, ids) = (self.peer.clone(), shared.clone(), moved.clone());
        blocking(move || {
            for id in &ids {
                if let Some(mut item) = store_shared.store.item(&peer, id)? {
                    item.status = STATUS_PENDING;
                    item.attempts = 0;
                    item.next_retry_ms = 0;
                    store_shared.store.put(&record, id, &item, None, true)?;
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(peer = %self.peer, redriven = moved.len(), "dead letters redriven");
        self.wake.notify_one();
        Ok(moved.len())
    }

    /// The worker: sends what is due, then sleeps until an enqueue, a finished send, or the
    /// next retry time.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        loop {
            let (due, wake_at) = {
                let mut inner = self.lock();
                let capacity = shared.max_in_flight.saturating_sub(inner.in_flight.len());
                let Inner { state, in_flight, .. } = &mut *inner;
                let due = if capacity > 0 {
                    state.take_due(now_ms(), capacity, |id| in_flight.contains(id))
                } else {
                    Vec::new()
                };
                in_flight.extend(due.iter().copied());
                (due, inner.state.next_wake())
            };
            for id in due {
                tokio::spawn(self.clone().send(shared.clone(), id));
            }
            let sleep = wake_at.map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
        }
    }

    async fn send(self: Arc<Self>, shared: Arc<Shared>, id: Id) {
        let (peer, store_shared) = (self.peer.clone(), shared.clone());
        let item = blocking(move || {
            let item = store_shared.store.item(&peer, &id)?;
            let envelope = store_shared.store.envelope(&peer, &id)?;
            Ok(item.zip(envelope))
        })
        .await;
        let (mut item, envelope) = match item {
            Ok(Some((item, envelope))) if item.status == STATUS_PENDING => (item, envelope),
            Ok(_) => {
                self.lock().in_flight.remove(&id);
                return;
            }
            Err(err) => {
                tracing::error!(peer = %self.peer, error = %err, "reading a queued activity failed");
                self.lock().in_flight.remove(&id);
                return;
            }
        };
        let url = shared
            .inbox_overrides
            .get(&self.peer)
            .cloned()
            .unwrap_or_else(|| item.inbox_url.clone());
        let span = fedsx_runtime::trace_context::http_client_span(&http::Method::POST, &url, &item.traceparent);
        span.record("fedsx.peer", self.peer.as_str());
        span.record("fedsx.activity_id", fedsx_wire::ActivityId(id).to_string());
        let result = dispatch(&shared.http, &url, envelope).instrument(span).await;
        self.apply(&shared, id, &mut item, result);
        self.wake.notify_one();
    }

    /// Applies a send's outcome to the state and writes it, under the queue's lock, so what
    /// `PeerStatus` shows is what a restart finds. The write is an unsynced WAL append (a few
    /// microseconds, in the OS page cache before the lock is released).
    fn apply(&self, shared: &Shared, id: Id, item: &mut ItemRecord, result: Result<(), Failure>) {
        let mut inner = self.lock();
        inner.in_flight.remove(&id);
        let hex_id = fedsx_wire::ActivityId(id);
        match result {
            Ok(()) => {
                crate::metrics::sends().add(1, &[fedsx_runtime::metrics::KeyValue::new("outcome", "delivered")]);
                inner.state.record_success(id);
                inner.record.delivered += 1;
                item.status = STATUS_DELIVERED;
                item.next_retry_ms = 0;
                tracing::info!(peer = %self.peer, id = %hex_id, attempts = item.attempts + 1, "delivered");
            }
            Err(failure) => {
                let reason = match &failure {
                    Failure::Transient { reason, .. } | Failure::Permanent { reason } => reason.clone(),
                };
                let after = inner.state.record_failure(id, now_ms(), &failure, &shared.schedule);
                item.attempts += 1;
                item.last_error = reason.clone();
                inner.record.last_error = reason.clone();
                match after {
                    Some(AfterFailure::RetryAt(at)) => {
                        crate::metrics::sends().add(1, &[fedsx_runtime::metrics::KeyValue::new("outcome", "retry")]);
                        item.next_retry_ms = at;
                        tracing::warn!(peer = %self.peer, id = %hex_id, attempts = item.attempts, error = %reason, retry_at_ms = at, "delivery failed");
                    }
                    Some(AfterFailure::DeadLettered) | None => {
                        crate::metrics::sends()
                            .add(1, &[fedsx_runtime::metrics::KeyValue::new("outcome", "dead_letter")]);
                        item.status = STATUS_DEAD;
                        item.next_retry_ms = 0;
                        tracing::warn!(peer = %self.peer, id = %hex_id, attempts = item.attempts, error = %reason, "dead-lettered");
                    }
                }
            }
        }
        if let Err(err) = shared.store.put(&inner.record, &id, item, None, false) {
            tracing::error!(peer = %self.peer, error = %err, "recording a send's outcome failed");
        }
    }
}
