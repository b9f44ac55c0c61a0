//! What delivery reports: send outcomes as counters, and per peer queue depth, sends in
//! flight, dead letters and lag — the age of the oldest pending activity. The per-peer
//! numbers come from the queue (a database query for PostgreSQL), so they are read every
//! [`REFRESH`] into a snapshot the gauges report, never on the scrape itself. The `peer`
//! label has a bounded number of values: the busiest `--metrics-peers` destinations, and the
//! rest summed under `other`.

use crate::dispatcher::{Dispatcher, now_ms};
use crate::storage::{PeerStatus, QueueStorage};
use fedsx_runtime::metrics::{Counter, KeyValue, ObservableGauge, meter};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How often the per-peer snapshot is refreshed.
const REFRESH: Duration = Duration::from_secs(2);

/// Send outcomes: `delivered`, `retry` (failed, tried again later), `dead_letter`; each
/// reported from the start, at zero until it happens.
pub(crate) fn sends() -> &'static Counter<u64> {
    static SENDS: OnceLock<Counter<u64>> = OnceLock::new();
    SENDS.get_or_init(|| {
        let sends = meter()
            .u64_counter("fedsx.delivery.sends")
            .with_description("Sends to peers by outcome: delivered, retry (will be tried again), dead_letter")
            .build();
        for outcome in ["delivered", "retry", "dead_letter"] {
            sends.add(0, &[KeyValue::new("outcome", outcome)]);
        }
        sends
    })
}

type Snapshot = Arc<Mutex<Vec<(PeerStatus, usize)>>>;

/// Kept alive for as long as the service runs.
pub(crate) struct QueueGauges {
    _gauges: Vec<ObservableGauge<u64>>,
    _lag: ObservableGauge<f64>,
    _refresh: tokio_util::task::AbortOnDropHandle<()>,
}

/// The `peer` label of the destinations past the busiest.
pub const OTHER: &str = "other";

/// The `limit` busiest rows (by pending, in flight and dead letters; then by peer), and the
/// others summed into one row named [`OTHER`] (its lag the oldest among them).
fn bounded(mut rows: Vec<(PeerStatus, usize)>, limit: usize) -> Vec<(PeerStatus, usize)> {
    if rows.len() <= limit {
        return rows;
    }
    let weight = |(s, in_flight): &(PeerStatus, usize)| s.pending + s.dead_letters + *in_flight as u64;
    rows.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| a.0.peer.cmp(&b.0.peer)));
    let rest = rows.split_off(limit);
    let mut other = (
        PeerStatus {
            peer: OTHER.into(),
            ..PeerStatus::default()
        },
        0,
    );
    for (status, in_flight) in rest {
        other.0.pending += status.pending;
        other.0.dead_letters += status.dead_letters;
        other.0.delivered += status.delivered;
        other.1 += in_flight;
        if status.head_enqueued_ms != 0
            && (other.0.head_enqueued_ms == 0 || status.head_enqueued_ms < other.0.head_enqueued_ms)
        {
            other.0.head_enqueued_ms = status.head_enqueued_ms;
        }
    }
    rows.push(other);
    rows
}

/// Registers the per-peer gauges over what `dispatcher`'s queue holds, with at most
/// `peers` + 1 values of the `peer` label.
pub(crate) fn register<Q: QueueStorage>(dispatcher: &Arc<Dispatcher<Q>>, peers: usize) -> QueueGauges {
    sends();
    let snapshot: Snapshot = Arc::default();
    let refresh = {
        let (dispatcher, snapshot) = (Arc::downgrade(dispatcher), snapshot.clone());
        tokio::spawn(async move {
            loop {
                let Some(dispatcher) = dispatcher.upgrade() else { return };
                if let Ok(statuses) = dispatcher.queue().statuses().await {
                    let rows = statuses
                        .into_iter()
                        .map(|s| {
                            let in_flight = dispatcher.in_flight(&s.peer);
                            (s, in_flight)
                        })
                        .collect();
                    *snapshot.lock().expect("snapshot lock poisoned") = bounded(rows, peers);
                }
                drop(dispatcher);
                tokio::time::sleep(REFRESH).await;
            }
        })
    };
    let meter = meter();
    let gauge = |name: &'static str, description: &'static str, read: fn(&(PeerStatus, usize)) -> u64| {
        let snapshot = snapshot.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                for row in snapshot.lock().expect("snapshot lock poisoned").iter() {
                    observer.observe(read(row), &[KeyValue::new("peer", row.0.peer.clone())]);
                }
            })
            .build()
    };
    let gauges = vec![
        gauge(
            "fedsx.delivery.queue.depth",
            "Activities pending for a peer",
            |(s, _)| s.pending,
        ),
        gauge(
            "fedsx.delivery.in_flight",
            "Sends to a peer awaiting its answer (from this replica)",
            |(_, in_flight)| *in_flight as u64,
        ),
        gauge(
            "fedsx.delivery.dead_letters",
            "Dead letters held for a peer",
            |(s, _)| s.dead_letters,
        ),
    ];
    let lag = meter
        .f64_observable_gauge("fedsx.delivery.lag")
        .with_unit("s")
        .with_description("Age of the oldest activity pending for a peer (0 when none)")
        .with_callback(move |observer| {
            let now = now_ms();
            for (status, _) in snapshot.lock().expect("snapshot lock poisoned").iter() {
                let age = match status.head_enqueued_ms {
                    0 => 0,
                    at => now.saturating_sub(at),
                };
                observer.observe(age as f64 / 1000.0, &[KeyValue::new("peer", status.peer.clone())]);
            }
        })
        .build();
    QueueGauges {
        _gauges: gauges,
        _lag: lag,
        _refresh: tokio_util::task::AbortOnDropHandle::new(refresh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: &str, pending: u64, head_enqueued_ms: u64) -> (PeerStatus, usize) {
        let status = PeerStatus {
            peer: peer.into(),
            pending,
            head_enqueued_ms,
            ..PeerStatus::default()
        };
        (status, 0)
    }

    #[test]
    fn past_the_busiest_destinations_the_rest_are_one_label() {
        let rows = vec![
            row("https://a", 1, 50),
            row("https://b", 9, 70),
            row("https://c", 5, 60),
            row("https://d", 0, 0),
        ];
        assert_eq!(bounded(rows.clone(), 4), rows, "within the bound: as they are");
        let bounded = bounded(rows, 2);
        let peers: Vec<&str> = bounded.iter().map(|(s, _)| s.peer.as_str()).collect();
        assert_eq!(peers, ["https://b", "https://c", OTHER]);
        assert_eq!(bounded[2].0.pending, 1);
        assert_eq!(bounded[2].0.head_enqueued_ms, 50, "the oldest of the rest");
    }
}
