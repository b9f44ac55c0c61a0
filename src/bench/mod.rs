//! `fedsx bench …`: throughput benchmarks that report against the machine's own limits
//! measured in the same run.

mod log_store;

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Synced appends/s through gRPC to a log-store, beside raw synced RocksDB on the same disk.
    LogStore(log_store::Args),
}

impl Bench {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Bench::LogStore(args) => log_store::run(args).await,
        }
    }
}
