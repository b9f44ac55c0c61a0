//! The ownership rounds: membership renewed, shares worked out, partitions taken over
//! (fenced first), handed off and, at shutdown, given up.

use super::{Owned, OwnershipHost, PARTITION_PREFIX, REPLICA_PREFIX, TAKEOVER_ATTEMPTS, assigned, partition_lease};
use crate::error::KernelError;
use crate::logs::AppendError;
use bytes::Bytes;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{JournalRecord, PartitionOwned};
use fedsx_proto::logstore::v1::StreamKind;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One round: renews this replica's membership, works out its share of the partitions
/// among the live replicas, gives up what is no longer its share, and takes or renews the
/// leases of its share (taking a partition over appends the fencing record first).
pub(crate) async fn round(host: &impl OwnershipHost) -> Result<(), KernelError> {
    let me = host.ownership();
    let (logs, lease, url) = (&me.logs, me.config.lease, Bytes::from(me.config.url.clone()));
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
    let share: BTreeSet<u32> = (0..me.partitions())
        .filter(|p| assigned(&live, *p) == Some(me.replica.as_str()))
        .collect();

    let given_up: Vec<u32> = {
        let owned = me.owned.lock().expect("ownership lock poisoned");
        owned.keys().filter(|p| !share.contains(p)).copied().collect()
    };
    for partition in given_up {
        hand_off(me, partition).await;
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
                if let Err(err) = take_over(host, partition, held.epoch, valid_until).await {
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
            let partition = super::lease_partition(&lease.name)?;
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
    host: &impl OwnershipHost,
    partition: u32,
    epoch: u64,
    valid_until: Instant,
) -> Result<(), KernelError> {
    let me = host.ownership();
    let stream = me.journal(partition);
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
        let tip = me.logs.tip(stream, StreamKind::Meta).await?;
        let appended = super::fence::append_at(&me.logs, stream, &id, &record, tip).await;
        let seq = match appended {
            Ok(answer) => answer.entries.first().map_or(tip, |entry| entry.seq),
            // The previous owner wrote meanwhile (its lease had not lapsed on its clock).
            Err(AppendError::Conflict { .. }) => continue,
            Err(AppendError::Failed(err)) => return Err(err),
        };
        host.catch_up(partition, seq).await?;
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
        host.taken(partition, seq);
        return Ok(());
    }
    Err(KernelError::LogStoreUnavailable(format!(
        "journal {stream} kept moving while taking it over"
    )))
}

/// Stops serving `partition` (after the append in flight, if any) and gives its lease up,
/// so the replica it now falls to takes it at once.
async fn hand_off(me: &super::Ownership, partition: u32) {
    let Some(owned) = me.owned.lock().expect("ownership lock poisoned").remove(&partition) else {
        return;
    };
    let _last = owned.tip.lock().await;
    owned.fenced.store(true, Ordering::Release);
    match me.logs.release_lease(&partition_lease(partition), &me.replica).await {
        Ok(_) => tracing::info!(replica = %me.replica, partition, "partition handed off"),
        Err(err) => {
            tracing::warn!(replica = %me.replica, partition, error = %err, "releasing the partition failed; it lapses")
        }
    }
}

/// Gives every lease of this replica up (at shutdown), so others take its partitions at
/// once instead of after the lease.
async fn release_all(me: &super::Ownership) {
    let partitions: Vec<u32> = me
        .owned
        .lock()
        .expect("ownership lock poisoned")
        .keys()
        .copied()
        .collect();
    for partition in partitions {
        hand_off(me, partition).await;
    }
    let _ = me
        .logs
        .release_lease(&format!("{REPLICA_PREFIX}{}", me.replica), &me.replica)
        .await;
}

/// Runs a round every third of the lease until `shutdown`, then gives the leases up.
pub(crate) fn spawn<H: OwnershipHost>(
    host: &Arc<H>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: fedsx_runtime::CancellationToken,
) {
    let weak = Arc::downgrade(host);
    let period = host.ownership().period();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            let Some(host) = weak.upgrade() else { return };
            if let Err(err) = round(&*host).await {
                tracing::warn!(replica = %host.ownership().replica, error = %err, "ownership round failed");
            }
        }
        if let Some(host) = weak.upgrade() {
            release_all(host.ownership()).await;
        }
    });
}
