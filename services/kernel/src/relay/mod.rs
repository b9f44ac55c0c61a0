//! The relay: hands every outbox entry to delivery, once per destination node, after it is
//! durably in the outbox. It reads the outbox from a cursor, so nothing published is lost
//! when delivery is down (it retries with backoff) or the kernel restarts (it resumes from
//! the last journaled cursor, at most `CURSOR_EVERY` entries back; delivery treats a
//! repeated (peer, id) as the same delivery).

use crate::delivery::{DeliveryPort, Handoff, HandoffError, Recipients};
use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::outbox::envelope_activity;
use crate::state::followers_url;
use bytes::Bytes;
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::Activity;
use fedsx_runtime::CancellationToken;
use fedsx_runtime::trace_context::{Context, OpenTelemetrySpanExt};
use fedsx_wire::ActivityId;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

const FIRST_RETRY: Duration = Duration::from_millis(100);
/// How far the relay gets past its last journaled cursor before journaling a new one: the
/// most a restart hands off again per actor.
const CURSOR_EVERY: u64 = 1000;
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Outbox entries read per page while handing off.
const RELAY_PAGE: u32 = 256;
/// Hand-offs in one call to delivery, at most, and their bytes (well under what delivery
/// takes in one request, `fedsx_delivery`'s 16 MiB): a page's entries go in as few calls
/// as these allow.
const BATCH_HANDOFFS: usize = 8_000;
const BATCH_BYTES: usize = 8 << 20;
/// One hand-off's bytes, at most: bigger ones cannot be sent and are dead-lettered.
const MAX_HANDOFF_BYTES: usize = 12 << 20;
/// Trace contexts kept for activities published but not yet handed off.
const MAX_REMEMBERED_TRACES: usize = 100_000;

/// What the relay keeps between its rounds: which actors to look at, and the trace
/// context of what was just published.
#[derive(Default)]
pub(crate) struct Relay {
    kicks: Kicks,
    traces: Traces,
}

impl Relay {
    /// `actor`'s outbox has entries the relay may not have handed off yet.
    pub(crate) fn kick(&self, actor: &str) {
        self.kicks.kick(actor);
    }

    /// Keeps the current trace context of a just-published activity for its hand-off.
    pub(crate) fn remember_trace(&self, id: ActivityId) {
        self.traces.remember(id);
    }
}

/// Trace context of each activity published here and not yet handed off.
#[derive(Default)]
struct Traces(std::sync::Mutex<HashMap<ActivityId, Context>>);

impl Traces {
    fn remember(&self, id: ActivityId) {
        let mut traces = self.0.lock().expect("relay traces lock poisoned");
        if traces.len() >= MAX_REMEMBERED_TRACES {
            // The relay is far behind (delivery down): later hand-offs start new traces.
            traces.clear();
        }
        traces.insert(id, tracing::Span::current().context());
    }

    fn published(&self, id: &ActivityId) -> Option<Context> {
        self.0.lock().expect("relay traces lock poisoned").get(id).cloned()
    }

    fn forget(&self, id: &ActivityId) {
        self.0.lock().expect("relay traces lock poisoned").remove(id);
    }
}

/// Actors with outbox entries the relay may not have handed off yet: a set, so it holds
/// each actor once however often it is kicked (bounded by the actors there are).
#[derive(Default)]
struct Kicks {
    actors: std::sync::Mutex<BTreeSet<String>>,
    notify: tokio::sync::Notify,
}

impl Kicks {
    fn kick(&self, actor: &str) {
        let fresh = self
            .actors
            .lock()
            .expect("kicks lock poisoned")
            .insert(actor.to_owned());
        if fresh {
            self.notify.notify_one();
        }
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.actors.lock().expect("kicks lock poisoned"))
    }
}

/// What the relay uses of the kernel, so it can be run and tested alone.
pub(crate) trait RelayHost: Send + Sync + 'static {
    fn relay(&self) -> &Relay;
    fn delivery(&self) -> &dyn DeliveryPort;
    /// Whether this replica serves `actor`'s partition (its owner relays it).
    fn serves(&self, actor: &str) -> bool;
    /// Where the relay got to for `actor`, as journaled (0: nowhere yet).
    fn saved_cursor(&self, actor: &str) -> u64;
    fn journal_cursor<'a>(&'a self, actor: &'a str, seq: u64) -> BoxFuture<'a, Result<(), KernelError>>;
    /// Up to `limit` of `actor`'s outbox entries after `after`, and the outbox's tip.
    fn read_outbox<'a>(&'a self, actor: &'a str, after: u64, limit: u32) -> BoxFuture<'a, OutboxPage>;
    /// Where an activity by local actor `name` (at `sender`) addressed `to` goes.
    fn routes(&self, name: &str, sender: &str, to: &[String]) -> Routes;
    /// The ActivityPub request body of an activity (Err: it cannot be sent so, and why).
    fn activitypub_post<'a>(
        &'a self,
        name: &'a str,
        activity: &'a Activity,
        id: ActivityId,
    ) -> BoxFuture<'a, Result<Result<Vec<u8>, String>, KernelError>>;
}

type OutboxPage = Result<(Vec<fedsx_proto::logstore::v1::Entry>, u64), KernelError>;

impl RelayHost for Kernel {
    fn relay(&self) -> &Relay {
        &self.relay
    }

    fn delivery(&self) -> &dyn DeliveryPort {
        self.ports.delivery.as_ref()
    }

    fn serves(&self, actor: &str) -> bool {
        Kernel::serves(self, actor)
    }

    fn saved_cursor(&self, actor: &str) -> u64 {
        self.read_state().relay_cursors.get(actor).copied().unwrap_or(0)
    }

    fn journal_cursor<'a>(&'a self, actor: &'a str, seq: u64) -> BoxFuture<'a, Result<(), KernelError>> {
        Box::pin(self.journal_relay_cursor(actor, seq))
    }

    fn read_outbox<'a>(&'a self, actor: &'a str, after: u64, limit: u32) -> BoxFuture<'a, OutboxPage> {
        Box::pin(self.ports.logs.read(actor, StreamKind::Outbox, after, limit))
    }

    fn routes(&self, name: &str, sender: &str, to: &[String]) -> Routes {
        Kernel::routes(self, name, sender, to)
    }

    fn activitypub_post<'a>(
        &'a self,
        name: &'a str,
        activity: &'a Activity,
        id: ActivityId,
    ) -> BoxFuture<'a, Result<Result<Vec<u8>, String>, KernelError>> {
        Box::pin(Kernel::activitypub_post(self, name, activity, id))
    }
}

pub(crate) fn spawn(kernel: Arc<Kernel>, shutdown: CancellationToken) {
    kernel.tasks.clone().spawn(run(kernel, shutdown));
}

async fn run<H: RelayHost>(kernel: Arc<H>, shutdown: CancellationToken) {
    // Where each actor's hand-off got to, as journaled (the restart point), and as done;
    // read from the state when the relay first works for the actor since this replica took
    // its partition.
    let mut journaled: HashMap<String, u64> = HashMap::new();
    let mut cursors: HashMap<String, u64> = HashMap::new();
    let mut due: BTreeSet<String> = BTreeSet::new();
    let mut failing: BTreeSet<String> = BTreeSet::new();
    let mut retry = FIRST_RETRY;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = kernel.relay().kicks.notify.notified() => {}
            () = tokio::time::sleep(retry), if !failing.is_empty() => {
                due.append(&mut failing);
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
        due.append(&mut kernel.relay().kicks.take());
        for actor in std::mem::take(&mut due) {
            if !kernel.serves(&actor) {
                // Its partition's owner relays it (and picks up from the journaled cursor).
                cursors.remove(&actor);
                journaled.remove(&actor);
                continue;
            }
            let saved = || kernel.saved_cursor(&actor);
            journaled.entry(actor.clone()).or_insert_with(saved);
            let cursor = cursors.entry(actor.clone()).or_insert_with(saved);
            if let Err(err) = hand_off(kernel.as_ref(), &actor, cursor).await {
                tracing::warn!(actor = %actor, error = %err, "hand-off to delivery failed; will retry");
                failing.insert(actor.clone());
            }
            let (done, saved) = (*cursor, journaled.get(&actor).copied().unwrap_or(0));
            if done >= saved + CURSOR_EVERY {
                match kernel.journal_cursor(&actor, done).await {
                    Ok(()) => {
                        journaled.insert(actor, done);
                    }
                    Err(err) => tracing::warn!(error = %err, "journaling the relay cursor failed; will retry"),
                }
            }
        }
        if failing.is_empty() {
            retry = FIRST_RETRY;
        }
    }
}

impl Kernel {
    async fn journal_relay_cursor(&self, actor: &str, seq: u64) -> Result<(), KernelError> {
        let record =
            fedsx_proto::kernel::v1::journal_record::Record::RelayCursor(fedsx_proto::kernel::v1::RelayCursor {
                actor: actor.to_owned(),
                seq,
            });
        let id = crate::kernel::derived_id("relay-cursor", &[actor.as_bytes(), &seq.to_be_bytes()]);
        self.journal(id, record).await.map(drop)
    }
}

/// Hands every outbox entry after `cursor` to delivery, a page at a time (memory stays
/// bounded however far behind it is), advancing the cursor past each entry once all its
/// recipients are handed off.
async fn hand_off<H: RelayHost + ?Sized>(host: &H, actor: &str, cursor: &mut u64) -> Result<(), KernelError> {
    loop {
        let (entries, tip) = host.read_outbox(actor, *cursor, RELAY_PAGE).await?;
        if entries.is_empty() {
            return Ok(());
        }
        hand_off_page(host, actor, entries, cursor).await?;
        if *cursor >= tip {
            return Ok(());
        }
    }
}

/// Hands a page's entries over in batches (each one call and, on RocksDB, one synced
/// write), in outbox order — so each destination gets an actor's activities in order —
/// advancing the cursor past each entry once all its hand-offs are in.
async fn hand_off_page<H: RelayHost + ?Sized>(
    host: &H,
    actor: &str,
    entries: Vec<fedsx_proto::logstore::v1::Entry>,
    cursor: &mut u64,
) -> Result<(), KernelError> {
    let mut batch = Batch::default();
    let mut routes: HashMap<(String, Vec<String>), Routes> = HashMap::new();
    for entry in entries {
        let (id, activity) = envelope_activity(&entry.data)?;
        // Continues the trace of the request that published it (when this process did);
        // delivery's send continues this span.
        let span = tracing::info_span!(
            "hand-off",
            fedsx.actor = %actor,
            fedsx.activity_id = %id,
            fedsx.seq = entry.seq,
        );
        if let Some(parent) = host.relay().traces.published(&id) {
            let _ = span.set_parent(parent);
        }
        let traceparent = fedsx_runtime::trace_context::traceparent_of(&span).unwrap_or_default();
        // The entries of a page mostly go to the same followers: routed once.
        let routes = routes
            .entry((activity.actor.clone(), activity.to.clone()))
            .or_insert_with(|| host.routes(actor, &activity.actor, &activity.to));
        let (mut handoffs, activitypub) = routes.handoffs(&activity.actor, &entry.data, id, &traceparent);
        if !activitypub.is_empty() {
            let post = host
                .activitypub_post(actor, &activity, id)
                .instrument(span.clone())
                .await?;
            handoffs.extend(activitypub.into_iter().map(|handoff| match &post {
                Ok(post) => Handoff {
                    envelope: Bytes::copy_from_slice(post),
                    ..handoff
                },
                Err(reason) => handoff.undeliverable(format!("cannot be sent over ActivityPub: {reason}")),
            }));
        }
        batch.spans.push(span);
        for handoff in handoffs {
            let (handoff, size) = Batch::fit(handoff);
            if batch.is_full_without(size) {
                send_batch(host, std::mem::take(&mut batch), cursor).await?;
            }
            batch.push(handoff, size);
        }
        batch.finish(entry.seq, id);
    }
    send_batch(host, batch, cursor).await
}

/// Enqueues the batch's hand-offs, then moves the cursor past the entries the batch
/// finished. One that delivery refuses for good (or that is undeliverable from the
/// start) is enqueued again as a dead letter with the reason — visible in
/// `fedsx deliveries` — and never holds up what the actor publishes next.
async fn send_batch<H: RelayHost + ?Sized>(host: &H, batch: Batch, cursor: &mut u64) -> Result<(), KernelError> {
    let Batch {
        mut handoffs,
        finished,
        activities,
        spans,
        ..
    } = batch;
    let span = spans.first().cloned().unwrap_or_else(tracing::Span::none);
    // At most twice: a refused hand-off goes again as a dead letter, which is not refused
    // for what it carries (no envelope).
    while !handoffs.is_empty() {
        let results = match host.delivery().enqueue(handoffs.clone()).instrument(span.clone()).await {
            Ok(results) => results,
            // The call as a whole is refused: each of its hand-offs, for that reason.
            Err(HandoffError::Refused(why)) => vec![Err(why); handoffs.len()],
            Err(HandoffError::Unavailable(why)) => return Err(KernelError::Internal(why)),
        };
        let mut refused = Vec::new();
        for (handoff, result) in handoffs.into_iter().zip(results) {
            match (handoff.undeliverable.as_deref(), result) {
                (None, Ok(())) => {}
                (None, Err(why)) => refused.push(handoff.undeliverable(format!("refused by delivery: {why}"))),
                (Some(reason), Ok(())) => {
                    tracing::error!(destination = %handoff.peer, %reason, "cannot be handed on; kept as a dead letter");
                    crate::metrics::handoff_refused();
                }
                (Some(reason), Err(why)) => {
                    tracing::error!(destination = %handoff.peer, %reason, refused = %why, "delivery refuses even the dead letter; skipped");
                    crate::metrics::handoff_refused();
                }
            }
        }
        handoffs = refused;
    }
    for id in &activities {
        host.relay().traces.forget(id);
    }
    if let Some(seq) = finished {
        *cursor = seq;
    }
    Ok(())
}

impl Kernel {
    /// Where the recipients of an activity by local actor `name` (at `sender`) addressed
    /// `to` are, per destination node: its followers collection expands to the current
    /// followers. Where every recipient on a node advertises the same node inbox, it goes
    /// there once; otherwise to each recipient's inbox (from its document; empty when
    /// unknown). A recipient that names no node (not an http(s) URL) is unroutable.
    fn routes(&self, name: &str, sender: &str, to: &[String]) -> Routes {
        // Per (destination node, speaks ActivityPub): the node inbox all its recipients
        // share (None: they do not), and (actor, inbox) of each.
        type Node = (Option<String>, Vec<(String, String)>);
        let mut nodes: BTreeMap<(String, bool), Node> = BTreeMap::new();
        let actors = self.recipients(name, sender, to);
        let mut unroutable = Vec::new();
        let state = self.read_state();
        for actor in actors {
            let document = state.document(&self.actors_prefix, &actor);
            let inbox = document.map(|d| d.inbox.clone()).unwrap_or_default();
            let shared = document.map(|d| d.shared_inbox.clone()).unwrap_or_default();
            let activitypub = document.is_some_and(|d| d.activitypub);
            let where_to = if inbox.is_empty() { &actor } else { &inbox };
            let Some(node) = fedsx_wire::document::origin(where_to) else {
                unroutable.push(actor);
                continue;
            };
            let (common, recipients) = nodes
                .entry((node, activitypub))
                .or_insert_with(|| (Some(shared.clone()), Vec::new()));
            if common.as_deref() != Some(shared.as_str()) {
                *common = None;
            }
            recipients.push((actor, inbox));
        }
        Routes {
            nodes: nodes
                .into_iter()
                .map(|((node, activitypub), (common, mut recipients))| {
                    let inbox = common.unwrap_or_default();
                    if !inbox.is_empty() {
                        // Sent once to the node inbox: the recipients' own inboxes are not
                        // needed, and a fan-out carries thousands of them.
                        recipients.iter_mut().for_each(|(_, inbox)| inbox.clear());
                    }
                    Route {
                        node,
                        activitypub,
                        inbox,
                        recipients: recipients.into(),
                    }
                })
                .collect(),
            unroutable,
        }
    }

    /// The actor URLs an activity by local actor `name` (at `sender`) addressed `to` goes
    /// to, sorted: its followers collection expands to the current followers.
    fn recipients(&self, name: &str, sender: &str, to: &[String]) -> Vec<String> {
        let followers = followers_url(sender);
        let mut out: Vec<String> = Vec::new();
        for target in to {
            if *target == followers {
                if let Some(list) = self.read_state().followers.get(name) {
                    out.extend(list.keys().cloned());
                }
            } else if target != sender && target != fedsx_activitypub::json::PUBLIC {
                out.push(target.clone());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Hand-offs gathered for one call to delivery, and the outbox entries they finish.
#[derive(Default)]
struct Batch {
    handoffs: Vec<Handoff>,
    /// Their size, about (envelopes and recipients).
    bytes: usize,
    /// The last entry all of whose hand-offs are in the batch (or were sent before it).
    finished: Option<u64>,
    /// The activities of the entries finished, whose trace contexts are then forgotten.
    activities: Vec<ActivityId>,
    /// The entries' hand-off spans, open until the batch is sent.
    spans: Vec<tracing::Span>,
}

impl Batch {
    fn size(handoff: &Handoff) -> usize {
        let recipients: usize = handoff.recipients.iter().map(|(a, i)| a.len() + i.len() + 8).sum();
        handoff.envelope.len() + recipients + handoff.peer.len() + handoff.inbox_url.len() + 128
    }

    /// `handoff`, or, when it alone is more than a call to delivery may carry (recipients
    /// by the ten thousand on one node), its record as undeliverable; and its size.
    fn fit(handoff: Handoff) -> (Handoff, usize) {
        let size = Batch::size(&handoff);
        if size <= MAX_HANDOFF_BYTES {
            return (handoff, size);
        }
        let reason = format!("its hand-off to this node is {size} bytes, over the {MAX_HANDOFF_BYTES} one call takes");
        let undeliverable = Handoff {
            recipients: Recipients::default(),
            ..handoff.undeliverable(reason)
        };
        let size = Batch::size(&undeliverable);
        (undeliverable, size)
    }

    /// Whether a hand-off of `size` bytes would take the batch past what one call carries.
    fn is_full_without(&self, size: usize) -> bool {
        !self.handoffs.is_empty() && (self.handoffs.len() >= BATCH_HANDOFFS || self.bytes + size > BATCH_BYTES)
    }

    fn push(&mut self, handoff: Handoff, size: usize) {
        self.bytes += size;
        self.handoffs.push(handoff);
    }

    fn finish(&mut self, seq: u64, id: ActivityId) {
        self.finished = Some(seq);
        self.activities.push(id);
    }
}

/// Where an activity's recipients are: one route per destination node.
pub(crate) struct Routes {
    nodes: Vec<Route>,
    /// Recipients that name no node.
    unroutable: Vec<String>,
}

struct Route {
    /// `scheme://host[:port]`.
    node: String,
    activitypub: bool,
    /// The node inbox all its recipients share; empty: each recipient's own.
    inbox: String,
    /// (actor, inbox) of each recipient there (inbox empty when they share a node inbox):
    /// one list for every activity of a page that goes there.
    recipients: Recipients,
}

impl Routes {
    /// One hand-off of an activity by `sender` per destination node; ActivityPub
    /// recipients' hand-offs come second, without their body (the caller renders it once
    /// for all of them); a recipient that names no node is an undeliverable hand-off under
    /// its own name.
    fn handoffs(
        &self,
        sender: &str,
        envelope: &Bytes,
        id: ActivityId,
        traceparent: &str,
    ) -> (Vec<Handoff>, Vec<Handoff>) {
        let handoff = |peer: &str, inbox_url: &str, recipients: &Recipients, envelope: Bytes| Handoff {
            peer: peer.to_owned(),
            inbox_url: inbox_url.to_owned(),
            sender: sender.to_owned(),
            recipients: recipients.clone(),
            envelope,
            id,
            traceparent: traceparent.to_owned(),
            undeliverable: None,
        };
        let (mut native, mut activitypub) = (Vec::new(), Vec::new());
        for route in &self.nodes {
            if route.activitypub {
                activitypub.push(handoff(&route.node, &route.inbox, &route.recipients, Bytes::new()));
            } else {
                native.push(handoff(
                    &route.node,
                    &route.inbox,
                    &route.recipients,
                    Bytes::clone(envelope),
                ));
            }
        }
        native.extend(self.unroutable.iter().map(|recipient| {
            handoff(recipient, "", &Recipients::default(), Bytes::new())
                .undeliverable("recipient is not an http(s) URL".into())
        }));
        (native, activitypub)
    }
}

#[cfg(test)]
mod tests;
