//! Throwaway PostgreSQL servers for tests and benchmarks: `initdb` in a temp dir, a free
//! port on 127.0.0.1, the socket in the temp dir, trust auth on loopback. Run as the
//! `postgres` user when we are root (postgres refuses to run as root). Each server is
//! stopped when dropped, and a watchdog shell stops it when the process that started it
//! dies (a killed test never leaves a server behind). Set `FEDSX_TEST_KEEP=1` to keep the
//! data directory and log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a server is started (by default with fsync off).
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Off for functional tests (fast); on for failover tests and benchmarks.
    pub fsync: bool,
    /// Further `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl ServerOptions {
    pub fn durable() -> ServerOptions {
        ServerOptions {
            fsync: true,
            settings: Vec::new(),
        }
    }

    pub fn set(mut self, name: &str, value: &str) -> ServerOptions {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// One server shared by every test of this process, started on first use and stopped by
/// its watchdog when the process ends.
pub fn shared() -> &'static PgServer {
    static SERVER: std::sync::OnceLock<PgServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| PgServer::start().expect("starting the shared postgres server"))
}

/// The URL of database `name` on the [`shared`] server, created on first use (the same name
/// again is the same data, as after a restart).
pub async fn shared_database(name: &str) -> String {
    let server = shared();
    // Already there is fine: a reopen.
    let _ = server.create_database(name).await;
    server.url(name)
}

/// The databases of one conformance case on the [`shared`] server: each name is a database
/// of its own, prefixed by the case, so cases running at once never meet.
pub struct CaseDatabases {
    case: String,
}

impl CaseDatabases {
    pub fn new(case: &str) -> CaseDatabases {
        CaseDatabases { case: case.to_owned() }
    }

    /// The URL of the case's database `name` (the same name again: the same data).
    pub async fn url(&self, name: &str) -> String {
        shared_database(&format!("{}_{name}", self.case)).await
    }
}

/// One running (or stopped) server.
#[derive(Debug)]
pub struct PgServer {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    options: ServerOptions,
    watchdog: Option<Child>,
}

/// The directory holding `postgres`, `initdb`, `pg_ctl`: `FEDSX_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), else wherever `postgres` is on PATH.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("FEDSX_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).find(|dir| dir.join("postgres").exists() && dir.join("initdb").exists())
        })
        .ok_or_else(|| "PostgreSQL server binaries not found (run ./x setup, or set FEDSX_PG_BIN)".to_owned())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when we are root.
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command.output().map_err(|err| format!("{what}: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| err.to_string())?;
    Ok(listener.local_addr().map_err(|err| err.to_string())?.port())
}

/// A temp dir the server user may write into.
fn server_dir() -> Result<(Option<tempfile::TempDir>, PathBuf), String> {
    let dir = tempfile::Builder::new()
        .prefix("fedsx-pg-")
        .tempdir()
        .map_err(|err| err.to_string())?;
    if running_as_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(dir.path());
                c
            },
            "chown to postgres",
        )?;
    }
    let root = dir.path().to_path_buf();
    if std::env::var_os("FEDSX_TEST_KEEP").is_some() {
        eprintln!("keeping postgres dir {}", root.display());
        let _ = dir.keep();
        return Ok((None, root));
    }
    Ok((Some(dir), root))
}

impl PgServer {
    /// A new server with fsync off.
    pub fn start() -> Result<PgServer, String> {
        PgServer::start_with(ServerOptions::default())
    }

    /// A new cluster (`initdb --no-sync`), started.
    pub fn start_with(options: ServerOptions) -> Result<PgServer, String> {
        let bin = bin_dir()?;
        let (dir, root) = server_dir()?;
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb.args(["-D"]).arg(root.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb, "initdb")?;
        PgServer::launched(dir, root, bin, options)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), known to the primary by
    /// `application_name` `name` (for `synchronous_standby_names`), started.
    pub fn standby_of(primary: &PgServer, name: &str, options: ServerOptions) -> Result<PgServer, String> {
        let bin = primary.bin.clone();
        let (dir, root) = server_dir()?;
        let mut backup = as_server_user(&bin.join("pg_basebackup"));
        backup
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(root.join("data"))
            .args(["-X", "stream", "-R", "--no-sync", "--checkpoint=fast"]);
        run(backup, "pg_basebackup")?;
        let conninfo = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={name}'\n",
            primary.port
        );
        let auto = root.join("data/postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).map_err(|err| err.to_string())?;
        text.push_str(&conninfo);
        std::fs::write(&auto, text).map_err(|err| err.to_string())?;
        PgServer::launched(dir, root, bin, options)
    }

    /// A server on the data under `root`, started on a free port.
    fn launched(
        dir: Option<tempfile::TempDir>,
        root: PathBuf,
        bin: PathBuf,
        options: ServerOptions,
    ) -> Result<PgServer, String> {
        let mut server = PgServer {
            dir,
            root,
            bin,
            port: 0,
            options,
            watchdog: None,
        };
        server.launch_on_free_port()?;
        Ok(server)
    }

    fn launch_on_free_port(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            self.port = free_port()?;
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// Starts the postmaster under a watchdog and waits until it takes connections.
    fn launch(&mut self) -> Result<(), String> {
        // When the process that started the server is gone, stop the server and (unless
        // kept) remove its directory.
        let script = r#"parent=$1; log=$2; root=$3; keep=$4; shift 4
"$@" >>"$log" 2>&1 &
pg=$!
while [ -d /proc/$parent ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done
kill -QUIT $pg 2>/dev/null
wait $pg
[ -d /proc/$parent ] || [ "$keep" = 1 ] || rm -rf "$root""#;
        let mut command = as_server_user(Path::new("/bin/sh"));
        command
            .args(["-c", script, "watchdog", &std::process::id().to_string()])
            .arg(self.log_path())
            .arg(&self.root)
            .arg(if self.dir.is_some() { "0" } else { "1" })
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.root.display()))
            .args(["-c", if self.options.fsync { "fsync=on" } else { "fsync=off" }])
            .args(["-c", "max_connections=300"]);
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("starting postgres: {err}"))?;
        self.watchdog = Some(child);
        let started = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(watchdog) = self.watchdog.as_mut()
                && let Ok(Some(_)) = watchdog.try_wait()
            {
                return Err(format!("postgres exited at start; log:\n{}", self.log_tail()));
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("postgres not ready within 30 s; log:\n{}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and answers its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, String> {
        self.execute(&format!("CREATE DATABASE \"{name}\"")).await?;
        Ok(self.url(name))
    }

    /// Runs `sql` in the `postgres` database.
    pub async fn execute(&self, sql: &str) -> Result<(), String> {
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .map_err(|err| err.to_string())?;
        let driver = tokio::spawn(connection);
        let done = client
            .batch_execute(sql)
            .await
            .map_err(|err| crate::error::describe(&err));
        drop(client);
        let _ = driver.await;
        done
    }

    fn postmaster_pid(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next().map(str::to_owned)
    }

    fn signal(&mut self, signal: &str) {
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args([signal, &pid]).status();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.wait();
        }
    }

    /// SIGKILL to the postmaster: the server dies at once (its backends follow).
    pub fn kill9(&mut self) {
        self.signal("-KILL");
    }

    /// Immediate shutdown (SIGQUIT), waited for.
    pub fn stop(&mut self) {
        self.signal("-QUIT");
        let started = Instant::now();
        while self.data_dir().join("postmaster.pid").exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped server again on the same port and data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.launch()
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) -> Result<(), String> {
        let mut command = as_server_user(&self.bin.join("pg_ctl"));
        command.args(["promote", "-w", "-t", "30", "-D"]).arg(self.data_dir());
        run(command, "pg_ctl promote")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.stop();
        }
        drop(self.dir.take());
    }
}
