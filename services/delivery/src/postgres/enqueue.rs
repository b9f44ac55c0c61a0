//! Enqueues to one destination are committed in groups: while one write for a destination
//! is in flight, the enqueues that arrive for it wait and go together into the next — one
//! statement and one commit for all of them, in arrival order.

use super::{ms, schema};
use crate::queue::Id;
use crate::storage::{NewDelivery, QueueError, StoredRecipients};
use fedsx_pg::tokio_postgres::types::ToSql;
use fedsx_pg::{Database, GroupCommit, GroupWriter};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Enqueues accepted but not yet answered, over all destinations: callers past it wait.
const MAX_PENDING: usize = 4096;
/// Most enqueues committed in one statement.
const MAX_GROUP: usize = 512;

pub(super) type Enqueues = GroupCommit<String, NewDelivery, Enqueuer>;

pub(super) struct Enqueuer {
    pub database: Arc<Database>,
    /// Wakes this replica's dispatcher at once (the others through the notifier).
    pub notices: broadcast::Sender<String>,
}

pub(super) fn enqueues(enqueuer: Enqueuer) -> Arc<Enqueues> {
    GroupCommit::new(enqueuer, MAX_PENDING, MAX_GROUP)
}

impl Enqueuer {
    /// New work for `peer`: this replica's dispatcher hears it at once, the others by NOTIFY.
    pub fn announce(&self, peer: &str) {
        let _ = self.notices.send(peer.to_owned());
        self.database.notifier.notify(peer.to_owned());
    }

    /// Whether each delivery was new (the first of its id for the destination).
    async fn insert(&self, peer: &str, deliveries: &[NewDelivery]) -> Result<Vec<bool>, QueueError> {
        let client = self.database.client().await?;
        let statement = client.prepare_cached(schema::ENQUEUE).await?;
        let ids: Vec<&[u8]> = deliveries.iter().map(|d| &d.id[..]).collect();
        let inboxes: Vec<&str> = deliveries.iter().map(|d| d.inbox_url.as_str()).collect();
        let traces: Vec<&str> = deliveries.iter().map(|d| d.traceparent.as_str()).collect();
        let enqueued: Vec<i64> = deliveries.iter().map(|d| ms(d.enqueued_ms)).collect();
        let envelopes: Vec<&[u8]> = deliveries.iter().map(|d| &d.envelope[..]).collect();
        let senders: Vec<&str> = deliveries.iter().map(|d| d.sender.as_str()).collect();
        let recipients: Vec<Option<StoredRecipients>> = deliveries
            .iter()
            .map(|d| {
                let stored = StoredRecipients::store(peer, &d.inbox_url, &d.recipients);
                (!stored.is_empty()).then_some(stored)
            })
            .collect();
        let recipients: Vec<Option<&[u8]>> = recipients.iter().map(|r| r.as_ref().map(|r| r.bytes())).collect();
        let statuses: Vec<i16> = deliveries
            .iter()
            .map(|d| {
                if d.undeliverable.is_some() {
                    schema::DEAD
                } else {
                    schema::PENDING
                }
            })
            .collect();
        let errors: Vec<&str> = deliveries
            .iter()
            .map(|d| d.undeliverable.as_deref().unwrap_or_default())
            .collect();
        // One group goes to one destination; any of its deliveries says the cut-off.
        let unavailable_before = deliveries.iter().map(|d| ms(d.unavailable_before)).max().unwrap_or(0);
        let params: [&(dyn ToSql + Sync); 11] = [
            &peer,
            &ids,
            &inboxes,
            &traces,
            &enqueued,
            &envelopes,
            &senders,
            &recipients,
            &statuses,
            &errors,
            &unavailable_before,
        ];
        let rows = client.query(&statement, &params).await?;
        let mut added: HashSet<Id> = HashSet::with_capacity(rows.len());
        for row in &rows {
            added.insert(super::id_of(row.get(0))?);
        }
        // An id twice in one group: the first is the new one.
        Ok(deliveries.iter().map(|d| added.remove(&d.id)).collect())
    }
}

impl GroupWriter<String, NewDelivery> for Enqueuer {
    type Answer = Result<bool, QueueError>;

    async fn write(&self, peer: &String, deliveries: Vec<NewDelivery>) -> Vec<Self::Answer> {
        match self.insert(peer, &deliveries).await {
            Ok(new) => {
                let sendable = new
                    .iter()
                    .zip(&deliveries)
                    .any(|(n, d)| *n && d.undeliverable.is_none());
                if sendable {
                    self.announce(peer);
                }
                new.into_iter().map(Ok).collect()
            }
            Err(err) => {
                tracing::warn!(peer, error = %err, enqueues = deliveries.len(), "enqueue failed");
                deliveries.iter().map(|_| Err(err.clone())).collect()
            }
        }
    }
}
