//! Fenced journal appends: the owner of a partition appends expecting the tip its last
//! append left, and finds out it was fenced when a takeover moved the tip.

use crate::error::KernelError;
use crate::logs::AppendError;
use bytes::Bytes;
use fedsx_proto::kernel::v1::JournalRecord;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::logstore::v1::{AppendedEntry, StreamKind};
use prost::Message;

/// Appends `record` (entry id `id`) to journal `stream` if the journal's tip is `tip`.
pub(super) async fn append_at(
    logs: &crate::logs::Logs,
    stream: &str,
    id: &[u8; 32],
    record: &JournalRecord,
    tip: u64,
) -> Result<fedsx_proto::logstore::v1::AppendResponse, AppendError> {
    let (id, data) = (Bytes::copy_from_slice(id), record.encode_to_vec().into());
    logs.append(stream, StreamKind::Meta, id, data, Some(tip)).await
}

impl super::Ownership {
    /// Appends `record` to partition `partition`'s journal as its owner, expecting the tip
    /// its last append left; the entry. Fails with UNAVAILABLE when this replica does not
    /// own the partition, or finds it was fenced by a newer owner.
    pub(crate) async fn append(
        &self,
        partition: u32,
        id: [u8; 32],
        record: &JournalRecord,
    ) -> Result<AppendedEntry, KernelError> {
        let me = self;
        let not_owner = || KernelError::NotOwner {
            partition,
            owner: me.owner(partition),
        };
        let owned = me.owned(partition).ok_or_else(not_owner)?;
        let stream = self.journal(partition);
        let mut tip = owned.tip.lock().await;
        loop {
            if !owned.valid() {
                return Err(not_owner());
            }
            let appended = append_at(&self.logs, stream, &id, record, *tip).await;
            match appended {
                Ok(answer) => {
                    let entry = answer.entries.first().cloned().ok_or_else(|| {
                        KernelError::Internal("the log-store answered an append with no entry".into())
                    })?;
                    if entry.appended {
                        *tip = entry.seq;
                    }
                    return Ok(entry);
                }
                Err(AppendError::Conflict { tip: now }) => {
                    // Only this owner appends, so what lies after its tip is its own (an
                    // answer lost) — unless another replica took the partition over.
                    let mut fenced_by = None;
                    self.logs
                        .each_after(stream, StreamKind::Meta, *tip, |entry| {
                            if let Some(Record::PartitionOwned(taken)) = crate::journal::decode(&entry)?.record
                                && (taken.replica != me.replica || taken.epoch != owned.epoch)
                            {
                                fenced_by = Some(taken.replica);
                            }
                            Ok(())
                        })
                        .await?;
                    if let Some(replica) = fenced_by {
                        me.lose(partition, &format!("fenced by {replica}"));
                        return Err(not_owner());
                    }
                    *tip = now;
                }
                Err(AppendError::Failed(err)) => return Err(err),
            }
        }
    }
}
