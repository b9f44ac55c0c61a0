//! A fake peer node on loopback: answers POSTs to any inbox path as told (per path), and
//! records what it received.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the fake peer answers a path.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooManyRequests(u64),
    /// Never answers.
    Hang,
    /// 200 with this ActivityPub JSON (an actor document).
    Json(String),
}

/// One request the peer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub traceparent: String,
    /// Every header, (lower-case name, value).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, Answer>,
    received: Vec<Received>,
    /// How long each request waits, after its body arrived, before it is recorded and
    /// answered (a slow node).
    delay: Duration,
}

pub struct FakePeer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakePeer {
    /// Starts a peer that answers 202 to every path until told otherwise.
    pub async fn start() -> FakePeer {
        FakePeer::start_slow(Duration::ZERO).await
    }

    /// Like [`FakePeer::start`], each request waiting `delay` before it is answered.
    pub async fn start_slow(delay: Duration) -> FakePeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            delay,
            ..State::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&state, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::spawn(connection);
            }
        });
        FakePeer { addr, state }
    }

    /// The URL of actor `name` on this peer, and its inbox URL.
    pub fn actor(&self, name: &str) -> (String, String) {
        let actor = format!("http://{}/actors/{name}", self.addr);
        let inbox = format!("{actor}/inbox");
        (actor, inbox)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, answer requests to `path` with `answer`.
    pub fn answer(&self, path: &str, answer: Answer) {
        self.state.lock().unwrap().answers.insert(path.to_owned(), answer);
    }

    /// What `path` received, once it received at least `n` requests (within the tests'
    /// deadline; `what` names them in the timeout's message).
    pub async fn received_at_least(&self, path: &str, n: usize, what: &str) -> anyhow::Result<Vec<Received>> {
        super::eventually(what, || {
            let got = self.received(path);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }

    /// Everything received so far, at every path, in arrival order.
    pub fn received_anywhere(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.state.lock().unwrap().received.clear();
    }

    /// Everything received at `path` so far.
    pub fn received(&self, path: &str) -> Vec<Received> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn answer(state: &Mutex<State>, request: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, traceparent) = (header("content-type"), header("traceparent"));
    let headers = request
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let delay = state.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            path: path.clone(),
            content_type,
            traceparent,
            headers,
            body,
        });
        state.answers.get(&path).cloned().unwrap_or(Answer::Status(202))
    };
    match answer {
        Answer::Status(code) => hyper::Response::builder()
            .status(code)
            .body(Full::new(Bytes::new()))
            .unwrap(),
        Answer::TooManyRequests(seconds) => hyper::Response::builder()
            .status(429)
            .header("retry-after", seconds.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap(),
        Answer::Json(body) => hyper::Response::builder()
            .header("content-type", "application/activity+json")
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            hyper::Response::new(Full::new(Bytes::new()))
        }
    }
}
