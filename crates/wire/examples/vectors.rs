//! Prints `docs/test-vectors.json`:
//! `cargo run -p fedsx-wire --example vectors > docs/test-vectors.json`.
//! The wire crate's tests check the committed file against the implementation.

use ed25519_dalek::SigningKey;
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_wire::{key_id, sign, signing_message};

fn vector(name: &str, seed: [u8; 32], activity: &Activity) -> serde_json::Value {
    let key = SigningKey::from_bytes(&seed);
    let kid = key_id(&activity.actor, &key.verifying_key());
    let signed = sign(activity, &key, &kid);
    serde_json::json!({
        "name": name,
        "seed": hex::encode(seed),
        "public_key": hex::encode(key.verifying_key().as_bytes()),
        "key_id": kid,
        "activity": {
            "type": activity.r#type,
            "actor": activity.actor,
            "seq": activity.seq,
            "object": activity.object,
            "to": activity.to,
            "published_ms": activity.published_ms,
            "content": activity.content,
            "prev": hex::encode(&activity.prev),
        },
        "activity_bytes": hex::encode(&signed.envelope.activity),
        "signed_message": hex::encode(signing_message(&signed.envelope.activity)),
        "id": signed.id.to_hex(),
        "signature": hex::encode(&signed.envelope.signature),
        "envelope": hex::encode(signed.to_bytes()),
    })
}

fn main() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let alice = "https://a.example/actors/alice";
    let bob = "https://b.example/actors/bob";
    let create = Activity {
        r#type: ActivityType::Create.into(),
        actor: alice.into(),
        seq: 1,
        object: String::new(),
        to: vec![bob.into()],
        published_ms: 1_767_225_600_000,
        content: "hello, fed-sx".into(),
        prev: Default::default(),
    };
    let create_id = fedsx_wire::ActivityId::of(&prost::Message::encode_to_vec(&create));
    let follow = Activity {
        r#type: ActivityType::Follow.into(),
        actor: alice.into(),
        seq: 2,
        object: bob.into(),
        to: vec![bob.into()],
        published_ms: 1_767_225_601_000,
        content: String::new(),
        prev: create_id.0.to_vec().into(),
    };
    let follow_id = fedsx_wire::ActivityId::of(&prost::Message::encode_to_vec(&follow));
    // bob's side: the Accept of alice's Follow, then bob undoing a Follow of his own.
    let bob_seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(1));
    let accept = Activity {
        r#type: ActivityType::Accept.into(),
        actor: bob.into(),
        seq: 1,
        object: follow_id.to_hex(),
        to: vec![alice.into()],
        published_ms: 1_767_225_602_000,
        content: String::new(),
        prev: Default::default(),
    };
    let accept_id = fedsx_wire::ActivityId::of(&prost::Message::encode_to_vec(&accept));
    let undo = Activity {
        r#type: ActivityType::Undo.into(),
        actor: bob.into(),
        seq: 2,
        object: "9f".repeat(32),
        to: vec![alice.into()],
        published_ms: 1_767_225_603_000,
        content: String::new(),
        prev: accept_id.0.to_vec().into(),
    };

    // Envelopes a receiver must refuse, each with the status it answers (docs/protocol.md).
    let signed = |seed: [u8; 32], activity: &Activity| {
        let key = SigningKey::from_bytes(&seed);
        sign(activity, &key, &key_id(&activity.actor, &key.verifying_key()))
    };
    let mut tampered = signed(seed, &create).envelope;
    let mut changed = create.clone();
    changed.content = "hello, tampered".into();
    tampered.activity = prost::Message::encode_to_vec(&changed).into();
    let forged = {
        let key = SigningKey::from_bytes(&[0xee; 32]);
        sign(
            &create,
            &key,
            &key_id(alice, &SigningKey::from_bytes(&seed).verifying_key()),
        )
    };
    let mut foreign_kid = signed(seed, &create).envelope;
    foreign_kid.key_id = format!("{bob}#key");
    let zero_seq = Activity {
        seq: 0,
        ..create.clone()
    };
    let unchained = Activity {
        prev: Default::default(),
        ..follow.clone()
    };
    let accept_of_url = Activity {
        object: "https://a.example/activities/1".into(),
        ..accept.clone()
    };
    let undo_upper = Activity {
        object: "9F".repeat(32),
        ..undo.clone()
    };
    let unknown_type = Activity {
        r#type: 99,
        ..create.clone()
    };
    let negative = |name: &str, envelope: Vec<u8>, status: u16, why: &str| serde_json::json!({ "name": name, "envelope": hex::encode(envelope), "status": status, "why": why });
    let encode = |envelope: &fedsx_proto::wire::v1::SignedEnvelope| prost::Message::encode_to_vec(envelope);
    let all = serde_json::json!({
        "protocol": "fed-sx/activity/v1",
        "signing_prefix": hex::encode(fedsx_wire::SIGNING_PREFIX),
        "vectors": [
            vector("create-seq-1", seed, &create),
            vector("follow-seq-2-chained", seed, &follow),
            vector("accept-of-follow", bob_seed, &accept),
            vector("undo-seq-2-chained", bob_seed, &undo),
        ],
        "negative": [
            negative("not-protobuf", vec![0xff, 0xff, 0xff], 400, "the body is not a SignedEnvelope"),
            negative("tampered-activity", encode(&tampered), 401, "the signature does not verify over the activity bytes"),
            negative("forged-signature", forged.to_bytes(), 401, "signed by a key that is not the sender's"),
            negative("foreign-key-id", encode(&foreign_kid), 401, "key id not under the activity's actor"),
            negative("seq-zero", signed(seed, &zero_seq).to_bytes(), 400, "seq must be at least 1"),
            negative("prev-missing-at-seq-2", signed(seed, &unchained).to_bytes(), 400, "prev must be 32 bytes after seq 1"),
            negative("accept-of-a-url", signed(bob_seed, &accept_of_url).to_bytes(), 400, "Accept's object must be 64 lowercase hex digits"),
            negative("undo-uppercase-id", signed(bob_seed, &undo_upper).to_bytes(), 400, "Undo's object must be 64 lowercase hex digits"),
            negative("unknown-type", signed(seed, &unknown_type).to_bytes(), 400, "activity type not in the enum"),
        ],
    });
    println!("{}", serde_json::to_string_pretty(&all).expect("json"));
}
