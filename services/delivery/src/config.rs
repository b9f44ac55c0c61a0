//! Flags (with `FEDSX_DELIVERY_*` environment fallbacks) of `fedsx delivery`.

use crate::queue::{Schedule, parse_duration};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC address of delivery on a local node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8703";

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the gRPC service listens on (port 0 picks a free port, printed at start).
    #[arg(long, env = "FEDSX_DELIVERY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of the queue's RocksDB database (the embedded engine, used when --store
    /// is not given); created when missing.
    #[arg(long, env = "FEDSX_DELIVERY_DATA_DIR", default_value = "fedsx-data/delivery")]
    pub data_dir: PathBuf,

    /// A PostgreSQL URL (`postgres://user:pass@host1,host2/db?target_session_attrs=read-write`)
    /// to keep the queue in PostgreSQL instead of RocksDB; any number of delivery replicas
    /// may share one database (each destination is worked by one at a time, under a lease).
    #[arg(long, env = "FEDSX_DELIVERY_STORE", value_parser = fedsx_pg::parse_store_url)]
    pub store: Option<String>,

    /// Connections to PostgreSQL at most (with --store).
    #[arg(long, env = "FEDSX_DELIVERY_STORE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub store_pool_size: u32,

    /// How long a destination's lease lasts; renewed every third of it. A replica that dies
    /// holds its destinations this long at most before another takes them.
    #[arg(long, env = "FEDSX_DELIVERY_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,

    /// Waits after the 1st, 2nd, … failure; the failure after the last one dead-letters.
    #[arg(long, env = "FEDSX_DELIVERY_RETRY_SCHEDULE", default_value = "30s,5m,30m,2h,8h", value_parser = Schedule::parse)]
    pub retry_schedule: Schedule,

    /// Sends in flight at once per destination node (each the oldest of its sender).
    #[arg(long, env = "FEDSX_DELIVERY_MAX_IN_FLIGHT", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_in_flight: u32,

    /// Sends in flight at once over all destinations (a send holds one connection, so this
    /// also bounds the connections open for sending); further sends wait their turn.
    #[arg(long, env = "FEDSX_DELIVERY_MAX_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_requests: u32,

    /// How long the record of a delivered activity is kept (counted from its enqueue): within
    /// it, the same (peer, id) enqueued again is recognised and not sent twice; after it,
    /// the record is gone.
    #[arg(long, env = "FEDSX_DELIVERY_RETENTION", default_value = "168h", value_parser = parse_duration)]
    pub retention: Duration,

    /// A destination whose every send has failed for this long is unavailable: deliveries
    /// to it become dead letters at once, until it is revived (`fedsx revive`, or an inbound
    /// request from it).
    #[arg(long, env = "FEDSX_DELIVERY_UNAVAILABLE_AFTER", default_value = "168h", value_parser = parse_duration)]
    pub unavailable_after: Duration,

    /// Destinations reported under their own `peer` label in the per-peer metrics: the
    /// busiest (pending, in flight and dead letters); the others are summed under `other`.
    #[arg(long, env = "FEDSX_DELIVERY_METRICS_PEERS", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub metrics_peers: u32,

    /// Time allowed for one POST to a peer (connect, TLS, request, answer).
    #[arg(long, env = "FEDSX_DELIVERY_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub send_timeout: Duration,

    /// Static inbox override: ACTOR_URL=BASE_URL sends that actor's deliveries to
    /// BASE_URL/actors/<last path segment of ACTOR_URL>/inbox. Repeatable.
    #[arg(long = "peer-url", env = "FEDSX_DELIVERY_PEER_URLS", value_delimiter = ',', value_parser = parse_peer_url)]
    pub peer_urls: Vec<(String, String)>,

    /// Allow sending to loopback, private and link-local addresses (tests and
    /// single-machine setups only).
    /// The node secret file (the kernel's): opens the actors' sealed RSA keys to sign
    /// ActivityPub posts. Read on first use. Without it, ActivityPub posts are dead letters.
    #[arg(long, env = "FEDSX_NODE_SECRET_FILE")]
    pub node_secret_file: Option<PathBuf>,
    #[arg(long, env = "FEDSX_ALLOW_PRIVATE_PEERS")]
    pub allow_private_peers: bool,
}

fn parse_peer_url(text: &str) -> Result<(String, String), String> {
    let (actor, base) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not ACTOR_URL=BASE_URL"))?;
    for url in [actor, base] {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("{url:?} is not an http(s) URL"));
        }
    }
    Ok((actor.to_owned(), base.trim_end_matches('/').to_owned()))
}

impl Config {
    /// The static map: actor URL → the inbox URL to use instead of the kernel's.
    pub fn peer_inboxes(&self) -> HashMap<String, String> {
        self.peer_urls
            .iter()
            .map(|(actor, base)| {
                let name = actor.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
                (actor.clone(), format!("{base}/actors/{name}/inbox"))
            })
            .collect()
    }
}
