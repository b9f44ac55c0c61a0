//! A bounded connection pool from a libpq-style URL. `postgres://u@h1:5432,h2:5432/db?
//! target_session_attrs=read-write` tries each host until one takes writes, so after a
//! failover new connections find the new primary; broken ones are dropped on return.

use crate::error::PgError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::str::FromStr;
use std::time::Duration;

/// How a pool is sized and how long a caller waits before it is told the database is
/// unavailable.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Connections at most (the bound on concurrent statements from this process).
    pub max_size: usize,
    /// Longest wait for a connection, for a new connection to be made, and for the TCP
    /// connect itself (unless the URL sets `connect_timeout`).
    pub timeout: Duration,
    /// `application_name`, so `pg_stat_activity` tells which service a connection is.
    pub application_name: String,
    /// How long opening waits for a database that is not reachable yet.
    pub patience: Duration,
    /// Settings of every session (`-c name=value` at connect), after the URL's `options`.
    pub settings: Vec<(&'static str, &'static str)>,
}

impl PoolOptions {
    pub fn new(application_name: &str) -> PoolOptions {
        PoolOptions {
            max_size: 16,
            timeout: Duration::from_secs(3),
            application_name: application_name.to_owned(),
            patience: Duration::from_secs(30),
            settings: Vec::new(),
        }
    }
}

/// Parses `url` and builds a pool. Connects lazily: nothing is sent until the first use.
pub fn connect(url: &str, options: &PoolOptions) -> Result<(Pool, tokio_postgres::Config), PgError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|err| PgError::Refused {
        reason: format!("{}: {err}", redact(url)),
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name(&options.application_name);
    }
    if !options.settings.is_empty() {
        let mut line = config.get_options().unwrap_or_default().to_owned();
        for (name, value) in &options.settings {
            line.push_str(&format!(" -c {name}={value}"));
        }
        config.options(line.trim_start());
    }
    // A primary that vanished without closing its sockets is noticed within seconds.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    let manager = Manager::from_config(
        config.clone(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(options.max_size)
        .wait_timeout(Some(options.timeout))
        .create_timeout(Some(options.timeout))
        .recycle_timeout(Some(options.timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|err| PgError::Refused {
            reason: format!("building the pool: {err}"),
        })?;
    Ok((pool, config))
}

/// The value of a `--store` flag: a `postgres://` or `postgresql://` URL (the only engine
/// selected by URL; without the flag a service uses RocksDB).
pub fn parse_store_url(text: &str) -> Result<String, String> {
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        Ok(text.to_owned())
    } else {
        Err("must be a postgres:// URL (leave it out to use RocksDB in --data-dir)".into())
    }
}

/// `url` with its password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("postgres://fedsx:s3cret@db1:5432,db2/fedsx?target_session_attrs=read-write"),
            "postgres://fedsx:***@db1:5432,db2/fedsx?target_session_attrs=read-write"
        );
        assert_eq!(redact("postgres://fedsx@db/x"), "postgres://fedsx@db/x");
        assert_eq!(redact("host=db user=x"), "host=db user=x");
    }

    #[test]
    fn a_multi_host_url_with_read_write_parses() {
        let (_, config) = connect(
            "postgres://u@127.0.0.1:5432,127.0.0.1:5433/db?target_session_attrs=read-write",
            &PoolOptions::new("test"),
        )
        .unwrap();
        assert_eq!(config.get_ports(), [5432, 5433]);
        assert_eq!(
            config.get_target_session_attrs(),
            tokio_postgres::config::TargetSessionAttrs::ReadWrite
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = connect("postgres://u:pw@host:notaport/db", &PoolOptions::new("t")).unwrap_err();
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
