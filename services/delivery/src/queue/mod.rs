//! The pure core of delivery: one peer's queue state and its transitions, with `now` passed
//! in (milliseconds since the Unix epoch) — no clock, no network, no disk. The service
//! persists and drives it; these functions decide.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

/// One peer's queue. Every operation is O(log n) in the queue's length (or in a sender's
/// lane), so a peer with 100,000 queued activities costs no more per send than one with
/// ten (the envelopes live on disk). Pending ids are in lanes, one per sender: only a lane's
/// oldest id (its head) is ever handed out, so a sender's deliveries reach the destination
/// in order while different senders proceed side by side. Only heads carry state and are
/// scheduled (due now, or waiting for a retry time): an id behind its head is its order and
/// its place in the lane, 40 bytes, nothing more. So only a head can be sent, retried,
/// dead-lettered or delivered; and a duplicate of an id queued behind its head is not
/// recognised here — the engines look their records up before they enqueue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    next_order: u64,
    /// Pending ids, heads included.
    pending: usize,
    /// Per lane head: its order, failures so far, when it may be tried again, its lane.
    head_of: HashMap<Id, Head>,
    /// Lanes by number; a number whose lane emptied is reused (`free_lanes`).
    lanes: Vec<Lane>,
    lane_numbers: HashMap<Arc<str>, u32>,
    free_lanes: Vec<u32>,
    /// The order of each lane's head, and the lane.
    heads: BTreeMap<u64, u32>,
    /// Orders of heads due now (never tried, or their retry time passed), and (retry time,
    /// order) of the other heads: each head is in exactly one.
    ready: BTreeSet<u64>,
    timers: BTreeSet<(u64, u64)>,
    dead_letter: BTreeMap<u64, DeadLetter>,
    dead_order: HashMap<Id, u64>,
    /// The sender of each dead letter (a redrive puts it back in its lane).
    dead_senders: HashMap<Id, Arc<str>>,
}

/// One sender's pending ids with their orders, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lane {
    sender: Arc<str>,
    ids: VecDeque<(u64, Id)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    order: u64,
    /// When it may be tried again (ms since the epoch); 0 when it may be at once.
    next_retry: u64,
    attempts: u32,
    lane: u32,
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
    /// is a lane's head or dead-lettered (one queued behind a head is not looked for).
    pub fn enqueue_from(&mut self, sender: &str, id: Id) -> bool {
        if self.head_of.contains_key(&id) || self.dead_order.contains_key(&id) {
            return false;
        }
        let order = self.next_order;
        self.next_order += 1;
        let lane = self.lane_of(sender);
        let ids = &mut self.lanes[lane as usize].ids;
        ids.push_back((order, id));
        self.pending += 1;
        if ids.len() == 1 {
            self.make_head(lane);
        }
        true
    }

    /// The number of `sender`'s lane, made (or an emptied one reused) when it has none.
    fn lane_of(&mut self, sender: &str) -> u32 {
        if let Some(lane) = self.lane_numbers.get(sender) {
            return *lane;
        }
        let sender: Arc<str> = Arc::from(sender);
        let lane = Lane {
            sender: sender.clone(),
            ids: VecDeque::new(),
        };
        let number = match self.free_lanes.pop() {
            Some(free) => {
                self.lanes[free as usize] = lane;
                free
            }
            None => {
                self.lanes.push(lane);
                (self.lanes.len() - 1) as u32
            }
        };
        self.lane_numbers.insert(sender, number);
        number
    }

    /// Makes the oldest id of `lane` its head, due now (never tried).
    fn make_head(&mut self, lane: u32) {
        let Some(&(order, id)) = self.lanes[lane as usize].ids.front() else {
            return;
        };
        self.head_of.insert(
            id,
            Head {
                order,
                next_retry: 0,
                attempts: 0,
                lane,
            },
        );
        self.heads.insert(order, lane);
        self.ready.insert(order);
    }

    /// Puts back a pending activity as it was persisted (sender, attempts, retry time). Only
    /// a head has attempts or a retry time: an activity is tried only as its lane's head.
    pub fn restore(&mut self, sender: &str, id: Id, attempts: u32, next_retry: Option<u64>) {
        if !self.enqueue_from(sender, id) {
            return;
        }
        if let Some(head) = self.head_of.get_mut(&id) {
            head.attempts = attempts;
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
        let Some(head) = self.head_of.get_mut(&id) else { return };
        let (order, old) = (head.order, head.next_retry);
        // 0 means "at once"; a retry time is never the epoch itself.
        head.next_retry = at.max(1);
        self.ready.remove(&order);
        if old != 0 {
            self.timers.remove(&(old, order));
        }
        self.timers.insert((at.max(1), order));
    }

    /// Whether `id` may be sent at `now`.
    pub fn is_due(&self, id: &Id, now: u64) -> bool {
        self.next_retry_at(id).is_none_or(|at| at <= now)
    }

    /// Takes the head `id` out of pending (its lane's next becomes the head); the sender of
    /// what was removed.
    fn remove_head(&mut self, id: &Id) -> Option<Arc<str>> {
        let head = self.head_of.remove(id)?;
        let number = head.lane;
        let lane = &mut self.lanes[number as usize];
        lane.ids.pop_front();
        self.pending -= 1;
        let sender = lane.sender.clone();
        let emptied = lane.ids.is_empty();
        self.heads.remove(&head.order);
        self.ready.remove(&head.order);
        if head.next_retry != 0 {
            self.timers.remove(&(head.next_retry, head.order));
        }
        if emptied {
            // Its number is free for the next new sender, which replaces its name.
            self.lane_numbers.remove(&sender);
            self.free_lanes.push(number);
        } else {
            self.make_head(number);
        }
        Some(sender)
    }

    /// Whether `id` is the oldest pending delivery of its sender (the one that may go next).
    pub fn is_head(&self, id: &Id) -> bool {
        self.head_of.contains_key(id)
    }

    pub fn is_dead(&self, id: &Id) -> bool {
        self.dead_order.contains_key(id)
    }

    /// Pending ids in enqueue order (sorts them: for listings and tests, not per send).
    pub fn pending(&self) -> Vec<Id> {
        let mut all: Vec<(u64, Id)> = self.lanes.iter().flat_map(|lane| lane.ids.iter().copied()).collect();
        all.sort_unstable();
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// The oldest pending id.
    pub fn oldest_pending(&self) -> Option<Id> {
        let (_, lane) = self.heads.first_key_value()?;
        Some(self.head_id(*lane))
    }

    pub fn pending_len(&self) -> usize {
        self.pending
    }

    /// Dead letters in the order they died.
    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.dead_letter.values()
    }

    pub fn dead_letter_len(&self) -> usize {
        self.dead_letter.len()
    }

    /// Failures so far of a head (0 for any other id).
    pub fn attempts_for(&self, id: &Id) -> u32 {
        self.head_of.get(id).map_or(0, |h| h.attempts)
    }

    pub fn next_retry_at(&self, id: &Id) -> Option<u64> {
        self.head_of
            .get(id)
            .and_then(|h| (h.next_retry != 0).then_some(h.next_retry))
    }

    /// A failed send of the head `id` at `now`: one more attempt; what happens next is
    /// [`decide`]'s. None when `id` is not a head.
    pub fn record_failure(&mut self, id: Id, now: u64, failure: &Failure, schedule: &Schedule) -> Option<AfterFailure> {
        if !self.is_head(&id) {
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

    /// Marks the head `id` as failed `attempts` times, to be tried again at `at`.
    pub fn retry_at(&mut self, id: Id, attempts: u32, at: u64) {
        if let Some(head) = self.head_of.get_mut(&id) {
            head.attempts = attempts;
            self.wait_until(id, at);
        }
    }

    /// Moves the head `id` to the dead letters; its retry time is cleared.
    pub fn dead_letter(&mut self, id: Id, attempts: u32, reason: &str) {
        if let Some(sender) = self.remove_head(&id) {
            let dead = DeadLetter {
                id,
                attempts,
                last_error: reason.to_owned(),
                ..DeadLetter::default()
            };
            self.restore_dead(&sender, dead);
        }
    }

    /// The head `id` delivered: it leaves the queue (the next of its sender becomes due).
    /// False when it was not a head.
    pub fn record_success(&mut self, id: Id) -> bool {
        self.remove_head(&id).is_some()
    }

    /// The id at the head of lane `lane`.
    fn head_id(&self, lane: u32) -> Id {
        self.lanes[lane as usize].ids[0].1
    }

    /// Pending ids that may be sent at `now` — each the oldest of its sender, never tried
    /// or its retry time passed — in insertion (FIFO) order.
    pub fn next_due(&self, now: u64) -> Vec<Id> {
        self.heads
            .values()
            .map(|lane| self.head_id(*lane))
            .filter(|id| self.is_due(id, now))
            .collect()
    }

    /// What a worker sends next: at most `limit` due lane heads in FIFO order, leaving out
    /// those `skip` says (in flight). Moves heads whose retry time passed among the ready
    /// ones first, so each costs O(log n) once, however long the queue; a call costs
    /// O(senders with due work).
    pub fn take_due(&mut self, now: u64, limit: usize, skip: impl Fn(&Id) -> bool) -> Vec<Id> {
        while let Some(&(at, order)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            self.ready.insert(order);
        }
        self.ready
            .iter()
            .map(|order| self.head_id(self.heads[order]))
            .filter(|id| !skip(id))
            .take(limit)
            .collect()
    }

    /// The earliest retry time among waiting heads (ids already taken as due excluded).
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
