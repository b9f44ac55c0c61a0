//! What the relay hands delivery for ActivityPub recipients: the outbox entry (a fed-sx
//! activity) as the ActivityStreams activity it stands for, with the sender's sealed RSA
//! key, so delivery signs it at send time.

use crate::error::KernelError;
use crate::kernel::Kernel;
use fedsx_activitypub::payload::Post;
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_wire::ActivityId;
use serde_json::Value;

impl Kernel {
    /// The post for ActivityPub recipients of `activity` (outbox entry `id` of local actor
    /// `name`), encoded for delivery; Err(reason) when it has no ActivityPub form (an
    /// Accept of a Follow that came natively, an actor without an RSA key).
    pub(crate) async fn activitypub_post(
        &self,
        name: &str,
        activity: &Activity,
        id: ActivityId,
    ) -> Result<Result<Vec<u8>, String>, KernelError> {
        let (key_id, sealed) = {
            let state = self.read_state();
            let Some(actor) = state.actor(name) else {
                return Ok(Err(format!("no local actor {name}")));
            };
            (actor.document.rsa_key_id.clone(), actor.rsa_sealed.clone())
        };
        if sealed.is_empty() {
            return Ok(Err(format!("actor {name} has no RSA key yet")));
        }
        let Some(body) = self.activitypub_form(name, activity, id).await? else {
            return Ok(Err(format!(
                "a {:?} activity has no ActivityPub form here",
                activity.r#type()
            )));
        };
        Ok(Ok(Post::new(name, &key_id, &sealed, &body).encode()))
    }

    async fn activitypub_form(
        &self,
        name: &str,
        activity: &Activity,
        id: ActivityId,
    ) -> Result<Option<Value>, KernelError> {
        let follow = match activity.r#type() {
            ActivityType::Accept => self.accepted_follow(name, &activity.object).await?,
            _ => None,
        };
        Ok(fedsx_activitypub::native::to_activitypub(
            activity,
            &id.to_hex(),
            follow,
        ))
    }

    /// The Follow (hex id `follow`) as it arrived in `name`'s inbox, if it came over
    /// ActivityPub.
    async fn accepted_follow(&self, name: &str, follow: &str) -> Result<Option<Value>, KernelError> {
        let Some(follow_id) = ActivityId::from_hex(follow) else {
            return Ok(None);
        };
        let id = bytes::Bytes::copy_from_slice(&follow_id.0);
        let entry = self.ports.logs.entry_by_id(name, StreamKind::Inbox, id).await?;
        Ok(entry.and_then(|entry| fedsx_activitypub::inbox::read(&entry.data).map(|kept| kept.activity)))
    }
}
