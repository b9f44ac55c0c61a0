//! `fedsx`: one binary whose subcommands run each fed-sx service as its own process, a
//! whole node, and the operator's tools.

mod bench;
mod cli;
mod flow_cli;
mod up;

use clap::{Parser, Subcommand};
use fedsx_runtime::{listen, shutdown, telemetry};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "fedsx", version, about = "fed-sx federation server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the log-store service: per-actor append-only streams on RocksDB or PostgreSQL.
    LogStore(fedsx_log_store::Config),
    /// Run the kernel: actors and keys, inbound pipeline, publishing, followers, peers.
    Kernel(fedsx_kernel::Config),
    /// Run delivery: the durable per-peer retry queue that POSTs to peer inboxes.
    Delivery(fedsx_delivery::Config),
    /// Run the HTTP gateway: the node's public face.
    Gateway(fedsx_gateway::Config),
    /// Run a whole node: log-store, delivery, kernel and gateway as child processes.
    Up(up::Args),
    #[command(flatten)]
    Operate(cli::Command),
    /// Measure a service's throughput against the machine's limits.
    #[command(subcommand)]
    Bench(bench::Bench),
}

fn main() -> ExitCode {
    fedsx_runtime::memory::tune_allocator();
    let cli = Cli::parse();
    // Before any thread starts: a service `fedsx up` started stops when `up` goes.
    if let Err(err) = fedsx_runtime::parent::die_with_parent() {
        eprintln!("fedsx: {err:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fedsx: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fedsx: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::LogStore(mut config) => {
            let _telemetry = telemetry::init("fedsx-log-store")?;
            if let Some(tool) = config.tool.take() {
                return fedsx_log_store::run_tool(tool).await;
            }
            let shutdown = shutdown::on_signal()?;
            let listener = listen::bind("--listen", config.listen).await?;
            fedsx_log_store::run(config, listener, shutdown).await
        }
        Command::Kernel(config) => {
            let _telemetry = telemetry::init("fedsx-kernel")?;
            let shutdown = shutdown::on_signal()?;
            let listener = listen::bind("--listen", config.listen).await?;
            fedsx_kernel::run(config, listener, shutdown).await
        }
        Command::Delivery(config) => {
            let _telemetry = telemetry::init("fedsx-delivery")?;
            let shutdown = shutdown::on_signal()?;
            let listener = listen::bind("--listen", config.listen).await?;
            fedsx_delivery::run(config, listener, shutdown).await
        }
        Command::Gateway(config) => {
            let _telemetry = telemetry::init("fedsx-gateway")?;
            let shutdown = shutdown::on_signal()?;
            let listener = listen::bind("--listen", config.listen).await?;
            fedsx_gateway::run(config, listener, shutdown).await
        }
        Command::Up(args) => {
            let _telemetry = telemetry::init("fedsx-up")?;
            up::run(args).await
        }
        Command::Operate(command) => cli::run(command).await,
        Command::Bench(bench) => bench.run().await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
