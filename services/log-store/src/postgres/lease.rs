//! Leases on PostgreSQL: one row per lease, taken or renewed in one statement on the
//! database's clock (`lease.rs` has the rule; these statements are it in SQL), so replicas
//! on machines with different clocks agree. The key is the lease name alone.

use crate::error::StoreError;
use crate::lease::{Acquire, Lease, MAX_LISTED};
use bytes::Bytes;
use fedsx_pg::tokio_postgres::Row;

/// The database's clock, in ms since the Unix epoch.
const NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Takes or renews lease `$1` for `$2` for `$3` ms with data `$4`; answers the row when
/// it did (with the clock it used), nothing when someone else holds it.
fn acquire_sql() -> String {
    format!(
        "WITH now AS (SELECT {NOW} AS ms)
        INSERT INTO log_leases AS l (name, holder, epoch, until_ms, data)
        SELECT $1, $2, 1, now.ms + $3, $4 FROM now
        ON CONFLICT (name) DO UPDATE SET
            holder = excluded.holder,
            data = excluded.data,
            until_ms = excluded.until_ms,
            epoch = CASE WHEN l.holder = excluded.holder AND l.until_ms > excluded.until_ms - $3
                         THEN l.epoch ELSE l.epoch + 1 END
        WHERE l.holder = excluded.holder OR l.until_ms <= excluded.until_ms - $3
        RETURNING holder, epoch, until_ms, data, until_ms - $3 AS now"
    )
}

fn current_sql() -> String {
    format!("SELECT holder, epoch, until_ms, data, {NOW} AS now FROM log_leases WHERE name = $1")
}

fn release_sql() -> String {
    format!("UPDATE log_leases SET until_ms = 0 WHERE name = $1 AND holder = $2 AND until_ms > {NOW}")
}

fn list_sql() -> String {
    format!(
        "SELECT name, holder, epoch, until_ms, data, now.ms FROM log_leases, (SELECT {NOW} AS ms) AS now
        WHERE starts_with(name, $1) AND until_ms > now.ms ORDER BY name LIMIT {MAX_LISTED}"
    )
}

/// A lease from a row of (holder, epoch, until_ms, data, now) starting at column `at`.
fn lease(name: &str, row: &Row, at: usize) -> Lease {
    let until: i64 = row.get(at + 2);
    let now: i64 = row.get(at + 4);
    Lease {
        name: name.to_owned(),
        holder: row.get(at),
        epoch: row.get::<_, i64>(at + 1) as u64,
        remaining_ms: until.saturating_sub(now).max(0) as u64,
        data: Bytes::from(row.get::<_, Vec<u8>>(at + 3)),
    }
}

pub(super) async fn acquire(client: &fedsx_pg::Client, request: &Acquire) -> Result<Lease, StoreError> {
    let ttl = request.ttl_ms as i64;
    let taken = client
        .query_opt(
            &acquire_sql(),
            &[&request.name, &request.holder, &ttl, &&request.data[..]],
        )
        .await?;
    if let Some(row) = taken {
        return Ok(lease(&request.name, &row, 0));
    }
    // Held by someone else: answer who.
    let row = client
        .query_opt(&current_sql(), &[&request.name])
        .await?
        .ok_or_else(|| StoreError::internal("a lease refused was not found"))?;
    Ok(lease(&request.name, &row, 0))
}

pub(super) async fn release(client: &fedsx_pg::Client, name: &str, holder: &str) -> Result<bool, StoreError> {
    Ok(client.execute(&release_sql(), &[&name, &holder]).await? > 0)
}

pub(super) async fn list(client: &fedsx_pg::Client, prefix: &str) -> Result<Vec<Lease>, StoreError> {
    let rows = client.query(&list_sql(), &[&prefix]).await?;
    Ok(rows.iter().map(|row| lease(&row.get::<_, String>(0), row, 1)).collect())
}
