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
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| Closed)?;
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            job,
            reply,
            _permit: permit,
        };
        let first = {
            let mut queues = self.queues.lock().expect("group lock poisoned");
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push(waiting);
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![waiting]);
                    true
                }
            }
        };
        if first {
            tokio::spawn(self.clone().drain(key));
        }
        answer.await.map_err(|_| Closed)
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
        loop {
            let group: Vec<Waiting<J, W::Answer>> = {
                let mut queues = self.queues.lock().expect("group lock poisoned");
                let Some(queue) = queues.get_mut(&key) else { return };
                if queue.is_empty() {
                    queues.remove(&key);
                    return;
                }
                let n = queue.len().min(self.max_group);
                queue.drain(..n).collect()
            };
            let mut replies = Vec::with_capacity(group.len());
            let mut jobs = Vec::with_capacity(group.len());
            for waiting in group {
                jobs.push(waiting.job);
                replies.push((waiting.reply, waiting._permit));
            }
            let expected = jobs.len();
            let answers = self.writer.write(&key, jobs).await;
            debug_assert_eq!(answers.len(), expected, "a writer answers every job");
            // A job left without an answer sees its sender dropped: `Closed`.
            for ((reply, _permit), answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
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
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.writing.fetch_sub(1, Ordering::SeqCst);
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
}
