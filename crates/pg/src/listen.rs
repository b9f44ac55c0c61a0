//! A dedicated connection that LISTENs on one channel and turns notifications into
//! wake-ups. Notifications are only hints: a reader woken by one reads from where it left
//! off, and after every (re)connect a `Reconnected` notice tells readers that they may have
//! missed some, so a lost notification delays an entry and never drops it.

use futures::StreamExt;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::task::AbortOnDropHandle;

/// Wake-ups buffered for a slow reader; one that lags past it is told to re-read
/// everything (`RecvError::Lagged`).
const NOTICE_BUFFER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A notification's payload.
    Payload(String),
    /// LISTEN is (again) in place, or a hint was too long to send: anything may have
    /// happened.
    Reconnected,
}

/// The listening task; stops when dropped.
#[derive(Debug)]
pub struct Listener {
    sender: broadcast::Sender<Notice>,
    _task: AbortOnDropHandle<()>,
}

impl Listener {
    /// Connects with `config` and LISTENs on `channel`, reconnecting (200 ms to 2 s apart)
    /// whenever the connection drops. Answers once LISTEN is in place (or after `patience`,
    /// when the database is not reachable yet), so appends after it are heard.
    pub async fn start(config: tokio_postgres::Config, channel: &'static str, patience: Duration) -> Listener {
        let (sender, _) = broadcast::channel(NOTICE_BUFFER);
        let (listening, mut heard) = watch::channel(false);
        let task = AbortOnDropHandle::new(tokio::spawn(listen(config, channel, sender.clone(), listening)));
        if tokio::time::timeout(patience, heard.wait_for(|on| *on)).await.is_err() {
            tracing::warn!(channel, "LISTEN not in place yet; readers poll until it is");
        }
        Listener { sender, _task: task }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }
}

/// An engine's own wake-ups, made from notices by a task that stops when this is dropped.
#[derive(Debug)]
pub struct Wakeups<T> {
    sender: broadcast::Sender<T>,
    _task: AbortOnDropHandle<()>,
}

impl<T: Clone + Send + 'static> Wakeups<T> {
    /// Sends `hint(payload)` for each notification (nothing when it answers `None`), and
    /// `missed` whenever some may have been missed (a reconnect, or this task lagging);
    /// keeps `capacity` for slow readers.
    pub fn forward(
        mut from: broadcast::Receiver<Notice>,
        capacity: usize,
        missed: T,
        hint: impl Fn(&str) -> Option<T> + Send + 'static,
    ) -> Wakeups<T> {
        let (sender, _) = broadcast::channel(capacity);
        let to = sender.clone();
        let task = tokio::spawn(async move {
            loop {
                let wakeup = match from.recv().await {
                    Ok(Notice::Payload(payload)) => match hint(&payload) {
                        Some(wakeup) => wakeup,
                        None => continue,
                    },
                    Ok(Notice::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => missed.clone(),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let _ = to.send(wakeup);
            }
        });
        Wakeups {
            sender,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Where this replica's own work is announced at once (other replicas hear it by NOTIFY).
    pub fn sender(&self) -> &broadcast::Sender<T> {
        &self.sender
    }

    pub fn subscribe(&self) -> broadcast::Receiver<T> {
        self.sender.subscribe()
    }
}

async fn listen(
    config: tokio_postgres::Config,
    channel: &'static str,
    sender: broadcast::Sender<Notice>,
    listening: watch::Sender<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, mut connection)) => {
                let forward = sender.clone();
                let driver = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                for hint in crate::notify::split(n.payload()) {
                                    let _ = forward.send(hint.map_or(Notice::Reconnected, Notice::Payload));
                                }
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(error = %crate::error::describe(&err), "listen connection lost");
                                return;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {channel}")).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(200);
                        let _ = sender.send(Notice::Reconnected);
                        listening.send_replace(true);
                        let _ = driver.await;
                        listening.send_replace(false);
                    }
                    Err(err) => {
                        tracing::warn!(channel, error = %crate::error::describe(&err), "LISTEN failed");
                        driver.abort();
                    }
                }
            }
            Err(err) => {
                tracing::debug!(channel, error = %crate::error::describe(&err), "listen connection failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
