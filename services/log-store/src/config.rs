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

    /// Directory of the RocksDB database; created when missing.
    #[arg(long, env = "FEDSX_LOG_STORE_DATA_DIR", default_value = "fedsx-data/log-store")]
    pub data_dir: PathBuf,
}
