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
