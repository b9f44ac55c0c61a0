//! Binding a service's listener and announcing where it listens.

use anyhow::Context;
use std::io::Write;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// The line prefix a service prints on stdout once it listens; `fedsx up` and the tests
/// read it to learn the bound port when they asked for port 0.
pub const READY_PREFIX: &str = "fedsx-listening";

/// Binds `addr`, naming the flag in the error so a bad `--listen` is one clear line; when
/// the port is taken, the line also says by which process, if this user can see it.
pub async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            let by = match holder(addr.port()) {
                Some(process) => format!("port {} is held by {process}", addr.port()),
                None => format!("port {} is held by a process this user cannot see", addr.port()),
            };
            Err(anyhow::anyhow!("{flag} {addr}: cannot listen: {err}; {by}"))
        }
        Err(err) => Err(err).with_context(|| format!("{flag} {addr}: cannot listen")),
    }
}

/// The process listening on TCP `port` (any address), as `pid N (command line)`: the
/// socket's inode from /proc/net/tcp{,6}, then the process holding it among /proc/*/fd.
fn holder(port: u16) -> Option<String> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let holds = std::fs::read_dir(entry.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str()));
        if !holds {
            return None;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        Some(format!("pid {pid} ({})", words.join(" ")))
    })
}

/// The inode of the listening socket on `port` in a /proc/net/tcp table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':')?.1;
        let listening = fields.get(3) == Some(&LISTEN);
        (listening && u16::from_str_radix(local_port, 16).ok()? == port).then(|| fields.get(9)?.parse().ok())?
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_names_the_process_holding_it() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind("--listen", addr).await.unwrap_err().to_string();
        let me = format!("port {} is held by pid {} (", addr.port(), std::process::id());
        assert!(err.starts_with(&format!("--listen {addr}: cannot listen: ")), "{err}");
        assert!(err.contains(&me), "{err}");
    }
}
