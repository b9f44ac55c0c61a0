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

pub struct Signer {
    secret_file: Option<PathBuf>,
    secret: OnceLock<NodeSecret>,
    /// Actor name → (its sealed key, opened).
    keys: Mutex<HashMap<String, (Vec<u8>, Arc<ActorKey>)>>,
}

impl Signer {
    pub fn new(secret_file: Option<PathBuf>) -> Signer {
        Signer {
            secret_file,
            secret: OnceLock::new(),
            keys: Mutex::default(),
        }
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
