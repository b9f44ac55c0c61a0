//! Logs to stderr for people; OpenTelemetry traces and metrics over OTLP/gRPC for the
//! cluster when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal `…_TRACES_ENDPOINT`,
//! `…_METRICS_ENDPOINT`) is set; metrics always scrapeable as Prometheus text.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the exporters alive; dropping it flushes pending spans and metrics.
#[must_use = "dropping the guard stops trace and metric export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("fedsx: flushing traces at shutdown failed: {err}");
        }
        if let Some(meters) = self.meters.take()
            && let Err(err) = meters.shutdown()
        {
            eprintln!("fedsx: flushing metrics at shutdown failed: {err}");
        }
    }
}

/// Whether OTLP export of `signal` (`TRACES`, `METRICS`) is configured.
fn otlp_configured(signal: &str) -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"),
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Starts logging (filtered by `RUST_LOG`, default `info`) and, when an OTLP endpoint is
/// configured, trace export with `default_service` as `service.name` unless
/// `OTEL_SERVICE_NAME` says otherwise. Installs the W3C trace-context propagator.
pub fn init(default_service: &'static str) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);

    // Spans carry OpenTelemetry contexts, so a caller's trace context propagates through
    // this process (and into queued deliveries) even when nothing is exported here; without
    // export, only calls that continue a trace get spans (`trace_context`).
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(default_service);
    }
    let resource = resource.build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let exporting = otlp_configured("TRACES");
    crate::trace_context::set_exporting(exporting);
    if exporting {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter")?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();

    let mut meters = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(crate::metrics::ScrapeReader::install());
    if otlp_configured("METRICS") {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .context("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP metric exporter")?;
        meters = meters.with_periodic_exporter(exporter);
    }
    let meters = meters.build();
    opentelemetry::global::set_meter_provider(meters.clone());

    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("fedsx"));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(TelemetryGuard {
        provider: Some(provider),
        meters: Some(meters),
    })
}
