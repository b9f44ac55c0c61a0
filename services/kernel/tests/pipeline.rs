//! The kernel library against a real log-store (in-process, real RocksDB) with the
//! in-memory delivery port: publishing, the inbound pipeline with every refusal, follows,
//! and a restart.

mod support;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_kernel::{Draft, Logs};
use fedsx_proto::wire::v1::{Activity, ActivityType, SignedEnvelope};
use fedsx_runtime::CancellationToken;
use fedsx_runtime::error::ServiceError;
use fedsx_wire::{ActivityId, key_id, sign};
use prost::Message;
use support::*;
use tonic::Code;
#[tokio::test]
async fn publishing_chains_the_outbox() {
    let node = node().await;
    let first = node
        .kernel
        .publish(draft("bob", ActivityType::Create, &[], "one"))
        .await
        .unwrap();
    let second = node
        .kernel
        .publish(draft("bob", ActivityType::Create, &[], "two"))
        .await
        .unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(tips(&node).await, (0, 2));

    let logs = Logs::connect_lazy(&node.logs_url).unwrap();
    let (entries, _) = logs
        .read("bob", fedsx_proto::logstore::v1::StreamKind::Outbox, 0, 10)
        .await
        .unwrap();
    let envelope = SignedEnvelope::decode(entries[1].data.as_ref()).unwrap();
    let activity = Activity::decode(envelope.activity.as_ref()).unwrap();
    assert_eq!(
        activity.prev.as_ref(),
        &first.id.0[..],
        "the second activity's prev is the first's id"
    );
    assert_eq!(activity.seq, 2);
    assert_eq!(ActivityId::of(&envelope.activity), second.id);
    // It verifies with bob's published key.
    let received = fedsx_wire::decode(&entries[1].data).unwrap();
    let bob = node.kernel.actor("bob").unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bob.public_key.as_ref().try_into().unwrap()).unwrap();
    received.verify(&key).unwrap();
}

#[tokio::test]
async fn concurrent_publishes_never_share_a_seq() {
    let node = node().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let kernel = node.kernel.clone();
        tasks.push(tokio::spawn(async move {
            kernel
                .publish(draft("bob", ActivityType::Create, &[], &i.to_string()))
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_follow_is_recorded_and_auto_accepted_once() {
    let node = node().await;
    let mut alice = Peer::new(PEER, 1);
    node.kernel.register_peer(alice.document()).await.unwrap();

    let (follow_id, envelope) = alice.signed(ActivityType::Follow, &bob_url());
    let first = node.kernel.ingest("bob", &envelope).await.unwrap();
    assert_eq!((first.seq, first.new, first.id), (1, true, follow_id));
    assert_eq!(tips(&node).await, (1, 1), "inbox has the Follow, outbox the Accept");
    assert_eq!(node.kernel.followers("bob", &first_page()).unwrap().0, [PEER]);

    // The Accept goes to alice's inbox, naming the Follow.
    let handoffs = wait_for_handoffs(&node, 1).await;
    assert_eq!(handoffs[0].peer, PEER_NODE);
    assert_eq!(handoffs[0].inbox_url, "", "alice's document advertises no node inbox");
    assert_eq!(handoffs[0].recipients[..], [(PEER.to_owned(), format!("{PEER}/inbox"))]);
    assert_eq!(handoffs[0].sender, bob_url());
    let accept = fedsx_wire::decode(&handoffs[0].envelope).unwrap();
    assert_eq!(accept.kind, ActivityType::Accept);
    assert_eq!(accept.activity.object, follow_id.to_hex());

    let again = node.kernel.ingest("bob", &envelope).await.unwrap();
    assert_eq!((again.seq, again.new), (1, false));
    assert_eq!(tips(&node).await, (1, 1), "no second append, no second Accept");

    // Undo of that Follow removes the follower.
    let (_, undo) = alice.signed(ActivityType::Undo, &follow_id.to_hex());
    node.kernel.ingest("bob", &undo).await.unwrap();
    assert!(node.kernel.followers("bob", &first_page()).unwrap().0.is_empty());
}

async fn wait_for_handoffs(node: &Node, n: usize) -> Vec<fedsx_kernel::delivery::Handoff> {
    for _ in 0..500 {
        let handoffs = node.delivery.handoffs();
        if handoffs.len() >= n {
            return handoffs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("expected {n} hand-offs, got {:?}", node.delivery.handoffs());
}

#[tokio::test]
async fn followers_receive_what_is_published_to_them() {
    let node = node().await;
    let mut alice = Peer::new(PEER, 1);
    node.kernel.register_peer(alice.document()).await.unwrap();
    let (_, follow) = alice.signed(ActivityType::Follow, &bob_url());
    node.kernel.ingest("bob", &follow).await.unwrap();
    let note = node
        .kernel
        .publish(draft("bob", ActivityType::Create, &["followers"], "hi"))
        .await
        .unwrap();
    let handoffs = wait_for_handoffs(&node, 2).await;
    let to_alice: Vec<_> = handoffs.iter().filter(|h| h.id == note.id).collect();
    assert_eq!(to_alice.len(), 1);
    assert_eq!(to_alice[0].recipients[..], [(PEER.to_owned(), format!("{PEER}/inbox"))]);
}

#[tokio::test]
async fn a_node_is_reported_up_to_delivery_once_per_interval_also_when_delivery_is_down() {
    let node = node().await;
    node.delivery
        .fail_revives
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut alice = Peer::new(PEER, 1);
    node.kernel.register_peer(alice.document()).await.unwrap();
    for n in 0..5 {
        let (_, create) = alice.signed(ActivityType::Create, &format!("note {n}"));
        node.kernel.ingest("bob", &create).await.unwrap();
        // Each failed call is over before the next request arrives.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Five requests within seconds of each other: one call, though it failed (a call per
    // request would hammer a delivery service that is down).
    assert_eq!(node.delivery.revives(), [PEER_NODE]);
}

#[tokio::test]
async fn an_accept_of_our_follow_records_the_following() {
    let node = node().await;
    let mut alice = Peer::new(PEER, 1);
    node.kernel.register_peer(alice.document()).await.unwrap();
    let follow = node.kernel.follow("bob", PEER).await.unwrap();
    assert!(
        node.kernel.following("bob", &first_page()).unwrap().0.is_empty(),
        "not before the Accept"
    );
    let handoffs = wait_for_handoffs(&node, 1).await;
    assert_eq!(handoffs[0].id, follow.id);

    let (_, accept) = alice.signed(ActivityType::Accept, &follow.id.to_hex());
    node.kernel.ingest("bob", &accept).await.unwrap();
    assert_eq!(node.kernel.following("bob", &first_page()).unwrap().0, [PEER]);
}

fn code_of(err: fedsx_kernel::KernelError) -> (Code, String) {
    let status = err.to_status();
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn every_bad_envelope_is_refused_with_its_own_code_and_appends_nothing() {
    let node = node().await;
    let mut alice = Peer::new(PEER, 1);
    node.kernel.register_peer(alice.document()).await.unwrap();
    let mallory = Peer::new("https://m.example/actors/mallory", 9);
    node.kernel.register_peer(mallory.document()).await.unwrap();

    let good = alice.activity(ActivityType::Create, "");
    let alice_kid = key_id(PEER, &alice.key.verifying_key());
    let envelope = |activity: &Activity, key: &SigningKey, kid: &str| sign(activity, key, kid).to_bytes();

    let mut tampered = SignedEnvelope::decode(&envelope(&good, &alice.key, &alice_kid)[..]).unwrap();
    tampered.activity = Activity {
        content: "changed".into(),
        ..good.clone()
    }
    .encode_to_vec()
    .into();
    let mut short_sig = SignedEnvelope::decode(&envelope(&good, &alice.key, &alice_kid)[..]).unwrap();
    short_sig.signature = vec![0; 12].into();
    let mut non_canonical = SignedEnvelope::decode(&envelope(&good, &alice.key, &alice_kid)[..]).unwrap();
    let mut sig = non_canonical.signature.to_vec();
    // S + L: the same signature, non-canonically encoded.
    let l = hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010").unwrap();
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
        sig[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    non_canonical.signature = sig.into();

    let unknown = Peer::new("http://127.0.0.1:1/actors/ghost", 3);
    let ghost_activity = Activity {
        actor: unknown.url.clone(),
        ..good.clone()
    };

    let cases: Vec<(&str, Vec<u8>, &str, Code)> = vec![
        (
            "malformed envelope",
            vec![0xff, 0xff, 0xff],
            "bob",
            Code::InvalidArgument,
        ),
        (
            "malformed activity",
            SignedEnvelope {
                activity: vec![0xff, 0x01].into(),
                signature: vec![0; 64].into(),
                key_id: alice_kid.clone(),
            }
            .encode_to_vec(),
            "bob",
            Code::InvalidArgument,
        ),
        (
            "missing type",
            envelope(
                &Activity {
                    r#type: 0,
                    ..good.clone()
                },
                &alice.key,
                &alice_kid,
            ),
            "bob",
            Code::InvalidArgument,
        ),
        (
            "missing key id",
            envelope(&good, &alice.key, ""),
            "bob",
            Code::InvalidArgument,
        ),
        (
            "seq 0",
            envelope(&Activity { seq: 0, ..good.clone() }, &alice.key, &alice_kid),
            "bob",
            Code::InvalidArgument,
        ),
        (
            "forged actor (alice's key id, mallory's signature)",
            envelope(&good, &mallory.key, &alice_kid),
            "bob",
            Code::Unauthenticated,
        ),
        (
            "key id of another actor",
            envelope(&good, &mallory.key, &key_id(&mallory.url, &mallory.key.verifying_key())),
            "bob",
            Code::Unauthenticated,
        ),
        ("tampered", tampered.encode_to_vec(), "bob", Code::Unauthenticated),
        (
            "short signature",
            short_sig.encode_to_vec(),
            "bob",
            Code::InvalidArgument,
        ),
        (
            "non-canonical signature",
            non_canonical.encode_to_vec(),
            "bob",
            Code::Unauthenticated,
        ),
        (
            "unknown recipient",
            envelope(&good, &alice.key, &alice_kid),
            "carol",
            Code::NotFound,
        ),
        (
            "unknown sender, document unfetchable",
            envelope(
                &ghost_activity,
                &unknown.key,
                &key_id(&unknown.url, &unknown.key.verifying_key()),
            ),
            "bob",
            Code::Unauthenticated,
        ),
        (
            "oversized",
            vec![0u8; fedsx_wire::MAX_ENVELOPE_BYTES + 1],
            "bob",
            Code::ResourceExhausted,
        ),
    ];
    for (what, bytes, recipient, expected) in cases {
        let (code, message) = code_of(node.kernel.ingest(recipient, &bytes).await.unwrap_err());
        assert_eq!(code, expected, "{what}: {message}");
        assert!(!message.is_empty(), "{what} says why");
    }
    assert_eq!(tips(&node).await, (0, 0), "nothing appended by any refusal");
}

#[tokio::test]
async fn a_restart_keeps_actors_keys_followers_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let first = CancellationToken::new();
    let (kernel, _) = kernel_on(&logs_url, &first).await;
    let bob = kernel.create_actor("bob").await.unwrap();
    let mut alice = Peer::new(PEER, 1);
    kernel.register_peer(alice.document()).await.unwrap();
    let (_, follow) = alice.signed(ActivityType::Follow, &bob_url());
    kernel.ingest("bob", &follow).await.unwrap();
    let before = kernel
        .publish(draft("bob", ActivityType::Create, &["followers"], "before"))
        .await
        .unwrap();
    first.cancel();
    assert_eq!(kernel.finish(std::time::Duration::from_secs(5)).await, 0);
    drop(kernel);

    let (kernel, delivery) = kernel_on(&logs_url, &shutdown).await;
    assert_eq!(kernel.actor("bob").unwrap(), bob, "same document, same public key");
    assert_eq!(kernel.followers("bob", &first_page()).unwrap().0, [PEER]);
    assert_eq!(kernel.peer(PEER).unwrap(), alice.document());
    assert_eq!(kernel.tips("bob").await.unwrap(), (1, 2));
    let after = kernel
        .publish(draft("bob", ActivityType::Create, &["followers"], "after"))
        .await
        .unwrap();
    assert_eq!(after.seq, 3);
    let logs = Logs::connect_lazy(&logs_url).unwrap();
    let (entries, _) = logs
        .read("bob", fedsx_proto::logstore::v1::StreamKind::Outbox, 2, 1)
        .await
        .unwrap();
    let received = fedsx_wire::decode(&entries[0].data).unwrap();
    assert_eq!(received.activity.prev.as_ref(), &before.id.0[..], "the chain continues");
    // The relay hands off again after a restart; delivery dedupes by (peer, id).
    for _ in 0..500 {
        if delivery.handoffs().iter().any(|h| h.id == after.id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        delivery
            .handoffs()
            .iter()
            .any(|h| h.id == after.id && h.peer == PEER_NODE)
    );
    shutdown.cancel();
}

#[tokio::test]
async fn actor_names_are_checked_and_unique() {
    let node = node().await;
    for bad in ["", "Bob", "-x", "a b", "~kernel", &"x".repeat(65)] {
        let (code, _) = code_of(node.kernel.create_actor(bad).await.unwrap_err());
        assert_eq!(code, Code::InvalidArgument, "{bad:?}");
    }
    let (code, message) = code_of(node.kernel.create_actor("bob").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (Code::AlreadyExists, "actor bob already exists")
    );
    let (code, _) = code_of(node.kernel.actor("nobody").unwrap_err());
    assert_eq!(code, Code::NotFound);
}

#[tokio::test]
async fn peer_documents_are_checked_before_they_are_kept() {
    let node = node().await;
    let alice = Peer::new(PEER, 1);
    let mut bad = alice.document();
    bad.key_id = "https://elsewhere.example/actors/x#k".into();
    let (code, _) = code_of(node.kernel.register_peer(bad).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    let mut short = alice.document();
    short.public_key = Bytes::from_static(&[1, 2, 3]);
    let (code, _) = code_of(node.kernel.register_peer(short).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(code_of_peer(&node), Code::NotFound);
}

fn code_of_peer(node: &Node) -> Code {
    code_of(node.kernel.peer(PEER).unwrap_err()).0
}

#[tokio::test]
async fn after_a_restart_the_relay_resumes_from_its_journaled_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let first = CancellationToken::new();
    let (kernel, delivery) = kernel_on(&logs_url, &first).await;
    kernel.create_actor("bob").await.unwrap();
    let mut alice = Peer::new(PEER, 1);
    kernel.register_peer(alice.document()).await.unwrap();
    let (_, follow) = alice.signed(ActivityType::Follow, &bob_url());
    kernel.ingest("bob", &follow).await.unwrap();
    let mut first_note = None;
    for i in 0..1005 {
        let note = kernel
            .publish(draft("bob", ActivityType::Create, &["followers"], &i.to_string()))
            .await
            .unwrap();
        first_note.get_or_insert(note.id);
    }
    for _ in 0..1000 {
        if delivery.handoffs().len() >= 1006 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(delivery.handoffs().len(), 1006, "the Accept and every note handed off");
    // Stopped as `fedsx kernel` stops: its partitions given up before the next one starts.
    first.cancel();
    assert_eq!(kernel.finish(std::time::Duration::from_secs(5)).await, 0);
    drop(kernel);

    let (kernel, delivery) = kernel_on(&logs_url, &shutdown).await;
    let last = kernel
        .publish(draft("bob", ActivityType::Create, &["followers"], "after"))
        .await
        .unwrap();
    for _ in 0..500 {
        if delivery.handoffs().iter().any(|h| h.id == last.id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let handed: Vec<ActivityId> = delivery.handoffs().iter().map(|h| h.id).collect();
    assert!(handed.contains(&last.id));
    assert!(
        !handed.contains(&first_note.unwrap()),
        "old entries are not handed off again"
    );
    assert!(
        handed.len() <= 1001,
        "at most a cursor interval again: {}",
        handed.len()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_accept_of_a_follow_published_but_not_journaled_as_sent_still_counts() {
    // The state a kernel stop between publishing a Follow and journaling it leaves behind.
    let node = node().await;
    let mut alice = Peer::new(PEER, 1);
    node.kernel.register_peer(alice.document()).await.unwrap();
    let follow = Draft {
        actor: "bob".into(),
        kind: ActivityType::Follow,
        object: PEER.into(),
        to: vec![PEER.into()],
        content: String::new(),
        once_key: None,
    };
    let follow = node.kernel.publish(follow).await.unwrap();

    // An Accept naming some other activity does nothing.
    let (_, stray) = alice.signed(ActivityType::Accept, &ActivityId([9; 32]).to_hex());
    node.kernel.ingest("bob", &stray).await.unwrap();
    assert!(node.kernel.following("bob", &first_page()).unwrap().0.is_empty());

    let (_, accept) = alice.signed(ActivityType::Accept, &follow.id.to_hex());
    node.kernel.ingest("bob", &accept).await.unwrap();
    assert_eq!(node.kernel.following("bob", &first_page()).unwrap().0, [PEER]);
}
