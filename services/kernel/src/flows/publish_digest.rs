//! `publish-digest`: gathers the last `notes` notes (Create activities) of a local actor's
//! outbox, suspends awaiting `approve` or `reject`, and on approve publishes one Create to
//! the actor's followers summarising them. Input: `{"actor": "alice", "notes": 10}`.

use super::{FlowDefinition, FlowHost, Next, StepCtx, fail_point, input_u64};
use crate::error::KernelError;
use crate::outbox::envelope_activity;
use crate::publish::Draft;
use fedsx_proto::wire::v1::ActivityType;
use futures::future::BoxFuture;
use serde_json::{Value, json};

/// The `object` of a digest, so a later digest does not summarise an earlier one.
pub const DIGEST_OBJECT: &str = "fedsx:digest";
const MAX_NOTES: u64 = 100;
/// Characters of each note quoted in the digest.
const EXCERPT_CHARS: usize = 80;
/// Outbox entries read per page while looking back for notes.
const PAGE: u64 = 256;

pub(crate) struct PublishDigest;

impl FlowDefinition for PublishDigest {
    fn name(&self) -> &'static str {
        "publish-digest"
    }

    fn begin(&self, host: &dyn FlowHost, input: &Value) -> Result<Value, KernelError> {
        let actor = input
            .get("actor")
            .and_then(Value::as_str)
            .ok_or_else(|| KernelError::BadRequest("input field \"actor\" (a local actor name) is required".into()))?;
        host.actor(actor)?;
        let notes = input_u64(input, "notes", Some(10), 1..=MAX_NOTES)?;
        Ok(json!({ "actor": actor, "notes": notes }))
    }

    fn step<'a>(&'a self, host: &'a dyn FlowHost, ctx: StepCtx) -> BoxFuture<'a, Result<Next, KernelError>> {
        Box::pin(async move {
            match ctx.step {
                0 => gather(host, ctx).await,
                1 => Ok(decide(ctx)),
                _ => publish(host, ctx).await,
            }
        })
    }
}

/// Step 0: the last notes of the outbox, newest last; then wait for the editor.
async fn gather(host: &dyn FlowHost, ctx: StepCtx) -> Result<Next, KernelError> {
    let actor = ctx.str("actor").to_owned();
    let wanted = ctx.data["notes"].as_u64().unwrap_or(10) as usize;
    let mut end = host.outbox_tip(&actor).await?;
    let mut notes = Vec::new();
    while end > 0 && notes.len() < wanted {
        let after = end.saturating_sub(PAGE);
        let (entries, _) = host.outbox(&actor, after, (end - after) as u32).await?;
        for entry in entries.iter().rev().filter(|e| e.seq <= end) {
            let (id, activity) = envelope_activity(&entry.data)?;
            if activity.r#type() == ActivityType::Create && activity.object != DIGEST_OBJECT {
                let excerpt: String = activity.content.chars().take(EXCERPT_CHARS).collect();
                notes.push(json!({ "seq": entry.seq, "id": id.to_string(), "excerpt": excerpt }));
                if notes.len() == wanted {
                    break;
                }
            }
        }
        end = after;
    }
    notes.reverse();
    let mut data = ctx.data;
    data["gathered"] = Value::Array(notes);
    Ok(Next::AwaitSignal {
        signals: vec!["approve", "reject"],
        resume_at: 1,
        data,
    })
}

/// Step 1: on reject end; on approve go on to publish.
fn decide(ctx: StepCtx) -> Next {
    let signal = &ctx.data["signal"];
    if signal["name"] == "approve" {
        Next::Continue {
            step: 2,
            data: ctx.data,
        }
    } else {
        Next::Done(json!({ "published": false, "reason": signal["payload"] }))
    }
}

/// Step 2: publish the digest, once however often this step runs again after a crash.
async fn publish(host: &dyn FlowHost, ctx: StepCtx) -> Result<Next, KernelError> {
    let actor = ctx.str("actor").to_owned();
    let notes = ctx.data["gathered"].as_array().cloned().unwrap_or_default();
    let mut content = format!("Digest of {} notes from {actor}:", notes.len());
    for note in &notes {
        content.push_str("\n• ");
        content.push_str(note["excerpt"].as_str().unwrap_or_default());
    }
    let draft = Draft {
        actor,
        kind: ActivityType::Create,
        object: DIGEST_OBJECT.to_owned(),
        to: vec!["followers".to_owned()],
        content,
        once_key: Some(ctx.once_key("digest")),
    };
    let published = host.publish(draft).await?;
    fail_point("flow-after-publish");
    Ok(Next::Done(json!({
        "published": true,
        "seq": published.seq,
        "id": published.id.to_string(),
        "notes": notes.len(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::Published;
    use fedsx_proto::kernel::v1::ActorDocument;
    use fedsx_proto::logstore::v1::Entry;
    use fedsx_proto::wire::v1::{Activity, SignedEnvelope};
    use fedsx_wire::ActivityId;
    use futures::future::BoxFuture;
    use prost::Message;
    use std::sync::Mutex;

    /// A node with one actor, alice, whose outbox is `outbox`; what the flow publishes is
    /// kept, and each page it reads counted.
    struct Node {
        outbox: Vec<Entry>,
        published: Mutex<Vec<Draft>>,
        pages: Mutex<usize>,
    }

    impl FlowHost for Node {
        fn actor(&self, name: &str) -> Result<ActorDocument, KernelError> {
            if name != "alice" {
                return Err(KernelError::NoSuchActor(name.to_owned()));
            }
            Ok(ActorDocument::default())
        }

        fn outbox<'a>(
            &'a self,
            _: &'a str,
            after: u64,
            limit: u32,
        ) -> BoxFuture<'a, Result<(Vec<Entry>, u64), KernelError>> {
            *self.pages.lock().unwrap() += 1;
            let page = self
                .outbox
                .iter()
                .filter(|e| e.seq > after && e.seq <= after + u64::from(limit))
                .cloned()
                .collect();
            Box::pin(async move { Ok((page, self.outbox.len() as u64)) })
        }

        fn outbox_tip<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<u64, KernelError>> {
            Box::pin(async move { Ok(self.outbox.len() as u64) })
        }

        fn publish(&self, draft: Draft) -> BoxFuture<'_, Result<Published, KernelError>> {
            let mut published = self.published.lock().unwrap();
            published.push(draft);
            let seq = (self.outbox.len() + published.len()) as u64;
            Box::pin(async move {
                Ok(Published {
                    seq,
                    id: ActivityId([9; 32]),
                    new: true,
                })
            })
        }

        fn now_ms(&self) -> i64 {
            0
        }
    }

    /// An outbox of `len` activities: a note at every seq divisible by 3 (content `note
    /// <seq>`), a Follow elsewhere, and an earlier digest at seq 590.
    fn node(len: u64) -> Node {
        let outbox = (1..=len)
            .map(|seq| {
                let (kind, object) = match seq {
                    590 => (ActivityType::Create, DIGEST_OBJECT),
                    s if s % 3 == 0 => (ActivityType::Create, ""),
                    _ => (ActivityType::Follow, "https://a.example/actors/x"),
                };
                let activity = Activity {
                    r#type: kind.into(),
                    seq,
                    object: object.into(),
                    content: format!("note {seq} {}", "x".repeat(100)),
                    ..Default::default()
                };
                let envelope = SignedEnvelope {
                    activity: activity.encode_to_vec().into(),
                    ..Default::default()
                };
                Entry {
                    seq,
                    id: Default::default(),
                    data: envelope.encode_to_vec().into(),
                }
            })
            .collect();
        Node {
            outbox,
            published: Mutex::default(),
            pages: Mutex::default(),
        }
    }

    fn ctx(step: u32, data: Value) -> StepCtx {
        StepCtx {
            instance: "i1".into(),
            step,
            data,
        }
    }

    #[tokio::test]
    async fn the_digest_gathers_the_last_notes_newest_last_and_publishes_them_once_approved() {
        let node = node(600);
        let data = PublishDigest
            .begin(&node, &json!({ "actor": "alice", "notes": 100 }))
            .unwrap();
        let Next::AwaitSignal {
            signals,
            resume_at,
            mut data,
        } = PublishDigest.step(&node, ctx(0, data)).await.unwrap()
        else {
            panic!("the digest waits for the editor");
        };
        assert_eq!((signals, resume_at), (vec!["approve", "reject"], 1));
        let seqs: Vec<u64> = data["gathered"]
            .as_array()
            .unwrap()
            .iter()
            .map(|note| note["seq"].as_u64().unwrap())
            .collect();
        let notes: Vec<u64> = (1..=600).filter(|s| s % 3 == 0).collect();
        let expected = &notes[notes.len() - 100..];
        assert_eq!(
            seqs, expected,
            "the last 100 notes, the earlier digest left out, newest last"
        );
        assert_eq!(
            *node.pages.lock().unwrap(),
            2,
            "read back from the tip a page at a time, no further"
        );

        data["signal"] = json!({ "name": "approve", "payload": "" });
        let Next::Continue { step: 2, data } = PublishDigest.step(&node, ctx(1, data)).await.unwrap() else {
            panic!("approved: publish next");
        };
        let Next::Done(output) = PublishDigest.step(&node, ctx(2, data)).await.unwrap() else {
            panic!("published: done");
        };
        assert_eq!(output["published"], true);
        assert_eq!(output["notes"], 100);
        let published = node.published.lock().unwrap();
        let [digest] = published.as_slice() else {
            panic!("one digest published, not {}", published.len());
        };
        assert_eq!(digest.to, ["followers"]);
        assert_eq!(digest.object, DIGEST_OBJECT);
        assert_eq!(digest.once_key, Some(ctx(2, Value::Null).once_key("digest")));
        let first = format!("• note 303 {}", "x".repeat(EXCERPT_CHARS - "note 303 ".len()));
        assert!(
            digest
                .content
                .starts_with(&format!("Digest of 100 notes from alice:\n{first}\n")),
            "{}",
            digest.content
        );
    }

    #[tokio::test]
    async fn a_rejected_digest_ends_without_publishing_and_an_unknown_actor_is_refused() {
        let node = node(10);
        let data = json!({ "actor": "alice", "signal": { "name": "reject", "payload": "not now" } });
        let Next::Done(output) = PublishDigest.step(&node, ctx(1, data)).await.unwrap() else {
            panic!("rejected: done");
        };
        assert_eq!(output, json!({ "published": false, "reason": "not now" }));
        assert!(node.published.lock().unwrap().is_empty());
        assert!(matches!(
            PublishDigest.begin(&node, &json!({ "actor": "bob" })),
            Err(KernelError::NoSuchActor(name)) if name == "bob"
        ));
    }
}
