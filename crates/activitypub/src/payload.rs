//! What the kernel hands delivery for an ActivityPub destination, in the queue's envelope
//! bytes: the activity JSON and what delivery needs to sign it when it sends (the sender's
//! sealed RSA key and key id) — signed then, so every retry carries a fresh `Date`.
//!
//! Layout: one zero byte (a fed-sx envelope, a protobuf, never starts with one: field 0 does
//! not exist), then this struct as JSON.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Post {
    /// The sending local actor's name (what its key is sealed for).
    pub actor: String,
    /// The key id the signature names.
    pub key_id: String,
    /// The actor's RSA key sealed under the node secret, base64.
    pub sealed_key: String,
    /// The activity JSON, sent as the body.
    pub body: String,
}

impl Post {
    pub fn new(actor: &str, key_id: &str, sealed_key: &[u8], body: &serde_json::Value) -> Post {
        Post {
            actor: actor.to_owned(),
            key_id: key_id.to_owned(),
            sealed_key: STANDARD.encode(sealed_key),
            body: body.to_string(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8];
        serde_json::to_writer(&mut bytes, self).expect("a post encodes");
        bytes
    }

    /// Whether `envelope` is a post (starts with the zero byte), not a fed-sx envelope.
    pub fn is_post(envelope: &[u8]) -> bool {
        envelope.first() == Some(&0)
    }

    /// Some(post) when `envelope` is one ([`Post::is_post`]); Err when it is but does not
    /// decode.
    pub fn decode(envelope: &[u8]) -> Option<Result<Post, String>> {
        let rest = envelope.strip_prefix(&[0u8])?;
        Some(serde_json::from_slice(rest).map_err(|err| format!("undecodable ActivityPub post: {err}")))
    }

    pub fn sealed_key(&self) -> Result<Vec<u8>, String> {
        STANDARD
            .decode(&self.sealed_key)
            .map_err(|_| "the sealed key is not base64".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_round_trips_and_an_envelope_is_no_post() {
        let post = Post::new(
            "alice",
            "https://a/actors/alice#main-key",
            &[1, 2, 3],
            &serde_json::json!({"type": "Create"}),
        );
        let bytes = post.encode();
        assert_eq!(Post::decode(&bytes), Some(Ok(post.clone())));
        assert_eq!(post.sealed_key().unwrap(), vec![1, 2, 3]);
        assert_eq!(Post::decode(&[0x0a, 0x01]), None);
        assert!(matches!(Post::decode(&[0, b'x']), Some(Err(_))));
    }
}
