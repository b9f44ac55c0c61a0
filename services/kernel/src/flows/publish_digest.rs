//! `publish-digest`: gathers the last `notes` notes (Create activities) of a local actor's
//! outbox, suspends awaiting `approve` or `reject`, and on approve publishes one Create to
//! the actor's followers summarising them. Input: `{"actor": "alice", "notes": 10}`.

use super::{FlowDefinition, Next, StepCtx, fail_point, input_u64};
use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::publish::{Draft, envelope_activity};
use fedsx_proto::logstore::v1::StreamKind;
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

    fn begin(&self, kernel: &Kernel, input: &Value) -> Result<Value, KernelError> {
        let actor = input
            .get("actor")
            .and_then(Value::as_str)
            .ok_or_else(|| KernelError::BadRequest("input field \"actor\" (a local actor name) is required".into()))?;
        kernel.actor(actor)?;
        let notes = input_u64(input, "notes", Some(10), 1..=MAX_NOTES)?;
        Ok(json!({ "actor": actor, "notes": notes }))
    }

    fn step<'a>(&'a self, kernel: &'a Kernel, ctx: StepCtx) -> BoxFuture<'a, Result<Next, KernelError>> {
        Box::pin(async move {
            match ctx.step {
                0 => gather(kernel, ctx).await,
                1 => Ok(decide(ctx)),
                _ => publish(kernel, ctx).await,
            }
        })
    }
}

/// Step 0: the last notes of the outbox, newest last; then wait for the editor.
async fn gather(kernel: &Kernel, ctx: StepCtx) -> Result<Next, KernelError> {
    let actor = ctx.str("actor").to_owned();
    let wanted = ctx.data["notes"].as_u64().unwrap_or(10) as usize;
    let mut end = kernel.logs.tip(&actor, StreamKind::Outbox).await?;
    let mut notes = Vec::new();
    while end > 0 && notes.len() < wanted {
        let after = end.saturating_sub(PAGE);
        let (entries, _) = kernel
            .logs
            .read(&actor, StreamKind::Outbox, after, (end - after) as u32)
            .await?;
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
async fn publish(kernel: &Kernel, ctx: StepCtx) -> Result<Next, KernelError> {
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
    let published = kernel.publish(draft).await?;
    fail_point("flow-after-publish");
    Ok(Next::Done(json!({
        "published": true,
        "seq": published.seq,
        "id": published.id.to_string(),
        "notes": notes.len(),
    })))
}
