//! Every process of a node serves Prometheus text at `/metrics` on its own port, and the
//! numbers move with what the node does: requests by method and code, log-store appends,
//! delivery retries, depth, lag and deliveries, kernel ingests by outcome and signature
//! failures, flows by status.

mod support;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{CreateActorRequest, PublishRequest, StartFlowRequest};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_runtime::http_client::PeerHttp;
use std::net::SocketAddr;
use std::time::Duration;
use support::fake_peer::{Answer, FakePeer};
use support::{Node, TestDir, eventually, free_addr, sample};

fn http() -> PeerHttp {
    PeerHttp::new(true, Duration::from_secs(10))
}

async fn scrape(addr: SocketAddr) -> String {
    support::scrape(&format!("http://{addr}")).await
}

/// Waits until the sample `name{labels}` on `addr` satisfies `check`, and returns it.
async fn wait_sample(addr: SocketAddr, name: &str, labels: &[(&str, &str)], check: impl Fn(f64) -> bool + Copy) -> f64 {
    let what = format!("{name}{labels:?} on {addr}");
    let found = eventually(&what, || async move {
        sample(&scrape(addr).await, name, labels).filter(|v| check(*v))
    })
    .await;
    found.unwrap_or_else(|err| panic!("{err}; last scrape:\n{}", scrape_blocking(addr)))
}

fn scrape_blocking(addr: SocketAddr) -> String {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| rt.block_on(scrape(addr)))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_process_serves_metrics_that_move() {
    let dir = TestDir::new();
    let node = Node::start(
        "a",
        &dir.join("data"),
        free_addr(),
        "200ms,400ms,800ms,1600ms,3200ms",
        dir.path(),
    )
    .await
    .unwrap();
    let mut kernel = KernelClient::new(support::channel(&node.kernel_url()).await.unwrap());
    kernel
        .create_actor(CreateActorRequest { name: "alice".into() })
        .await
        .unwrap();

    // A peer actor whose inbox fails until told otherwise.
    let peer = FakePeer::start().await;
    let (carol, carol_inbox) = peer.actor("carol");
    let inbox_path = carol_inbox.strip_prefix(&peer.base()).unwrap().to_owned();
    peer.answer(&inbox_path, Answer::Status(500));
    let carol_key = SigningKey::from_bytes(&[9; 32]);
    let document = fedsx_wire::document::new(&carol, "carol", &carol_key.verifying_key(), "");
    kernel.register_peer(document.clone()).await.unwrap();
    let note = PublishRequest {
        actor: "alice".into(),
        r#type: ActivityType::Create.into(),
        to: vec![carol.clone()],
        content: "hello carol".into(),
        ..PublishRequest::default()
    };
    kernel.publish(note).await.unwrap();

    let destination = fedsx_wire::document::origin(&carol).unwrap();
    let peer_label = [("peer", destination.as_str())];
    wait_sample(
        node.delivery,
        "fedsx_delivery_sends_total",
        &[("outcome", "retry")],
        |v| v >= 1.0,
    )
    .await;
    wait_sample(node.delivery, "fedsx_delivery_queue_depth", &peer_label, |v| v == 1.0).await;
    wait_sample(node.delivery, "fedsx_delivery_lag_seconds", &peer_label, |v| v > 0.0).await;
    peer.answer(&inbox_path, Answer::Status(202));
    wait_sample(
        node.delivery,
        "fedsx_delivery_sends_total",
        &[("outcome", "delivered")],
        |v| v == 1.0,
    )
    .await;
    wait_sample(node.delivery, "fedsx_delivery_queue_depth", &peer_label, |v| v == 0.0).await;
    wait_sample(node.delivery, "fedsx_delivery_lag_seconds", &peer_label, |v| v == 0.0).await;

    // Inbound: one good envelope, one with a broken signature.
    let activity = Activity {
        r#type: ActivityType::Create.into(),
        actor: carol.clone(),
        seq: 1,
        to: vec![format!("{}/actors/alice", node.url())],
        published_ms: 1_767_225_600_000,
        content: "hi alice".into(),
        ..Activity::default()
    };
    let signed = fedsx_wire::sign(&activity, &carol_key, &document.key_id);
    let mut forged = signed.envelope.clone();
    let mut signature = forged.signature.to_vec();
    signature[0] ^= 1;
    forged.signature = signature.into();
    for (envelope, status) in [(signed.to_bytes(), 202), (prost::Message::encode_to_vec(&forged), 401)] {
        let request = http::Request::post(format!("{}/actors/alice/inbox", node.url()))
            .header(http::header::CONTENT_TYPE, fedsx_wire::CONTENT_TYPE)
            .body(Bytes::from(envelope))
            .unwrap();
        assert_eq!(http().send(request, 1 << 20).await.unwrap().status, status);
    }
    let kernel_addr = node.kernel;
    wait_sample(kernel_addr, "fedsx_kernel_ingests_total", &[("outcome", "new")], |v| {
        v == 1.0
    })
    .await;
    wait_sample(
        kernel_addr,
        "fedsx_kernel_ingests_total",
        &[("outcome", "bad_signature")],
        |v| v == 1.0,
    )
    .await;
    wait_sample(kernel_addr, "fedsx_kernel_signature_failures_total", &[], |v| v == 1.0).await;

    let timer = StartFlowRequest {
        name: "wait-timer".into(),
        input: r#"{"ms":600000}"#.into(),
    };
    kernel.start_flow(timer).await.unwrap();
    wait_sample(kernel_addr, "fedsx_kernel_flows", &[("status", "suspended")], |v| {
        v == 1.0
    })
    .await;

    // Calls by method and code, on every gRPC service.
    let publish = [("rpc_method", "Publish"), ("rpc_response_status_code", "OK")];
    wait_sample(kernel_addr, "rpc_server_call_duration_seconds_count", &publish, |v| {
        v == 1.0
    })
    .await;
    let ingest_refused = [
        ("rpc_method", "Ingest"),
        ("rpc_response_status_code", "UNAUTHENTICATED"),
    ];
    wait_sample(
        kernel_addr,
        "rpc_server_call_duration_seconds_count",
        &ingest_refused,
        |v| v == 1.0,
    )
    .await;
    let enqueue = [
        ("rpc_service", "fedsx.delivery.v1.Delivery"),
        ("rpc_method", "EnqueueActivities"),
    ];
    wait_sample(node.delivery, "rpc_server_call_duration_seconds_count", &enqueue, |v| {
        v >= 1.0
    })
    .await;
    let append = [("rpc_service", "fedsx.logstore.v1.LogStore"), ("rpc_method", "Append")];
    wait_sample(node.log_store, "rpc_server_call_duration_seconds_count", &append, |v| {
        v >= 4.0
    })
    .await;

    // Log-store internals.
    let appends = wait_sample(node.log_store, "fedsx_log_store_appends_total", &[], |v| v >= 4.0).await;
    wait_sample(node.log_store, "fedsx_log_store_appended_bytes_total", &[], |v| {
        v > 100.0
    })
    .await;
    wait_sample(node.log_store, "fedsx_log_store_group_commit_size_count", &[], |v| {
        v >= 1.0
    })
    .await;
    wait_sample(
        node.log_store,
        "fedsx_log_store_sync_duration_seconds_count",
        &[],
        |v| v >= 1.0,
    )
    .await;
    kernel
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap();
    wait_sample(node.log_store, "fedsx_log_store_appends_total", &[], move |v| {
        v > appends
    })
    .await;

    // The gateway, by route and status.
    let refused = [
        ("http_route", "/actors/{name}/inbox"),
        ("http_response_status_code", "401"),
    ];
    wait_sample(node.http, "http_server_request_duration_seconds_count", &refused, |v| {
        v == 1.0
    })
    .await;
}

/// Counters exist from the start, at zero, before anything happened: a dashboard's rate of
/// refusals or dead letters has a series to show from the first scrape.
#[tokio::test(flavor = "multi_thread")]
async fn counters_are_reported_at_zero_before_any_traffic() {
    let dir = TestDir::new();
    let node = Node::start("fresh", &dir.join("data"), free_addr(), "1s", dir.path())
        .await
        .unwrap();
    let kernel = scrape(node.kernel).await;
    for outcome in ["new", "duplicate", "bad_signature", "unknown_sender", "malformed"] {
        let labels = [("outcome", outcome)];
        assert_eq!(
            sample(&kernel, "fedsx_kernel_ingests_total", &labels),
            Some(0.0),
            "{outcome} in:\n{kernel}"
        );
    }
    assert_eq!(sample(&kernel, "fedsx_kernel_signature_failures_total", &[]), Some(0.0));
    let delivery = scrape(node.delivery).await;
    for outcome in ["delivered", "retry", "dead_letter"] {
        let labels = [("outcome", outcome)];
        assert_eq!(
            sample(&delivery, "fedsx_delivery_sends_total", &labels),
            Some(0.0),
            "{outcome} in:\n{delivery}"
        );
    }
    let log_store = scrape(node.log_store).await;
    assert!(
        sample(&log_store, "fedsx_log_store_appends_total", &[]).is_some(),
        "in:\n{log_store}"
    );
}
