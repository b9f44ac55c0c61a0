//! Sending NOTIFY off the commit path. A transaction that NOTIFYs holds PostgreSQL's global
//! notification lock through its commit, so notifying inside every append would make all
//! commits of the database take turns (one fsync each, no group commit). Instead the
//! committed work is announced afterwards, batched: one statement for everything that
//! committed meanwhile. Notifications are hints (readers poll too), so when the queue is
//! full or the database is away, a hint is dropped rather than waited for.

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Hints waiting to be sent; past it they are dropped.
const QUEUE: usize = 8192;
/// Payloads sent in one statement at most.
const BATCH: usize = 512;

#[derive(Debug)]
pub struct Notifier {
    sender: mpsc::Sender<String>,
    task: JoinHandle<()>,
}

impl Notifier {
    /// Sends the payloads given to [`Notifier::notify`] on `channel`, through `pool`.
    pub fn spawn(pool: Pool, channel: &'static str) -> Notifier {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let task = tokio::spawn(send(pool, channel, receiver));
        Notifier { sender, task }
    }

    /// Queues one notification (dropped when the queue is full).
    pub fn notify(&self, payload: String) {
        let _ = self.sender.try_send(payload);
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send(pool: Pool, channel: &'static str, mut receiver: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        batch.sort_unstable();
        batch.dedup();
        let sent = async {
            let client = pool.get().await.ok()?;
            client
                .execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    &[&channel, &batch],
                )
                .await
                .ok()
        };
        if sent.await.is_none() {
            tracing::debug!(channel, dropped = batch.len(), "notifications not sent; readers poll");
        }
        batch.clear();
    }
}
