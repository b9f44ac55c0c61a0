//! What delivery reports: send outcomes as counters, and per peer (read from the queues when
//! scraped or exported) queue depth, sends in flight, dead letters and lag — the age of the
//! oldest pending activity.

use crate::peer::now_ms;
use crate::service::Queues;
use fedsx_runtime::metrics::{Counter, KeyValue, ObservableGauge, meter};
use std::sync::{Arc, OnceLock, Weak};

/// Send outcomes: `delivered`, `retry` (failed, tried again later), `dead_letter`.
pub(crate) fn sends() -> &'static Counter<u64> {
    static SENDS: OnceLock<Counter<u64>> = OnceLock::new();
    SENDS.get_or_init(|| {
        meter()
            .u64_counter("fedsx.delivery.sends")
            .with_description("Sends to peers by outcome: delivered, retry (will be tried again), dead_letter")
            .build()
    })
}

/// Kept alive for as long as the service runs; the gauges read the queues through a weak
/// reference.
pub(crate) struct QueueGauges {
    _gauges: Vec<ObservableGauge<u64>>,
    _lag: ObservableGauge<f64>,
}

/// Registers the per-peer gauges over `queues`.
pub(crate) fn register(queues: &Arc<Queues>) -> QueueGauges {
    let meter = meter();
    let gauge = |name: &'static str, description: &'static str, read: fn(&crate::peer::Status) -> u64| {
        let queues: Weak<Queues> = Arc::downgrade(queues);
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                let Some(queues) = queues.upgrade() else { return };
                for status in queues.statuses() {
                    observer.observe(read(&status), &[KeyValue::new("peer", status.peer.clone())]);
                }
            })
            .build()
    };
    let gauges = vec![
        gauge("fedsx.delivery.queue.depth", "Activities pending for a peer", |s| {
            s.pending as u64
        }),
        gauge("fedsx.delivery.in_flight", "Sends to a peer awaiting its answer", |s| {
            s.in_flight as u64
        }),
        gauge("fedsx.delivery.dead_letters", "Dead letters held for a peer", |s| {
            s.dead_letters as u64
        }),
    ];
    let weak = Arc::downgrade(queues);
    let lag = meter
        .f64_observable_gauge("fedsx.delivery.lag")
        .with_unit("s")
        .with_description("Age of the oldest activity pending for a peer (0 when none)")
        .with_callback(move |observer| {
            let Some(queues) = weak.upgrade() else { return };
            let now = now_ms();
            for (peer, oldest) in queues.oldest_pending() {
                let age = oldest.map_or(0, |at| now.saturating_sub(at));
                observer.observe(age as f64 / 1000.0, &[KeyValue::new("peer", peer)]);
            }
        })
        .build();
    QueueGauges {
        _gauges: gauges,
        _lag: lag,
    }
}
