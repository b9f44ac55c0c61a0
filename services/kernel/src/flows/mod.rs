//! Durable flows: named processes registered in the kernel (Rust code) that run step by step
//! and suspend until a signal arrives or a time passes. Every change of an instance is
//! journaled in the log-store before it is acknowledged (`engine.rs`); a step with an effect
//! makes it idempotent with `StepCtx::once_key`, because after a crash the step it was in
//! runs again.

mod engine;
mod publish_digest;
pub(crate) mod snapshot;
mod wait_timer;

pub(crate) use engine::{FlowTable, latest_versions, spawn_timers};

use crate::error::KernelError;
use crate::kernel::{Kernel, derived_id};
use crate::publish::{Draft, Published};
use fedsx_proto::kernel::v1::ActorDocument;
use fedsx_proto::logstore::v1::{Entry, StreamKind};
use futures::future::BoxFuture;
use serde_json::Value;

/// The log-store actor whose FLOW stream journals every flow instance; not a valid actor
/// name, so it never collides with one.
pub const FLOWS_ACTOR: &str = "~flows";

/// The partition whose replica runs the flows (and answers every flow call).
pub(crate) const FLOWS_PARTITION: u32 = 0;

impl Kernel {
    /// Whether this replica runs the flows now.
    pub(crate) fn serves_flows(&self) -> bool {
        self.ownership.owned(FLOWS_PARTITION).is_some()
    }

    /// Fails unless this replica runs the flows.
    pub(crate) fn check_serves_flows(&self) -> Result<(), KernelError> {
        if self.serves_flows() {
            return Ok(());
        }
        Err(KernelError::NotOwner {
            partition: FLOWS_PARTITION,
            owner: self.ownership.owner(FLOWS_PARTITION),
        })
    }

    /// Loads every instance from the flow journal again (its newest snapshot and what
    /// follows), before this replica starts running the flows.
    pub(crate) async fn reload_flows(&self) -> Result<(), KernelError> {
        let tip = self.ports.logs.tip(FLOWS_ACTOR, StreamKind::Flow).await?;
        if tip == self.flows.loaded_through() {
            // Nothing journaled since they were loaded (the first round after a start).
            return Ok(());
        }
        let restored = snapshot::restore(&self.ports.logs).await?;
        let instances = restored.latest.len();
        self.flows.load(restored.latest, restored.last);
        tracing::info!(instances, flow_journal_seq = restored.last, "flows loaded to run here");
        Ok(())
    }
}

/// What a step decided.
#[derive(Debug)]
pub(crate) enum Next {
    /// Run `step` now (the change is journaled first).
    Continue { step: u32, data: Value },
    /// Wait for one of `signals`; the signal that came is put in `data.signal` as
    /// `{"name": …, "payload": …}` and step `resume_at` runs.
    AwaitSignal {
        signals: Vec<&'static str>,
        resume_at: u32,
        data: Value,
    },
    /// Wait until `until_ms` (ms since the epoch); then `data.woke_ms` is set and step
    /// `resume_at` runs, even if the time passed while the kernel was down.
    Sleep { until_ms: i64, resume_at: u32, data: Value },
    /// Ended with this output.
    Done(Value),
    /// Ended without completing.
    Failed(String),
}

/// What a step gets: which instance, which step, and the working data.
pub(crate) struct StepCtx {
    pub instance: String,
    pub step: u32,
    pub data: Value,
}

impl StepCtx {
    /// The idempotency key of an effect of this step: the same every time the step is run
    /// again after a crash, different for every instance and step.
    pub fn once_key(&self, effect: &str) -> [u8; 32] {
        derived_id(
            "flow-effect",
            &[self.instance.as_bytes(), &self.step.to_be_bytes(), effect.as_bytes()],
        )
    }

    pub fn str(&self, field: &str) -> &str {
        self.data.get(field).and_then(Value::as_str).unwrap_or_default()
    }
}

/// What a flow's steps may use of the node: its actors, their outboxes, publishing, and
/// the clock. The kernel is one; a step can be tested with another.
pub(crate) trait FlowHost: Send + Sync {
    /// The document of local actor `name`.
    fn actor(&self, name: &str) -> Result<ActorDocument, KernelError>;

    /// Entries of local actor `actor`'s outbox after `after` (at most `limit`), and its tip.
    fn outbox<'a>(
        &'a self,
        actor: &'a str,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<Entry>, u64), KernelError>>;

    fn outbox_tip<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<u64, KernelError>>;

    fn publish(&self, draft: Draft) -> BoxFuture<'_, Result<Published, KernelError>>;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

impl FlowHost for Kernel {
    fn actor(&self, name: &str) -> Result<ActorDocument, KernelError> {
        Kernel::actor(self, name)
    }

    fn outbox<'a>(
        &'a self,
        actor: &'a str,
        after: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<Entry>, u64), KernelError>> {
        Box::pin(self.ports.logs.read(actor, StreamKind::Outbox, after, limit))
    }

    fn outbox_tip<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<u64, KernelError>> {
        Box::pin(self.ports.logs.tip(actor, StreamKind::Outbox))
    }

    fn publish(&self, draft: Draft) -> BoxFuture<'_, Result<Published, KernelError>> {
        Box::pin(Kernel::publish(self, draft))
    }

    fn now_ms(&self) -> i64 {
        Kernel::now_ms(self)
    }
}

/// A registered flow.
pub(crate) trait FlowDefinition: Send + Sync {
    fn name(&self) -> &'static str;

    /// Checks the input of StartFlow and returns the working data of step 0.
    fn begin(&self, host: &dyn FlowHost, input: &Value) -> Result<Value, KernelError>;

    /// Runs one step. An error that is not the caller's fault (the log-store is down) leaves
    /// the instance running, and the step is run again later; any other error fails it.
    fn step<'a>(&'a self, host: &'a dyn FlowHost, ctx: StepCtx) -> BoxFuture<'a, Result<Next, KernelError>>;
}

/// Every flow this kernel knows.
pub(crate) fn registry() -> Vec<Box<dyn FlowDefinition>> {
    vec![Box::new(publish_digest::PublishDigest), Box::new(wait_timer::WaitTimer)]
}

/// Test-only crash injection: when `FEDSX_FAIL_POINT` names this point, the process aborts
/// here (as a SIGKILL would stop it). Never set in production.
pub(crate) fn fail_point(name: &str) {
    static CONFIGURED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| std::env::var("FEDSX_FAIL_POINT").ok());
    if configured.as_deref() == Some(name) {
        tracing::error!(fail_point = name, "fail point reached; aborting");
        std::process::abort();
    }
}

/// A field of a JSON input as an unsigned integer within `range`, or `default` when absent.
pub(crate) fn input_u64(
    input: &Value,
    field: &str,
    default: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, KernelError> {
    let value = match input.get(field) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| KernelError::BadRequest(format!("input field {field:?} is required")))?
        }
        Some(value) => value
            .as_u64()
            .ok_or_else(|| KernelError::BadRequest(format!("input field {field:?} must be a whole number")))?,
    };
    if !range.contains(&value) {
        return Err(KernelError::BadRequest(format!(
            "input field {field:?} must be between {} and {}",
            range.start(),
            range.end()
        )));
    }
    Ok(value)
}
