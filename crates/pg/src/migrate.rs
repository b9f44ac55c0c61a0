//! Versioned schema migrations, applied at start under an advisory lock (so replicas
//! starting together apply each once) and recorded per component in
//! `fedsx_schema_migrations`. A database whose schema is newer than this build is refused.

use crate::error::PgError;
use deadpool_postgres::Pool;

/// One step of a component's schema. Never edit a released one: add the next version.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database's {component} schema is at version {found}, newer than this build knows \
         ({known}); run the fedsx version that wrote it, or a later one"
    )]
    Newer { component: String, found: i32, known: i32 },
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(err: tokio_postgres::Error) -> Self {
        MigrateError::Pg(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for MigrateError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        MigrateError::Pg(err.into())
    }
}

/// Any fixed number: every fed-sx process migrating this database takes the same lock.
const MIGRATION_LOCK: i64 = 0x0fed_5c4e_0001;

/// Brings `component`'s schema up to the last of `migrations` (ascending versions) in one
/// transaction; answers the version the database is at.
pub async fn migrate(pool: &Pool, component: &str, migrations: &[Migration]) -> Result<i32, MigrateError> {
    let known = migrations.last().map_or(0, |m| m.version);
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS fedsx_schema_migrations (
             component text NOT NULL,
             version integer NOT NULL,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (component, version))",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM fedsx_schema_migrations WHERE component = $1",
            &[&component],
        )
        .await?
        .get(0);
    if found > known {
        return Err(MigrateError::Newer {
            component: component.to_owned(),
            found,
            known,
        });
    }
    for migration in migrations.iter().filter(|m| m.version > found) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO fedsx_schema_migrations (component, version, name) VALUES ($1, $2, $3)",
            &[&component, &migration.version, &migration.name],
        )
        .await?;
        tracing::info!(
            component,
            version = migration.version,
            name = migration.name,
            "schema migrated"
        );
    }
    tx.commit().await?;
    Ok(known.max(found))
}
