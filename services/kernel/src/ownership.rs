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

use crate::error::KernelError;
use crate::logs::AppendError;
use bytes::Bytes;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{JournalRecord, PartitionOwned};
use fedsx_proto::logstore::v1::{AppendedEntry, StreamKind};
use prost::Message;
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

pub(crate) struct Ownership {
    pub(crate) replica: String,
    config: ReplicaConfig,
    partitions: u32,
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
    pub(crate) fn new(config: ReplicaConfig, partitions: u32) -> Result<Ownership, KernelError> {
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
            partitions,
            owned: Mutex::default(),
            holders: Mutex::default(),
            rounds: watch::Sender::new(0),
            live: std::sync::atomic::AtomicUsize::new(1),
        })
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

/// One round: renews this replica's membership, works out its share of the partitions
/// among the live replicas, gives up what is no longer its share, and takes or renews the
/// leases of its share (taking a partition over appends the fencing record first).
pub(crate) async fn round(kernel: &crate::kernel::Kernel) -> Result<(), KernelError> {
    let me = &kernel.ownership;
    let (logs, lease, url) = (&kernel.logs, me.config.lease, Bytes::from(me.config.url.clone()));
    if *me.rounds.borrow() == 0 {
        // Partitions this id held in a previous run: given up and taken again, so their
        // epochs move on and that run, should it still be alive, is fenced.
        for held in logs.leases(PARTITION_PREFIX).await? {
            if held.holder == me.replica {
                logs.release_lease(&held.name, &me.replica).await?;
            }
        }
    }
    let asked = Instant::now();
    logs.acquire_lease(
        &format!("{REPLICA_PREFIX}{}", me.replica),
        &me.replica,
        lease,
        url.clone(),
    )
    .await?;
    let mut live: BTreeSet<String> = logs
        .leases(REPLICA_PREFIX)
        .await?
        .into_iter()
        .map(|lease| lease.holder)
        .collect();
    live.insert(me.replica.clone());
    let before = me.live.swap(live.len(), Ordering::Relaxed);
    if before != live.len() {
        tracing::info!(replica = %me.replica, live = live.len(), "kernel replicas live");
    }
    let share: BTreeSet<u32> = (0..me.partitions)
        .filter(|p| assigned(&live, *p) == Some(me.replica.as_str()))
        .collect();

    let given_up: Vec<u32> = {
        let owned = me.owned.lock().expect("ownership lock poisoned");
        owned.keys().filter(|p| !share.contains(p)).copied().collect()
    };
    for partition in given_up {
        hand_off(kernel, partition).await;
    }
    for &partition in &share {
        let held = logs
            .acquire_lease(&partition_lease(partition), &me.replica, lease, url.clone())
            .await?;
        if held.holder != me.replica {
            me.lose(partition, "its lease is another replica's");
            continue;
        }
        let valid_until = asked + lease - lease / 10;
        let current = me
            .owned
            .lock()
            .expect("ownership lock poisoned")
            .get(&partition)
            .cloned();
        match current {
            Some(owned) if owned.epoch == held.epoch && !owned.fenced.load(Ordering::Acquire) => {
                *owned.valid_until.lock().expect("lease lock poisoned") = valid_until;
            }
            _ => {
                if let Err(err) = take_over(kernel, partition, held.epoch, valid_until).await {
                    tracing::warn!(replica = %me.replica, partition, error = %err, "taking the partition over failed; retried next round");
                }
            }
        }
    }
    let holders = logs
        .leases(PARTITION_PREFIX)
        .await?
        .into_iter()
        .filter_map(|lease| {
            let partition = lease.name.strip_prefix(PARTITION_PREFIX)?.parse().ok()?;
            Some((
                partition,
                (lease.holder, String::from_utf8_lossy(&lease.data).into_owned()),
            ))
        })
        .collect();
    *me.holders.lock().expect("holders lock poisoned") = holders;
    me.rounds.send_modify(|round| *round += 1);
    Ok(())
}

/// Fences the partition's journal with this replica's `PartitionOwned` record, waits until
/// the state has applied the journal up to it, and starts serving the partition.
async fn take_over(
    kernel: &crate::kernel::Kernel,
    partition: u32,
    epoch: u64,
    valid_until: Instant,
) -> Result<(), KernelError> {
    let me = &kernel.ownership;
    let journal = 1 + partition as usize;
    let stream = kernel.journals.stream(journal);
    let record = JournalRecord {
        record: Some(Record::PartitionOwned(PartitionOwned {
            partition,
            replica: me.replica.clone(),
            epoch,
        })),
    };
    let id = crate::kernel::derived_id(
        "partition-owned",
        &[&partition.to_be_bytes(), me.replica.as_bytes(), &epoch.to_be_bytes()],
    );
    for _ in 0..TAKEOVER_ATTEMPTS {
        let tip = kernel.logs.tip(stream, StreamKind::Meta).await?;
        let appended = append_at(&kernel.logs, stream, &id, &record, tip).await;
        let seq = match appended {
            Ok(answer) => answer.entries.first().map_or(tip, |entry| entry.seq),
            // The previous owner wrote meanwhile (its lease had not lapsed on its clock).
            Err(AppendError::Conflict { .. }) => continue,
            Err(AppendError::Failed(err)) => return Err(err),
        };
        kernel.applied_up_to(journal, seq).await?;
        if partition == crate::flows::FLOWS_PARTITION {
            kernel.reload_flows().await?;
        }
        let owned = Arc::new(Owned {
            epoch,
            valid_until: Mutex::new(valid_until),
            tip: tokio::sync::Mutex::new(seq),
            fenced: AtomicBool::new(false),
        });
        me.owned
            .lock()
            .expect("ownership lock poisoned")
            .insert(partition, owned);
        tracing::info!(replica = %me.replica, partition, epoch, journal_seq = seq, "partition taken over");
        kernel.partition_taken(partition);
        return Ok(());
    }
    Err(KernelError::LogStoreUnavailable(format!(
        "journal {stream} kept moving while taking it over"
    )))
}

/// Appends `record` (entry id `id`) to journal `stream` if the journal's tip is `tip`.
async fn append_at(
    logs: &crate::logs::Logs,
    stream: &str,
    id: &[u8; 32],
    record: &JournalRecord,
    tip: u64,
) -> Result<fedsx_proto::logstore::v1::AppendResponse, AppendError> {
    let (id, data) = (Bytes::copy_from_slice(id), record.encode_to_vec().into());
    logs.append(stream, StreamKind::Meta, id, data, Some(tip)).await
}

/// Stops serving `partition` (after the append in flight, if any) and gives its lease up,
/// so the replica it now falls to takes it at once.
async fn hand_off(kernel: &crate::kernel::Kernel, partition: u32) {
    let me = &kernel.ownership;
    let Some(owned) = me.owned.lock().expect("ownership lock poisoned").remove(&partition) else {
        return;
    };
    let _last = owned.tip.lock().await;
    owned.fenced.store(true, Ordering::Release);
    match kernel
        .logs
        .release_lease(&partition_lease(partition), &me.replica)
        .await
    {
        Ok(_) => tracing::info!(replica = %me.replica, partition, "partition handed off"),
        Err(err) => {
            tracing::warn!(replica = %me.replica, partition, error = %err, "releasing the partition failed; it lapses")
        }
    }
}

/// Gives every lease of this replica up (at shutdown), so others take its partitions at
/// once instead of after the lease.
pub(crate) async fn release_all(kernel: &crate::kernel::Kernel) {
    let partitions: Vec<u32> = kernel
        .ownership
        .owned
        .lock()
        .expect("ownership lock poisoned")
        .keys()
        .copied()
        .collect();
    for partition in partitions {
        hand_off(kernel, partition).await;
    }
    let me = &kernel.ownership;
    let _ = kernel
        .logs
        .release_lease(&format!("{REPLICA_PREFIX}{}", me.replica), &me.replica)
        .await;
}

/// Runs a round every third of the lease until `shutdown`, then gives the leases up.
pub(crate) fn spawn(kernel: &Arc<crate::kernel::Kernel>, shutdown: fedsx_runtime::CancellationToken) {
    let weak = Arc::downgrade(kernel);
    let period = kernel.ownership.period();
    kernel.tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            let Some(kernel) = weak.upgrade() else { return };
            if let Err(err) = round(&kernel).await {
                tracing::warn!(replica = %kernel.ownership.replica, error = %err, "ownership round failed");
            }
        }
        if let Some(kernel) = weak.upgrade() {
            release_all(&kernel).await;
        }
    });
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

impl crate::kernel::Kernel {
    /// Appends `record` to partition `partition`'s journal as its owner, expecting the tip
    /// its last append left; the entry. Fails with UNAVAILABLE when this replica does not
    /// own the partition, or finds it was fenced by a newer owner.
    pub(crate) async fn append_owned(
        &self,
        partition: u32,
        id: [u8; 32],
        record: &JournalRecord,
    ) -> Result<AppendedEntry, KernelError> {
        let me = &self.ownership;
        let not_owner = || KernelError::NotOwner {
            partition,
            owner: me.owner(partition),
        };
        let owned = me.owned(partition).ok_or_else(not_owner)?;
        let stream = self.journals.stream(1 + partition as usize);
        let mut tip = owned.tip.lock().await;
        loop {
            if !owned.valid() {
                return Err(not_owner());
            }
            let appended = append_at(&self.logs, stream, &id, record, *tip).await;
            match appended {
                Ok(answer) => {
                    let entry = answer.entries.first().cloned().ok_or_else(|| {
                        KernelError::Internal("the log-store answered an append with no entry".into())
                    })?;
                    if entry.appended {
                        *tip = entry.seq;
                    }
                    return Ok(entry);
                }
                Err(AppendError::Conflict { tip: now }) => {
                    // Only this owner appends, so what lies after its tip is its own (an
                    // answer lost) — unless another replica took the partition over.
                    let mut fenced_by = None;
                    self.logs
                        .each_after(stream, StreamKind::Meta, *tip, |entry| {
                            if let Some(Record::PartitionOwned(taken)) = crate::journal::decode(&entry)?.record
                                && (taken.replica != me.replica || taken.epoch != owned.epoch)
                            {
                                fenced_by = Some(taken.replica);
                            }
                            Ok(())
                        })
                        .await?;
                    if let Some(replica) = fenced_by {
                        me.lose(partition, &format!("fenced by {replica}"));
                        return Err(not_owner());
                    }
                    *tip = now;
                }
                Err(AppendError::Failed(err)) => return Err(err),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_replicas_and_a_leaving_one_moves_only_its_share() {
        let three: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
        let owners: Vec<&str> = (0..64).map(|p| assigned(&three, p).unwrap()).collect();
        for replica in ["a", "b", "c"] {
            let share = owners.iter().filter(|o| **o == replica).count();
            assert!((10..=32).contains(&share), "{replica} has {share} of 64");
        }
        let two: BTreeSet<String> = ["a", "b"].map(String::from).into();
        for (p, owner) in owners.iter().enumerate() {
            let now = assigned(&two, p as u32).unwrap();
            if *owner != "c" {
                assert_eq!(now, *owner, "partition {p} stays where it was");
            }
        }
        assert_eq!(assigned(&BTreeSet::new(), 0), None);
    }
}
