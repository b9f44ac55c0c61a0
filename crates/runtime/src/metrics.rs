//! Metrics: OpenTelemetry instruments (from [`meter`]) read two ways — as Prometheus text
//! for `GET /metrics` on every service's port ([`render`]), and pushed over OTLP when an
//! endpoint is configured (see `telemetry`). Names follow the OTel semantic conventions
//! (`rpc.server.call.duration`, `http.server.request.duration`) or start with `fedsx.`.

pub use opentelemetry::KeyValue;
pub use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge, UpDownCounter};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, Temporality};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Seconds buckets for request and sync latencies (1 ms … 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The meter every fed-sx instrument is made from.
pub fn meter() -> Meter {
    opentelemetry::global::meter("fedsx")
}

/// The reader `/metrics` collects from, shared with the meter provider that owns it.
#[derive(Debug, Clone)]
pub(crate) struct ScrapeReader(Arc<ManualReader>);

static SCRAPE: OnceLock<ScrapeReader> = OnceLock::new();

impl ScrapeReader {
    /// The process's scrape reader (registered with the meter provider by `telemetry`).
    pub(crate) fn install() -> ScrapeReader {
        SCRAPE
            .get_or_init(|| ScrapeReader(Arc::new(ManualReader::builder().build())))
            .clone()
    }
}

impl MetricReader for ScrapeReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// Every instrument's current value as Prometheus text (exposition format 0.0.4). Empty
/// when telemetry was not initialised.
pub fn render() -> String {
    let Some(reader) = SCRAPE.get() else {
        return String::new();
    };
    let mut collected = ResourceMetrics::default();
    if let Err(err) = reader.collect(&mut collected) {
        tracing::debug!(error = %err, "collecting metrics failed");
        return String::new();
    }
    let mut out = String::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            let name = prometheus_name(metric.name(), metric.unit());
            match metric.data() {
                AggregatedMetrics::F64(data) => write_metric(&mut out, &name, metric.description(), data),
                AggregatedMetrics::U64(data) => write_metric(&mut out, &name, metric.description(), data),
                AggregatedMetrics::I64(data) => write_metric(&mut out, &name, metric.description(), data),
            }
        }
    }
    out
}

/// Media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` for an axum router. Collecting runs the gauges' callbacks, which may read
/// from disk (delivery's lag), so it runs off the async threads.
pub async fn handler() -> impl axum::response::IntoResponse {
    let text = tokio::task::spawn_blocking(render).await.unwrap_or_default();
    ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

trait AsF64: Copy {
    fn as_f64(self) -> f64;
}
impl AsF64 for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}
impl AsF64 for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}
impl AsF64 for i64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

fn prometheus_name(name: &str, unit: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    match unit {
        "s" => out.push_str("_seconds"),
        "By" => out.push_str("_bytes"),
        _ => {}
    }
    out
}

fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut pairs: Vec<(String, String)> = attributes
        .map(|kv| (prometheus_name(kv.key.as_str(), ""), kv.value.to_string()))
        .collect();
    pairs.sort();
    pairs.extend(extra.map(|(k, v)| (k.to_owned(), v)));
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

fn write_metric<T: AsF64>(out: &mut String, name: &str, help: &str, data: &MetricData<T>) {
    let help = help.replace('\n', " ");
    match data {
        MetricData::Gauge(gauge) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for point in gauge.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value().as_f64()
                );
            }
        }
        MetricData::Sum(sum) => {
            let (kind, name) = if sum.is_monotonic() {
                ("counter", format!("{name}_total"))
            } else {
                ("gauge", name.to_owned())
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for point in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value().as_f64()
                );
            }
        }
        MetricData::Histogram(histogram) => {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0;
                let bounds: Vec<String> = point
                    .bounds()
                    .map(|b| b.to_string())
                    .chain(["+Inf".to_owned()])
                    .collect();
                for (bound, count) in bounds.into_iter().zip(point.bucket_counts()) {
                    cumulative += count;
                    let labels = labels(point.attributes(), Some(("le", bound)));
                    let _ = writeln!(out, "{name}_bucket{labels} {cumulative}");
                }
                let plain = labels(point.attributes(), None);
                let _ = writeln!(out, "{name}_sum{plain} {}", point.sum().as_f64());
                let _ = writeln!(out, "{name}_count{plain} {}", point.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        assert_eq!(
            prometheus_name("rpc.server.call.duration", "s"),
            "rpc_server_call_duration_seconds"
        );
        assert_eq!(
            prometheus_name("fedsx.log_store.appended", "By"),
            "fedsx_log_store_appended_bytes"
        );
        let kv = [KeyValue::new("rpc.method", "A\"b"), KeyValue::new("code", 3)];
        assert_eq!(labels(kv.iter(), None), r#"{code="3",rpc_method="A\"b"}"#);
    }
}
