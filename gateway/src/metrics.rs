//! Request counts by route and status, served as Prometheus text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Metrics {
    pub fn record(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route.to_owned(), status))
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP fedsx_gateway_requests_total HTTP requests answered, by route and status.\n\
             # TYPE fedsx_gateway_requests_total counter\n",
        );
        for ((route, status), count) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "fedsx_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out
    }
}
