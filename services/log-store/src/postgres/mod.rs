//! The replicated engine: streams in PostgreSQL, selected with `--store postgres://…`.
//! Any number of log-store processes may serve one database at once: seqs and ids are
//! unique per stream in the schema, so of two replicas writing one seq exactly one wins
//! (see `batch`), and wake-ups cross processes through LISTEN/NOTIFY for the streams a
//! reader watches (see `watches`; a hint only: readers read from their last seq).

mod batch;
mod lease;
mod schema;
mod watches;

use crate::error::{OpenError, StoreError};
use crate::storage::{AppendOutcome, LogStorage, Notice, Page, Watching};
use crate::stream::{Entry, Kind, NewEntry, StreamId, limits, validate_entries};
use batch::{Batcher, Job};
use bytes::Bytes;
use fedsx_pg::{Database, PoolOptions, Wakeups};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

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
    wakeups: Wakeups<Notice>,
    watches: Arc<watches::Watches>,
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
        // After a reconnect, readers are told they may have missed some.
        let wakeups = Wakeups::forward(database.notices(), NOTICE_BUFFER, Notice::Unknown, |payload| {
            parse_payload(payload).map(Notice::Appended)
        });
        let watches = Arc::new(watches::Watches::start(database.clone()));
        Ok(PgStore {
            inner: Arc::new(Inner {
                batcher: batch::batcher(database.clone(), wakeups.sender().clone(), watches.clone()),
                database,
                wakeups,
                watches,
            }),
        })
    }

    async fn client(&self) -> Result<fedsx_pg::Client, StoreError> {
        Ok(self.inner.database.client().await?)
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
        self.inner
            .batcher
            .submit(stream, Job { entries, expected_tip })
            .await
            .map_err(|_| StoreError::ShuttingDown)?
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

    async fn acquire_lease(&self, request: crate::lease::Acquire) -> Result<crate::lease::Lease, StoreError> {
        lease::acquire(&self.client().await?, &request).await
    }

    async fn release_lease(&self, name: String, holder: String) -> Result<bool, StoreError> {
        lease::release(&self.client().await?, &name, &holder).await
    }

    async fn leases(&self, prefix: String) -> Result<Vec<crate::lease::Lease>, StoreError> {
        lease::list(&self.client().await?, &prefix).await
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.wakeups.subscribe()
    }

    fn watch(&self, stream: &StreamId) -> Watching {
        Watching::new(self.inner.watches.watch(stream))
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL_INTERVAL)
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.inner.database.readiness()
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Appends already taken finish (each is answered after its commit, or fails).
        self.inner.batcher.close(Duration::from_secs(10)).await;
        self.inner.database.pool.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Appended;
    use std::collections::BTreeMap;

    fn entry(id: &str) -> NewEntry {
        NewEntry {
            id: Bytes::from(id.to_owned()),
            data: Bytes::from(format!("data of {id}")),
        }
    }

    /// Two replicas (two stores on one database) each plan on the tip they last saw, so
    /// their plans collide all the time: every collision must write nothing and be made
    /// again, leaving one gap-free stream where each id has one seq, and expected tips
    /// refused only against the real tip.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_writing_one_stream_collide_and_replan_without_gaps_or_duplicates() {
        let url = fedsx_pg::testing::shared_database("pg_replicas_race").await;
        let options = PoolOptions::new("race");
        let stores = [
            PgStore::open(&url, &options).await.unwrap(),
            PgStore::open(&url, &options).await.unwrap(),
        ];
        let stream = StreamId::new("contended", Kind::Outbox).unwrap();
        let mut tasks = Vec::new();
        for writer in 0..8 {
            let store = stores[writer % 2].clone();
            let stream = stream.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..40 {
                    // Ids shared by writers of both replicas: each must land once.
                    let id = format!("id-{}-{i}", writer % 4);
                    let expected = if i % 5 == 0 {
                        Some(store.tip(stream.clone()).await.unwrap())
                    } else {
                        None
                    };
                    // A replica that lost every attempt to the other answers "contended;
                    // try again" (UNAVAILABLE), having written nothing: a caller tries again.
                    let mut tries = 0;
                    let appended = loop {
                        match store.append(stream.clone(), vec![entry(&id)], expected).await {
                            Err(StoreError::Unavailable { reason }) if reason.contains("contended") && tries < 20 => {
                                tries += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(tries)).await;
                            }
                            answer => break answer,
                        }
                    };
                    match appended {
                        Ok(outcome) => seqs.push((id, outcome.entries[0].seq)),
                        Err(StoreError::TipMismatch { expected, tip }) => {
                            assert!(tip > expected, "refused only by a tip that moved on")
                        }
                        Err(err) => panic!("unexpected error {err}"),
                    }
                }
                seqs
            }));
        }
        let mut seq_of: BTreeMap<String, u64> = BTreeMap::new();
        for task in tasks {
            for (id, seq) in task.await.unwrap() {
                if let Some(before) = seq_of.insert(id.clone(), seq) {
                    assert_eq!(before, seq, "{id} answered two seqs");
                }
            }
        }
        let page = stores[0].read(stream.clone(), 0, 1000).await.unwrap();
        let stored: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
        assert_eq!(stored, (1..=page.tip).collect::<Vec<_>>(), "gap-free");
        let mut ids: Vec<&[u8]> = page.entries.iter().map(|e| &e.id[..]).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), page.entries.len(), "no id stored twice");
        for (id, seq) in &seq_of {
            assert_eq!(
                &page.entries[*seq as usize - 1].id[..],
                id.as_bytes(),
                "{id} is at its answered seq"
            );
        }
        // Both replicas plan right on a stream the other moved.
        let next = stores[1]
            .append(stream.clone(), vec![entry("after")], Some(page.tip))
            .await;
        assert_eq!(
            next.unwrap().entries,
            [Appended {
                seq: page.tip + 1,
                appended: true
            }]
        );
        let stale = stores[0]
            .append(stream.clone(), vec![entry("stale")], Some(page.tip))
            .await;
        assert!(matches!(stale, Err(StoreError::TipMismatch { .. })), "{stale:?}");
        let last = stores[0]
            .append(stream.clone(), vec![entry("last")], None)
            .await
            .unwrap();
        assert_eq!(last.entries[0].seq, page.tip + 2);
    }

    /// A replica announces appends only for streams a reader of another replica watches:
    /// not before its first read of the watches (all of them, to be safe), and then only
    /// the watched ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_announced_for_the_streams_other_replicas_watch() {
        let url = fedsx_pg::testing::shared_database("pg_watches").await;
        let options = PoolOptions::new("watches");
        let a = PgStore::open(&url, &options).await.unwrap();
        let b = PgStore::open(&url, &options).await.unwrap();
        let watched = StreamId::new("watched", Kind::Outbox).unwrap();
        let quiet = StreamId::new("quiet", Kind::Outbox).unwrap();
        let _watching = b.watch(&watched);
        let own = a.watch(&quiet);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while a.inner.watches.watched_elsewhere(&quiet) || !a.inner.watches.watched_elsewhere(&watched) {
            assert!(
                std::time::Instant::now() < deadline,
                "A never learnt that B alone watches {watched}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !b.inner.watches.watched_elsewhere(&watched),
            "B's own watch is not another replica's"
        );
        drop(own);
        let mut notices = b.notices();
        a.append(watched.clone(), vec![entry("w")], None).await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Ok(Notice::Appended(stream)) = notices.recv().await
                    && stream == watched
                {
                    return;
                }
            }
        })
        .await;
        assert!(woken.is_ok(), "B is told of A's append to the stream it watches");
    }

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

    #[tokio::test]
    async fn appends_share_connections_and_a_closed_one_is_replaced() {
        let url = fedsx_pg::testing::shared_database("pg_shared_clients").await;
        let (pool, _) = fedsx_pg::connect(&url, &fedsx_pg::PoolOptions::new("test")).unwrap();
        let shared = fedsx_pg::SharedClients::new(pool.clone(), 1);
        let first = shared.get().await.unwrap();
        let again = shared.get().await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "one connection, shared");
        let (a, b) = tokio::join!(first.query_one("SELECT 1", &[]), again.query_one("SELECT 2", &[]));
        assert_eq!((a.unwrap().get::<_, i32>(0), b.unwrap().get::<_, i32>(0)), (1, 2));

        let pid: i32 = first.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        let other = pool.get().await.unwrap();
        other.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        // The connection notices once it is used.
        assert!(first.query_one("SELECT 1", &[]).await.is_err());
        for _ in 0..200 {
            if first.is_closed() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(first.is_closed());
        let fresh = shared.get().await.unwrap();
        assert!(!std::sync::Arc::ptr_eq(&first, &fresh), "replaced");
        let one: i32 = fresh.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    }
}
