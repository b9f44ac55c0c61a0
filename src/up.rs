//! `fedsx up`: a whole node on one machine — log-store, delivery, kernel and gateway as four
//! child processes of this binary, started in dependency order, each waited for until it
//! serves. If one dies, `up` says which and how, stops the others and exits 1 (it does not
//! restart it: a crash loop should be seen, not hidden). SIGTERM or Ctrl-C stops them all,
//! gateway first, and exits 0. Should `up` itself be killed (kill -9), its children get
//! SIGTERM from the kernel and stop as if it had asked (see `fedsx_runtime::parent`).

use anyhow::{Context, bail};
use fedsx_runtime::listen::READY_PREFIX;
use fedsx_runtime::parent::PARENT_PID_ENV;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of the node's data: log-store/, delivery/, kernel/node-secret.
    #[arg(long, env = "FEDSX_DATA_DIR", default_value = "fedsx-data")]
    data_dir: PathBuf,
    /// Where the gateway (the node's HTTP face) listens.
    #[arg(long, default_value = "127.0.0.1:8700")]
    http_listen: SocketAddr,
    /// The node's public base URL [default: http://<http-listen>].
    #[arg(long, env = "FEDSX_PUBLIC_URL")]
    public_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1:8701")]
    kernel_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8702")]
    log_store_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8703")]
    delivery_listen: SocketAddr,
    /// Let the kernel and delivery talk to loopback and private addresses (peers on this
    /// machine or a private network).
    #[arg(long)]
    allow_private_peers: bool,
    /// Delivery's retry schedule (see `fedsx delivery --help`).
    #[arg(long)]
    retry_schedule: Option<String>,
}

/// A started child: its name, process, and the address it announced.
struct Running {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

fn text(path: &Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = fedsx_runtime::shutdown::on_signal()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.http_listen));
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let data = |sub: &str| text(&args.data_dir.join(sub));
    let private: &[&str] = if args.allow_private_peers {
        &["--allow-private-peers"]
    } else {
        &[]
    };

    // Every port free before anything starts, or one line naming the flag, the port and who
    // holds it (a node left running, another program) instead of half a node.
    for (flag, addr) in [
        ("--http-listen", args.http_listen),
        ("--kernel-listen", args.kernel_listen),
        ("--log-store-listen", args.log_store_listen),
        ("--delivery-listen", args.delivery_listen),
    ] {
        if addr.port() != 0 {
            drop(fedsx_runtime::listen::bind(flag, addr).await?);
        }
    }

    let mut running: Vec<Running> = Vec::new();
    let started = async {
        let log_store = start(
            "log-store",
            &[
                "log-store",
                "--listen",
                &args.log_store_listen.to_string(),
                "--data-dir",
                &data("log-store")?,
            ],
        )
        .await?;
        let log_store_url = format!("http://{}", log_store.addr);
        running.push(log_store);

        let mut delivery = vec![
            "delivery".to_owned(),
            "--listen".into(),
            args.delivery_listen.to_string(),
            "--data-dir".into(),
            data("delivery")?,
            // The kernel's: delivery opens the actors' sealed RSA keys with it.
            "--node-secret-file".into(),
            data("kernel/node-secret")?,
        ];
        if let Some(schedule) = &args.retry_schedule {
            delivery.extend(["--retry-schedule".to_owned(), schedule.clone()]);
        }
        delivery.extend(private.iter().map(|s| s.to_string()));
        let delivery = start("delivery", &delivery.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        let delivery_url = format!("http://{}", delivery.addr);
        running.push(delivery);

        let mut kernel = vec![
            "kernel".to_owned(),
            "--listen".into(),
            args.kernel_listen.to_string(),
            "--log-store".into(),
            log_store_url.clone(),
            "--delivery".into(),
            delivery_url.clone(),
            "--public-url".into(),
            public_url.clone(),
            "--node-secret-file".into(),
            data("kernel/node-secret")?,
        ];
        kernel.extend(private.iter().map(|s| s.to_string()));
        let kernel = start("kernel", &kernel.iter().map(String::as_str).collect::<Vec<_>>()).await?;
        let kernel_url = format!("http://{}", kernel.addr);
        running.push(kernel);

        let gateway = start(
            "gateway",
            &[
                "gateway",
                "--listen",
                &args.http_listen.to_string(),
                "--kernel",
                &kernel_url,
                "--public-url",
                &public_url,
            ],
        )
        .await?;
        running.push(gateway);
        anyhow::Ok((log_store_url, delivery_url, kernel_url))
    };
    let (log_store_url, delivery_url, kernel_url) = tokio::select! {
        started = started => match started {
            Ok(urls) => urls,
            Err(err) => {
                stop_all(&mut running).await;
                return Err(err);
            }
        },
        () = shutdown.cancelled() => {
            stop_all(&mut running).await;
            return Ok(());
        }
    };

    let gateway = running.last().map(|r| r.addr).context("gateway started")?;
    println!("fed-sx node is up");
    println!("  http      http://{gateway}  (public URL {public_url})");
    println!("  kernel    {kernel_url}  (gRPC; `fedsx actor create NAME --kernel {kernel_url}`)");
    println!("  log-store {log_store_url}");
    println!("  delivery  {delivery_url}");
    println!("  data      {}", args.data_dir.display());
    println!("Ctrl-C stops the node.");

    let died = supervise(&mut running, &shutdown).await;
    stop_all(&mut running).await;
    match died {
        Some((name, status)) => bail!("{name} exited ({status}); stopped the rest of the node"),
        None => {
            println!("fed-sx node stopped");
            Ok(())
        }
    }
}

/// Starts `fedsx <args>` and waits for its announce line (forwarded to our stdout).
async fn start(name: &'static str, args: &[&str]) -> anyhow::Result<Running> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group: Ctrl-C reaches `up` alone, which stops the node in order.
        .process_group(0)
        // And it stops by itself when `up` dies without stopping it (kill -9).
        .env(PARENT_PID_ENV, std::process::id().to_string())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let announced = tokio::time::timeout(START_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line
                .strip_prefix(READY_PREFIX)
                .and_then(|rest| rest.split_whitespace().nth(1))
            {
                println!("{line}");
                return anyhow::Ok(Some(addr.parse::<SocketAddr>()?));
            }
            println!("{line}");
        }
        Ok(None)
    })
    .await;
    let addr = match announced {
        Ok(Ok(Some(addr))) => addr,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child.wait().await?;
            bail!("{name} exited before serving ({status}); see its log above");
        }
        Err(_) => bail!("{name} did not start serving within {START_TIMEOUT:?}"),
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
        }
    });
    Ok(Running { name, child, addr })
}

/// Waits until a child exits (returns which and how) or shutdown is asked (None).
async fn supervise(
    running: &mut [Running],
    shutdown: &fedsx_runtime::CancellationToken,
) -> Option<(&'static str, String)> {
    let exits = running.iter_mut().map(|r| {
        let name = r.name;
        Box::pin(async move { (name, r.child.wait().await) })
    });
    tokio::select! {
        ((name, status), _, _) = futures::future::select_all(exits) => {
            let status = status.map_or_else(|err| err.to_string(), |s| s.to_string());
            eprintln!("fedsx up: {name} exited ({status}); stopping the node");
            Some((name, status))
        }
        () = shutdown.cancelled() => None,
    }
}

/// SIGTERM to each child, last started first, waiting for each; SIGKILL after the timeout.
async fn stop_all(running: &mut Vec<Running>) {
    while let Some(mut r) = running.pop() {
        if let Ok(Some(_)) = r.child.try_wait() {
            continue;
        }
        if let Some(pid) = r.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, r.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("fedsx up: {} stopped with {status}", r.name),
            _ => {
                eprintln!("fedsx up: {} did not stop within {STOP_TIMEOUT:?}; killing it", r.name);
                let _ = r.child.kill().await;
            }
        }
    }
}
