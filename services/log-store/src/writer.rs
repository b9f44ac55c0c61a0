//! The single writer: takes append jobs from a channel, assigns seqs, and commits every job
//! that arrived meanwhile in one synced WriteBatch (group commit). Being the only writer is
//! what makes seqs gap-free and per-stream order hold under any concurrency.

use crate::error::StoreError;
use crate::keys::{self, CF_ENTRIES, CF_IDS, CF_TIPS};
use crate::store::{AppendOutcome, Appended, read_tip};
use crate::stream::NewEntry;
use rocksdb::{DB, WriteBatch, WriteOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Jobs waiting for the writer; senders wait when it is full (back-pressure).
const QUEUE_DEPTH: usize = 4096;
/// Most jobs committed in one batch.
const MAX_GROUP: usize = 1024;

/// Where the answer to one append goes.
pub(crate) type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

pub(crate) struct AppendJob {
    pub stream_key: Vec<u8>,
    pub entries: Vec<NewEntry>,
    pub expected_tip: Option<u64>,
    pub reply: Reply,
}

pub(crate) struct WriterHandle {
    sender: mpsc::Sender<AppendJob>,
    thread: JoinHandle<()>,
}

impl WriterHandle {
    pub fn sender(&self) -> mpsc::Sender<AppendJob> {
        self.sender.clone()
    }

    /// Closes the queue and waits until every job already queued is committed or answered.
    pub fn stop(self) {
        drop(self.sender);
        if self.thread.join().is_err() {
            tracing::error!("log-store writer thread panicked");
        }
    }
}

pub(crate) fn spawn(db: Arc<DB>, appended: broadcast::Sender<Vec<u8>>) -> std::io::Result<WriterHandle> {
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
    let thread = std::thread::Builder::new()
        .name("log-store-writer".into())
        .spawn(move || {
            Writer {
                db,
                metrics: WriterMetrics::new(),
                tips: HashMap::new(),
                appended,
            }
            .run(receiver)
        })?;
    Ok(WriterHandle { sender, thread })
}

/// What the writer reports: appends and bytes durably written, group sizes, sync latency.
struct WriterMetrics {
    entries: fedsx_runtime::metrics::Counter<u64>,
    bytes: fedsx_runtime::metrics::Counter<u64>,
    group_size: fedsx_runtime::metrics::Histogram<u64>,
    sync: fedsx_runtime::metrics::Histogram<f64>,
}

impl WriterMetrics {
    fn new() -> WriterMetrics {
        let meter = fedsx_runtime::metrics::meter();
        WriterMetrics {
            entries: meter
                .u64_counter("fedsx.log_store.appends")
                .with_description("Entries durably appended (retries of stored entries not counted)")
                .build(),
            bytes: meter
                .u64_counter("fedsx.log_store.appended")
                .with_unit("By")
                .with_description("Entry bytes (id and data) durably appended")
                .build(),
            group_size: meter
                .u64_histogram("fedsx.log_store.group_commit.size")
                .with_description("Append requests committed together in one synced write batch")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
                .build(),
            sync: meter
                .f64_histogram("fedsx.log_store.sync.duration")
                .with_unit("s")
                .with_description("Time of one synced RocksDB write batch (a group commit)")
                .with_boundaries(fedsx_runtime::metrics::LATENCY_BUCKETS.to_vec())
                .build(),
        }
    }
}

struct Writer {
    db: Arc<DB>,
    metrics: WriterMetrics,
    /// Committed tips of streams seen since start (loaded from disk on first use).
    tips: HashMap<Vec<u8>, u64>,
    appended: broadcast::Sender<Vec<u8>>,
}

/// What one group has staged but not yet committed.
#[derive(Default)]
struct Group {
    batch: WriteBatch,
    tips: HashMap<Vec<u8>, u64>,
    ids: HashMap<Vec<u8>, u64>,
    answers: Vec<(Reply, Result<AppendOutcome, StoreError>)>,
    /// Entries and bytes staged.
    entries: u64,
    bytes: u64,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<AppendJob>) {
        let mut jobs = Vec::with_capacity(MAX_GROUP);
        while receiver.blocking_recv_many(&mut jobs, MAX_GROUP) > 0 {
            self.commit_group(jobs.drain(..));
        }
    }

    fn commit_group(&mut self, jobs: impl Iterator<Item = AppendJob>) {
        let mut group = Group::default();
        for job in jobs {
            let answer = self.stage(&mut group, &job);
            group.answers.push((job.reply, answer));
        }
        let written = if group.batch.is_empty() {
            Ok(())
        } else {
            let mut options = WriteOptions::default();
            options.set_sync(true);
            let started = std::time::Instant::now();
            let written = self.db.write_opt(group.batch, &options);
            self.metrics.sync.record(started.elapsed().as_secs_f64(), &[]);
            self.metrics.group_size.record(group.answers.len() as u64, &[]);
            written
        };
        match written {
            Ok(()) => {
                self.metrics.entries.add(group.entries, &[]);
                self.metrics.bytes.add(group.bytes, &[]);
                for (stream_key, tip) in group.tips {
                    self.tips.insert(stream_key.clone(), tip);
                    // Nobody subscribed is fine.
                    let _ = self.appended.send(stream_key);
                }
                for (reply, answer) in group.answers {
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "synced write failed; the group is not acknowledged");
                let message = err.into_string();
                for (reply, answer) in group.answers {
                    let answer = answer.and(Err(StoreError::Storage(message.clone())));
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// Assigns seqs to one job's entries and stages its writes into the group's batch, or
    /// answers it without staging anything.
    fn stage(&mut self, group: &mut Group, job: &AppendJob) -> Result<AppendOutcome, StoreError> {
        let stream = &job.stream_key;
        let tip = self.tip(group, stream)?;
        let mut next = tip;
        let mut results = Vec::with_capacity(job.entries.len());
        let mut fresh: HashMap<Vec<u8>, u64> = HashMap::new();
        for entry in &job.entries {
            let id_key = keys::id_key(stream, &entry.id);
            let existing = match fresh.get(&id_key).or_else(|| group.ids.get(&id_key)) {
                Some(seq) => Some(*seq),
                None => self.stored_seq(&id_key)?,
            };
            match existing {
                Some(seq) => results.push(Appended { seq, appended: false }),
                None => {
                    next += 1;
                    fresh.insert(id_key, next);
                    results.push(Appended {
                        seq: next,
                        appended: true,
                    });
                }
            }
        }
        if fresh.is_empty() {
            // A pure retry: every entry is already there, whatever tip the caller expected.
            return Ok(AppendOutcome { entries: results, tip });
        }
        if let Some(expected) = job.expected_tip
            && expected != tip
        {
            return Err(StoreError::TipMismatch { expected, tip });
        }

        let entries_cf = self.db.cf_handle(CF_ENTRIES).expect("entries column family opened");
        let ids_cf = self.db.cf_handle(CF_IDS).expect("ids column family opened");
        let tips_cf = self.db.cf_handle(CF_TIPS).expect("tips column family opened");
        for (entry, result) in job.entries.iter().zip(&results) {
            if result.appended {
                group.entries += 1;
                group.bytes += (entry.id.len() + entry.data.len()) as u64;
                group.batch.put_cf(
                    entries_cf,
                    keys::entry_key(stream, result.seq),
                    keys::encode_entry(&entry.id, &entry.data),
                );
                group
                    .batch
                    .put_cf(ids_cf, keys::id_key(stream, &entry.id), keys::encode_u64(result.seq));
            }
        }
        group.batch.put_cf(tips_cf, stream, keys::encode_u64(next));
        group.tips.insert(stream.clone(), next);
        group.ids.extend(fresh);
        Ok(AppendOutcome {
            entries: results,
            tip: next,
        })
    }

    /// The stream's tip as of everything staged so far in this group.
    fn tip(&mut self, group: &Group, stream: &[u8]) -> Result<u64, StoreError> {
        if let Some(tip) = group.tips.get(stream).or_else(|| self.tips.get(stream)) {
            return Ok(*tip);
        }
        let tip = read_tip(&self.db, stream, None)?;
        self.tips.insert(stream.to_vec(), tip);
        Ok(tip)
    }

    fn stored_seq(&self, id_key: &[u8]) -> Result<Option<u64>, StoreError> {
        let ids_cf = self.db.cf_handle(CF_IDS).expect("ids column family opened");
        self.db
            .get_pinned_cf(ids_cf, id_key)?
            .map(|bytes| keys::decode_u64(&bytes))
            .transpose()
    }
}
