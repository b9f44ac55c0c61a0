//! The kernel's journals: the node journal for node-wide records (the node's creation,
//! peers) and one journal per partition for the records of the local actors that hash to
//! it, so appends for different actors do not contend on one stream. The number of
//! partitions is chosen when the node is created (the first record of the node journal) and
//! fixed for the node's life.
//!
//! Journals are numbered: 0 is the node journal, 1 + p is partition p's. A snapshot
//! covers one seq per journal, in that order.

use crate::error::KernelError;
use crate::logs::{AppendError, Logs};
use bytes::Bytes;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{JournalRecord, NodeCreated};
use fedsx_proto::logstore::v1::StreamKind;
use prost::Message;

/// The node journal's stream (META kind); like every journal's, no valid actor name.
pub const NODE_JOURNAL: &str = "~kernel-node";
/// Partition 0's journal: the one journal of a node from before partitions.
const FIRST_PARTITION: &str = "~kernel";
/// Partitions of a new node unless `--partitions` says otherwise.
pub const DEFAULT_PARTITIONS: u32 = 16;
/// Most partitions a node may have.
pub const MAX_PARTITIONS: u32 = 1024;
/// Index of the node journal.
pub const NODE: usize = 0;

pub use fedsx_runtime::partition::{one_name_per_partition, partition_of};

/// The node's journals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journals {
    /// Stream names, by journal index.
    streams: Vec<String>,
}

impl Journals {
    pub fn new(partitions: u32) -> Journals {
        let partitions = partitions.clamp(1, MAX_PARTITIONS);
        let mut streams = vec![NODE_JOURNAL.to_owned(), FIRST_PARTITION.to_owned()];
        streams.extend((1..partitions).map(|p| format!("{FIRST_PARTITION}-{p}")));
        Journals { streams }
    }

    /// How many journals there are (the node journal and the partitions').
    pub fn count(&self) -> usize {
        self.streams.len()
    }

    pub fn partitions(&self) -> u32 {
        (self.streams.len() - 1) as u32
    }

    /// The stream of journal `index`.
    pub fn stream(&self, index: usize) -> &str {
        &self.streams[index]
    }

    /// The partition local actor `name` belongs to.
    pub fn partition_of(&self, name: &str) -> u32 {
        partition_of(name, self.partitions())
    }

    /// The journal of local actor `name`'s records.
    pub fn of_actor(&self, name: &str) -> usize {
        1 + self.partition_of(name) as usize
    }

    /// The journal `record` belongs in: its actor's partition, or the node journal.
    pub fn of_record(&self, record: &Record) -> usize {
        match record {
            Record::ActorCreated(r) => self.of_actor(&r.name),
            Record::FollowerAdded(r) => self.of_actor(&r.actor),
            Record::FollowerRemoved(r) => self.of_actor(&r.actor),
            Record::FollowSent(r) => self.of_actor(&r.actor),
            Record::FollowingAdded(r) => self.of_actor(&r.actor),
            Record::RelayCursor(r) => self.of_actor(&r.actor),
            Record::PartitionOwned(r) => 1 + r.partition as usize,
            Record::PeerRegistered(_) | Record::NodeCreated(_) => NODE,
        }
    }

    /// The order a replay goes through the journals: the partitions, then the node
    /// journal (a node from before partitions has peers in partition 0's journal, all
    /// older than those of the node journal).
    pub fn replay_order(&self) -> impl Iterator<Item = usize> + use<> {
        (1..self.count()).chain([NODE])
    }

    /// The node's journals as its creation record says; a node without one is created now
    /// with `wanted` partitions, or with one when it has a journal from before partitions.
    pub async fn open(logs: &Logs, wanted: u32, now_ms: i64) -> Result<Journals, KernelError> {
        if !(1..=MAX_PARTITIONS).contains(&wanted) {
            return Err(KernelError::BadRequest(format!(
                "--partitions {wanted}: a node has 1 to {MAX_PARTITIONS} partitions"
            )));
        }
        loop {
            if let Some(partitions) = created(logs).await? {
                if partitions != wanted {
                    tracing::info!(
                        partitions,
                        wanted,
                        "the node has the partitions it was created with; --partitions applies to new nodes only"
                    );
                }
                return Ok(Journals::new(partitions));
            }
            let older = logs.tip(FIRST_PARTITION, StreamKind::Meta).await? > 0
                || logs.tip(crate::snapshot::SNAPSHOT_ACTOR, StreamKind::Meta).await? > 0;
            let partitions = if older { 1 } else { wanted };
            let record = JournalRecord {
                record: Some(Record::NodeCreated(NodeCreated {
                    partitions,
                    created_ms: now_ms,
                })),
            };
            let id = crate::kernel::derived_id("node-created", &[]);
            // Only the first of kernels starting at once creates the node; the others read it.
            let appended = logs
                .append(
                    NODE_JOURNAL,
                    StreamKind::Meta,
                    Bytes::copy_from_slice(&id),
                    record.encode_to_vec().into(),
                    Some(0),
                )
                .await;
            match appended {
                Ok(_) => {
                    tracing::info!(partitions, journal_from_before_partitions = older, "node created");
                    return Ok(Journals::new(partitions));
                }
                Err(AppendError::Conflict { .. }) => continue,
                Err(AppendError::Failed(err)) => return Err(err),
            }
        }
    }
}

/// The partitions the node journal's first record gives, if there is one.
async fn created(logs: &Logs) -> Result<Option<u32>, KernelError> {
    let (entries, _) = logs.read(NODE_JOURNAL, StreamKind::Meta, 0, 1).await?;
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    match crate::journal::decode(first)?.record {
        Some(Record::NodeCreated(created)) if (1..=MAX_PARTITIONS).contains(&created.partitions) => {
            Ok(Some(created.partitions))
        }
        other => Err(KernelError::Internal(format!(
            "the node journal starts with {other:?}, not the node's creation with 1 to {MAX_PARTITIONS} partitions"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_spread_over_the_partitions_and_stay_where_they_hashed() {
        let journals = Journals::new(16);
        assert_eq!(journals.count(), 17);
        assert_eq!(journals.stream(NODE), NODE_JOURNAL);
        assert_eq!(journals.stream(1), "~kernel");
        assert_eq!(journals.stream(16), "~kernel-15");
        let mut used = std::collections::BTreeSet::new();
        for n in 0..1000 {
            let name = format!("actor{n}");
            let journal = journals.of_actor(&name);
            assert!((1..17).contains(&journal));
            assert_eq!(journal, Journals::new(16).of_actor(&name), "stable");
            used.insert(journal);
        }
        assert_eq!(used.len(), 16, "every partition gets actors");
        // Fixed values: a node's actors must hash the same in every build.
        // (The first 8 bytes of SHA-256 of the name, big-endian, modulo the partitions.)
        assert_eq!(journals.partition_of("bob"), 10);
        assert_eq!(journals.partition_of("alice"), 15);
        assert_eq!(Journals::new(64).partition_of("shop"), 61);
        assert_eq!(Journals::new(1).of_actor("bob"), 1);
        assert_eq!(journals.replay_order().collect::<Vec<_>>().last(), Some(&NODE));
    }
}
