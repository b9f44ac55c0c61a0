//! How a group of appends to one stream becomes seqs and writes — the part of an append
//! every engine shares. Pure: the only outside input is a lookup of ids already stored.

use crate::error::StoreError;
use crate::storage::{AppendOutcome, Appended};
use crate::stream::NewEntry;
use bytes::Bytes;
use std::collections::HashMap;

/// The appends of one group to one stream, staged in arrival order on top of the stream's
/// committed tip.
#[derive(Debug)]
pub(crate) struct StreamPlan {
    committed_tip: u64,
    tip: u64,
    /// Ids staged by earlier appends of this group, with their seqs.
    staged: HashMap<Bytes, u64>,
    /// What to write: (seq, entry), ascending.
    writes: Vec<(u64, NewEntry)>,
}

impl StreamPlan {
    pub fn new(committed_tip: u64) -> StreamPlan {
        StreamPlan {
            committed_tip,
            tip: committed_tip,
            staged: HashMap::new(),
            writes: Vec::new(),
        }
    }

    /// Stages one append. Ids the stream (or this group) holds answer their seq and are
    /// not written again; when every id is known, the append is a pure retry and succeeds
    /// whatever tip it expected. Otherwise an expected tip other than the tip refuses the
    /// whole append, staging nothing.
    pub fn stage(
        &mut self,
        entries: &[NewEntry],
        expected_tip: Option<u64>,
        mut stored: impl FnMut(&[u8]) -> Result<Option<u64>, StoreError>,
    ) -> Result<AppendOutcome, StoreError> {
        let mut next = self.tip;
        let mut results = Vec::with_capacity(entries.len());
        let mut fresh: HashMap<Bytes, u64> = HashMap::new();
        for entry in entries {
            let known = match fresh.get(&entry.id).or_else(|| self.staged.get(&entry.id)) {
                Some(seq) => Some(*seq),
                None => stored(&entry.id)?,
            };
            match known {
                Some(seq) => results.push(Appended { seq, appended: false }),
                None => {
                    next += 1;
                    fresh.insert(entry.id.clone(), next);
                    results.push(Appended {
                        seq: next,
                        appended: true,
                    });
                }
            }
        }
        if fresh.is_empty() {
            return Ok(AppendOutcome {
                entries: results,
                tip: self.tip,
            });
        }
        if let Some(expected) = expected_tip
            && expected != self.tip
        {
            return Err(StoreError::TipMismatch {
                expected,
                tip: self.tip,
            });
        }
        for (entry, result) in entries.iter().zip(&results) {
            if result.appended {
                self.writes.push((result.seq, entry.clone()));
            }
        }
        self.staged.extend(fresh);
        self.tip = next;
        Ok(AppendOutcome {
            entries: results,
            tip: next,
        })
    }

    /// The tip once the group is committed.
    pub fn tip(&self) -> u64 {
        self.tip
    }

    pub fn changed(&self) -> bool {
        self.tip != self.committed_tip
    }

    pub fn writes(&self) -> &[(u64, NewEntry)] {
        &self.writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> NewEntry {
        NewEntry {
            id: Bytes::copy_from_slice(id.as_bytes()),
            data: Bytes::from_static(b"d"),
        }
    }

    fn nothing_stored(_: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    #[test]
    fn appends_of_one_group_follow_each_other() {
        let mut plan = StreamPlan::new(5);
        let a = plan.stage(&[entry("a"), entry("b")], Some(5), nothing_stored).unwrap();
        assert_eq!(a.tip, 7);
        let b = plan.stage(&[entry("c")], Some(7), nothing_stored).unwrap();
        assert_eq!(b.entries, [Appended { seq: 8, appended: true }]);
        assert_eq!(plan.writes().iter().map(|(s, _)| *s).collect::<Vec<_>>(), [6, 7, 8]);
    }

    #[test]
    fn known_ids_keep_their_seq_within_an_append_the_group_and_the_store() {
        let mut plan = StreamPlan::new(3);
        let stored = |id: &[u8]| Ok((id == b"old").then_some(2));
        let first = plan
            .stage(&[entry("x"), entry("x"), entry("old")], None, stored)
            .unwrap();
        assert_eq!(
            first.entries,
            [
                Appended { seq: 4, appended: true },
                Appended {
                    seq: 4,
                    appended: false
                },
                Appended {
                    seq: 2,
                    appended: false
                }
            ]
        );
        let again = plan.stage(&[entry("x")], Some(0), stored).unwrap();
        assert_eq!(
            again.entries,
            [Appended {
                seq: 4,
                appended: false
            }],
            "a pure retry ignores the tip"
        );
        assert_eq!(plan.writes().len(), 1);
    }

    #[test]
    fn a_wrong_expected_tip_stages_nothing() {
        let mut plan = StreamPlan::new(1);
        let err = plan
            .stage(&[entry("a"), entry("b")], Some(0), nothing_stored)
            .unwrap_err();
        assert!(matches!(err, StoreError::TipMismatch { expected: 0, tip: 1 }));
        assert!(!plan.changed());
        let ok = plan.stage(&[entry("a")], Some(1), nothing_stored).unwrap();
        assert_eq!(
            ok.entries[0],
            Appended { seq: 2, appended: true },
            "the refused id was not kept"
        );
    }
}
