//! Filling a gap in what a sender sent us (see [`crate::gaps`]): its outbox is read page
//! by page from the first missing seq, and each activity is taken exactly like an inbound
//! POST by every local actor it is addressed to (one it is not addressed to only counts as
//! seen). What cannot be had is given up on, with the reason. And the tracking's snapshots:
//! saved to the log-store every [`SAVE_INTERVAL`] and at shutdown, the newest loaded at
//! start.

use crate::gaps::{Fill, MAX_GAP};
use crate::kernel::Kernel;
use bytes::Bytes;
use fedsx_proto::kernel::v1::ActorDocument;
use fedsx_proto::logstore::v1::StreamKind;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The kernel-owned stream of gap-tracking snapshots (reserved name, no local actor).
pub const GAPS_ACTOR: &str = "~gaps";
/// How often the tracking is saved when it moved.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// Saves the tracking every [`SAVE_INTERVAL`] until `shutdown` (the last save is the
/// caller's, after the server stopped).
pub(crate) fn spawn_saver(kernel: &Arc<Kernel>, shutdown: fedsx_runtime::CancellationToken) {
    let tasks = kernel.tasks.clone();
    let kernel = Arc::downgrade(kernel);
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SAVE_INTERVAL) => {}
            }
            let Some(kernel) = kernel.upgrade() else { return };
            kernel.save_gaps().await;
        }
    });
}

/// Fills `fill` for `sender`, then any gap that opened meanwhile, in a task of its own.
pub(crate) fn spawn(kernel: Arc<Kernel>, sender: ActorDocument, fill: Fill) {
    let span = tracing::info_span!("gap.fill", fedsx.actor = %sender.id);
    kernel.tasks.clone().spawn(
        async move {
            let mut fill = fill;
            loop {
                kernel.fill(&sender, fill).await;
                match kernel.gaps.fill_done(&sender.id) {
                    Some(next) => fill = next,
                    None => return,
                }
            }
        }
        .instrument(span),
    );
}

impl Kernel {
    /// Saves how far each sender arrived, when it moved since the last save.
    pub async fn save_gaps(&self) {
        let Some(snapshot) = self.gaps.snapshot() else { return };
        let data = match serde_json::to_vec(&snapshot) {
            Ok(data) => data,
            Err(err) => return tracing::warn!(error = %err, "gap tracking not saved"),
        };
        let id = format!("snapshot-{}-{}", self.now_ms(), snapshot.len());
        let saved = self
            .ports
            .logs
            .append_any(GAPS_ACTOR, StreamKind::Meta, Bytes::from(id), Bytes::from(data))
            .await;
        if let Err(err) = saved {
            self.gaps.unsaved();
            tracing::warn!(error = %err, "gap tracking not saved; trying again later");
        }
    }

    /// Resumes gap tracking from the newest snapshot, if any.
    pub(crate) async fn restore_gaps(&self) -> Result<(), crate::error::KernelError> {
        let tip = self.ports.logs.tip(GAPS_ACTOR, StreamKind::Meta).await?;
        if tip == 0 {
            return Ok(());
        }
        let (entries, _) = self.ports.logs.read(GAPS_ACTOR, StreamKind::Meta, tip - 1, 1).await?;
        let Some(newest) = entries.first() else { return Ok(()) };
        match serde_json::from_slice::<Vec<(String, u64)>>(&newest.data) {
            Ok(snapshot) => {
                tracing::info!(senders = snapshot.len(), "gap tracking resumed");
                self.gaps.restore(snapshot);
            }
            Err(err) => tracing::warn!(error = %err, "gap tracking snapshot unreadable; starting afresh"),
        }
        Ok(())
    }

    async fn fill(&self, sender: &ActorDocument, fill: Fill) {
        let (first, last) = (fill.after + 1, fill.before.saturating_sub(1));
        if last < first {
            return;
        }
        let missing = last - first + 1;
        if missing > MAX_GAP {
            let reason = format!("{missing} activities missing, more than the {MAX_GAP} one gap is filled up to");
            self.gaps.give_up(&sender.id, first, last, reason);
            return;
        }
        tracing::info!(sender = %sender.id, first, last, "filling a gap from the sender's outbox");
        let mut after = fill.after;
        while after < last {
            let page = match self.ports.peers.fetch_outbox(&sender.outbox, after, last - after).await {
                Ok(page) => page,
                Err(err) => return self.gaps.give_up(&sender.id, after + 1, last, err.to_string()),
            };
            let mut progressed = false;
            for (seq, envelope) in page {
                if seq <= after || seq > last {
                    continue;
                }
                if seq != after + 1 {
                    let reason = format!("the outbox answered seq {seq} after {after}");
                    self.gaps.give_up(&sender.id, after + 1, seq - 1, reason);
                }
                match self.take_fetched(sender, seq, envelope).await {
                    Ok(()) => crate::metrics::gap_activities("filled", 1),
                    Err(reason) => self.gaps.give_up(&sender.id, seq, seq, reason),
                }
                after = seq;
                progressed = true;
            }
            if !progressed {
                let reason = "the sender's outbox does not serve them".to_owned();
                return self.gaps.give_up(&sender.id, after + 1, last, reason);
            }
        }
    }

    /// Takes the fetched activity `seq` of `sender` as an inbound POST to each local actor
    /// it is addressed to.
    async fn take_fetched(&self, sender: &ActorDocument, seq: u64, envelope: Bytes) -> Result<(), String> {
        let received = fedsx_wire::decode(&envelope).map_err(|err| format!("outbox entry {seq}: {err}"))?;
        let activity = &received.activity;
        if activity.actor != sender.id || activity.seq != seq {
            return Err(format!(
                "outbox entry {seq} is activity {} of {}, not the sender's {seq}",
                activity.seq, activity.actor
            ));
        }
        let recipients = self.node_recipients(&sender.id, &activity.to);
        for (recipient, _) in &recipients {
            Box::pin(self.ingest(recipient, &envelope))
                .await
                .map_err(|err| format!("outbox entry {seq} for {recipient}: {err}"))?;
        }
        if recipients.is_empty() {
            // Not for anyone here: it only closes the gap.
            self.gaps.seen(&sender.id, seq);
        }
        Ok(())
    }
}
