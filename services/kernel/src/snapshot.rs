//! Snapshots of the kernel's state, so a start reads the newest snapshot and the journal
//! after it instead of the whole journal. A snapshot is the state written as the journal
//! records that rebuild it (`State::as_records`), in parts under the log-store's entry
//! limit, in a stream of its own. It is written every `EVERY` applied records, in the
//! background; a snapshot cut short (a crash mid-write) is passed over at start.

use crate::error::KernelError;
use crate::keys::NodeSecret;
use crate::logs::Logs;
use crate::state::{NodeUrls, State};
use bytes::Bytes;
use fedsx_proto::kernel::v1::{JournalRecord, StateSnapshot};
use fedsx_proto::logstore::v1::StreamKind;
use prost::Message;

/// The stream snapshots are kept in; like the journal's, no valid actor name.
pub const SNAPSHOT_ACTOR: &str = "~kernel-snapshots";
/// A snapshot is written after this many journal records since the last one.
pub const EVERY: u64 = 10_000;
/// Most bytes of records in one part (the log-store takes entries of up to 1 MiB).
const PART_BYTES: usize = 900 << 10;

/// The newest complete snapshot: the state it holds and the journal seq it covers; an
/// empty state at 0 when there is none. Reads only that snapshot's parts.
pub async fn newest(logs: &Logs, secret: &NodeSecret, node: &NodeUrls) -> Result<(State, u64), KernelError> {
    let mut end = logs.tip(SNAPSHOT_ACTOR, StreamKind::Meta).await?;
    while end > 0 {
        let last = part_at(logs, end).await?;
        let complete = last.part + 1 == last.parts;
        if !complete {
            // Cut short: the snapshot before it ends just before its first part.
            end = end.saturating_sub(u64::from(last.part) + 1);
            continue;
        }
        let first = end + 1 - u64::from(last.parts);
        let mut state = State::default();
        let mut next = first - 1;
        while next < end {
            let (entries, _) = logs.read(SNAPSHOT_ACTOR, StreamKind::Meta, next, 0).await?;
            if entries.is_empty() {
                return Err(KernelError::Internal(format!(
                    "snapshot parts {first}..={end} are missing"
                )));
            }
            for entry in entries.into_iter().take_while(|e| e.seq <= end) {
                let part = StateSnapshot::decode(entry.data.as_ref())
                    .map_err(|err| KernelError::Internal(format!("snapshot entry {} is corrupt: {err}", entry.seq)))?;
                if part.journal_seq != last.journal_seq {
                    return Err(KernelError::Internal(format!(
                        "snapshot entry {} belongs to journal seq {}, not {}",
                        entry.seq, part.journal_seq, last.journal_seq
                    )));
                }
                for record in part.records {
                    state.apply(record, secret, node);
                }
                next = entry.seq;
            }
        }
        return Ok((state, last.journal_seq));
    }
    Ok((State::default(), 0))
}

async fn part_at(logs: &Logs, seq: u64) -> Result<StateSnapshot, KernelError> {
    let (entries, _) = logs.read(SNAPSHOT_ACTOR, StreamKind::Meta, seq - 1, 1).await?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| KernelError::Internal(format!("snapshot entry {seq} is missing")))?;
    StateSnapshot::decode(entry.data.as_ref())
        .map_err(|err| KernelError::Internal(format!("snapshot entry {seq} is corrupt: {err}")))
}

/// The state a start begins with: the newest snapshot and every journal record after it;
/// the journal seq it covers and how many records were replayed after the snapshot.
pub async fn restore(logs: &Logs, secret: &NodeSecret, node: &NodeUrls) -> Result<(State, u64, u64), KernelError> {
    let (mut state, from) = newest(logs, secret, node).await?;
    let (applied, replayed) = crate::journal::apply_after(logs, &mut state, from, secret, node).await?;
    Ok((state, applied, replayed))
}

/// The parts of a snapshot of `records` (the state after journal record `journal_seq`).
pub fn parts(journal_seq: u64, records: Vec<JournalRecord>) -> Vec<StateSnapshot> {
    let mut parts: Vec<StateSnapshot> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = record.encoded_len();
        if parts.is_empty() || bytes + size > PART_BYTES {
            parts.push(StateSnapshot {
                journal_seq,
                ..StateSnapshot::default()
            });
            bytes = 0;
        }
        bytes += size;
        parts.last_mut().expect("a part").records.push(record);
    }
    if parts.is_empty() {
        parts.push(StateSnapshot {
            journal_seq,
            ..StateSnapshot::default()
        });
    }
    let count = parts.len() as u32;
    for (n, part) in parts.iter_mut().enumerate() {
        part.part = n as u32;
        part.parts = count;
    }
    parts
}

/// Writes a snapshot's parts in order; each is idempotent by (journal seq, part), so a
/// retried write adds nothing.
pub async fn write(logs: &Logs, parts: Vec<StateSnapshot>) -> Result<(), KernelError> {
    for part in parts {
        let id = crate::kernel::derived_id("snapshot", &[&part.journal_seq.to_be_bytes(), &part.part.to_be_bytes()]);
        logs.append_any(
            SNAPSHOT_ACTOR,
            StreamKind::Meta,
            Bytes::copy_from_slice(&id),
            part.encode_to_vec().into(),
        )
        .await?;
    }
    Ok(())
}

/// When the last snapshot was written, and whether one is being written.
#[derive(Default)]
pub(crate) struct Snapshots {
    /// The journal seq the newest snapshot covers.
    covered: std::sync::atomic::AtomicU64,
    writing: std::sync::atomic::AtomicBool,
}

impl Snapshots {
    pub(crate) fn new(covered: u64) -> Snapshots {
        Snapshots {
            covered: covered.into(),
            writing: false.into(),
        }
    }

    /// Whether a snapshot should be taken now that record `seq` is applied; if so, it is
    /// taken (the next one waits until this one is written).
    pub(crate) fn due(&self, seq: u64) -> bool {
        use std::sync::atomic::Ordering;
        seq >= self.covered.load(Ordering::Relaxed) + EVERY && !self.writing.swap(true, Ordering::AcqRel)
    }

    /// Waits until no snapshot is being written, and takes the writer's turn (parts of two
    /// snapshots must not interleave in the stream).
    pub(crate) async fn turn(&self) {
        use std::sync::atomic::Ordering;
        while self.writing.swap(true, Ordering::AcqRel) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn written(&self, seq: Option<u64>) {
        use std::sync::atomic::Ordering;
        if let Some(seq) = seq {
            self.covered.fetch_max(seq, Ordering::Relaxed);
        }
        self.writing.store(false, Ordering::Release);
    }
}

/// When a snapshot is due (`EVERY` records since the last one), takes one of the state as
/// it stands and writes it in the background. Called by the journal's only writer of the
/// state (the follower, or the start before it), so the state cannot move meanwhile and a
/// read lock suffices.
pub(crate) fn take_if_due(kernel: &std::sync::Arc<crate::kernel::Kernel>) {
    let (seq, records) = {
        let state = kernel.read_state();
        let seq = kernel.applied.seq();
        if !kernel.snapshots.due(seq) {
            return;
        }
        (seq, state.as_records())
    };
    let kernel = kernel.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let parts = parts(seq, records);
        let count = parts.len();
        match write(&kernel.logs, parts).await {
            Ok(()) => {
                tracing::info!(journal_seq = seq, parts = count, took = ?started.elapsed(), "state snapshot written");
                kernel.snapshots.written(Some(seq));
            }
            Err(err) => {
                tracing::warn!(journal_seq = seq, error = %err, "writing a state snapshot failed; the next one is taken later");
                kernel.snapshots.written(None);
            }
        }
    });
}
