//! The kernel's ActivityPub pipeline where only the library reaches: the same address rules
//! as native peers when fetching a signer's key.

mod support;

use fedsx_activitypub::keys::ActorKey;
use fedsx_kernel::delivery::MemoryDelivery;
use fedsx_kernel::peers::PeerFetcher;
use fedsx_kernel::{ApRequest, Kernel, KernelError, Logs, NodeSecret};
use fedsx_runtime::CancellationToken;
use std::sync::Arc;
use support::{BASE, bob_url};

#[tokio::test]
async fn a_signer_on_a_private_address_is_not_fetched_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = support::log_store(dir.path(), shutdown.clone()).await;
    let kernel = loop {
        let started = Kernel::start(
            Logs::connect_lazy(&logs_url).unwrap(),
            NodeSecret::from_bytes([5; 32]),
            fedsx_kernel::NodeUrls::new(BASE, true),
            PeerFetcher::new(false),
            Arc::new(MemoryDelivery::default()),
            shutdown.child_token(),
        )
        .await;
        match started {
            Ok(kernel) => break kernel,
            Err(KernelError::LogStoreUnavailable(_)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(err) => panic!("{err}"),
        }
    };
    kernel.create_actor("bob").await.unwrap();
    let actor = "http://127.0.0.1:9/users/mallory";
    let body = serde_json::json!({
        "id": format!("{actor}/follows/1"), "type": "Follow", "actor": actor, "object": bob_url(),
    })
    .to_string();
    let key = ActorKey::generate().unwrap();
    let inbox = format!("{}/inbox", bob_url());
    let headers = fedsx_activitypub::signature::sign(
        &key,
        &format!("{actor}#main-key"),
        &inbox,
        fedsx_activitypub::CONTENT_TYPE,
        body.as_bytes(),
        std::time::SystemTime::now(),
    )
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    let request = ApRequest {
        recipient: "bob".into(),
        method: "POST".into(),
        target_uri: inbox,
        headers,
        body: body.into(),
    };
    let err = kernel.ingest_activitypub(request).await.unwrap_err();
    assert!(
        matches!(&err, KernelError::UnknownSender { reason, .. } if reason.contains("non-public address 127.0.0.1")),
        "{err}"
    );
    assert_eq!(kernel.tips("bob").await.unwrap(), (0, 0), "nothing kept");
    shutdown.cancel();
}

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
    let given = pem(&kernel);
    assert!(given.starts_with("-----BEGIN PUBLIC KEY-----"));
    kernel.matches_journal().await.unwrap().unwrap();
    drop(kernel);
    let (again, _) = support::kernel_on(&logs_url, &shutdown).await;
    assert_eq!(pem(&again), given, "the key is the journaled one after a restart");
    shutdown.cancel();
}
