//! The seam between delivery and its queue's storage. The dispatcher and the gRPC handlers
//! hold a [`QueueStorage`]; RocksDB ([`crate::RocksQueue`], embedded, the default) and
//! PostgreSQL ([`crate::PgQueue`], shared by any number of delivery replicas) implement it,
//! and one conformance suite (`conformance.rs`) holds both to the same promises:
//!
//! - an enqueue is durable when answered, and idempotent by (peer, id): the same pair
//!   again — pending, dead-lettered or already delivered — is not queued twice; an
//!   undeliverable one is queued as a dead letter with its reason;
//! - a peer's pending deliveries come out in enqueue (FIFO) order per sender, one at a time:
//!   only the oldest pending delivery of each sender is handed out, and only once its retry
//!   time (if any) has passed — different senders proceed in parallel;
//! - a peer is worked by one owner at a time, under a lease that lapses unless renewed;
//!   outcomes are recorded only while the owner holds the lease (a replica that lost its
//!   destination cannot overwrite the new owner's work);
//! - a delivery recorded as delivered is never handed out again;
//! - dead letters can be listed and redriven (back to the end of pending, attempts reset);
//! - a peer whose every send failed since before a cut-off takes no new deliveries (they
//!   become dead letters) until it is revived;
//! - records of delivered ones are kept for the retention period (their idempotence), then
//!   expired;
//! - all of it survives closing and reopening.

use crate::queue::{DeadLetter, Id};
use bytes::Bytes;
use fedsx_runtime::ErrorCode;
use fedsx_runtime::error::ServiceError;
use prost::Message;
use std::future::Future;
use tokio::sync::{broadcast, watch};

/// One recipient on a delivery's destination node (a protobuf message: engines store it so).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Recipient {
    /// Its actor URL.
    #[prost(string, tag = "1")]
    pub actor: String,
    /// Its inbox URL (empty: unknown).
    #[prost(string, tag = "2")]
    pub inbox_url: String,
}

/// A delivery's recipients as one stored value.
#[derive(Clone, PartialEq, prost::Message)]
struct Recipients {
    #[prost(message, repeated, tag = "1")]
    list: Vec<Recipient>,
}

/// Stored in place of a recipient's inbox: the same as its delivery's inbox.
const SAME_INBOX: &str = "=";

/// A delivery's recipients as an engine stores them: a protobuf list in which an actor on
/// the destination node is kept as its path ("/actors/bob" under "https://b.example") and
/// an inbox that is the delivery's own as "=", so a hundred followers on one node cost
/// about 20 bytes each instead of 80. Lists stored before this hold full URLs and read back
/// as they are (a stored URL never starts with "/" nor is "="). Read only when needed:
/// sending through a node inbox needs the names only when the static map names one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredRecipients(Bytes);

impl StoredRecipients {
    /// The stored form of `list`, for a delivery to `peer` through `inbox_url`: encoded
    /// as [`Recipients`] is, without a copy of each name.
    pub fn store(peer: &str, inbox_url: &str, list: &[Recipient]) -> StoredRecipients {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let field = |buf: &mut Vec<u8>, tag: u32, value: &str| {
            if !value.is_empty() {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(value.len() as u64, buf);
                buf.extend_from_slice(value.as_bytes());
            }
        };
        let field_len = |tag: u32, value: &str| {
            if value.is_empty() {
                0
            } else {
                prost::encoding::key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
            }
        };
        let mut buf = Vec::with_capacity(list.len() * 24);
        for r in list {
            let actor = match r.actor.strip_prefix(peer) {
                Some(path) if path.starts_with('/') => path,
                _ => r.actor.as_str(),
            };
            let inbox = if !inbox_url.is_empty() && r.inbox_url == inbox_url {
                SAME_INBOX
            } else {
                r.inbox_url.as_str()
            };
            encode_key(1, WireType::LengthDelimited, &mut buf);
            encode_varint((field_len(1, actor) + field_len(2, inbox)) as u64, &mut buf);
            field(&mut buf, 1, actor);
            field(&mut buf, 2, inbox);
        }
        StoredRecipients(buf.into())
    }

    /// As an engine read it back.
    pub fn from_stored(bytes: impl Into<Bytes>) -> StoredRecipients {
        StoredRecipients(bytes.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recipients, as queued for a delivery to `peer` through `inbox_url`.
    pub fn read(&self, peer: &str, inbox_url: &str) -> Result<Vec<Recipient>, String> {
        let stored = Recipients::decode(&self.0[..]).map_err(|err| format!("corrupt recipients record: {err}"))?;
        Ok(stored
            .list
            .into_iter()
            .map(|mut r| {
                if r.actor.starts_with('/') {
                    r.actor.insert_str(0, peer);
                }
                if r.inbox_url == SAME_INBOX {
                    r.inbox_url = inbox_url.to_owned();
                }
                r
            })
            .collect())
    }
}

/// A delivery to queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewDelivery {
    /// The destination's queue key: its node, `scheme://host[:port]` (queues of older
    /// kernels: a recipient's actor URL).
    pub peer: String,
    pub id: Id,
    /// The local actor that sent it: a sender's deliveries to one destination go out one
    /// at a time, in enqueue order.
    pub sender: String,
    /// Where to POST it once (empty: to each recipient's inbox; see [`Due::targets`]).
    pub inbox_url: String,
    /// Shared: an enqueue of one activity for many destinations names a list once.
    pub recipients: std::sync::Arc<[Recipient]>,
    pub envelope: Bytes,
    /// Some(why): it can never be handed on; queued straight as a dead letter, never sent.
    pub undeliverable: Option<String>,
    /// A destination whose every send has failed since before this (ms since the epoch; 0:
    /// never) is unavailable: the delivery is queued as a dead letter
    /// ([`unavailable_reason`]) instead of being sent.
    pub unavailable_before: u64,
    /// The enqueuing request's trace context, continued by the send.
    pub traceparent: String,
    pub enqueued_ms: u64,
}

/// A pending delivery handed out to be sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    pub id: Id,
    pub inbox_url: String,
    pub recipients: StoredRecipients,
    pub envelope: Bytes,
    pub traceparent: String,
    /// Failed sends so far.
    pub attempts: u32,
}

impl Due {
    /// Where it is POSTed, each once: its `inbox_url` (a node inbox, or the one
    /// recipient's inbox); without one, each recipient's inbox; without recipients, the
    /// destination `peer` itself. `overrides` (the static map, actor URL → inbox URL) wins
    /// for the recipient or peer it names — a recipient it names is sent on its own, the
    /// others still through the node inbox. An empty target fails the send with "no peer
    /// url". Unreadable recipients: why.
    pub fn targets(
        &self,
        peer: &str,
        overrides: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<String>, String> {
        let pick = |actor: &str, known: &str| overrides.get(actor).cloned().unwrap_or_else(|| known.to_owned());
        if self.recipients.is_empty() {
            return Ok(vec![pick(peer, &self.inbox_url)]);
        }
        if !self.inbox_url.is_empty() && overrides.is_empty() {
            return Ok(vec![self.inbox_url.clone()]);
        }
        let recipients = self.recipients.read(peer, &self.inbox_url)?;
        let mut targets: Vec<String> = if self.inbox_url.is_empty() {
            recipients.iter().map(|r| pick(&r.actor, &r.inbox_url)).collect()
        } else {
            let mut targets: Vec<String> = recipients
                .iter()
                .filter_map(|r| overrides.get(&r.actor).cloned())
                .collect();
            if recipients.iter().any(|r| !overrides.contains_key(&r.actor)) {
                targets.push(self.inbox_url.clone());
            }
            targets
        };
        targets.sort();
        targets.dedup();
        Ok(targets)
    }
}

/// What a send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Failed `attempts` times in all; try again at `at` (ms since the epoch).
    Retry {
        attempts: u32,
        at: u64,
        error: String,
    },
    /// Failed `attempts` times in all, for good.
    Dead {
        attempts: u32,
        error: String,
    },
}

/// A peer's numbers, as `PeerStatus` reports them (without the sends in flight, which only
/// the replica sending knows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    pub peer: String,
    pub pending: u64,
    pub head_attempts: u32,
    pub head_next_retry_ms: u64,
    /// When the oldest pending delivery was enqueued (0: none pending).
    pub head_enqueued_ms: u64,
    pub last_error: String,
    pub dead_letters: u64,
    pub delivered: u64,
    /// Since when every send to the peer has failed (ms since the epoch; 0: the last one
    /// succeeded, or none failed).
    pub failing_since_ms: u64,
}

/// The dead letter's reason of a delivery to a destination failing since `since_ms`.
pub fn unavailable_reason(since_ms: u64) -> String {
    let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(since_ms);
    format!(
        "destination unavailable: every send has failed since {}",
        httpdate::fmt_http_date(since)
    )
}

/// Why a queue operation failed: the classes a caller acts on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// Retryable: the engine cannot be reached or cannot write right now; an enqueue that
    /// got this may or may not be queued (retrying it is safe: ids).
    #[error("queue storage unavailable: {reason}")]
    Unavailable { reason: String },
    #[error("delivery is shutting down")]
    ShuttingDown,
    /// Not retryable: a failing disk, damaged data, a bug.
    #[error("queue storage failure: {reason}")]
    Internal { reason: String },
}

impl QueueError {
    pub(crate) fn internal(reason: impl std::fmt::Display) -> QueueError {
        QueueError::Internal {
            reason: reason.to_string(),
        }
    }
}

impl From<fedsx_pg::PgError> for QueueError {
    fn from(err: fedsx_pg::PgError) -> Self {
        match err {
            fedsx_pg::PgError::Unavailable { reason } => QueueError::Unavailable { reason },
            fedsx_pg::PgError::Refused { reason } => QueueError::Internal { reason },
        }
    }
}

impl From<fedsx_pg::tokio_postgres::Error> for QueueError {
    fn from(err: fedsx_pg::tokio_postgres::Error) -> Self {
        fedsx_pg::PgError::from(err).into()
    }
}

impl From<fedsx_pg::PoolError> for QueueError {
    fn from(err: fedsx_pg::PoolError) -> Self {
        fedsx_pg::PgError::from(err).into()
    }
}

impl ServiceError for QueueError {
    fn code(&self) -> ErrorCode {
        match self {
            QueueError::Unavailable { .. } | QueueError::ShuttingDown => ErrorCode::Unavailable,
            QueueError::Internal { .. } => ErrorCode::Internal,
        }
    }
}

/// What delivery needs of its queue's storage.
pub trait QueueStorage: Clone + Send + Sync + 'static {
    /// Queues `delivery` durably; false when (peer, id) is already known.
    fn enqueue(&self, delivery: NewDelivery) -> impl Future<Output = Result<bool, QueueError>> + Send {
        async move {
            let mut new = self.enqueue_all(vec![delivery]).await?;
            Ok(new.pop().unwrap_or(false))
        }
    }

    /// Queues `deliveries` (to any peers) durably, all of them before it answers — per
    /// delivery whether it was new, in the order given. One sender's deliveries to one peer
    /// keep their order in the slice; an id twice for one peer is queued once (the first).
    /// On an error, some may have been queued (a retry is idempotent).
    fn enqueue_all(&self, deliveries: Vec<NewDelivery>) -> impl Future<Output = Result<Vec<bool>, QueueError>> + Send;

    /// Leases to `owner`, until `until`, up to `limit` peers that have pending deliveries
    /// and whose lease is free, lapsed (before `now`) or already `owner`'s (renewed);
    /// answers them.
    fn claim(
        &self,
        owner: &str,
        now: u64,
        until: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, QueueError>> + Send;

    /// Gives `owner`'s lease on `peer` up (nothing pending for it) if it still ends at
    /// `until`: a lease renewed since (a claim for the worker that comes next) is kept, or
    /// that worker's outcomes would be refused and its deliveries sent again.
    fn release(&self, owner: &str, peer: &str, until: u64) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Up to `limit` pending deliveries of `peer`, each the oldest pending one of its sender,
    /// due at `now`, in FIFO order, leaving out the ids in `skip` (in flight — whose
    /// senders' later deliveries wait behind them). When more are due than `limit`, which
    /// senders go first is the engine's choice — the oldest work (RocksDB) or the senders in
    /// turn (PostgreSQL) — so long as every sender gets its turn.
    ///
    /// `recipients`: whether the caller needs the recipients of deliveries that go to one
    /// inbox url (a node inbox); an engine may leave those out when not (a delivery without
    /// an inbox url always comes with its recipients).
    fn due(
        &self,
        peer: &str,
        now: u64,
        limit: usize,
        skip: Vec<Id>,
        recipients: bool,
    ) -> impl Future<Output = Result<Vec<Due>, QueueError>> + Send;

    /// The earliest retry time after `now` among `peer`'s pending deliveries.
    fn next_retry(&self, peer: &str, now: u64) -> impl Future<Output = Result<Option<u64>, QueueError>> + Send;

    /// Records sends' outcomes for `peer` (atomically, one durable write for all), if
    /// `owner` holds `peer`'s lease at `now`; per outcome whether it was recorded (false:
    /// the lease is not held, or the delivery is no longer pending — nothing changed).
    fn record(
        &self,
        owner: &str,
        now: u64,
        peer: &str,
        outcomes: Vec<(Id, Outcome)>,
    ) -> impl Future<Output = Result<Vec<bool>, QueueError>> + Send;

    /// Moves `peer`'s dead letters (all, or those in `ids`) back to the end of pending with
    /// attempts reset; the number moved, None when the peer is unknown.
    fn redrive(
        &self,
        peer: &str,
        ids: Option<Vec<Id>>,
    ) -> impl Future<Output = Result<Option<usize>, QueueError>> + Send;

    /// One peer's numbers, None when the peer is unknown.
    fn status(&self, peer: &str) -> impl Future<Output = Result<Option<PeerStatus>, QueueError>> + Send;

    /// Every peer's numbers, by peer.
    fn statuses(&self) -> impl Future<Output = Result<Vec<PeerStatus>, QueueError>> + Send;

    /// A peer's dead letters, None when the peer is unknown.
    fn dead_letters(&self, peer: &str) -> impl Future<Output = Result<Option<Vec<DeadLetter>>, QueueError>> + Send;

    /// Peers that got new pending work (enqueue, redrive), from any replica; an empty
    /// string means "any peer may have" (notices were missed).
    fn notices(&self) -> broadcast::Receiver<String>;

    /// Marks `peer` as not failing (an operator's word, or a request from it arrived), so
    /// that it is available again; None when the peer is unknown.
    fn revive(&self, peer: &str) -> impl Future<Output = Result<Option<()>, QueueError>> + Send;

    /// Forgets the records of deliveries delivered that were enqueued before `before` (ms
    /// since the epoch): the same (peer, id) enqueued again after that is a new delivery.
    /// Pending and dead-lettered ones are kept. Answers how many were forgotten.
    fn expire(&self, before: u64) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Whether the engine can serve right now.
    fn readiness(&self) -> watch::Receiver<bool>;

    /// Releases the engine; later calls fail with `ShuttingDown`.
    fn close(&self) -> impl Future<Output = Result<(), QueueError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn recipients(list: &[(&str, &str)]) -> Vec<Recipient> {
        list.iter()
            .map(|(actor, inbox_url)| Recipient {
                actor: (*actor).into(),
                inbox_url: (*inbox_url).into(),
            })
            .collect()
    }

    fn due(inbox_url: &str, list: &[(&str, &str)]) -> Due {
        Due {
            inbox_url: inbox_url.into(),
            recipients: StoredRecipients::store("https://b.example", inbox_url, &recipients(list)),
            ..Due::default()
        }
    }

    #[test]
    fn recipients_are_stored_short_and_read_back_as_queued() {
        let (node, inbox) = ("https://b.example", "https://b.example/inbox");
        let list = recipients(&[
            ("https://b.example/actors/bob", inbox),
            ("https://b.example/actors/dan", ""),
            ("https://b.example/actors/eve", "https://b.example/actors/eve/inbox"),
            ("https://c.example/actors/fay", inbox),
            ("https://b.example", inbox),
            ("https://b.examplez/x", ""),
        ]);
        let stored = StoredRecipients::store(node, inbox, &list);
        assert_eq!(stored.read(node, inbox).unwrap(), list);
        let full = Recipients { list: list.clone() }.encode_to_vec();
        assert!(
            stored.bytes().len() < full.len() * 2 / 3,
            "{} bytes stored",
            stored.bytes().len()
        );
        assert_eq!(
            StoredRecipients::from_stored(full).read(node, inbox).unwrap(),
            list,
            "a list stored in full before reads back as it is"
        );
        assert!(StoredRecipients::store(node, inbox, &[]).is_empty());
        assert!(StoredRecipients::from_stored(&b"\xff"[..]).read(node, inbox).is_err());
    }

    #[test]
    fn targets_are_the_node_inbox_once_except_for_recipients_the_map_names() {
        let node = "https://b.example";
        let (bob, dan) = ("https://b.example/actors/bob", "https://b.example/actors/dan");
        let shared = due("https://b.example/inbox", &[(bob, ""), (dan, "")]);
        let none = HashMap::new();
        assert_eq!(shared.targets(node, &none).unwrap(), ["https://b.example/inbox"]);
        let bob_elsewhere = HashMap::from([(bob.to_owned(), "http://127.0.0.1:9/bob".to_owned())]);
        assert_eq!(
            shared.targets(node, &bob_elsewhere).unwrap(),
            ["http://127.0.0.1:9/bob", "https://b.example/inbox"],
            "bob on his own, dan still through the node inbox"
        );
        let both = HashMap::from([
            (bob.to_owned(), "http://127.0.0.1:9/bob".to_owned()),
            (dan.to_owned(), "http://127.0.0.1:9/dan".to_owned()),
        ]);
        assert_eq!(
            shared.targets(node, &both).unwrap(),
            ["http://127.0.0.1:9/bob", "http://127.0.0.1:9/dan"]
        );
        let own = due(
            "",
            &[
                (bob, "https://b.example/bob/inbox"),
                (dan, "https://b.example/dan/inbox"),
            ],
        );
        assert_eq!(
            own.targets(node, &none).unwrap(),
            ["https://b.example/bob/inbox", "https://b.example/dan/inbox"]
        );
        assert_eq!(
            due("", &[]).targets(node, &none).unwrap(),
            [""],
            "no inbox known: fails as no peer url"
        );
    }
}
