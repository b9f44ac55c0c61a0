//! What the kernel reports: ingests by outcome, signature failures, and flow instances by
//! status (read from the flow table when scraped or exported).

use crate::Ingested;
use crate::error::KernelError;
use crate::kernel::Kernel;
use fedsx_runtime::metrics::{Counter, KeyValue, ObservableGauge, meter};
use fedsx_wire::WireError;
use std::sync::{OnceLock, Weak};

struct IngestMetrics {
    ingests: Counter<u64>,
    signature_failures: Counter<u64>,
    gap_activities: Counter<u64>,
    handoffs_refused: Counter<u64>,
    followers_gone: Counter<u64>,
}

fn ingest_metrics() -> &'static IngestMetrics {
    static METRICS: OnceLock<IngestMetrics> = OnceLock::new();
    METRICS.get_or_init(|| IngestMetrics {
        ingests: meter()
            .u64_counter("fedsx.kernel.ingests")
            .with_description("Inbound activities by outcome: new, duplicate, or why refused")
            .build(),
        signature_failures: meter()
            .u64_counter("fedsx.kernel.signature_failures")
            .with_description("Inbound envelopes whose signature did not verify")
            .build(),
        handoffs_refused: meter()
            .u64_counter("fedsx.kernel.handoffs_refused")
            .with_description("Activities for a recipient that delivery refused for good (skipped, not retried)")
            .build(),
        followers_gone: meter()
            .u64_counter("fedsx.kernel.followers_gone")
            .with_description("Followers removed because their node answered 410 Gone for them")
            .build(),
        gap_activities: meter()
            .u64_counter("fedsx.kernel.gap_activities")
            .with_description("Activities missing from a sender's sequence: filled from its outbox, or unfilled")
            .build(),
    })
}

/// Every `outcome` label of `fedsx.kernel.ingests`.
const OUTCOMES: [&str; 12] = [
    "new",
    "duplicate",
    // A node-inbox activity for none of the node's actors (verified, then dropped).
    "no_recipient",
    "bad_signature",
    "foreign_key_id",
    "too_large",
    "malformed",
    "unknown_sender",
    "stale_key",
    "unknown_recipient",
    "unavailable",
    "internal",
];

/// Reports every ingest counter at zero from the start, so a dashboard's rate of refusals
/// has a series before the first one happens.
pub(crate) fn init() {
    let metrics = ingest_metrics();
    metrics.signature_failures.add(0, &[]);
    metrics.handoffs_refused.add(0, &[]);
    metrics.followers_gone.add(0, &[]);
    for outcome in ["filled", "unfilled"] {
        metrics.gap_activities.add(0, &[KeyValue::new("outcome", outcome)]);
    }
    for outcome in OUTCOMES {
        metrics.ingests.add(0, &[KeyValue::new("outcome", outcome)]);
    }
}

/// Why an ingest was refused, as a metric label (one of [`OUTCOMES`]).
fn refusal(err: &KernelError) -> &'static str {
    match err {
        KernelError::Wire(WireError::BadSignature) => "bad_signature",
        KernelError::Wire(WireError::ForeignKeyId { .. }) => "foreign_key_id",
        KernelError::Wire(WireError::TooLarge(_)) => "too_large",
        KernelError::Wire(_) | KernelError::BadRequest(_) => "malformed",
        KernelError::UnknownSender { .. } => "unknown_sender",
        KernelError::StaleKey { .. } => "stale_key",
        KernelError::NoSuchActor(_) => "unknown_recipient",
        KernelError::LogStoreUnavailable(_) => "unavailable",
        _ => "internal",
    }
}

/// `count` activities of a gap were filled or given up on (`outcome`).
pub(crate) fn gap_activities(outcome: &'static str, count: u64) {
    ingest_metrics()
        .gap_activities
        .add(count, &[KeyValue::new("outcome", outcome)]);
}

/// One hand-off refused for good by delivery.
/// One follower removed: gone at its node.
pub(crate) fn follower_gone() {
    ingest_metrics().followers_gone.add(1, &[]);
}

pub(crate) fn handoff_refused() {
    ingest_metrics().handoffs_refused.add(1, &[]);
}

/// Counts one ingest's outcome.
pub(crate) fn record_ingest(result: Result<&[Ingested], &KernelError>) {
    let metrics = ingest_metrics();
    let outcome = match result {
        Ok([]) => "no_recipient",
        Ok(landed) if landed.iter().any(|l| l.new) => "new",
        Ok(_) => "duplicate",
        Err(err) => refusal(err),
    };
    if outcome == "bad_signature" {
        metrics.signature_failures.add(1, &[]);
    }
    metrics.ingests.add(1, &[KeyValue::new("outcome", outcome)]);
}

/// `fedsx.kernel.flows{status}`: flow instances by status. Keep the gauge as long as the
/// kernel runs.
pub(crate) fn register_flows(kernel: Weak<Kernel>) -> ObservableGauge<u64> {
    meter()
        .u64_observable_gauge("fedsx.kernel.flows")
        .with_description("Flow instances by status (running, suspended, done, failed)")
        .with_callback(move |observer| {
            let Some(kernel) = kernel.upgrade() else { return };
            for (status, count) in kernel.flow_counts() {
                observer.observe(count as u64, &[KeyValue::new("status", status.label())]);
            }
        })
        .build()
}

/// `fedsx.kernel.partitions_served`: how many partitions this replica serves now, and
/// `fedsx.kernel.serves_flows`: 1 while it runs the flows. Keep the gauges as long as the
/// kernel runs.
pub(crate) fn register_ownership(kernel: Weak<Kernel>) -> [ObservableGauge<u64>; 2] {
    let served = kernel.clone();
    [
        meter()
            .u64_observable_gauge("fedsx.kernel.partitions_served")
            .with_description("Partitions this kernel replica serves now (their journals, actors and relay)")
            .with_callback(move |observer| {
                if let Some(kernel) = served.upgrade() {
                    observer.observe(kernel.owned_partitions().len() as u64, &[]);
                }
            })
            .build(),
        meter()
            .u64_observable_gauge("fedsx.kernel.serves_flows")
            .with_description("1 while this kernel replica runs the flows (it serves their partition)")
            .with_callback(move |observer| {
                if let Some(kernel) = kernel.upgrade() {
                    observer.observe(u64::from(kernel.serves_flows()), &[]);
                }
            })
            .build(),
    ]
}
