//! `fedsx bench …`: throughput benchmarks that report against the machine's own limits
//! measured in the same run.

mod delivery;
mod kernel;
mod log_store;

use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Synced appends/s through gRPC to a log-store, beside raw synced RocksDB on the same disk.
    LogStore(log_store::Args),
    /// Durable ingests/s of signed envelopes through kernel → log-store, beside ed25519
    /// strict verifications/s on one core.
    Kernel(kernel::Args),
    /// Deliveries/s to a fast peer, a 100 ms peer and 100 peers; memory with a deep queue.
    Delivery(delivery::Args),
}

impl Bench {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Bench::LogStore(args) => log_store::run(args).await,
            Bench::Kernel(args) => kernel::run(args).await,
            Bench::Delivery(args) => delivery::run(args).await,
        }
    }
}

/// A service process started by a benchmark; killed when dropped.
pub struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fedsx <args>` (this same binary) and returns its URL once it announces it.
pub fn spawn_service(args: &[&str]) -> anyhow::Result<(String, KillOnDrop)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting fedsx {}", args[0]))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let child = KillOnDrop(child);
    for line in lines.by_ref() {
        let line = line?;
        let addr = line
            .strip_prefix(fedsx_runtime::listen::READY_PREFIX)
            .and_then(|rest| rest.split_whitespace().nth(1))
            .map(str::to_owned);
        if let Some(addr) = addr {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((format!("http://{addr}"), child));
        }
    }
    anyhow::bail!("fedsx {} exited before listening", args[0])
}

pub fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
