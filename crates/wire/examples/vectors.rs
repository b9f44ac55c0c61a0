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
    let all = serde_json::json!({
        "protocol": "fed-sx/activity/v1",
        "signing_prefix": hex::encode(fedsx_wire::SIGNING_PREFIX),
        "vectors": [
            vector("create-seq-1", seed, &create),
            vector("follow-seq-2-chained", seed, &follow),
        ],
    });
    println!("{}", serde_json::to_string_pretty(&all).expect("json"));
}
