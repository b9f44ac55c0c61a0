//! Durable flows against real processes: node A runs as four separate processes so its
//! kernel alone can be SIGKILLed (or crash at a fail point) and restart; node B (`fedsx up`)
//! follows A's actor and receives the digest.

mod support;

use bytes::Bytes;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{
    ActorRequest, CreateActorRequest, Flow, FlowStatus, GetFlowRequest, ListFlowsRequest, LogKind, PublishRequest,
    ReadLogRequest, SignalRequest, StartFlowRequest,
};
use fedsx_proto::wire::v1::{Activity, ActivityType, SignedEnvelope};
use fedsx_runtime::http_client::{PeerHttp, Reply};
use prost::Message;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::{Node, Service, TestDir, eventually, free_addr};
use tonic::Code;
use tonic::transport::Channel;

/// Node A as separate processes: log-store, delivery, kernel (restartable on a fixed
/// address) and gateway.
struct NodeA {
    dir: TestDir,
    _log_store: Service,
    _delivery: Service,
    _gateway: Service,
    kernel: Option<Service>,
    kernel_addr: SocketAddr,
    log_store_url: String,
    delivery_url: String,
    http: SocketAddr,
}

impl NodeA {
    async fn start() -> NodeA {
        let dir = TestDir::new();
        let log_store = support::spawn_log_store(&dir).await;
        let delivery = support::spawn_delivery(&dir, "50ms,100ms,200ms,400ms,800ms", &[]).await;
        let (kernel_addr, http) = (free_addr(), free_addr());
        let gateway_args = [
            "gateway",
            "--listen",
            &http.to_string(),
            "--kernel",
            &format!("http://{kernel_addr}"),
            "--public-url",
            &format!("http://{http}"),
        ];
        let gateway = Service::spawn_http("gateway", &gateway_args, dir.path()).await.unwrap();
        let mut node = NodeA {
            log_store_url: log_store.url(),
            delivery_url: delivery.url(),
            dir,
            _log_store: log_store,
            _delivery: delivery,
            _gateway: gateway,
            kernel: None,
            kernel_addr,
            http,
        };
        node.start_kernel(&[]).await;
        node
    }

    async fn start_kernel(&mut self, env: &[(&str, &str)]) {
        let secret = self.dir.join("node-secret");
        let args = [
            "kernel",
            "--listen",
            &self.kernel_addr.to_string(),
            "--log-store",
            &self.log_store_url,
            "--delivery",
            &self.delivery_url,
            "--public-url",
            &format!("http://{}", self.http),
            "--node-secret-file",
            secret.to_str().unwrap(),
            "--allow-private-peers",
        ];
        let kernel = Service::spawn_with_env("kernel", &args, env, self.dir.path())
            .await
            .unwrap();
        self.kernel = Some(kernel);
    }

    fn kill_kernel(&mut self) {
        self.kernel.take().expect("kernel running").sigkill().unwrap();
    }

    async fn client(&self) -> KernelClient<Channel> {
        let url = format!("http://{}", self.kernel_addr);
        KernelClient::new(support::channel(&url).await.unwrap())
    }

    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

async fn b_client(node: &Node) -> KernelClient<Channel> {
    KernelClient::new(support::channel(&node.kernel_url()).await.unwrap())
}

async fn create(client: &mut KernelClient<Channel>, name: &str) {
    client
        .create_actor(CreateActorRequest { name: name.into() })
        .await
        .unwrap();
}

async fn note(client: &mut KernelClient<Channel>, actor: &str, content: &str) {
    let request = PublishRequest {
        actor: actor.into(),
        r#type: ActivityType::Create.into(),
        object: String::new(),
        to: vec!["followers".into()],
        content: content.into(),
        ..Default::default()
    };
    client.publish(request).await.unwrap();
}

async fn outbox_tip(client: &mut KernelClient<Channel>, actor: &str) -> u64 {
    let request = ActorRequest { name: actor.into() };
    client.tips(request).await.unwrap().into_inner().outbox_tip
}

/// Every activity of a log, decoded.
async fn activities(client: &mut KernelClient<Channel>, actor: &str, kind: LogKind) -> Vec<Activity> {
    let request = ReadLogRequest {
        actor: actor.into(),
        kind: kind.into(),
        after: 0,
        limit: 1000,
    };
    let log = client.read_log(request).await.unwrap().into_inner();
    log.entries
        .iter()
        .map(|e| Activity::decode(SignedEnvelope::decode(e.envelope.as_ref()).unwrap().activity.as_ref()).unwrap())
        .collect()
}

async fn start(client: &mut KernelClient<Channel>, name: &str, input: Value) -> Result<Flow, tonic::Status> {
    let request = StartFlowRequest {
        name: name.into(),
        input: input.to_string(),
    };
    client.start_flow(request).await.map(|r| r.into_inner())
}

async fn signal(client: &mut KernelClient<Channel>, id: &str, signal: &str) -> Result<Flow, tonic::Status> {
    let request = SignalRequest {
        id: id.into(),
        signal: signal.into(),
        payload: String::new(),
    };
    client.signal(request).await.map(|r| r.into_inner())
}

async fn get(client: &mut KernelClient<Channel>, id: &str) -> Flow {
    client
        .get_flow(GetFlowRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

async fn http_post(url: &str, body: &str) -> Reply {
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(body.to_owned()))
        .unwrap();
    PeerHttp::new(true, Duration::from_secs(10))
        .send(request, 1 << 20)
        .await
        .unwrap()
}

fn reply_json(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| panic!("JSON body: {:?}", reply.body))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_survives_a_kernel_sigkill_is_approved_once_and_reaches_a_follower() {
    let mut a = NodeA::start().await;
    let dir_b = TestDir::new();
    let b = Node::start("b", &dir_b.join("data"), free_addr(), "50ms,100ms,200ms", dir_b.path())
        .await
        .unwrap();
    let mut ka = a.client().await;
    let mut kb = b_client(&b).await;
    create(&mut ka, "alice").await;
    create(&mut kb, "bob").await;
    support::follow_and_wait(&kb, "bob", &format!("{}/actors/alice", a.url())).await;
    for text in ["first note", "second note", "third note"] {
        note(&mut ka, "alice", text).await;
    }
    let tip = outbox_tip(&mut ka, "alice").await;
    assert_eq!(tip, 4, "the Accept and three notes");

    // Through the gateway: 201, suspended awaiting approve or reject, the two latest notes.
    let reply = http_post(
        &format!("{}/flows/publish-digest", a.url()),
        r#"{"actor":"alice","notes":2}"#,
    )
    .await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let started = reply_json(&reply);
    assert_eq!(started["status"], "suspended");
    assert_eq!(started["awaiting"], json!(["approve", "reject"]));
    let excerpts: Vec<&str> = started["data"]["gathered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["excerpt"].as_str().unwrap())
        .collect();
    assert_eq!(excerpts, ["second note", "third note"]);
    let id = started["id"].as_str().unwrap().to_owned();

    a.kill_kernel();
    a.start_kernel(&[]).await;
    let mut ka = a.client().await;
    let after_restart = get(&mut ka, &id).await;
    assert_eq!(after_restart.status(), FlowStatus::Suspended);
    assert_eq!(after_restart.version, started["version"].as_u64().unwrap());
    assert_eq!(
        outbox_tip(&mut ka, "alice").await,
        tip,
        "nothing published while suspended"
    );

    let reply = http_post(&format!("{}/flows/{id}/signal/approve", a.url()), "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let done = reply_json(&reply);
    assert_eq!(done["status"], "done");
    assert_eq!(done["output"]["published"], true);
    assert_eq!(done["output"]["seq"], tip + 1);
    assert_eq!(outbox_tip(&mut ka, "alice").await, tip + 1, "exactly one digest");

    // A second approve changes nothing.
    let again = signal(&mut ka, &id, "approve").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("has ended"), "{}", again.message());
    let reply = http_post(&format!("{}/flows/{id}/signal/approve", a.url()), "").await;
    assert_eq!(reply.status, 409);
    assert_eq!(outbox_tip(&mut ka, "alice").await, tip + 1);
    assert_eq!(get(&mut ka, &id).await.version, done["version"].as_u64().unwrap());

    // Bob's inbox on node B gets the digest, once.
    let digest = eventually("the digest in bob's inbox", || {
        let mut kb = kb.clone();
        async move {
            let inbox = activities(&mut kb, "bob", LogKind::Inbox).await;
            inbox.into_iter().find(|a| a.content.starts_with("Digest of 2 notes"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        digest.content,
        "Digest of 2 notes from alice:\n• second note\n• third note"
    );
    assert_eq!(digest.seq, tip + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inbox = activities(&mut kb, "bob", LogKind::Inbox).await;
    assert_eq!(inbox.iter().filter(|a| a.content.starts_with("Digest")).count(), 1);

    // GET /flows/{id} shows the same.
    let reply = PeerHttp::new(true, Duration::from_secs(10))
        .send(
            http::Request::get(format!("{}/flows/{id}", a.url()))
                .body(Bytes::new())
                .unwrap(),
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply_json(&reply), done);
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_wrong_signals_unknown_names_and_concurrent_signals() {
    let a = NodeA::start().await;
    let mut ka = a.client().await;
    create(&mut ka, "alice").await;
    note(&mut ka, "alice", "only note").await;

    let unknown = start(&mut ka, "no-such-flow", json!({})).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("publish-digest"), "{}", unknown.message());
    let no_actor = start(&mut ka, "publish-digest", json!({"actor": "nobody"}))
        .await
        .unwrap_err();
    assert_eq!(no_actor.code(), Code::NotFound, "{no_actor:?}");
    let bad = start(&mut ka, "publish-digest", json!({"actor": "alice", "notes": 0}))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let not_json = ka
        .start_flow(StartFlowRequest {
            name: "wait-timer".into(),
            input: "{ms:".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_json.code(), Code::InvalidArgument);
    let missing = signal(&mut ka, "0123456789abcdef0123456789abcdef", "approve")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let listed = ka.list_flows(ListFlowsRequest::default()).await.unwrap().into_inner();
    assert!(listed.flows.is_empty(), "bad starts create nothing: {:?}", listed.flows);

    let flow = start(&mut ka, "publish-digest", json!({"actor": "alice"}))
        .await
        .unwrap();
    let wrong = signal(&mut ka, &flow.id, "maybe").await.unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    assert!(wrong.message().contains("approve or reject"), "{}", wrong.message());
    assert_eq!(get(&mut ka, &flow.id).await, flow, "a refused signal changes nothing");

    // Eight concurrent rejects: exactly one wins.
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let mut ka = ka.clone();
            let id = flow.id.clone();
            tokio::spawn(async move { signal(&mut ka, &id, "reject").await })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(flow) => {
                won += 1;
                assert_eq!(flow.status(), FlowStatus::Done);
                assert_eq!(json_of(&flow.output)["published"], false);
            }
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        outbox_tip(&mut ka, "alice").await,
        1,
        "a rejected digest is not published"
    );

    // A sleeping timer takes no signal.
    let timer = start(&mut ka, "wait-timer", json!({"ms": 60_000})).await.unwrap();
    assert_eq!(timer.status(), FlowStatus::Suspended);
    assert!(timer.awaiting.is_empty() && timer.wake_at_ms > 0);
    let refused = signal(&mut ka, &timer.id, "approve").await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let suspended = ka
        .list_flows(ListFlowsRequest {
            status: FlowStatus::Suspended.into(),
            ..ListFlowsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = suspended.flows.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, [timer.id.as_str()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_that_falls_due_while_the_kernel_is_down_fires_after_restart() {
    let mut a = NodeA::start().await;
    let kernel_url = format!("http://{}", a.kernel_addr);
    // Started from the command line.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args([
            "flow",
            "start",
            "wait-timer",
            "--input",
            r#"{"ms":1500}"#,
            "--json",
            "--kernel",
        ])
        .arg(&kernel_url)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let started = json_of(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(started["status"], "suspended");
    let id = started["id"].as_str().unwrap().to_owned();
    let due = started["wake_at_ms"].as_i64().unwrap();

    a.kill_kernel();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    a.start_kernel(&[]).await;
    let mut ka = a.client().await;
    let done = eventually("the timer fires", || {
        let mut ka = ka.clone();
        let id = id.clone();
        async move { Some(get(&mut ka, &id).await).filter(|f| f.status() == FlowStatus::Done) }
    })
    .await
    .unwrap();
    let output = json_of(&done.output);
    assert_eq!(output["due_ms"], due);
    assert!(output["late_ms"].as_i64().unwrap() > 0, "{output}");
    assert_eq!(get(&mut ka, &id).await.status(), FlowStatus::Done);

    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["flow", "show", &id, "--kernel", &kernel_url])
        .output()
        .unwrap();
    let text = String::from_utf8(shown.stdout).unwrap();
    assert!(text.starts_with(&format!("{id}  wait-timer  done ")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_publishing_and_journaling_done_still_publishes_once() {
    let mut a = NodeA::start().await;
    a.kill_kernel();
    a.start_kernel(&[("FEDSX_FAIL_POINT", "flow-after-publish")]).await;
    let mut ka = a.client().await;
    create(&mut ka, "alice").await;
    note(&mut ka, "alice", "a note").await;
    let flow = start(&mut ka, "publish-digest", json!({"actor": "alice"}))
        .await
        .unwrap();
    assert_eq!(flow.status(), FlowStatus::Suspended);

    let crashed = signal(&mut ka, &flow.id, "approve").await;
    assert!(crashed.is_err(), "the kernel aborts at the fail point: {crashed:?}");
    let status = a.kernel.as_mut().unwrap().wait_exit().await.unwrap();
    assert!(!status.success());
    a.kernel = None;

    a.start_kernel(&[]).await;
    let mut ka = a.client().await;
    let done = eventually("the digest flow completes after restart", || {
        let mut ka = ka.clone();
        let id = flow.id.clone();
        async move { Some(get(&mut ka, &id).await).filter(|f| f.status() == FlowStatus::Done) }
    })
    .await
    .unwrap();
    assert_eq!(json_of(&done.output)["seq"], 2);
    assert_eq!(outbox_tip(&mut ka, "alice").await, 2, "the note and one digest");
    let outbox = activities(&mut ka, "alice", LogKind::Outbox).await;
    assert_eq!(outbox.iter().filter(|a| a.content.starts_with("Digest")).count(), 1);
}
