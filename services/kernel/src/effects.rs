//! What applying a journal record asks the world to do, and the runner that does it.
//!
//! `State::apply` is pure: it changes the state and answers the record's effects (what
//! [`of`] derives from the record alone). The journal follower hands them here, and each
//! journal's runner does them in seq order — only the replica serving the partition does;
//! the others drop them. Every effect is idempotent (an Accept is published under a
//! once-key), so doing one again is harmless, and that is how none is lost:
//! - a replica that takes a partition over (also at start) runs again the effects of the
//!   partition journal's records after the newest snapshot ([`Kernel::rerun_effects`]), so
//!   an effect whose record was journaled just before its owner died is done by the next;
//! - a handler whose record the journal already held (a retried call) does the record's
//!   effects itself before it answers, so a retry also repairs an effect older than the
//!   snapshot.
//!
//! A handler that journaled a record waits until its effects were done before it answers
//! ([`Effects::done`]), so the caller sees them (the Accept is in the outbox).

use crate::error::KernelError;
use crate::kernel::{Kernel, derived_id};
use crate::publish::Draft;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::wire::v1::ActivityType;
use fedsx_wire::ActivityId;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

/// Records whose effects one runner does at once (their effects are independent).
const CHUNK: usize = 32;
/// How long a handler waits for its record's effects before it answers UNAVAILABLE.
const DONE_WAIT: Duration = Duration::from_secs(10);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Something a journal record asks for besides the change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish the Accept of Follow `follow_id` from local `actor` to `follower`, once.
    AcceptFollow {
        actor: String,
        follower: String,
        follow_id: ActivityId,
    },
}

/// The effects of `record`: a function of the record alone, so replaying the journal
/// derives the same ones.
pub fn of(record: &Record) -> Vec<Effect> {
    match record {
        Record::FollowerAdded(added) => ActivityId::from_slice(&added.follow_id)
            .map(|follow_id| Effect::AcceptFollow {
                actor: added.actor.clone(),
                follower: added.follower.clone(),
                follow_id,
            })
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// Each journal's effects not done yet, by record seq, and how far they are done.
pub(crate) struct Effects {
    journals: Vec<Queue>,
    /// The span of each call waiting for its record's effects, by the record's entry id:
    /// the effects run in it, so the trace goes on from the call (an Accept's hand-off is in
    /// the Follow's trace).
    spans: Mutex<HashMap<[u8; 32], tracing::Span>>,
}

/// A record's effects, the span they run in, and whether they are run again (after a
/// takeover: perhaps done before).
struct Owed {
    effects: Vec<Effect>,
    span: tracing::Span,
    again: bool,
}

struct Queue {
    pending: Mutex<BTreeMap<u64, Owed>>,
    /// Holds a permit when pushed to while the runner was busy, so no push is missed.
    wake: Arc<Notify>,
    /// Every effect of a record at or below it was done (or dropped by a replica not
    /// serving the partition) — of the records handed to this runner.
    done: watch::Sender<u64>,
}

impl Effects {
    /// For `applied` (each journal's last applied seq: nothing at or below it is owed).
    pub(crate) fn new(applied: &[u64]) -> Effects {
        Effects {
            journals: applied
                .iter()
                .map(|seq| Queue {
                    pending: Mutex::default(),
                    wake: Arc::new(Notify::new()),
                    done: watch::Sender::new(*seq),
                })
                .collect(),
            spans: Mutex::default(),
        }
    }

    /// Runs the effects of the record journaled under entry `id` in the current span, while
    /// the guard lives (take it before appending the record).
    pub(crate) fn in_current_span(&self, id: [u8; 32]) -> SpanGuard<'_> {
        self.spans
            .lock()
            .expect("effects lock poisoned")
            .insert(id, tracing::Span::current());
        SpanGuard { effects: self, id }
    }

    /// Hands the effects of applied record `seq` of `journal` to its runner, in seq order.
    pub(crate) fn push(&self, journal: usize, seq: u64, entry_id: &[u8], effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let span = <[u8; 32]>::try_from(entry_id)
            .ok()
            .and_then(|id| self.spans.lock().expect("effects lock poisoned").get(&id).cloned())
            .unwrap_or_else(tracing::Span::none);
        self.owe(journal, seq, effects, span, false);
    }

    /// Hands the effects of record `seq` of `journal` to its runner to be run again after a
    /// takeover (nobody waits for them).
    fn push_again(&self, journal: usize, seq: u64, effects: Vec<Effect>) {
        self.owe(journal, seq, effects, tracing::Span::none(), true);
    }

    fn owe(&self, journal: usize, seq: u64, effects: Vec<Effect>, span: tracing::Span, again: bool) {
        let queue = &self.journals[journal];
        let owed = Owed { effects, span, again };
        queue.pending.lock().expect("effects lock poisoned").insert(seq, owed);
        queue.wake.notify_one();
    }

    /// Waits until the effects of record `seq` of `journal` were done.
    pub(crate) async fn done(&self, journal: usize, seq: u64) -> Result<(), KernelError> {
        let mut done = self.journals[journal].done.subscribe();
        match tokio::time::timeout(DONE_WAIT, done.wait_for(|at| *at >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(KernelError::Internal("the effects runner stopped".into())),
            Err(_) => Err(KernelError::LogStoreUnavailable(format!(
                "the effects of journal record {seq} are not done after {DONE_WAIT:?}; they will be — retry the call"
            ))),
        }
    }

    /// The next records to do, lowest seq first.
    fn next_chunk(&self, journal: usize) -> Vec<(u64, Owed)> {
        let mut pending = self.journals[journal].pending.lock().expect("effects lock poisoned");
        let mut chunk = Vec::with_capacity(CHUNK.min(pending.len()));
        while chunk.len() < CHUNK {
            let Some(next) = pending.pop_first() else { break };
            chunk.push(next);
        }
        chunk
    }

    fn finished(&self, journal: usize, through: u64) {
        self.journals[journal].done.send_if_modified(|done| {
            let moved = through > *done;
            *done = (*done).max(through);
            moved
        });
    }
}

/// Takes a call's span out of [`Effects`] when the call is done.
pub(crate) struct SpanGuard<'a> {
    effects: &'a Effects,
    id: [u8; 32],
}

impl Drop for SpanGuard<'_> {
    fn drop(&mut self) {
        self.effects
            .spans
            .lock()
            .expect("effects lock poisoned")
            .remove(&self.id);
    }
}

/// What a runner needs of the kernel: the effects owed, whether this replica serves a
/// journal's partition, and doing one effect. The kernel is the one host; the runner's
/// tests have their own.
pub(crate) trait Host: Send + Sync + 'static {
    fn effects(&self) -> &Effects;

    /// Whether this replica serves `journal`'s partition (always, for the node journal).
    fn serves(&self, journal: usize) -> bool;

    /// Does one effect (idempotent). `again`: it may have been done before.
    fn run_effect(&self, effect: &Effect, again: bool) -> impl Future<Output = Result<(), KernelError>> + Send;
}

/// Starts one runner per journal of `host`'s effects, tracked by `tasks`; each ends on
/// `shutdown` or once the host is gone.
pub(crate) fn spawn_runners<H: Host>(
    host: &Arc<H>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &fedsx_runtime::CancellationToken,
) {
    for journal in 0..host.effects().journals.len() {
        let host = Arc::downgrade(host);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let Some(me) = host.upgrade() else { return };
                let chunk = me.effects().next_chunk(journal);
                if chunk.is_empty() {
                    let wake = me.effects().journals[journal].wake.clone();
                    drop(me);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = wake.notified() => continue,
                    }
                }
                let through = chunk.last().map_or(0, |(seq, _)| *seq);
                let runs = chunk.into_iter().flat_map(|(_, owed)| {
                    let (me, shutdown) = (&me, &shutdown);
                    owed.effects.into_iter().map(move |effect| {
                        run_until_done(&**me, journal, effect, owed.again, shutdown).instrument(owed.span.clone())
                    })
                });
                futures::future::join_all(runs).await;
                me.effects().finished(journal, through);
            }
        });
    }
}

/// Does `effect`, again after a retryable failure, until done, the partition is no longer
/// served here (its new owner does it), or shutdown.
async fn run_until_done<H: Host>(
    host: &H,
    journal: usize,
    effect: Effect,
    again: bool,
    shutdown: &fedsx_runtime::CancellationToken,
) {
    let mut pause = RETRY_FIRST;
    loop {
        if !host.serves(journal) {
            tracing::debug!(?effect, "effect left to the partition's new owner");
            return;
        }
        match host.run_effect(&effect, again).await {
            Ok(()) => return,
            Err(err) if err.is_retryable() => {
                tracing::warn!(?effect, error = %err, retry_in = ?pause, "effect failed; retrying");
            }
            Err(err) => {
                tracing::error!(?effect, error = %err, "effect failed for good");
                return;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

impl Host for Kernel {
    fn effects(&self) -> &Effects {
        &self.effects
    }

    fn serves(&self, journal: usize) -> bool {
        journal == crate::partition::NODE || self.ownership.owned((journal - 1) as u32).is_some()
    }

    /// An Accept is published under a once-key derived from the Follow: looked for first
    /// when `again` (one lookup instead of signing and appending an activity already there).
    async fn run_effect(&self, effect: &Effect, again: bool) -> Result<(), KernelError> {
        match effect {
            Effect::AcceptFollow {
                actor,
                follower,
                follow_id,
            } => {
                let once_key = derived_id("accept", &[&follow_id.0]);
                let outbox = fedsx_proto::logstore::v1::StreamKind::Outbox;
                if again
                    && self
                        .ports
                        .logs
                        .lookup(actor, outbox, once_key.to_vec().into())
                        .await?
                        .is_some()
                {
                    return Ok(());
                }
                let accept = Draft {
                    actor: actor.clone(),
                    kind: ActivityType::Accept,
                    object: follow_id.to_hex(),
                    to: vec![follower.clone()],
                    content: String::new(),
                    once_key: Some(once_key),
                };
                let published = self.publish(accept).await?;
                if published.new {
                    tracing::info!(actor, follower, accept = %published.id, "follow auto-accepted");
                }
                Ok(())
            }
        }
    }
}

impl Kernel {
    /// This replica just took `journal`'s partition over: the effects of its records after
    /// the newest snapshot, up to `through` (where the takeover fenced it), are run again
    /// here, in the background — those its previous owner may not have done.
    pub(crate) fn rerun_effects(&self, journal: usize, through: u64) {
        let Some(kernel) = self.me.upgrade() else { return };
        self.tasks.spawn(async move {
            let from = match crate::snapshot::newest_seqs(&kernel.ports.logs).await {
                Ok(seqs) => seqs.and_then(|seqs| seqs.get(journal).copied()).unwrap_or(0),
                Err(err) => {
                    tracing::warn!(journal, error = %err, "reading the newest snapshot failed; rerunning effects of the whole journal");
                    0
                }
            };
            let stream = kernel.machine.journals.stream(journal).to_owned();
            let mut owed = 0;
            let read = kernel
                .ports.logs
                .each_after(&stream, fedsx_proto::logstore::v1::StreamKind::Meta, from, |entry| {
                    if entry.seq <= through {
                        let record = crate::journal::decode(&entry)?.record;
                        let effects = record.as_ref().map(of).unwrap_or_default();
                        if !effects.is_empty() {
                            owed += 1;
                            kernel.effects.push_again(journal, entry.seq, effects);
                        }
                    }
                    Ok(())
                })
                .await;
            match read {
                Ok(_) => tracing::info!(journal = %stream, after = from, through, records = owed, "effects run again after a takeover"),
                Err(err) => tracing::warn!(journal = %stream, error = %err, "rerunning effects after a takeover failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NodeSecret;
    use crate::state::{NodeUrls, State};
    use fedsx_proto::kernel::v1::{FollowerAdded, FollowerRemoved, JournalRecord, RelayCursor};

    fn added(follow_id: &[u8]) -> JournalRecord {
        JournalRecord {
            record: Some(Record::FollowerAdded(FollowerAdded {
                actor: "bob".into(),
                follower: "https://a.example/actors/alice".into(),
                follow_id: follow_id.to_vec().into(),
            })),
        }
    }

    #[test]
    fn applying_a_follower_answers_its_accept_and_other_records_answer_nothing() {
        let (secret, node) = (
            NodeSecret::from_bytes([1; 32]),
            NodeUrls::new("https://b.example", true),
        );
        let mut state = State::default();
        let effects = state.apply(added(&[7; 32]), &secret, &node);
        assert_eq!(
            effects,
            [Effect::AcceptFollow {
                actor: "bob".into(),
                follower: "https://a.example/actors/alice".into(),
                follow_id: ActivityId([7; 32]),
            }]
        );
        assert_eq!(state.followers["bob"].len(), 1, "and the follower is recorded");
        assert_eq!(
            state.apply(added(&[7; 32]), &secret, &node),
            effects,
            "the same record again: the same effect (done once, by its once-key)"
        );
        assert!(
            state.apply(added(&[7; 3]), &secret, &node).is_empty(),
            "no Follow id, no Accept"
        );
        let removed = JournalRecord {
            record: Some(Record::FollowerRemoved(FollowerRemoved {
                actor: "bob".into(),
                follower: "https://a.example/actors/alice".into(),
                ..Default::default()
            })),
        };
        assert!(state.apply(removed, &secret, &node).is_empty());
        let cursor = JournalRecord {
            record: Some(Record::RelayCursor(RelayCursor {
                actor: "bob".into(),
                seq: 3,
            })),
        };
        assert!(state.apply(cursor, &secret, &node).is_empty());
        assert!(state.apply(JournalRecord::default(), &secret, &node).is_empty());
    }

    #[tokio::test]
    async fn a_call_waits_for_its_records_effects_and_later_ones_do_not_hold_it() {
        let effects = Effects::new(&[0, 10]);
        let accept = Effect::AcceptFollow {
            actor: "bob".into(),
            follower: "https://a.example/actors/alice".into(),
            follow_id: ActivityId([7; 32]),
        };
        effects.push(1, 11, &[1; 32], vec![accept.clone()]);
        effects.push(1, 12, &[2; 32], vec![accept]);
        let mut waiting = std::pin::pin!(effects.done(1, 11));
        assert!(futures::poll!(&mut waiting).is_pending());
        let chunk = effects.next_chunk(1);
        assert_eq!(
            chunk.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            [11, 12],
            "lowest seq first"
        );
        effects.finished(1, 11);
        assert!(matches!(futures::poll!(&mut waiting), std::task::Poll::Ready(Ok(()))));
        assert!(futures::poll!(std::pin::pin!(effects.done(1, 12))).is_pending());
        assert!(
            futures::poll!(std::pin::pin!(effects.done(1, 10))).is_ready(),
            "what was applied before the kernel started is owed by nobody waiting"
        );
    }

    /// A host that records the effects it ran (by follower) and fails each follower's
    /// first runs as told.
    struct Fake {
        effects: Effects,
        serving: std::sync::atomic::AtomicBool,
        ran: Mutex<Vec<String>>,
        /// Per follower: failures still to answer, and whether they are retryable.
        failing: Mutex<HashMap<String, (usize, bool)>>,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                effects: Effects::new(&[0, 0]),
                serving: std::sync::atomic::AtomicBool::new(true),
                ran: Mutex::default(),
                failing: Mutex::default(),
            })
        }

        fn ran(&self) -> Vec<String> {
            self.ran.lock().unwrap().clone()
        }
    }

    impl Host for Fake {
        fn effects(&self) -> &Effects {
            &self.effects
        }

        fn serves(&self, _journal: usize) -> bool {
            self.serving.load(std::sync::atomic::Ordering::SeqCst)
        }

        async fn run_effect(&self, effect: &Effect, _again: bool) -> Result<(), KernelError> {
            let Effect::AcceptFollow { follower, .. } = effect;
            if let Some((left, retryable)) = self.failing.lock().unwrap().get_mut(follower)
                && *left > 0
            {
                *left -= 1;
                return Err(if *retryable {
                    KernelError::LogStoreUnavailable("log-store down".into())
                } else {
                    KernelError::BadRequest("refused".into())
                });
            }
            self.ran.lock().unwrap().push(follower.clone());
            Ok(())
        }
    }

    fn accept(follower: &str) -> Vec<Effect> {
        vec![Effect::AcceptFollow {
            actor: "alice".into(),
            follower: follower.into(),
            follow_id: ActivityId([7; 32]),
        }]
    }

    /// Starts the runners; the tracker and token end them when dropped with the test.
    fn start(host: &Arc<Fake>) -> fedsx_runtime::CancellationToken {
        let (tasks, shutdown) = (
            tokio_util::task::TaskTracker::new(),
            fedsx_runtime::CancellationToken::new(),
        );
        spawn_runners(host, &tasks, &shutdown);
        shutdown
    }

    #[tokio::test]
    async fn effects_run_in_seq_order_and_done_waits_for_them() {
        let host = Fake::new();
        let _shutdown = start(&host);
        for (seq, follower) in [(3, "c"), (1, "a"), (2, "b")] {
            host.effects.push(1, seq, &[seq as u8; 32], accept(follower));
        }
        host.effects.done(1, 3).await.unwrap();
        assert_eq!(host.ran(), ["a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_is_retried_and_a_permanent_one_given_up() {
        let host = Fake::new();
        host.failing.lock().unwrap().insert("a".into(), (3, true));
        host.failing.lock().unwrap().insert("b".into(), (1, false));
        let _shutdown = start(&host);
        host.effects.push(1, 1, &[1; 32], accept("a"));
        host.effects.push(1, 2, &[2; 32], accept("b"));
        host.effects.done(1, 2).await.unwrap();
        assert_eq!(
            host.ran(),
            ["a"],
            "a after three retries; b refused for good, not retried"
        );
        assert_eq!(host.failing.lock().unwrap()["b"].0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_effect_of_a_partition_no_longer_served_is_left_to_its_new_owner() {
        let host = Fake::new();
        host.failing.lock().unwrap().insert("a".into(), (1_000, true));
        let _shutdown = start(&host);
        host.effects.push(1, 1, &[1; 32], accept("a"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        host.serving.store(false, std::sync::atomic::Ordering::SeqCst);
        host.effects.done(1, 1).await.unwrap();
        assert!(host.ran().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn done_answers_unavailable_while_an_effect_keeps_failing() {
        let host = Fake::new();
        host.failing.lock().unwrap().insert("a".into(), (usize::MAX, true));
        let shutdown = start(&host);
        host.effects.push(1, 1, &[1; 32], accept("a"));
        let err = host.effects.done(1, 1).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        shutdown.cancel();
    }
}
