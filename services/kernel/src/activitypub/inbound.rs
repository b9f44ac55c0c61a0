//! Inbound ActivityPub: the body read as an activity → its HTTP signature read (digest, date
//! window, coverage) → the activity's actor's document (known or fetched, with the same
//! address rules as native peers) → the signing key is one the actor owns → the signature
//! verifies → appended once (idempotent by the activity's `id`) to each recipient's inbox,
//! kept as received with its verified signer → side effects (Follow accepted, Undo of a
//! Follow, Accept of our Follow), shared with the native pipeline.

use crate::error::KernelError;
use crate::ingest::{Ingested, NodeIngested};
use crate::kernel::Kernel;
use bytes::Bytes;
use fedsx_activitypub::json::{self, Activity};
use fedsx_activitypub::keys::PeerKey;
use fedsx_activitypub::signature::{self, Claim, VerifyKey};
use fedsx_proto::kernel::v1::ActorDocument;
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_wire::ActivityId;
use serde_json::Value;

/// An inbound ActivityPub POST as the gateway received it.
#[derive(Debug, Clone)]
pub struct ApRequest {
    /// The local actor whose inbox it was POSTed to; empty: the shared inbox.
    pub recipient: String,
    pub method: String,
    /// The URL the sender addressed (the node's public URL and the request's path).
    pub target_uri: String,
    /// (lower-case name, value) of each header.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The inbox id of an ActivityPub activity: SHA-256 over a tag and its `id`, so the same
/// activity posted twice (to an actor inbox, the shared inbox, or both) is one entry.
pub fn inbox_id(activity_id: &str) -> ActivityId {
    ActivityId(crate::kernel::derived_id("activitypub", &[activity_id.as_bytes()]))
}

impl Kernel {
    /// An ActivityPub activity POSTed to an actor's inbox or the shared inbox.
    #[tracing::instrument(name = "ingest-activitypub", skip_all, fields(fedsx.recipient = %request.recipient, fedsx.actor, fedsx.activity_id, fedsx.recipients))]
    pub async fn ingest_activitypub(&self, request: ApRequest) -> Result<NodeIngested, KernelError> {
        let result = self.ingest_activitypub_checked(request).await;
        crate::ingest::record_node_ingest(&result);
        result
    }

    async fn ingest_activitypub_checked(&self, request: ApRequest) -> Result<NodeIngested, KernelError> {
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|err| KernelError::BadRequest(format!("the body is not JSON: {err}")))?;
        let activity = json::activity(&body).map_err(KernelError::BadRequest)?;
        let span = tracing::Span::current();
        span.record("fedsx.actor", activity.actor.as_str());
        span.record("fedsx.activity_id", activity.id.as_str());
        if fedsx_wire::document::origin(&activity.id) != fedsx_wire::document::origin(&activity.actor) {
            return Err(KernelError::BadRequest(format!(
                "activity {} is not on its actor's node ({})",
                activity.id, activity.actor
            )));
        }
        let recipient = match request.recipient.as_str() {
            "" => None,
            name => Some((name.to_owned(), self.actor(name)?.id)),
        };
        let claim = signature::claim(
            &signature::Request {
                method: &request.method,
                target_uri: &request.target_uri,
                headers: &request.headers,
                body: &request.body,
            },
            std::time::SystemTime::now(),
        )
        .map_err(|err| KernelError::Signature(err.to_string()))?;
        let signer = self.verified_signer(&claim, &activity.actor).await?;
        let recipients = match recipient {
            Some(one) => vec![one],
            None => self.activitypub_recipients(&activity, &signer),
        };
        span.record("fedsx.recipients", recipients.len());
        let id = inbox_id(&activity.id);
        let entry =
            fedsx_activitypub::inbox::entry(&request.body, &signer.id, &claim.key_id, claim.scheme, self.now_ms())
                .map(Bytes::from)
                .map_err(KernelError::BadRequest)?;
        let mut landed = Vec::with_capacity(recipients.len());
        for (name, url) in recipients {
            if let Some(there) = self.route(&name, false).await? {
                let ingested = self.ingest_activitypub_elsewhere(there, &name, &request).await?;
                landed.push((name, ingested));
                continue;
            }
            let answer = self
                .ports
                .logs
                .append_any(&name, StreamKind::Inbox, Bytes::copy_from_slice(&id.0), entry.clone())
                .await?;
            let stored = answer
                .entries
                .first()
                .copied()
                .ok_or_else(|| KernelError::Internal("empty append answer".into()))?;
            tracing::debug!(recipient = %name, sender = %activity.actor, id = %activity.id, kind = %activity.kind, seq = stored.seq, new = stored.appended, "ingested (ActivityPub)");
            self.activitypub_side_effects(&name, &url, &activity, id).await?;
            landed.push((
                name,
                Ingested {
                    seq: stored.seq,
                    new: stored.appended,
                    id,
                },
            ));
        }
        self.revive_node_of(&signer.id);
        Ok(NodeIngested { id, landed })
    }

    /// The document of `actor`, once the claim verified with a key it owns: the known one,
    /// else fetched; refetched once (rate limited) when the key id is not the one known or
    /// the signature fails with it (the actor may have rotated its key).
    async fn verified_signer(&self, claim: &Claim, actor: &str) -> Result<ActorDocument, KernelError> {
        let activitypub = |document: &ActorDocument| document.activitypub;
        let verifies = |document: &ActorDocument| check_with(claim, document);
        self.directory.sender(self, actor, activitypub, verifies).await
    }

    /// The local actors a shared-inbox activity is for: those in its `to`/`cc`, and when it
    /// addresses the sender's followers (or the public), the local actors following it.
    fn activitypub_recipients(&self, activity: &Activity, sender: &ActorDocument) -> Vec<(String, String)> {
        let to_followers = activity
            .audience
            .iter()
            .any(|a| (!sender.followers.is_empty() && *a == sender.followers) || a == json::PUBLIC);
        let mut to: Vec<String> = activity.audience.clone();
        if to_followers {
            to.push(crate::state::followers_url(&sender.id));
        }
        // A Follow, Undo or Accept names its local actor as the object, not in `to`.
        to.push(activity.object_id.clone());
        self.node_recipients(&sender.id, &to)
    }

    async fn activitypub_side_effects(
        &self,
        recipient: &str,
        recipient_url: &str,
        activity: &Activity,
        id: ActivityId,
    ) -> Result<(), KernelError> {
        let sender = activity.actor.as_str();
        match activity.kind.as_str() {
            "Follow" if activity.object_id == recipient_url => self.accept_follow(recipient, sender, id).await,
            "Undo" if !activity.object_id.is_empty() => {
                self.follow_undone(recipient, sender, inbox_id(&activity.object_id), id)
                    .await
            }
            "Accept" => {
                let Some(hex) = json::activity_hex(recipient_url, &activity.object_id) else {
                    return Ok(());
                };
                let Some(follow_id) = ActivityId::from_hex(hex) else {
                    return Ok(());
                };
                self.follow_accepted(recipient, sender, follow_id, id).await
            }
            _ => Ok(()),
        }
    }
}

/// Checks `claim` with the key of `document` it names: its RSA key, or its Ed25519
/// Multikey.
fn check_with(claim: &Claim, document: &ActorDocument) -> Result<(), KernelError> {
    let unusable = |reason: String| KernelError::UnknownSender {
        actor: document.id.clone(),
        reason,
    };
    let key = if document.rsa_key_id == claim.key_id {
        VerifyKey::Rsa(PeerKey::from_pem(&document.rsa_public_key_pem).map_err(|err| unusable(err.to_string()))?)
    } else if document.key_id == claim.key_id && !claim.key_id.is_empty() {
        let raw: [u8; 32] = document.public_key[..]
            .try_into()
            .map_err(|_| unusable("its Ed25519 key is not 32 bytes".into()))?;
        VerifyKey::Ed25519(
            ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| unusable("its Ed25519 key is invalid".into()))?,
        )
    } else {
        return Err(KernelError::StaleKey {
            key_id: claim.key_id.clone(),
            actor: document.id.clone(),
        });
    };
    claim
        .verify(&key)
        .map_err(|err| KernelError::Signature(err.to_string()))
}
