//! Flags (with `FEDSX_LOG_STORE_*` environment fallbacks) of `fedsx log-store`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default gRPC address of the log-store on a local node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8702";

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the gRPC service listens on (port 0 picks a free port, printed at start).
    #[arg(long, env = "FEDSX_LOG_STORE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of the RocksDB database (the embedded engine, used when --store is not
    /// given); created when missing.
    #[arg(long, env = "FEDSX_LOG_STORE_DATA_DIR", default_value = "fedsx-data/log-store")]
    pub data_dir: PathBuf,

    /// A PostgreSQL URL (`postgres://user:pass@host1,host2/db?target_session_attrs=read-write`)
    /// to keep the streams in PostgreSQL instead of RocksDB; any number of log-stores may
    /// share one database.
    #[arg(long, env = "FEDSX_LOG_STORE_STORE", value_parser = fedsx_pg::parse_store_url)]
    pub store: Option<String>,

    /// Connections to PostgreSQL at most (with --store).
    #[arg(long, env = "FEDSX_LOG_STORE_STORE_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub store_pool_size: u32,

    #[command(subcommand)]
    pub tool: Option<Tool>,
}

/// Operator tools on a log-store's storage (instead of serving it).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Copy every stream of a stopped RocksDB log-store into PostgreSQL, with the same
    /// seqs, and check the tips; safe to run again after an interruption.
    Migrate {
        /// The RocksDB data directory (its log-store must be stopped).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL to copy into.
        #[arg(long, value_parser = fedsx_pg::parse_store_url)]
        to: String,
    },
}
