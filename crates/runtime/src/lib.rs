//! What every fed-sx service shares, written once: telemetry (logs, OTLP traces and metrics,
//! Prometheus text), W3C
//! trace-context propagation over gRPC, safe outbound HTTP to peers, serving a gRPC service with health and reflection,
//! graceful shutdown on signals, listener binding, and the error-code table that maps a
//! failure to both a gRPC code and an HTTP status.

pub mod clock;
pub mod error;
pub mod grpc;
pub mod http_client;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod paging;
pub mod parent;
pub mod partition;
pub mod rocks;
pub mod rpc_metrics;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use error::ErrorCode;
pub use tokio_util::sync::CancellationToken;
