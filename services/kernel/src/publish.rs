//! Publishing: check a draft, send it to the replica serving its actor when that is not this
//! one, append it as the next activity of the actor's outbox (`outbox.rs`: the chain), and
//! kick the relay that hands it to delivery.

use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::state::followers_url;
use fedsx_proto::wire::v1::ActivityType;
use fedsx_wire::ActivityId;

/// What to publish.
#[derive(Debug, Clone)]
pub struct Draft {
    pub actor: String,
    pub kind: ActivityType,
    pub object: String,
    /// Recipient actor URLs; `followers` stands for the actor's followers collection,
    /// `public` for the public (ActivityStreams' `#Public`: addressed to, delivered to nobody).
    pub to: Vec<String>,
    pub content: String,
    /// Makes a publish happen once however often it is retried (e.g. the Accept of one
    /// Follow); by default every publish is a new activity.
    pub once_key: Option<[u8; 32]>,
}

/// Where a published activity landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub id: ActivityId,
    /// False when `once_key` found the activity already published.
    pub new: bool,
}

impl Kernel {
    #[tracing::instrument(name = "publish", skip_all, fields(fedsx.actor = %draft.actor, fedsx.activity_id, fedsx.seq))]
    pub async fn publish(&self, draft: Draft) -> Result<Published, KernelError> {
        if draft.kind == ActivityType::Unspecified {
            return Err(KernelError::BadRequest("activity type is missing".into()));
        }
        if let Some(there) = self.route(&draft.actor, false).await? {
            // A flow step running here for an actor served elsewhere.
            return self.publish_elsewhere(there, draft).await;
        }
        let (key, document) = {
            let state = self.read_state();
            let actor = state
                .actor(&draft.actor)
                .ok_or_else(|| KernelError::NoSuchActor(draft.actor.clone()))?;
            (actor.key.clone(), actor.document.clone())
        };
        if let Some(bad) = draft
            .to
            .iter()
            .find(|t| *t != "followers" && *t != "public" && !(t.starts_with("https://") || t.starts_with("http://")))
        {
            return Err(KernelError::BadRequest(format!(
                "recipient {bad:?} is neither an actor's http(s) URL, \"followers\" nor \"public\""
            )));
        }
        let to: Vec<String> = draft
            .to
            .iter()
            .map(|t| match t.as_str() {
                "followers" => followers_url(&document.id),
                "public" => fedsx_activitypub::json::PUBLIC.to_owned(),
                _ => t.clone(),
            })
            .collect();

        let published = self
            .outboxes
            .append(crate::outbox::Next {
                actor: &draft.actor,
                document: &document,
                key: &key,
                kind: draft.kind,
                object: &draft.object,
                to: &to,
                content: &draft.content,
                once_key: draft.once_key,
            })
            .await?;
        if published.new {
            let span = tracing::Span::current();
            span.record("fedsx.activity_id", published.id.to_string());
            span.record("fedsx.seq", published.seq);
            self.relay.remember_trace(published.id);
            tracing::info!(actor = %draft.actor, seq = published.seq, id = %published.id, kind = ?draft.kind, "published");
            self.relay.kick(&draft.actor);
        }
        Ok(published)
    }
}
