//! The single writer: takes append jobs from a channel, stages every job that arrived
//! meanwhile (per stream, with [`StreamPlan`]) and commits them in one synced WriteBatch
//! (group commit). Being the only writer is what makes seqs gap-free and per-stream order
//! hold under any concurrency.

use super::keys::{self, CF_ENTRIES, CF_IDS, CF_TIPS};
use super::read_tip;
use crate::error::StoreError;
use crate::plan::StreamPlan;
use crate::storage::{AppendOutcome, Notice};
use crate::stream::{NewEntry, StreamId};
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
    pub stream: StreamId,
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

pub(crate) fn spawn(db: Arc<DB>, notices: broadcast::Sender<Notice>) -> std::io::Result<WriterHandle> {
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
    let thread = std::thread::Builder::new()
        .name("log-store-writer".into())
        .spawn(move || {
            Writer {
                db,
                metrics: crate::metrics::AppendMetrics::new(),
                tips: HashMap::new(),
                notices,
            }
            .run(receiver)
        })?;
    Ok(WriterHandle { sender, thread })
}

struct Writer {
    db: Arc<DB>,
    metrics: crate::metrics::AppendMetrics,
    /// Committed tips of streams seen since start (loaded from disk on first use).
    tips: HashMap<Vec<u8>, u64>,
    notices: broadcast::Sender<Notice>,
}

/// One stream's share of a group.
struct StreamGroup {
    stream: StreamId,
    jobs: Vec<AppendJob>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<AppendJob>) {
        let mut jobs = Vec::with_capacity(MAX_GROUP);
        while receiver.blocking_recv_many(&mut jobs, MAX_GROUP) > 0 {
            self.commit_group(jobs.drain(..));
        }
    }

    fn commit_group(&mut self, jobs: impl Iterator<Item = AppendJob>) {
        let mut streams: HashMap<Vec<u8>, StreamGroup> = HashMap::new();
        let mut requests = 0;
        for job in jobs {
            requests += 1;
            streams
                .entry(job.stream_key.clone())
                .or_insert_with(|| StreamGroup {
                    stream: job.stream.clone(),
                    jobs: Vec::new(),
                })
                .jobs
                .push(job);
        }
        let mut batch = WriteBatch::default();
        let mut answers = Vec::with_capacity(requests);
        let mut new_tips = Vec::new();
        let (mut entries, mut bytes) = (0, 0);
        for (stream_key, group) in streams {
            let plan = self.stage(&stream_key, group.jobs, &mut answers);
            let Some(plan) = plan else { continue };
            if !plan.changed() {
                continue;
            }
            let entries_cf = self.db.cf_handle(CF_ENTRIES).expect("entries column family opened");
            let ids_cf = self.db.cf_handle(CF_IDS).expect("ids column family opened");
            let tips_cf = self.db.cf_handle(CF_TIPS).expect("tips column family opened");
            for (seq, entry) in plan.writes() {
                entries += 1;
                bytes += (entry.id.len() + entry.data.len()) as u64;
                batch.put_cf(
                    entries_cf,
                    keys::entry_key(&stream_key, *seq),
                    keys::encode_entry(&entry.id, &entry.data),
                );
                batch.put_cf(ids_cf, keys::id_key(&stream_key, &entry.id), keys::encode_u64(*seq));
            }
            batch.put_cf(tips_cf, &stream_key, keys::encode_u64(plan.tip()));
            new_tips.push((stream_key, group.stream, plan.tip()));
        }
        let written = if batch.is_empty() {
            Ok(())
        } else {
            let mut options = WriteOptions::default();
            options.set_sync(true);
            let started = std::time::Instant::now();
            let written = self.db.write_opt(batch, &options);
            self.metrics.committed(requests, started.elapsed());
            written
        };
        match written {
            Ok(()) => {
                self.metrics.appended(entries, bytes);
                for (stream_key, stream, tip) in new_tips {
                    self.tips.insert(stream_key, tip);
                    // Nobody subscribed is fine.
                    let _ = self.notices.send(Notice::Appended(stream));
                }
                for (reply, answer) in answers {
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "synced write failed; the group is not acknowledged");
                let message = err.into_string();
                for (reply, answer) in answers {
                    let _ = reply.send(answer.and(Err(StoreError::internal(&message))));
                }
            }
        }
    }

    /// Stages one stream's jobs, pushing each job's answer; None when the stream's tip
    /// could not be read (every job answered with the error).
    fn stage(
        &mut self,
        stream_key: &[u8],
        jobs: Vec<AppendJob>,
        answers: &mut Vec<(Reply, Result<AppendOutcome, StoreError>)>,
    ) -> Option<StreamPlan> {
        let tip = match self.tip(stream_key) {
            Ok(tip) => tip,
            Err(err) => {
                let message = err.to_string();
                for job in jobs {
                    answers.push((job.reply, Err(StoreError::internal(&message))));
                }
                return None;
            }
        };
        let mut plan = StreamPlan::new(tip);
        for job in jobs {
            let answer = plan.stage(&job.entries, job.expected_tip, |id| {
                self.stored_seq(&keys::id_key(stream_key, id))
            });
            answers.push((job.reply, answer));
        }
        Some(plan)
    }

    /// The stream's committed tip.
    fn tip(&mut self, stream: &[u8]) -> Result<u64, StoreError> {
        if let Some(tip) = self.tips.get(stream) {
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
