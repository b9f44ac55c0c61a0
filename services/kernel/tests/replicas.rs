//! Kernel replicas on one log-store share the partitions: each partition is served by one
//! replica at a time, a replica that goes hands its partitions to the others, and an owner
//! whose partition was taken over is fenced at its next journal append.

mod support;

use fedsx_kernel::{Kernel, Owner, ReplicaConfig};
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{JournalRecord, PartitionOwned};
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_runtime::CancellationToken;
use prost::Message;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::*;

fn short_lease(url: &str) -> ReplicaConfig {
    ReplicaConfig {
        partitions: 8,
        url: url.to_owned(),
        lease: Duration::from_millis(600),
        ..Default::default()
    }
}

/// Waits until `done` holds, or fails after 15 s saying `what`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "not within 15 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A name of a local actor in `partition`.
fn actor_in(kernel: &Kernel, partition: u32, tag: &str) -> String {
    (0..)
        .map(|n| format!("{tag}{n}"))
        .find(|name| kernel.partition_of(name) == partition)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_split_the_partitions_and_one_takes_all_when_the_other_goes() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let first_down = shutdown.child_token();
    let (first, _) = kernel_replica(&logs_url, &first_down, short_lease("http://first")).await;
    assert_eq!(
        first.owned_partitions(),
        (0..8).collect::<Vec<_>>(),
        "alone, it serves all"
    );
    let (second, _) = kernel_replica(&logs_url, &shutdown, short_lease("http://second")).await;

    eventually("the two replicas split the 8 partitions", || {
        let (a, b) = (first.owned_partitions(), second.owned_partitions());
        let all: BTreeSet<u32> = a.iter().chain(&b).copied().collect();
        !a.is_empty() && !b.is_empty() && a.len() + b.len() == 8 && all.len() == 8
    })
    .await;
    first.next_ownership_round().await;
    second.next_ownership_round().await;

    // Each replica writes its own partitions, and is told who serves the others.
    let theirs = second.owned_partitions()[0];
    let name = actor_in(&first, theirs, "x");
    let refused = first.create_actor(&name).await.unwrap_err();
    assert!(
        refused.to_string().contains("http://second"),
        "the first replica names the one serving partition {theirs}: {refused}"
    );
    assert!(matches!(first.owner_of(&name), Owner::Elsewhere { url, .. } if url == "http://second"));
    second.create_actor(&name).await.unwrap();
    let mine = first.owned_partitions()[0];
    let other = actor_in(&first, mine, "y");
    first.create_actor(&other).await.unwrap();
    // Both states hold both actors: every replica follows every journal.
    eventually("both replicas see both actors", || {
        [&first, &second]
            .iter()
            .all(|kernel| kernel.actor(&name).is_ok() && kernel.actor(&other).is_ok())
    })
    .await;

    // Snapshots are written by the replica serving partition 0 only.
    let (writer, other) = if first.owned_partitions().contains(&0) {
        (&first, &second)
    } else {
        (&second, &first)
    };
    writer.snapshot().await.unwrap();
    let refused = other.snapshot().await.unwrap_err();
    assert!(refused.to_string().contains("partition 0"), "{refused}");

    // The first goes (its leases given up): the second serves everything.
    first_down.cancel();
    assert_eq!(first.finish(Duration::from_secs(5)).await, 0);
    eventually("the second replica serves all 8 partitions", || {
        second.owned_partitions().len() == 8
    })
    .await;
    let later = actor_in(&second, mine, "z");
    second.create_actor(&later).await.unwrap();
    second.matches_journal().await.unwrap().unwrap();
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owner_fenced_by_a_takeover_stops_writing_the_partition() {
    let node = node().await;
    let kernel = &node.kernel;
    let partition = kernel.partition_of("bob");
    let logs = fedsx_kernel::Logs::connect_lazy(&node.logs_url).unwrap();
    let stream = journal_of(partition);
    // Another replica takes the partition over behind this one's back (as after this one
    // paused past its lease): its fencing record lands at the journal's tip.
    let tip = logs.tip(&stream, StreamKind::Meta).await.unwrap();
    let record = JournalRecord {
        record: Some(Record::PartitionOwned(PartitionOwned {
            partition,
            replica: "kernel-elsewhere".into(),
            epoch: 99,
        })),
    };
    logs.append(
        &stream,
        StreamKind::Meta,
        vec![7; 32].into(),
        record.encode_to_vec().into(),
        Some(tip),
    )
    .await
    .unwrap();

    let name = actor_in(kernel, partition, "late");
    let refused = kernel.create_actor(&name).await.unwrap_err();
    assert!(
        refused.to_string().contains(&format!("partition {partition}")),
        "{refused}"
    );
    assert!(
        !kernel.owned_partitions().contains(&partition),
        "the fenced replica no longer serves partition {partition}"
    );
    let (entries, _) = logs.read(&stream, StreamKind::Meta, tip + 1, 0).await.unwrap();
    assert!(
        entries.is_empty(),
        "nothing was written after the takeover: {entries:?}"
    );
    assert!(kernel.actor(&name).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_again_under_its_id_takes_its_partitions_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let config = ReplicaConfig {
        id: Some("kernel-one".into()),
        partitions: 4,
        ..Default::default()
    };
    // The first run stays up, as a run that seems dead but is only paused would.
    let (first, _) = kernel_replica(&logs_url, &shutdown, config.clone()).await;
    first.create_actor("bob").await.unwrap();
    let started = Instant::now();
    let (second, _) = kernel_replica(&logs_url, &shutdown, config).await;
    assert_eq!(
        second.owned_partitions(),
        [0, 1, 2, 3],
        "serving at once, not after the 10 s lease"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    second.create_actor("carol").await.unwrap();
    // The first run's next journal append finds itself fenced.
    let name = actor_in(&first, first.partition_of("carol"), "dave");
    let refused = first.create_actor(&name).await.unwrap_err();
    assert!(refused.to_string().contains("partition"), "{refused}");
    assert!(second.actor(&name).is_err());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_replica_taking_a_partition_over_does_the_effects_its_owner_left() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let first_down = shutdown.child_token();
    let (first, _) = kernel_replica(&logs_url, &first_down, short_lease("http://first")).await;
    let (second, _) = kernel_replica(&logs_url, &shutdown, short_lease("http://second")).await;
    eventually("the two replicas split the partitions", || {
        !first.owned_partitions().is_empty() && !second.owned_partitions().is_empty()
    })
    .await;
    first.next_ownership_round().await;
    let partition = first.owned_partitions()[0];
    let name = actor_in(&first, partition, "owed");
    first.create_actor(&name).await.unwrap();

    // The first replica goes; what it leaves: a follower journaled, its Accept not yet
    // published (as when a replica dies between the two).
    first_down.cancel();
    assert_eq!(first.finish(Duration::from_secs(5)).await, 0);
    let follow_id = fedsx_wire::ActivityId([9; 32]);
    let record = JournalRecord {
        record: Some(Record::FollowerAdded(fedsx_proto::kernel::v1::FollowerAdded {
            actor: name.clone(),
            follower: PEER.into(),
            follow_id: follow_id.0.to_vec().into(),
        })),
    };
    let stream = journal_of(partition);
    fedsx_kernel::Logs::connect_lazy(&logs_url)
        .unwrap()
        .append_any(
            &stream,
            StreamKind::Meta,
            vec![9; 32].into(),
            record.encode_to_vec().into(),
        )
        .await
        .unwrap();

    eventually("the second replica serves the partition", || {
        second.owned_partitions().contains(&partition)
    })
    .await;
    assert_eq!(
        accepts_published(&second, &name).await,
        [follow_id.to_hex()],
        "the replica now serving the partition published the owed Accept, once"
    );
    assert_eq!(second.followers(&name, &first_page()).unwrap().0, [PEER]);
}
