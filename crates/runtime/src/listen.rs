//! Binding a service's listener and announcing where it listens.

use anyhow::Context;
use std::io::Write;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The line prefix a service prints on stdout once it listens; `fedsx up` and the tests
/// read it to learn the bound port when they asked for port 0.
pub const READY_PREFIX: &str = "fedsx-listening";

/// Binds `addr`, naming the flag in the error so a bad `--listen` is one clear line.
pub async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot listen"))
}

/// Prints `fedsx-listening <service> <addr>` on stdout (and logs it).
pub fn announce(service: &str, listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    tracing::info!(service, %addr, "listening");
    // A parent that stopped reading our stdout must not take the service down with it.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY_PREFIX} {service} {addr}").and_then(|()| out.flush());
    Ok(addr)
}
