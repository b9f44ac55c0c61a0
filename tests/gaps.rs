//! Gaps in a sender's sequence are noticed and filled: two nodes, the deliveries from A to
//! B's bob passing a proxy that drops some of them; B fetches what it missed from alice's
//! outbox on A. And a sender claiming a seq far ahead costs one record, not a fetch.

mod support;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{
    ActorRequest, CreateActorRequest, IngestRequest, ListGapsRequest, LogKind, PublishRequest, ReadLogRequest,
};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_runtime::http_client::PeerHttp;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::fake_peer::FakePeer;
use support::{Node, TestDir, eventually, free_addr};
use tonic::transport::Channel;

const SCHEDULE: &str = "100ms,100ms,100ms,100ms,100ms";

async fn kernel(node: &Node) -> KernelClient<Channel> {
    KernelClient::new(support::channel(&node.kernel_url()).await.unwrap())
}

/// Forwards POSTs to `target` (a node's gateway), except the ones whose number (counting
/// from 1) is in `drop`: those it answers 202 and forgets, as a lossy network or a broken
/// middlebox would.
async fn lossy_proxy(target: SocketAddr, drop: &'static [usize]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let posts = Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let posts = counted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let posts = posts.clone();
                    async move {
                        let n = posts.fetch_add(1, Ordering::SeqCst) + 1;
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let status = if drop.contains(&n) {
                            202
                        } else {
                            let mut forward = http::Request::post(format!("http://{target}{}", parts.uri.path()));
                            for name in ["content-type", "traceparent"] {
                                if let Some(value) = parts.headers.get(name) {
                                    forward = forward.header(name, value);
                                }
                            }
                            let reply = PeerHttp::new(true, Duration::from_secs(10))
                                .send(forward.body(body).unwrap(), 1 << 20)
                                .await;
                            reply.map_or(502, |r| r.status.as_u16())
                        };
                        let answer = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, posts)
}

/// Two nodes: alice on A, bob on B following her; A's deliveries to bob pass a proxy that
/// loses the POSTs numbered in `drop` (1 is the Accept of bob's Follow).
struct LossyPair {
    a: Node,
    b: Node,
    b_addr: SocketAddr,
    ka: KernelClient<Channel>,
    kb: KernelClient<Channel>,
    /// POSTs that reached the proxy.
    posts: Arc<AtomicUsize>,
}

async fn lossy_pair(dir: &TestDir, drop: &'static [usize]) -> LossyPair {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (proxy, posts) = lossy_proxy(b_addr, drop).await;
    let route = format!("http://{b_addr}/actors/bob=http://{proxy}");
    let a = Node::start_with_env(
        "node-a",
        &dir.join("a"),
        a_addr,
        SCHEDULE,
        dir.path(),
        &[("FEDSX_DELIVERY_PEER_URLS", route.as_str())],
    )
    .await
    .unwrap();
    let b = Node::start("node-b", &dir.join("b"), b_addr, SCHEDULE, dir.path())
        .await
        .unwrap();
    let mut ka = kernel(&a).await;
    let mut kb = kernel(&b).await;
    let alice = ka
        .create_actor(CreateActorRequest { name: "alice".into() })
        .await
        .unwrap()
        .into_inner();
    kb.create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap();
    support::follow_and_wait(&kb, "bob", &alice.id).await;
    LossyPair {
        a,
        b,
        b_addr,
        ka,
        kb,
        posts,
    }
}

/// alice's note number `n`, to her followers.
fn note(n: u32) -> PublishRequest {
    PublishRequest {
        actor: "alice".into(),
        r#type: ActivityType::Create.into(),
        to: vec!["followers".into()],
        content: format!("note {n}"),
        once_key: Default::default(),
        ..PublishRequest::default()
    }
}

/// Waits until bob's inbox holds `want` entries.
async fn wait_inbox_tip(kb: &KernelClient<Channel>, want: u64) {
    eventually(&format!("bob's inbox at {want}"), || {
        let mut kb = kb.clone();
        async move {
            let tips = kb.tips(ActorRequest { name: "bob".into() }).await.ok()?.into_inner();
            (tips.inbox_tip == want).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_lost_on_the_way_are_fetched_from_the_senders_outbox() {
    let dir = TestDir::new();
    // POSTs to bob, in order: 1 the Accept, 2..=6 notes 1..=5; notes 2 and 4 are lost.
    let pair = lossy_pair(&dir, &[3, 5]).await;
    let (mut ka, mut kb) = (pair.ka.clone(), pair.kb.clone());
    for n in 1..=5 {
        ka.publish(note(n)).await.unwrap();
    }
    // bob's inbox: the Accept and five notes, two of them fetched by B itself.
    wait_inbox_tip(&kb, 6).await;
    assert_eq!(
        pair.posts.load(Ordering::SeqCst),
        6,
        "every delivery went through the proxy once"
    );
    let inbox = kb
        .read_log(ReadLogRequest {
            actor: "bob".into(),
            kind: LogKind::Inbox.into(),
            after: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let contents: Vec<String> = inbox
        .entries
        .iter()
        .filter_map(|entry| {
            let activity = fedsx_wire::decode(&entry.envelope).ok()?.activity;
            (activity.r#type() == ActivityType::Create).then_some(activity.content)
        })
        .collect();
    let mut sorted = contents.clone();
    sorted.sort();
    assert_eq!(sorted, (1..=5).map(|n| format!("note {n}")).collect::<Vec<_>>());

    let gaps = kb.list_gaps(ListGapsRequest::default()).await.unwrap().into_inner();
    assert!(gaps.gaps.is_empty(), "every gap filled: {gaps:?}");
    let metrics = support::scrape(&pair.b.kernel_url()).await;
    let filled = support::sample(&metrics, "fedsx_kernel_gap_activities_total", &[("outcome", "filled")]);
    assert_eq!(filled, Some(2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_claiming_a_far_seq_costs_one_record_and_no_fetch() {
    let dir = TestDir::new();
    let node = Node::start("node", &dir.join("n"), free_addr(), SCHEDULE, dir.path())
        .await
        .unwrap();
    let mut client = kernel(&node).await;
    let bob = client
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    let peer = FakePeer::start().await;
    let (mallory, _) = peer.actor("mallory");
    let key = SigningKey::from_bytes(&[42; 32]);
    client
        .register_peer(fedsx_wire::document::new(&mallory, "mallory", &key.verifying_key(), ""))
        .await
        .unwrap();
    let kid = fedsx_wire::key_id(&mallory, &key.verifying_key());
    for (seq, prev) in [(1u64, vec![]), (1_000_000_000, vec![7u8; 32])] {
        let activity = Activity {
            r#type: ActivityType::Create.into(),
            actor: mallory.clone(),
            seq,
            to: vec![bob.id.clone()],
            content: format!("seq {seq}"),
            prev: prev.into(),
            ..Activity::default()
        };
        let envelope = fedsx_wire::sign(&activity, &key, &kid).to_bytes();
        client
            .ingest(IngestRequest {
                recipient: "bob".into(),
                envelope: envelope.into(),
            })
            .await
            .unwrap();
    }
    let gaps = eventually("the gap recorded", || {
        let mut client = client.clone();
        async move {
            let gaps = client
                .list_gaps(ListGapsRequest::default())
                .await
                .ok()?
                .into_inner()
                .gaps;
            (!gaps.is_empty()).then_some(gaps)
        }
    })
    .await
    .unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (gaps[0].sender.as_str(), gaps[0].first_seq, gaps[0].last_seq),
        (mallory.as_str(), 2, 999_999_999)
    );
    assert!(gaps[0].reason.contains("more than the 1000"), "{gaps:?}");
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["gaps", "--kernel", &node.kernel_url()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!("{mallory}  seq 2..=999999999  ")),
        "fedsx gaps: {listed}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        peer.received("/actors/mallory/outbox").is_empty(),
        "nothing fetched from the sender"
    );
}

/// A delivery lost just before the receiving node restarts is noticed after the restart:
/// gap tracking resumes from its snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn a_loss_just_before_a_restart_is_filled_after_it() {
    let dir = TestDir::new();
    // POSTs to bob: 1 the Accept, 2 note 1, 3 note 2 (lost), 4 note 3.
    let LossyPair {
        a: _a,
        mut b,
        b_addr,
        mut ka,
        kb,
        posts,
    } = lossy_pair(&dir, &[3]).await;
    ka.publish(note(1)).await.unwrap();
    wait_inbox_tip(&kb, 2).await;
    ka.publish(note(2)).await.unwrap();
    eventually("note 2 lost on the way", || {
        let posts = posts.clone();
        async move { (posts.load(Ordering::SeqCst) >= 3).then_some(()) }
    })
    .await
    .unwrap();

    assert!(b.stop().await.unwrap().success());
    let b = Node::start("node-b-again", &dir.join("b"), b_addr, SCHEDULE, dir.path())
        .await
        .unwrap();
    let kb = kernel(&b).await;
    ka.publish(note(3)).await.unwrap();
    wait_inbox_tip(&kb, 4).await;
    let gaps = kb
        .clone()
        .list_gaps(ListGapsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(gaps.gaps.is_empty(), "{gaps:?}");
}
