//! What the relay hands delivery for ActivityPub recipients: the outbox entry (a fed-sx
//! activity) as the ActivityStreams activity it stands for, with the sender's sealed RSA
//! key, so delivery signs it at send time.

use crate::error::KernelError;
use crate::kernel::Kernel;
use fedsx_activitypub::json;
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
        let me = activity.actor.as_str();
        let ap_id = json::activity_url(me, &id.to_hex());
        let followers = crate::state::followers_url(me);
        Ok(match activity.r#type() {
            ActivityType::Create => {
                let to: Vec<String> = activity.to.clone();
                let content = json::text_to_html(&activity.content);
                let published = json::rfc3339(activity.published_ms);
                let cc = if to.contains(&followers) {
                    Vec::new()
                } else {
                    vec![followers]
                };
                Some(json::create_note(me, &ap_id, &content, &published, &to, &cc))
            }
            ActivityType::Follow => Some(json::follow(me, &ap_id, &activity.object)),
            ActivityType::Undo => {
                let Some(followed) = activity.to.first() else {
                    return Ok(None);
                };
                let follow = json::follow(me, &json::activity_url(me, &activity.object), followed);
                Some(json::undo(me, &ap_id, follow, followed))
            }
            ActivityType::Accept => {
                // The Follow it accepts, as it arrived (servers match their Follow's id).
                let Some(follow_id) = ActivityId::from_hex(&activity.object) else {
                    return Ok(None);
                };
                let id = bytes::Bytes::copy_from_slice(&follow_id.0);
                let Some(seq) = self.logs.lookup(name, StreamKind::Inbox, id).await? else {
                    return Ok(None);
                };
                let (entries, _) = self.logs.read(name, StreamKind::Inbox, seq - 1, 1).await?;
                let follow = entries
                    .first()
                    .and_then(|entry| super::inbound::received_activity(&entry.data));
                follow.map(|follow| json::accept(me, &ap_id, follow))
            }
            ActivityType::Unspecified => None,
        })
    }
}
