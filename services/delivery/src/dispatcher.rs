//! Drives any [`QueueStorage`]: leases destinations (renewing them every third of the lease
//! time), runs one worker per leased destination with due work, and records each send's
//! outcome. A worker wakes when work is queued, a send finishes, or the next retry falls
//! due (never polling), keeps at most `max_in_flight` sends going (and all workers together
//! at most the `requests` permits), records the outcomes of
//! sends that finish together in one durable write, stops sending once its lease lapses,
//! and ends when its destination has had nothing left for a second — idle destinations
//! cost no task and no timer.

use crate::dispatch::dispatch;
use crate::queue::{AfterFailure, Failure, Id, Schedule, decide};
use crate::storage::{Due, Outcome, QueueStorage};
use fedsx_runtime::CancellationToken;
use fedsx_runtime::http_client::PeerHttp;
use fedsx_runtime::metrics::KeyValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, broadcast};
use tracing::Instrument;

/// Destinations one replica leases at most.
const MAX_DESTINATIONS: usize = 4096;
/// Sent deliveries of one destination whose outcomes wait to be recorded, at most, in
/// multiples of `max_in_flight`: sending goes on while a batch is being recorded, but not
/// unboundedly ahead of the records.
const UNRECORDED_FACTOR: usize = 4;
/// Leases are renewed every this-many-th part of the lease time, and a worker whose lease
/// has less than that part left starts no send until it is renewed.
const RENEW_PARTS: u32 = 3;
/// How long a worker with nothing to do waits for more before it ends (ms).
const IDLE_LINGER_MS: u64 = 1000;
/// While sends are in flight, due work is read at most this often: work queued or recorded
/// meanwhile comes out in one read instead of one each (a read walks every sender's lane).
const READ_GAP: Duration = Duration::from_millis(5);

/// What every worker shares.
pub struct Settings {
    pub http: PeerHttp,
    pub schedule: Schedule,
    pub max_in_flight: usize,
    /// Sends in flight over all destinations: each send holds a permit while it runs.
    pub requests: Arc<tokio::sync::Semaphore>,
    /// The static map: actor URL → inbox URL, overriding the kernel's.
    pub inbox_overrides: HashMap<String, String>,
    /// This replica's name in leases.
    pub owner: String,
    pub lease: Duration,
    pub shutdown: CancellationToken,
    /// Signs ActivityPub posts as they are sent.
    pub signer: Arc<crate::sign::Signer>,
}

/// What the failed sends of one delivery (each with its inbox) make of it: none, delivered;
/// any worth retrying, all are tried again (after the longest Retry-After asked); else
/// refused for good. To several inboxes, the reason names each failure's inbox
/// ("status 410 from <inbox>, …"), so the recipients that refused are known.
fn combine(failures: Vec<(String, Failure)>, several: bool) -> Result<(), Failure> {
    if failures.is_empty() {
        return Ok(());
    }
    let reason = failures
        .iter()
        .map(|(url, f)| {
            if several {
                format!("{} from {url}", f.reason())
            } else {
                f.reason().to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut transient = false;
    let mut retry_after = None;
    for (_, failure) in &failures {
        if let Failure::Transient { retry_after: asked, .. } = failure {
            transient = true;
            retry_after = retry_after.max(*asked);
        }
    }
    Err(if transient {
        Failure::Transient { reason, retry_after }
    } else {
        Failure::Permanent { reason }
    })
}

pub(crate) use fedsx_runtime::clock::now_ms;

/// Due work a worker may take, as [`QueueStorage::due`]'s arguments say.
struct Take {
    limit: usize,
    skip: Vec<Id>,
    recipients: bool,
}

pub struct Dispatcher<Q> {
    queue: Q,
    settings: Settings,
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    /// Asks for a claim round now (a worker ended; work may be left).
    reclaim: Notify,
}

struct Worker {
    peer: String,
    wake: Notify,
    /// Sends awaiting an answer, and sent ones until their outcome is recorded: never
    /// handed out again meanwhile.
    in_flight: Mutex<InFlight>,
    /// Outcomes waiting to be recorded; recorded together, one durable write per batch.
    outcomes: Mutex<Vec<(Id, Outcome)>>,
    recording: std::sync::atomic::AtomicBool,
    /// Until when (ms since the epoch) this replica holds the destination.
    lease_until: AtomicU64,
    /// What is due may have changed since the worker last read all of it: work was queued
    /// or redriven, outcomes were recorded (a sender's next delivery is now its lane's
    /// head), or the lease was renewed. An answered send alone changes nothing due.
    changed: std::sync::atomic::AtomicBool,
    /// The earliest retry this worker recorded since it last asked the queue (`u64::MAX`:
    /// none).
    retry_at: AtomicU64,
}

impl Worker {
    /// Wakes the worker to look at due work again.
    fn poke(&self) {
        self.changed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// A worker's deliveries between being handed out and having their outcome recorded.
#[derive(Default)]
struct InFlight {
    /// Sent, awaiting the destination's answer.
    sending: HashSet<Id>,
    /// Answered, the outcome not yet recorded.
    unrecorded: HashSet<Id>,
}

impl InFlight {
    /// Whether `id` was new (and is now sending).
    fn start(&mut self, id: Id) -> bool {
        !self.unrecorded.contains(&id) && self.sending.insert(id)
    }

    fn answered(&mut self, id: Id) {
        if self.sending.remove(&id) {
            self.unrecorded.insert(id);
        }
    }

    fn forget(&mut self, id: &Id) {
        self.sending.remove(id);
        self.unrecorded.remove(id);
    }

    fn is_empty(&self) -> bool {
        self.sending.is_empty() && self.unrecorded.is_empty()
    }

    fn ids(&self) -> Vec<Id> {
        self.sending.iter().chain(&self.unrecorded).copied().collect()
    }
}

impl<Q: QueueStorage> Dispatcher<Q> {
    pub fn new(queue: Q, settings: Settings) -> Arc<Dispatcher<Q>> {
        Arc::new(Dispatcher {
            queue,
            settings,
            workers: Mutex::new(HashMap::new()),
            reclaim: Notify::new(),
        })
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// Sends to `peer` awaiting an answer, from this replica.
    pub fn in_flight(&self, peer: &str) -> usize {
        let workers = self.workers.lock().expect("workers lock poisoned");
        workers.get(peer).map_or(0, |w| {
            w.in_flight.lock().expect("in-flight lock poisoned").sending.len()
        })
    }

    /// Claims and renews destinations until shutdown.
    pub async fn run(self: Arc<Self>) {
        let mut notices = self.queue.notices();
        let renew_every = self.settings.lease / RENEW_PARTS;
        loop {
            self.claim_round().await;
            let renew = tokio::time::sleep(renew_every);
            tokio::pin!(renew);
            loop {
                tokio::select! {
                    () = self.settings.shutdown.cancelled() => return,
                    () = &mut renew => break,
                    () = self.reclaim.notified() => break,
                    notice = notices.recv() => match notice {
                        Ok(peer) if !peer.is_empty() => {
                            let worker = self.workers.lock().expect("workers lock poisoned").get(&peer).cloned();
                            match worker {
                                Some(worker) => worker.poke(),
                                None => break,
                            }
                        }
                        // Notices may have been missed: look at every destination.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {}
                    },
                }
            }
        }
    }

    async fn claim_round(self: &Arc<Self>) {
        let now = now_ms();
        let until = now + self.settings.lease.as_millis() as u64;
        let claimed = match self
            .queue
            .claim(&self.settings.owner, now, until, MAX_DESTINATIONS)
            .await
        {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::warn!(error = %err, "claiming destinations failed");
                return;
            }
        };
        let mut workers = self.workers.lock().expect("workers lock poisoned");
        for peer in claimed {
            match workers.get(&peer) {
                Some(worker) => {
                    worker.lease_until.store(until, Ordering::Relaxed);
                    worker.poke();
                }
                None => {
                    let worker = Arc::new(Worker {
                        peer: peer.clone(),
                        wake: Notify::new(),
                        in_flight: Mutex::new(InFlight::default()),
                        outcomes: Mutex::new(Vec::new()),
                        recording: std::sync::atomic::AtomicBool::new(false),
                        lease_until: AtomicU64::new(until),
                        changed: std::sync::atomic::AtomicBool::new(true),
                        retry_at: AtomicU64::new(u64::MAX),
                    });
                    workers.insert(peer, worker.clone());
                    tokio::spawn(self.clone().work(worker));
                }
            }
        }
    }

    /// One destination's worker.
    async fn work(self: Arc<Self>, worker: Arc<Worker>) {
        let peer = worker.peer.as_str();
        let mut idle_since: Option<u64> = None;
        // Due work may be there that the last read did not answer: it answered as many as it
        // asked for, or something changed since. Otherwise reading again would answer nothing.
        let mut stale = true;
        let mut last_read: Option<tokio::time::Instant> = None;
        let idle = loop {
            let now = now_ms();
            let lease_until = worker.lease_until.load(Ordering::Relaxed);
            if self.settings.shutdown.is_cancelled() || now >= lease_until {
                break false;
            }
            // A lease near its end is renewed first (the claim round wakes this worker):
            // no send starts on it, so it never lapses under sends in flight — a lapsed
            // worker ends, and its successor would hand its sends out again.
            let renewing = lease_until - now < (self.settings.lease / RENEW_PARTS).as_millis() as u64;
            if renewing {
                self.reclaim.notify_one();
            }
            let take = self.room(&worker, renewing);
            let mut took = 0;
            stale |= worker.changed.swap(false, Ordering::AcqRel);
            let busy = !worker.in_flight.lock().expect("in-flight lock poisoned").is_empty();
            let read_at = last_read.filter(|_| busy).map(|at| at + READ_GAP);
            let gap = read_at.filter(|at| *at > tokio::time::Instant::now());
            if take.limit > 0 && stale && gap.is_none() {
                last_read = Some(tokio::time::Instant::now());
                match self.queue.due(peer, now, take.limit, take.skip, take.recipients).await {
                    Ok(due) => {
                        stale = due.len() == take.limit;
                        took = self.start_sends(&worker, due);
                    }
                    Err(err) => tracing::warn!(peer, error = %err, "reading due deliveries failed"),
                }
            }
            // Unrecorded outcomes keep the worker (and its lease) until they are recorded.
            let sending = !worker.in_flight.lock().expect("in-flight lock poisoned").is_empty();
            // While anything is in flight, its answer or record wakes this worker, and the
            // retries it recorded itself say when the next one is due (a worker has its
            // destination to itself); the queue is asked only by a worker about to wait with
            // nothing in flight.
            let next = if sending {
                match worker.retry_at.load(Ordering::Acquire) {
                    u64::MAX => None,
                    at if at <= now => {
                        let _ = worker
                            .retry_at
                            .compare_exchange(at, u64::MAX, Ordering::AcqRel, Ordering::Relaxed);
                        stale = true;
                        None
                    }
                    at => Some(at),
                }
            } else {
                worker.retry_at.store(u64::MAX, Ordering::Release);
                match self.queue.next_retry(peer, now).await {
                    Ok(next) => next,
                    Err(_) => Some(now + 1000),
                }
            };
            let idle = took == 0 && !sending && !stale && next.is_none() && !renewing;
            // An idle worker lingers a moment before it ends: a destination sent to
            // steadily keeps its worker between activities instead of costing a claim round
            // for each.
            let linger_ends = if idle {
                let since = *idle_since.get_or_insert(now);
                if now >= since + IDLE_LINGER_MS {
                    break true;
                }
                Some(since + IDLE_LINGER_MS)
            } else {
                idle_since = None;
                None
            };
            let wake_at = linger_ends.or(next).map_or(lease_until, |at| at.min(lease_until));
            let mut sleep_until = tokio::time::Instant::now() + Duration::from_millis(wake_at.saturating_sub(now_ms()));
            if let Some(gap) = gap.filter(|_| stale) {
                sleep_until = sleep_until.min(gap);
            }
            tokio::select! {
                () = self.settings.shutdown.cancelled() => {}
                () = worker.wake.notified() => {}
                // A retry's time came (or the linger or lease ran out): look again.
                () = tokio::time::sleep_until(sleep_until) => stale = true,
            }
        };
        // The lease is given up while this worker is still the destination's, and only if
        // it still ends when this worker last knew: a claim round that renewed it meanwhile
        // may be about to start the next worker on it (this one gone from the map). Given
        // up from under that worker, it would fence it — its outcomes refused and its
        // deliveries sent again.
        let until = worker.lease_until.load(Ordering::Relaxed);
        if idle && let Err(err) = self.queue.release(&self.settings.owner, peer, until).await {
            tracing::debug!(peer, error = %err, "releasing a lease failed");
        }
        {
            let mut workers = self.workers.lock().expect("workers lock poisoned");
            if workers.get(peer).is_some_and(|w| Arc::ptr_eq(w, &worker)) {
                workers.remove(peer);
            }
        }
        // Work may have been queued while this worker was ending.
        self.reclaim.notify_one();
    }

    /// What `worker` may take now: up to `max_in_flight` sending, and not unboundedly
    /// ahead of the records; nothing while its lease is being renewed.
    fn room(&self, worker: &Worker, renewing: bool) -> Take {
        let in_flight = worker.in_flight.lock().expect("in-flight lock poisoned");
        let max = if renewing { 0 } else { self.settings.max_in_flight };
        let limit = max
            .saturating_sub(in_flight.sending.len())
            .min((max * UNRECORDED_FACTOR).saturating_sub(in_flight.unrecorded.len()));
        Take {
            limit,
            skip: in_flight.ids(),
            // The recipients' names matter to a send through a node inbox only when the
            // static map names one of them.
            recipients: !self.settings.inbox_overrides.is_empty(),
        }
    }

    /// Starts a send of each of `due` not in flight already; how many were handed out.
    fn start_sends(self: &Arc<Self>, worker: &Arc<Worker>, due: Vec<Due>) -> usize {
        let took = due.len();
        let mut in_flight = worker.in_flight.lock().expect("in-flight lock poisoned");
        for item in due {
            if in_flight.start(item.id) {
                tokio::spawn(self.clone().send(worker.clone(), item));
            }
        }
        took
    }

    async fn send(self: Arc<Self>, worker: Arc<Worker>, due: Due) {
        let peer = worker.peer.as_str();
        let id = due.id;
        let _permit = self.settings.requests.acquire().await.expect("never closed");
        if now_ms() < worker.lease_until.load(Ordering::Relaxed) {
            let (targets, mut failures) = match due.targets(peer, &self.settings.inbox_overrides) {
                Ok(targets) => (targets, Vec::new()),
                Err(reason) => (Vec::new(), vec![(String::new(), Failure::Permanent { reason })]),
            };
            let several = targets.len() > 1;
            for url in targets {
                let span = fedsx_runtime::trace_context::http_client_span(&http::Method::POST, &url, &due.traceparent);
                span.record("fedsx.peer", peer);
                span.record("fedsx.activity_id", fedsx_wire::ActivityId(id).to_string());
                let sent = dispatch(&self.settings.http, &self.settings.signer, &url, &due.envelope)
                    .instrument(span)
                    .await;
                if let Err(failure) = sent {
                    failures.push((url, failure));
                }
            }
            let result = combine(failures, several);
            let outcome = self.outcome(peer, &due, result);
            worker
                .outcomes
                .lock()
                .expect("outcomes lock poisoned")
                .push((id, outcome));
            worker.in_flight.lock().expect("in-flight lock poisoned").answered(id);
            // Room for another send while this outcome waits to be recorded.
            worker.wake.notify_one();
            if !worker.recording.swap(true, Ordering::AcqRel) {
                tokio::spawn(self.clone().record(worker.clone()));
            }
            return;
        }
        worker.in_flight.lock().expect("in-flight lock poisoned").forget(&id);
        worker.poke();
    }

    /// Records the worker's waiting outcomes, a batch at a time, until none are left; the
    /// ids leave "in flight" only once recorded (or once recording failed, to be sent
    /// again), so no delivery is handed out twice meanwhile.
    async fn record(self: Arc<Self>, worker: Arc<Worker>) {
        let peer = worker.peer.as_str();
        loop {
            let batch = std::mem::take(&mut *worker.outcomes.lock().expect("outcomes lock poisoned"));
            if batch.is_empty() {
                worker.recording.store(false, Ordering::Release);
                // An outcome may have come in between the take and the store.
                let more = !worker.outcomes.lock().expect("outcomes lock poisoned").is_empty();
                if more && !worker.recording.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            let ids: Vec<Id> = batch.iter().map(|(id, _)| *id).collect();
            // The worker wakes for the earliest of these retries (it may have sends in
            // flight and not ask the queue).
            let retry_at = batch
                .iter()
                .filter_map(|(_, outcome)| match outcome {
                    Outcome::Retry { at, .. } => Some(*at),
                    _ => None,
                })
                .min();
            if let Some(at) = retry_at {
                worker.retry_at.fetch_min(at, Ordering::AcqRel);
            }
            // Only the worker takes due work: a second taker could act on a read made
            // before a send it raced was answered and recorded, and send it again.
            match self.queue.record(&self.settings.owner, now_ms(), peer, batch).await {
                Ok(recorded) => {
                    for (id, done) in ids.iter().zip(recorded) {
                        if !done {
                            tracing::warn!(peer, id = %fedsx_wire::ActivityId(*id), "outcome not recorded: another replica holds the destination now");
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(peer, error = %err, outcomes = ids.len(), "recording outcomes failed; they will be sent again");
                }
            }
            let mut in_flight = worker.in_flight.lock().expect("in-flight lock poisoned");
            for id in &ids {
                in_flight.forget(id);
            }
            drop(in_flight);
            // Recorded: these senders' next deliveries are due now (or, not recorded, these
            // are due again).
            worker.poke();
        }
    }

    /// What a send's result means, decided by the pure schedule; counted and logged.
    fn outcome(&self, peer: &str, due: &Due, result: Result<(), crate::queue::Failure>) -> Outcome {
        let hex_id = fedsx_wire::ActivityId(due.id);
        let count = |outcome: &'static str| crate::metrics::sends().add(1, &[KeyValue::new("outcome", outcome)]);
        match result {
            Ok(()) => {
                count("delivered");
                tracing::info!(peer, id = %hex_id, attempts = due.attempts + 1, "delivered");
                Outcome::Delivered
            }
            Err(failure) => {
                let attempts = due.attempts + 1;
                let error = failure.reason().to_owned();
                match decide(attempts, now_ms(), &failure, &self.settings.schedule) {
                    AfterFailure::RetryAt(at) => {
                        count("retry");
                        tracing::warn!(peer, id = %hex_id, attempts, error = %error, retry_at_ms = at, "delivery failed");
                        Outcome::Retry { attempts, at, error }
                    }
                    AfterFailure::DeadLettered => {
                        count("dead_letter");
                        tracing::warn!(peer, id = %hex_id, attempts, error = %error, "dead-lettered");
                        Outcome::Dead { attempts, error }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permanent(code: u16) -> Failure {
        Failure::Permanent {
            reason: format!("status {code}"),
        }
    }

    #[test]
    fn a_delivery_to_several_inboxes_fails_as_its_worst_send_and_names_the_inboxes() {
        assert_eq!(combine(vec![], true), Ok(()));
        assert_eq!(combine(vec![("a".into(), permanent(410))], false), Err(permanent(410)));
        let mixed = vec![
            ("https://n/actors/a/inbox".to_owned(), permanent(410)),
            (
                "https://n/actors/b/inbox".to_owned(),
                Failure::Transient {
                    reason: "status 503".into(),
                    retry_after: Some(std::time::Duration::from_secs(5)),
                },
            ),
        ];
        assert_eq!(
            combine(mixed, true),
            Err(Failure::Transient {
                reason: "status 410 from https://n/actors/a/inbox, status 503 from https://n/actors/b/inbox".into(),
                retry_after: Some(std::time::Duration::from_secs(5)),
            })
        );
        let refused = vec![("https://n/actors/a/inbox".to_owned(), permanent(410))];
        assert_eq!(
            combine(refused, true),
            Err(Failure::Permanent {
                reason: "status 410 from https://n/actors/a/inbox".into()
            })
        );
    }
}
