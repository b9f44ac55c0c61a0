//! End to end: real `fedsx log-store` and `fedsx kernel` processes; peers are keys made in
//! the test, one of them discovered over HTTP from a fake peer node.

mod support;

use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{
    ActorDocument, ActorListRequest, ActorRequest, CreateActorRequest, GetActorRequest, GetPeerRequest, IngestRequest,
    PublishRequest,
};
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{ReadRequest, StreamId, StreamKind};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_wire::{ActivityId, key_id, sign};
use http_body_util::Full;
use hyper::body::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::{Service, TestDir};
use tonic::transport::Channel;

const PUBLIC_URL: &str = "http://node-b.test";

async fn start_kernel(dir: &TestDir, log_store: &Service) -> Service {
    // Nothing listens there: hand-offs fail and are retried, which these tests ignore.
    start_kernel_with(dir, log_store, "http://127.0.0.1:1").await
}

async fn start_kernel_with(dir: &TestDir, log_store: &Service, delivery: &str) -> Service {
    let secret = dir.join("node-secret");
    let args = [
        "kernel",
        "--listen",
        "127.0.0.1:0",
        "--log-store",
        &log_store.url(),
        "--delivery",
        delivery,
        "--public-url",
        PUBLIC_URL,
        "--node-secret-file",
        secret.to_str().unwrap(),
        "--allow-private-peers",
        // On port 0 every start has another address: the same id takes the partitions back
        // at once after a SIGKILL, as a replica on a fixed address does.
        "--replica-id",
        "kernel-under-test",
    ];
    Service::spawn("kernel", &args, dir.path()).await.unwrap()
}

async fn start_log_store(dir: &TestDir) -> Service {
    support::spawn_log_store(dir).await
}

/// A delivery service on a temp data dir with `extra` flags, retrying every 10 ms, allowed
/// to reach loopback peers.
async fn start_delivery_with(dir: &TestDir, extra: &[&str]) -> Service {
    support::spawn_delivery(dir, "10ms,10ms,10ms,10ms,10ms", extra).await
}

async fn kernel_client(kernel: &Service) -> KernelClient<Channel> {
    KernelClient::new(support::channel(&kernel.url()).await.unwrap())
}

struct Peer {
    key: SigningKey,
    url: String,
    seq: u64,
    prev: Option<ActivityId>,
}

impl Peer {
    fn new(url: String, seed: u8) -> Peer {
        Peer {
            key: SigningKey::from_bytes(&[seed; 32]),
            url,
            seq: 0,
            prev: None,
        }
    }

    fn document(&self) -> ActorDocument {
        fedsx_wire::document::new(&self.url, "", &self.key.verifying_key(), "")
    }

    /// The peer's next activity: a signed Follow of `target`.
    fn follow(&mut self, target: &str) -> Vec<u8> {
        self.next(ActivityType::Follow, target)
    }

    /// The peer's next activity: a signed `kind` about `target`, to it.
    fn next(&mut self, kind: ActivityType, target: &str) -> Vec<u8> {
        self.seq += 1;
        let activity = Activity {
            r#type: kind.into(),
            actor: self.url.clone(),
            seq: self.seq,
            object: target.into(),
            to: vec![target.into()],
            published_ms: 1_767_225_600_000,
            prev: self.prev.map(|id| id.0.to_vec().into()).unwrap_or_default(),
            ..Activity::default()
        };
        let signed = sign(&activity, &self.key, &key_id(&self.url, &self.key.verifying_key()));
        self.prev = Some(signed.id);
        signed.to_bytes()
    }
}

/// A fake peer node on loopback serving one actor's document at `/actors/<name>`; the
/// document can be replaced (key rotation) and requests are counted.
struct FakePeerNode {
    url: String,
    document: Arc<Mutex<Bytes>>,
    hits: Arc<AtomicUsize>,
}

impl FakePeerNode {
    /// Binds first, because the actor URL contains the port.
    async fn start(name: &str) -> FakePeerNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let path = format!("/actors/{name}");
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let document = Arc::new(Mutex::new(Bytes::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (served, counted, path) = (served.clone(), counted.clone(), path.clone());
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let response = if request.uri().path() == path {
                        hyper::Response::new(Full::new(served.lock().unwrap().clone()))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::new()))
                            .unwrap()
                    };
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::spawn(connection);
            }
        });
        FakePeerNode { url, document, hits }
    }

    /// Serves `peer`'s document from now on.
    fn serve(&self, peer: &Peer) {
        let json = serde_json::to_vec(&fedsx_wire::document::to_json(&peer.document())).unwrap();
        *self.document.lock().unwrap() = Bytes::from(json);
    }
}

async fn tips(client: &mut KernelClient<Channel>, name: &str) -> (u64, u64) {
    let tips = client
        .tips(ActorRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    (tips.inbox_tip, tips.outbox_tip)
}

async fn followers(client: &mut KernelClient<Channel>, name: &str) -> Vec<String> {
    client
        .followers(ActorListRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .actors
}

async fn outbox_activity(log_store: &Service, actor: &str, seq: u64) -> (ActivityId, Activity) {
    let mut client = LogStoreClient::new(support::channel(&log_store.url()).await.unwrap());
    let stream = Some(StreamId {
        actor: actor.into(),
        kind: StreamKind::Outbox.into(),
    });
    let page = client
        .read(ReadRequest {
            stream,
            after_seq: seq - 1,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let received = fedsx_wire::decode(&page.entries[0].data).unwrap();
    (received.id, received.activity)
}

fn note(actor: &str, content: &str) -> PublishRequest {
    PublishRequest {
        actor: actor.into(),
        r#type: ActivityType::Create.into(),
        object: String::new(),
        to: vec!["followers".into()],
        content: content.into(),
        once_key: Default::default(),
    }
}

#[tokio::test]
async fn actors_publish_ingest_discover_and_survive_a_kernel_sigkill() {
    let dir = TestDir::new();
    let log_store = start_log_store(&dir).await;
    let mut kernel = start_kernel(&dir, &log_store).await;
    let mut client = kernel_client(&kernel).await;

    let alice = client
        .create_actor(CreateActorRequest { name: "alice".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.id, format!("{PUBLIC_URL}/actors/alice"));
    assert_eq!(alice.inbox, format!("{PUBLIC_URL}/actors/alice/inbox"));
    assert_eq!(alice.public_key.len(), 32);
    let bob = client
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    let bob_url = bob.id.clone();

    // alice publishes twice: outbox tip 2, the second's prev is the first's id.
    let first = client.publish(note("alice", "one")).await.unwrap().into_inner();
    let second = client.publish(note("alice", "two")).await.unwrap().into_inner();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(tips(&mut client, "alice").await, (0, 2));
    let (second_id, second_activity) = outbox_activity(&log_store, "alice", 2).await;
    assert_eq!(&second_id.0[..], &second.id[..]);
    assert_eq!(&second_activity.prev[..], &first.id[..]);

    // A registered peer follows bob: inbox 0 → 1, outbox 0 → 1 (the Accept), follower kept.
    let mut carol = Peer::new("https://c.example/actors/carol".into(), 1);
    client.register_peer(carol.document()).await.unwrap();
    let follow = carol.follow(&bob_url);
    let ingested = client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: follow.clone().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ingested.seq, ingested.new), (1, true));
    assert_eq!(tips(&mut client, "bob").await, (1, 1));
    assert_eq!(followers(&mut client, "bob").await, [carol.url.clone()]);
    let (_, accept) = outbox_activity(&log_store, "bob", 1).await;
    assert_eq!(accept.r#type, i32::from(ActivityType::Accept));
    assert_eq!(accept.to, [carol.url.clone()]);

    // The same Follow again: same seq, not new, tips unchanged.
    let again = client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: follow.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.seq, again.new), (1, false));
    assert_eq!(tips(&mut client, "bob").await, (1, 1));

    // An unknown peer is discovered: its document is fetched from its URL.
    let dave_node = FakePeerNode::start("dave").await;
    let mut dave = Peer::new(dave_node.url.clone(), 2);
    dave_node.serve(&dave);
    let follow = dave.follow(&bob_url);
    let ingested = client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: follow.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ingested.seq, ingested.new), (2, true));
    let fetched = client
        .get_peer(GetPeerRequest { url: dave.url.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, dave.document());
    assert_eq!(tips(&mut client, "bob").await, (2, 2));

    // SIGKILL the kernel and start it again on the same log-store and secret.
    kernel.sigkill().unwrap();
    let kernel = start_kernel(&dir, &log_store).await;
    let mut client = kernel_client(&kernel).await;
    let bob_again = client
        .get_actor(GetActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob_again, bob, "same document and public key after restart");
    let mut expected = vec![carol.url.clone(), dave.url.clone()];
    expected.sort();
    assert_eq!(followers(&mut client, "bob").await, expected);
    assert_eq!(tips(&mut client, "alice").await, (0, 2));
    assert_eq!(tips(&mut client, "bob").await, (2, 2));
    let third = client.publish(note("alice", "three")).await.unwrap().into_inner();
    assert_eq!(third.seq, 3);
    let (_, third_activity) = outbox_activity(&log_store, "alice", 3).await;
    assert_eq!(
        &third_activity.prev[..],
        &second.id[..],
        "the chain continues after the restart"
    );
}

#[tokio::test]
async fn a_rotated_key_is_refetched_at_most_once() {
    let dir = TestDir::new();
    let log_store = start_log_store(&dir).await;
    let kernel = start_kernel(&dir, &log_store).await;
    let mut client = kernel_client(&kernel).await;
    let bob = client
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();

    let node = FakePeerNode::start("erin").await;
    let mut erin = Peer::new(node.url.clone(), 4);
    node.serve(&erin);
    let follow = erin.follow(&bob.id);
    client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: follow.into(),
        })
        .await
        .unwrap();
    assert_eq!(node.hits.load(Ordering::SeqCst), 1, "discovered with one fetch");

    // erin rotates her key: the new key id is unknown to the node, which refetches once.
    let mut rotated = Peer {
        key: SigningKey::from_bytes(&[5; 32]),
        url: erin.url.clone(),
        seq: erin.seq,
        prev: erin.prev,
    };
    node.serve(&rotated);
    let follow = rotated.follow(&bob.id);
    let ingested = client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: follow.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ingested.new);
    assert_eq!(node.hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        client
            .get_peer(GetPeerRequest { url: erin.url.clone() })
            .await
            .unwrap()
            .into_inner(),
        rotated.document()
    );

    // Another unknown key id right after: no second refetch, refused.
    let mut stranger = Peer {
        key: SigningKey::from_bytes(&[6; 32]),
        url: erin.url.clone(),
        seq: rotated.seq,
        prev: rotated.prev,
    };
    let follow = stranger.follow(&bob.id);
    let refused = client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: follow.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("is not the current key of"),
        "{}",
        refused.message()
    );
    assert_eq!(node.hits.load(Ordering::SeqCst), 2, "rate-limited: no third fetch");
    assert_eq!(tips(&mut client, "bob").await.0, 2, "the refused one appended nothing");
}

#[tokio::test]
async fn the_accept_and_notes_reach_the_follower_through_delivery() {
    use fedsx_proto::delivery::v1::PeerStatusRequest;
    use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;

    // Every field bound: the services and their directory live until the test ends.
    let BobAndCarol {
        _dir,
        log_store: _log_store,
        kernel: _kernel,
        mut client,
        bob,
        peer,
        carol_url,
        follow_id,
        delivery,
        carol: _,
    } = BobAndCarol::start(&[], None).await;
    let bob_key = ed25519_dalek::VerifyingKey::from_bytes(&bob.public_key[..].try_into().unwrap()).unwrap();

    let received = peer
        .received_at_least("/actors/carol/inbox", 1, "the Accept at carol's inbox")
        .await
        .unwrap();
    let accept = fedsx_wire::decode(&received[0].body).unwrap();
    accept.verify(&bob_key).unwrap();
    assert_eq!(accept.kind, ActivityType::Accept);
    assert_eq!(accept.activity.object, follow_id.to_hex());
    assert_eq!(received[0].content_type, fedsx_wire::CONTENT_TYPE);

    client.publish(note("bob", "hello carol")).await.unwrap();
    let received = peer
        .received_at_least("/actors/carol/inbox", 2, "the note at carol's inbox")
        .await
        .unwrap();
    let created = fedsx_wire::decode(&received[1].body).unwrap();
    created.verify(&bob_key).unwrap();
    assert_eq!(
        (created.kind, created.activity.content.as_str()),
        (ActivityType::Create, "hello carol")
    );

    let mut delivery_client = DeliveryClient::new(support::channel(&delivery.url()).await.unwrap());
    let status = delivery_client
        .peer_status(PeerStatusRequest {
            peer: fedsx_wire::document::origin(&carol_url).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.delivered, status.pending), (2, 0));
    assert_eq!(peer.received("/actors/carol/inbox").len(), 2, "each exactly once");
}

/// RegisterPeer refuses a document whose key is of small order (it would verify forged
/// signatures) or not canonically encoded, naming why; nothing is kept.
#[tokio::test]
async fn peers_with_weak_or_non_canonical_keys_are_refused() {
    let dir = TestDir::new();
    let log_store = start_log_store(&dir).await;
    let kernel = start_kernel(&dir, &log_store).await;
    let mut client = kernel_client(&kernel).await;
    let url = "https://w.example/actors/weak";
    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    let mut non_canonical = vec![0xffu8; 32];
    non_canonical[31] = 0x7f;
    let on_curve = (2u8..=18)
        .map(|y| {
            non_canonical[0] = 0xed + y;
            non_canonical.clone()
        })
        .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(&bytes[..].try_into().unwrap()).is_ok())
        .unwrap();
    for (key, why) in [
        (identity, "public key is of small order"),
        (on_curve, "public key is not canonically encoded"),
    ] {
        let document = ActorDocument {
            id: url.into(),
            inbox: format!("{url}/inbox"),
            key_id: format!("{url}#key"),
            public_key: key.into(),
            ..ActorDocument::default()
        };
        let status = client.register_peer(document).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }
}

/// ListActors pages as AIP-158 describes: every actor once, in name order, pages no larger
/// than asked (1000 at most), and a bad page token or size is INVALID_ARGUMENT.
#[tokio::test]
async fn list_actors_pages_through_every_actor_once() {
    use fedsx_proto::kernel::v1::ListActorsRequest;
    let dir = TestDir::new();
    let log_store = start_log_store(&dir).await;
    let kernel = start_kernel(&dir, &log_store).await;
    let mut client = kernel_client(&kernel).await;
    let mut names: Vec<String> = (0..45).map(|i| format!("actor-{i:03}")).collect();
    for name in &names {
        client
            .create_actor(CreateActorRequest { name: name.clone() })
            .await
            .unwrap();
    }
    names.sort();

    let (mut listed, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let request = ListActorsRequest {
            page_size: 20,
            page_token: token,
        };
        let page = client.list_actors(request).await.unwrap().into_inner();
        assert!(page.actors.len() <= 20);
        listed.extend(page.actors.into_iter().map(|a| a.name));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((listed, pages), (names.clone(), 3));

    let everything = client
        .list_actors(ListActorsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.actors.len(), 45, "the default page (100) holds them all");
    assert!(everything.next_page_token.is_empty());

    for (page_size, page_token) in [(-1, ""), (10, "not-a-token")] {
        let request = ListActorsRequest {
            page_size,
            page_token: page_token.into(),
        };
        let status = client.list_actors(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

/// A Publish whose signed envelope no inbox would accept is refused with the limit named,
/// and nothing is appended (it would otherwise sit at the head of the outbox for good).
#[tokio::test]
async fn a_publish_over_the_inbox_limit_is_refused_and_appends_nothing() {
    let dir = TestDir::new();
    let log_store = start_log_store(&dir).await;
    let kernel = start_kernel(&dir, &log_store).await;
    let mut client = kernel_client(&kernel).await;
    client
        .create_actor(CreateActorRequest { name: "alice".into() })
        .await
        .unwrap();
    let status = client.publish(note("alice", &"x".repeat(300_000))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("over the 262144 bytes"), "{status:?}");
    assert_eq!(tips(&mut client, "alice").await, (0, 0));
    let fits = client.publish(note("alice", &"x".repeat(200_000))).await.unwrap();
    assert_eq!(fits.into_inner().seq, 1);
}

/// Log-store, delivery (with `delivery_flags`) and kernel; local actor bob, and carol on a
/// fake peer node (answering `carol_answers` at her inbox, else 202) following him.
struct BobAndCarol {
    _dir: TestDir,
    log_store: Service,
    delivery: Service,
    kernel: Service,
    client: KernelClient<Channel>,
    bob: ActorDocument,
    peer: support::fake_peer::FakePeer,
    carol_url: String,
    carol: Peer,
    /// The id of carol's Follow of bob.
    follow_id: fedsx_wire::ActivityId,
}

impl BobAndCarol {
    async fn start(delivery_flags: &[&str], carol_answers: Option<support::fake_peer::Answer>) -> BobAndCarol {
        let dir = TestDir::new();
        let log_store = start_log_store(&dir).await;
        let delivery = start_delivery_with(&dir, delivery_flags).await;
        let kernel = start_kernel_with(&dir, &log_store, &delivery.url()).await;
        let mut client = kernel_client(&kernel).await;
        let bob = client
            .create_actor(CreateActorRequest { name: "bob".into() })
            .await
            .unwrap()
            .into_inner();
        let peer = support::fake_peer::FakePeer::start().await;
        let (carol_url, carol_inbox) = peer.actor("carol");
        if let Some(answer) = carol_answers {
            peer.answer(carol_inbox.strip_prefix(&peer.base()).unwrap(), answer);
        }
        let mut carol = Peer::new(carol_url.clone(), 7);
        client.register_peer(carol.document()).await.unwrap();
        let envelope = carol.follow(&bob.id);
        let follow_id = fedsx_wire::decode(&envelope).unwrap().id;
        let follow = IngestRequest {
            recipient: "bob".into(),
            envelope: envelope.into(),
        };
        client.ingest(follow).await.unwrap();
        BobAndCarol {
            _dir: dir,
            log_store,
            delivery,
            kernel,
            client,
            bob,
            peer,
            carol_url,
            carol,
            follow_id,
        }
    }
}

/// An activity delivery refuses for good (here: a recipient that is no URL) is skipped and
/// counted; it never holds up the followers' copy nor what the actor publishes next.
#[tokio::test]
async fn a_hand_off_refused_for_good_blocks_nothing_after_it() {
    // Every field bound: the services and their directory live until the test ends.
    let BobAndCarol {
        _dir,
        log_store,
        delivery,
        kernel,
        mut client,
        bob,
        peer,
        carol_url,
        carol: _,
        follow_id: _,
    } = BobAndCarol::start(&[], None).await;

    // Publish refuses such a recipient now; an outbox may still hold one from before.
    let refused = client
        .publish(PublishRequest {
            to: vec!["not-a-url".into()],
            ..note("bob", "zero")
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // From before: a recipient that is no URL, and a note too large for any inbox.
    let legacy = |seq: u64, to: Vec<String>, content: String| {
        let activity = Activity {
            r#type: ActivityType::Create.into(),
            actor: bob.id.clone(),
            seq,
            to,
            content,
            prev: vec![0u8; 32].into(),
            ..Activity::default()
        };
        let signed = sign(
            &activity,
            &SigningKey::from_bytes(&[1; 32]),
            &format!("{}#legacy", bob.id),
        );
        fedsx_proto::logstore::v1::NewEntry {
            id: signed.id.0.to_vec().into(),
            data: signed.to_bytes().into(),
        }
    };
    let followers = format!("{}/followers", bob.id);
    let entries = vec![
        legacy(2, vec!["not-a-url".into(), followers.clone()], "one".into()),
        legacy(3, vec![followers], "x".repeat(300 * 1024)),
    ];
    let oversized = ActivityId::from_slice(&entries[1].id).unwrap();
    let mut logs = LogStoreClient::new(support::channel(&log_store.url()).await.unwrap());
    logs.append(fedsx_proto::logstore::v1::AppendRequest {
        stream: Some(StreamId {
            actor: "bob".into(),
            kind: StreamKind::Outbox.into(),
        }),
        entries,
        // After the auto-Accept of carol's Follow.
        expected_tip: Some(1),
    })
    .await
    .unwrap();
    client.publish(note("bob", "two")).await.unwrap();
    let received = peer
        .received_at_least("/actors/carol/inbox", 3, "both notes at carol's inbox")
        .await
        .unwrap();
    let contents: Vec<String> = received[1..]
        .iter()
        .map(|r| fedsx_wire::decode(&r.body).unwrap().activity.content)
        .collect();
    assert_eq!(contents, ["one", "two"]);

    // "two" went out in the relay's first call and may arrive before the refused one was
    // handed over again as a dead letter (and counted).
    let kernel_url = kernel.url();
    support::eventually("both refused hand-offs counted", || async {
        let metrics = support::scrape(&kernel_url).await;
        (support::sample(&metrics, "fedsx_kernel_handoffs_refused_total", &[]) == Some(2.0)).then_some(())
    })
    .await
    .unwrap();
    // Both are dead letters with their reasons, where an operator looks.
    let mut deliveries = fedsx_proto::delivery::v1::delivery_client::DeliveryClient::new(
        support::channel(&delivery.url()).await.unwrap(),
    );
    let dead_letters = |peer: String| {
        let mut deliveries = deliveries.clone();
        async move {
            let request = fedsx_proto::delivery::v1::ListDeadLettersRequest {
                peer,
                ..Default::default()
            };
            deliveries
                .list_dead_letters(request)
                .await
                .unwrap()
                .into_inner()
                .dead_letters
        }
    };
    let unroutable = dead_letters("not-a-url".into()).await;
    assert_eq!(unroutable.len(), 1);
    assert_eq!(unroutable[0].last_error, "recipient is not an http(s) URL");
    let at_carol = dead_letters(fedsx_wire::document::origin(&carol_url).unwrap()).await;
    assert_eq!(at_carol.len(), 1, "{at_carol:?}");
    assert_eq!(at_carol[0].id, oversized.0.to_vec());
    assert!(
        at_carol[0].last_error.starts_with("refused by delivery: ")
            && at_carol[0].last_error.contains("envelope is 30"),
        "{:?}",
        at_carol[0].last_error
    );
    let peers = deliveries
        .list_peers(fedsx_proto::delivery::v1::ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers;
    let dead: u64 = peers.iter().map(|p| p.dead_letters).sum();
    assert_eq!(dead, 2, "{peers:?}");
}

/// A destination every send failed to for longer than `--unavailable-after` takes no new
/// deliveries (dead letters, visible), until a request from it shows it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_destination_failing_too_long_is_unavailable_until_it_is_heard_from() {
    use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
    use fedsx_proto::delivery::v1::{ListDeadLettersRequest, PeerStatusRequest};
    use support::fake_peer::Answer;

    let BobAndCarol {
        _dir,
        log_store: _log_store,
        delivery,
        kernel: _kernel,
        mut client,
        bob,
        peer,
        carol_url,
        mut carol,
        follow_id: _,
    } = BobAndCarol::start(&["--unavailable-after", "1s"], Some(Answer::Status(500))).await;
    let inbox_path = format!("{}/inbox", carol_url.strip_prefix(&peer.base()).unwrap());

    // The Accept keeps failing: past a second the destination is unavailable.
    let node = fedsx_wire::document::origin(&carol_url).unwrap();
    let deliveries = DeliveryClient::new(support::channel(&delivery.url()).await.unwrap());
    let status = |deliveries: &DeliveryClient<Channel>| {
        let (mut deliveries, node) = (deliveries.clone(), node.clone());
        async move {
            let request = PeerStatusRequest { peer: node };
            deliveries.peer_status(request).await.ok().map(|s| s.into_inner())
        }
    };
    support::eventually("carol's node unavailable", || async {
        status(&deliveries).await.filter(|s| s.unavailable)
    })
    .await
    .unwrap();
    client.publish(note("bob", "while away")).await.unwrap();
    support::eventually("the note dead-lettered at once", || {
        let (mut deliveries, node) = (deliveries.clone(), node.clone());
        async move {
            let request = ListDeadLettersRequest {
                peer: node,
                ..Default::default()
            };
            let dead = deliveries
                .list_dead_letters(request)
                .await
                .ok()?
                .into_inner()
                .dead_letters;
            dead.iter()
                .any(|d| {
                    d.attempts == 0
                        && d.last_error
                            .starts_with("destination unavailable: every send has failed since ")
                })
                .then_some(())
        }
    })
    .await
    .unwrap();

    // carol's node answers again, and a request from it arrives: it is available again.
    peer.answer(&inbox_path, Answer::Status(202));
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    client
        .ingest(IngestRequest {
            recipient: "bob".into(),
            envelope: carol.next(ActivityType::Create, &bob.id).into(),
        })
        .await
        .unwrap();
    support::eventually("carol's node available again", || async {
        status(&deliveries).await.filter(|s| !s.unavailable)
    })
    .await
    .unwrap();
    client.publish(note("bob", "back again")).await.unwrap();
    support::eventually("the next note at carol's inbox", || async {
        let got = peer.received(&inbox_path);
        got.iter()
            .any(|r| fedsx_wire::decode(&r.body).is_ok_and(|d| d.activity.content == "back again"))
            .then_some(())
    })
    .await
    .unwrap();
}
