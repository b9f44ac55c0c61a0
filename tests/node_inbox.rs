//! The node inbox on real nodes: followers on one node get one POST per activity through
//! it, each in their own inbox once; a node that does not advertise it (as nodes before it)
//! gets one POST per follower, and both federate with each other.

mod support;

use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorRequest, CreateActorRequest, PublishRequest, ReadLogRequest};
use fedsx_proto::wire::v1::ActivityType;
use support::{Node, TestDir, eventually, free_addr};
use tonic::transport::Channel;

const SCHEDULE: &str = "100ms,200ms,400ms,800ms,1600ms";

async fn kernel(node: &Node) -> KernelClient<Channel> {
    KernelClient::new(support::channel(&node.kernel_url()).await.unwrap())
}

async fn create(client: &mut KernelClient<Channel>, name: &str) -> String {
    let request = CreateActorRequest { name: name.into() };
    client.create_actor(request).await.unwrap().into_inner().id
}

/// The JSON document at `url` (an actor's, asked as native clients ask).
async fn get_json(url: &str) -> serde_json::Value {
    let request = http::Request::get(url).body(bytes::Bytes::new()).unwrap();
    let reply = fedsx_runtime::http_client::PeerHttp::new(true, std::time::Duration::from_secs(10))
        .send(request, 1 << 20)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{url}");
    serde_json::from_slice(&reply.body).unwrap()
}

/// POSTs answered 202 by a node's gateway on `route`.
async fn accepted_posts(node: &Node, route: &str) -> f64 {
    let labels = [
        ("http_route", route),
        ("http_request_method", "POST"),
        ("http_response_status_code", "202"),
    ];
    support::sample(
        &support::scrape(&node.url()).await,
        "http_server_request_duration_seconds_count",
        &labels,
    )
    .unwrap_or(0.0)
}

/// The contents of the Create activities in `name`'s inbox.
async fn notes_in_inbox(client: &KernelClient<Channel>, name: &str) -> Vec<String> {
    let request = ReadLogRequest {
        actor: name.into(),
        kind: fedsx_proto::kernel::v1::LogKind::Inbox.into(),
        after: 0,
        limit: 100,
    };
    let log = client.clone().read_log(request).await.unwrap().into_inner();
    log.entries
        .iter()
        .map(|e| fedsx_wire::decode(&e.envelope).unwrap())
        .filter(|r| r.kind == ActivityType::Create)
        .map(|r| r.activity.content)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn followers_on_a_node_share_one_post_and_a_node_without_it_gets_one_each() {
    let dir = TestDir::new();
    let a = Node::start("node-a", &dir.join("a"), free_addr(), SCHEDULE, dir.path())
        .await
        .unwrap();
    let b = Node::start("node-b", &dir.join("b"), free_addr(), SCHEDULE, dir.path())
        .await
        .unwrap();
    // C runs as a node from before the node inbox would: its documents advertise none.
    let c = Node::start_with_env(
        "node-c",
        &dir.join("c"),
        free_addr(),
        SCHEDULE,
        dir.path(),
        &[("FEDSX_KERNEL_NO_NODE_INBOX", "true")],
    )
    .await
    .unwrap();
    let (mut ka, mut kb, mut kc) = (kernel(&a).await, kernel(&b).await, kernel(&c).await);
    let alice = create(&mut ka, "alice").await;

    let document = get_json(&alice).await;
    assert_eq!(document["endpoints"]["shared_inbox"], format!("{}/inbox", a.url()));
    let carl_doc = create(&mut kc, "carl1").await;
    let carl = get_json(&carl_doc).await;
    assert!(carl.get("endpoints").is_none(), "C advertises no node inbox: {carl}");

    let bobs = ["bob1", "bob2", "bob3"];
    for name in bobs {
        create(&mut kb, name).await;
        support::follow_and_wait(&kb, name, &alice).await;
    }
    create(&mut kc, "carl2").await;
    for name in ["carl1", "carl2"] {
        support::follow_and_wait(&kc, name, &alice).await;
    }
    // Each Accept went to its one recipient: B through its node inbox, C to each inbox.
    assert_eq!(accepted_posts(&b, "/inbox").await, 3.0);
    assert_eq!(accepted_posts(&c, "/actors/{name}/inbox").await, 2.0);

    ka.publish(PublishRequest {
        actor: "alice".into(),
        r#type: ActivityType::Create.into(),
        object: String::new(),
        to: vec!["followers".into()],
        content: "hello followers".into(),
        once_key: Default::default(),
    })
    .await
    .unwrap();
    for (client, name) in bobs.iter().map(|n| (&kb, *n)).chain([(&kc, "carl1"), (&kc, "carl2")]) {
        let got = eventually(&format!("the note in {name}'s inbox"), || async move {
            let notes = notes_in_inbox(client, name).await;
            (!notes.is_empty()).then_some(notes)
        })
        .await
        .unwrap();
        assert_eq!(got, ["hello followers"], "{name}: exactly once");
    }
    // Give a stray second send the time to show.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        accepted_posts(&b, "/inbox").await,
        4.0,
        "one POST for the three followers on B"
    );
    assert_eq!(accepted_posts(&b, "/actors/{name}/inbox").await, 0.0);
    assert_eq!(
        accepted_posts(&c, "/actors/{name}/inbox").await,
        4.0,
        "one POST per follower on C"
    );
    assert_eq!(accepted_posts(&c, "/inbox").await, 0.0);
    for name in bobs {
        let tips = kb.tips(ActorRequest { name: name.into() }).await.unwrap().into_inner();
        assert_eq!(tips.inbox_tip, 2, "{name}: the Accept and the note");
    }
}
