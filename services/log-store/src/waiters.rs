//! Wakes the subscriptions waiting on a stream when it grows. One task reads the engine's
//! notices and wakes only the waiters of the stream a notice names (every waiter when
//! notices may have been missed), so a waiting subscription costs nothing while other
//! streams grow — a kernel follows one journal per partition, and each would otherwise be
//! woken by every append of the node.

use crate::storage::Notice;
use crate::stream::StreamId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// A wake-up counter per watched stream; an entry lives while a waiter holds it.
type Streams = Mutex<HashMap<StreamId, watch::Sender<u64>>>;

#[derive(Clone, Default)]
pub(crate) struct Waiters {
    streams: Arc<Streams>,
}

/// One subscription's wake-ups for its stream: `woken` returns once the stream may have
/// grown since the waiter was made or last woken.
pub(crate) struct Waiter {
    streams: Arc<Streams>,
    stream: StreamId,
    woken: watch::Receiver<u64>,
}

impl Waiters {
    /// Starts the task that hands out `notices`; it ends when they close, and then every
    /// waiter is told so.
    pub(crate) fn spawn(mut notices: broadcast::Receiver<Notice>) -> Waiters {
        let waiters = Waiters::default();
        let streams = waiters.streams.clone();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(Notice::Appended(stream)) => {
                        if let Some(sender) = lock(&streams).get(&stream) {
                            sender.send_modify(|n| *n += 1);
                        }
                    }
                    // The notice of some waiter's stream may have been missed: all read again.
                    Ok(Notice::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        lock(&streams)
                            .values()
                            .for_each(|sender| sender.send_modify(|n| *n += 1));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // Dropping the counters ends every wait.
                        lock(&streams).clear();
                        return;
                    }
                }
            }
        });
        waiters
    }

    /// A waiter for `stream`: appends after this call wake it. Make it before reading the
    /// stream, so an append between the read and the wait is not missed.
    pub(crate) fn waiter(&self, stream: &StreamId) -> Waiter {
        let woken = lock(&self.streams)
            .entry(stream.clone())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        Waiter {
            streams: self.streams.clone(),
            stream: stream.clone(),
            woken,
        }
    }
}

impl Waiter {
    /// Waits until the stream may have grown; false once no more wake-ups can come (the
    /// engine's notices ended).
    pub(crate) async fn woken(&mut self) -> bool {
        self.woken.changed().await.is_ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut streams = lock(&self.streams);
        // The last waiter of the stream removes its counter (this receiver still counts).
        if streams
            .get(&self.stream)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            streams.remove(&self.stream);
        }
    }
}

fn lock(streams: &Streams) -> std::sync::MutexGuard<'_, HashMap<StreamId, watch::Sender<u64>>> {
    streams.lock().expect("waiters lock poisoned")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Kind;
    use std::time::Duration;

    fn stream(actor: &str) -> StreamId {
        StreamId::new(actor, Kind::Inbox).unwrap()
    }

    async fn woken_soon(waiter: &mut Waiter) -> Option<bool> {
        tokio::time::timeout(Duration::from_millis(200), waiter.woken())
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_waiter_is_woken_by_its_stream_only_and_by_a_lost_notice() {
        let (notices, receiver) = broadcast::channel(16);
        let waiters = Waiters::spawn(receiver);
        let mut alice = waiters.waiter(&stream("alice"));
        let mut bob = waiters.waiter(&stream("bob"));
        notices.send(Notice::Appended(stream("alice"))).unwrap();
        assert_eq!(woken_soon(&mut alice).await, Some(true));
        assert_eq!(woken_soon(&mut bob).await, None, "bob's stream did not grow");
        notices.send(Notice::Unknown).unwrap();
        assert_eq!(woken_soon(&mut alice).await, Some(true));
        assert_eq!(woken_soon(&mut bob).await, Some(true));
        drop(notices);
        assert_eq!(woken_soon(&mut alice).await, Some(false), "notices ended");
    }

    #[tokio::test]
    async fn an_append_before_the_wait_wakes_and_counters_go_with_their_last_waiter() {
        let (notices, receiver) = broadcast::channel(16);
        let waiters = Waiters::spawn(receiver);
        let mut first = waiters.waiter(&stream("alice"));
        let second = waiters.waiter(&stream("alice"));
        notices.send(Notice::Appended(stream("alice"))).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Woken although it was not waiting yet when the notice came.
        assert_eq!(woken_soon(&mut first).await, Some(true));
        drop(second);
        assert_eq!(lock(&waiters.streams).len(), 1, "alice still has a waiter");
        drop(first);
        assert!(lock(&waiters.streams).is_empty());
    }
}
