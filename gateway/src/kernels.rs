//! The kernel replicas, as the gateway calls them. An inbox POST for a local actor goes
//! straight to the replica serving the actor's partition, as `Kernel.ListReplicas` last
//! said; everything
//! else — and any call while the owner is not known — goes to the configured kernel
//! address, whose replica forwards it. Behind one address for three replicas, two calls
//! in three would otherwise take the forwarding hop, which costs a replica more CPU than
//! the ingest itself. The table is read again every [`REFRESH`] (in the background, when
//! a call finds it older) and after an owner did not answer; such a call is made again
//! at the configured address (every call routed here is idempotent).

use fedsx_proto::kernel::v1::ListReplicasRequest;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub type Client = KernelClient<TracedChannel>;

/// How old the table of owners may get before a call has it read again.
pub const REFRESH: Duration = Duration::from_secs(5);

pub struct Kernels {
    any: Client,
    owners: RwLock<Owners>,
    refreshing: AtomicBool,
}

#[derive(Default)]
struct Owners {
    partitions: u32,
    /// Partition → the client of the replica serving it.
    clients: HashMap<u32, Client>,
    /// Each replica's client by URL (kept across reads: its connection stays open).
    by_url: HashMap<String, Client>,
    read_at: Option<Instant>,
}

impl Kernels {
    /// The kernel at `url` (connected on first use).
    pub fn new(url: &str) -> anyhow::Result<Arc<Kernels>> {
        Ok(Arc::new(Kernels {
            any: KernelClient::new(lazy_channel("--kernel", url)?),
            owners: RwLock::default(),
            refreshing: AtomicBool::new(false),
        }))
    }

    /// The configured address: any replica.
    pub fn any(&self) -> Client {
        self.any.clone()
    }

    /// The replica serving local actor `name`'s partition, if known.
    pub fn owner_of(self: &Arc<Self>, name: &str) -> Option<Client> {
        let partitions = self.fresh().partitions;
        self.owner(fedsx_runtime::partition::partition_of(name, partitions))
    }

    /// Makes `call` on `owner` when it is known, and at the configured address when it is
    /// not or did not answer (UNAVAILABLE): for idempotent calls only.
    pub async fn routed<T, F, Fut>(self: &Arc<Self>, owner: Option<Client>, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        if let Some(client) = owner {
            match call(client).await {
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tracing::debug!(error = %status.message(), "the partition's replica did not answer; calling the kernel address");
                    self.refresh_soon();
                }
                answer => return answer,
            }
        }
        call(self.any()).await
    }

    fn owner(&self, partition: u32) -> Option<Client> {
        let owners = self.owners.read().expect("owners lock poisoned");
        owners.clients.get(&partition).cloned()
    }

    /// The table, after asking for a new one in the background when it is old.
    fn fresh(self: &Arc<Self>) -> std::sync::RwLockReadGuard<'_, Owners> {
        let owners = self.owners.read().expect("owners lock poisoned");
        if owners.read_at.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.refresh_soon();
        }
        owners
    }

    /// Reads the table again in the background (once at a time).
    pub fn refresh_soon(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(err) = me.refresh().await {
                tracing::debug!(error = %err, "reading the kernel replicas failed; calls go to the kernel address");
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Reads which replica serves which partition. Replicas with no URL (a replica alone)
    /// are reached at the configured address.
    pub async fn refresh(&self) -> Result<(), tonic::Status> {
        let listed = self.any().list_replicas(ListReplicasRequest {}).await?.into_inner();
        let known = self.owners.read().expect("owners lock poisoned").by_url.clone();
        let (mut clients, mut by_url) = (HashMap::new(), HashMap::new());
        for replica in listed.replicas.iter().filter(|r| !r.url.is_empty()) {
            let client = match known.get(&replica.url) {
                Some(client) => client.clone(),
                None => KernelClient::new(
                    lazy_channel("kernel replica", &replica.url)
                        .map_err(|err| tonic::Status::internal(err.to_string()))?,
                ),
            };
            by_url.insert(replica.url.clone(), client.clone());
            for partition in &replica.partitions {
                clients.insert(*partition, client.clone());
            }
        }
        *self.owners.write().expect("owners lock poisoned") = Owners {
            partitions: listed.partitions,
            clients,
            by_url,
            read_at: Some(Instant::now()),
        };
        Ok(())
    }
}
