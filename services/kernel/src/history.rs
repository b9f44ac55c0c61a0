//! A local actor's follower list history: every follower added and removed, with why,
//! read from its partition's journal (which keeps them all; snapshots only spare the start
//! from reading it). Paged by that journal's seq, scanning a bounded number of records per
//! call.

use crate::error::KernelError;
use crate::kernel::Kernel;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::logstore::v1::StreamKind;

/// Journal records read, at most, per call.
const SCAN: u64 = 10_000;

/// One change of a follower list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerEvent {
    pub journal_seq: u64,
    pub follower: String,
    pub added: bool,
    /// Why it was removed (or, for an addition, by which Follow).
    pub reason: String,
}

/// A page of history: its events, and the journal seq the next page starts after (the
/// journal's tip once everything was read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub events: Vec<FollowerEvent>,
    pub next_after: u64,
    pub done: bool,
}

impl Kernel {
    /// The changes of `name`'s followers journaled after seq `after`, at most `limit` (0:
    /// 100) of them, reading at most [`SCAN`] journal records.
    pub async fn follower_history(&self, name: &str, after: u64, limit: u32) -> Result<HistoryPage, KernelError> {
        self.actor(name)?;
        let limit = if limit == 0 { 100 } else { limit.min(1000) } as usize;
        let journal = self.machine.journals.stream(self.machine.journals.of_actor(name));
        let (mut events, mut at) = (Vec::new(), after);
        loop {
            let (entries, tip) = self.ports.logs.read(journal, StreamKind::Meta, at, 0).await?;
            for entry in &entries {
                at = entry.seq;
                if let Some(event) = event_of(name, entry.seq, crate::journal::decode(entry)?.record) {
                    events.push(event);
                }
                if events.len() >= limit {
                    break;
                }
            }
            let done = entries.is_empty() || at >= tip;
            if done || events.len() >= limit || at - after >= SCAN {
                return Ok(HistoryPage {
                    events,
                    next_after: at,
                    done,
                });
            }
        }
    }
}

/// The change of `name`'s followers that journal record `seq` makes, if any.
fn event_of(name: &str, seq: u64, record: Option<Record>) -> Option<FollowerEvent> {
    match record? {
        Record::FollowerAdded(added) if added.actor == name => Some(FollowerEvent {
            journal_seq: seq,
            follower: added.follower,
            added: true,
            reason: format!("followed (Follow {})", hex::encode(&added.follow_id)),
        }),
        Record::FollowerRemoved(removed) if removed.actor == name => Some(FollowerEvent {
            journal_seq: seq,
            follower: removed.follower,
            added: false,
            reason: removed.reason,
        }),
        _ => None,
    }
}
