//! Partition ownership alone: replicas (each an `Ownership` with a host that records what
//! it was told) on one real log-store (RocksDB, in this process), without a kernel.

use super::*;
use crate::logs::Logs;
use crate::logs::testing::{LogStore, log_store};
use crate::partition::Journals;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{JournalRecord, PartitionOwned};
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_runtime::CancellationToken;

const PARTITIONS: u32 = 8;

/// A replica's host: records the catch-ups and takeovers it is told of, in order.
struct Host {
    ownership: Ownership,
    told: Mutex<Vec<(&'static str, u32, u64)>>,
}

impl OwnershipHost for Host {
    fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    async fn catch_up(&self, partition: u32, journal_seq: u64) -> Result<(), KernelError> {
        self.told.lock().unwrap().push(("catch up", partition, journal_seq));
        Ok(())
    }

    fn taken(&self, partition: u32, journal_seq: u64) {
        assert!(
            self.ownership.owned(partition).is_some(),
            "partition {partition} is served before its host is told it was taken"
        );
        self.told.lock().unwrap().push(("taken", partition, journal_seq));
    }
}

impl Host {
    fn told(&self) -> Vec<(&'static str, u32, u64)> {
        self.told.lock().unwrap().clone()
    }

    /// The partitions it was told it took, in order.
    fn taken(&self) -> Vec<u32> {
        self.told()
            .into_iter()
            .filter(|(what, ..)| *what == "taken")
            .map(|(_, p, _)| p)
            .collect()
    }
}

/// Two replicas (`kernel-a`, `kernel-b`) with leases of `lease` on a real log-store in this
/// process (RocksDB in a temp dir), until the guard is dropped.
async fn two_replicas(lease: Duration) -> (Logs, Arc<Host>, Arc<Host>, LogStore) {
    let (logs, store) = log_store().await;
    let (a, b) = (replica(&logs, "kernel-a", lease), replica(&logs, "kernel-b", lease));
    (logs, a, b, store)
}

fn replica(logs: &Logs, id: &str, lease: Duration) -> Arc<Host> {
    let config = ReplicaConfig {
        id: Some(id.to_owned()),
        partitions: PARTITIONS,
        url: format!("http://{id}.test"),
        lease,
    };
    Arc::new(Host {
        ownership: Ownership::new(config, logs.clone(), &Journals::new(PARTITIONS)).unwrap(),
        told: Mutex::default(),
    })
}

/// Partition `partition`'s journal: (seq, the replica and epoch of each fencing record; None
/// for any other record).
async fn journal(logs: &Logs, partition: u32) -> Vec<(u64, Option<(String, u64)>)> {
    let stream = Journals::new(PARTITIONS).stream(1 + partition as usize).to_owned();
    let entries = logs.read_all(&stream, StreamKind::Meta, 0).await.unwrap();
    entries
        .iter()
        .map(|entry| {
            let owned = match crate::journal::decode(entry).unwrap().record {
                Some(Record::PartitionOwned(PartitionOwned { replica, epoch, .. })) => Some((replica, epoch)),
                _ => None,
            };
            (entry.seq, owned)
        })
        .collect()
}

fn note(n: u8) -> ([u8; 32], JournalRecord) {
    let record = JournalRecord {
        record: Some(Record::PeerRegistered(Default::default())),
    };
    ([n; 32], record)
}

/// The replicas (by id) `partition` falls to among `ids`.
fn share(ids: &[&str], of: &str) -> Vec<u32> {
    let live: BTreeSet<String> = ids.iter().map(|id| id.to_string()).collect();
    (0..PARTITIONS).filter(|p| assigned(&live, *p) == Some(of)).collect()
}

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

#[tokio::test]
async fn two_replicas_split_the_partitions_each_taken_once_and_fenced_in_its_journal() {
    let (logs, a, b, _store) = two_replicas(Duration::from_secs(30)).await;

    round(&*a).await.unwrap();
    assert_eq!(
        a.ownership.owned_partitions(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "alone, it takes all"
    );
    // b's share is a's until a gives it up at its next round; then b takes it.
    round(&*b).await.unwrap();
    assert_eq!(b.ownership.owned_partitions(), Vec::<u32>::new());
    round(&*a).await.unwrap();
    round(&*b).await.unwrap();
    let (a_share, b_share) = (
        share(&["kernel-a", "kernel-b"], "kernel-a"),
        share(&["kernel-a", "kernel-b"], "kernel-b"),
    );
    assert!(
        !a_share.is_empty() && !b_share.is_empty(),
        "both have a share: {a_share:?} {b_share:?}"
    );
    assert_eq!(a.ownership.owned_partitions(), a_share);
    assert_eq!(b.ownership.owned_partitions(), b_share);
    // A renewal round takes nothing over again, and lists who holds what.
    round(&*a).await.unwrap();
    round(&*b).await.unwrap();
    assert_eq!(a.taken(), (0..PARTITIONS).collect::<Vec<_>>());
    assert_eq!(b.taken(), b_share);
    for p in 0..PARTITIONS {
        let (mine, other) = if a_share.contains(&p) { (&a, &b) } else { (&b, &a) };
        assert_eq!(mine.ownership.owner(p), Owner::Here);
        let other_id = &mine.ownership.replica;
        assert_eq!(
            other.ownership.owner(p),
            Owner::Elsewhere {
                replica: other_id.clone(),
                url: format!("http://{other_id}.test"),
            },
            "partition {p} is known to be served elsewhere"
        );
    }

    // Each takeover is a fencing record in the partition's journal, and the host caught up
    // to that record before it was told the partition was its.
    for p in &b_share {
        let records = journal(&logs, *p).await;
        assert_eq!(
            records,
            vec![(1, Some(("kernel-a".into(), 1))), (2, Some(("kernel-b".into(), 2)))],
            "partition {p}: a took it (epoch 1), then b (epoch 2)"
        );
        let told: Vec<_> = b.told().into_iter().filter(|(_, q, _)| q == p).collect();
        assert_eq!(told, vec![("catch up", *p, 2), ("taken", *p, 2)]);
    }
    let (replicas, unserved) = a.ownership.replicas().await.unwrap();
    assert_eq!(unserved, Vec::<u32>::new());
    let listed: Vec<(String, Vec<u32>)> = replicas.into_iter().map(|r| (r.id, r.partitions)).collect();
    assert_eq!(listed, vec![("kernel-a".into(), a_share), ("kernel-b".into(), b_share)]);
}

#[tokio::test]
async fn an_owner_paused_past_its_lease_is_fenced_at_its_next_append() {
    let lease = Duration::from_millis(300);
    let (logs, a, b, _store) = two_replicas(lease).await;
    round(&*a).await.unwrap();
    let (id, record) = note(1);
    let first = a.ownership.append(0, id, &record).await.unwrap();
    assert_eq!(
        (first.seq, first.appended),
        (2, true),
        "the owner writes after its fencing record"
    );

    // a stops renewing (paused); once its leases lapse, b is alone and takes everything.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    round(&*b).await.unwrap();
    assert_eq!(b.ownership.owned_partitions(), (0..PARTITIONS).collect::<Vec<_>>());
    // a wakes up believing its lease still runs (paused between its check and its write).
    let owned = a.ownership.owned.lock().unwrap().get(&0).cloned().unwrap();
    *owned.valid_until.lock().unwrap() = Instant::now() + Duration::from_secs(60);
    let (id, record) = note(2);
    let refused = a.ownership.append(0, id, &record).await.unwrap_err();
    assert!(
        matches!(&refused, KernelError::NotOwner { partition: 0, .. }),
        "the old owner's append is refused: {refused:?}"
    );
    assert!(a.ownership.owned(0).is_none(), "and it knows it lost the partition");
    assert_eq!(
        journal(&logs, 0).await,
        vec![
            (1, Some(("kernel-a".into(), 1))),
            (2, None),
            (3, Some(("kernel-b".into(), 2)))
        ],
        "nothing of a's after b's fencing record"
    );
    let (id, record) = note(3);
    assert_eq!(
        b.ownership.append(0, id, &record).await.unwrap().seq,
        4,
        "the new owner writes on"
    );
}

#[tokio::test]
async fn a_replica_that_leaves_gives_its_partitions_up_at_once() {
    // Far longer than the test: the partitions pass on only because they are given up.
    let (_logs, a, b, _store) = two_replicas(Duration::from_secs(60)).await;
    round(&*a).await.unwrap();
    round(&*b).await.unwrap();
    round(&*a).await.unwrap();
    round(&*b).await.unwrap();
    assert!(!a.ownership.owned_partitions().is_empty());

    let (tasks, leaving) = (tokio_util::task::TaskTracker::new(), CancellationToken::new());
    spawn(&a, &tasks, leaving.clone());
    leaving.cancel();
    tasks.close();
    tasks.wait().await;
    assert_eq!(
        a.ownership.owned_partitions(),
        Vec::<u32>::new(),
        "a serves nothing after it left"
    );

    round(&*b).await.unwrap();
    assert_eq!(
        b.ownership.owned_partitions(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "b took a's share at once"
    );
    let (replicas, _) = b.ownership.replicas().await.unwrap();
    assert_eq!(replicas.len(), 1, "a's membership is given up too: {replicas:?}");
}

#[tokio::test]
async fn a_replica_started_again_under_its_id_fences_its_previous_run() {
    let lease = Duration::from_secs(60);
    let (logs, before, _, _store) = two_replicas(lease).await;
    round(&*before).await.unwrap();
    let again = replica(&logs, "kernel-a", lease);
    round(&*again).await.unwrap();
    assert_eq!(
        again.ownership.owned_partitions(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "without waiting for the lease"
    );
    let (id, record) = note(1);
    assert!(matches!(
        before.ownership.append(3, id, &record).await,
        Err(KernelError::NotOwner { partition: 3, .. })
    ));
    assert_eq!(
        journal(&logs, 3).await,
        vec![(1, Some(("kernel-a".into(), 1))), (2, Some(("kernel-a".into(), 2)))],
        "the run before is fenced by the new epoch"
    );
}
