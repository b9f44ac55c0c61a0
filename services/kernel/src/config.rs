//! Flags (with environment fallbacks) of `fedsx kernel`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default gRPC address of the kernel on a local node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8701";

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the gRPC service listens on (port 0 picks a free port, printed at start).
    #[arg(long, env = "FEDSX_KERNEL_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// URL of the log-store service.
    #[arg(long, env = "FEDSX_KERNEL_LOG_STORE", default_value = "http://127.0.0.1:8702")]
    pub log_store: String,

    /// URL of the delivery service.
    #[arg(long, env = "FEDSX_KERNEL_DELIVERY", default_value = "http://127.0.0.1:8703")]
    pub delivery: String,

    /// The node's public base URL, as peers reach its gateway; actor URLs are
    /// `<public-url>/actors/<name>`.
    #[arg(long, env = "FEDSX_PUBLIC_URL", default_value = "http://127.0.0.1:8700")]
    pub public_url: String,

    /// File holding the node secret (64 hex digits) every actor key is derived from;
    /// created with a fresh random secret when missing. Back it up: it is the node's keys.
    #[arg(
        long,
        env = "FEDSX_NODE_SECRET_FILE",
        default_value = "fedsx-data/kernel/node-secret"
    )]
    pub node_secret_file: PathBuf,

    /// Do not advertise the node inbox (`<public-url>/inbox`) in actor documents: peers then
    /// POST to each actor's inbox, as nodes before it did.
    #[arg(long, env = "FEDSX_KERNEL_NO_NODE_INBOX")]
    pub no_node_inbox: bool,

    /// How many partitions a new node spreads its actors over (each has its own journal; 1
    /// to 1024). Fixed when the node is created: a node that exists keeps its own.
    #[arg(long, env = "FEDSX_KERNEL_PARTITIONS", default_value_t = crate::partition::DEFAULT_PARTITIONS)]
    pub partitions: u32,

    /// The URL other kernel replicas forward calls to this one at (default:
    /// `http://<listen address>`; behind Kubernetes, the pod's address).
    #[arg(long, env = "FEDSX_KERNEL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// This replica's name as lease holder; a restart with the same name takes its
    /// partitions back at once (default: derived from the host name and the advertised URL,
    /// which stay the same across restarts of one replica).
    #[arg(long, env = "FEDSX_KERNEL_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// How long this replica's leases (its membership and its partitions) last unless
    /// renewed; renewed every third of it. A replica that dies hands its partitions on
    /// within it.
    #[arg(long, env = "FEDSX_KERNEL_LEASE", default_value = "6s", value_parser = fedsx_runtime::clock::parse_duration)]
    pub lease: std::time::Duration,

    /// Allow fetching peer documents from loopback, private and link-local addresses
    /// (tests and single-machine setups only).
    #[arg(long, env = "FEDSX_ALLOW_PRIVATE_PEERS")]
    pub allow_private_peers: bool,
}

impl Config {
    /// Where other replicas reach this one, serving on `bound`.
    pub fn advertise_url(&self, bound: SocketAddr) -> String {
        self.advertise_url.clone().unwrap_or_else(|| format!("http://{bound}"))
    }
}
