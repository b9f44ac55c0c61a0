//! Snapshots of the flow journal, so a start reads the newest snapshot and the flow journal
//! after it instead of every version of every instance ever journaled. A snapshot holds the
//! latest version of each instance (with its next step) as the flow journal stood after one
//! of its seqs. It is built from what is durable — the previous snapshot and the journal
//! after it — never from the instances in memory, whose newest change may be journaled but
//! not yet applied there. Versions order the records, so folding a record twice, or one
//! older than what is held, changes nothing.

use super::FLOWS_ACTOR;
use crate::error::KernelError;
use crate::logs::Logs;
use crate::snapshot::{newest_records, parts, write};
use fedsx_proto::kernel::v1::{Flow, FlowRecord, FlowSnapshot};
use fedsx_proto::logstore::v1::{Entry, StreamKind};
use prost::Message;
use std::collections::BTreeMap;

/// The stream flow snapshots are kept in; like the flow journal's, no valid actor name.
pub const FLOW_SNAPSHOT_ACTOR: &str = "~flow-snapshots";

/// The latest version of every instance, with the step it runs next.
pub(crate) type Latest = BTreeMap<String, (Flow, u32)>;

crate::snapshot::snapshot_part!(
    FlowSnapshot,
    FlowRecord,
    flow_journal_seq,
    FLOW_SNAPSHOT_ACTOR,
    "flow-snapshot"
);

/// Keeps `record` when it is a newer version of its instance than `latest` holds.
pub(crate) fn keep_newest(latest: &mut Latest, record: FlowRecord) {
    let Some(flow) = record.flow else { return };
    if latest.get(&flow.id).is_none_or(|(held, _)| held.version < flow.version) {
        latest.insert(flow.id.clone(), (flow, record.step));
    }
}

/// The flow record a flow journal entry holds.
pub(crate) fn decode(entry: &Entry) -> Result<FlowRecord, KernelError> {
    FlowRecord::decode(entry.data.as_ref())
        .map_err(|err| KernelError::Internal(format!("flow journal entry {} is corrupt: {err}", entry.seq)))
}

/// Where a start begins: the latest versions, the flow journal seq the newest snapshot
/// covers, and the last flow journal seq read after it.
pub(crate) struct Restored {
    pub latest: Latest,
    pub covered: u64,
    pub last: u64,
}

/// The newest complete snapshot folded with the flow journal after it, page by page.
pub(crate) async fn restore(logs: &Logs) -> Result<Restored, KernelError> {
    let mut latest = Latest::new();
    let covered = newest_records::<FlowSnapshot>(logs, |record| keep_newest(&mut latest, record))
        .await?
        .map_or(0, |last| last.flow_journal_seq);
    let (last, _) = logs
        .each_after(FLOWS_ACTOR, StreamKind::Flow, covered, |entry| {
            keep_newest(&mut latest, decode(&entry)?);
            Ok(())
        })
        .await?;
    Ok(Restored { latest, covered, last })
}

/// Writes a snapshot of the flow journal as it stands, built from the newest snapshot and
/// the journal after it; the flow journal seq it covers (the newest snapshot's when nothing
/// was journaled since).
pub(crate) async fn compact(logs: &Logs) -> Result<u64, KernelError> {
    let Restored { latest, covered, last } = restore(logs).await?;
    if last > covered {
        let records = latest
            .into_values()
            .map(|(flow, step)| FlowRecord { flow: Some(flow), step })
            .collect();
        write(logs, parts::<FlowSnapshot>(last, records)).await?;
    }
    Ok(last)
}

/// When a snapshot is due now that flow journal entry `seq` is written (`EVERY` entries
/// since the last one), writes one in the background; the next waits until it is written.
pub(crate) fn compact_if_due(kernel: &std::sync::Arc<crate::kernel::Kernel>, seq: u64) {
    // Written by the replica running the flows only, so parts never interleave.
    if !kernel.serves_flows() || !kernel.flows.snapshots.due(seq) {
        return;
    }
    let kernel = kernel.clone();
    kernel.tasks.clone().spawn(async move {
        let _ = kernel
            .flows
            .snapshots
            .writing("flow", compact(&kernel.ports.logs))
            .await;
    });
}
