//! Where "what is due" starts reading a destination's fresh rows. Delivered rows leave dead
//! entries at the head of the pending index until vacuum removes them, and reading past
//! them on every call costs more than the sends. So each destination keeps a cursor: the
//! highest queue order handed out. Rows at or below it were handed out, and are either
//! still out (the caller skips them), recorded (no longer fresh), or — when a record failed,
//! a caller forgot one, or another replica committed an enqueue late — missed; every such
//! doubt, and every `RESCAN`, sends the next read from the head again. The cursor is a hint:
//! the rows a read answers are the same as without it.

use crate::queue::Id;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a destination's fresh rows are read from the head anyway (enqueues of other
/// replicas may commit with a lower order than one already handed out).
const RESCAN: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct Cursors(Mutex<HashMap<String, Cursor>>);

struct Cursor {
    /// Highest order handed out since the last read from the head.
    after: i64,
    /// Handed out and not yet recorded.
    out: HashSet<Id>,
    rescan_at: Instant,
}

impl Cursors {
    /// Where to start reading `peer`'s fresh rows: after its cursor while every delivery
    /// handed out and unrecorded is among `skip`, else (and every `RESCAN`) from the head.
    pub fn start(&self, peer: &str, skip: &[Id]) -> i64 {
        let mut cursors = self.0.lock().expect("cursor lock poisoned");
        let Some(cursor) = cursors.get_mut(peer) else { return 0 };
        let skipped: HashSet<&Id> = skip.iter().collect();
        if Instant::now() >= cursor.rescan_at || !cursor.out.iter().all(|id| skipped.contains(id)) {
            cursors.remove(peer);
            return 0;
        }
        cursor.after
    }

    /// A read from `start` handed out `rows` (id, order).
    pub fn handed_out(&self, peer: &str, start: i64, rows: &[(Id, i64)]) {
        let mut cursors = self.0.lock().expect("cursor lock poisoned");
        let cursor = cursors.entry(peer.to_owned()).or_insert_with(|| Cursor {
            after: start,
            out: HashSet::new(),
            rescan_at: Instant::now() + RESCAN,
        });
        for (id, ord) in rows {
            cursor.after = cursor.after.max(*ord);
            cursor.out.insert(*id);
        }
    }

    /// Outcomes of `ids` were recorded (`all`: every one of them).
    pub fn recorded(&self, peer: &str, ids: &[Id], all: bool) {
        let mut cursors = self.0.lock().expect("cursor lock poisoned");
        if !all {
            cursors.remove(peer);
        } else if let Some(cursor) = cursors.get_mut(peer) {
            for id in ids {
                cursor.out.remove(id);
            }
        }
    }

    /// Forgets `peer` (its record failed, or its lease was let go).
    pub fn reset(&self, peer: &str) {
        self.0.lock().expect("cursor lock poisoned").remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        [n; 32]
    }

    #[test]
    fn the_cursor_holds_only_while_everything_handed_out_is_skipped_or_recorded() {
        let cursors = Cursors::default();
        assert_eq!(cursors.start("p", &[]), 0, "unknown: from the head");
        cursors.handed_out("p", 0, &[(id(1), 10), (id(2), 11)]);
        assert_eq!(cursors.start("p", &[id(1), id(2)]), 11);
        cursors.recorded("p", &[id(1)], true);
        assert_eq!(cursors.start("p", &[id(2)]), 11);
        assert_eq!(cursors.start("p", &[]), 0, "id 2 neither skipped nor recorded");
        assert_eq!(cursors.start("p", &[id(2)]), 0, "and the cursor is gone");
        cursors.handed_out("p", 0, &[(id(3), 12)]);
        cursors.recorded("p", &[id(3)], false);
        assert_eq!(cursors.start("p", &[]), 0, "an unrecorded outcome resets");
        cursors.handed_out("p", 0, &[(id(4), 13)]);
        cursors.reset("p");
        assert_eq!(cursors.start("p", &[id(4)]), 0);
    }
}
