//! Two whole nodes (eight processes) federating over real HTTP on loopback: discovery,
//! signed Follow and auto-Accept, notes delivered exactly once, a node stopped and restarted
//! while its peer retries, and every inbound error of the gateway.

mod support;

use bytes::Bytes;
use fedsx_proto::delivery::v1::PeerStatusRequest;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorListRequest, ActorRequest, CreateActorRequest, FollowRequest, PublishRequest};
use fedsx_proto::wire::v1::ActivityType;
use fedsx_runtime::http_client::{PeerHttp, Reply};
use std::time::Duration;
use support::{Node, TestDir, eventually, free_addr};
use tonic::transport::Channel;

/// Long enough that a node restart fits before the 6th failure dead-letters.
const SCHEDULE: &str = "200ms,400ms,800ms,1600ms,3200ms";

async fn kernel(node: &Node) -> KernelClient<Channel> {
    KernelClient::new(support::channel(&node.kernel_url()).await.unwrap())
}

fn http() -> PeerHttp {
    PeerHttp::new(true, Duration::from_secs(10))
}

async fn get(url: &str) -> Reply {
    http()
        .send(http::Request::get(url).body(Bytes::new()).unwrap(), 1 << 20)
        .await
        .unwrap()
}

async fn tips(client: &mut KernelClient<Channel>, name: &str) -> (u64, u64) {
    let tips = client
        .tips(ActorRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    (tips.inbox_tip, tips.outbox_tip)
}

async fn wait_tips(client: &KernelClient<Channel>, name: &str, want: (u64, u64)) {
    let what = format!("{name} tips {want:?}");
    eventually(&what, || {
        let mut client = client.clone();
        let name = name.to_owned();
        async move { (tips(&mut client, &name).await == want).then_some(()) }
    })
    .await
    .unwrap();
}

async fn list(client: &mut KernelClient<Channel>, name: &str, following: bool) -> Vec<String> {
    let request = ActorListRequest {
        name: name.into(),
        ..Default::default()
    };
    let answer = if following {
        client.following(request).await
    } else {
        client.followers(request).await
    };
    answer.unwrap().into_inner().actors
}

fn note(actor: &str, content: &str) -> PublishRequest {
    PublishRequest {
        actor: actor.into(),
        r#type: ActivityType::Create.into(),
        object: String::new(),
        to: vec!["followers".into()],
        content: content.into(),
        ..Default::default()
    }
}

/// The inbox entries of `name` on a node, decoded, via the gateway's outbox for the sender.
async fn outbox_contents(node: &Node, name: &str) -> Vec<String> {
    let reply = get(&format!("{}/actors/{name}/outbox", node.url())).await;
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(e["envelope"].as_str().unwrap())
                .unwrap();
            fedsx_wire::decode(&bytes).unwrap().activity.content
        })
        .collect()
}

async fn federate(preregister: bool) {
    let dir = TestDir::new();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = Node::start("node-a", &dir.join("a"), a_addr, SCHEDULE, dir.path())
        .await
        .unwrap();
    let b = Node::start("node-b", &dir.join("b"), b_addr, SCHEDULE, dir.path())
        .await
        .unwrap();
    let mut ka = kernel(&a).await;
    let mut kb = kernel(&b).await;

    // 1. Both answer GET / and their actor documents.
    let alice = ka
        .create_actor(CreateActorRequest { name: "alice".into() })
        .await
        .unwrap()
        .into_inner();
    let bob = kb
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    for (node, actor) in [(&a, &alice), (&b, &bob)] {
        let welcome: serde_json::Value = serde_json::from_slice(&get(&format!("{}/", node.url())).await.body).unwrap();
        assert_eq!(
            (welcome["software"].as_str(), welcome["base_url"].as_str()),
            (Some("fed-sx"), Some(node.url().as_str()))
        );
        let reply = get(&actor.id).await;
        assert_eq!(reply.status, 200);
        // The native document; the RSA key is in the ActivityPub one.
        let native = fedsx_proto::kernel::v1::ActorDocument {
            rsa_public_key_pem: String::new(),
            rsa_key_id: String::new(),
            ..actor.clone()
        };
        assert_eq!(fedsx_wire::document::from_json(&actor.id, &reply.body).unwrap(), native);
    }
    if preregister {
        kb.register_peer(alice.clone()).await.unwrap();
    }

    // 2. alice follows bob: Follow delivered A → B, B discovers alice, auto-accepts, the Accept
    //    comes back and A records the following.
    ka.follow(FollowRequest {
        actor: "alice".into(),
        remote: bob.id.clone(),
    })
    .await
    .unwrap();
    wait_tips(&kb, "bob", (1, 1)).await;
    assert_eq!(list(&mut kb, "bob", false).await, [alice.id.as_str()]);
    let following = eventually("alice follows bob", || {
        let mut ka = ka.clone();
        async move {
            let list = list(&mut ka, "alice", true).await;
            (!list.is_empty()).then_some(list)
        }
    })
    .await
    .unwrap();
    assert_eq!(following, [bob.id.as_str()]);
    assert_eq!(
        tips(&mut ka, "alice").await,
        (1, 1),
        "alice: the Accept in, the Follow out"
    );

    // 3. bob publishes a note: it arrives in alice's inbox exactly once.
    kb.publish(note("bob", "first note")).await.unwrap();
    wait_tips(&ka, "alice", (2, 1)).await;

    // 4. Node A goes away entirely; bob's second note waits in B's delivery queue, retried.
    let status = a.stop().await.unwrap();
    assert!(status.success(), "node A stopped cleanly; log:\n{}", a.log_tail());
    kb.publish(note("bob", "second note")).await.unwrap();
    let delivery_b = DeliveryClient::new(support::channel(&b.delivery_url()).await.unwrap());
    let retried = eventually("B retrying alice", || {
        let mut delivery_b = delivery_b.clone();
        let peer = fedsx_wire::document::origin(&alice.id).unwrap();
        async move {
            let status = delivery_b
                .peer_status(PeerStatusRequest { peer })
                .await
                .ok()?
                .into_inner();
            (status.head_attempts >= 1).then_some(status)
        }
    })
    .await
    .unwrap();
    assert_eq!(retried.pending, 1);
    assert!(!retried.last_error.is_empty());

    let a = Node::start("node-a", &dir.join("a"), a_addr, SCHEDULE, dir.path())
        .await
        .unwrap();
    let mut ka = kernel(&a).await;
    wait_tips(&ka, "alice", (3, 1)).await;
    let settled = eventually("B's queue for alice drained", || {
        let mut delivery_b = delivery_b.clone();
        let peer = fedsx_wire::document::origin(&alice.id).unwrap();
        async move {
            let status = delivery_b
                .peer_status(PeerStatusRequest { peer })
                .await
                .ok()?
                .into_inner();
            (status.pending == 0).then_some(status)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (settled.dead_letters, settled.delivered),
        (0, 3),
        "the Accept and two notes"
    );
    assert_eq!(
        tips(&mut kb, "bob").await,
        (1, 3),
        "bob: the Follow in; the Accept and two notes out"
    );
    assert_eq!(list(&mut kb, "bob", false).await, [alice.id.as_str()]);
    assert_eq!(list(&mut ka, "alice", true).await, [bob.id.as_str()]);
    assert_eq!(outbox_contents(&b, "bob").await, ["", "first note", "second note"]);
    // Exactly once: after things settle, nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tips(&mut ka, "alice").await, (3, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_follow_publish_and_survive_a_restart() {
    federate(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_with_the_peer_document_preregistered() {
    federate(true).await;
}
