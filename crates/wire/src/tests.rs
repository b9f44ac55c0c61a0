//! The wire rules, checked: the published test vectors reproduce, and every way an
//! envelope can be wrong is refused with its own error.

use super::*;
use ed25519_dalek::Verifier;

const VECTORS: &str = include_str!("../../../docs/test-vectors.json");

fn vectors() -> serde_json::Value {
    serde_json::from_str(VECTORS).expect("docs/test-vectors.json is JSON")
}

fn vector_key(v: &serde_json::Value) -> SigningKey {
    let seed: [u8; 32] = hex::decode(v["seed"].as_str().unwrap()).unwrap().try_into().unwrap();
    SigningKey::from_bytes(&seed)
}

fn vector_activity(v: &serde_json::Value) -> Activity {
    let a = &v["activity"];
    Activity {
        r#type: a["type"].as_i64().unwrap() as i32,
        actor: a["actor"].as_str().unwrap().into(),
        seq: a["seq"].as_u64().unwrap(),
        object: a["object"].as_str().unwrap().into(),
        to: a["to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect(),
        published_ms: a["published_ms"].as_i64().unwrap(),
        content: a["content"].as_str().unwrap().into(),
        prev: hex::decode(a["prev"].as_str().unwrap()).unwrap().into(),
    }
}

#[test]
fn test_vectors_reproduce() {
    let all = vectors();
    assert_eq!(all["signing_prefix"].as_str().unwrap(), hex::encode(SIGNING_PREFIX));
    for v in all["vectors"].as_array().unwrap() {
        let key = vector_key(v);
        assert_eq!(
            hex::encode(key.verifying_key().as_bytes()),
            v["public_key"].as_str().unwrap()
        );
        let actor = v["activity"]["actor"].as_str().unwrap();
        assert_eq!(key_id(actor, &key.verifying_key()), v["key_id"].as_str().unwrap());
        let signed = sign(&vector_activity(v), &key, v["key_id"].as_str().unwrap());
        assert_eq!(
            hex::encode(&signed.envelope.activity),
            v["activity_bytes"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(signing_message(&signed.envelope.activity)),
            v["signed_message"].as_str().unwrap()
        );
        assert_eq!(signed.id.to_hex(), v["id"].as_str().unwrap());
        assert_eq!(
            hex::encode(&signed.envelope.signature),
            v["signature"].as_str().unwrap()
        );
        assert_eq!(hex::encode(signed.to_bytes()), v["envelope"].as_str().unwrap());

        // And a receiver accepts the published envelope bytes as they are.
        let received = decode(&hex::decode(v["envelope"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(received.id.to_hex(), v["id"].as_str().unwrap());
        received.verify(&key.verifying_key()).unwrap();
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

const ALICE: &str = "https://a.example/actors/alice";

fn activity() -> Activity {
    Activity {
        r#type: ActivityType::Create.into(),
        actor: ALICE.into(),
        seq: 1,
        content: "hello".into(),
        ..Activity::default()
    }
}

fn signed(activity: &Activity) -> Vec<u8> {
    let key = key();
    sign(activity, &key, &key_id(ALICE, &key.verifying_key())).to_bytes()
}

fn refused(envelope: &[u8]) -> WireError {
    match decode(envelope) {
        Err(err) => err,
        Ok(received) => received.verify(&key().verifying_key()).unwrap_err(),
    }
}

#[test]
fn a_good_envelope_verifies_and_its_id_is_the_hash_of_the_bytes() {
    let bytes = signed(&activity());
    let received = decode(&bytes).unwrap();
    received.verify(&key().verifying_key()).unwrap();
    assert_eq!(received.id, ActivityId::of(&activity().encode_to_vec()));
    assert_eq!(received.kind, ActivityType::Create);
}

#[test]
fn malformed_bytes_are_refused() {
    assert!(matches!(refused(b"\xff\xff\xff"), WireError::MalformedEnvelope(_)));
    let envelope = SignedEnvelope {
        activity: vec![0xff, 0xff].into(),
        signature: vec![0; 64].into(),
        key_id: "k".into(),
    };
    assert!(matches!(
        refused(&envelope.encode_to_vec()),
        WireError::MalformedActivity(_)
    ));
    assert_eq!(
        refused(&SignedEnvelope::default().encode_to_vec()),
        WireError::MissingField("activity")
    );
}

#[test]
fn missing_and_bad_fields_are_named() {
    let cases: Vec<(Activity, WireError)> = vec![
        (
            Activity {
                r#type: 0,
                ..activity()
            },
            WireError::MissingField("type"),
        ),
        (
            Activity {
                r#type: 99,
                ..activity()
            },
            WireError::BadField("unknown activity type 99".into()),
        ),
        (
            Activity {
                actor: String::new(),
                ..activity()
            },
            WireError::MissingField("actor"),
        ),
        (
            Activity { seq: 0, ..activity() },
            WireError::BadField("seq must be at least 1".into()),
        ),
        (Activity { seq: 2, ..activity() }, WireError::MissingField("prev")),
        (
            Activity {
                seq: 2,
                prev: vec![1; 5].into(),
                ..activity()
            },
            WireError::BadField("prev is 5 bytes, must be 32".into()),
        ),
        (
            Activity {
                prev: vec![1; 32].into(),
                ..activity()
            },
            WireError::BadField("prev must be empty at seq 1".into()),
        ),
    ];
    for (activity, expected) in cases {
        // The actor field is checked against the key id too; keep them consistent here.
        let key = key();
        let kid = format!(
            "{}#k",
            if activity.actor.is_empty() {
                ALICE
            } else {
                &activity.actor
            }
        );
        let bytes = sign(&activity, &key, &kid).to_bytes();
        assert_eq!(refused(&bytes), expected);
    }
}

#[test]
fn a_key_id_of_another_actor_is_refused() {
    let key = key();
    let bytes = sign(&activity(), &key, "https://a.example/actors/mallory#ed25519-00").to_bytes();
    assert!(matches!(refused(&bytes), WireError::ForeignKeyId { .. }));
    // A prefix of the actor URL is not the actor.
    let bytes = sign(&activity(), &key, "https://a.example/actors/alicex#k").to_bytes();
    assert!(matches!(refused(&bytes), WireError::ForeignKeyId { .. }));
}

#[test]
fn tampered_bytes_do_not_verify() {
    let mut envelope = SignedEnvelope::decode(&signed(&activity())[..]).unwrap();
    let mut tampered = activity();
    tampered.content = "hellp".into();
    envelope.activity = tampered.encode_to_vec().into();
    assert_eq!(refused(&envelope.encode_to_vec()), WireError::BadSignature);
}

#[test]
fn a_signature_without_the_prefix_does_not_verify() {
    let key = key();
    let bytes = activity().encode_to_vec();
    let envelope = SignedEnvelope {
        activity: bytes.clone().into(),
        signature: key.sign(&bytes).to_bytes().to_vec().into(),
        key_id: key_id(ALICE, &key.verifying_key()),
    };
    assert_eq!(refused(&envelope.encode_to_vec()), WireError::BadSignature);
}

/// Adds the group order L to a signature's S: the same signature value, non-canonically
/// encoded.
fn non_canonical(signature: &[u8]) -> Vec<u8> {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = signature.to_vec();
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(out[32 + i]) + u16::from(L[i]) + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

#[test]
fn a_non_canonical_signature_is_refused() {
    let mut envelope = SignedEnvelope::decode(&signed(&activity())[..]).unwrap();
    envelope.signature = non_canonical(&envelope.signature).into();
    assert_eq!(refused(&envelope.encode_to_vec()), WireError::BadSignature);
}

#[test]
fn a_small_order_key_is_refused_even_with_a_signature_it_would_pass() {
    // The identity point as the public key, and R = identity, S = 0: lax verification
    // accepts this for any message; strict verification must not.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = VerifyingKey::from_bytes(&identity).unwrap();
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&identity);
    let envelope = SignedEnvelope {
        activity: activity().encode_to_vec().into(),
        signature: signature.to_vec().into(),
        key_id: format!("{ALICE}#weak"),
    };
    let received = decode(&envelope.encode_to_vec()).unwrap();
    let message = signing_message(received.activity_bytes());
    assert!(
        weak.verify(&message, &Signature::from_bytes(&signature)).is_ok(),
        "lax verification would accept"
    );
    assert_eq!(received.verify(&weak), Err(WireError::BadSignature));
}

#[test]
fn oversized_envelopes_are_refused_before_decoding() {
    let big = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(refused(&big), WireError::TooLarge(MAX_ENVELOPE_BYTES + 1));
}

#[test]
fn a_short_signature_is_a_bad_field() {
    let mut envelope = SignedEnvelope::decode(&signed(&activity())[..]).unwrap();
    envelope.signature = vec![1; 10].into();
    assert_eq!(
        refused(&envelope.encode_to_vec()),
        WireError::BadField("signature is 10 bytes, must be 64".into())
    );
}

#[test]
fn ids_round_trip_through_hex() {
    let id = ActivityId::of(b"x");
    assert_eq!(ActivityId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(ActivityId::from_hex("zz"), None);
}

#[test]
fn small_order_and_non_canonical_keys_are_refused() {
    let good = SigningKey::from_bytes(&[5; 32]).verifying_key();
    assert_eq!(public_key(good.as_bytes()).unwrap(), good);
    assert!(public_key(&[1; 31]).unwrap_err().contains("31 bytes"));

    // The identity (y = 1) and a point of order 4 (y = 0): small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert_eq!(public_key(&identity).unwrap_err(), "public key is of small order");
    assert_eq!(public_key(&[0; 32]).unwrap_err(), "public key is of small order");

    // y + p for small y: the same point as y, written non-canonically.
    let mut refused = 0;
    for y in 2u8..=18 {
        let mut bytes = [0xffu8; 32];
        bytes[0] = 0xed + y;
        bytes[31] = 0x7f;
        if VerifyingKey::from_bytes(&bytes).is_ok() {
            assert_eq!(
                public_key(&bytes).unwrap_err(),
                "public key is not canonically encoded",
                "y = {y}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0, "some y below 19 is on the curve");
}

#[test]
fn accept_and_undo_name_an_activity_id_in_lowercase_hex() {
    let key = SigningKey::from_bytes(&[6; 32]);
    let actor = "https://a.example/actors/a";
    let kid = key_id(actor, &key.verifying_key());
    let envelope = |kind: ActivityType, object: &str| {
        let activity = Activity {
            r#type: kind.into(),
            actor: actor.into(),
            seq: 1,
            object: object.into(),
            ..Activity::default()
        };
        sign(&activity, &key, &kid).to_bytes()
    };
    let id = "0123456789abcdef".repeat(4);
    for kind in [ActivityType::Accept, ActivityType::Undo] {
        assert!(decode(&envelope(kind, &id)).is_ok());
        for bad in [
            id.to_uppercase(),
            id[..62].to_owned(),
            format!("{id}00"),
            String::new(),
            "x".repeat(64),
        ] {
            let err = decode(&envelope(kind, &bad)).unwrap_err();
            assert!(
                matches!(&err, WireError::BadField(why) if why.contains("64 lowercase hex digits")),
                "{kind:?} {bad:?}: {err}"
            );
        }
    }
}
