//! The inbound pipeline: decode → recipient exists → the sender's document (known, or
//! fetched) → the key id is the sender's current key → strict verify → idempotent append to
//! the recipient's inbox → side effects (auto-accept of Follow, following on Accept,
//! unfollow on Undo). The node inbox runs the same pipeline once for several recipients. Side effects are idempotent and re-run when a retried envelope finds
//! them unfinished, so a crash between the append and them loses nothing.

use crate::effects::Host;
use crate::error::KernelError;
use crate::kernel::{Kernel, derived_id};
use crate::publish::Draft;
use bytes::Bytes;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{ActorDocument, FollowerAdded, FollowerRemoved, FollowingAdded};
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::ActivityType;
use fedsx_wire::{ActivityId, Received};

/// How often delivery is told, at most, that a node it knows is up.
pub(crate) const REVIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Decodes an inbound envelope, naming it on the current span.
fn decoded(envelope: &[u8]) -> Result<Received, KernelError> {
    let received = fedsx_wire::decode(envelope)?;
    let span = tracing::Span::current();
    span.record("fedsx.actor", received.activity.actor.as_str());
    span.record("fedsx.activity_id", received.id.to_string());
    Ok(received)
}

/// Counts a node-inbox (or ActivityPub) ingest by outcome, once per inbox it landed in.
pub(crate) fn record_node_ingest(result: &Result<NodeIngested, KernelError>) {
    match result {
        Ok(node) => {
            let landed: Vec<Ingested> = node.landed.iter().map(|(_, landed)| *landed).collect();
            crate::metrics::record_ingest(Ok(&landed));
        }
        Err(err) => crate::metrics::record_ingest(Err(err)),
    }
}

/// Where an ingested activity landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub seq: u64,
    /// False when the inbox already held it.
    pub new: bool,
    pub id: ActivityId,
}

/// Where a node-inbox activity landed: one inbox per local recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIngested {
    pub id: ActivityId,
    /// (recipient name, where it landed), by name.
    pub landed: Vec<(String, Ingested)>,
}

impl Kernel {
    /// The inbound pipeline (docs/grpc-api.md), counted by outcome.
    #[tracing::instrument(name = "ingest", skip_all, fields(fedsx.recipient = %recipient, fedsx.actor, fedsx.activity_id, fedsx.seq))]
    pub async fn ingest(&self, recipient: &str, envelope: &[u8]) -> Result<Ingested, KernelError> {
        let result = self.ingest_checked(recipient, envelope).await;
        crate::metrics::record_ingest(result.as_ref().map(std::slice::from_ref));
        result
    }

    /// The node inbox: the same pipeline, verified once, then landing in the inbox of every
    /// local actor the activity is for ([`Kernel::node_recipients`]).
    #[tracing::instrument(name = "ingest", skip_all, fields(fedsx.recipient = "(node inbox)", fedsx.actor, fedsx.activity_id, fedsx.recipients, fedsx.seq))]
    pub async fn ingest_node(&self, envelope: &[u8]) -> Result<NodeIngested, KernelError> {
        let result = self.ingest_node_checked(envelope).await;
        record_node_ingest(&result);
        result
    }

    async fn ingest_checked(&self, recipient: &str, envelope: &[u8]) -> Result<Ingested, KernelError> {
        let received = decoded(envelope)?;
        let recipient_url = self.actor(recipient)?.id;
        let sender = self.verified_sender(&received).await?;
        let ingested = self.land(recipient, &recipient_url, &received, envelope).await?;
        tracing::Span::current().record("fedsx.seq", ingested.seq);
        self.sequence_seen(&sender, received.activity.seq);
        self.revive_node_of(&sender.id);
        Ok(ingested)
    }

    async fn ingest_node_checked(&self, envelope: &[u8]) -> Result<NodeIngested, KernelError> {
        let received = decoded(envelope)?;
        let sender = self.verified_sender(&received).await?;
        let recipients = self.node_recipients(&received.activity.actor, &received.activity.to);
        tracing::Span::current().record("fedsx.recipients", recipients.len());
        let mut landed = Vec::with_capacity(recipients.len());
        for (name, url) in recipients {
            let ingested = match self.route(&name, false).await? {
                None => self.land(&name, &url, &received, envelope).await?,
                Some(there) => self.ingest_elsewhere(there, &name, envelope).await?,
            };
            landed.push((name, ingested));
        }
        if let Some((_, first)) = landed.first() {
            // The seq in the first recipient's inbox, as an actor inbox's span has it.
            tracing::Span::current().record("fedsx.seq", first.seq);
        }
        if landed.is_empty() {
            tracing::info!(sender = %sender.id, id = %received.id, "node inbox: the activity is for none of this node's actors");
        }
        self.sequence_seen(&sender, received.activity.seq);
        self.revive_node_of(&sender.id);
        Ok(NodeIngested {
            id: received.id,
            landed,
        })
    }

    /// A verified request from `sender`'s node arrived, so the node is up: tells delivery,
    /// which stops treating it as unavailable — in the background, and at most once per
    /// [`REVIVE_EVERY`] per node (a node delivery does not know included, and a call that
    /// failed), so a busy peer costs no call per request.
    pub(crate) fn revive_node_of(&self, sender: &str) {
        let Some(node) = fedsx_wire::document::origin(sender) else {
            return;
        };
        if !self.revivals.allow(&node) {
            return;
        }
        let Some(kernel) = self.me.upgrade() else { return };
        self.tasks.spawn(async move {
            // Failed (delivery down, say): tried again by a request [`REVIVE_EVERY`] later,
            // not by the next one — a call per request would only add to the trouble.
            if let Err(err) = kernel.ports.delivery.revive(node.clone()).await {
                tracing::debug!(%node, error = %err, "telling delivery the node is up failed");
            }
        });
    }

    /// The local actors (name, URL) an activity from `sender` addressed `to` is for
    /// ([`State::local_recipients`](crate::state::State::local_recipients)).
    pub(crate) fn node_recipients(&self, sender: &str, to: &[String]) -> Vec<(String, String)> {
        self.read_state().local_recipients(&self.actors_prefix, sender, to)
    }

    /// The sender's document, once the envelope's signature verified against its key.
    async fn verified_sender(&self, received: &Received) -> Result<ActorDocument, KernelError> {
        let sender = self.sender_document(received).await?;
        let key = fedsx_wire::public_key(&sender.public_key).map_err(|reason| KernelError::UnknownSender {
            actor: sender.id.clone(),
            reason: format!("document has no usable key: {reason}"),
        })?;
        received.verify(&key)?;
        Ok(sender)
    }

    /// Appends a verified activity to `recipient`'s inbox (idempotently) and runs its side
    /// effects there.
    async fn land(
        &self,
        recipient: &str,
        recipient_url: &str,
        received: &Received,
        envelope: &[u8],
    ) -> Result<Ingested, KernelError> {
        let answer = self
            .ports
            .logs
            .append_any(
                recipient,
                StreamKind::Inbox,
                Bytes::copy_from_slice(&received.id.0),
                Bytes::copy_from_slice(envelope),
            )
            .await?;
        let entry = answer
            .entries
            .first()
            .copied()
            .ok_or_else(|| KernelError::Internal("empty append answer".into()))?;
        tracing::debug!(
            recipient,
            sender = %received.activity.actor,
            id = %received.id,
            kind = ?received.kind,
            seq = entry.seq,
            new = entry.appended,
            "ingested"
        );
        self.side_effects(recipient, recipient_url, received).await?;
        Ok(Ingested {
            seq: entry.seq,
            new: entry.appended,
            id: received.id,
        })
    }

    /// The sender's document whose key id is the envelope's (`directory.rs`: refetched at
    /// most once per interval when the known one names another key).
    async fn sender_document(&self, received: &Received) -> Result<ActorDocument, KernelError> {
        let (actor, key_id) = (&received.activity.actor, &received.key_id);
        let names_key = |document: &ActorDocument| {
            if document.key_id == *key_id {
                return Ok(());
            }
            Err(KernelError::StaleKey {
                key_id: key_id.clone(),
                actor: actor.clone(),
            })
        };
        self.directory.sender(self, actor, |_| true, names_key).await
    }

    async fn side_effects(&self, recipient: &str, recipient_url: &str, received: &Received) -> Result<(), KernelError> {
        let sender = received.activity.actor.clone();
        match received.kind {
            ActivityType::Follow if received.activity.object == recipient_url => {
                self.accept_follow(recipient, &sender, received.id).await
            }
            ActivityType::Accept => {
                let Some(follow_id) = ActivityId::from_hex(&received.activity.object) else {
                    return Ok(());
                };
                self.follow_accepted(recipient, &sender, follow_id, received.id).await
            }
            ActivityType::Undo => {
                let Some(follow_id) = ActivityId::from_hex(&received.activity.object) else {
                    return Ok(());
                };
                self.follow_undone(recipient, &sender, follow_id, received.id).await
            }
            _ => Ok(()),
        }
    }

    /// `sender` accepted the Follow `follow_id`: if `recipient` sent it to `sender`, it now
    /// follows `sender`.
    pub(crate) async fn follow_accepted(
        &self,
        recipient: &str,
        sender: &str,
        follow_id: ActivityId,
        accept_id: ActivityId,
    ) -> Result<(), KernelError> {
        let known = self.read_state().follows_sent.get(&follow_id).cloned();
        let sent = match known {
            Some(sent) => Some(sent),
            None => self.follow_in_outbox(recipient, follow_id).await?,
        };
        match sent {
            Some((local, followed)) if local == recipient && followed == sender => {
                let record = Record::FollowingAdded(FollowingAdded {
                    actor: recipient.to_owned(),
                    followed: sender.to_owned(),
                    accept_id: accept_id.0.to_vec().into(),
                });
                if self.journal(derived_id("following", &[&accept_id.0]), record).await? {
                    tracing::info!(actor = recipient, followed = %sender, "now following");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `sender` undid its Follow `follow_id`: if that Follow made it a follower of
    /// `recipient`, it no longer is.
    pub(crate) async fn follow_undone(
        &self,
        recipient: &str,
        sender: &str,
        follow_id: ActivityId,
        undo_id: ActivityId,
    ) -> Result<(), KernelError> {
        let follows = self
            .read_state()
            .followers
            .get(recipient)
            .and_then(|f| f.get(sender))
            .is_some_and(|id| *id == follow_id);
        if follows {
            let record = Record::FollowerRemoved(FollowerRemoved {
                actor: recipient.to_owned(),
                follower: sender.to_owned(),
                undo_id: undo_id.0.to_vec().into(),
                reason: "undone by the follower".into(),
            });
            self.journal(derived_id("unfollow", &[&undo_id.0]), record).await?;
            tracing::info!(actor = recipient, follower = %sender, "follower removed");
        }
        Ok(())
    }

    /// A Follow we published but never journaled as sent (the kernel stopped in between):
    /// found by its id in the actor's outbox, and journaled now.
    async fn follow_in_outbox(
        &self,
        actor: &str,
        follow_id: ActivityId,
    ) -> Result<Option<(String, String)>, KernelError> {
        let id = Bytes::copy_from_slice(&follow_id.0);
        let Some(entry) = self.ports.logs.entry_by_id(actor, StreamKind::Outbox, id).await? else {
            return Ok(None);
        };
        let (id, activity) = crate::outbox::envelope_activity(&entry.data)?;
        if id != follow_id || activity.r#type != i32::from(ActivityType::Follow) {
            return Ok(None);
        }
        let record = Record::FollowSent(fedsx_proto::kernel::v1::FollowSent {
            actor: actor.to_owned(),
            followed: activity.object.clone(),
            follow_id: follow_id.0.to_vec().into(),
        });
        self.journal(derived_id("follow-sent", &[&follow_id.0]), record).await?;
        Ok(Some((actor.to_owned(), activity.object)))
    }

    /// Records the follower; its effect publishes one Accept for this Follow, however often
    /// the Follow arrives (`effects.rs`).
    pub(crate) async fn accept_follow(
        &self,
        recipient: &str,
        follower: &str,
        follow_id: ActivityId,
    ) -> Result<(), KernelError> {
        let record = Record::FollowerAdded(FollowerAdded {
            actor: recipient.to_owned(),
            follower: follower.to_owned(),
            follow_id: follow_id.0.to_vec().into(),
        });
        let effects = crate::effects::of(&record);
        let id = derived_id("follower", &[&follow_id.0]);
        let _span = self.effects.in_current_span(id);
        let journaled = self.journal_at(id, record).await?;
        if journaled.new {
            // The Accept is published by the effects runner, after the record is applied.
            return self.effects.done(journaled.journal, journaled.seq).await;
        }
        // A retried Follow: its Accept may be owed from before the newest snapshot, which no
        // takeover runs again.
        for effect in &effects {
            self.run_effect(effect, true).await?;
        }
        Ok(())
    }

    /// Sends a Follow from a local actor to the actor at `remote`; the following is recorded
    /// when its Accept comes back.
    pub async fn follow(&self, actor: &str, remote: &str) -> Result<crate::publish::Published, KernelError> {
        self.actor(actor)?;
        self.document_of(remote)
            .await?
            .map_err(|err| KernelError::Unreachable {
                url: remote.to_owned(),
                reason: err.to_string(),
            })?;
        let draft = Draft {
            actor: actor.to_owned(),
            kind: ActivityType::Follow,
            object: remote.to_owned(),
            to: vec![remote.to_owned()],
            content: String::new(),
            once_key: None,
        };
        let published = self.publish(draft).await?;
        let record = Record::FollowSent(fedsx_proto::kernel::v1::FollowSent {
            actor: actor.to_owned(),
            followed: remote.to_owned(),
            follow_id: published.id.0.to_vec().into(),
        });
        self.journal(derived_id("follow-sent", &[&published.id.0]), record)
            .await?;
        Ok(published)
    }
}
