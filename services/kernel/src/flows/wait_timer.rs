//! `wait-timer`: sleeps for `ms` milliseconds (input `{"ms": 1500}`), then completes with
//! how late it woke. A timer that fell due while the kernel was down fires at start.

use super::{FlowDefinition, FlowHost, Next, StepCtx, input_u64};
use crate::error::KernelError;
use futures::future::BoxFuture;
use serde_json::{Value, json};

/// At most 30 days.
const MAX_MS: u64 = 30 * 24 * 3600 * 1000;

pub(crate) struct WaitTimer;

impl FlowDefinition for WaitTimer {
    fn name(&self) -> &'static str {
        "wait-timer"
    }

    fn begin(&self, _: &dyn FlowHost, input: &Value) -> Result<Value, KernelError> {
        let ms = input_u64(input, "ms", None, 0..=MAX_MS)?;
        Ok(json!({ "ms": ms }))
    }

    fn step<'a>(&'a self, host: &'a dyn FlowHost, ctx: StepCtx) -> BoxFuture<'a, Result<Next, KernelError>> {
        Box::pin(async move {
            let ms = ctx.data["ms"].as_i64().unwrap_or(0);
            Ok(match ctx.step {
                0 => {
                    let until_ms = host.now_ms() + ms;
                    let mut data = ctx.data;
                    data["due_ms"] = json!(until_ms);
                    Next::Sleep {
                        until_ms,
                        resume_at: 1,
                        data,
                    }
                }
                _ => {
                    let due = ctx.data["due_ms"].as_i64().unwrap_or(0);
                    let woke = ctx.data["woke_ms"].as_i64().unwrap_or(0);
                    Next::Done(json!({ "slept_ms": ms, "due_ms": due, "late_ms": (woke - due).max(0) }))
                }
            })
        })
    }
}
