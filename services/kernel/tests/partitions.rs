//! Actors spread over partitions: each actor's records go to its partition's journal, node-wide
//! records to the node journal, and the number of partitions is the node's for life.

mod support;

use fedsx_proto::kernel::v1::JournalRecord;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::logstore::v1::StreamKind;
use prost::Message;
use support::*;

/// Every record of a journal stream, decoded.
async fn records(logs: &fedsx_kernel::Logs, stream: &str) -> Vec<Record> {
    logs.read_all(stream, StreamKind::Meta, 0)
        .await
        .unwrap()
        .iter()
        .map(|entry| JournalRecord::decode(entry.data.as_ref()).unwrap().record.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_actor_is_journaled_in_its_partition_and_peers_in_the_node_journal() {
    let node = node().await;
    let kernel = &node.kernel;
    assert_eq!(kernel.partitions(), PARTITIONS);
    let names: Vec<String> = (0..24).map(|n| format!("actor{n}")).collect();
    for name in &names {
        kernel.create_actor(name).await.unwrap();
    }
    let peer = Peer::new("http://127.0.0.1:9/actors/far", 3);
    kernel.register_peer(peer.document()).await.unwrap();
    let logs = fedsx_kernel::Logs::connect_lazy(&node.logs_url).unwrap();

    let mut used = std::collections::BTreeSet::new();
    for partition in 0..PARTITIONS {
        let journal = records(&logs, &journal_of(partition)).await;
        assert!(
            matches!(&journal[0], Record::PartitionOwned(owned) if owned.partition == partition && owned.replica == kernel.replica()),
            "the replica that serves partition {partition} fenced its journal first: {:?}",
            journal[0]
        );
        for record in journal.into_iter().skip(1) {
            let Record::ActorCreated(created) = record else {
                panic!("partition {partition} holds {record:?}, not an actor's record");
            };
            assert_eq!(
                kernel.partition_of(&created.name),
                partition,
                "{} is journaled in its own partition",
                created.name
            );
            used.insert(partition);
        }
    }
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "24 actors use every one of 4 partitions"
    );
    let node_journal = records(&logs, "~kernel-node").await;
    assert!(
        matches!(&node_journal[0], Record::NodeCreated(created) if created.partitions == PARTITIONS),
        "the node journal starts with the node's creation: {node_journal:?}"
    );
    assert!(
        matches!(&node_journal[1..], [Record::PeerRegistered(registered)] if registered.document.as_ref().unwrap().id == peer.url),
        "the peer is in the node journal: {node_journal:?}"
    );
    kernel.matches_journal().await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_keeps_the_partitions_it_was_created_with() {
    let node = node().await;
    node.kernel.create_actor("alice").await.unwrap();
    node.kernel.snapshot().await.unwrap();
    node.kernel.create_actor("carol").await.unwrap();

    let restarted = node.shutdown.child_token();
    let (kernel, _) = kernel_with(&node.logs_url, &restarted, 9).await;
    assert_eq!(
        kernel.partitions(),
        PARTITIONS,
        "--partitions applies to new nodes only"
    );
    for name in ["bob", "alice", "carol"] {
        kernel.actor(name).unwrap();
    }
    kernel.matches_journal().await.unwrap().unwrap();
    restarted.cancel();

    // A new node on another log-store gets what it asks for.
    let dir = tempfile::tempdir().unwrap();
    let other = log_store(dir.path(), node.shutdown.clone()).await;
    let (fresh, _) = kernel_with(&other, &node.shutdown, 9).await;
    assert_eq!(fresh.partitions(), 9);
}
