//! One actor with 2,000 followers on 20 fake destination nodes — 16 fast and 2 slow ones
//! with a node inbox, one without (as nodes before it; some of its recipients answer 410
//! Gone), and one that refuses every connection — publishes a note and then undoes it, on a
//! real node. Every live recipient gets each once, in order; a node with a node inbox gets one
//! request per activity; the dead node's work ends in dead letters; the 410 recipients are
//! no longer followers.

mod support;

use ed25519_dalek::SigningKey;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{ListDeadLettersRequest, PeerStatusRequest};
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorListRequest, CreateActorRequest, IngestRequest, PublishRequest};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;
use support::fake_peer::{Answer, FakePeer};
use support::{Node, TestDir, eventually, free_addr};
use tonic::transport::Channel;

/// Fast retries: the dead node's deliveries are dead letters after four attempts.
const SCHEDULE: &str = "50ms,50ms,50ms";

/// What a fake node received and accepted: (path, activity type, content) per POST, in
/// arrival order.
type Log = Vec<(String, ActivityType, String)>;

struct FakeNode {
    base: String,
    /// Whether its actors' documents advertise its node inbox.
    shared: bool,
    /// None: nothing listens (a dead node).
    peer: Option<FakePeer>,
    /// Inbox paths answered 410 Gone.
    gone: Mutex<BTreeSet<String>>,
}

impl FakeNode {
    async fn start(shared: bool, delay: Duration) -> FakeNode {
        let peer = FakePeer::start_slow(delay).await;
        FakeNode {
            base: peer.base(),
            shared,
            peer: Some(peer),
            gone: Mutex::default(),
        }
    }

    fn dead() -> FakeNode {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        FakeNode {
            base: format!("http://{addr}"),
            shared: true,
            peer: None,
            gone: Mutex::default(),
        }
    }

    /// From now on, `paths` answer 410 Gone.
    fn refuse_as_gone(&self, paths: &[String]) {
        let peer = self.peer.as_ref().expect("a live node");
        for path in paths {
            peer.answer(path, Answer::Status(410));
        }
        self.gone.lock().unwrap().extend(paths.iter().cloned());
    }

    /// What it accepted (not what it answered 410).
    fn log(&self) -> Log {
        let Some(peer) = &self.peer else { return Log::new() };
        let gone = self.gone.lock().unwrap();
        peer.received_anywhere()
            .into_iter()
            .filter(|r| !gone.contains(&r.path))
            .map(|r| {
                let received = fedsx_wire::decode(&r.body).unwrap();
                (r.path, received.kind, received.activity.content)
            })
            .collect()
    }

    fn clear(&self) {
        if let Some(peer) = &self.peer {
            peer.clear();
        }
    }
}

/// Follower `i` on `node`: its document and a signed Follow of `star`.
fn follower(i: usize, node: &FakeNode, star: &str) -> (fedsx_proto::kernel::v1::ActorDocument, Vec<u8>) {
    let key = SigningKey::from_bytes(&std::array::from_fn(|b| (i * 13 + b * 7) as u8 ^ (i >> 8) as u8));
    let url = format!("{}/actors/f{i}", node.base);
    let shared = if node.shared {
        format!("{}/inbox", node.base)
    } else {
        String::new()
    };
    let document = fedsx_wire::document::new(&url, "f", &key.verifying_key(), &shared);
    let follow = Activity {
        r#type: ActivityType::Follow.into(),
        actor: url.clone(),
        seq: 1,
        object: star.to_owned(),
        to: vec![star.to_owned()],
        ..Activity::default()
    };
    let signed = fedsx_wire::sign(&follow, &key, &document.key_id);
    (document, signed.to_bytes())
}

async fn followers(kernel: &KernelClient<Channel>) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    let mut token = String::new();
    loop {
        let request = ActorListRequest {
            name: "star".into(),
            page_size: 1000,
            page_token: token,
        };
        let page = kernel.clone().followers(request).await.unwrap().into_inner();
        all.extend(page.actors);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_per_node_in_order_with_slow_dead_and_gone_destinations() {
    let dir = TestDir::new();
    let node = Node::start("node", &dir.join("n"), free_addr(), SCHEDULE, dir.path())
        .await
        .unwrap();
    let kernel = KernelClient::new(support::channel(&node.kernel_url()).await.unwrap());
    let star = kernel
        .clone()
        .create_actor(CreateActorRequest { name: "star".into() })
        .await
        .unwrap()
        .into_inner()
        .id;

    // (node, followers on it)
    let mut nodes: Vec<(FakeNode, usize)> = Vec::new();
    for _ in 0..16 {
        nodes.push((FakeNode::start(true, Duration::ZERO).await, 115));
    }
    for _ in 0..2 {
        nodes.push((FakeNode::start(true, Duration::from_millis(300)).await, 70));
    }
    nodes.push((FakeNode::start(false, Duration::ZERO).await, 15));
    nodes.push((FakeNode::dead(), 5));
    assert_eq!(nodes.iter().map(|(_, n)| n).sum::<usize>(), 2000);

    let mut i = 0;
    let mut follows = tokio::task::JoinSet::new();
    for (fake, count) in &nodes {
        for _ in 0..*count {
            let (document, follow) = follower(i, fake, &star);
            let mut kernel = kernel.clone();
            follows.spawn(async move {
                kernel.register_peer(document).await.unwrap();
                let request = IngestRequest {
                    recipient: "star".into(),
                    envelope: follow.into(),
                };
                kernel.ingest(request).await.unwrap();
            });
            i += 1;
            while follows.len() >= 16 {
                follows.join_next().await.unwrap().unwrap();
            }
        }
    }
    while let Some(done) = follows.join_next().await {
        done.unwrap();
    }
    assert_eq!(followers(&kernel).await.len(), 2000);
    // The Accepts reached every live node (one request each).
    let live_followers = 2000 - 5;
    eventually("every Accept at its node", || async {
        let arrived: usize = nodes.iter().map(|(f, _)| f.log().len()).sum();
        (arrived == live_followers).then_some(())
    })
    .await
    .unwrap();
    for (fake, _) in &nodes {
        fake.clear();
    }
    // From now on, five of the node-without-inbox's recipients are gone.
    let legacy = &nodes[18].0;
    let gone: Vec<String> = (0..5).map(|k| format!("/actors/f{}/inbox", 1980 + k)).collect();
    legacy.refuse_as_gone(&gone);

    let mut publisher = kernel.clone();
    let note = publisher
        .publish(PublishRequest {
            actor: "star".into(),
            r#type: ActivityType::Create.into(),
            object: String::new(),
            to: vec!["followers".into()],
            content: "hello, everyone".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    publisher
        .publish(PublishRequest {
            actor: "star".into(),
            r#type: ActivityType::Undo.into(),
            object: hex::encode(&note.id),
            to: vec!["followers".into()],
            content: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Every node with a node inbox: one request per activity, the Create first.
    let in_order = [ActivityType::Create, ActivityType::Undo];
    for (fake, _) in nodes.iter().filter(|(f, _)| f.shared).take(18) {
        let log = eventually(&format!("both activities at {}", fake.base), || async {
            let log = fake.log();
            (log.len() >= 2).then_some(log)
        })
        .await
        .unwrap();
        let kinds: Vec<ActivityType> = log.iter().map(|(_, kind, _)| *kind).collect();
        assert_eq!(kinds, in_order, "{}: one request each, in order", fake.base);
        assert!(log.iter().all(|(path, _, _)| path == "/inbox"));
    }
    // The node without one: each live recipient's inbox once per activity, in order.
    let per_inbox = eventually("both activities at each live inbox of the old node", || async {
        let mut per_inbox: BTreeMap<String, Vec<ActivityType>> = BTreeMap::new();
        for (path, kind, _) in legacy.log() {
            per_inbox.entry(path).or_default().push(kind);
        }
        (per_inbox.len() == 10 && per_inbox.values().all(|k| k.len() >= 2)).then_some(per_inbox)
    })
    .await
    .unwrap();
    for (path, kinds) in &per_inbox {
        assert_eq!(kinds, &in_order, "{path}");
        assert!(!gone.contains(path));
    }

    // The dead node: its deliveries end in dead letters after the schedule.
    let mut deliveries = DeliveryClient::new(support::channel(&node.delivery_url()).await.unwrap());
    let dead_node = nodes[19].0.base.clone();
    let status = eventually("the dead node's work dead-lettered", || {
        let (mut deliveries, peer) = (deliveries.clone(), dead_node.clone());
        async move {
            let status = deliveries
                .peer_status(PeerStatusRequest { peer })
                .await
                .ok()?
                .into_inner();
            (status.pending == 0 && status.dead_letters == 7).then_some(status)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        status.delivered, 0,
        "five Accepts, the Create and the Undo: all dead letters"
    );
    let letters = deliveries
        .list_dead_letters(ListDeadLettersRequest {
            peer: dead_node,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert!(letters.iter().all(|d| d.attempts == 4), "{letters:?}");

    // The five recipients that answered 410 are no longer followers.
    let gone_urls: BTreeSet<String> = (0..5)
        .map(|k| format!("{}/actors/f{}", legacy.base, 1980 + k))
        .collect();
    let left = eventually("the gone recipients removed from the followers", || async {
        let left = followers(&kernel).await;
        left.is_disjoint(&gone_urls).then_some(left)
    })
    .await
    .unwrap();
    assert_eq!(left.len(), 1995);
    let metrics = support::scrape(&node.kernel_url()).await;
    assert_eq!(
        support::sample(&metrics, "fedsx_kernel_followers_gone_total", &[]),
        Some(5.0)
    );
    // The follower list's history shows every addition and the five removals with why.
    let history = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["actor", "history", "star", "--json"])
        .env("FEDSX_KERNEL", node.kernel_url())
        .output()
        .unwrap();
    assert!(history.status.success(), "{}", String::from_utf8_lossy(&history.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.iter().filter(|e| e["added"] == true).count(), 2000);
    let removed: Vec<&serde_json::Value> = events.iter().filter(|e| e["added"] == false).collect();
    let removed_urls: BTreeSet<String> = removed
        .iter()
        .map(|e| e["follower"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(removed_urls, gone_urls);
    assert!(
        removed.iter().all(|e| e["reason"].as_str().unwrap().contains("410")),
        "{removed:?}"
    );
}
