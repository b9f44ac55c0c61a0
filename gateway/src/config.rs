//! Flags (with environment fallbacks) of `fedsx gateway`.

use std::net::SocketAddr;
use std::time::Duration;

/// Default HTTP address of the gateway on a local node.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the HTTP server listens on (port 0 picks a free port, printed at start).
    #[arg(long, env = "FEDSX_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// URL of the kernel's gRPC service.
    #[arg(long, env = "FEDSX_GATEWAY_KERNEL", default_value = "http://127.0.0.1:8701")]
    pub kernel: String,

    /// The node's public base URL, shown on the welcome route.
    #[arg(long, env = "FEDSX_PUBLIC_URL", default_value = "http://127.0.0.1:8700")]
    pub public_url: String,

    /// Time allowed for one request's body to arrive (past it: 408) and again for the
    /// answer (past it: 504).
    #[arg(long, env = "FEDSX_GATEWAY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_seconds)]
    pub request_timeout: Duration,

    /// Time allowed for a request's headers, counted from the connection's opening or from
    /// the first byte of a later request: a connection that sends nothing or half its
    /// headers this long is closed.
    #[arg(long, env = "FEDSX_GATEWAY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_seconds)]
    pub header_timeout: Duration,

    /// Time a kept-alive connection may stay idle between the end of a response and the
    /// next request's first byte before it is closed.
    #[arg(long, env = "FEDSX_GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_seconds)]
    pub idle_timeout: Duration,

    /// Connections open at once; further ones wait in the listen backlog.
    #[arg(long, env = "FEDSX_GATEWAY_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Bearer token the flow routes (/flows…) require; without it they are open to anyone
    /// who reaches the gateway.
    #[arg(long, env = "FEDSX_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.strip_suffix('s')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a positive number of seconds like 10s"))
}
