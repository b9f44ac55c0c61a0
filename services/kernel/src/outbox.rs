//! Actors' outboxes as chains: the next activity is built on the end of the outbox as this
//! replica last saw it (seq = tip + 1, prev = the last id), signed, and appended with that
//! tip expected — so two publishes never share a seq and the chain never forks, also when
//! another writer moved the outbox meanwhile (the end is read again and the activity
//! rebuilt). Knows nothing of who may publish or where it goes next (`publish.rs`).

use crate::clock::Clock;
use crate::error::KernelError;
use crate::logs::{AppendError, Logs};
use crate::publish::Published;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::ActorDocument;
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::{Activity, ActivityType, SignedEnvelope};
use fedsx_wire::ActivityId;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Attempts before giving up on an outbox whose tip keeps moving under us.
const MAX_CONFLICTS: usize = 8;

/// The id of the activity inside an outbox entry's envelope.
pub(crate) fn envelope_activity(data: &[u8]) -> Result<(ActivityId, Activity), KernelError> {
    let envelope = SignedEnvelope::decode(data).map_err(|err| KernelError::Internal(format!("outbox entry: {err}")))?;
    let activity = Activity::decode(envelope.activity.as_ref())
        .map_err(|err| KernelError::Internal(format!("outbox entry: {err}")))?;
    Ok((ActivityId::of(&envelope.activity), activity))
}

/// The next activity of a local actor's outbox: all of it but its place in the chain.
pub(crate) struct Next<'a> {
    /// The actor's local name (its outbox's stream).
    pub actor: &'a str,
    pub document: &'a ActorDocument,
    pub key: &'a SigningKey,
    pub kind: ActivityType,
    pub object: &'a str,
    /// Recipients as the activity names them (URLs).
    pub to: &'a [String],
    pub content: &'a str,
    /// Makes the append happen once however often it is retried; None: a new activity.
    pub once_key: Option<[u8; 32]>,
}

/// The end of an actor's outbox as this replica last saw it.
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    loaded: bool,
    tip: u64,
    last: Option<ActivityId>,
}

/// The outboxes of the actors this replica publishes for, each appended to one publish at
/// a time.
pub(crate) struct Outboxes {
    logs: Logs,
    clock: Arc<dyn Clock>,
    heads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Head>>>>,
}

impl Outboxes {
    pub(crate) fn new(logs: Logs, clock: Arc<dyn Clock>) -> Outboxes {
        Outboxes {
            logs,
            clock,
            heads: Mutex::default(),
        }
    }

    /// Signs `next` as the next activity of its actor's outbox and appends it; where it
    /// landed. An activity whose signed envelope no inbox would take is refused
    /// (INVALID_ARGUMENT) and nothing is written.
    pub(crate) async fn append(&self, next: Next<'_>) -> Result<Published, KernelError> {
        let head = self.head(next.actor);
        let mut head = head.lock().await;
        for _ in 0..MAX_CONFLICTS {
            if !head.loaded {
                *head = self.load_head(next.actor).await?;
            }
            let activity = Activity {
                r#type: next.kind.into(),
                actor: next.document.id.clone(),
                seq: head.tip + 1,
                object: next.object.to_owned(),
                to: next.to.to_vec(),
                published_ms: self.clock.now_ms(),
                content: next.content.to_owned(),
                prev: head.last.map(|id| Bytes::copy_from_slice(&id.0)).unwrap_or_default(),
            };
            let signed = fedsx_wire::sign(&activity, next.key, &next.document.key_id);
            let envelope = signed.to_bytes();
            if envelope.len() > fedsx_wire::MAX_ENVELOPE_BYTES {
                // No inbox would take it: refused here, before it could block the outbox.
                return Err(KernelError::BadRequest(format!(
                    "the signed activity would be {} bytes, over the {} bytes an inbox accepts; shorten the content",
                    envelope.len(),
                    fedsx_wire::MAX_ENVELOPE_BYTES
                )));
            }
            let entry_id = next.once_key.unwrap_or(signed.id.0);
            let appended = self
                .logs
                .append(
                    next.actor,
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
                        return Ok(Published {
                            seq: result.seq,
                            id: signed.id,
                            new: true,
                        });
                    }
                    // Appended before (same once-key): answer with what is there.
                    head.loaded = false;
                    let id = self.id_at(next.actor, result.seq).await?;
                    return Ok(Published {
                        seq: result.seq,
                        id,
                        new: false,
                    });
                }
                Err(AppendError::Conflict { tip }) => {
                    tracing::debug!(actor = %next.actor, expected = head.tip, tip, "outbox moved; rebuilding");
                    head.loaded = false;
                }
                Err(AppendError::Failed(err)) => {
                    head.loaded = false;
                    return Err(err);
                }
            }
        }
        Err(KernelError::Contended(format!(
            "the outbox of {} kept moving under another writer; gave up after {MAX_CONFLICTS} tries with nothing written; try again",
            next.actor
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
        let tip = self.logs.tip(actor, StreamKind::Outbox).await?;
        let last = if tip == 0 {
            None
        } else {
            Some(self.id_at(actor, tip).await?)
        };
        Ok(Head {
            loaded: true,
            tip,
            last,
        })
    }

    /// The activity id of the outbox entry at `seq`.
    async fn id_at(&self, actor: &str, seq: u64) -> Result<ActivityId, KernelError> {
        let (entries, _) = self.logs.read(actor, StreamKind::Outbox, seq - 1, 1).await?;
        let entry = entries
            .into_iter()
            .next()
            .filter(|e| e.seq == seq)
            .ok_or_else(|| KernelError::Internal(format!("outbox of {actor} has no entry {seq}")))?;
        Ok(envelope_activity(&entry.data)?.0)
    }
}

#[cfg(test)]
mod tests;
