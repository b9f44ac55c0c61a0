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

/// Where the engine's notices come from: a fresh receiver each call.
type Source = Box<dyn Fn() -> broadcast::Receiver<Notice> + Send + Sync>;

/// A wake-up counter per watched stream (an entry lives while a waiter holds it), and the
/// task handing out notices while there is a waiter at all — with none, appends wake
/// nothing.
#[derive(Default)]
struct Watched {
    streams: HashMap<StreamId, watch::Sender<u64>>,
    dispatcher: Option<tokio::task::AbortHandle>,
}

struct Shared {
    source: Source,
    watched: Mutex<Watched>,
}

#[derive(Clone)]
pub(crate) struct Waiters {
    shared: Arc<Shared>,
}

/// One subscription's wake-ups for its stream: `woken` returns once the stream may have
/// grown since the waiter was made or last woken.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    stream: StreamId,
    woken: watch::Receiver<u64>,
}

impl Waiters {
    pub(crate) fn new(source: impl Fn() -> broadcast::Receiver<Notice> + Send + Sync + 'static) -> Waiters {
        Waiters {
            shared: Arc::new(Shared {
                source: Box::new(source),
                watched: Mutex::default(),
            }),
        }
    }

    /// A waiter for `stream`: appends after this call wake it. Make it before reading the
    /// stream, so an append between the read and the wait is not missed.
    pub(crate) fn waiter(&self, stream: &StreamId) -> Waiter {
        let mut watched = self.shared.lock();
        if watched.dispatcher.is_none() {
            // Listening starts now, before this waiter's first read.
            let notices = (self.shared.source)();
            let dispatcher = tokio::spawn(dispatch(Arc::downgrade(&self.shared), notices));
            watched.dispatcher = Some(dispatcher.abort_handle());
        }
        let woken = watched
            .streams
            .entry(stream.clone())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        Waiter {
            shared: self.shared.clone(),
            stream: stream.clone(),
            woken,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().expect("waiters lock poisoned")
    }
}

/// Hands out `notices` to the waiters of the streams they name (all of them when notices
/// may have been missed); when they close, every wait ends.
async fn dispatch(shared: std::sync::Weak<Shared>, mut notices: broadcast::Receiver<Notice>) {
    loop {
        let notice = notices.recv().await;
        let Some(shared) = shared.upgrade() else { return };
        let mut watched = shared.lock();
        match notice {
            Ok(Notice::Appended(stream)) => {
                if let Some(sender) = watched.streams.get(&stream) {
                    sender.send_modify(|n| *n += 1);
                }
            }
            // The notice of some waiter's stream may have been missed: all read again.
            Ok(Notice::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                watched
                    .streams
                    .values()
                    .for_each(|sender| sender.send_modify(|n| *n += 1));
            }
            Err(broadcast::error::RecvError::Closed) => {
                // Dropping the counters ends every wait.
                watched.streams.clear();
                watched.dispatcher = None;
                return;
            }
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
        let mut watched = self.shared.lock();
        // The last waiter of the stream removes its counter (this receiver still counts).
        if watched
            .streams
            .get(&self.stream)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            watched.streams.remove(&self.stream);
        }
        if watched.streams.is_empty()
            && let Some(dispatcher) = watched.dispatcher.take()
        {
            dispatcher.abort();
        }
    }
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
        let (notices, template) = broadcast::channel(16);
        // Holding no sender, so dropping `notices` ends them.
        let waiters = Waiters::new(move || template.resubscribe());
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
        let (notices, _) = broadcast::channel(16);
        let source = notices.clone();
        let waiters = Waiters::new(move || source.subscribe());
        assert_eq!(notices.receiver_count(), 0, "nobody listens while nobody waits");
        let mut first = waiters.waiter(&stream("alice"));
        let second = waiters.waiter(&stream("alice"));
        notices.send(Notice::Appended(stream("alice"))).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Woken although it was not waiting yet when the notice came.
        assert_eq!(woken_soon(&mut first).await, Some(true));
        drop(second);
        assert_eq!(waiters.shared.lock().streams.len(), 1, "alice still has a waiter");
        drop(first);
        assert!(waiters.shared.lock().streams.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(notices.receiver_count(), 0, "with the last waiter gone, nobody listens");
    }
}
