//! Which kernel replica owns which partition. Every replica holds a membership lease in the
//! log-store (`kernel/replica/<id>`, data: the URL other replicas reach it at); the live
//! replicas split the partitions by rendezvous hashing, and each takes the leases of the
//! partitions that fall to it (`kernel/partition/<p>`, data: its URL). A lease lapses unless
//! renewed, so a dead replica's partitions pass to the others within the lease; a replica
//! that joins is handed its share as the others give theirs up.
//!
//! Holding the lease is not enough to write: a replica taking a partition over first
//! appends `PartitionOwned` to the partition's journal with the journal's tip as expected
//! tip, and every later append of its expects the tip its previous one left. So once the
//! new owner's record is in, a paused old owner's next append fails on the tip, and it
//! finds the record that fenced it (`append`).

mod fence;
mod rounds;
#[cfg(test)]
mod tests;

pub(crate) use rounds::{round, spawn};

use crate::error::KernelError;
use crate::logs::Logs;
use crate::partition::Journals;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a replica's leases last unless renewed (renewed every third of it).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);
const REPLICA_PREFIX: &str = "kernel/replica/";
const PARTITION_PREFIX: &str = "kernel/partition/";
/// Takeover appends tried before the round gives the partition up for now.
const TAKEOVER_ATTEMPTS: usize = 5;

/// How this replica takes part.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Names this replica as lease holder. The same id again (the replica restarted) takes
    /// its leases back at once, fencing its previous run; None: a random one, whose
    /// predecessor's leases must lapse first.
    pub id: Option<String>,
    /// The partitions of a new node (a node that exists keeps its own).
    pub partitions: u32,
    /// The gRPC URL other replicas forward calls to (empty: none can).
    pub url: String,
    pub lease: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            id: None,
            partitions: crate::partition::DEFAULT_PARTITIONS,
            url: String::new(),
            lease: DEFAULT_LEASE,
        }
    }
}

/// A partition this replica owns.
pub(crate) struct Owned {
    epoch: u64,
    /// Until when it may write, on this machine's clock: the lease's time counted from
    /// before it was asked for, less a tenth.
    valid_until: Mutex<Instant>,
    /// The partition journal's tip as this owner left it; held while appending, so appends
    /// go one at a time, each expecting the tip the last one left.
    tip: tokio::sync::Mutex<u64>,
    fenced: AtomicBool,
}

impl Owned {
    fn valid(&self) -> bool {
        !self.fenced.load(Ordering::Acquire) && *self.valid_until.lock().expect("lease lock poisoned") > Instant::now()
    }
}

/// Where a partition is served from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This replica.
    Here,
    /// Another replica, at this URL.
    Elsewhere { replica: String, url: String },
    /// Nobody right now (its owner died and the lease has not lapsed yet, or it is moving).
    Nobody,
}

/// What a replica holds of the partitions, and the leases and fencing records that say so.
/// It reads and writes only leases and the partitions' journals; what taking a partition
/// over means to the kernel is its host's ([`OwnershipHost`]).
pub(crate) struct Ownership {
    pub(crate) replica: String,
    config: ReplicaConfig,
    logs: Logs,
    /// The node's journals: a partition's is its journal stream.
    journals: Journals,
    owned: Mutex<HashMap<u32, Arc<Owned>>>,
    /// Holder and URL of each partition's lease, as last listed.
    holders: Mutex<HashMap<u32, (String, String)>>,
    /// Counts finished rounds, so a caller can wait for the next one.
    rounds: watch::Sender<u64>,
    /// How many replicas were live at the last round (this one included).
    live: std::sync::atomic::AtomicUsize,
}

fn partition_lease(partition: u32) -> String {
    format!("{PARTITION_PREFIX}{partition}")
}

/// The partition a partition lease's name is for.
fn lease_partition(name: &str) -> Option<u32> {
    name.strip_prefix(PARTITION_PREFIX)?.parse().ok()
}

/// The replica among `live` that partition `partition` falls to: the highest
/// hash of (replica, partition), so a replica coming or going moves only its share.
pub(crate) fn assigned(live: &BTreeSet<String>, partition: u32) -> Option<&str> {
    live.iter()
        .max_by_key(|replica| {
            let hash = Sha256::new()
                .chain_update(replica.as_bytes())
                .chain_update([0])
                .chain_update(partition.to_be_bytes())
                .finalize();
            u64::from_be_bytes(hash[..8].try_into().expect("eight bytes"))
        })
        .map(String::as_str)
}

impl Ownership {
    pub(crate) fn new(config: ReplicaConfig, logs: Logs, journals: &Journals) -> Result<Ownership, KernelError> {
        let replica = match &config.id {
            Some(id) => id.clone(),
            None => {
                let mut id = [0u8; 6];
                getrandom::fill(&mut id).map_err(|err| KernelError::Internal(format!("no randomness: {err}")))?;
                format!("kernel-{}", hex::encode(id))
            }
        };
        Ok(Ownership {
            replica,
            config,
            logs,
            journals: journals.clone(),
            owned: Mutex::default(),
            holders: Mutex::default(),
            rounds: watch::Sender::new(0),
            live: std::sync::atomic::AtomicUsize::new(1),
        })
    }

    /// How many partitions there are.
    fn partitions(&self) -> u32 {
        self.journals.partitions()
    }

    /// The journal stream of `partition`.
    fn journal(&self, partition: u32) -> &str {
        self.journals.stream(1 + partition as usize)
    }

    pub(crate) fn period(&self) -> Duration {
        self.config.lease / 3
    }

    /// The partition if this replica may write it now.
    pub(crate) fn owned(&self, partition: u32) -> Option<Arc<Owned>> {
        let owned = self
            .owned
            .lock()
            .expect("ownership lock poisoned")
            .get(&partition)
            .cloned();
        owned.filter(|owned| owned.valid())
    }

    /// The partitions this replica owns now, in order.
    pub(crate) fn owned_partitions(&self) -> Vec<u32> {
        let owned = self.owned.lock().expect("ownership lock poisoned");
        let mut partitions: Vec<u32> = owned.iter().filter(|(_, o)| o.valid()).map(|(p, _)| *p).collect();
        partitions.sort_unstable();
        partitions
    }

    /// Whether other replicas were live at the last round.
    pub(crate) fn alone(&self) -> bool {
        self.live.load(Ordering::Relaxed) <= 1
    }

    pub(crate) fn owner(&self, partition: u32) -> Owner {
        if self.owned(partition).is_some() {
            return Owner::Here;
        }
        match self.holders.lock().expect("holders lock poisoned").get(&partition) {
            Some((replica, url)) if *replica != self.replica => Owner::Elsewhere {
                replica: replica.clone(),
                url: url.clone(),
            },
            _ => Owner::Nobody,
        }
    }

    /// Waits for the end of the ownership round after the one running now.
    pub(crate) async fn next_round(&self) {
        let mut rounds = self.rounds.subscribe();
        let now = *rounds.borrow_and_update();
        let _ = rounds.wait_for(|round| *round >= now + 2).await;
    }

    fn lose(&self, partition: u32, why: &str) {
        if let Some(owned) = self.owned.lock().expect("ownership lock poisoned").remove(&partition) {
            owned.fenced.store(true, Ordering::Release);
            tracing::warn!(replica = %self.replica, partition, epoch = owned.epoch, why, "partition lost");
        }
    }
}

/// A replica id that stays the same across restarts of the replica serving `url` on this
/// host (two live processes cannot serve one URL on one host).
pub fn stable_id(url: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let hash = Sha256::new()
        .chain_update(host.trim().as_bytes())
        .chain_update([0])
        .chain_update(url.as_bytes())
        .finalize();
    format!("kernel-{}", hex::encode(&hash[..6]))
}

/// A live kernel replica as the leases say: its id, its URL and the partitions it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub id: String,
    pub url: String,
    pub partitions: Vec<u32>,
}

/// What taking a partition over means to the replica that does it: the ownership rounds
/// call it; the kernel is the one host.
pub(crate) trait OwnershipHost: Send + Sync + 'static {
    fn ownership(&self) -> &Ownership;

    /// Before `partition` is served here: brings what this replica knows of it up to its
    /// journal's record `journal_seq` (the fencing record just appended).
    fn catch_up(&self, partition: u32, journal_seq: u64) -> impl Future<Output = Result<(), KernelError>> + Send;

    /// `partition` is served here from now on, fenced at `journal_seq`.
    fn taken(&self, partition: u32, journal_seq: u64);
}

impl Ownership {
    /// The live replicas (by id) with the partitions each holds, and the partitions no one
    /// holds right now.
    pub(crate) async fn replicas(&self) -> Result<(Vec<ReplicaView>, Vec<u32>), KernelError> {
        let mut replicas: std::collections::BTreeMap<String, ReplicaView> = self
            .logs
            .leases(REPLICA_PREFIX)
            .await?
            .into_iter()
            .map(|lease| {
                let view = ReplicaView {
                    id: lease.holder.clone(),
                    url: String::from_utf8_lossy(&lease.data).into_owned(),
                    partitions: Vec::new(),
                };
                (lease.holder, view)
            })
            .collect();
        let mut unserved: BTreeSet<u32> = (0..self.partitions()).collect();
        for lease in self.logs.leases(PARTITION_PREFIX).await? {
            let Some(partition) = lease_partition(&lease.name) else {
                continue;
            };
            unserved.remove(&partition);
            // A holder whose membership lapsed first still holds the partition until its
            // lease lapses too.
            let view = replicas.entry(lease.holder.clone()).or_insert_with(|| ReplicaView {
                id: lease.holder.clone(),
                url: String::from_utf8_lossy(&lease.data).into_owned(),
                partitions: Vec::new(),
            });
            view.partitions.push(partition);
        }
        let mut replicas: Vec<ReplicaView> = replicas.into_values().collect();
        replicas.iter_mut().for_each(|r| r.partitions.sort_unstable());
        Ok((replicas, unserved.into_iter().collect()))
    }
}
