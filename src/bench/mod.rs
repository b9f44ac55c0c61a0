//! `fedsx bench …`: throughput benchmarks that report against the machine's own limits
//! measured in the same run.

mod cpu_cap;
mod delivery;
mod fanout;
mod flows;
mod inbound;
mod inbound_ap;
mod kernel;
mod kernel_start;
mod log_store;

use anyhow::Context;
use ed25519_dalek::SigningKey;
use fedsx_proto::wire::v1::{Activity, ActivityType};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Synced appends/s through gRPC to a log-store, beside raw synced RocksDB on the same disk.
    LogStore(log_store::Args),
    /// Durable ingests/s of signed envelopes through kernel → log-store, beside ed25519
    /// strict verifications/s on one core.
    Kernel(kernel::Args),
    /// Deliveries/s to a fast peer, a 100 ms peer and 100 peers; memory with a deep queue.
    Delivery(delivery::Args),
    /// One actor's publishes to 10,000 followers on 100 destination nodes: requests per
    /// destination, time until delivered everywhere, delivery's memory and CPU.
    Fanout(fanout::Args),
    /// Signed activities POSTed to a running node's inbox over HTTP, beside a one-process
    /// verify-and-202 ceiling.
    Inbound(inbound::Args),
    /// Kernel start time and memory with 1,000,000 journal records: the whole journal
    /// replayed, then from a snapshot and the journal after it.
    KernelStart(kernel_start::Args),
    /// Flow starts and signals per second through the kernel, and the time a kernel restart
    /// takes to recover the suspended instances.
    Flows(flows::Args),
}

impl Bench {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            Bench::LogStore(args) => log_store::run(args).await,
            Bench::Kernel(args) => kernel::run(args).await,
            Bench::KernelStart(args) => kernel_start::run(args).await,
            Bench::Delivery(args) => delivery::run(args).await,
            Bench::Fanout(args) => fanout::run(args).await,
            Bench::Inbound(args) => inbound::run(args).await,
            Bench::Flows(args) => flows::run(args).await,
        }
    }
}

/// With `--pg-throwaway`: a durable server (and a synchronous standby when asked), and the
/// URL of a fresh database on it.
pub async fn throwaway_postgres(
    wanted: bool,
    sync_standby: bool,
) -> anyhow::Result<(Option<String>, Vec<fedsx_pg::testing::PgServer>)> {
    use fedsx_pg::testing::{PgServer, ServerOptions};
    if !wanted {
        return Ok((None, Vec::new()));
    }
    let primary = PgServer::start_with(ServerOptions::durable()).map_err(anyhow::Error::msg)?;
    let url = primary.create_database("bench").await.map_err(anyhow::Error::msg)?;
    let mut servers = vec![];
    if sync_standby {
        let standby = PgServer::standby_of(&primary, "s1", ServerOptions::durable()).map_err(anyhow::Error::msg)?;
        primary
            .execute("ALTER SYSTEM SET synchronous_standby_names = 's1'")
            .await
            .map_err(anyhow::Error::msg)?;
        primary
            .execute("SELECT pg_reload_conf()")
            .await
            .map_err(anyhow::Error::msg)?;
        println!(
            "postgres: primary :{} with synchronous standby :{}",
            primary.port(),
            standby.port()
        );
        servers.push(standby);
    } else {
        println!("postgres: throwaway server :{} (fsync on)", primary.port());
    }
    servers.insert(0, primary);
    Ok((Some(url), servers))
}

/// Remote actors for load: a key each and a URL on a made-up host.
pub fn remote_actors(n: usize) -> Vec<(SigningKey, String)> {
    (0..n)
        .map(|i| {
            let seed: [u8; 32] = std::array::from_fn(|b| (i * 31 + b) as u8);
            (
                SigningKey::from_bytes(&seed),
                format!("https://peer-{i}.bench.example/actors/p"),
            )
        })
        .collect()
}

/// Registers the remote actors' documents with a node's kernel.
pub async fn register(
    kernel: &mut fedsx_gateway::kernels::Client,
    peers: &[(SigningKey, String)],
) -> anyhow::Result<()> {
    for (key, url) in peers {
        kernel
            .register_peer(fedsx_wire::document::new(url, "p", &key.verifying_key(), ""))
            .await?;
    }
    Ok(())
}

/// `n` signed Create envelopes, round-robin over the actors, each actor's chained by `prev`.
pub fn sign_all(peers: &[(SigningKey, String)], n: usize) -> Vec<Vec<u8>> {
    let mut chains: Vec<(u64, Option<fedsx_wire::ActivityId>)> = vec![(0, None); peers.len()];
    (0..n)
        .map(|i| {
            let p = i % peers.len();
            let (key, url) = &peers[p];
            let (seq, prev) = &mut chains[p];
            *seq += 1;
            let activity = Activity {
                r#type: ActivityType::Create.into(),
                actor: url.clone(),
                seq: *seq,
                to: vec!["https://bench.local/actors/bench".into()],
                published_ms: 1_767_225_600_000 + i as i64,
                content: format!("note {i} from {url}, about the length of a short post on a federated server"),
                prev: prev.map(|id| id.0.to_vec().into()).unwrap_or_default(),
                ..Activity::default()
            };
            let signed = fedsx_wire::sign(&activity, key, &fedsx_wire::key_id(url, &key.verifying_key()));
            *prev = Some(signed.id);
            signed.to_bytes()
        })
        .collect()
}

/// What a load run measured.
pub struct Run {
    pub rate: f64,
    pub ok: usize,
    pub errors: usize,
    pub p50: std::time::Duration,
    pub p99: std::time::Duration,
}

/// How long `drive` waits for one call.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Calls `call(i)` for i in 0..n from `concurrency` tasks; a call answers whether it
/// succeeded. Rate, latency percentiles (of successes) and the failures.
pub async fn drive<F, Fut>(n: usize, concurrency: usize, call: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (next, call) = (next.clone(), call.clone());
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return (latencies, errors);
                }
                let sent = std::time::Instant::now();
                // A call with no answer after CALL_TIMEOUT counts as an error: a run ends
                // (with its errors printed) rather than hanging on it.
                if tokio::time::timeout(CALL_TIMEOUT, call(i)).await == Ok(true) {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        ok: latencies.len(),
        errors,
        p50: percentile(50),
        p99: percentile(99),
    })
}

/// (utime + stime in clock ticks, resident KB) of a process.
pub fn usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = fields.get(11).unwrap_or(&"0").parse::<u64>()? + fields.get(12).unwrap_or(&"0").parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0")
        .parse()?;
    Ok((ticks, rss))
}

/// Clock ticks per second in `/proc` (Linux USER_HZ).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// The whole machine's (busy, total) clock ticks so far, over all cores (`/proc/stat`).
pub fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no cpu line"))?;
    let ticks: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait
    let idle = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0);
    Ok((total - idle, total))
}

/// A service process started by a benchmark; killed when dropped.
pub struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fedsx <args>` (this same binary) and returns its URL once it announces it.
pub fn spawn_service(args: &[&str]) -> anyhow::Result<(String, KillOnDrop)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("FEDSX_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting fedsx {}", args[0]))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let child = KillOnDrop(child);
    for line in lines.by_ref() {
        let line = line?;
        let addr = line
            .strip_prefix(fedsx_runtime::listen::READY_PREFIX)
            .and_then(|rest| rest.split_whitespace().nth(1))
            .map(str::to_owned);
        if let Some(addr) = addr {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((format!("http://{addr}"), child));
        }
    }
    anyhow::bail!("fedsx {} exited before listening", args[0])
}

/// No delivery service: hand-offs fail and are retried, which the kernel benchmarks ignore.
pub const NO_DELIVERY: &str = "http://127.0.0.1:1";

/// Starts a kernel on `log_store`, handing off to `delivery`, its node secret in `secret`,
/// with `extra` flags.
pub fn spawn_kernel(
    log_store: &str,
    delivery: &str,
    secret: &str,
    extra: &[&str],
) -> anyhow::Result<(String, KillOnDrop)> {
    let mut args = vec![
        "kernel",
        "--listen",
        "127.0.0.1:0",
        "--log-store",
        log_store,
        "--delivery",
        delivery,
        "--node-secret-file",
        secret,
    ];
    args.extend_from_slice(extra);
    spawn_service(&args)
}

pub fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
