//! The pure core of delivery: one peer's queue state and its transitions, with `now` passed
//! in (milliseconds since the Unix epoch) — no clock, no network, no disk. The service
//! persists and drives it; these functions decide.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// An activity id (32 bytes).
pub type Id = [u8; 32];

/// The retry schedule: the wait after the 1st, 2nd, … failure. The failure after the last
/// slot dead-letters the activity (with the default five slots: the 6th failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    slots: Vec<Duration>,
}

impl Default for Schedule {
    /// 30 s, 5 min, 30 min, 2 h, 8 h.
    fn default() -> Self {
        Schedule::new(
            [30, 300, 1800, 7200, 28_800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
        .expect("the default schedule has slots")
    }
}

/// What the schedule says after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    RetryAfter(Duration),
    DeadLetter,
}

impl Schedule {
    pub fn new(slots: Vec<Duration>) -> Result<Schedule, String> {
        if slots.is_empty() {
            return Err("the retry schedule needs at least one slot".into());
        }
        Ok(Schedule { slots })
    }

    /// Parses `30s,5m,30m,2h,8h` (units ms, s, m, h).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let slots = text
            .split(',')
            .map(|slot| parse_duration(slot.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Schedule::new(slots)
    }

    /// The wait after the `attempts`-th failure, or dead letter once past the last slot.
    pub fn backoff(&self, attempts: u32) -> Backoff {
        match attempts.checked_sub(1).and_then(|i| self.slots.get(i as usize)) {
            Some(wait) => Backoff::RetryAfter(*wait),
            None if attempts == 0 => Backoff::RetryAfter(Duration::ZERO),
            None => Backoff::DeadLetter,
        }
    }

    pub fn first(&self) -> Duration {
        self.slots[0]
    }

    pub fn last(&self) -> Duration {
        *self.slots.last().expect("a schedule has slots")
    }
}

pub use fedsx_runtime::clock::parse_duration;

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying, optionally not before the peer's Retry-After.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The peer refused for good (4xx other than 408 and 429).
    Permanent { reason: String },
}

impl Failure {
    pub fn reason(&self) -> &str {
        match self {
            Failure::Transient { reason, .. } | Failure::Permanent { reason } => reason,
        }
    }
}

/// What the `attempts`-th failed send at `now` means: past the schedule (or on a permanent
/// failure) the activity is dead-lettered; otherwise it is retried after the schedule's
/// wait (or the peer's Retry-After, kept within the schedule's first and last slot).
pub fn decide(attempts: u32, now: u64, failure: &Failure, schedule: &Schedule) -> AfterFailure {
    let wait = match failure {
        Failure::Permanent { .. } => Backoff::DeadLetter,
        Failure::Transient { retry_after, .. } => match (schedule.backoff(attempts), retry_after) {
            (Backoff::RetryAfter(slot), Some(asked)) => {
                Backoff::RetryAfter((*asked).clamp(schedule.first(), schedule.last()).max(slot))
            }
            (backoff, _) => backoff,
        },
    };
    match wait {
        Backoff::RetryAfter(wait) => AfterFailure::RetryAt(now.saturating_add(ms(wait))),
        Backoff::DeadLetter => AfterFailure::DeadLettered,
    }
}

/// A dead-lettered activity: how often it was tried and why it last failed; as listed, also
/// whose it was and for whom (kept on disk, not in the queue's memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: Id,
    pub attempts: u32,
    pub last_error: String,
    pub sender: String,
    pub recipients: Vec<crate::storage::Recipient>,
}

/// One peer's queue. Every operation is O(log n) in the queue's length, so a peer with
/// 100,000 queued activities costs no more per send than one with ten; per queued id it
/// holds about 150 bytes (the envelopes live on disk). Pending ids are in lanes, one per
/// sender: only a lane's oldest id (its head) is ever handed out, so a sender's deliveries
/// reach the destination in order while different senders proceed side by side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    next_order: u64,
    /// Activities waiting for delivery, by enqueue order.
    pending: BTreeMap<u64, Id>,
    /// Per pending id: its order, failures so far, and when it may be tried again (ms since
    /// the epoch).
    entries: HashMap<Id, Entry>,
    /// Orders of pending ids due now (never tried, or their retry time passed), and
    /// (retry time, order) of the others: each pending id is in exactly one.
    ready: BTreeSet<u64>,
    timers: BTreeSet<(u64, u64)>,
    dead_letter: BTreeMap<u64, DeadLetter>,
    dead_order: HashMap<Id, u64>,
    /// Per sender, the orders of its pending ids.
    lanes: HashMap<Arc<str>, BTreeSet<u64>>,
    /// The oldest pending order of each lane.
    heads: BTreeSet<u64>,
    /// The sender of each dead letter (a redrive puts it back in its lane).
    dead_senders: HashMap<Id, Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    order: u64,
    attempts: u32,
    next_retry: Option<u64>,
    lane: Arc<str>,
}

/// What a failure did to an activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    RetryAt(u64),
    DeadLettered,
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl PeerState {
    /// Adds an activity of the unnamed sender at the back; see [`PeerState::enqueue_from`].
    pub fn enqueue(&mut self, id: Id) -> bool {
        self.enqueue_from("", id)
    }

    /// Adds an activity at the back of `sender`'s lane; false (and nothing changes) when it
    /// is already pending or dead-lettered.
    pub fn enqueue_from(&mut self, sender: &str, id: Id) -> bool {
        if self.entries.contains_key(&id) || self.dead_order.contains_key(&id) {
            return false;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.pending.insert(order, id);
        let lane = match self.lanes.get_key_value(sender) {
            Some((lane, _)) => lane.clone(),
            None => Arc::from(sender),
        };
        let orders = self.lanes.entry(lane.clone()).or_default();
        orders.insert(order);
        if orders.len() == 1 {
            self.heads.insert(order);
        }
        self.entries.insert(
            id,
            Entry {
                order,
                attempts: 0,
                next_retry: None,
                lane,
            },
        );
        self.ready.insert(order);
        true
    }

    /// Puts back a pending activity as it was persisted (sender, attempts, retry time).
    pub fn restore(&mut self, sender: &str, id: Id, attempts: u32, next_retry: Option<u64>) {
        if !self.enqueue_from(sender, id) {
            return;
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.attempts = attempts;
        }
        if let Some(at) = next_retry {
            self.wait_until(id, at);
        }
    }

    /// Puts back a dead letter of `sender` as it was persisted.
    pub fn restore_dead(&mut self, sender: &str, dead: DeadLetter) {
        let order = self.next_order;
        self.next_order += 1;
        self.dead_order.insert(dead.id, order);
        if !sender.is_empty() {
            self.dead_senders.insert(dead.id, Arc::from(sender));
        }
        self.dead_letter.insert(order, dead);
    }

    fn wait_until(&mut self, id: Id, at: u64) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        self.ready.remove(&entry.order);
        if let Some(old) = entry.next_retry.replace(at) {
            self.timers.remove(&(old, entry.order));
        }
        self.timers.insert((at, entry.order));
    }

    /// Whether `id` may be sent at `now`.
    pub fn is_due(&self, id: &Id, now: u64) -> bool {
        self.next_retry_at(id).is_none_or(|at| at <= now)
    }

    /// Takes `id` out of pending; the sender of what was removed.
    fn remove_pending(&mut self, id: &Id) -> Option<Arc<str>> {
        let entry = self.entries.remove(id)?;
        self.pending.remove(&entry.order);
        self.ready.remove(&entry.order);
        if let Some(at) = entry.next_retry {
            self.timers.remove(&(at, entry.order));
        }
        if let Some(orders) = self.lanes.get_mut(&entry.lane) {
            orders.remove(&entry.order);
            if self.heads.remove(&entry.order)
                && let Some(next) = orders.first()
            {
                self.heads.insert(*next);
            }
            if orders.is_empty() {
                self.lanes.remove(&entry.lane);
            }
        }
        Some(entry.lane)
    }

    pub fn is_pending(&self, id: &Id) -> bool {
        self.entries.contains_key(id)
    }

    pub fn is_dead(&self, id: &Id) -> bool {
        self.dead_order.contains_key(id)
    }

    /// Pending ids in enqueue order.
    pub fn pending(&self) -> impl Iterator<Item = &Id> {
        self.pending.values()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Dead letters in the order they died.
    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.dead_letter.values()
    }

    pub fn dead_letter_len(&self) -> usize {
        self.dead_letter.len()
    }

    pub fn attempts_for(&self, id: &Id) -> u32 {
        self.entries.get(id).map_or(0, |e| e.attempts)
    }

    pub fn next_retry_at(&self, id: &Id) -> Option<u64> {
        self.entries.get(id).and_then(|e| e.next_retry)
    }

    /// A failed send of `id` at `now`: one more attempt; what happens next is [`decide`]'s.
    /// None when `id` is not pending.
    pub fn record_failure(&mut self, id: Id, now: u64, failure: &Failure, schedule: &Schedule) -> Option<AfterFailure> {
        if !self.is_pending(&id) {
            return None;
        }
        let attempts = self.attempts_for(&id) + 1;
        let after = decide(attempts, now, failure, schedule);
        match after {
            AfterFailure::RetryAt(at) => self.retry_at(id, attempts, at),
            AfterFailure::DeadLettered => self.dead_letter(id, attempts, failure.reason()),
        }
        Some(after)
    }

    /// Marks a pending `id` as failed `attempts` times, to be tried again at `at`.
    pub fn retry_at(&mut self, id: Id, attempts: u32, at: u64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.attempts = attempts;
            self.wait_until(id, at);
        }
    }

    /// Moves a pending `id` to the dead letters; its retry time is cleared.
    pub fn dead_letter(&mut self, id: Id, attempts: u32, reason: &str) {
        if let Some(sender) = self.remove_pending(&id) {
            let dead = DeadLetter {
                id,
                attempts,
                last_error: reason.to_owned(),
                ..DeadLetter::default()
            };
            self.restore_dead(&sender, dead);
        }
    }

    /// A delivered activity: its attempts and retry time are cleared and it leaves the queue
    /// (the next of its sender becomes due). False when it was not pending.
    pub fn record_success(&mut self, id: Id) -> bool {
        self.remove_pending(&id).is_some()
    }

    /// Pending ids that may be sent at `now` — each the oldest of its sender, never tried
    /// or its retry time passed — in insertion (FIFO) order.
    pub fn next_due(&self, now: u64) -> Vec<Id> {
        self.heads
            .iter()
            .map(|order| self.pending[order])
            .filter(|id| self.is_due(id, now))
            .collect()
    }

    /// What a worker sends next: at most `limit` due lane heads in FIFO order, leaving out
    /// those `skip` says (in flight). Moves ids whose retry time passed among the ready ones
    /// first, so each id costs O(log n) once, however long the queue; a call costs
    /// O(senders with pending work).
    pub fn take_due(&mut self, now: u64, limit: usize, skip: impl Fn(&Id) -> bool) -> Vec<Id> {
        while let Some(&(at, order)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.ready.insert(order);
        }
        self.heads
            .iter()
            .filter(|order| self.ready.contains(order))
            .map(|order| self.pending[order])
            .filter(|id| !skip(id))
            .take(limit)
            .collect()
    }

    /// The earliest retry time among waiting ids (ids already taken as due excluded).
    pub fn next_wake(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Moves dead letters (all, or those in `ids`) back to the end of pending with attempts
    /// reset; returns the ids moved.
    pub fn redrive(&mut self, ids: Option<&[Id]>) -> Vec<Id> {
        let chosen: Vec<u64> = self
            .dead_letter
            .iter()
            .filter(|(_, d)| ids.is_none_or(|ids| ids.contains(&d.id)))
            .map(|(order, _)| *order)
            .collect();
        let mut moved = Vec::with_capacity(chosen.len());
        for order in chosen {
            if let Some(dead) = self.dead_letter.remove(&order) {
                self.dead_order.remove(&dead.id);
                let sender = self.dead_senders.remove(&dead.id);
                self.enqueue_from(sender.as_deref().unwrap_or_default(), dead.id);
                moved.push(dead.id);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests;
