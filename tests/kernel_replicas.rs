//! Three kernel replicas of one node on real processes, on the PostgreSQL engine (one
//! PostgreSQL server, a log-store and a delivery on it), federating with a second node:
//! follows both ways, notes published on both nodes all the time, and a flow waiting on a
//! timer. The replica running the flows is killed with SIGKILL mid-traffic. Within 15 s its
//! partitions are served by the two others; every publish node A acknowledged is in its
//! outbox once with the chain intact and reaches the follower on node B once; every note of
//! node B reaches each of A's actors once; the flow resumes on another replica and completes
//! once.

mod support;

use fedsx_pg::testing::PgServer;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{
    CreateActorRequest, FlowStatus, GetFlowRequest, LogKind, PublishRequest, ReadLogRequest, StartFlowRequest,
};
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{ReadRequest, StreamId, StreamKind};
use fedsx_proto::wire::v1::{Activity, ActivityType};
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Node, Service, TestDir, eventually, follow_and_wait, free_addr, sample, scrape};
use tonic::transport::Channel;

/// (actor, activity id) of an acknowledged publish.
type Published = (String, [u8; 32]);

/// Long enough that no delivery is dead-lettered while a partition moves.
const SCHEDULE: &str = "200ms,400ms,800ms,1600ms,3200ms,5s,5s,5s,5s";
const PARTITIONS: u32 = 16;

/// One actor name per partition, so every replica serves some of them.
fn actors() -> Vec<String> {
    fedsx_kernel::one_name_per_partition("a", PARTITIONS as usize, PARTITIONS)
}

async fn client(url: &str) -> KernelClient<Channel> {
    KernelClient::new(support::channel(url).await.unwrap())
}

/// (partitions served, serves flows) as kernel `addr` reports them.
async fn ownership(addr: SocketAddr) -> Option<(f64, f64)> {
    let metrics = tokio::time::timeout(Duration::from_secs(2), scrape(&format!("http://{addr}")))
        .await
        .ok()?;
    Some((
        sample(&metrics, "fedsx_kernel_partitions_served", &[])?,
        sample(&metrics, "fedsx_kernel_serves_flows", &[])?,
    ))
}

/// `fedsx replicas --json` against the kernel at `url`.
fn replicas(url: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["replicas", "--json", "--kernel", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (replicas listed, partitions they hold, how many run the flows, partitions unserved).
fn replica_counts(listed: &serde_json::Value) -> (usize, usize, usize, usize) {
    let replicas = listed["replicas"].as_array().unwrap();
    let held = replicas.iter().map(|r| r["partitions"].as_array().unwrap().len()).sum();
    let flows = replicas.iter().filter(|r| r["flows"] == true).count();
    (
        replicas.len(),
        held,
        flows,
        listed["unserved"].as_array().unwrap().len(),
    )
}

/// Every activity in a log of `name`, in seq order, with its id.
async fn log(kernel: &KernelClient<Channel>, name: &str, kind: LogKind) -> Vec<(u64, [u8; 32], Activity)> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |(seq, _, _)| *seq);
        let page = kernel
            .clone()
            .read_log(ReadLogRequest {
                actor: name.into(),
                kind: kind.into(),
                after,
                limit: 1024,
            })
            .await
            .unwrap()
            .into_inner();
        if page.entries.is_empty() {
            return all;
        }
        for entry in page.entries {
            let received = fedsx_wire::decode(&entry.envelope).unwrap();
            all.push((entry.seq, received.id.0, received.activity));
        }
    }
}

/// Publishes until the kernel acknowledges, the same publish each time (`once_key`), so a
/// publish whose answer was lost is not published twice.
async fn publish_acknowledged(
    kernel: &KernelClient<Channel>,
    request: PublishRequest,
    refusals: &Mutex<Vec<String>>,
) -> [u8; 32] {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match kernel.clone().publish(request.clone()).await {
            Ok(answer) => return answer.into_inner().id[..].try_into().unwrap(),
            Err(status) => {
                assert!(Instant::now() < deadline, "never acknowledged: {status:?}");
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                refusals.lock().unwrap().push(status.message().to_owned());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn note(actor: &str, content: String, key: u64) -> PublishRequest {
    let mut once_key = [0u8; 32];
    once_key[..8].copy_from_slice(&key.to_be_bytes());
    once_key[8..8 + actor.len().min(24)].copy_from_slice(&actor.as_bytes()[..actor.len().min(24)]);
    PublishRequest {
        actor: actor.into(),
        r#type: ActivityType::Create.into(),
        to: vec!["followers".into()],
        content,
        once_key: once_key.to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_kernel_replica_hands_its_partitions_on_and_nothing_acknowledged_is_lost() {
    let dir = TestDir::new();
    let pg = PgServer::start().unwrap();
    let store = pg.create_database("replicas").await.unwrap();
    let log_store = Service::spawn(
        "log-store",
        &["log-store", "--listen", "127.0.0.1:0", "--store", &store],
        dir.path(),
    )
    .await
    .unwrap();
    let delivery = Service::spawn(
        "delivery",
        &[
            "delivery",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--retry-schedule",
            SCHEDULE,
            "--allow-private-peers",
        ],
        dir.path(),
    )
    .await
    .unwrap();
    let gateway_addr = free_addr();
    let public_url = format!("http://{gateway_addr}");
    let (delivery_url, partitions) = (delivery.url(), PARTITIONS.to_string());
    let extra = [
        "--delivery",
        &delivery_url,
        "--allow-private-peers",
        "--partitions",
        &partitions,
    ];
    let mut kernels = Vec::new();
    for n in 0..3 {
        let (addr, kernel) = support::spawn_kernel_replica(&dir, n, &log_store.url(), &public_url, &extra).await;
        kernels.push((addr, Some(kernel)));
    }
    let addrs: Vec<SocketAddr> = kernels.iter().map(|(addr, _)| *addr).collect();
    // The replicas settle on a split: all 16 partitions served, each replica some.
    let split = eventually("three replicas sharing 16 partitions", || {
        let addrs = addrs.clone();
        async move {
            let mut seen = Vec::new();
            for addr in addrs {
                seen.push(ownership(addr).await?);
            }
            let total: f64 = seen.iter().map(|(served, _)| served).sum();
            let flows: f64 = seen.iter().map(|(_, flows)| flows).sum();
            (total == f64::from(PARTITIONS) && flows == 1.0 && seen.iter().all(|(served, _)| *served > 0.0))
                .then_some(seen)
        }
    })
    .await
    .unwrap();
    let victim = split.iter().position(|(_, flows)| *flows == 1.0).unwrap();
    let front = (victim + 1) % 3;
    let gateway = Service::spawn_http(
        "gateway",
        &[
            "gateway",
            "--listen",
            &gateway_addr.to_string(),
            "--kernel",
            &format!("http://{}", addrs[front]),
            "--public-url",
            &public_url,
        ],
        dir.path(),
    )
    .await
    .unwrap();
    let ka = client(&format!("http://{}", addrs[front])).await;
    // What an operator sees: three replicas holding the 16 partitions, one running the flows.
    let front_url = format!("http://{}", addrs[front]);
    assert_eq!(replica_counts(&replicas(&front_url)), (3, 16, 1, 0));

    let b_addr = free_addr();
    let b = Node::start("node-b", &dir.join("b"), b_addr, SCHEDULE, dir.path())
        .await
        .unwrap();
    let kb = client(&b.kernel_url()).await;
    let bob = kb
        .clone()
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    // A's actors, one per partition, created through one replica (forwarded to the others);
    // each follows bob and bob follows each.
    let names = actors();
    let mut urls = HashMap::new();
    for name in &names {
        let created = ka
            .clone()
            .create_actor(CreateActorRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner();
        urls.insert(name.clone(), created.id);
    }
    for name in &names {
        follow_and_wait(&ka, name, &bob.id).await;
        follow_and_wait(&kb, "bob", &urls[name]).await;
    }
    // A flow waiting on a timer, on the replica about to die.
    let flow = ka
        .clone()
        .start_flow(StartFlowRequest {
            name: "wait-timer".into(),
            input: r#"{"ms": 20000}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(flow.status(), FlowStatus::Suspended);

    // Traffic on both nodes until stopped: A's actors in turn, and bob.
    let stop = Arc::new(AtomicBool::new(false));
    let a_published: Arc<Mutex<Vec<Published>>> = Arc::default();
    let b_published: Arc<Mutex<Vec<[u8; 32]>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<String>>> = Arc::default();
    let a_traffic = {
        let (ka, names, stop, published) = (ka.clone(), names.clone(), stop.clone(), a_published.clone());
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = &names[n as usize % names.len()];
                let id = publish_acknowledged(&ka, note(name, format!("note {n} of {name}"), n), &refusals).await;
                published.lock().unwrap().push((name.clone(), id));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let b_traffic = {
        let (kb, stop, published) = (kb.clone(), stop.clone(), b_published.clone());
        let refusals = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = publish_acknowledged(&kb, note("bob", format!("bob's note {n}"), n), &refusals).await;
                published.lock().unwrap().push(id);
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    kernels[victim].1.as_mut().unwrap().sigkill().unwrap();
    kernels[victim].1 = None;
    let survivors: Vec<SocketAddr> = (0..3).filter(|n| *n != victim).map(|n| addrs[n]).collect();
    eventually("the survivors serving every partition and the flows", || {
        let survivors = survivors.clone();
        async move {
            let mut total = 0.0;
            let mut flows = 0.0;
            for addr in survivors {
                let (served, runs_flows) = ownership(addr).await?;
                total += served;
                flows += runs_flows;
            }
            (total == f64::from(PARTITIONS) && flows == 1.0).then_some(())
        }
    })
    .await
    .unwrap();
    let took_over = killed.elapsed();
    eventually("the operator's view without the dead replica", || {
        let url = front_url.clone();
        async move { (replica_counts(&tokio::task::block_in_place(|| replicas(&url))) == (2, 16, 1, 0)).then_some(()) }
    })
    .await
    .unwrap();
    assert!(
        took_over < Duration::from_secs(15),
        "the dead replica's partitions were served again after {took_over:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    a_traffic.await.unwrap();
    b_traffic.await.unwrap();
    let a_published = a_published.lock().unwrap().clone();
    let b_published = b_published.lock().unwrap().clone();
    assert!(a_published.len() > 20 && b_published.len() > 10, "traffic ran");
    // Publishes for the dead replica's actors were refused as retryable, saying why.
    let refusals = refusals.lock().unwrap().clone();
    let dead = format!("http://{}", addrs[victim]);
    assert!(
        refusals.iter().any(
            |r| r.contains(&dead) && r.contains("did not answer") || r.contains("has no kernel replica serving it")
        ),
        "{refusals:?}"
    );
    eprintln!(
        "{} refusals while the partitions moved, the first: {:?}",
        refusals.len(),
        refusals.first()
    );
    eprintln!(
        "partitions served again {took_over:?} after the kill; {} publishes on A and {} on B acknowledged",
        a_published.len(),
        b_published.len()
    );

    // Every acknowledged publish of A: in its outbox once, the chain intact.
    for name in &names {
        let outbox = log(&ka, name, LogKind::Outbox).await;
        let mut prev: Option<[u8; 32]> = None;
        for (n, (seq, id, activity)) in outbox.iter().enumerate() {
            assert_eq!(
                (*seq, activity.seq),
                (n as u64 + 1, n as u64 + 1),
                "{name}'s outbox is dense"
            );
            assert_eq!(
                activity.prev.to_vec(),
                prev.map(|p| p.to_vec()).unwrap_or_default(),
                "{name}'s chain"
            );
            prev = Some(*id);
        }
        for (_, id) in a_published.iter().filter(|(actor, _)| actor == name) {
            let copies = outbox.iter().filter(|(_, held, _)| held == id).count();
            assert_eq!(copies, 1, "an acknowledged publish of {name} is in its outbox once");
        }
    }
    // ... and reaches bob once.
    let wanted: Vec<[u8; 32]> = a_published.iter().map(|(_, id)| *id).collect();
    let inbox = eventually("every note of A in bob's inbox", || {
        let (kb, wanted) = (kb.clone(), wanted.clone());
        async move {
            let inbox = log(&kb, "bob", LogKind::Inbox).await;
            wanted
                .iter()
                .all(|id| inbox.iter().any(|(_, held, _)| held == id))
                .then_some(inbox)
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}; gateway log:\n{}", gateway.log_tail()));
    for id in &wanted {
        assert_eq!(
            inbox.iter().filter(|(_, held, _)| held == id).count(),
            1,
            "delivered once"
        );
    }
    // Every note of bob in each of A's inboxes, once.
    for name in &names {
        let inbox = eventually(&format!("bob's notes in {name}'s inbox"), || {
            let (ka, name, wanted) = (ka.clone(), name.clone(), b_published.clone());
            async move {
                let inbox = log(&ka, &name, LogKind::Inbox).await;
                wanted
                    .iter()
                    .all(|id| inbox.iter().any(|(_, held, _)| held == id))
                    .then_some(inbox)
            }
        })
        .await
        .unwrap();
        for id in &b_published {
            assert_eq!(
                inbox.iter().filter(|(_, held, _)| held == id).count(),
                1,
                "{name} got it once"
            );
        }
    }

    // The flow resumed on the replica that took the flows over, and completed once.
    let done = eventually("the timer flow done", || {
        let (ka, id) = (ka.clone(), flow.id.clone());
        async move {
            let flow = ka.clone().get_flow(GetFlowRequest { id }).await.ok()?.into_inner();
            (flow.status() == FlowStatus::Done).then_some(flow)
        }
    })
    .await
    .unwrap();
    assert!(done.output.contains("late_ms"), "{}", done.output);
    let mut store_client = LogStoreClient::new(support::channel(&log_store.url()).await.unwrap());
    let journal = store_client
        .read(ReadRequest {
            stream: Some(StreamId {
                actor: "~flows".into(),
                kind: StreamKind::Flow.into(),
            }),
            after_seq: 0,
            limit: 1024,
        })
        .await
        .unwrap()
        .into_inner();
    let completions = journal
        .entries
        .iter()
        .filter_map(|entry| {
            fedsx_proto::kernel::v1::FlowRecord::decode(entry.data.as_ref())
                .ok()?
                .flow
        })
        .filter(|version| version.id == flow.id && version.status() == FlowStatus::Done)
        .count();
    assert_eq!(completions, 1, "the flow completed once");
    drop(b);
    drop(gateway);
}
