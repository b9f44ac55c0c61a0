//! What every engine reports about appends: entries and bytes durably appended, requests
//! per durable write (group size), and the time of each durable write (a synced RocksDB
//! batch, or a PostgreSQL commit).

use fedsx_runtime::metrics::{Counter, Histogram};
use std::time::Duration;

pub(crate) struct AppendMetrics {
    entries: Counter<u64>,
    bytes: Counter<u64>,
    group_size: Histogram<u64>,
    sync: Histogram<f64>,
}

impl AppendMetrics {
    pub fn new() -> AppendMetrics {
        let meter = fedsx_runtime::metrics::meter();
        let metrics = AppendMetrics {
            entries: meter
                .u64_counter("fedsx.log_store.appends")
                .with_description("Entries durably appended (retries of stored entries not counted)")
                .build(),
            bytes: meter
                .u64_counter("fedsx.log_store.appended")
                .with_unit("By")
                .with_description("Entry bytes (id and data) durably appended")
                .build(),
            group_size: meter
                .u64_histogram("fedsx.log_store.group_commit.size")
                .with_description("Append requests committed together in one durable write")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
                .build(),
            sync: meter
                .f64_histogram("fedsx.log_store.sync.duration")
                .with_unit("s")
                .with_description("Time of one durable write (a synced RocksDB batch or a PostgreSQL commit)")
                .with_boundaries(fedsx_runtime::metrics::LATENCY_BUCKETS.to_vec())
                .build(),
        };
        // Reported from the start, at zero until the first append.
        metrics.appended(0, 0);
        metrics
    }

    /// One durable write of `requests` appends took `elapsed`.
    pub fn committed(&self, requests: usize, elapsed: Duration) {
        self.sync.record(elapsed.as_secs_f64(), &[]);
        self.group_size.record(requests as u64, &[]);
    }

    /// `entries` entries of `bytes` bytes became durable.
    pub fn appended(&self, entries: u64, bytes: u64) {
        self.entries.add(entries, &[]);
        self.bytes.add(bytes, &[]);
    }
}
