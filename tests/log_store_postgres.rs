//! End to end: real `fedsx log-store` processes on a real PostgreSQL server (a throwaway
//! one, started by the test): replicas sharing streams, an outage and the recovery, and a
//! schema newer than the binary.

mod support;

use bytes::Bytes;
use fedsx_pg::testing::PgServer;
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{AppendRequest, NewEntry, StreamId, StreamKind, SubscribeRequest, TipRequest};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use support::{Service, TestDir, eventually};

use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn replica(dir: &TestDir, name: &str, url: &str) -> Service {
    let args = ["log-store", "--listen", "127.0.0.1:0", "--store", url];
    Service::spawn(name, &args, dir.path()).await.unwrap()
}

fn stream(actor: &str) -> Option<StreamId> {
    Some(StreamId {
        actor: actor.into(),
        kind: StreamKind::Outbox.into(),
    })
}

fn append(actor: &str, id: &str) -> AppendRequest {
    AppendRequest {
        stream: stream(actor),
        entries: vec![NewEntry {
            id: Bytes::copy_from_slice(id.as_bytes()),
            data: Bytes::from_static(b"payload"),
        }],
        expected_tip: None,
    }
}

async fn health(service: &Service, name: &str) -> ServingStatus {
    let mut client = HealthClient::new(support::channel(&service.url()).await.unwrap());
    let answer = client.check(HealthCheckRequest { service: name.into() }).await.unwrap();
    answer.into_inner().status()
}

async fn all_ids(client: &mut LogStoreClient<Channel>, actor: &str) -> Vec<(u64, String)> {
    let ids = support::read_ids(client, stream(actor).unwrap()).await;
    ids.into_iter()
        .map(|(seq, id)| (seq, String::from_utf8(id.to_vec()).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_database_and_wake_each_others_subscribers() {
    let dir = TestDir::new();
    let pg = PgServer::start().unwrap();
    let url = pg.create_database("replicas").await.unwrap();
    let a = replica(&dir, "log-store-a", &url).await;
    let b = replica(&dir, "log-store-b", &url).await;
    let mut client_a = LogStoreClient::connect(a.url()).await.unwrap();
    let mut client_b = LogStoreClient::connect(b.url()).await.unwrap();

    // A subscriber on B sees what is appended through A.
    let request = SubscribeRequest {
        stream: stream("shared"),
        after_seq: 0,
    };
    let mut tail = client_b.subscribe(request).await.unwrap().into_inner();
    client_a.append(append("shared", "first")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((first.seq, &first.id[..]), (1, &b"first"[..]));
    // Once A knows B's subscriber watches the stream (within a second), an append through
    // A wakes it at once: well before B would read again on its own (every 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let appended = Instant::now();
    client_a.append(append("shared", "second")).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), tail.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.seq, 2);
    assert!(
        appended.elapsed() < Duration::from_secs(1),
        "woken by A's announcement, not by polling: {:?}",
        appended.elapsed()
    );

    // Both replicas append to the same stream at once: distinct, gap-free seqs, each id once.
    let mut tasks = Vec::new();
    for (n, client) in [client_a.clone(), client_b.clone()].into_iter().enumerate() {
        for w in 0..4 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let id = format!("r{n}-w{w}-{i}");
                    let seq = client.append(append("shared", &id)).await.unwrap().into_inner().entries[0].seq;
                    // The same append again through the other replica answers the same seq.
                    let again = client.append(append("shared", &id)).await.unwrap().into_inner().entries[0];
                    assert_eq!((again.seq, again.appended), (seq, false));
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = all_ids(&mut client_b, "shared").await;
    assert_eq!(
        stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=202).collect::<Vec<_>>()
    );
    assert_eq!(
        stored.iter().map(|(_, id)| id.clone()).collect::<BTreeSet<_>>().len(),
        202
    );
    let mut last = second.seq;
    while last < 202 {
        let next = tokio::time::timeout(support::DEADLINE, tail.next()).await;
        let entry = next.expect("the subscriber on B keeps up").unwrap().unwrap();
        assert_eq!(entry.seq, last + 1, "in order, no gap");
        last = entry.seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_unavailable_and_the_service_recovers_without_a_restart() {
    let dir = TestDir::new();
    let mut pg = PgServer::start().unwrap();
    let url = pg.create_database("outage").await.unwrap();
    let service = replica(&dir, "log-store", &url).await;
    let mut client = LogStoreClient::connect(service.url()).await.unwrap();
    client.append(append("o", "before")).await.unwrap();
    assert_eq!(
        health(&service, "fedsx.logstore.v1.LogStore").await,
        ServingStatus::Serving
    );

    pg.stop();
    let started = Instant::now();
    let err = client.append(append("o", "during")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once: {:?}",
        started.elapsed()
    );
    let err = client.tip(TipRequest { stream: stream("o") }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually("readiness reports not serving", || {
        let service = &service;
        async move { (health(service, "fedsx.logstore.v1.LogStore").await == ServingStatus::NotServing).then_some(()) }
    })
    .await
    .unwrap();
    assert_eq!(
        health(&service, "").await,
        ServingStatus::Serving,
        "the process itself is alive"
    );

    pg.restart().unwrap();
    eventually("readiness reports serving again", || {
        let service = &service;
        async move { (health(service, "fedsx.logstore.v1.LogStore").await == ServingStatus::Serving).then_some(()) }
    })
    .await
    .unwrap();
    let mut answered = None;
    for _ in 0..50 {
        match client.append(append("o", "after")).await {
            Ok(answer) => {
                answered = Some(answer.into_inner());
                break;
            }
            Err(err) => {
                assert_eq!(
                    err.code(),
                    Code::Unavailable,
                    "only retryable errors while recovering: {err:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let answered = answered.expect("appends work again");
    assert_eq!(answered.entries[0].seq, 2, "the refused append left nothing behind");
    assert_eq!(
        all_ids(&mut client, "o").await,
        [(1, "before".to_owned()), (2, "after".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused_with_exit_1() {
    let dir = TestDir::new();
    let pg = PgServer::start().unwrap();
    let url = pg.create_database("newer").await.unwrap();
    {
        let service = replica(&dir, "log-store", &url).await;
        drop(service);
    }
    let (client, connection) = fedsx_pg::tokio_postgres::connect(&url, fedsx_pg::tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "INSERT INTO fedsx_schema_migrations (component, version, name) VALUES ('log-store', 99, 'from the future')",
        )
        .await
        .unwrap();
    let (status, stderr) = support::run_to_exit(&["log-store", "--listen", "127.0.0.1:0", "--store", &url]).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("--store postgres://postgres@127.0.0.1:")
            && last.contains("log-store schema is at version 99, newer than this build knows (4)"),
        "{stderr}"
    );

    let (status, stderr) = support::run_to_exit(&["log-store", "--store", "mysql://x"]).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--store") && stderr.contains("postgres://"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_rocksdb_log_store_to_postgres_with_the_same_seqs() {
    let dir = TestDir::new();
    let data = dir.join("log-store");
    let data = data.to_str().unwrap();
    let mut rocks = Service::spawn(
        "log-store-rocks",
        &["log-store", "--listen", "127.0.0.1:0", "--data-dir", data],
        dir.path(),
    )
    .await
    .unwrap();
    let mut client = LogStoreClient::connect(rocks.url()).await.unwrap();
    for i in 0..1500 {
        client
            .append(append(&format!("a{}", i % 3), &format!("e{i}")))
            .await
            .unwrap();
    }
    let before: Vec<_> = {
        let mut all = Vec::new();
        for actor in ["a0", "a1", "a2"] {
            all.push(all_ids(&mut client, actor).await);
        }
        all
    };
    let pg = PgServer::start().unwrap();
    let url = pg.create_database("moved").await.unwrap();

    let (status, stderr) = support::run_to_exit(&["log-store", "migrate", "--from", data, "--to", &url]).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "a running log-store holds the directory: {stderr}"
    );
    assert!(
        stderr.contains("--from") && stderr.contains("stop the log-store"),
        "{stderr}"
    );

    rocks.sigterm().await.unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fedsx"))
        .args(["log-store", "migrate", "--from", data, "--to", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap(),
        "migrated 3 streams: 1500 entries copied, 0 already there, 16890 bytes; every tip matches"
    );

    let postgres = replica(&dir, "log-store-pg", &url).await;
    let mut client = LogStoreClient::connect(postgres.url()).await.unwrap();
    for (actor, expected) in ["a0", "a1", "a2"].into_iter().zip(before) {
        assert_eq!(all_ids(&mut client, actor).await, expected, "{actor}");
    }
    let tip = client
        .tip(TipRequest { stream: stream("a0") })
        .await
        .unwrap()
        .into_inner()
        .tip;
    assert_eq!(tip, 500);
}
