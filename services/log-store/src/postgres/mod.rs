//! The replicated engine: streams in PostgreSQL, selected with `--store postgres://…`.
//! Any number of log-store processes may serve one database at once: writers of a stream
//! serialise on its row lock, ids are unique per stream in the schema, and wake-ups cross
//! processes through LISTEN/NOTIFY (a hint only: readers read from their last seq).

mod batch;
mod schema;

use crate::error::{OpenError, StoreError};
use crate::storage::{AppendOutcome, LogStorage, Notice, Page};
use crate::stream::{Entry, Kind, NewEntry, StreamId, limits, validate_entries};
use batch::Batcher;
use bytes::Bytes;
use fedsx_pg::{Database, PoolOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// How long a waiting subscriber goes without a wake-up before it reads anyway.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Wake-ups buffered for a slow subscriber (one that lags re-reads its stream).
const NOTICE_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    database: Arc<Database>,
    batcher: Arc<Batcher>,
    notices: broadcast::Sender<Notice>,
    forward: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

impl PgStore {
    /// Connects to `url`, brings the schema up to date (refusing a newer one) and starts
    /// listening for appends of other replicas.
    pub async fn open(url: &str, options: &PoolOptions) -> Result<PgStore, OpenError> {
        let database = Arc::new(
            Database::open(
                url,
                options,
                "log-store",
                schema::COMPONENT,
                schema::MIGRATIONS,
                schema::CHANNEL,
            )
            .await?,
        );
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        let forward = tokio::spawn(forward(database.notices(), notices.clone()));
        Ok(PgStore {
            inner: Arc::new(Inner {
                batcher: Batcher::new(database.clone(), notices.clone()),
                database,
                notices,
                forward,
            }),
        })
    }

    async fn client(&self) -> Result<fedsx_pg::Client, StoreError> {
        Ok(self.inner.database.client().await?)
    }
}

/// Turns notifications into wake-ups; after a reconnect, tells readers they may have
/// missed some.
async fn forward(mut from: broadcast::Receiver<fedsx_pg::Notice>, to: broadcast::Sender<Notice>) {
    loop {
        let notice = match from.recv().await {
            Ok(fedsx_pg::Notice::Payload(payload)) => match parse_payload(&payload) {
                Some(stream) => Notice::Appended(stream),
                None => continue,
            },
            Ok(fedsx_pg::Notice::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => Notice::Unknown,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let _ = to.send(notice);
    }
}

fn parse_payload(payload: &str) -> Option<StreamId> {
    let (tag, actor) = payload.split_once(':')?;
    StreamId::new(actor, Kind::from_tag(tag.parse().ok()?)?).ok()
}

impl LogStorage for PgStore {
    async fn append(
        &self,
        stream: StreamId,
        entries: Vec<NewEntry>,
        expected_tip: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_entries(&entries)?;
        self.inner.batcher.append(stream, entries, expected_tip).await
    }

    async fn read(&self, stream: StreamId, after_seq: u64, limit: usize) -> Result<Page, StoreError> {
        let limit = limits::read_limit(limit) as i64;
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::READ_PAGE).await?;
        let (actor, kind) = (stream.actor(), i16::from(stream.kind().tag()));
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let max_bytes = limits::MAX_READ_BYTES as i64;
        let rows = client
            .query(&statement, &[&actor, &kind, &after, &limit, &max_bytes])
            .await?;
        let tip = rows.first().map_or(0, |row| row.get::<_, i64>(0) as u64);
        let entries = rows
            .iter()
            .filter_map(|row| {
                let seq: Option<i64> = row.get(1);
                Some(Entry {
                    seq: seq? as u64,
                    id: Bytes::from(row.get::<_, Vec<u8>>(2)),
                    data: Bytes::from(row.get::<_, Vec<u8>>(3)),
                })
            })
            .collect();
        Ok(Page { entries, tip })
    }

    async fn tip(&self, stream: StreamId) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::TIP).await?;
        let row = client
            .query_opt(&statement, &[&stream.actor(), &i16::from(stream.kind().tag())])
            .await?;
        Ok(row.map_or(0, |row| row.get::<_, i64>(0) as u64))
    }

    async fn lookup(&self, stream: StreamId, id: Bytes) -> Result<Option<u64>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(schema::LOOKUP).await?;
        let row = client
            .query_opt(
                &statement,
                &[&stream.actor(), &i16::from(stream.kind().tag()), &&id[..]],
            )
            .await?;
        Ok(row.map(|row| row.get::<_, i64>(0) as u64))
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL_INTERVAL)
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.inner.database.readiness()
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.inner.batcher.close();
        // Appends already taken finish (each is answered after its commit, or fails).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.inner.batcher.pending() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.database.pool.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_payloads_name_their_stream() {
        assert_eq!(
            parse_payload("2:alice"),
            Some(StreamId::new("alice", Kind::Outbox).unwrap())
        );
        assert_eq!(parse_payload("1:a:b"), Some(StreamId::new("a:b", Kind::Inbox).unwrap()));
        assert_eq!(parse_payload("9:alice"), None);
        assert_eq!(parse_payload("garbage"), None);
    }
}
