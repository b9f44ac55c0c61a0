//! Publishing: build the next activity of an actor's outbox (seq = tip + 1, prev = the last
//! id), sign it, append it with the expected tip so two publishes never share a seq, and
//! kick the relay that hands it to delivery.

use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::logs::AppendError;
use crate::state::followers_url;
use bytes::Bytes;
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::{Activity, ActivityType, SignedEnvelope};
use fedsx_wire::ActivityId;
use prost::Message;
use std::sync::Arc;

/// Attempts before giving up on an outbox whose tip keeps moving under us.
const MAX_CONFLICTS: usize = 8;

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

/// The end of an actor's outbox as this kernel last saw it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Head {
    loaded: bool,
    tip: u64,
    last: Option<ActivityId>,
}

/// The id of the activity inside an outbox entry's envelope.
pub(crate) fn envelope_activity(data: &[u8]) -> Result<(ActivityId, Activity), KernelError> {
    let envelope = SignedEnvelope::decode(data).map_err(|err| KernelError::Internal(format!("outbox entry: {err}")))?;
    let activity = Activity::decode(envelope.activity.as_ref())
        .map_err(|err| KernelError::Internal(format!("outbox entry: {err}")))?;
    Ok((ActivityId::of(&envelope.activity), activity))
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

        let head = self.head(&draft.actor);
        let mut head = head.lock().await;
        for _ in 0..MAX_CONFLICTS {
            if !head.loaded {
                *head = self.load_head(&draft.actor).await?;
            }
            let activity = Activity {
                r#type: draft.kind.into(),
                actor: document.id.clone(),
                seq: head.tip + 1,
                object: draft.object.clone(),
                to: to.clone(),
                published_ms: self.now_ms(),
                content: draft.content.clone(),
                prev: head.last.map(|id| Bytes::copy_from_slice(&id.0)).unwrap_or_default(),
            };
            let signed = fedsx_wire::sign(&activity, &key, &document.key_id);
            let envelope = signed.to_bytes();
            if envelope.len() > fedsx_wire::MAX_ENVELOPE_BYTES {
                // No inbox would take it: refused here, before it could block the outbox.
                return Err(KernelError::BadRequest(format!(
                    "the signed activity would be {} bytes, over the {} bytes an inbox accepts; shorten the content",
                    envelope.len(),
                    fedsx_wire::MAX_ENVELOPE_BYTES
                )));
            }
            let entry_id = draft.once_key.unwrap_or(signed.id.0);
            let appended = self
                .ports
                .logs
                .append(
                    &draft.actor,
                    StreamKind::Outbox,
                    Bytes::copy_from_slice(&entry_id),
                    envelope.into(),
                    Some(head.tip),
                )
                .await;
            match appended {
                Ok(answer) => {
                    let result = answer
                        .entries
                        .first()
                        .copied()
                        .ok_or_else(|| KernelError::Internal("empty append answer".into()))?;
                    if result.appended {
                        *head = Head {
                            loaded: true,
                            tip: result.seq,
                            last: Some(signed.id),
                        };
                        drop(head);
                        let span = tracing::Span::current();
                        span.record("fedsx.activity_id", signed.id.to_string());
                        span.record("fedsx.seq", result.seq);
                        self.relay.remember_trace(signed.id);
                        tracing::info!(actor = %draft.actor, seq = result.seq, id = %signed.id, kind = ?draft.kind, "published");
                        self.relay.kick(&draft.actor);
                        return Ok(Published {
                            seq: result.seq,
                            id: signed.id,
                            new: true,
                        });
                    }
                    // Published before (same once-key): answer with what is there.
                    head.loaded = false;
                    let id = self.outbox_id_at(&draft.actor, result.seq).await?;
                    return Ok(Published {
                        seq: result.seq,
                        id,
                        new: false,
                    });
                }
                Err(AppendError::Conflict { tip }) => {
                    tracing::debug!(actor = %draft.actor, expected = head.tip, tip, "outbox moved; rebuilding");
                    head.loaded = false;
                }
                Err(AppendError::Failed(err)) => {
                    head.loaded = false;
                    return Err(err);
                }
            }
        }
        Err(KernelError::Internal(format!(
            "outbox of {} kept moving; gave up after {MAX_CONFLICTS} tries",
            draft.actor
        )))
    }

    fn head(&self, actor: &str) -> Arc<tokio::sync::Mutex<Head>> {
        self.heads
            .lock()
            .expect("heads lock poisoned")
            .entry(actor.to_owned())
            .or_default()
            .clone()
    }

    async fn load_head(&self, actor: &str) -> Result<Head, KernelError> {
        let tip = self.ports.logs.tip(actor, StreamKind::Outbox).await?;
        let last = if tip == 0 {
            None
        } else {
            Some(self.outbox_id_at(actor, tip).await?)
        };
        Ok(Head {
            loaded: true,
            tip,
            last,
        })
    }

    /// The activity id of the outbox entry at `seq`.
    async fn outbox_id_at(&self, actor: &str, seq: u64) -> Result<ActivityId, KernelError> {
        let (entries, _) = self.ports.logs.read(actor, StreamKind::Outbox, seq - 1, 1).await?;
        let entry = entries
            .into_iter()
            .next()
            .filter(|e| e.seq == seq)
            .ok_or_else(|| KernelError::Internal(format!("outbox of {actor} has no entry {seq}")))?;
        Ok(envelope_activity(&entry.data)?.0)
    }
}
