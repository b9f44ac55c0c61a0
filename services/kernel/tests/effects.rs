//! Effects run after apply and are not lost with the process: a record whose effect was
//! owed when the kernel stopped (the follower journaled, its Accept not yet published) has
//! its effect done by the next start — once — and a retried call does it too.

mod support;

use fedsx_kernel::{Kernel, Logs, ReplicaConfig};
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{FollowerAdded, JournalRecord};
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::ActivityType;
use fedsx_runtime::CancellationToken;
use fedsx_wire::ActivityId;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn replica() -> ReplicaConfig {
    ReplicaConfig {
        id: Some("only".into()),
        partitions: PARTITIONS,
        ..Default::default()
    }
}

async fn stop(kernel: Arc<Kernel>, shutdown: CancellationToken) {
    shutdown.cancel();
    assert_eq!(kernel.finish(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_effect_owed_when_the_kernel_stopped_is_done_by_the_next_start_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = CancellationToken::new();
    let _stop_store = store.clone().drop_guard();
    let logs_url = log_store(dir.path(), store.clone()).await;
    let first = store.child_token();
    let (kernel, _) = kernel_replica(&logs_url, &first, replica()).await;
    kernel.create_actor("bob").await.unwrap();
    stop(kernel, first).await;

    // What a kernel killed between applying the record and publishing its Accept leaves.
    let follow_id = ActivityId([7; 32]);
    let record = JournalRecord {
        record: Some(Record::FollowerAdded(FollowerAdded {
            actor: "bob".into(),
            follower: PEER.into(),
            follow_id: follow_id.0.to_vec().into(),
        })),
    };
    let logs = Logs::connect_lazy(&logs_url).unwrap();
    logs.append_any(
        &journal_of(fedsx_kernel::partition_of("bob", PARTITIONS)),
        StreamKind::Meta,
        bytes::Bytes::from_static(b"follower-then-killed"),
        record.encode_to_vec().into(),
    )
    .await
    .unwrap();

    let second = store.child_token();
    let (kernel, _) = kernel_replica(&logs_url, &second, replica()).await;
    assert_eq!(kernel.followers("bob", &first_page()).unwrap().0, [PEER]);
    assert_eq!(
        accepts_published(&kernel, "bob").await,
        [follow_id.to_hex()],
        "the owed Accept was published by the next start"
    );
    stop(kernel, second).await;

    // A further start runs the record's effect again (it is after the newest snapshot):
    // still one Accept.
    let third = store.child_token();
    let (kernel, _) = kernel_replica(&logs_url, &third, replica()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        accepts(&kernel, "bob").await,
        [follow_id.to_hex()],
        "published once, however often run"
    );
    assert_eq!(kernel.matches_journal().await.unwrap(), Ok(()));
    stop(kernel, third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follow_is_answered_once_its_accept_is_published_and_a_retry_publishes_no_second() {
    let node = node().await;
    let mut peer = Peer::new(PEER, 1);
    node.kernel.register_peer(peer.document()).await.unwrap();
    let (follow_id, follow) = peer.signed(ActivityType::Follow, &bob_url());
    node.kernel.ingest("bob", &follow).await.unwrap();
    assert_eq!(
        accepts(&node.kernel, "bob").await,
        [follow_id.to_hex()],
        "the Accept is in the outbox when the ingest answers"
    );
    let again = node.kernel.ingest("bob", &follow).await.unwrap();
    assert!(!again.new);
    assert_eq!(accepts(&node.kernel, "bob").await, [follow_id.to_hex()]);
}
