//! ActivityPub posts are signed when they are sent, not when queued, so each attempt
//! carries a fresh `Date` (servers refuse old ones). The sender's RSA key travels sealed
//! under the node secret (`fedsx_activitypub::payload`); this opens it with the node secret
//! (read from its file on first use: in `fedsx up` the kernel creates it after delivery
//! starts) and keeps opened keys in memory, bounded.

use crate::queue::Failure;
use bytes::Bytes;
use fedsx_activitypub::keys::ActorKey;
use fedsx_activitypub::payload::Post;
use fedsx_runtime::secret::NodeSecret;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// Opened keys kept; past it the memory starts over.
const MAX_KEYS: usize = 10_000;

/// One request's body and headers (its content type among them).
pub struct Prepared {
    pub body: Bytes,
    pub headers: Vec<(&'static str, String)>,
}

/// An actor's key as sealed, and opened.
type Opened = (Vec<u8>, Arc<ActorKey>);

pub struct Signer {
    secret_file: Option<PathBuf>,
    secret: OnceLock<NodeSecret>,
    /// Actor name → its key.
    keys: Mutex<HashMap<String, Opened>>,
}

impl Signer {
    pub fn new(secret_file: Option<PathBuf>) -> Signer {
        Signer {
            secret_file,
            secret: OnceLock::new(),
            keys: Mutex::default(),
        }
    }

    /// [`Signer::prepare`], on a blocking thread when it signs: an RSA-2048 signature (and
    /// opening a key not yet opened) takes milliseconds, which the async threads must not
    /// spend.
    pub async fn prepare_off_thread(self: &Arc<Self>, url: &str, envelope: &Bytes) -> Result<Prepared, Failure> {
        if !Post::is_post(envelope) {
            return self.prepare(url, envelope);
        }
        let (signer, url, envelope) = (self.clone(), url.to_owned(), envelope.clone());
        tokio::task::spawn_blocking(move || signer.prepare(&url, &envelope))
            .await
            .map_err(|err| Failure::Transient {
                reason: format!("signing stopped: {err}"),
                retry_after: None,
            })?
    }

    /// What to POST to `url` for a queued `envelope`: a fed-sx envelope as it is; an
    /// ActivityPub post signed now.
    pub fn prepare(&self, url: &str, envelope: &Bytes) -> Result<Prepared, Failure> {
        let Some(post) = Post::decode(envelope) else {
            return Ok(Prepared {
                body: envelope.clone(),
                headers: vec![("content-type", fedsx_wire::CONTENT_TYPE.to_owned())],
            });
        };
        let post = post.map_err(|reason| Failure::Permanent { reason })?;
        let key = self.key(&post)?;
        let headers = fedsx_activitypub::signature::sign(
            &key,
            &post.key_id,
            url,
            fedsx_activitypub::CONTENT_TYPE,
            post.body.as_bytes(),
            std::time::SystemTime::now(),
        );
        Ok(Prepared {
            body: Bytes::from(post.body),
            headers,
        })
    }

    fn key(&self, post: &Post) -> Result<Arc<ActorKey>, Failure> {
        let sealed = post.sealed_key().map_err(|reason| Failure::Permanent { reason })?;
        if let Some((known, key)) = self.keys.lock().expect("keys lock poisoned").get(&post.actor)
            && *known == sealed
        {
            return Ok(key.clone());
        }
        let secret = self.secret()?;
        let key = ActorKey::unseal(&sealed, secret.as_bytes(), &post.actor).map_err(|err| Failure::Permanent {
            reason: format!("the key of {}: {err}", post.actor),
        })?;
        let key = Arc::new(key);
        let mut keys = self.keys.lock().expect("keys lock poisoned");
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(post.actor.clone(), (sealed, key.clone()));
        Ok(key)
    }

    fn secret(&self) -> Result<&NodeSecret, Failure> {
        if let Some(secret) = self.secret.get() {
            return Ok(secret);
        }
        let Some(path) = &self.secret_file else {
            return Err(Failure::Permanent {
                reason: "cannot sign ActivityPub posts: delivery has no --node-secret-file".into(),
            });
        };
        // Not there yet (the kernel creates it): worth retrying.
        let secret = NodeSecret::load(path).map_err(|err| Failure::Transient {
            reason: format!("cannot sign ActivityPub posts: {err:#}"),
            retry_after: None,
        })?;
        Ok(self.secret.get_or_init(|| secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedsx_activitypub::signature::{Request, VerifyKey, claim};

    const URL: &str = "https://m.example/users/bob/inbox";

    fn post(key: &ActorKey, secret: [u8; 32]) -> Bytes {
        let sealed = key.seal(&secret, "alice").unwrap();
        let body = serde_json::json!({"type": "Create"});
        Bytes::from(Post::new("alice", "https://a.example/actors/alice#main-key", &sealed, &body).encode())
    }

    fn secret_file(dir: &tempfile::TempDir, secret: [u8; 32]) -> PathBuf {
        let path = dir.path().join("node-secret");
        std::fs::write(&path, hex::encode(secret)).unwrap();
        path
    }

    #[test]
    fn an_activitypub_post_is_signed_now_with_the_senders_key() {
        let key = ActorKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::new(Some(secret_file(&dir, [7; 32])));
        let prepared = signer.prepare(URL, &post(&key, [7; 32])).unwrap();
        let headers: Vec<(String, String)> = prepared
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        let request = Request {
            method: "POST",
            target_uri: URL,
            headers: &headers,
            body: &prepared.body,
        };
        let found = claim(&request, std::time::SystemTime::now()).unwrap();
        let public = fedsx_activitypub::keys::PeerKey::from_pem(&key.public_pem()).unwrap();
        found.verify(&VerifyKey::Rsa(public)).unwrap();
        assert_eq!(&prepared.body[..], br#"{"type":"Create"}"#);

        let envelope = Bytes::from_static(b"\x0a\x01x");
        let native = signer.prepare(URL, &envelope).unwrap();
        assert_eq!(native.body, envelope, "a fed-sx envelope goes as it is");
        assert_eq!(
            native.headers,
            vec![("content-type", fedsx_wire::CONTENT_TYPE.to_owned())]
        );
    }

    #[test]
    fn without_the_right_secret_nothing_is_signed() {
        let key = ActorKey::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = Signer::new(Some(dir.path().join("not-yet")));
        assert!(matches!(
            missing.prepare(URL, &post(&key, [7; 32])),
            Err(Failure::Transient { .. })
        ));
        let none = Signer::new(None);
        assert!(matches!(
            none.prepare(URL, &post(&key, [7; 32])),
            Err(Failure::Permanent { .. })
        ));
        let other = Signer::new(Some(secret_file(&dir, [8; 32])));
        assert!(
            matches!(other.prepare(URL, &post(&key, [7; 32])), Err(Failure::Permanent { reason }) if reason.contains("does not open"))
        );
    }
}
