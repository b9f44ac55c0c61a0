//! The replicated engine: the queue in PostgreSQL, selected with `--store postgres://…`.
//! Any number of delivery processes share it: each destination is worked by one replica at
//! a time under a lease row (`delivery_peers.owner`, `lease_until`); a replica that dies
//! stops renewing, and another takes the destination once the lease lapses. Outcomes are
//! recorded only under a held lease, and a delivered row is never handed out again.

mod enqueue;
mod schema;

use crate::queue::{DeadLetter, Id};
use crate::storage::{Due, NewDelivery, Outcome, PeerStatus, QueueError, QueueStorage, StoredRecipients};
use bytes::Bytes;
use fedsx_pg::{Database, OpenError, PoolOptions, Wakeups};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{broadcast, watch};

/// Wake-ups buffered for the dispatcher.
const NOTICE_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct PgQueue {
    inner: Arc<Inner>,
}

struct Inner {
    database: Arc<Database>,
    /// Destinations with new work; empty: look at every destination.
    wakeups: Wakeups<String>,
    enqueues: Arc<enqueue::Enqueues>,
    /// Per destination worked here, the sender whose lane [`QueueStorage::due`] read last
    /// (forgotten when the lease is released).
    cursors: std::sync::Mutex<HashMap<String, String>>,
    closed: AtomicBool,
}

impl PgQueue {
    /// Connects to `url`, brings the schema up to date (refusing a newer one) and listens
    /// for work queued by other replicas.
    pub async fn open(url: &str, options: &PoolOptions) -> Result<PgQueue, OpenError> {
        let mut options = options.clone();
        options.settings.extend(schema::SESSION_SETTINGS);
        let database = Arc::new(
            Database::open(
                url,
                &options,
                "delivery",
                schema::COMPONENT,
                schema::MIGRATIONS,
                schema::CHANNEL,
            )
            .await?,
        );
        let wakeups = Wakeups::forward(database.notices(), NOTICE_BUFFER, String::new(), |peer| {
            Some(peer.to_owned())
        });
        let enqueues = enqueue::enqueues(enqueue::Enqueuer {
            database: database.clone(),
            notices: wakeups.sender().clone(),
        });
        Ok(PgQueue {
            inner: Arc::new(Inner {
                database,
                wakeups,
                enqueues,
                cursors: std::sync::Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    async fn client(&self) -> Result<fedsx_pg::Client, QueueError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(QueueError::ShuttingDown);
        }
        Ok(self.inner.database.client().await?)
    }
}

pub(super) fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn id_of(bytes: &[u8]) -> Result<Id, QueueError> {
    bytes
        .try_into()
        .map_err(|_| QueueError::internal(format!("stored id of {} bytes", bytes.len())))
}

/// A row's stored recipients (NULL: none).
fn recipients_of(stored: Option<Vec<u8>>) -> StoredRecipients {
    StoredRecipients::from_stored(stored.unwrap_or_default())
}

fn status_of(row: &fedsx_pg::tokio_postgres::Row) -> PeerStatus {
    let pending: i64 = row.get(4);
    PeerStatus {
        peer: row.get(0),
        delivered: row.get::<_, i64>(1) as u64,
        last_error: row.get(2),
        failing_since_ms: row.get::<_, i64>(3) as u64,
        pending: pending as u64,
        dead_letters: row.get::<_, i64>(5) as u64,
        head_attempts: row.get::<_, Option<i32>>(6).unwrap_or(0) as u32,
        head_next_retry_ms: row.get::<_, Option<i64>>(7).unwrap_or(0) as u64,
        head_enqueued_ms: row.get::<_, Option<i64>>(8).unwrap_or(0) as u64,
    }
}

impl QueueStorage for PgQueue {
    async fn enqueue(&self, delivery: NewDelivery) -> Result<bool, QueueError> {
        self.inner
            .enqueues
            .submit(delivery.peer.clone(), delivery)
            .await
            .map_err(|_| QueueError::ShuttingDown)?
    }

    /// Each destination's share is written with whatever else waits for it (one statement
    /// and commit per destination, the destinations side by side): no transaction spans
    /// two destinations.
    async fn enqueue_all(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<bool>, QueueError> {
        let jobs = deliveries.into_iter().map(|d| (d.peer.clone(), d)).collect();
        let answers = self
            .inner
            .enqueues
            .submit_all(jobs)
            .await
            .map_err(|_| QueueError::ShuttingDown)?;
        answers.into_iter().collect()
    }

    async fn claim(&self, owner: &str, now: u64, until: u64, limit: usize) -> Result<Vec<String>, QueueError> {
        let client = self.client().await?;
        let claimable = client.prepare_cached(schema::CLAIMABLE).await?;
        let claim = client.prepare_cached(schema::CLAIM).await?;
        let candidates = client.query(&claimable, &[&owner, &ms(now), &(limit as i64)]).await?;
        let mut claimed = Vec::with_capacity(candidates.len());
        // One destination per statement (and transaction): never two leases in one.
        for candidate in candidates {
            let peer: String = candidate.get(0);
            if client
                .query_opt(&claim, &[&owner, &peer, &ms(until), &ms(now)])
                .await?
                .is_some()
            {
                claimed.push(peer);
            }
        }
        Ok(claimed)
    }

    async fn release(&self, owner: &str, peer: &str, until: u64) -> Result<(), QueueError> {
        self.inner.cursors.lock().expect("cursors lock poisoned").remove(peer);
        let client = self.client().await?;
        client.execute(schema::RELEASE, &[&peer, &owner, &ms(until)]).await?;
        Ok(())
    }

    /// The senders are taken round-robin: each call walks on from the sender where the
    /// previous one for `peer` stopped, wrapping around once, so a call reads about as many
    /// lanes as it answers and every sender gets its turn. What it answers is in queue order.
    /// Recipients come with every row, wanted or not: they are in the row read anyway.
    async fn due(
        &self,
        peer: &str,
        now: u64,
        limit: usize,
        skip: Vec<Id>,
        _recipients: bool,
    ) -> Result<Vec<Due>, QueueError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::DUE).await?;
        let skip: Vec<&[u8]> = skip.iter().map(|id| &id[..]).collect();
        let cursor = self
            .inner
            .cursors
            .lock()
            .expect("cursors lock poisoned")
            .get(peer)
            .cloned();
        // The senders after the cursor, then (wrapping around) those up to it.
        let (client, statement, skip) = (&client, &statement, &skip);
        let walk = |limit: usize, after: Option<String>, upto: Option<String>| async move {
            client
                .query(statement, &[&peer, &ms(now), skip, &(limit as i64), &after, &upto])
                .await
        };
        let mut rows = walk(limit, cursor.clone(), None).await?;
        if rows.len() < limit && cursor.is_some() {
            rows.extend(walk(limit - rows.len(), None, cursor).await?);
        }
        if let Some(last) = rows.last() {
            let mut cursors = self.inner.cursors.lock().expect("cursors lock poisoned");
            cursors.insert(peer.to_owned(), last.get(6));
        }
        rows.sort_by_key(|row| row.get::<_, i64>(7));
        rows.iter()
            .map(|row| {
                Ok(Due {
                    id: id_of(row.get(0))?,
                    inbox_url: row.get(1),
                    recipients: recipients_of(row.get(5)),
                    envelope: Bytes::from(row.get::<_, Option<Vec<u8>>>(2).unwrap_or_default()),
                    traceparent: row.get(3),
                    attempts: row.get::<_, i32>(4) as u32,
                })
            })
            .collect()
    }

    async fn next_retry(&self, peer: &str, now: u64) -> Result<Option<u64>, QueueError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::NEXT_RETRY).await?;
        let row = client.query_one(&statement, &[&peer, &ms(now)]).await?;
        Ok(row.get::<_, Option<i64>>(0).map(|at| at as u64))
    }

    async fn record(
        &self,
        owner: &str,
        now: u64,
        peer: &str,
        outcomes: Vec<(Id, Outcome)>,
    ) -> Result<Vec<bool>, QueueError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::RECORD).await?;
        let mut delivered: Vec<&[u8]> = Vec::with_capacity(outcomes.len());
        let mut failed: Vec<&[u8]> = Vec::new();
        let (mut statuses, mut attempts, mut retries, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, outcome) in &outcomes {
            let (status, tries, retry, error) = match outcome {
                Outcome::Delivered => {
                    delivered.push(&id[..]);
                    continue;
                }
                Outcome::Retry { attempts, at, error } => (schema::PENDING, *attempts, ms(*at), error.as_str()),
                Outcome::Dead { attempts, error } => (schema::DEAD, *attempts, 0, error.as_str()),
            };
            failed.push(&id[..]);
            statuses.push(status);
            attempts.push(tries as i32);
            retries.push(retry);
            errors.push(error);
        }
        let rows = client
            .query(
                &statement,
                &[
                    &peer,
                    &owner,
                    &ms(now),
                    &delivered,
                    &failed,
                    &statuses,
                    &attempts,
                    &retries,
                    &errors,
                ],
            )
            .await?;
        let recorded: std::collections::HashSet<Vec<u8>> = rows.iter().map(|row| row.get(0)).collect();
        Ok(outcomes.iter().map(|(id, _)| recorded.contains(&id[..])).collect())
    }

    async fn redrive(&self, peer: &str, ids: Option<Vec<Id>>) -> Result<Option<usize>, QueueError> {
        let client = self.client().await?;
        if client.query_opt(schema::PEER_EXISTS, &[&peer]).await?.is_none() {
            return Ok(None);
        }
        let ids: Option<Vec<&[u8]>> = ids.as_ref().map(|ids| ids.iter().map(|id| &id[..]).collect());
        let moved: i64 = client.query_one(schema::REDRIVE, &[&peer, &ids]).await?.get(0);
        if moved > 0 {
            self.inner.enqueues.writer().announce(peer);
        }
        Ok(Some(moved as usize))
    }

    async fn status(&self, peer: &str) -> Result<Option<PeerStatus>, QueueError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::STATUS).await?;
        let row = client.query_opt(&statement, &[&Some(peer)]).await?;
        Ok(row.as_ref().map(status_of))
    }

    async fn statuses(&self) -> Result<Vec<PeerStatus>, QueueError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::STATUS).await?;
        let rows = client.query(&statement, &[&None::<&str>]).await?;
        Ok(rows.iter().map(status_of).collect())
    }

    async fn dead_letters(&self, peer: &str) -> Result<Option<Vec<DeadLetter>>, QueueError> {
        let client = self.client().await?;
        if client.query_opt(schema::PEER_EXISTS, &[&peer]).await?.is_none() {
            return Ok(None);
        }
        let rows = client.query(schema::DEAD_LETTERS, &[&peer]).await?;
        let dead = rows
            .iter()
            .map(|row| {
                let recipients = recipients_of(row.get(4))
                    .read(peer, row.get(5))
                    .map_err(QueueError::internal)?;
                Ok(DeadLetter {
                    id: id_of(row.get(0))?,
                    attempts: row.get::<_, i32>(1) as u32,
                    last_error: row.get(2),
                    sender: row.get(3),
                    recipients,
                })
            })
            .collect::<Result<_, QueueError>>()?;
        Ok(Some(dead))
    }

    async fn revive(&self, peer: &str) -> Result<Option<()>, QueueError> {
        let client = self.client().await?;
        if client.query_opt(schema::PEER_EXISTS, &[&peer]).await?.is_none() {
            return Ok(None);
        }
        client.execute(schema::REVIVE, &[&peer]).await?;
        Ok(Some(()))
    }

    async fn expire(&self, before: u64) -> Result<u64, QueueError> {
        let client = self.client().await?;
        let peers: Vec<String> = client
            .query(schema::PEERS, &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let statement = client.prepare_cached(schema::EXPIRE).await?;
        let mut expired = 0;
        // One destination per statement, as every statement here.
        for peer in peers {
            expired += client.execute(&statement, &[&peer, &ms(before)]).await?;
        }
        Ok(expired)
    }

    fn notices(&self) -> broadcast::Receiver<String> {
        self.inner.wakeups.subscribe()
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.inner.database.readiness()
    }

    async fn close(&self) -> Result<(), QueueError> {
        self.inner.closed.store(true, Ordering::Relaxed);
        // Enqueues already taken finish (each is answered after its commit, or fails).
        self.inner.enqueues.close(std::time::Duration::from_secs(10)).await;
        self.inner.database.pool.close();
        Ok(())
    }
}
