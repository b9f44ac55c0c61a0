//! Appends to one stream are committed in batches: while one transaction for a stream is
//! in flight, the appends that arrive for it wait and go together into the next one (one
//! commit, one fsync, for all of them) — the PostgreSQL counterpart of the RocksDB writer's
//! group commit. Different streams commit in parallel, each in its own transaction.

use super::schema;
use crate::error::StoreError;
use crate::plan::StreamPlan;
use crate::storage::{AppendOutcome, Notice};
use crate::stream::{NewEntry, StreamId};
use fedsx_pg::Database;
use fedsx_pg::tokio_postgres::types::ToSql;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, oneshot};

/// Appends accepted but not yet answered, over all streams: callers past it wait.
pub(super) const MAX_PENDING: usize = 4096;
/// Most appends committed in one transaction.
const MAX_GROUP: usize = 256;

struct Job {
    entries: Vec<NewEntry>,
    expected_tip: Option<u64>,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    _permit: OwnedSemaphorePermit,
}

pub(super) struct Batcher {
    database: Arc<Database>,
    /// Wakes this process's subscribers at once (other replicas through the notifier).
    notices: broadcast::Sender<Notice>,
    queues: Mutex<HashMap<StreamId, Vec<Job>>>,
    permits: Arc<Semaphore>,
    metrics: crate::metrics::AppendMetrics,
}

impl Batcher {
    pub fn new(database: Arc<Database>, notices: broadcast::Sender<Notice>) -> Arc<Batcher> {
        Arc::new(Batcher {
            notices,
            database,
            queues: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(MAX_PENDING)),
            metrics: crate::metrics::AppendMetrics::new(),
        })
    }

    pub async fn append(
        self: &Arc<Self>,
        stream: StreamId,
        entries: Vec<NewEntry>,
        expected_tip: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            entries,
            expected_tip,
            reply,
            _permit: permit,
        };
        let first = {
            let mut queues = self.queues.lock().expect("batch lock poisoned");
            match queues.get_mut(&stream) {
                Some(waiting) => {
                    waiting.push(job);
                    false
                }
                None => {
                    queues.insert(stream.clone(), vec![job]);
                    true
                }
            }
        };
        if first {
            tokio::spawn(self.clone().drain(stream));
        }
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Appends waiting or in flight.
    pub fn pending(&self) -> usize {
        MAX_PENDING - self.permits.available_permits()
    }

    /// Refuses appends from now on.
    pub fn close(&self) {
        self.permits.close();
    }

    /// Commits the stream's waiting appends, a group at a time, until none are left.
    async fn drain(self: Arc<Self>, stream: StreamId) {
        loop {
            let jobs: Vec<Job> = {
                let mut queues = self.queues.lock().expect("batch lock poisoned");
                let Some(waiting) = queues.get_mut(&stream) else { return };
                if waiting.is_empty() {
                    queues.remove(&stream);
                    return;
                }
                let n = waiting.len().min(MAX_GROUP);
                waiting.drain(..n).collect()
            };
            let started = std::time::Instant::now();
            match self.commit(&stream, &jobs).await {
                Ok((answers, entries, bytes)) => {
                    if entries > 0 {
                        self.metrics.committed(jobs.len(), started.elapsed());
                        self.metrics.appended(entries, bytes);
                        let _ = self.notices.send(Notice::Appended(stream.clone()));
                        self.database
                            .notifier
                            .notify(format!("{}:{}", stream.kind().tag(), stream.actor()));
                    }
                    for (job, answer) in jobs.into_iter().zip(answers) {
                        let _ = job.reply.send(answer);
                    }
                }
                Err(err) => {
                    tracing::warn!(stream = %stream, error = %err, appends = jobs.len(), "append transaction failed");
                    for job in jobs {
                        let _ = job.reply.send(Err(copy(&err)));
                    }
                }
            }
        }
    }

    /// One transaction for `jobs`, in two round trips: `BEGIN`, creating the stream's row if
    /// missing, locking it and reading which ids it holds go together; so do the write and
    /// `COMMIT`. Answers each job, and the entries and bytes written.
    #[allow(clippy::type_complexity)]
    async fn commit(
        &self,
        stream: &StreamId,
        jobs: &[Job],
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64, u64), StoreError> {
        let client = self.database.client().await?;
        let done = self.commit_on(&client, stream, jobs).await;
        if done.is_err() {
            // The transaction may be open or aborted: never hand the connection back.
            drop(fedsx_pg::Client::take(client));
        }
        done
    }

    #[allow(clippy::type_complexity)]
    async fn commit_on(
        &self,
        client: &fedsx_pg::Client,
        stream: &StreamId,
        jobs: &[Job],
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64, u64), StoreError> {
        let actor = stream.actor();
        let kind = i16::from(stream.kind().tag());
        let create = client.prepare_cached(schema::CREATE_STREAM).await?;
        let lock = client.prepare_cached(schema::LOCK_TIP).await?;
        let stored_ids = client.prepare_cached(schema::STORED_IDS).await?;
        let write = client.prepare_cached(schema::WRITE_GROUP).await?;

        let ids: Vec<&[u8]> = jobs
            .iter()
            .flat_map(|job| job.entries.iter().map(|e| &e.id[..]))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Pipelined, and run by the server in this order: the ids are read after the lock is
        // held, so no other replica can add one of them in between.
        let stream_params: [&(dyn ToSql + Sync); 2] = [&actor, &kind];
        let ids_params: [&(dyn ToSql + Sync); 3] = [&actor, &kind, &ids];
        let (_, _, locked, rows) = futures::try_join!(
            client.batch_execute("BEGIN"),
            client.execute(&create, &stream_params),
            client.query_one(&lock, &stream_params),
            client.query(&stored_ids, &ids_params)
        )?;
        let tip: i64 = locked.get(0);
        let stored: HashMap<Vec<u8>, u64> = rows
            .iter()
            .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, i64>(1) as u64))
            .collect();

        let mut plan = StreamPlan::new(tip as u64);
        let answers: Vec<_> = jobs
            .iter()
            .map(|job| plan.stage(&job.entries, job.expected_tip, |id| Ok(stored.get(id).copied())))
            .collect();
        if !plan.changed() {
            client.batch_execute("ROLLBACK").await?;
            return Ok((answers, 0, 0));
        }
        let seqs: Vec<i64> = plan.writes().iter().map(|(seq, _)| *seq as i64).collect();
        let ids: Vec<&[u8]> = plan.writes().iter().map(|(_, e)| &e.id[..]).collect();
        let data: Vec<&[u8]> = plan.writes().iter().map(|(_, e)| &e.data[..]).collect();
        let bytes = plan
            .writes()
            .iter()
            .map(|(_, e)| (e.id.len() + e.data.len()) as u64)
            .sum();
        let new_tip = plan.tip() as i64;
        let write_params: [&(dyn ToSql + Sync); 6] = [&actor, &kind, &seqs, &ids, &data, &new_tip];
        // A failed write aborts the transaction, and COMMIT then rolls it back.
        let (written, committed) =
            futures::join!(client.execute(&write, &write_params), client.batch_execute("COMMIT"));
        written?;
        committed?;
        Ok((answers, seqs.len() as u64, bytes))
    }
}

/// The same failure for every append of a failed group.
fn copy(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable { reason } => StoreError::Unavailable { reason: reason.clone() },
        StoreError::ShuttingDown => StoreError::ShuttingDown,
        other => StoreError::internal(other),
    }
}
