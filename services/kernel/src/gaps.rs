//! Gaps in what a sender sent us, noticed and filled. Every activity carries its sender's
//! outbox seq (and `prev`, the id of the one before it), so the receiver knows, per sender,
//! the highest seq up to which it has seen everything. An activity that jumps past it opens
//! a gap; the activities in between are fetched from the sender's outbox
//! (`GET <outbox>?after=N`), each taken exactly like an inbound POST by every local actor it
//! is addressed to, and what cannot be filled is recorded with why (`ListGaps`, and the
//! `fedsx.kernel.gap_activities` metric).
//!
//! Bounded: a gap wider than [`MAX_GAP`] is recorded, not fetched (a sender claiming seq
//! 10⁹ costs one record), one fill runs per sender at a time, and at most [`MAX_RECORDS`]
//! unfilled gaps are kept (the oldest go first). How far each sender arrived is kept in
//! memory and snapshotted to the log-store now and then and at shutdown (the
//! [`MAX_SNAPSHOT`] most recently active senders); after a restart, tracking resumes from
//! the newest snapshot, so a loss just before the restart is noticed too (what arrived after
//! the snapshot is fetched again, which appends nothing twice).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

/// Most activities one gap may span and still be fetched.
pub const MAX_GAP: u64 = 1000;
/// Unfilled gaps kept for `ListGaps`.
pub const MAX_RECORDS: usize = 10_000;
/// Senders tracked; past it, the least recently updated one is forgotten.
const MAX_SENDERS: usize = 100_000;
/// Senders in one snapshot: the most recently active (~100 bytes each, under the 1 MiB a
/// log-store entry may hold).
pub const MAX_SNAPSHOT: usize = 8_000;

/// Seqs `first..=last` of `sender` that could not be filled, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfilled {
    pub sender: String,
    pub first: u64,
    pub last: u64,
    pub reason: String,
}

impl Unfilled {
    /// The key `ListGaps` pages by.
    pub fn key(&self) -> String {
        format!("{}\u{0}{:020}", self.sender, self.first)
    }
}

/// What the receiver knows of one sender's sequence.
#[derive(Debug, Default)]
struct Progress {
    /// Every seq up to this one was seen (or given up on).
    contiguous: u64,
    /// Seen seqs above `contiguous + 1`.
    held: BTreeSet<u64>,
    /// A fill for this sender is running.
    filling: bool,
    /// For forgetting the stalest sender first.
    touched: u64,
}

impl Progress {
    fn advance(&mut self) {
        while self.held.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

/// Seqs to fetch: after `after`, before `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub after: u64,
    pub before: u64,
}

#[derive(Debug, Default)]
pub struct Gaps {
    senders: Mutex<(HashMap<String, Progress>, u64)>,
    unfilled: Mutex<VecDeque<Unfilled>>,
    /// Something moved since the last snapshot.
    changed: std::sync::atomic::AtomicBool,
}

impl Gaps {
    /// (sender, highest contiguous seq) of the most recently active senders, when anything
    /// moved since the last call.
    pub fn snapshot(&self) -> Option<Vec<(String, u64)>> {
        if !self.changed.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return None;
        }
        let guard = self.senders.lock().expect("gaps lock poisoned");
        let mut recent: Vec<(&String, &Progress)> = guard.0.iter().collect();
        recent.sort_unstable_by_key(|(_, p)| std::cmp::Reverse(p.touched));
        recent.truncate(MAX_SNAPSHOT);
        Some(recent.into_iter().map(|(s, p)| (s.clone(), p.contiguous)).collect())
    }

    /// A snapshot could not be kept: the next one must be taken again.
    pub fn unsaved(&self) {
        self.changed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Resumes tracking from a snapshot (at start, before any activity arrives).
    pub fn restore(&self, snapshot: Vec<(String, u64)>) {
        let mut guard = self.senders.lock().expect("gaps lock poisoned");
        for (sender, contiguous) in snapshot {
            guard.0.insert(
                sender,
                Progress {
                    contiguous,
                    ..Progress::default()
                },
            );
        }
    }

    /// Seq `seq` of `sender` was taken. The first seq seen of a sender starts its tracking
    /// (earlier ones were not for us, or came before a restart). Answers the seqs to fetch
    /// when this opens a gap and no fill for the sender runs; the caller then fills them
    /// and calls [`Gaps::fill_done`].
    pub fn seen(&self, sender: &str, seq: u64) -> Option<Fill> {
        let mut guard = self.senders.lock().expect("gaps lock poisoned");
        let (senders, clock) = &mut *guard;
        *clock += 1;
        if !senders.contains_key(sender) && senders.len() >= MAX_SENDERS {
            let stalest = senders.iter().min_by_key(|(_, p)| p.touched).map(|(s, _)| s.clone());
            if let Some(stalest) = stalest {
                senders.remove(&stalest);
            }
        }
        let progress = senders.entry(sender.to_owned()).or_insert_with(|| Progress {
            contiguous: seq.saturating_sub(1),
            ..Progress::default()
        });
        progress.touched = *clock;
        if seq <= progress.contiguous {
            return None;
        }
        self.changed.store(true, std::sync::atomic::Ordering::Release);
        progress.held.insert(seq);
        progress.advance();
        let first_missing = progress.contiguous + 1;
        let top = *progress.held.last()?;
        if progress.filling {
            return None;
        }
        progress.filling = true;
        Some(Fill {
            after: first_missing - 1,
            before: top,
        })
    }

    /// Gives up on `first..=last` of `sender` (recorded with `reason`) so that what follows
    /// counts as contiguous again.
    pub fn give_up(&self, sender: &str, first: u64, last: u64, reason: String) {
        {
            let mut guard = self.senders.lock().expect("gaps lock poisoned");
            // Fills run from the first missing seq on, so a gap given up on starts there.
            if let Some(progress) = guard.0.get_mut(sender)
                && progress.contiguous + 1 >= first
            {
                progress.contiguous = progress.contiguous.max(last);
                let contiguous = progress.contiguous;
                progress.held.retain(|&seq| seq > contiguous);
                progress.advance();
            }
        }
        self.changed.store(true, std::sync::atomic::Ordering::Release);
        tracing::warn!(sender, first, last, reason = %reason, "gap not filled");
        crate::metrics::gap_activities("unfilled", last - first + 1);
        let mut unfilled = self.unfilled.lock().expect("gaps lock poisoned");
        if unfilled.len() >= MAX_RECORDS {
            unfilled.pop_front();
        }
        unfilled.push_back(Unfilled {
            sender: sender.to_owned(),
            first,
            last,
            reason,
        });
    }

    /// The fill of `sender` ended. Answers the next fill when a gap is still open (one
    /// that opened while this one ran).
    pub fn fill_done(&self, sender: &str) -> Option<Fill> {
        let mut guard = self.senders.lock().expect("gaps lock poisoned");
        let progress = guard.0.get_mut(sender)?;
        progress.advance();
        match progress.held.last() {
            Some(&top) => Some(Fill {
                after: progress.contiguous,
                before: top,
            }),
            None => {
                progress.filling = false;
                None
            }
        }
    }

    /// Unfilled gaps in (sender, first seq) order, from the key after `after`.
    pub fn unfilled(&self) -> Vec<Unfilled> {
        let unfilled = self.unfilled.lock().expect("gaps lock poisoned");
        let sorted: BTreeMap<String, &Unfilled> = unfilled.iter().map(|u| (u.key(), u)).collect();
        sorted.into_values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "https://a.example/actors/alice";

    #[test]
    fn in_order_and_first_contact_open_no_gap() {
        let gaps = Gaps::default();
        assert_eq!(gaps.seen(S, 51), None, "the first seq seen starts the tracking");
        assert_eq!(gaps.seen(S, 52), None);
        assert_eq!(gaps.seen(S, 52), None, "a duplicate");
        assert_eq!(gaps.seen(S, 40), None, "an old one");
    }

    #[test]
    fn a_jump_opens_one_fill_and_filling_closes_it() {
        let gaps = Gaps::default();
        gaps.seen(S, 1);
        assert_eq!(gaps.seen(S, 4), Some(Fill { after: 1, before: 4 }));
        assert_eq!(gaps.seen(S, 6), None, "one fill per sender at a time");
        gaps.seen(S, 2);
        gaps.seen(S, 3);
        assert_eq!(gaps.fill_done(S), Some(Fill { after: 4, before: 6 }), "the gap at 5");
        gaps.seen(S, 5);
        assert_eq!(gaps.fill_done(S), None);
        assert_eq!(gaps.seen(S, 7), None, "contiguous again");
    }

    #[test]
    fn a_restored_snapshot_notices_what_was_lost_before_the_restart() {
        let before = Gaps::default();
        before.seen(S, 10);
        before.seen(S, 11);
        let snapshot = before.snapshot().unwrap();
        assert_eq!(snapshot, [(S.to_owned(), 11)]);
        assert_eq!(before.snapshot(), None, "nothing moved since");
        let after = Gaps::default();
        after.restore(snapshot);
        assert_eq!(after.seen(S, 13), Some(Fill { after: 11, before: 13 }), "12 was lost");
    }

    #[test]
    fn given_up_gaps_are_recorded_and_let_the_sequence_go_on() {
        let gaps = Gaps::default();
        gaps.seen(S, 1);
        assert_eq!(
            gaps.seen(S, 1_000_000_000),
            Some(Fill {
                after: 1,
                before: 1_000_000_000
            })
        );
        gaps.give_up(S, 2, 999_999_999, "too wide".into());
        assert_eq!(gaps.fill_done(S), None);
        assert_eq!(gaps.seen(S, 1_000_000_001), None);
        let recorded = gaps.unfilled();
        assert_eq!(recorded.len(), 1);
        assert_eq!((recorded[0].first, recorded[0].last), (2, 999_999_999));
    }
}
