//! The kernel's journals and the state machine they drive. A handler appends its record to
//! the journal it belongs in (`partition.rs`) and waits until that record has been applied;
//! one task per journal applies its records in journal (seq) order, as the log-store hands
//! them out. So the state in memory is always the journals folded in order — the same state
//! a restart rebuilds — however concurrent appends completed, and also when an append's
//! answer was lost.

use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::keys::NodeSecret;
use crate::logs::Logs;
use crate::partition::Journals;
use crate::state::{NodeUrls, State};
use bytes::Bytes;
use fedsx_proto::kernel::v1::JournalRecord;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::logstore::v1::{Entry, StreamKind};
use futures::StreamExt;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a handler waits for its durable record to be applied before it answers
/// UNAVAILABLE (the record stays in the journal and is applied once the log-store serves).
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Pause before following the journal again after the log-store failed.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Decodes one journal entry.
pub(crate) fn decode(entry: &Entry) -> Result<JournalRecord, KernelError> {
    JournalRecord::decode(entry.data.as_ref())
        .map_err(|err| KernelError::Internal(format!("journal entry {} is corrupt: {err}", entry.seq)))
}

/// Applies to `state` every record of journal stream `journal` after `after`, page by page;
/// the seq of the last one applied and how many were.
pub(crate) async fn apply_after(
    logs: &Logs,
    state: &mut State,
    journal: &str,
    after: u64,
    secret: &NodeSecret,
    node: &NodeUrls,
) -> Result<(u64, u64), KernelError> {
    logs.each_after(journal, StreamKind::Meta, after, |entry| {
        // Effects of these records are run again by whoever takes the partition over
        // (`effects.rs`), not here.
        state.apply(decode(&entry)?, secret, node);
        Ok(())
    })
    .await
}

/// Applies to `state` every record of each journal after its seq in `seqs` (advanced to the
/// last one applied); how many were.
pub(crate) async fn apply_all_after(
    logs: &Logs,
    journals: &Journals,
    state: &mut State,
    seqs: &mut [u64],
    secret: &NodeSecret,
    node: &NodeUrls,
) -> Result<u64, KernelError> {
    let mut applied = 0;
    for journal in journals.replay_order() {
        let (last, count) = apply_after(logs, state, journals.stream(journal), seqs[journal], secret, node).await?;
        seqs[journal] = last;
        applied += count;
    }
    Ok(applied)
}

/// The state as the whole journals leave it, and the seq of each one's last record: what
/// the live state is compared with.
pub async fn replay(
    logs: &Logs,
    journals: &Journals,
    secret: &NodeSecret,
    node: &NodeUrls,
) -> Result<(State, Vec<u64>), KernelError> {
    let mut state = State::default();
    let mut seqs = vec![0; journals.count()];
    apply_all_after(logs, journals, &mut state, &mut seqs, secret, node).await?;
    Ok((state, seqs))
}

/// The seq of the last record applied to the state, per journal.
pub(crate) struct Applied {
    seqs: Vec<watch::Sender<u64>>,
}

impl Applied {
    pub(crate) fn new(seqs: &[u64]) -> Applied {
        Applied {
            seqs: seqs.iter().map(|seq| watch::Sender::new(*seq)).collect(),
        }
    }

    pub(crate) fn seq(&self, journal: usize) -> u64 {
        *self.seqs[journal].borrow()
    }

    /// Every journal's, in journal order.
    pub(crate) fn seqs(&self) -> Vec<u64> {
        self.seqs.iter().map(|seq| *seq.borrow()).collect()
    }

    /// Waits until record `seq` of `journal` is applied.
    async fn reached(&self, journal: usize, seq: u64) -> Result<(), KernelError> {
        let mut applied = self.seqs[journal].subscribe();
        let waited = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|at| *at >= seq))
            .await
            .map(|reached| reached.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(KernelError::Internal("the journal follower stopped".into())),
            Err(_) => Err(KernelError::LogStoreUnavailable(format!(
                "journal record {seq} is durable but not applied after {APPLY_WAIT:?} (applied up to {}); \
                 it will be — retry the call",
                self.seq(journal)
            ))),
        }
    }
}

/// The node's journals and what is applied from them: the state (changed only by the
/// journal followers, each journal in its order), how far each journal is applied, and the
/// state's snapshots.
pub(crate) struct Machine {
    /// The node journal and the partitions' (`partition.rs`).
    pub journals: crate::partition::Journals,
    pub state: std::sync::RwLock<crate::state::State>,
    pub applied: Applied,
    pub snapshots: crate::snapshot::Snapshots,
    /// The records covered by the snapshot this kernel started from (0: none).
    pub restored_from: u64,
}

/// Where a journaled record is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Journaled {
    pub journal: usize,
    pub seq: u64,
    /// False when the journal held it already (a retried call).
    pub new: bool,
}

impl Kernel {
    /// Appends a record to the journal (idempotent by `id`) and waits until it is applied;
    /// whether it was new.
    pub(crate) async fn journal(&self, id: [u8; 32], record: Record) -> Result<bool, KernelError> {
        self.journal_at(id, record).await.map(|journaled| journaled.new)
    }

    /// Appends a record to the journal (idempotent by `id`) and waits until it is applied;
    /// where it is.
    pub(crate) async fn journal_at(&self, id: [u8; 32], record: Record) -> Result<Journaled, KernelError> {
        let journal = self.machine.journals.of_record(&record);
        let record = JournalRecord { record: Some(record) };
        let entry = if journal == crate::partition::NODE {
            // Node-wide records come from any replica; ids keep them once.
            let answer = self
                .ports
                .logs
                .append_any(
                    self.machine.journals.stream(journal),
                    StreamKind::Meta,
                    Bytes::copy_from_slice(&id),
                    record.encode_to_vec().into(),
                )
                .await?;
            answer
                .entries
                .first()
                .cloned()
                .ok_or_else(|| KernelError::Internal("the log-store answered an append with no entry".into()))?
        } else {
            self.ownership.append((journal - 1) as u32, id, &record).await?
        };
        self.machine.applied.reached(journal, entry.seq).await?;
        Ok(Journaled {
            journal,
            seq: entry.seq,
            new: entry.appended,
        })
    }

    /// Waits until record `seq` of `journal` is applied.
    pub(crate) async fn applied_up_to(&self, journal: usize, seq: u64) -> Result<(), KernelError> {
        self.machine.applied.reached(journal, seq).await
    }
}

/// Follows every journal, each in a task of its own (`spawn_follower`).
pub(crate) fn spawn_followers(kernel: &Arc<Kernel>, shutdown: &fedsx_runtime::CancellationToken) {
    for journal in 0..kernel.machine.journals.count() {
        spawn_follower(kernel, journal, shutdown.clone());
    }
}

/// Follows `journal` from its last applied record and applies each record in seq order
/// until `shutdown`; after a log-store failure, follows it again from where it stopped.
fn spawn_follower(kernel: &Arc<Kernel>, journal: usize, shutdown: fedsx_runtime::CancellationToken) {
    let tasks = kernel.tasks.clone();
    let stream = kernel.machine.journals.stream(journal).to_owned();
    let kernel = Arc::downgrade(kernel);
    tasks.spawn(async move {
        let mut pause = RETRY_FIRST;
        loop {
            let Some(me) = kernel.upgrade() else { return };
            let followed = tokio::select! {
                () = shutdown.cancelled() => return,
                followed = follow(&me, journal) => followed,
            };
            drop(me);
            match followed {
                Ok(()) => pause = RETRY_FIRST,
                Err(err) => {
                    tracing::warn!(journal = %stream, error = %err, retry_in = ?pause, "following the journal failed");
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    });
}

/// Applies `journal`'s records after the last applied one as the log-store hands them out,
/// until the subscription ends or fails.
async fn follow(kernel: &Arc<Kernel>, journal: usize) -> Result<(), KernelError> {
    let from = kernel.machine.applied.seq(journal);
    let stream = kernel.machine.journals.stream(journal);
    let mut entries = kernel.ports.logs.subscribe(stream, StreamKind::Meta, from).await?;
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let expected = kernel.machine.applied.seq(journal) + 1;
        if entry.seq != expected {
            return Err(KernelError::Internal(format!(
                "journal {stream} gave record {} where {expected} was next",
                entry.seq
            )));
        }
        let record = decode(&entry)?;
        {
            let mut state = kernel.machine.state.write().expect("state lock poisoned");
            let effects = state.apply(record, &kernel.secret, &kernel.node);
            // Under the state's lock: whoever reads the state reads the seq it covers.
            kernel.machine.applied.seqs[journal].send_replace(entry.seq);
            // Done after apply, by the partition's owner (`effects.rs`).
            kernel.effects.push(journal, entry.seq, &entry.id, effects);
        }
        crate::snapshot::take_if_due(kernel);
    }
    Ok(())
}
