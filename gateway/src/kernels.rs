//! The kernel replicas, as the gateway calls them. An inbox POST for a local actor goes
//! straight to the replica serving the actor's partition, as `Kernel.ListReplicas` last
//! said; everything else — and any call while the owner is not known — goes to the
//! configured kernel address, whose replica forwards it. Behind one address for three
//! replicas, two calls in three would otherwise take the forwarding hop, which costs a
//! replica more CPU than the ingest itself. The table is read again every [`REFRESH`] (in
//! the background, when a call finds it older) and after an owner did not answer; such a
//! call is made again at the configured address (every call routed here is idempotent),
//! and that replica is passed over for [`AVOID`] (one the gateway cannot reach costs no
//! connection attempt per call).

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
/// How long a replica that did not answer is passed over.
pub const AVOID: Duration = Duration::from_secs(30);

/// A partition's replica: where it is, and its client.
#[derive(Clone)]
pub struct Owner {
    pub url: String,
    pub client: Client,
}

pub struct Kernels {
    any: Client,
    owners: RwLock<Owners>,
    refreshing: AtomicBool,
}

#[derive(Default)]
struct Owners {
    partitions: u32,
    /// Partition → the replica serving it.
    owners: HashMap<u32, Owner>,
    /// Each replica's client by URL (kept across reads: its connection stays open).
    by_url: HashMap<String, Client>,
    read_at: Option<Instant>,
    /// Replicas that did not answer, and until when they are passed over.
    avoided: HashMap<String, Instant>,
}

impl Kernels {
    /// The kernel reached over `channel` (the configured address).
    pub fn new(channel: TracedChannel) -> Arc<Kernels> {
        Arc::new(Kernels {
            any: KernelClient::new(channel),
            owners: RwLock::default(),
            refreshing: AtomicBool::new(false),
        })
    }

    /// The configured address: any replica.
    pub fn any(&self) -> Client {
        self.any.clone()
    }

    /// The replica serving local actor `name`'s partition, if known (and not passed over).
    pub fn owner_of(self: &Arc<Self>, name: &str) -> Option<Owner> {
        let owners = self.fresh();
        let owner = owners
            .owners
            .get(&fedsx_runtime::partition::partition_of(name, owners.partitions))?;
        let avoided = owners
            .avoided
            .get(&owner.url)
            .is_some_and(|until| Instant::now() < *until);
        (!avoided).then(|| owner.clone())
    }

    /// Makes `call` for local actor `actor` on its replica when that is known, and at the
    /// configured address when it is not, did not answer (UNAVAILABLE), or `actor` is empty
    /// (a call for no one actor): for idempotent calls only.
    pub async fn routed<T, F, Fut>(self: &Arc<Self>, actor: &str, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let owner = if actor.is_empty() { None } else { self.owner_of(actor) };
        if let Some(owner) = owner {
            match call(owner.client).await {
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tracing::debug!(replica = %owner.url, error = %status.message(), "the partition's replica did not answer; calling the kernel address");
                    self.avoid(&owner.url);
                    self.refresh_soon();
                }
                answer => return answer,
            }
        }
        call(self.any()).await
    }

    /// Passes the replica at `url` over for [`AVOID`].
    fn avoid(&self, url: &str) {
        let mut owners = self.owners.write().expect("owners lock poisoned");
        owners.avoided.insert(url.to_owned(), Instant::now() + AVOID);
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
        let served = listed
            .replicas
            .iter()
            .filter(|r| !r.url.is_empty())
            .map(|r| (r.url.clone(), r.partitions.clone()))
            .collect();
        self.install(listed.partitions, served)
            .map_err(|err| tonic::Status::internal(err.to_string()))
    }

    /// Takes `served` (replica URL → its partitions, of `partitions`) as the table.
    fn install(&self, partitions: u32, served: Vec<(String, Vec<u32>)>) -> anyhow::Result<()> {
        let (known, mut avoided) = {
            let owners = self.owners.read().expect("owners lock poisoned");
            (owners.by_url.clone(), owners.avoided.clone())
        };
        let now = Instant::now();
        avoided.retain(|_, until| now < *until);
        let (mut table, mut by_url) = (HashMap::new(), HashMap::new());
        for (url, held) in served {
            let client = match known.get(&url) {
                Some(client) => client.clone(),
                None => KernelClient::new(lazy_channel("kernel replica", &url)?),
            };
            by_url.insert(url.clone(), client.clone());
            for partition in held {
                let owner = Owner {
                    url: url.clone(),
                    client: client.clone(),
                };
                table.insert(partition, owner);
            }
        }
        *self.owners.write().expect("owners lock poisoned") = Owners {
            partitions,
            owners: table,
            by_url,
            read_at: Some(now),
            avoided,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name in `partition` of 4.
    fn name_in(partition: u32) -> String {
        (0..)
            .map(|n| format!("a{n}"))
            .find(|name| fedsx_runtime::partition::partition_of(name, 4) == partition)
            .unwrap()
    }

    #[tokio::test]
    async fn an_actor_goes_to_its_partitions_replica_and_one_that_did_not_answer_is_passed_over() {
        // Nothing listens on port 1: the configured address and both replicas refuse.
        let kernels = Kernels::new(lazy_channel("--kernel", "http://127.0.0.1:1").unwrap());
        let (a, b) = ("http://127.0.0.1:2".to_owned(), "http://127.0.0.1:3".to_owned());
        kernels
            .install(4, vec![(a.clone(), vec![0, 1]), (b.clone(), vec![2, 3])])
            .unwrap();
        let owner = |partition| kernels.owner_of(&name_in(partition)).map(|o| o.url);
        assert_eq!(owner(1), Some(a.clone()));
        assert_eq!(owner(2), Some(b.clone()));

        // The owner does not answer: the call is made again at the configured address,
        // and the replica is passed over from then on (also after the table is read again).
        let tried = std::sync::Mutex::new(0);
        let answer = kernels
            .routed(&name_in(2), |mut kernel| {
                *tried.lock().unwrap() += 1;
                async move { kernel.list_replicas(ListReplicasRequest {}).await }
            })
            .await;
        assert_eq!(answer.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(*tried.lock().unwrap(), 2);
        assert_eq!(owner(2), None);
        kernels
            .install(4, vec![(a.clone(), vec![0, 1]), (b.clone(), vec![2, 3])])
            .unwrap();
        assert_eq!(owner(3), None);
        assert_eq!(owner(0), Some(a));
    }
}
