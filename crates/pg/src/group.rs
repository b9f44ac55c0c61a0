//! Group commit per key: while one write for a key (a stream, a destination) is in flight,
//! the jobs that arrive for the same key wait and go together into the next write — one
//! statement, one commit, one fsync for all of them. Different keys write in parallel, and
//! no write spans two keys, so a table distributed by the key never needs a transaction
//! across shards.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Writes one key's group of jobs; answers each job, in the order given.
pub trait GroupWriter<K, J>: Send + Sync + 'static {
    type Answer: Send + 'static;

    /// Must answer exactly one per job (a failed write answers every job with it).
    fn write(&self, key: &K, jobs: Vec<J>) -> impl Future<Output = Vec<Self::Answer>> + Send;
}

/// Submitted after [`GroupCommit::close`], or dropped unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no longer taking writes")]
pub struct Closed;

struct Waiting<J, A> {
    job: J,
    reply: oneshot::Sender<A>,
    _permit: OwnedSemaphorePermit,
}

/// The jobs waiting per key.
type Queues<K, J, A> = Mutex<HashMap<K, Vec<Waiting<J, A>>>>;

pub struct GroupCommit<K, J, W: GroupWriter<K, J>> {
    writer: W,
    queues: Queues<K, J, W::Answer>,
    permits: Arc<Semaphore>,
    max_pending: usize,
    max_group: usize,
}

impl<K, J, W> GroupCommit<K, J, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    J: Send + 'static,
    W: GroupWriter<K, J>,
{
    /// At most `max_pending` jobs accepted and unanswered over all keys (submitters past it
    /// wait), and `max_group` jobs in one write.
    pub fn new(writer: W, max_pending: usize, max_group: usize) -> Arc<Self> {
        Arc::new(GroupCommit {
            writer,
            queues: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            max_group: max_group.max(1),
        })
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// Writes `job` with whatever else waits for `key`; answers once its write is done.
    pub async fn submit(self: &Arc<Self>, key: K, job: J) -> Result<W::Answer, Closed> {
        let (first, answer) = self.queue(&key, job).await?;
        if first {
            // The first job of an idle key is written by its own caller, alone: no task to
            // start and no wake-up to wait for in the common case of a quiet stream. Jobs
            // that queued meanwhile are drained by a task, which also takes over should
            // this caller go away mid-write (only its own job is in that write).
            let takeover = Takeover {
                group: Some(self.clone()),
                key: key.clone(),
            };
            self.write_group(&key, 1).await;
            takeover.finish();
        }
        answer.await.map_err(|_| Closed)
    }

    /// Writes `jobs` (for any keys) with whatever else waits for their keys; answers once
    /// all their writes are done, in the order given. Jobs for one key are queued in the
    /// order given, so they are written in that order.
    pub async fn submit_all(self: &Arc<Self>, jobs: Vec<(K, J)>) -> Result<Vec<W::Answer>, Closed> {
        let mut answers = Vec::with_capacity(jobs.len());
        for (key, job) in jobs {
            // One at a time, so a batch larger than `max_pending` waits for its own first
            // writes (drained by tasks) instead of for itself.
            let (idle, answer) = self.queue(&key, job).await?;
            if idle {
                tokio::spawn(self.clone().drain(key));
            }
            answers.push(answer);
        }
        let mut answered = Vec::with_capacity(answers.len());
        for answer in answers {
            answered.push(answer.await.map_err(|_| Closed)?);
        }
        Ok(answered)
    }

    /// Queues `job` for `key` once a pending slot is free: whether the key was idle (no
    /// write of it in flight or waiting: the caller must see it written), and where its
    /// answer comes.
    async fn queue(&self, key: &K, job: J) -> Result<(bool, oneshot::Receiver<W::Answer>), Closed> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| Closed)?;
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            job,
            reply,
            _permit: permit,
        };
        let mut queues = self.queues.lock().expect("group lock poisoned");
        let idle = match queues.get_mut(key) {
            Some(queue) => {
                queue.push(waiting);
                false
            }
            None => {
                queues.insert(key.clone(), vec![waiting]);
                true
            }
        };
        Ok((idle, answer))
    }

    /// Jobs accepted and not yet answered.
    pub fn pending(&self) -> usize {
        self.max_pending - self.permits.available_permits()
    }

    /// Refuses jobs from now on; waits up to `patience` for those taken to be written and
    /// answered.
    pub async fn close(&self, patience: std::time::Duration) {
        self.permits.close();
        let deadline = tokio::time::Instant::now() + patience;
        while self.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Writes the key's waiting jobs, a group at a time, until none are left.
    async fn drain(self: Arc<Self>, key: K) {
        while self.write_group(&key, self.max_group).await {}
    }

    /// Writes up to `max` of the key's waiting jobs as one group and answers them; false
    /// (and the key forgotten) when none wait.
    async fn write_group(&self, key: &K, max: usize) -> bool {
        let group: Vec<Waiting<J, W::Answer>> = {
            let mut queues = self.queues.lock().expect("group lock poisoned");
            let Some(queue) = queues.get_mut(key) else { return false };
            if queue.is_empty() {
                queues.remove(key);
                return false;
            }
            let n = queue.len().min(max);
            queue.drain(..n).collect()
        };
        let mut replies = Vec::with_capacity(group.len());
        let mut jobs = Vec::with_capacity(group.len());
        for waiting in group {
            jobs.push(waiting.job);
            replies.push((waiting.reply, waiting._permit));
        }
        let expected = jobs.len();
        let answers = self.writer.write(key, jobs).await;
        debug_assert_eq!(answers.len(), expected, "a writer answers every job");
        // A job left without an answer sees its sender dropped: `Closed`.
        for ((reply, _permit), answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
        true
    }
}

/// After a key's first job was written by its caller: the key is forgotten when nothing
/// else queued, else its drain goes on in a task — also when the caller was dropped before
/// its write finished.
struct Takeover<K, J, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    J: Send + 'static,
    W: GroupWriter<K, J>,
{
    group: Option<Arc<GroupCommit<K, J, W>>>,
    key: K,
}

impl<K, J, W> Takeover<K, J, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    J: Send + 'static,
    W: GroupWriter<K, J>,
{
    fn finish(mut self) {
        let Some(group) = self.group.take() else { return };
        {
            let mut queues = group.queues.lock().expect("group lock poisoned");
            if queues.get(&self.key).is_none_or(Vec::is_empty) {
                queues.remove(&self.key);
                return;
            }
        }
        tokio::spawn(group.drain(self.key.clone()));
    }
}

impl<K, J, W> Drop for Takeover<K, J, W>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    J: Send + 'static,
    W: GroupWriter<K, J>,
{
    fn drop(&mut self) {
        if let Some(group) = self.group.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(group.drain(self.key.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Records the groups it was given; answers each job with (group number, job).
    #[derive(Default)]
    struct Recorder {
        groups: Mutex<Vec<(u32, Vec<u32>)>>,
        writing: AtomicUsize,
    }

    impl GroupWriter<u32, u32> for Recorder {
        type Answer = (usize, u32);

        async fn write(&self, key: &u32, jobs: Vec<u32>) -> Vec<(usize, u32)> {
            assert_eq!(
                self.writing.fetch_add(1, Ordering::SeqCst),
                0,
                "one write at a time here"
            );
            // Also when the write is dropped (its caller cancelled).
            struct Done<'a>(&'a AtomicUsize);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let done = Done(&self.writing);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(done);
            let mut groups = self.groups.lock().unwrap();
            groups.push((*key, jobs.clone()));
            let n = groups.len();
            jobs.into_iter().map(|job| (n, job)).collect()
        }
    }

    #[tokio::test]
    async fn jobs_arriving_during_a_write_go_together_into_the_next_in_order() {
        let group = GroupCommit::new(Recorder::default(), 100, 3);
        let mut answers = Vec::new();
        for job in 0..7u32 {
            let group = group.clone();
            answers.push(tokio::spawn(async move { group.submit(1, job).await }));
            tokio::task::yield_now().await;
        }
        let mut got = Vec::new();
        for answer in answers {
            got.push(answer.await.unwrap().unwrap());
        }
        let groups = group.writer().groups.lock().unwrap().clone();
        assert_eq!(
            groups,
            [(1, vec![0]), (1, vec![1, 2, 3]), (1, vec![4, 5, 6])],
            "at most 3 per write"
        );
        assert_eq!(
            got.iter().map(|(_, job)| *job).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        assert_eq!(got[2], (2, 2), "each job is answered by its own group's write");
        assert_eq!(group.pending(), 0);
        group.close(Duration::from_secs(1)).await;
        assert_eq!(group.submit(1, 9).await, Err(Closed));
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_pending_limit_is_written_in_order() {
        let group = GroupCommit::new(Recorder::default(), 4, 3);
        let answers = group
            .submit_all((0..10u32).map(|job| (1, job)).collect())
            .await
            .unwrap();
        assert_eq!(
            answers.iter().map(|(_, job)| *job).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>(),
            "answered in the order given"
        );
        let groups = group.writer().groups.lock().unwrap().clone();
        let written: Vec<u32> = groups.iter().flat_map(|(_, jobs)| jobs.clone()).collect();
        assert_eq!(written, (0..10).collect::<Vec<_>>(), "written in the order given");
        assert!(groups.iter().all(|(_, jobs)| jobs.len() <= 3));
        assert_eq!(group.pending(), 0);
    }

    #[tokio::test]
    async fn jobs_queued_behind_a_cancelled_caller_are_still_written() {
        let group = GroupCommit::new(Recorder::default(), 100, 8);
        let first = {
            let group = group.clone();
            tokio::spawn(async move { group.submit(1, 0).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let queued: Vec<_> = (1..4u32)
            .map(|job| {
                let group = group.clone();
                tokio::spawn(async move { group.submit(1, job).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        first.abort();
        for answer in queued {
            let (_, job) = answer.await.unwrap().unwrap();
            assert!((1..4).contains(&job));
        }
        let groups = group.writer().groups.lock().unwrap().clone();
        assert_eq!(groups, [(1, vec![1, 2, 3])], "the cancelled write never finished");
        assert_eq!(group.pending(), 0);
    }
}
