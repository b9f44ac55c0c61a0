//! The fed-sx kernel: local actors and their keys, the inbound pipeline (verify, append to
//! the inbox, auto-accept Follow), publishing to outboxes, followers and following, the
//! peer registry with safe document fetching, and the relay that hands published
//! activities to delivery. Everything that must survive a restart is journaled in the
//! log-store; the only other state is the node secret keys are derived from.

mod activitypub;
mod backfill;
pub mod clock;
mod config;
pub mod delivery;
mod directory;
mod effects;
mod error;
mod flows;
mod forward;
mod gaps;
mod gone;
mod history;
mod ingest;
mod journal;
mod kernel;
mod keys;
mod logs;
mod metrics;
mod outbox;
mod ownership;
mod partition;
pub mod peers;
mod publish;
mod relay;
mod service;
mod snapshot;
mod state;
mod throttle;

pub use activitypub::ApRequest;
pub use config::Config;
pub use error::KernelError;
pub use flows::FLOWS_ACTOR;
pub use history::{FollowerEvent, HistoryPage};
pub use ingest::Ingested;
pub use kernel::{Kernel, Ports};
pub use keys::NodeSecret;
pub use logs::{GrpcLogs, LogError, LogPort, Logs};
pub use ownership::{Owner, ReplicaConfig, ReplicaView};
pub use partition::{DEFAULT_PARTITIONS, one_name_per_partition, partition_of};
pub use publish::{Draft, Published};
pub use state::NodeUrls;

use anyhow::Context;
use fedsx_runtime::CancellationToken;
use tokio::net::TcpListener;

/// One entry of an actor's inbox or outbox.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: u64,
    /// The activity id; None if the stored envelope does not decode (never for entries the
    /// kernel wrote).
    pub id: Option<fedsx_wire::ActivityId>,
    pub envelope: bytes::Bytes,
}

/// The gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "fedsx.kernel.v1.Kernel";

/// Loads the node secret, replays the journal from the log-store (waiting for it to be
/// reachable), and serves the kernel on `listener` until `shutdown` is cancelled.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let secret = NodeSecret::load_or_create(&config.node_secret_file).context("--node-secret-file")?;
    let ports = Ports::connect_lazy(&config.log_store, &config.delivery, config.allow_private_peers)?;
    let url = config.advertise_url(listener.local_addr()?);
    let replica = ownership::ReplicaConfig {
        id: Some(config.replica_id.clone().unwrap_or_else(|| ownership::stable_id(&url))),
        partitions: config.partitions,
        url,
        lease: config.lease,
    };
    let kernel = loop {
        let started = Kernel::start(
            ports.clone(),
            NodeSecret::from_bytes(secret.to_bytes()),
            state::NodeUrls::new(&config.public_url, !config.no_node_inbox),
            replica.clone(),
            shutdown.clone(),
        )
        .await;
        match started {
            Ok(kernel) => break kernel,
            Err(err @ KernelError::BadRequest(_)) => return Err(err).context("starting the kernel"),
            Err(KernelError::LogStoreUnavailable(reason)) => {
                tracing::warn!(log_store = %config.log_store, %reason, "log-store not reachable yet; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            Err(err) => return Err(err).context("replaying the kernel journal"),
        }
    };
    let routes = tonic::service::Routes::new(service::server(kernel.clone()));
    let served = fedsx_runtime::grpc::serve(SERVICE_NAME, routes, listener, shutdown).await;
    // After the last call: how far each sender arrived, for the next start.
    kernel.save_gaps().await;
    kernel.finish(std::time::Duration::from_secs(5)).await;
    served
}
