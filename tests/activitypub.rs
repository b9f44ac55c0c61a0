//! fed-sx against a real, independent ActivityPub server: Fedify (tests/fedify/peer.mjs)
//! on loopback beside a whole fed-sx node (`fedsx up`). Discovery, Follow both ways with
//! both signature drafts, notes both ways, Undo, Delete, and idempotence.

mod support;

use fedsx_activitypub::keys::ActorKey;
use fedsx_activitypub::signature::sign;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorListRequest, CreateActorRequest, LogKind, PublishRequest, ReadLogRequest};
use fedsx_proto::wire::v1::ActivityType;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use support::fake_peer::Answer;
use support::fedify::{FedifyPeer, FirstKnock};
use support::{Node, TestDir, eventually, free_addr};
use tonic::transport::Channel;

const SCHEDULE: &str = "200ms,400ms,800ms";

struct World {
    node: Node,
    kernel: KernelClient<Channel>,
    peer: FedifyPeer,
    _dir: TestDir,
}

async fn world(knock: FirstKnock) -> World {
    let dir = TestDir::new();
    let node = Node::start("node", &dir.join("data"), free_addr(), SCHEDULE, dir.path())
        .await
        .unwrap();
    let kernel = KernelClient::new(support::channel(&node.kernel_url()).await.unwrap());
    let peer = FedifyPeer::start(knock, dir.path()).await.unwrap();
    World {
        node,
        kernel,
        peer,
        _dir: dir,
    }
}

impl World {
    async fn create(&self, name: &str) -> String {
        let request = CreateActorRequest { name: name.into() };
        self.kernel.clone().create_actor(request).await.unwrap().into_inner().id
    }

    async fn followers(&self, name: &str) -> Vec<String> {
        let request = ActorListRequest {
            name: name.into(),
            ..Default::default()
        };
        self.kernel
            .clone()
            .followers(request)
            .await
            .unwrap()
            .into_inner()
            .actors
    }

    /// The ActivityPub activities in `name`'s inbox, as kept (`{format, signer, activity}`).
    async fn inbox(&self, name: &str) -> Vec<Value> {
        let request = ReadLogRequest {
            actor: name.into(),
            kind: LogKind::Inbox.into(),
            after: 0,
            limit: 100,
        };
        let log = self.kernel.clone().read_log(request).await.unwrap().into_inner();
        log.entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.envelope).ok())
            .collect()
    }

    async fn wait_inbox(&self, name: &str, what: &str, pick: impl Fn(&Value) -> bool + Copy) -> Value {
        eventually(
            what,
            || async move { self.inbox(name).await.into_iter().find(|e| pick(e)) },
        )
        .await
        .unwrap_or_else(|err| panic!("{err}; node log:\n{}", self.node.log_tail()))
    }

    async fn publish(&self, actor: &str, content: &str) {
        let request = PublishRequest {
            actor: actor.into(),
            r#type: ActivityType::Create.into(),
            object: String::new(),
            to: vec!["followers".into()],
            content: content.into(),
            once_key: Default::default(),
        };
        self.kernel.clone().publish(request).await.unwrap();
    }
}

fn kind_is(kind: &'static str) -> impl Fn(&Value) -> bool + Copy {
    move |a: &Value| a["type"] == kind
}

/// A Fedify actor discovers a fed-sx actor, follows it (signing with `knock` first), gets
/// the Accept, and receives its note once, verified by Fedify.
async fn follow_from_fedify(knock: FirstKnock, verified_by: &str) {
    let w = world(knock).await;
    let bob = w.create("bob").await;

    let found = w.peer.control(&format!("lookup?url={bob}"), None).await.unwrap();
    assert_eq!(found["type"], "Person", "{found:#}");
    assert_eq!(found["preferredUsername"], "bob");
    assert!(
        found["publicKey"]["publicKeyPem"]
            .as_str()
            .is_some_and(|pem| pem.starts_with("-----BEGIN PUBLIC KEY-----")),
        "{found:#}"
    );

    let follow = w.peer.control("follow", Some(json!({ "target": bob }))).await.unwrap();
    let follow_id = follow["id"].as_str().unwrap().to_owned();
    let accept = w
        .peer
        .wait_for("the Accept of its Follow", |a| {
            a["type"] == "Accept" && a["object"] == follow_id.as_str()
        })
        .await
        .unwrap();
    assert_eq!(accept["actor"], bob.as_str());
    assert_eq!(w.followers("bob").await, vec![w.peer.actor()]);
    let kept = w
        .wait_inbox("bob", "the Follow in bob's inbox", |e| {
            e["activity"]["type"] == "Follow"
        })
        .await;
    assert_eq!(kept["signer"], w.peer.actor().as_str());
    assert_eq!(
        kept["signature"], verified_by,
        "verified with the draft it signed with first"
    );

    w.publish("bob", "hello <fediverse>").await;
    let create = w
        .peer
        .wait_for("bob's note", |a| a["type"] == "Create" && a["actor"] == bob.as_str())
        .await
        .unwrap();
    let note = &create["json"]["object"];
    assert_eq!(note["content"], "<p>hello &lt;fediverse&gt;</p>", "{create:#}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let creates = w.peer.received().await.into_iter().filter(kind_is("Create")).count();
    assert_eq!(creates, 1, "the note arrives once");
    assert_discoverable(&w, &bob).await;

    // A public note, published with the CLI: to the public, cc the followers.
    let published = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["publish", "bob", "--content", "for everyone", "--public"])
        .env("FEDSX_KERNEL", w.node.kernel_url())
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let public = w
        .peer
        .wait_for("bob's public note", |a| {
            a["type"] == "Create" && a["json"]["object"]["content"] == "<p>for everyone</p>"
        })
        .await
        .unwrap();
    let note = &public["json"]["object"];
    let addressed = |field: &str| note[field].to_string();
    assert!(addressed("to").contains("Public"), "{note:#}");
    assert!(addressed("cc").contains(&format!("{bob}/followers")), "{note:#}");
}

async fn get_json(url: &str, accept: &str) -> (u16, Value) {
    let request = http::Request::get(url)
        .header("accept", accept)
        .body(bytes::Bytes::new())
        .unwrap();
    let reply = fedsx_runtime::http_client::PeerHttp::new(true, Duration::from_secs(10))
        .send(request, 1 << 20)
        .await
        .unwrap();
    (
        reply.status.as_u16(),
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
    )
}

/// What a remote server finds of `bob` (who has one follower and published an Accept and
/// one note): WebFinger, NodeInfo, the outbox and followers collections; native clients
/// still get fed-sx's document.
async fn assert_discoverable(w: &World, bob: &str) {
    const AP: &str = "application/activity+json";
    let host = w.node.url().trim_start_matches("http://").to_owned();
    let (status, jrd) = get_json(
        &format!("{}/.well-known/webfinger?resource=acct:bob@{host}", w.node.url()),
        "application/jrd+json",
    )
    .await;
    assert_eq!(status, 200, "{jrd}");
    assert_eq!(jrd["subject"], format!("acct:bob@{host}"));
    assert_eq!(jrd["links"][0]["href"], bob);
    let (status, _) = get_json(
        &format!("{}/.well-known/webfinger?resource=acct:nobody@{host}", w.node.url()),
        "application/jrd+json",
    )
    .await;
    assert_eq!(status, 404);

    let (_, links) = get_json(&format!("{}/.well-known/nodeinfo", w.node.url()), "application/json").await;
    let (status, nodeinfo) = get_json(links["links"][0]["href"].as_str().unwrap(), "application/json").await;
    assert_eq!((status, &nodeinfo["version"]), (200, &json!("2.1")));
    assert_eq!(nodeinfo["usage"]["users"]["total"], 1);
    assert_eq!(nodeinfo["protocols"], json!(["activitypub"]));

    let (_, outbox) = get_json(&format!("{bob}/outbox"), AP).await;
    assert_eq!(
        (&outbox["type"], &outbox["totalItems"]),
        (&json!("OrderedCollection"), &json!(2))
    );
    let (_, page) = get_json(outbox["first"].as_str().unwrap(), AP).await;
    let items = page["orderedItems"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the note, not the Accept: {page:#}");
    assert_eq!(items[0]["object"]["content"], "<p>hello &lt;fediverse&gt;</p>");
    let (_, followers) = get_json(&format!("{bob}/followers"), AP).await;
    assert_eq!(followers["totalItems"], 1);

    let (_, native) = get_json(bob, "application/json").await;
    assert!(
        native["public_key"].is_string(),
        "a native client gets fed-sx's document: {native}"
    );
    let (_, person) = get_json(bob, AP).await;
    assert_eq!(person["type"], "Person");
    assert_eq!(
        person["assertionMethod"][0]["id"], native["key_id"],
        "the ed25519 key served beside the RSA one"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fedify_actor_follows_with_rfc9421_signatures_and_gets_notes() {
    follow_from_fedify(FirstKnock::Rfc9421, "rfc9421").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fedify_actor_follows_with_cavage_signatures_and_gets_notes() {
    follow_from_fedify(FirstKnock::Cavage, "draft-cavage").await;
}

/// A fed-sx actor follows a Fedify actor by its URL (the kernel finds out it speaks
/// ActivityPub), gets the Accept, receives its notes and its Delete; Fedify's Undo of its
/// own Follow removes it from the followers.
#[tokio::test(flavor = "multi_thread")]
async fn a_fed_sx_actor_follows_a_fedify_actor_and_receives_what_it_posts() {
    let w = world(FirstKnock::Rfc9421).await;
    let carol = w.create("carol").await;
    let alice = w.peer.actor();
    let request = fedsx_proto::kernel::v1::FollowRequest {
        actor: "carol".into(),
        remote: alice.clone(),
    };
    let sent = w.kernel.clone().follow(request).await.unwrap().into_inner();
    eventually("carol following alice", || async {
        let request = ActorListRequest {
            name: "carol".into(),
            ..Default::default()
        };
        let following = w.kernel.clone().following(request).await.ok()?.into_inner().actors;
        (following == vec![alice.clone()]).then_some(())
    })
    .await
    .unwrap();
    let follow = w
        .peer
        .wait_for("carol's Follow", |a| {
            a["type"] == "Follow" && a["actor"] == carol.as_str()
        })
        .await
        .unwrap();
    assert_eq!(follow["object"], alice.as_str());

    let note = w
        .peer
        .control("note", Some(json!({ "content": "from fedify" })))
        .await
        .unwrap();
    let create = w
        .wait_inbox("carol", "alice's note in carol's inbox", |e| {
            e["activity"]["type"] == "Create"
        })
        .await;
    assert_eq!(create["activity"]["object"]["content"], "from fedify", "{create:#}");
    assert_eq!(create["signer"], alice.as_str());
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["log", "carol", "inbox"])
        .env("FEDSX_KERNEL", w.node.kernel_url())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.lines().any(|l| l.contains("Create")
            && l.contains("from fedify")
            && l.contains("(ActivityPub, rfc9421 signature)")),
        "fedsx log shows the ActivityPub entry: {printed}"
    );

    w.peer
        .control("delete", Some(json!({ "note": note["note"] })))
        .await
        .unwrap();
    let delete = w
        .wait_inbox("carol", "alice's Delete in carol's inbox", |e| {
            e["activity"]["type"] == "Delete"
        })
        .await;
    assert_eq!(delete["activity"]["object"]["id"], note["note"], "{delete:#}");

    // Alice follows carol back, then undoes it.
    let follow = w
        .peer
        .control("follow", Some(json!({ "target": carol })))
        .await
        .unwrap();
    eventually("alice following carol", || async {
        (w.followers("carol").await == vec![alice.clone()]).then_some(())
    })
    .await
    .unwrap();
    w.peer
        .control("unfollow", Some(json!({ "target": carol, "follow_id": follow["id"] })))
        .await
        .unwrap();
    eventually("alice's Undo taking effect", || async {
        w.followers("carol").await.is_empty().then_some(())
    })
    .await
    .unwrap();

    // Carol undoes her Follow of alice: Fedify gets an Undo of that Follow.
    let undo = PublishRequest {
        actor: "carol".into(),
        r#type: ActivityType::Undo.into(),
        object: hex::encode(&sent.id),
        to: vec![alice.clone()],
        content: String::new(),
        once_key: Default::default(),
    };
    w.kernel.clone().publish(undo).await.unwrap();
    let follow_url = format!("{carol}/activities/{}", hex::encode(&sent.id));
    w.peer
        .wait_for("carol's Undo", |a| {
            a["type"] == "Undo" && a["object"] == follow_url.as_str()
        })
        .await
        .unwrap();
}

/// An ActivityPub actor of the test's own on a fake node: its document served there, its
/// key signing what the test POSTs.
struct Mallory {
    peer: support::fake_peer::FakePeer,
    key: ActorKey,
    /// Its Ed25519 key, published as a Multikey in `assertionMethod`.
    ed25519: ed25519_dalek::SigningKey,
    url: String,
}

impl Mallory {
    async fn start(name: &str) -> Mallory {
        let peer = support::fake_peer::FakePeer::start().await;
        let key = ActorKey::generate().unwrap();
        let url = format!("{}/users/{name}", peer.base());
        let ed25519 = ed25519_dalek::SigningKey::from_bytes(&[name.len() as u8; 32]);
        let ed_key_id = format!("{url}#ed25519-key");
        let document = fedsx_activitypub::json::actor(&fedsx_activitypub::json::LocalActor {
            url: &url,
            name,
            shared_inbox: "",
            public_pem: &key.public_pem(),
            ed25519: Some((&ed_key_id, ed25519.verifying_key().to_bytes())),
        });
        peer.answer(&format!("/users/{name}"), Answer::Json(document.to_string()));
        Mallory {
            peer,
            key,
            ed25519,
            url,
        }
    }

    fn key_id(&self) -> String {
        fedsx_activitypub::json::key_id(&self.url)
    }

    fn follow(&self, n: u32, object: &str) -> Vec<u8> {
        json!({
            "@context": "https://www.w3.org/ns/activitystreams",
            "id": format!("{}/follows/{n}", self.url),
            "type": "Follow",
            "actor": self.url,
            "object": object,
        })
        .to_string()
        .into_bytes()
    }
}

/// POSTs `body` to `url` as ActivityPub, signed by `key` as `key_id` at `at` over
/// `signed_body` (the body itself unless a test wants a wrong digest).
async fn post(url: &str, body: &[u8], signature: Option<(&ActorKey, &str, SystemTime, &[u8])>) -> (u16, String) {
    let mut request = http::Request::post(url);
    match signature {
        Some((key, key_id, at, signed_body)) => {
            for (name, value) in sign(key, key_id, url, fedsx_activitypub::CONTENT_TYPE, signed_body, at) {
                request = request.header(name, value);
            }
        }
        None => request = request.header("content-type", fedsx_activitypub::CONTENT_TYPE),
    }
    let reply = fedsx_runtime::http_client::PeerHttp::new(true, Duration::from_secs(10))
        .send(request.body(bytes::Bytes::copy_from_slice(body)).unwrap(), 1 << 20)
        .await
        .unwrap();
    (reply.status.as_u16(), String::from_utf8_lossy(&reply.body).into_owned())
}

/// Every bad inbound ActivityPub request is refused with its status and writes nothing; a
/// good one is kept once however often and wherever it is posted, and its Accept goes back
/// signed by the recipient's RSA key with a fresh date.
#[tokio::test(flavor = "multi_thread")]
async fn bad_activitypub_requests_are_refused_and_a_good_one_is_kept_once() {
    let w = world(FirstKnock::Rfc9421).await;
    let bob = w.create("bob").await;
    let inbox = format!("{bob}/inbox");
    let mallory = Mallory::start("mallory").await;
    let eve = Mallory::start("eve").await;
    let now = SystemTime::now();
    let body = mallory.follow(1, &bob);
    let key_id = mallory.key_id();

    let cases: Vec<(&str, (u16, String), u16, &str)> = vec![
        ("unsigned", post(&inbox, &body, None).await, 401, "not signed"),
        (
            "signed by another key",
            post(&inbox, &body, Some((&eve.key, &key_id, now, &body))).await,
            401,
            "does not verify",
        ),
        (
            "dated two hours ago",
            post(
                &inbox,
                &body,
                Some((&mallory.key, &key_id, now - Duration::from_secs(7200), &body)),
            )
            .await,
            401,
            "outside the accepted window",
        ),
        (
            "a body its digest does not name",
            post(&inbox, &body, Some((&mallory.key, &key_id, now, b"{}"))).await,
            401,
            "does not match its digest",
        ),
        (
            "signed by a key of another actor",
            post(&inbox, &body, Some((&eve.key, &eve.key_id(), now, &body))).await,
            401,
            "is not the current key of",
        ),
        (
            "oversized",
            post(
                &inbox,
                &vec![b' '; 300 * 1024],
                Some((&mallory.key, &key_id, now, &body)),
            )
            .await,
            413,
            "over",
        ),
        (
            "not JSON",
            post(&inbox, b"hello", Some((&mallory.key, &key_id, now, b"hello"))).await,
            400,
            "not JSON",
        ),
        (
            "an id on another node",
            {
                let forged =
                    json!({"id": "http://elsewhere.example/1", "type": "Follow", "actor": mallory.url, "object": bob})
                        .to_string();
                post(
                    &inbox,
                    forged.as_bytes(),
                    Some((&mallory.key, &key_id, now, forged.as_bytes())),
                )
                .await
            },
            400,
            "not on its actor's node",
        ),
    ];
    for (what, (status, text), want, says) in cases {
        assert_eq!(status, want, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text:?} should say {says:?}");
    }
    assert!(w.inbox("bob").await.is_empty(), "nothing bad was kept");
    assert!(w.followers("bob").await.is_empty());

    for url in [&inbox, &format!("{}/inbox", w.node.url()), &inbox] {
        let (status, text) = post(url, &body, Some((&mallory.key, &key_id, SystemTime::now(), &body))).await;
        assert_eq!(status, 202, "{url}: {text}");
    }
    assert_eq!(w.inbox("bob").await.len(), 1, "one entry for one activity");
    assert_eq!(w.followers("bob").await, vec![mallory.url.clone()]);

    // RFC 9421 with the Ed25519 Multikey of the actor's assertionMethod.
    let note = json!({
        "id": format!("{}/notes/1", mallory.url), "type": "Create", "actor": mallory.url, "to": [bob],
        "object": {"id": format!("{}/notes/1/note", mallory.url), "type": "Note", "content": "signed with ed25519"},
    })
    .to_string();
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut request = http::Request::post(&inbox);
    let ed_key_id = format!("{}#ed25519-key", mallory.url);
    let sign_base = |base: &[u8]| ed25519_dalek::Signer::sign(&mallory.ed25519, base).to_bytes().to_vec();
    for (name, value) in fedsx_activitypub::signature::sign_rfc9421(
        sign_base,
        "ed25519",
        &ed_key_id,
        &inbox,
        fedsx_activitypub::CONTENT_TYPE,
        note.as_bytes(),
        created,
    ) {
        request = request.header(name, value);
    }
    let reply = fedsx_runtime::http_client::PeerHttp::new(true, Duration::from_secs(10))
        .send(request.body(bytes::Bytes::from(note)).unwrap(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    let kept = w
        .wait_inbox("bob", "the Ed25519-signed note", |e| e["activity"]["type"] == "Create")
        .await;
    assert_eq!(
        (kept["signature"].as_str(), kept["key_id"].as_str()),
        (Some("rfc9421"), Some(ed_key_id.as_str()))
    );
    // Announce and Like are kept as received.
    for (n, kind) in [(2, "Announce"), (3, "Like")] {
        let activity = json!({
            "id": format!("{}/{kind}/{n}", mallory.url), "type": kind, "actor": mallory.url,
            "object": format!("{bob}/activities/{}", "ab".repeat(32)), "to": [bob],
        })
        .to_string();
        let signature = Some((&mallory.key, key_id.as_str(), SystemTime::now(), activity.as_bytes()));
        let (status, text) = post(&inbox, activity.as_bytes(), signature).await;
        assert_eq!(status, 202, "{kind}: {text}");
    }
    let kinds: Vec<String> = w
        .inbox("bob")
        .await
        .iter()
        .map(|e| e["activity"]["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, ["Follow", "Create", "Announce", "Like"]);

    let accepts = mallory
        .peer
        .received_at_least("/users/mallory/inbox", 1, "bob's Accept")
        .await
        .unwrap();
    let accept: Value = serde_json::from_slice(&accepts[0].body).unwrap();
    assert_eq!(accept["type"], "Accept");
    assert_eq!(accept["object"]["id"], format!("{}/follows/1", mallory.url));
    let found = w.peer.control(&format!("lookup?url={bob}"), None).await.unwrap();
    let bob_key = found["publicKey"]["publicKeyPem"].as_str().unwrap();
    assert_eq!(accepts[0].content_type, fedsx_activitypub::CONTENT_TYPE);
    let signed = fedsx_activitypub::signature::Request {
        method: "POST",
        target_uri: &format!("{}/users/mallory/inbox", mallory.peer.base()),
        headers: &accepts[0].headers,
        body: &accepts[0].body,
    };
    let claim = fedsx_activitypub::signature::claim(&signed, SystemTime::now()).unwrap();
    assert_eq!(claim.key_id, format!("{bob}#main-key"));
    let key = fedsx_activitypub::keys::PeerKey::from_pem(bob_key).unwrap();
    claim
        .verify(&fedsx_activitypub::signature::VerifyKey::Rsa(key))
        .expect("the Accept is signed by bob's published key");
}

/// A node as in production (no --allow-private-peers): a signer whose actor is on a
/// loopback address is never fetched, so its POST is refused and nothing is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_signer_on_a_private_address_is_refused_by_a_production_node() {
    let dir = TestDir::new();
    let node = Node::start_strict("node", &dir.join("data"), free_addr(), SCHEDULE, dir.path())
        .await
        .unwrap();
    let kernel = KernelClient::new(support::channel(&node.kernel_url()).await.unwrap());
    let bob = kernel
        .clone()
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mallory = Mallory::start("mallory").await;
    let body = mallory.follow(1, &bob);
    let inbox = format!("{bob}/inbox");
    let signature = (&mallory.key, mallory.key_id(), SystemTime::now(), &body[..]);
    let (status, text) = post(
        &inbox,
        &body,
        Some((signature.0, &signature.1, signature.2, signature.3)),
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("non-public address 127.0.0.1"), "{text}");
    assert!(
        mallory.peer.received_anywhere().is_empty(),
        "the node never asked mallory's node"
    );
    let request = ReadLogRequest {
        actor: "bob".into(),
        kind: LogKind::Inbox.into(),
        after: 0,
        limit: 10,
    };
    let log = kernel.clone().read_log(request).await.unwrap().into_inner();
    assert_eq!(log.tip, 0, "nothing kept");
}
