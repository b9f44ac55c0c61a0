//! Whether the database answers right now: a probe every second (`SELECT 1` through the
//! pool), watched by the gRPC health service so readiness reports NOT_SERVING while the
//! database is unreachable and SERVING again once it is back — without a restart.

use deadpool_postgres::Pool;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The probing task; stops when dropped.
#[derive(Debug)]
pub struct Readiness {
    receiver: watch::Receiver<bool>,
    _task: AbortOnDropHandle<()>,
}

impl Readiness {
    /// Starts probing `pool`; `what` names the service in the logs.
    pub fn spawn(pool: Pool, what: &'static str) -> Readiness {
        let (sender, receiver) = watch::channel(true);
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                let ok = probe(&pool).await;
                let was = *sender.borrow();
                if ok != was {
                    if ok {
                        tracing::info!(service = what, "postgres reachable again; serving");
                    } else {
                        tracing::warn!(service = what, "postgres unreachable; not serving");
                    }
                    let _ = sender.send(ok);
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        }));
        Readiness { receiver, _task: task }
    }

    pub fn watch(&self) -> watch::Receiver<bool> {
        self.receiver.clone()
    }
}

async fn probe(pool: &Pool) -> bool {
    let attempt = async {
        let client = pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    matches!(tokio::time::timeout(PROBE_EVERY * 3, attempt).await, Ok(Some(_)))
}
