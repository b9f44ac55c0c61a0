//! The fed-sx wire format, in one place: how an activity's id is computed, what exactly is
//! signed, and how a receiver decodes and verifies an envelope — over the bytes it received,
//! never re-encoded. `docs/protocol.md` states the same rules for independent clients;
//! `docs/test-vectors.json` pins them and `tests` here reproduce the vectors.

pub mod document;
pub mod outbox;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fedsx_proto::wire::v1::{Activity, ActivityType, SignedEnvelope};
use prost::Message;
use sha2::{Digest, Sha256};

/// Content type of a signed envelope on HTTP.
pub const CONTENT_TYPE: &str = "application/vnd.fed-sx.activity";

/// What precedes the activity bytes in the signed message: versioned, so a signature made
/// for one purpose or protocol version can never be replayed as another.
pub const SIGNING_PREFIX: &[u8] = b"fed-sx/activity/v1\0";

/// Largest envelope a receiver accepts, in bytes (256 KiB).
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;

/// Length of an activity id (SHA-256).
pub const ID_BYTES: usize = 32;

/// An activity's content id: SHA-256 of its encoded bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivityId(pub [u8; ID_BYTES]);

impl ActivityId {
    /// The id of the activity encoded as `activity_bytes`.
    pub fn of(activity_bytes: &[u8]) -> ActivityId {
        ActivityId(Sha256::digest(activity_bytes).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<ActivityId> {
        bytes.try_into().ok().map(ActivityId)
    }

    /// Lowercase hex, as activity ids appear in `object` fields and URLs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Exactly 64 lowercase hex digits (the form ids are written in); anything else is none.
    pub fn from_hex(text: &str) -> Option<ActivityId> {
        if text.len() != 2 * ID_BYTES || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut id = [0u8; ID_BYTES];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(ActivityId(id))
    }
}

impl std::fmt::Display for ActivityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ActivityId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActivityId({})", self.to_hex())
    }
}

/// The message an ed25519 signature covers: the prefix, then the activity bytes.
pub fn signing_message(activity_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_PREFIX.len() + activity_bytes.len());
    message.extend_from_slice(SIGNING_PREFIX);
    message.extend_from_slice(activity_bytes);
    message
}

/// The key id of `public_key` owned by the actor at `actor_url`:
/// `<actor url>#ed25519-<first 8 bytes of the key, hex>`. It names the key, so a rotated key
/// gets a new id.
pub fn key_id(actor_url: &str, public_key: &VerifyingKey) -> String {
    format!("{actor_url}#ed25519-{}", hex::encode(&public_key.as_bytes()[..8]))
}

/// An activity as its sender signed it.
#[derive(Debug, Clone)]
pub struct Signed {
    pub id: ActivityId,
    pub envelope: SignedEnvelope,
}

impl Signed {
    /// The envelope as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.envelope.encode_to_vec()
    }
}

/// Encodes `activity` once, signs those bytes and wraps them with the key id.
pub fn sign(activity: &Activity, key: &SigningKey, key_id: &str) -> Signed {
    let bytes = activity.encode_to_vec();
    let signature = key.sign(&signing_message(&bytes));
    Signed {
        id: ActivityId::of(&bytes),
        envelope: SignedEnvelope {
            activity: bytes.into(),
            signature: signature.to_bytes().to_vec().into(),
            key_id: key_id.to_owned(),
        },
    }
}

/// An actor's ed25519 public key as documents carry it: 32 bytes, the canonical encoding
/// of a point, and not of small order (such a key verifies forged signatures).
pub fn public_key(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("public key is {} bytes, must be 32", bytes.len()))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| "public key is not a point of ed25519".to_owned())?;
    if key.to_edwards().compress().to_bytes() != bytes {
        return Err("public key is not canonically encoded".into());
    }
    if key.is_weak() {
        return Err("public key is of small order".into());
    }
    Ok(key)
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("envelope is {0} bytes, over the limit of {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    #[error("malformed activity: {0}")]
    MalformedActivity(String),
    #[error("missing field: {0}")]
    MissingField(&'static str),
    #[error("bad field: {0}")]
    BadField(String),
    #[error("key id {key_id} does not belong to actor {actor}")]
    ForeignKeyId { key_id: String, actor: String },
    #[error("signature does not verify")]
    BadSignature,
}

/// A decoded, field-checked envelope whose signature is not yet verified.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: ActivityId,
    pub activity: Activity,
    pub kind: ActivityType,
    activity_bytes: bytes::Bytes,
    signature: Signature,
    pub key_id: String,
}

/// Decodes an envelope and its activity and checks every field a receiver relies on:
/// size, a known type, the actor, seq ≥ 1, `prev` (empty or 32 bytes, empty exactly at
/// seq 1), a 64-byte signature, and a key id that belongs to the activity's actor.
pub fn decode(envelope_bytes: &[u8]) -> Result<Received, WireError> {
    if envelope_bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(WireError::TooLarge(envelope_bytes.len()));
    }
    let envelope =
        SignedEnvelope::decode(envelope_bytes).map_err(|err| WireError::MalformedEnvelope(err.to_string()))?;
    if envelope.activity.is_empty() {
        return Err(WireError::MissingField("activity"));
    }
    let activity =
        Activity::decode(envelope.activity.as_ref()).map_err(|err| WireError::MalformedActivity(err.to_string()))?;
    let kind = match ActivityType::try_from(activity.r#type) {
        Ok(ActivityType::Unspecified) => return Err(WireError::MissingField("type")),
        Ok(kind) => kind,
        Err(_) => {
            return Err(WireError::BadField(format!(
                "unknown activity type {}",
                activity.r#type
            )));
        }
    };
    if matches!(kind, ActivityType::Accept | ActivityType::Undo) && ActivityId::from_hex(&activity.object).is_none() {
        return Err(WireError::BadField(format!(
            "the object of {} must be an activity id, 64 lowercase hex digits, not {:?}",
            kind.as_str_name(),
            activity.object
        )));
    }
    if activity.actor.is_empty() {
        return Err(WireError::MissingField("actor"));
    }
    if !(activity.actor.starts_with("https://") || activity.actor.starts_with("http://")) {
        return Err(WireError::BadField(format!(
            "actor {:?} is not an http(s) URL",
            activity.actor
        )));
    }
    if activity.seq == 0 {
        return Err(WireError::BadField("seq must be at least 1".into()));
    }
    match (activity.seq, activity.prev.len()) {
        (1, 0) => {}
        (1, _) => return Err(WireError::BadField("prev must be empty at seq 1".into())),
        (_, ID_BYTES) => {}
        (_, 0) => return Err(WireError::MissingField("prev")),
        (_, len) => {
            return Err(WireError::BadField(format!("prev is {len} bytes, must be {ID_BYTES}")));
        }
    }
    if envelope.key_id.is_empty() {
        return Err(WireError::MissingField("key_id"));
    }
    if !envelope
        .key_id
        .strip_prefix(activity.actor.as_str())
        .is_some_and(|rest| rest.starts_with('#'))
    {
        return Err(WireError::ForeignKeyId {
            key_id: envelope.key_id,
            actor: activity.actor,
        });
    }
    let signature = Signature::from_slice(&envelope.signature)
        .map_err(|_| WireError::BadField(format!("signature is {} bytes, must be 64", envelope.signature.len())))?;
    Ok(Received {
        id: ActivityId::of(&envelope.activity),
        activity_bytes: envelope.activity.clone(),
        activity,
        kind,
        signature,
        key_id: envelope.key_id,
    })
}

impl Received {
    /// Strict ed25519 verification (no non-canonical signatures, no small-order keys) of
    /// the prefix and the activity bytes exactly as received.
    pub fn verify(&self, public_key: &VerifyingKey) -> Result<(), WireError> {
        public_key
            .verify_strict(&signing_message(&self.activity_bytes), &self.signature)
            .map_err(|_| WireError::BadSignature)
    }

    /// The activity bytes as received.
    pub fn activity_bytes(&self) -> &[u8] {
        &self.activity_bytes
    }
}

#[cfg(test)]
mod tests;
