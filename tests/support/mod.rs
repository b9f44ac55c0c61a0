//! Helpers for end-to-end tests: spawn the real `fedsx` binary in a temp dir, learn its
//! port from the line it prints, wait for gRPC health, and signal or kill it.
//!
//! Set `FEDSX_TEST_KEEP=1` to keep each test's temp dir (data and service logs) for
//! debugging; its path is printed.

#![allow(dead_code)]

pub mod fake_peer;
pub mod fedify;
pub mod load;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a service may take to start or stop before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A temp dir per test, kept when `FEDSX_TEST_KEEP` is set.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix("fedsx-test-")
            .tempdir()
            .expect("creating a temp dir");
        let path = dir.path().to_path_buf();
        if std::env::var_os("FEDSX_TEST_KEEP").is_some() {
            eprintln!("keeping test dir {}", path.display());
            let _ = dir.keep();
            return TestDir { dir: None, path };
        }
        TestDir { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        drop(self.dir.take());
    }
}

/// A running `fedsx` service process, killed when dropped.
pub struct Service {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

/// Runs `fedsx <args>` to completion (it is expected to exit by itself) and returns its
/// status and stderr.
pub fn run_to_exit(args: &[&str]) -> anyhow::Result<(ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("piped"), &mut stderr)?;
            return Ok((status, stderr));
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            bail!("fedsx {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Service {
    /// Spawns `fedsx <args>` with stderr in `<log_dir>/<name>.log`, waits for its
    /// `fedsx-listening` line and for its gRPC health to report SERVING.
    pub async fn spawn(name: &str, args: &[&str], log_dir: &Path) -> anyhow::Result<Service> {
        Service::start(name, args, &[], log_dir, true).await
    }

    /// Like [`Service::spawn`], with extra environment variables.
    pub async fn spawn_with_env(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
    ) -> anyhow::Result<Service> {
        Service::start(name, args, env, log_dir, true).await
    }

    async fn start(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
        grpc: bool,
    ) -> anyhow::Result<Service> {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_fedsx"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning fedsx")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, announced) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("fedsx-listening ")
                    .and_then(|rest| rest.split_whitespace().nth(1))
                {
                    let _ = ready.send(addr.to_owned());
                }
            }
        });
        let mut service = Service {
            child,
            addr: "0.0.0.0:0".parse()?,
            log,
        };
        let addr = tokio::task::spawn_blocking(move || announced.recv_timeout(DEADLINE)).await?;
        match addr {
            Ok(addr) => service.addr = addr.parse()?,
            Err(_) => bail!("{name} did not announce its address; log:\n{}", service.log_tail()),
        }
        if grpc {
            service.wait_serving().await?;
        }
        Ok(service)
    }

    /// Like [`Service::spawn`] for a service without gRPC health (the gateway): ready once it
    /// announces its address.
    pub async fn spawn_http(name: &str, args: &[&str], log_dir: &Path) -> anyhow::Result<Service> {
        Service::start(name, args, &[], log_dir, false).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn wait_serving(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(channel) = channel(&self.url()).await
                && let Ok(answer) = HealthClient::new(channel)
                    .check(HealthCheckRequest { service: String::new() })
                    .await
                && answer.get_ref().status() == ServingStatus::Serving
            {
                return Ok(());
            }
            if started.elapsed() > DEADLINE {
                bail!(
                    "service at {} not healthy within {DEADLINE:?}; log:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process dies at once, without any chance to clean up.
    pub fn sigkill(&mut self) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    pub async fn sigterm(&mut self) -> anyhow::Result<ExitStatus> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        self.wait_exit().await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > DEADLINE {
                bail!("no exit within {DEADLINE:?}; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A gRPC channel to `url`.
pub async fn channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Channel::from_shared(url.to_owned())?
        .connect()
        .await?)
}

/// A log-store on `<dir>/log-store`.
pub async fn spawn_log_store(dir: &TestDir) -> Service {
    let data = dir.join("log-store");
    let args = [
        "log-store",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    Service::spawn("log-store", &args, dir.path()).await.unwrap()
}

/// A delivery service on `<dir>/delivery`, retrying on `schedule`, allowed to reach
/// loopback peers, with `extra` flags.
pub async fn spawn_delivery(dir: &TestDir, schedule: &str, extra: &[&str]) -> Service {
    let data = dir.join("delivery");
    let mut args = vec![
        "delivery",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--retry-schedule",
        schedule,
        "--allow-private-peers",
    ];
    args.extend_from_slice(extra);
    Service::spawn("delivery", &args, dir.path()).await.unwrap()
}

/// Kernel replica `n` of a node on a free address: on the log-store at `log_store`, for
/// `public_url`, sharing the node secret `<dir>/node-secret` with the other replicas, with
/// `extra` flags (its delivery, its partitions, …). Its replica id is `kernel-<n>`: the
/// replicas split the partitions by rendezvous hashing of the ids, so a test's split is the
/// same every run (by default the id comes from the address, a free port, and a split that
/// leaves one replica nothing would come now and then).
pub async fn spawn_kernel_replica(
    dir: &TestDir,
    n: usize,
    log_store: &str,
    public_url: &str,
    extra: &[&str],
) -> (SocketAddr, Service) {
    let addr = free_addr();
    let (listen, secret, id) = (addr.to_string(), dir.join("node-secret"), format!("kernel-{n}"));
    let mut args = vec![
        "kernel",
        "--replica-id",
        &id,
        "--listen",
        &listen,
        "--log-store",
        log_store,
        "--public-url",
        public_url,
        "--node-secret-file",
        secret.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let kernel = Service::spawn(&format!("kernel-{n}"), &args, dir.path()).await.unwrap();
    (addr, kernel)
}

/// Polls `check` until it returns `Some`, or fails after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if started.elapsed() > DEADLINE {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A whole node run by `fedsx up` (four child processes), stopped when dropped.
pub struct Node {
    child: Child,
    pub http: SocketAddr,
    pub kernel: SocketAddr,
    pub delivery: SocketAddr,
    pub log_store: SocketAddr,
    log: PathBuf,
}

impl Node {
    /// Starts `fedsx up` with its data in `data_dir`, the gateway on `http` (which is also the
    /// public URL), internal services on free ports, loopback peers allowed, and `schedule`
    /// as delivery's retry schedule.
    pub async fn start(
        name: &str,
        data_dir: &Path,
        http: SocketAddr,
        schedule: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Node> {
        Node::start_with_env(name, data_dir, http, schedule, log_dir, &[]).await
    }

    /// Like [`Node::start`], with extra environment variables for `up` and its children.
    pub async fn start_with_env(
        name: &str,
        data_dir: &Path,
        http: SocketAddr,
        schedule: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Node> {
        Node::launch(name, data_dir, http, schedule, log_dir, env, true).await
    }

    /// Like [`Node::start`], but as in production: peers on loopback or private addresses
    /// are refused (no `--allow-private-peers`).
    pub async fn start_strict(
        name: &str,
        data_dir: &Path,
        http: SocketAddr,
        schedule: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Node> {
        Node::launch(name, data_dir, http, schedule, log_dir, &[], false).await
    }

    async fn launch(
        name: &str,
        data_dir: &Path,
        http: SocketAddr,
        schedule: &str,
        log_dir: &Path,
        env: &[(&str, &str)],
        allow_private: bool,
    ) -> anyhow::Result<Node> {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_fedsx"))
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args([
                "--http-listen",
                &http.to_string(),
                "--public-url",
                &format!("http://{http}"),
            ])
            .args([
                "--kernel-listen",
                "127.0.0.1:0",
                "--log-store-listen",
                "127.0.0.1:0",
                "--delivery-listen",
                "127.0.0.1:0",
            ])
            .args(allow_private.then_some("--allow-private-peers"))
            .args(["--retry-schedule", schedule])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, announced) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("fedsx-listening ") {
                    let mut parts = rest.split_whitespace();
                    if let (Some(service), Some(addr)) = (parts.next(), parts.next()) {
                        let _ = ready.send((service.to_owned(), addr.to_owned()));
                    }
                }
            }
        });
        let mut node = Node {
            child,
            http,
            kernel: http,
            delivery: http,
            log_store: http,
            log,
        };
        let mut seen = 0;
        while seen < 4 {
            let next = tokio::task::block_in_place(|| announced.recv_timeout(DEADLINE * 2));
            let Ok((service, addr)) = next else {
                bail!("node {name} did not start; log:\n{}", node.log_tail());
            };
            match service.as_str() {
                "fedsx.kernel.v1.Kernel" => node.kernel = addr.parse()?,
                "fedsx.delivery.v1.Delivery" => node.delivery = addr.parse()?,
                "fedsx.logstore.v1.LogStore" => node.log_store = addr.parse()?,
                _ => {}
            }
            seen += 1;
        }
        Ok(node)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn kernel_url(&self) -> String {
        format!("http://{}", self.kernel)
    }

    pub fn delivery_url(&self) -> String {
        format!("http://{}", self.delivery)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The pids of `up`'s child processes, by subcommand (`kernel`, `log-store`, …).
    pub fn children(&self) -> Vec<(String, u32)> {
        let pid = self.child.id();
        let listed = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        listed
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter_map(|p| {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
                let name = cmdline.split(|b| *b == 0).nth(1)?;
                Some((String::from_utf8_lossy(name).into_owned(), p))
            })
            .collect()
    }

    /// SIGTERM to `up`, which stops its four children; waits for the exit.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        self.wait().await
    }

    /// SIGKILL to `up` alone: it can do nothing about its children.
    pub fn sigkill(&mut self) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits for `up` to exit by itself.
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > DEADLINE * 2 {
                bail!("node did not stop; log:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// Local actor `local` (on the node `kernel` reaches) follows the actor at `remote`: sends
/// the Follow and waits until the Accept came back.
pub async fn follow_and_wait(
    kernel: &fedsx_proto::kernel::v1::kernel_client::KernelClient<tonic::transport::Channel>,
    local: &str,
    remote: &str,
) {
    use fedsx_proto::kernel::v1::{ActorListRequest, FollowRequest};
    let follow = FollowRequest {
        actor: local.into(),
        remote: remote.into(),
    };
    kernel.clone().follow(follow).await.unwrap();
    eventually(&format!("{local} follows {remote}"), || {
        let mut kernel = kernel.clone();
        async move {
            let following = kernel
                .following(ActorListRequest {
                    name: local.into(),
                    ..Default::default()
                })
                .await
                .ok()?;
            following.into_inner().actors.iter().any(|a| a == remote).then_some(())
        }
    })
    .await
    .unwrap();
}

/// The Prometheus text a process serves at `<base_url>/metrics` (asserting a 200).
pub async fn scrape(base_url: &str) -> String {
    let request = http::Request::get(format!("{base_url}/metrics"))
        .body(bytes::Bytes::new())
        .unwrap();
    let reply = fedsx_runtime::http_client::PeerHttp::new(true, DEADLINE)
        .send(request, 16 << 20)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{base_url}/metrics");
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// The value of the Prometheus sample `name` whose labels include `labels`, in the text
/// `metrics` (None when there is no such sample).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let wanted = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && wanted).then(|| value.parse().ok())?
    })
}

/// A loopback address with a port free right now (for a node whose public URL must stay the
/// same across restarts), handed out once per test process (ports are walked in turn). It is taken
/// from just below the kernel's ephemeral range: a port picked there and released until the
/// node binds it cannot be given meanwhile to another process's `bind(:0)` or outgoing
/// connection, which only draw from the ephemeral range.
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let mut next = NEXT.lock().unwrap();
    // Each test process starts at its own place, so concurrent ones rarely try the same ports.
    let mut port = next.unwrap_or(low + (std::process::id() % 4000) as u16 * 2);
    loop {
        if port >= ephemeral_low {
            port = low;
        }
        let candidate = port;
        port += 1;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", candidate)) {
            *next = Some(port);
            return listener.local_addr().unwrap();
        }
    }
}

/// Every entry of `stream` as (seq, id), paging through `Read` until a page comes back empty.
pub async fn read_ids(
    client: &mut fedsx_proto::logstore::v1::log_store_client::LogStoreClient<tonic::transport::Channel>,
    stream: fedsx_proto::logstore::v1::StreamId,
) -> Vec<(u64, bytes::Bytes)> {
    let mut out: Vec<(u64, bytes::Bytes)> = Vec::new();
    loop {
        let read = fedsx_proto::logstore::v1::ReadRequest {
            stream: Some(stream.clone()),
            after_seq: out.last().map_or(0, |(seq, _)| *seq),
            limit: 0,
        };
        let page = client.read(read).await.unwrap().into_inner();
        if page.entries.is_empty() {
            return out;
        }
        out.extend(page.entries.into_iter().map(|e| (e.seq, e.id)));
    }
}

/// The files in `dir` whose names end with `suffix` (e.g. ".log", ".sst"), largest first.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .map(|e| (e.metadata().unwrap().len(), e.path()))
        .filter(|(len, _)| *len > 0)
        .collect();
    files.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    files.into_iter().map(|(_, path)| path).collect()
}

/// Copies the files of directory `from` into `to` (created), e.g. a stopped store's data.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Damages a stopped store's file as a failing disk would: inverts the byte at `at` (a
/// fraction of the file's length).
pub fn flip_byte(file: &Path, at: f64) {
    let mut bytes = std::fs::read(file).unwrap();
    let offset = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
    bytes[offset] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

/// Moves everything a stopped RocksDB store at `dir` holds from its write-ahead log into
/// table files (opening it with the crate directly, as `fedsx` does).
pub fn flush_to_tables(dir: &Path) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, &names).unwrap();
    for name in &names {
        db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
    }
}
