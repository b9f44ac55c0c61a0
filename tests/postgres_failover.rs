//! Failover, on real processes: three PostgreSQL servers on loopback (a primary and two
//! streaming standbys, synchronous replication to at least one of them), two log-store
//! replicas on a multi-host URL with `target_session_attrs=read-write`. While appends run,
//! the primary is killed with SIGKILL and the most advanced standby promoted (as failover
//! tooling does). Every acknowledged append must be there exactly once, in order, without
//! gaps; the log-stores resume on the new primary without a restart; appends that failed
//! during the switch failed with a retryable error. A delivery process on the same cluster
//! keeps delivering: every enqueue it acknowledged reaches the (fake) peer.

mod support;

use bytes::Bytes;
use fedsx_pg::testing::{PgServer, ServerOptions};
use fedsx_pg::tokio_postgres::{self, NoTls};
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{EnqueueRequest, ListPeersRequest};
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{AppendRequest, NewEntry, StreamId, StreamKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::fake_peer::FakePeer;
use support::{Service, TestDir};
use tonic::transport::Channel;

const STREAMS: usize = 4;
const DELIVERIES: usize = 300;

async fn query_i64(server: &PgServer, sql: &str) -> Option<i64> {
    let (client, connection) = tokio_postgres::connect(&server.url("postgres"), NoTls).await.ok()?;
    tokio::spawn(connection);
    client.query_one(sql, &[]).await.ok()?.try_get(0).ok()
}

fn stream(n: usize) -> Option<StreamId> {
    Some(StreamId {
        actor: format!("actor-{n}"),
        kind: StreamKind::Outbox.into(),
    })
}

/// What the appenders saw: acknowledged id → (stream, seq), and the codes of failures.
#[derive(Default)]
struct Seen {
    acked: BTreeMap<String, (usize, u64)>,
    failures: BTreeMap<String, u32>,
}

/// Appends unique ids until `stop`, alternating replicas; a failed append is retried with
/// the same id (appends are idempotent) until it is acknowledged.
async fn appender(
    w: usize,
    clients: Vec<LogStoreClient<Channel>>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    acks_after_failure: Arc<AtomicU64>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("w{w}-{i}");
        let n = (w + i as usize) % STREAMS;
        let mut attempt = 0usize;
        let mut failed = false;
        loop {
            let mut client = clients[(i as usize + attempt) % clients.len()].clone();
            let request = AppendRequest {
                stream: stream(n),
                entries: vec![NewEntry {
                    id: Bytes::from(id.clone()),
                    data: Bytes::from(format!("entry {id}")),
                }],
                expected_tip: None,
            };
            let answer = tokio::time::timeout(Duration::from_secs(10), client.append(request)).await;
            match answer {
                Ok(Ok(answer)) => {
                    let seq = answer.into_inner().entries[0].seq;
                    seen.lock().unwrap().acked.insert(id.clone(), (n, seq));
                    if failed {
                        acks_after_failure.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(Err(status)) => {
                    *seen
                        .lock()
                        .unwrap()
                        .failures
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    failed = true;
                }
                Err(_) => {
                    *seen
                        .lock()
                        .unwrap()
                        .failures
                        .entry("client timeout".into())
                        .or_default() += 1;
                    failed = true;
                }
            }
            attempt += 1;
            if stop.load(Ordering::Relaxed) && attempt > 100 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_primary_killed_mid_traffic() {
    let dir = TestDir::new();
    let mut primary = PgServer::start_with(ServerOptions::durable()).unwrap();
    primary.create_database("fedsx").await.unwrap();
    let s1 = PgServer::standby_of(&primary, "s1", ServerOptions::durable()).unwrap();
    let s2 = PgServer::standby_of(&primary, "s2", ServerOptions::durable()).unwrap();
    primary
        .execute("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (s1, s2)'")
        .await
        .unwrap();
    primary.execute("SELECT pg_reload_conf()").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while query_i64(
        &primary,
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'",
    )
    .await
        != Some(2)
    {
        assert!(Instant::now() < deadline, "standbys not streaming synchronously");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/fedsx?target_session_attrs=read-write&connect_timeout=2",
        primary.port(),
        s1.port(),
        s2.port()
    );
    let args = ["log-store", "--listen", "127.0.0.1:0", "--store", &url];
    let a = Service::spawn("log-store-a", &args, dir.path()).await.unwrap();
    let b = Service::spawn("log-store-b", &args, dir.path()).await.unwrap();
    let clients = vec![
        LogStoreClient::connect(a.url()).await.unwrap(),
        LogStoreClient::connect(b.url()).await.unwrap(),
    ];

    // Delivery on the same cluster, enqueueing across the failover.
    let peer = FakePeer::start().await;
    let delivery = Service::spawn(
        "delivery",
        &[
            "delivery",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &url,
            "--lease",
            "3s",
            "--allow-private-peers",
        ],
        dir.path(),
    )
    .await
    .unwrap();
    let mut deliveries = DeliveryClient::connect(delivery.url()).await.unwrap();
    let (actor, inbox) = peer.actor("p");
    let enqueuer = {
        let (mut client, actor, inbox) = (deliveries.clone(), actor.clone(), inbox.clone());
        tokio::spawn(async move {
            let mut unavailable = 0;
            for n in 0..DELIVERIES {
                let request = EnqueueRequest {
                    peer: actor.clone(),
                    inbox_url: inbox.clone(),
                    envelope: Bytes::from(format!("envelope {n}")),
                    id: Bytes::copy_from_slice(&[n as u8, (n >> 8) as u8].repeat(16)),
                    ..EnqueueRequest::default()
                };
                // Retried until acknowledged; the retry of an enqueue whose answer was lost
                // is recognised by its id.
                while let Err(status) = client.enqueue(request.clone()).await {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            unavailable
        })
    };

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let recovered = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(appender(
                w,
                clients.clone(),
                seen.clone(),
                stop.clone(),
                recovered.clone(),
            ))
        })
        .collect();

    let acked = |seen: &Arc<Mutex<Seen>>| seen.lock().unwrap().acked.len();
    while acked(&seen) < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before_kill = acked(&seen);
    primary.kill9();
    // Promote the standby that received the most WAL: it holds every acknowledged commit.
    let lsn = "SELECT (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint";
    let (l1, l2) = (query_i64(&s1, lsn).await.unwrap(), query_i64(&s2, lsn).await.unwrap());
    let new_primary = if l1 >= l2 { &s1 } else { &s2 };
    new_primary.promote().unwrap();

    // Appends resume on the new primary, through both log-stores, without restarting them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while recovered.load(Ordering::Relaxed) < 8 || acked(&seen) < before_kill + 300 {
        assert!(Instant::now() < deadline, "appends did not resume after the failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let unavailable_enqueues = enqueuer.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let arrived = loop {
        let arrived: std::collections::BTreeSet<Bytes> =
            peer.received("/actors/p/inbox").into_iter().map(|r| r.body).collect();
        if arrived.len() == DELIVERIES {
            break arrived;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {DELIVERIES} deliveries arrived; log:\n{}",
            arrived.len(),
            delivery.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(arrived.contains(&Bytes::from(format!("envelope {}", DELIVERIES - 1))));
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let peers = deliveries
            .list_peers(ListPeersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .peers;
        if peers.len() == 1 && peers[0].pending == 0 && peers[0].delivered == DELIVERIES as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all recorded as delivered: {peers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for code in seen.failures.keys() {
        assert!(
            code == "Unavailable" || code == "client timeout",
            "failures during the switch are retryable, got {:?}",
            seen.failures
        );
    }
    assert!(!seen.failures.is_empty(), "the switch was noticed by some append");

    let mut reader = clients[1].clone();
    let mut total = 0;
    for n in 0..STREAMS {
        let stored: Vec<(u64, String)> = support::read_ids(&mut reader, stream(n).unwrap())
            .await
            .into_iter()
            .map(|(seq, id)| (seq, String::from_utf8(id.to_vec()).unwrap()))
            .collect();
        let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "stream {n}: in order, no gap"
        );
        let by_id: BTreeMap<&str, u64> = stored.iter().map(|(s, id)| (id.as_str(), *s)).collect();
        assert_eq!(by_id.len(), stored.len(), "stream {n}: every id once");
        for (id, (stream_n, seq)) in &seen.acked {
            if *stream_n == n {
                assert_eq!(
                    by_id.get(id.as_str()),
                    Some(seq),
                    "acknowledged {id} at seq {seq} of stream {n}"
                );
            }
        }
        total += stored.len();
    }
    assert!(total >= seen.acked.len());
    let failures: u32 = seen.failures.values().sum();
    eprintln!(
        "failover: {} appends acknowledged ({} before the kill), {failures} retryable append failures; \
         {DELIVERIES} deliveries arrived, {unavailable_enqueues} enqueues answered UNAVAILABLE during the switch",
        seen.acked.len(),
        before_kill
    );
}
