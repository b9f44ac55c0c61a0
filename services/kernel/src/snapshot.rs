//! Snapshots of the kernel's state, so a start reads the newest snapshot and the journals
//! after it instead of the whole journals. A snapshot is the state written as the journal
//! records that rebuild it (`State::as_records`), in parts under the log-store's entry
//! limit, in a stream of its own. It is written every `EVERY` applied records, in the
//! background; a snapshot cut short (a crash mid-write) is passed over at start.

use crate::error::KernelError;
use crate::keys::NodeSecret;
use crate::logs::Logs;
use crate::partition::Journals;
use crate::state::{NodeUrls, State};
use bytes::Bytes;
use fedsx_proto::kernel::v1::{JournalRecord, StateSnapshot};
use fedsx_proto::logstore::v1::StreamKind;
use prost::Message;

/// The stream snapshots are kept in; like the journal's, no valid actor name.
pub const SNAPSHOT_ACTOR: &str = "~kernel-snapshots";
/// A snapshot is written after this many journal records (over all journals) since the
/// last one.
pub const EVERY: u64 = 10_000;
/// Most bytes of records in one part (the log-store takes entries of up to 1 MiB).
const PART_BYTES: usize = 900 << 10;

/// One part of a snapshot of some journal (the kernel's or the flow journal): the records
/// it holds and where it sits. The parts of one snapshot are consecutive entries of the
/// snapshot stream, part 0 first.
pub(crate) trait SnapshotPart: Message + Default {
    type Record: Message;
    /// The stream the snapshots are kept in (META kind); no valid actor name.
    const STREAM: &'static str;
    /// What the ids of its entries are derived from, with (journal seq, part).
    const ID_PURPOSE: &'static str;
    fn new(journal_seq: u64) -> Self;
    /// The journal seq the snapshot covers.
    fn journal_seq(&self) -> u64;
    /// (this part, of how many).
    fn place(&self) -> (u32, u32);
    fn set_place(&mut self, part: u32, parts: u32);
    fn records_mut(&mut self) -> &mut Vec<Self::Record>;
    fn into_records(self) -> Vec<Self::Record>;
}

/// Implements [`SnapshotPart`] for a snapshot message with the fields `$seq`, `part`,
/// `parts` and `records` (repeated `$record`), kept in stream `$stream`.
macro_rules! snapshot_part {
    ($part:ty, $record:ty, $seq:ident, $stream:expr, $purpose:literal) => {
        impl $crate::snapshot::SnapshotPart for $part {
            type Record = $record;
            const STREAM: &'static str = $stream;
            const ID_PURPOSE: &'static str = $purpose;
            fn new($seq: u64) -> Self {
                Self {
                    $seq,
                    ..Self::default()
                }
            }
            fn journal_seq(&self) -> u64 {
                self.$seq
            }
            fn place(&self) -> (u32, u32) {
                (self.part, self.parts)
            }
            fn set_place(&mut self, part: u32, parts: u32) {
                (self.part, self.parts) = (part, parts);
            }
            fn records_mut(&mut self) -> &mut Vec<$record> {
                &mut self.records
            }
            fn into_records(self) -> Vec<$record> {
                self.records
            }
        }
    };
}
pub(crate) use snapshot_part;

snapshot_part!(StateSnapshot, JournalRecord, journal_seq, SNAPSHOT_ACTOR, "snapshot");

/// The newest complete snapshot: the state it holds and the seq it covers of each journal;
/// an empty state at 0 when there is none. Reads only that snapshot's parts.
pub async fn newest(
    logs: &Logs,
    journals: &Journals,
    secret: &NodeSecret,
    node: &NodeUrls,
) -> Result<(State, Vec<u64>), KernelError> {
    let mut state = State::default();
    let Some(last) = newest_records::<StateSnapshot>(logs, |record| {
        state.apply(record, secret, node);
    })
    .await?
    else {
        return Ok((state, vec![0; journals.count()]));
    };
    let seqs = covered_seqs(&last);
    if seqs.len() != journals.count() {
        return Err(KernelError::Internal(format!(
            "the newest snapshot covers {} journals, the node has {}",
            seqs.len(),
            journals.count()
        )));
    }
    Ok((state, seqs))
}

/// The seqs the newest complete state snapshot covers, one per journal (None: there is
/// none). Reads only its last part.
pub(crate) async fn newest_seqs(logs: &Logs) -> Result<Option<Vec<u64>>, KernelError> {
    Ok(last_complete::<StateSnapshot>(logs)
        .await?
        .map(|(last, _)| covered_seqs(&last)))
}

/// The seq of each journal a snapshot covers.
fn covered_seqs(last: &StateSnapshot) -> Vec<u64> {
    if last.journal_seqs.is_empty() {
        // From before partitions: the one journal is partition 0's, the node journal empty.
        vec![0, last.journal_seq]
    } else {
        last.journal_seqs.clone()
    }
}

/// The last part of the newest complete snapshot in `P`'s stream and its entry seq. A
/// snapshot cut short (a crash mid-write) is passed over.
async fn last_complete<P: SnapshotPart>(logs: &Logs) -> Result<Option<(P, u64)>, KernelError> {
    let mut end = logs.tip(P::STREAM, StreamKind::Meta).await?;
    while end > 0 {
        let last: P = part_at(logs, end).await?;
        let (part, parts) = last.place();
        if part + 1 == parts {
            return Ok(Some((last, end)));
        }
        // Cut short: the snapshot before it ends just before its first part.
        end = end.saturating_sub(u64::from(part) + 1);
    }
    Ok(None)
}

/// Hands `each` the records of the newest complete snapshot in `P`'s stream, in order;
/// its last part without its records (None and no records when there is none).
pub(crate) async fn newest_records<P: SnapshotPart>(
    logs: &Logs,
    mut each: impl FnMut(P::Record),
) -> Result<Option<P>, KernelError> {
    let Some((mut last, end)) = last_complete::<P>(logs).await? else {
        return Ok(None);
    };
    let parts = last.place().1;
    let first = end + 1 - u64::from(parts);
    let mut next = first - 1;
    while next < end {
        let (entries, _) = logs.read(P::STREAM, StreamKind::Meta, next, 0).await?;
        if entries.is_empty() {
            return Err(KernelError::Internal(format!(
                "{} parts {first}..={end} are missing",
                P::STREAM
            )));
        }
        for entry in entries.into_iter().take_while(|e| e.seq <= end) {
            let part = P::decode(entry.data.as_ref())
                .map_err(|err| KernelError::Internal(format!("{} entry {} is corrupt: {err}", P::STREAM, entry.seq)))?;
            if part.journal_seq() != last.journal_seq() {
                return Err(KernelError::Internal(format!(
                    "{} entry {} belongs to journal seq {}, not {}",
                    P::STREAM,
                    entry.seq,
                    part.journal_seq(),
                    last.journal_seq()
                )));
            }
            part.into_records().into_iter().for_each(&mut each);
            next = entry.seq;
        }
    }
    last.records_mut().clear();
    Ok(Some(last))
}

async fn part_at<P: SnapshotPart>(logs: &Logs, seq: u64) -> Result<P, KernelError> {
    let (entries, _) = logs.read(P::STREAM, StreamKind::Meta, seq - 1, 1).await?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| KernelError::Internal(format!("{} entry {seq} is missing", P::STREAM)))?;
    P::decode(entry.data.as_ref())
        .map_err(|err| KernelError::Internal(format!("{} entry {seq} is corrupt: {err}", P::STREAM)))
}

/// The state a start begins with: the newest snapshot and every journal record after it;
/// the seq of each journal it covers and how many records were replayed after the snapshot.
pub async fn restore(
    logs: &Logs,
    journals: &Journals,
    secret: &NodeSecret,
    node: &NodeUrls,
) -> Result<(State, Vec<u64>, u64), KernelError> {
    let (mut state, mut seqs) = newest(logs, journals, secret, node).await?;
    let replayed = crate::journal::apply_all_after(logs, journals, &mut state, &mut seqs, secret, node).await?;
    Ok((state, seqs, replayed))
}

/// The parts of a snapshot of `records` (what the journal held after record `journal_seq`).
pub(crate) fn parts<P: SnapshotPart>(journal_seq: u64, records: Vec<P::Record>) -> Vec<P> {
    let mut parts: Vec<P> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = record.encoded_len();
        if parts.is_empty() || bytes + size > PART_BYTES {
            parts.push(P::new(journal_seq));
            bytes = 0;
        }
        bytes += size;
        parts.last_mut().expect("a part").records_mut().push(record);
    }
    if parts.is_empty() {
        parts.push(P::new(journal_seq));
    }
    let count = parts.len() as u32;
    for (n, part) in parts.iter_mut().enumerate() {
        part.set_place(n as u32, count);
    }
    parts
}

/// Writes a snapshot's parts in order; each is idempotent by (journal seq, part), so a
/// retried write adds nothing.
pub(crate) async fn write<P: SnapshotPart>(logs: &Logs, parts: Vec<P>) -> Result<(), KernelError> {
    for part in parts {
        let (n, _) = part.place();
        let id = crate::kernel::derived_id(P::ID_PURPOSE, &[&part.journal_seq().to_be_bytes(), &n.to_be_bytes()]);
        logs.append_any(
            P::STREAM,
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

    /// Runs `write` (the writer's turn already taken) and records how it went: the journal
    /// seq it covers on success, logged either way.
    pub(crate) async fn writing(
        &self,
        what: &str,
        write: impl std::future::Future<Output = Result<u64, KernelError>>,
    ) -> Result<u64, KernelError> {
        let started = std::time::Instant::now();
        let written = write.await;
        match &written {
            Ok(seq) => {
                tracing::info!(snapshot = what, journal_seq = seq, took = ?started.elapsed(), "snapshot written")
            }
            Err(err) => {
                tracing::warn!(snapshot = what, error = %err, "writing a snapshot failed; the next one is taken later")
            }
        }
        self.written(written.as_ref().ok().copied());
        written
    }

    fn written(&self, seq: Option<u64>) {
        use std::sync::atomic::Ordering;
        if let Some(seq) = seq {
            self.covered.fetch_max(seq, Ordering::Relaxed);
        }
        self.writing.store(false, Ordering::Release);
    }
}

/// When a snapshot is due (`EVERY` records since the last one) and this replica serves the
/// flows' partition, takes one of the state as it stands and writes it in the background. Called by the journal's only writer of the
/// state (the follower, or the start before it), so the state cannot move meanwhile and a
/// read lock suffices.
pub(crate) fn take_if_due(kernel: &std::sync::Arc<crate::kernel::Kernel>) {
    if !kernel.serves_flows() {
        // One replica writes the snapshots (parts of two must not interleave): the one
        // serving the flows' partition.
        return;
    }
    let (seqs, records) = {
        let state = kernel.read_state();
        let seqs = kernel.machine.applied.seqs();
        if !kernel.machine.snapshots.due(seqs.iter().sum()) {
            return;
        }
        (seqs, state.as_records())
    };
    let kernel = kernel.clone();
    kernel.tasks.clone().spawn(async move {
        let _ = kernel
            .machine
            .snapshots
            .writing("state", write_state(&kernel.ports.logs, seqs, records))
            .await;
    });
}

/// Writes a snapshot of the state `records` rebuild, as of the journal records `seqs` (one
/// per journal); the records it covers (their sum).
pub(crate) async fn write_state(logs: &Logs, seqs: Vec<u64>, records: Vec<JournalRecord>) -> Result<u64, KernelError> {
    let covered = seqs.iter().sum();
    let mut parts = parts::<StateSnapshot>(covered, records);
    for part in &mut parts {
        part.journal_seqs.clone_from(&seqs);
    }
    write(logs, parts).await.map(|()| covered)
}
