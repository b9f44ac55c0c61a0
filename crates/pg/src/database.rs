//! What every PostgreSQL engine opens the same way: the pool, the schema brought up to date
//! (waiting a while for a database that is not reachable yet), a LISTEN connection for
//! other replicas' wake-ups, the readiness probe, and the notifier for this replica's.

use crate::{Listener, MigrateError, Migration, Notice, Notifier, PgError, PoolOptions, Readiness};
use deadpool_postgres::Pool;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

/// Why an engine's database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// An engine's open database.
#[derive(Debug)]
pub struct Database {
    pub pool: Pool,
    /// Announces this replica's work to the others (NOTIFY off the commit path).
    pub notifier: Notifier,
    listener: Listener,
    readiness: Readiness,
}

impl Database {
    /// Connects to `url` and migrates `component`'s schema — retrying for
    /// `options.patience` while the database is unreachable; a schema newer than this build
    /// fails at once — then LISTENs on `channel`. `service` names the process in logs.
    pub async fn open(
        url: &str,
        options: &PoolOptions,
        service: &'static str,
        component: &str,
        migrations: &[Migration],
        channel: &'static str,
    ) -> Result<Database, OpenError> {
        let (pool, config) = crate::connect(url, options).map_err(|err| OpenError::Url {
            url: crate::redact(url),
            reason: err.to_string(),
        })?;
        let started = Instant::now();
        loop {
            match crate::migrate(&pool, component, migrations).await {
                Ok(_) => break,
                Err(MigrateError::Pg(err)) if err.is_unavailable() && started.elapsed() < options.patience => {
                    tracing::warn!(service, store = %crate::redact(url), error = %err, "waiting for postgres");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        let listener = Listener::start(config, channel, options.timeout).await;
        Ok(Database {
            notifier: Notifier::spawn(pool.clone(), channel),
            readiness: Readiness::spawn(pool.clone(), service),
            listener,
            pool,
        })
    }

    /// Wake-ups from every replica (and a `Reconnected` when some may have been missed).
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.listener.subscribe()
    }

    /// Whether the database answers right now.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.readiness.watch()
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<crate::Client, PgError> {
        Ok(self.pool.get().await?)
    }
}
