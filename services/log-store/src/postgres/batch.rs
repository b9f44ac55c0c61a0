//! Appends to one stream are committed in batches: while one write to a stream is in
//! flight, the appends that arrive for it wait and go together into the next one (one
//! statement, one commit, one fsync, for all of them) — the PostgreSQL counterpart of the
//! RocksDB writer's group commit. Different streams commit in parallel.
//!
//! A write is one INSERT in one round trip, planned on the tip this replica knows. The
//! schema's keys keep it right when another replica wrote meanwhile: seqs are dense and
//! unique per stream, ids unique per stream, so a stale plan collides, writes nothing, and
//! is made again on what the stream holds now.

use super::schema;
use crate::error::StoreError;
use crate::plan::StreamPlan;
use crate::storage::{AppendOutcome, Notice};
use crate::stream::{NewEntry, StreamId};
use fedsx_pg::tokio_postgres::error::SqlState;
use fedsx_pg::tokio_postgres::types::ToSql;
use fedsx_pg::{Database, GroupCommit, GroupWriter};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Appends accepted but not yet answered, over all streams: callers past it wait.
const MAX_PENDING: usize = 4096;
/// Most appends committed in one transaction.
const MAX_GROUP: usize = 256;
/// Streams whose tip a replica keeps in memory.
const MAX_TIPS: usize = 100_000;
/// Writes of one group before it gives up on a stream other replicas keep writing.
const MAX_ATTEMPTS: usize = 8;
/// After a collision with another replica's write, the longest pause before reading the
/// stream again: a random pause up to 2 ms, doubling with each collision up to this, so
/// two replicas writing one stream hard stop colliding in step.
const MAX_COLLISION_PAUSE: std::time::Duration = std::time::Duration::from_millis(32);
/// Of the pool's connections, the share that appends go through, several pipelined on
/// each (see `fedsx_pg::SharedClients`); reads take connections of their own.
const SHARED_PART: usize = 4;

pub(super) struct Job {
    pub entries: Vec<NewEntry>,
    pub expected_tip: Option<u64>,
}

pub(super) type Batcher = GroupCommit<StreamId, Job, StreamWriter>;

pub(super) fn batcher(
    database: Arc<Database>,
    notices: broadcast::Sender<Notice>,
    watches: Arc<super::watches::Watches>,
) -> Arc<Batcher> {
    let shared = fedsx_pg::SharedClients::new(database.pool.clone(), database.pool.status().max_size / SHARED_PART);
    let writer = StreamWriter {
        shared,
        database,
        notices,
        watches,
        tips: Tips::default(),
        metrics: crate::metrics::AppendMetrics::new(),
    };
    GroupCommit::new(writer, MAX_PENDING, MAX_GROUP)
}

pub(super) struct StreamWriter {
    /// What appends are written through: each write is one statement.
    shared: fedsx_pg::SharedClients,
    database: Arc<Database>,
    /// Wakes this process's subscribers at once (other replicas through the notifier, for
    /// the streams they watch).
    notices: broadcast::Sender<Notice>,
    watches: Arc<super::watches::Watches>,
    tips: Tips,
    metrics: crate::metrics::AppendMetrics,
}

impl GroupWriter<StreamId, Job> for StreamWriter {
    type Answer = Result<AppendOutcome, StoreError>;

    async fn write(&self, stream: &StreamId, jobs: Vec<Job>) -> Vec<Self::Answer> {
        let started = std::time::Instant::now();
        match self.commit(stream, &jobs).await {
            Ok((answers, entries, bytes)) => {
                if entries > 0 {
                    self.metrics.committed(jobs.len(), started.elapsed());
                    self.metrics.appended(entries, bytes);
                    let _ = self.notices.send(Notice::Appended(stream.clone()));
                    if self.watches.watched_elsewhere(stream) {
                        self.database
                            .notifier
                            .notify(format!("{}:{}", stream.kind().tag(), stream.actor()));
                    }
                }
                answers
            }
            Err(err) => {
                tracing::warn!(stream = %stream, error = %err, appends = jobs.len(), "append failed");
                jobs.iter().map(|_| Err(copy(&err))).collect()
            }
        }
    }
}

impl StreamWriter {
    /// Writes `jobs` in one statement, planned on the stream's tip as this replica last
    /// knew it (one round trip), or as read now when it knows none, its plan collided with
    /// what another replica wrote, or an expected tip disagreed with it. Answers each job,
    /// and the entries and bytes written.
    #[allow(clippy::type_complexity)]
    async fn commit(
        &self,
        stream: &StreamId,
        jobs: &[Job],
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64, u64), StoreError> {
        let client = self.shared.get().await?;
        let actor = stream.actor();
        let kind = i16::from(stream.kind().tag());
        let mut known = self.tips.get(stream);
        for attempt in 0..MAX_ATTEMPTS {
            let (tip, stored, fresh) = match known.take() {
                Some(tip) => (tip, HashMap::new(), false),
                None => {
                    let (tip, stored) = read_state(&client, actor, kind, jobs).await.inspect_err(|_| {
                        self.tips.forget(stream);
                    })?;
                    (tip, stored, true)
                }
            };
            let mut plan = StreamPlan::new(tip);
            let answers: Vec<_> = jobs
                .iter()
                .map(|job| plan.stage(&job.entries, job.expected_tip, |id| Ok(stored.get(id).copied())))
                .collect();
            let mismatch = answers
                .iter()
                .any(|answer| matches!(answer, Err(StoreError::TipMismatch { .. })));
            if !fresh && mismatch {
                // Only a tip just read may refuse an expected tip.
                continue;
            }
            if !plan.changed() {
                self.tips.remember(stream, tip);
                return Ok((answers, 0, 0));
            }
            match write(&client, actor, kind, plan.writes()).await {
                Ok(()) => {
                    self.tips.remember(stream, plan.tip());
                    let bytes = plan
                        .writes()
                        .iter()
                        .map(|(_, e)| (e.id.len() + e.data.len()) as u64)
                        .sum();
                    return Ok((answers, plan.writes().len() as u64, bytes));
                }
                Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    let pause = collision_pause(attempt);
                    tracing::debug!(stream = %stream, ?pause, "append collided with a write of another replica; reading the stream again");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => {
                    // Perhaps committed after all: the tip is unknown until read again.
                    self.tips.forget(stream);
                    return Err(err.into());
                }
            }
        }
        self.tips.forget(stream);
        Err(StoreError::Unavailable {
            reason: format!("stream {stream} is contended by other log-store replicas; try again"),
        })
    }
}

/// How long to pause after collision number `attempt` (from 0): random, up to 2 ms
/// doubled per collision, at most [`MAX_COLLISION_PAUSE`].
fn collision_pause(attempt: usize) -> std::time::Duration {
    use std::hash::BuildHasher;
    let ceiling = (2_000u64 << attempt.min(16)).min(MAX_COLLISION_PAUSE.as_micros() as u64);
    // A hasher seeded at random: a random number without a generator of our own.
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    std::time::Duration::from_micros(random % (ceiling + 1))
}

/// Inserts `writes` (seq, entry) into the stream in one statement, committed on its own.
async fn write(
    client: &fedsx_pg::Client,
    actor: &str,
    kind: i16,
    writes: &[(u64, NewEntry)],
) -> Result<(), fedsx_pg::tokio_postgres::Error> {
    if let [(seq, entry)] = writes {
        let statement = client.prepare_cached(schema::WRITE_ONE).await?;
        let params: [&(dyn ToSql + Sync); 5] = [&actor, &kind, &(*seq as i64), &&entry.id[..], &&entry.data[..]];
        client.execute(&statement, &params).await?;
        return Ok(());
    }
    let seqs: Vec<i64> = writes.iter().map(|(seq, _)| *seq as i64).collect();
    let ids: Vec<&[u8]> = writes.iter().map(|(_, e)| &e.id[..]).collect();
    let data: Vec<&[u8]> = writes.iter().map(|(_, e)| &e.data[..]).collect();
    let statement = client.prepare_cached(schema::WRITE).await?;
    let params: [&(dyn ToSql + Sync); 5] = [&actor, &kind, &seqs, &ids, &data];
    client.execute(&statement, &params).await?;
    Ok(())
}

/// The stream's committed tip and the seqs of those ids of `jobs` it holds.
async fn read_state(
    client: &fedsx_pg::Client,
    actor: &str,
    kind: i16,
    jobs: &[Job],
) -> Result<(u64, HashMap<Vec<u8>, u64>), StoreError> {
    let ids: Vec<&[u8]> = jobs
        .iter()
        .flat_map(|job| job.entries.iter().map(|e| &e.id[..]))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let statement = client.prepare_cached(schema::STATE).await?;
    let rows = client.query(&statement, &[&actor, &kind, &ids]).await?;
    let mut tip = 0;
    let mut stored = HashMap::new();
    for row in rows {
        let seq = row.get::<_, i64>(0) as u64;
        match row.get::<_, Option<Vec<u8>>>(1) {
            Some(id) => {
                stored.insert(id, seq);
            }
            None => tip = seq,
        }
    }
    Ok((tip, stored))
}

/// The tip this replica last committed or read, per stream: what the next append to the
/// stream is planned on without reading first. Bounded; a forgotten tip costs one read.
#[derive(Default)]
struct Tips(Mutex<HashMap<StreamId, u64>>);

impl Tips {
    fn get(&self, stream: &StreamId) -> Option<u64> {
        self.0.lock().expect("tips lock poisoned").get(stream).copied()
    }

    fn remember(&self, stream: &StreamId, tip: u64) {
        let mut tips = self.0.lock().expect("tips lock poisoned");
        if tips.len() >= MAX_TIPS && !tips.contains_key(stream) {
            tips.clear();
        }
        tips.insert(stream.clone(), tip);
    }

    fn forget(&self, stream: &StreamId) {
        self.0.lock().expect("tips lock poisoned").remove(stream);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collision_pauses_grow_to_their_ceiling_and_differ() {
        for attempt in 0..MAX_ATTEMPTS {
            let ceiling = std::time::Duration::from_micros(2_000 << attempt).min(MAX_COLLISION_PAUSE);
            let pauses: std::collections::BTreeSet<_> = (0..50).map(|_| collision_pause(attempt)).collect();
            assert!(
                pauses.iter().all(|p| *p <= ceiling),
                "attempt {attempt}: {pauses:?} over {ceiling:?}"
            );
            assert!(
                pauses.len() > 10,
                "attempt {attempt}: pauses are random, not {pauses:?}"
            );
        }
    }
}
