//! Sending NOTIFY off the commit path. A transaction that NOTIFYs holds PostgreSQL's global
//! notification lock through its commit, so notifying inside every append would make all
//! commits of the database take turns (one fsync each, no group commit). Instead the
//! committed work is announced afterwards, batched: one statement for everything that
//! committed meanwhile. Notifications are hints (readers poll too), so when the queue is
//! full or the database is away, a hint is dropped rather than waited for.

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

/// Hints waiting to be sent; past it they are dropped.
const QUEUE: usize = 8192;
/// Payloads sent in one statement at most.
const BATCH: usize = 512;
/// How long the first hint of a batch waits for others. Each NOTIFY is a transaction of
/// its own with a commit to flush, so under load this bounds them to a few hundred per
/// second instead of one per append.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Debug)]
pub struct Notifier {
    sender: mpsc::Sender<String>,
    _task: AbortOnDropHandle<()>,
}

impl Notifier {
    /// Sends the payloads given to [`Notifier::notify`] on `channel`, through `pool`.
    pub fn spawn(pool: Pool, channel: &'static str) -> Notifier {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let task = AbortOnDropHandle::new(tokio::spawn(send(pool, channel, receiver)));
        Notifier { sender, _task: task }
    }

    /// Queues one notification (dropped when the queue is full).
    pub fn notify(&self, payload: String) {
        let _ = self.sender.try_send(payload);
    }
}

async fn send(pool: Pool, channel: &'static str, mut receiver: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        tokio::time::sleep(LINGER).await;
        while batch.len() < BATCH && receiver.try_recv().map(|p| batch.push(p)).is_ok() {}
        batch.sort_unstable();
        batch.dedup();
        let joined = join(&batch);
        let sent = async {
            let client = pool.get().await.ok()?;
            let statement = client
                .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .await
                .ok()?;
            client.execute(&statement, &[&channel, &joined]).await.ok()
        };
        if sent.await.is_none() {
            tracing::debug!(channel, dropped = batch.len(), "notifications not sent; readers poll");
        }
        batch.clear();
    }
}

/// Largest notification payload sent (PostgreSQL refuses 8,000 bytes and more).
const MAX_PAYLOAD: usize = 7_900;

/// Packs hints into as few notifications as fit: each a line, `\` and newlines escaped. A
/// hint too long for any notification becomes an empty line: "something changed".
pub(crate) fn join(hints: &[String]) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    let mut lines = 0;
    for hint in hints {
        let mut line = hint.replace('\\', "\\\\").replace('\n', "\\n");
        if line.len() >= MAX_PAYLOAD {
            line.clear();
        }
        if lines > 0 && current.len() + 1 + line.len() > MAX_PAYLOAD {
            joined.push(std::mem::take(&mut current));
            lines = 0;
        }
        if lines > 0 {
            current.push('\n');
        }
        current.push_str(&line);
        lines += 1;
    }
    if lines > 0 {
        joined.push(current);
    }
    joined
}

/// The hints of one notification; `None` for "something changed" (a hint that did not
/// fit).
pub(crate) fn split(payload: &str) -> impl Iterator<Item = Option<String>> + '_ {
    payload.split('\n').map(|line| {
        if line.is_empty() {
            return None;
        }
        let mut hint = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next() {
                    Some('n') => hint.push('\n'),
                    Some(other) => hint.push(other),
                    None => {}
                },
                (c, false) => hint.push(c),
            }
        }
        Some(hint)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_survive_packing_whatever_they_hold() {
        let hints: Vec<String> = ["", "1:alice", "2:a\\b", "1:line\nbreak", "", "x".repeat(300).as_str()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let joined = join(&hints);
        assert_eq!(joined.len(), 1);
        let back: Vec<Option<String>> = joined.iter().flat_map(|p| split(p)).collect();
        let mut expected: Vec<Option<String>> = hints.iter().cloned().map(Some).collect();
        // An empty hint reads as "something changed", which covers it.
        expected[0] = None;
        expected[4] = None;
        assert_eq!(back, expected);
    }

    #[test]
    fn many_hints_fill_several_notifications_and_an_oversized_one_says_something_changed() {
        let hints: Vec<String> = (0..1000).map(|i| format!("2:actor-number-{i}")).collect();
        let joined = join(&hints);
        assert!(joined.len() > 1 && joined.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: Vec<String> = joined.iter().flat_map(|p| split(p)).map(Option::unwrap).collect();
        assert_eq!(back, hints);
        let huge = join(&["y".repeat(9000)]);
        assert_eq!(huge.iter().flat_map(|p| split(p)).collect::<Vec<_>>(), [None]);
    }
}
