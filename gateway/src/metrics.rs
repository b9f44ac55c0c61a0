//! `http.server.request.duration` (seconds) by method, route and status: its count is the
//! request count. Served with every other instrument at `/metrics`.

use fedsx_runtime::metrics::{Histogram, KeyValue, LATENCY_BUCKETS, meter};
use std::time::Duration;

pub struct Metrics {
    duration: Histogram<f64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let duration = meter()
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("HTTP requests answered, by method, route and status, and how long they took")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build();
        Metrics { duration }
    }
}

impl Metrics {
    pub fn record(&self, method: &http::Method, route: &str, status: u16, took: Duration) {
        let attributes = [
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        self.duration.record(took.as_secs_f64(), &attributes);
    }
}
