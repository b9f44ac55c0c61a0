//! The kernel's ActivityPub keys where only the library reaches: actors journaled before
//! ActivityPub.

mod support;

use fedsx_kernel::{Kernel, Logs};
use fedsx_runtime::CancellationToken;

/// An actor journaled before ActivityPub (no RSA key) gets one at the next start, kept
/// across restarts.
#[tokio::test(flavor = "multi_thread")]
async fn an_actor_from_before_activitypub_gets_an_rsa_key_once() {
    use fedsx_proto::kernel::v1::journal_record::Record;
    use fedsx_proto::kernel::v1::{ActorCreated, JournalRecord};
    use fedsx_proto::logstore::v1::StreamKind;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = support::log_store(dir.path(), shutdown.clone()).await;
    let logs = Logs::connect_lazy(&logs_url).unwrap();
    let old = JournalRecord {
        record: Some(Record::ActorCreated(ActorCreated {
            name: "old".into(),
            created_ms: 1,
            ..Default::default()
        })),
    };
    loop {
        let appended = logs
            .append_any(
                "~kernel",
                StreamKind::Meta,
                vec![1; 32].into(),
                old.encode_to_vec().into(),
            )
            .await;
        if appended.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let pem = |kernel: &Kernel| kernel.actor("old").unwrap().rsa_public_key_pem;
    let (kernel, _) = support::kernel_on(&logs_url, &shutdown).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while pem(&kernel).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the old actor never got its key");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        kernel.partitions(),
        1,
        "a journal from before partitions is partition 0's"
    );
    let given = pem(&kernel);
    assert!(given.starts_with("-----BEGIN PUBLIC KEY-----"));
    kernel.matches_journal().await.unwrap().unwrap();
    drop(kernel);
    let (again, _) = support::kernel_on(&logs_url, &shutdown).await;
    assert_eq!(pem(&again), given, "the key is the journaled one after a restart");
    shutdown.cancel();
}
