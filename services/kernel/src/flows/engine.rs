//! The flow engine: instances in memory (rebuilt at start from the journal), each change
//! journaled in the log-store before it is applied or acknowledged, one change at a time
//! per instance, and one timer task that wakes sleeping instances.

use super::snapshot::{Latest, decode, keep_newest};
use super::{FLOWS_ACTOR, FlowDefinition, Next, StepCtx, registry};
use crate::error::KernelError;
use crate::kernel::{Kernel, derived_id};
use crate::snapshot::Snapshots;
use bytes::Bytes;
use fedsx_proto::kernel::v1::{Flow, FlowRecord, FlowStatus};
use fedsx_proto::logstore::v1::{Entry, StreamKind};
use fedsx_runtime::CancellationToken;
use prost::Message;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::Notify;

/// How long an instance whose step could not run (the log-store was down) waits to retry.
const RETRY_AFTER_MS: i64 = 1000;
/// Steps one drive may run without suspending before the instance is failed (a loop).
const MAX_STEPS: usize = 1000;
/// ListFlows page size: default and most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// One instance: what GetFlow shows, and the lock every change takes.
struct Slot {
    view: Mutex<Flow>,
    /// The step to run (when running) or to resume at (when suspended).
    step: tokio::sync::Mutex<u32>,
}

impl Slot {
    fn new(flow: Flow, step: u32) -> Arc<Slot> {
        Arc::new(Slot {
            view: Mutex::new(flow),
            step: tokio::sync::Mutex::new(step),
        })
    }

    fn view(&self) -> Flow {
        self.view.lock().expect("flow view lock poisoned").clone()
    }
}

/// The latest journaled version of every instance, with its next step.
pub(crate) fn latest_versions(entries: &[Entry]) -> Result<Latest, KernelError> {
    let mut latest = Latest::new();
    for entry in entries {
        keep_newest(&mut latest, decode(entry)?);
    }
    Ok(latest)
}

/// Registered definitions, every instance, and pending wake-ups.
pub(crate) struct FlowTable {
    definitions: BTreeMap<&'static str, Box<dyn FlowDefinition>>,
    instances: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// (when, instance): sleeping instances and instances whose step must be retried.
    timers: Mutex<BTreeSet<(i64, String)>>,
    wake: Notify,
    /// When the flow journal was last snapshotted, and whether a snapshot is being written.
    pub(crate) snapshots: Snapshots,
    /// The flow journal seq covered by the snapshot the table was restored from.
    restored_from: u64,
    /// The last flow journal seq the instances were loaded through (`load`).
    loaded_through: std::sync::atomic::AtomicU64,
}

impl FlowTable {
    /// Every instance as it stands in memory.
    pub fn views(&self) -> BTreeMap<String, Flow> {
        let instances = self.instances.read().expect("flow table lock poisoned");
        instances.iter().map(|(id, slot)| (id.clone(), slot.view())).collect()
    }

    /// The table as the flow journal left it: the latest version of every instance, as
    /// restored from the snapshot covering the journal up to `restored_from` and the journal
    /// after it. Running instances are due at once (their step runs again); sleeping ones
    /// at their time.
    pub fn restore(latest: Latest, restored_from: u64, loaded_through: u64) -> FlowTable {
        let table = FlowTable {
            definitions: registry().into_iter().map(|d| (d.name(), d)).collect(),
            instances: RwLock::default(),
            timers: Mutex::default(),
            wake: Notify::new(),
            snapshots: Snapshots::new(restored_from),
            restored_from,
            loaded_through: 0.into(),
        };
        table.load(latest, loaded_through);
        table
    }

    /// Replaces every instance and timer with `latest`, the flow journal up to seq
    /// `through`: when this replica takes the flows over from another, which ran them
    /// meanwhile.
    pub fn load(&self, latest: Latest, through: u64) {
        self.timers.lock().expect("timers lock poisoned").clear();
        let mut instances = BTreeMap::new();
        for (id, (flow, step)) in latest {
            match flow.status() {
                FlowStatus::Running => self.schedule(0, &id),
                FlowStatus::Suspended if flow.wake_at_ms > 0 => self.schedule(flow.wake_at_ms, &id),
                _ => {}
            }
            instances.insert(id, Slot::new(flow, step));
        }
        *self.instances.write().expect("flows lock poisoned") = instances;
        self.loaded_through.store(through, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last flow journal seq the instances were loaded through.
    pub fn loaded_through(&self) -> u64 {
        self.loaded_through.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The flow journal seq covered by the snapshot the table was restored from (0: the
    /// whole flow journal was read).
    pub fn restored_from(&self) -> u64 {
        self.restored_from
    }

    fn schedule(&self, at_ms: i64, id: &str) {
        self.timers
            .lock()
            .expect("timers lock poisoned")
            .insert((at_ms, id.to_owned()));
        self.wake.notify_one();
    }

    fn slot(&self, id: &str) -> Result<Arc<Slot>, KernelError> {
        self.instances
            .read()
            .expect("flows lock poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| KernelError::NoSuchFlowInstance(id.to_owned()))
    }

    /// Instances by status (for logs and metrics).
    pub fn counts(&self) -> BTreeMap<FlowStatus, usize> {
        let mut counts = BTreeMap::new();
        for slot in self.instances.read().expect("flows lock poisoned").values() {
            let status = slot.view.lock().expect("flow view lock poisoned").status();
            *counts.entry(status).or_default() += 1;
        }
        counts
    }

    fn names(&self) -> String {
        self.definitions.keys().copied().collect::<Vec<_>>().join(", ")
    }
}

/// Starts the task that wakes instances when their time comes (at once for those that fell
/// due while the kernel was down).
pub(crate) fn spawn_timers(kernel: Arc<Kernel>, shutdown: CancellationToken) {
    kernel.tasks.clone().spawn(async move {
        loop {
            let next = kernel
                .flows
                .timers
                .lock()
                .expect("timers lock poisoned")
                .first()
                .map(|t| t.0);
            let due = match next {
                Some(at) => kernel.ports.clock.sleep_until(at),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = kernel.flows.wake.notified() => continue,
                () = due => {}
            }
            let now = kernel.now_ms();
            let due: Vec<String> = {
                let mut timers = kernel.flows.timers.lock().expect("timers lock poisoned");
                let later = timers.split_off(&(now + 1, String::new()));
                std::mem::replace(&mut *timers, later)
                    .into_iter()
                    .map(|t| t.1)
                    .collect()
            };
            if !kernel.serves_flows() {
                // The replica serving the flows runs them; this one loads them again when
                // it takes them over.
                continue;
            }
            for id in due {
                let waking = kernel.clone();
                kernel.tasks.spawn(async move { waking.wake_flow(&id).await });
            }
        }
    });
}

fn parse_json(text: &str, what: &str) -> Result<Value, KernelError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(text).map_err(|err| KernelError::BadRequest(format!("{what} is not JSON: {err}")))
}

/// 32 hex digits: milliseconds since the epoch (6 bytes), then 10 random bytes, so ids sort
/// by creation time.
fn new_instance_id(now: i64) -> Result<String, KernelError> {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&now.to_be_bytes()[2..]);
    getrandom::fill(&mut id[6..]).map_err(|err| KernelError::Internal(format!("no randomness: {err}")))?;
    Ok(hex::encode(id))
}

/// Why `signal` cannot be taken by an instance in this state.
fn refusal(flow: &Flow, signal: &str) -> String {
    let id = &flow.id;
    match flow.status() {
        FlowStatus::Suspended if flow.awaiting.is_empty() => {
            format!(
                "flow instance {id} is sleeping until {} ms and awaits no signal",
                flow.wake_at_ms
            )
        }
        FlowStatus::Suspended => format!(
            "flow instance {id} awaits {}, not {signal:?}",
            flow.awaiting.join(" or ")
        ),
        FlowStatus::Running => format!("flow instance {id} is running and awaits no signal"),
        FlowStatus::Done | FlowStatus::Failed | FlowStatus::Unspecified => {
            format!(
                "flow instance {id} has ended ({}); it takes no signal",
                flow.status().label()
            )
        }
    }
}

/// The next version of `flow`, as a step decided, and the step it runs or resumes at.
fn advance(mut flow: Flow, current_step: u32, next: Next, now_ms: i64) -> (Flow, u32) {
    flow.version += 1;
    flow.updated_ms = now_ms;
    flow.awaiting.clear();
    flow.wake_at_ms = 0;
    let step = match next {
        Next::Continue { step, data } => {
            flow.data = data.to_string();
            step
        }
        Next::AwaitSignal {
            signals,
            resume_at,
            data,
        } => {
            flow.set_status(FlowStatus::Suspended);
            flow.awaiting = signals.into_iter().map(str::to_owned).collect();
            flow.data = data.to_string();
            resume_at
        }
        Next::Sleep {
            until_ms,
            resume_at,
            data,
        } => {
            flow.set_status(FlowStatus::Suspended);
            flow.wake_at_ms = until_ms.max(1);
            flow.data = data.to_string();
            resume_at
        }
        Next::Done(output) => {
            flow.set_status(FlowStatus::Done);
            flow.output = output.to_string();
            current_step
        }
        Next::Failed(reason) => {
            flow.set_status(FlowStatus::Failed);
            flow.error = reason;
            current_step
        }
    };
    (flow, step)
}

/// A running copy of `flow` whose data has `field` set (the signal or wake-up that resumes
/// it), one version on.
fn resumed(flow: &Flow, field: &str, value: Value, now_ms: i64) -> Flow {
    let mut data = serde_json::from_str::<Value>(&flow.data).unwrap_or_else(|_| json!({}));
    data[field] = value;
    let mut flow = flow.clone();
    flow.set_status(FlowStatus::Running);
    flow.awaiting.clear();
    flow.wake_at_ms = 0;
    flow.version += 1;
    flow.updated_ms = now_ms;
    flow.data = data.to_string();
    flow
}

impl Kernel {
    /// Starts an instance of flow `name` and runs it until it suspends or ends.
    pub async fn start_flow(&self, name: &str, input: &str) -> Result<Flow, KernelError> {
        self.check_serves_flows()?;
        let definition = self
            .flows
            .definitions
            .get(name)
            .ok_or_else(|| KernelError::NoSuchFlow(name.to_owned(), self.flows.names()))?;
        let input = match parse_json(input, "input")? {
            Value::Null => json!({}),
            object @ Value::Object(_) => object,
            _ => return Err(KernelError::BadRequest("input must be a JSON object".into())),
        };
        let data = definition.begin(self, &input)?;
        let now = self.now_ms();
        let flow = Flow {
            id: new_instance_id(now)?,
            name: name.to_owned(),
            status: FlowStatus::Running.into(),
            input: input.to_string(),
            data: data.to_string(),
            created_ms: now,
            updated_ms: now,
            version: 1,
            ..Flow::default()
        };
        let slot = Slot::new(flow.clone(), 0);
        let mut step = slot.step.lock().await;
        self.journal_flow(&flow, 0).await?;
        self.flows
            .instances
            .write()
            .expect("flows lock poisoned")
            .insert(flow.id.clone(), slot.clone());
        tracing::info!(flow = name, instance = %flow.id, "flow started");
        self.run_flow(&slot, &mut step).await;
        Ok(slot.view())
    }

    /// Resumes instance `id` with `signal`, which it must be awaiting; runs it until it
    /// suspends or ends. The signal is journaled before anything else happens.
    pub async fn signal_flow(&self, id: &str, signal: &str, payload: &str) -> Result<Flow, KernelError> {
        self.check_serves_flows()?;
        if signal.is_empty() {
            return Err(KernelError::BadRequest("signal name is missing".into()));
        }
        let payload = parse_json(payload, "payload")?;
        let slot = self.flows.slot(id)?;
        let mut step = slot.step.lock().await;
        let flow = slot.view();
        if flow.status() != FlowStatus::Suspended || !flow.awaiting.iter().any(|s| s == signal) {
            return Err(KernelError::FlowState(refusal(&flow, signal)));
        }
        let flow = resumed(
            &flow,
            "signal",
            json!({ "name": signal, "payload": payload }),
            self.now_ms(),
        );
        let resume_at = *step;
        self.commit(&slot, &mut step, flow, resume_at).await?;
        tracing::info!(instance = id, signal, "flow signalled");
        self.run_flow(&slot, &mut step).await;
        Ok(slot.view())
    }

    pub fn flow(&self, id: &str) -> Result<Flow, KernelError> {
        Ok(self.flows.slot(id)?.view())
    }

    /// Instances in id (creation) order after `after`, optionally of one flow or status, and
    /// where the next page starts (empty when there is none).
    pub fn list_flows(&self, name: &str, status: Option<FlowStatus>, after: &str, limit: u32) -> (Vec<Flow>, String) {
        let limit = match limit as usize {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let instances = self.flows.instances.read().expect("flows lock poisoned");
        let mut found = Vec::new();
        let range = instances.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded));
        for (id, slot) in range {
            let flow = slot.view.lock().expect("flow view lock poisoned");
            if (!name.is_empty() && flow.name != name) || status.is_some_and(|s| s != flow.status()) {
                continue;
            }
            if found.len() == limit {
                let next = found.last().map(|f: &Flow| f.id.clone()).unwrap_or_else(|| id.clone());
                return (found, next);
            }
            // Only matching instances are copied.
            found.push(flow.clone());
        }
        (found, String::new())
    }

    /// Instances by status.
    pub fn flow_counts(&self) -> BTreeMap<FlowStatus, usize> {
        self.flows.counts()
    }

    /// A timer came due for `id`: wake it if it sleeps, run it again if it is running.
    async fn wake_flow(&self, id: &str) {
        let Ok(slot) = self.flows.slot(id) else { return };
        let mut step = slot.step.lock().await;
        let flow = slot.view();
        match flow.status() {
            FlowStatus::Suspended if flow.wake_at_ms > 0 && flow.wake_at_ms <= self.now_ms() => {
                let now = self.now_ms();
                let flow = resumed(&flow, "woke_ms", json!(now), now);
                let resume_at = *step;
                if let Err(err) = self.commit(&slot, &mut step, flow, resume_at).await {
                    tracing::warn!(instance = id, error = %err, "could not wake flow; will retry");
                    self.flows.schedule(self.now_ms() + RETRY_AFTER_MS, id);
                    return;
                }
                tracing::info!(instance = id, "flow woke");
            }
            FlowStatus::Running => {}
            _ => return,
        }
        self.run_flow(&slot, &mut step).await;
    }

    /// Drives an instance; if a step could not run for now, retries it later.
    async fn run_flow(&self, slot: &Slot, step: &mut u32) {
        if let Err(err) = self.drive(slot, step).await {
            let id = slot.view().id;
            tracing::warn!(instance = %id, error = %err, "flow step could not run; will retry");
            self.flows.schedule(self.now_ms() + RETRY_AFTER_MS, &id);
        }
    }

    /// Runs steps of a running instance, journaling each outcome, until it suspends or ends.
    async fn drive(&self, slot: &Slot, step: &mut u32) -> Result<(), KernelError> {
        for _ in 0..MAX_STEPS {
            let flow = slot.view();
            if flow.status() != FlowStatus::Running {
                return Ok(());
            }
            let Some(definition) = self.flows.definitions.get(flow.name.as_str()) else {
                return Err(KernelError::FlowState(format!(
                    "flow {} is not registered in this kernel",
                    flow.name
                )));
            };
            let ctx = StepCtx {
                instance: flow.id.clone(),
                step: *step,
                data: serde_json::from_str(&flow.data).unwrap_or(Value::Null),
            };
            let next = match definition.step(self, ctx).await {
                Ok(next) => next,
                Err(err) if err.is_retryable() => return Err(err),
                Err(err) => Next::Failed(err.to_string()),
            };
            let (flow, next_step) = advance(flow, *step, next, self.now_ms());
            self.commit(slot, step, flow, next_step).await?;
        }
        let (flow, next_step) = advance(
            slot.view(),
            *step,
            Next::Failed(format!("ran {MAX_STEPS} steps without suspending")),
            self.now_ms(),
        );
        self.commit(slot, step, flow, next_step).await
    }

    /// Journals a new version of an instance, then makes it the current one.
    async fn commit(&self, slot: &Slot, step: &mut u32, flow: Flow, next_step: u32) -> Result<(), KernelError> {
        self.journal_flow(&flow, next_step).await?;
        match flow.status() {
            FlowStatus::Suspended if flow.wake_at_ms > 0 => self.flows.schedule(flow.wake_at_ms, &flow.id),
            FlowStatus::Done => {
                tracing::info!(instance = %flow.id, flow = %flow.name, output = %flow.output, "flow done")
            }
            FlowStatus::Failed => {
                tracing::warn!(instance = %flow.id, flow = %flow.name, error = %flow.error, "flow failed")
            }
            _ => {}
        }
        *step = next_step;
        *slot.view.lock().expect("flow view lock poisoned") = flow;
        Ok(())
    }

    /// Appends one version of an instance to the flow journal. Its entry id is derived from
    /// (instance, version), so a version can be journaled only once.
    async fn journal_flow(&self, flow: &Flow, step: u32) -> Result<(), KernelError> {
        let id = derived_id("flow", &[flow.id.as_bytes(), &flow.version.to_be_bytes()]);
        let record = FlowRecord {
            flow: Some(flow.clone()),
            step,
        };
        let answer = self
            .ports
            .logs
            .append_any(
                FLOWS_ACTOR,
                StreamKind::Flow,
                Bytes::copy_from_slice(&id),
                record.encode_to_vec().into(),
            )
            .await?;
        match answer.entries.first() {
            Some(entry) if entry.appended => {
                if let Some(kernel) = self.me.upgrade() {
                    super::snapshot::compact_if_due(&kernel, entry.seq);
                }
                Ok(())
            }
            _ => Err(KernelError::FlowState(format!(
                "flow instance {} version {} was already journaled by another writer; restart the kernel to reload it",
                flow.id, flow.version
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, id: &str, version: u64, status: FlowStatus, wake_at_ms: i64) -> Entry {
        let flow = Flow {
            id: id.into(),
            name: "wait-timer".into(),
            status: status.into(),
            version,
            wake_at_ms,
            ..Flow::default()
        };
        let data = FlowRecord {
            flow: Some(flow),
            step: version as u32,
        };
        Entry {
            seq,
            id: Bytes::from(format!("{id}-{version}")),
            data: data.encode_to_vec().into(),
        }
    }

    #[test]
    fn replay_keeps_the_latest_version_and_schedules_what_must_run() {
        let entries = [
            record(1, "a", 1, FlowStatus::Running, 0),
            record(2, "b", 1, FlowStatus::Running, 0),
            record(3, "a", 2, FlowStatus::Suspended, 5_000),
            record(4, "c", 1, FlowStatus::Running, 0),
            record(5, "b", 3, FlowStatus::Done, 0),
            // An older version journaled later (cannot happen, but must not win).
            record(6, "b", 2, FlowStatus::Running, 0),
        ];
        let table = FlowTable::restore(latest_versions(&entries).unwrap(), 0, 6);
        let status = |id: &str| table.slot(id).unwrap().view().status();
        assert_eq!(status("a"), FlowStatus::Suspended);
        assert_eq!(status("b"), FlowStatus::Done);
        assert_eq!(status("c"), FlowStatus::Running);
        assert_eq!(*table.slot("b").unwrap().step.try_lock().unwrap(), 3);
        let timers: Vec<(i64, String)> = table.timers.lock().unwrap().iter().cloned().collect();
        assert_eq!(timers, [(0, "c".to_owned()), (5_000, "a".to_owned())]);
        assert!(matches!(table.slot("d"), Err(KernelError::NoSuchFlowInstance(_))));
    }

    #[test]
    fn a_corrupt_journal_entry_is_an_error_not_a_skip() {
        let entry = Entry {
            seq: 7,
            id: Bytes::from_static(b"x"),
            data: Bytes::from_static(&[0xff, 0xff, 0xff]),
        };
        let err = latest_versions(&[entry]).err().unwrap();
        assert!(err.to_string().contains("flow journal entry 7 is corrupt"), "{err}");
    }

    #[test]
    fn a_refusal_says_what_the_instance_awaits() {
        let flow = Flow {
            id: "f".into(),
            status: FlowStatus::Suspended.into(),
            awaiting: vec!["approve".into(), "reject".into()],
            ..Flow::default()
        };
        assert_eq!(
            refusal(&flow, "maybe"),
            "flow instance f awaits approve or reject, not \"maybe\""
        );
        let ended = Flow {
            status: FlowStatus::Done.into(),
            ..flow
        };
        assert!(refusal(&ended, "approve").contains("has ended (done)"));
    }

    #[test]
    fn instance_ids_sort_by_creation_time() {
        let first = new_instance_id(1_000).unwrap();
        let second = new_instance_id(1_001).unwrap();
        assert_eq!(first.len(), 32);
        assert!(first < second);
    }
}
