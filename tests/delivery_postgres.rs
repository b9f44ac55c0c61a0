//! End to end: real `fedsx delivery` processes sharing one PostgreSQL queue, delivering to
//! a fake peer on loopback. Each destination is worked by one replica at a time under a
//! lease; when a replica is killed with SIGKILL mid-traffic, the other takes its
//! destinations once the leases lapse, every enqueued delivery arrives, and nothing whose
//! success was recorded is ever sent again.

mod support;

use bytes::Bytes;
use fedsx_pg::testing::PgServer;
use fedsx_pg::tokio_postgres::{self, NoTls};
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{EnqueueRequest, ListPeersRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::fake_peer::FakePeer;
use support::{Service, TestDir};
use tonic::Code;
use tonic::transport::Channel;

const DESTINATIONS: usize = 8;
const PER_DESTINATION: usize = 100;

async fn replica(dir: &TestDir, name: &str, url: &str) -> Service {
    let args = [
        "delivery",
        "--listen",
        "127.0.0.1:0",
        "--store",
        url,
        "--retry-schedule",
        "20ms,20ms,20ms,20ms,20ms",
        "--lease",
        "3s",
        "--send-timeout",
        "2s",
        "--allow-private-peers",
    ];
    Service::spawn(name, &args, dir.path()).await.unwrap()
}

fn request(peer: &FakePeer, destination: usize, n: usize) -> EnqueueRequest {
    let (actor, inbox) = peer.actor(&format!("p{destination}"));
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(n as u64).to_be_bytes());
    id[8] = destination as u8;
    EnqueueRequest {
        peer: actor,
        inbox_url: inbox,
        envelope: Bytes::from(format!("envelope {destination}/{n}")),
        id: Bytes::copy_from_slice(&id),
        ..EnqueueRequest::default()
    }
}

/// Bodies received per destination path, with how often each arrived.
fn arrivals(peer: &FakePeer) -> BTreeMap<String, u32> {
    let mut seen = BTreeMap::new();
    for destination in 0..DESTINATIONS {
        let path = format!("/actors/p{destination}/inbox");
        for received in peer.received(&path) {
            *seen
                .entry(String::from_utf8_lossy(&received.body).into_owned())
                .or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_traffic_loses_nothing_and_repeats_no_recorded_success() {
    let dir = TestDir::new();
    let pg = PgServer::start().unwrap();
    let url = pg.create_database("queue").await.unwrap();
    let peer = FakePeer::start().await;
    let mut a = replica(&dir, "delivery-a", &url).await;
    let b = replica(&dir, "delivery-b", &url).await;
    let clients: Vec<DeliveryClient<Channel>> = vec![
        DeliveryClient::new(support::channel(&a.url()).await.unwrap()),
        DeliveryClient::new(support::channel(&b.url()).await.unwrap()),
    ];

    // Enqueue through both replicas, spread over time; an enqueue that fails (its replica
    // was killed) is sent again to the other one.
    let requests: Vec<Vec<EnqueueRequest>> = (0..PER_DESTINATION)
        .map(|n| (0..DESTINATIONS).map(|d| request(&peer, d, n)).collect())
        .collect();
    let enqueuer = {
        let clients = clients.clone();
        tokio::spawn(async move {
            for (n, round) in requests.into_iter().enumerate() {
                for (destination, request) in round.into_iter().enumerate() {
                    let mut attempt = n + destination;
                    loop {
                        let mut client = clients[attempt % 2].clone();
                        match client.enqueue(request.clone()).await {
                            Ok(_) => break,
                            Err(_) => attempt += 1,
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let deadline = Instant::now() + support::DEADLINE;
    while arrivals(&peer).len() < 200 {
        assert!(Instant::now() < deadline, "deliveries did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // What was recorded as delivered before the kill must never arrive again.
    let (db, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let recorded: BTreeSet<(String, Vec<u8>)> = db
        .query("SELECT peer, id FROM delivery_items WHERE status = 2", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let held_by_a: i64 = db
        .query_one(
            "SELECT count(*) FROM delivery_peers WHERE owner LIKE $1",
            &[&format!("%/{}/%", a.pid())],
        )
        .await
        .unwrap()
        .get(0);
    a.sigkill().unwrap();
    let killed = Instant::now();
    enqueuer.await.unwrap();
    eprintln!("enqueued all {:?} after the kill", killed.elapsed());

    let total = DESTINATIONS * PER_DESTINATION;
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals(&peer).len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} arrived; log:\n{}",
            arrivals(&peer).len(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("all arrived {:?} after the kill", killed.elapsed());
    // Everything is recorded as delivered by the survivor, and then nothing more arrives.
    let mut survivor = clients[1].clone();
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let peers = survivor
            .list_peers(ListPeersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .peers;
        if peers.len() == DESTINATIONS
            && peers
                .iter()
                .all(|p| p.pending == 0 && p.delivered == PER_DESTINATION as u64)
        {
            break;
        }
        assert!(Instant::now() < deadline, "not all recorded as delivered: {peers:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled = arrivals(&peer);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        arrivals(&peer),
        settled,
        "nothing arrives after everything was recorded"
    );

    let mut repeated_after_record = Vec::new();
    for (destination_peer, id) in &recorded {
        let destination = destination_peer.rsplit('p').next().unwrap().parse::<usize>().unwrap();
        let n = u64::from_be_bytes(id[..8].try_into().unwrap());
        let body = format!("envelope {destination}/{n}");
        if settled.get(&body).copied().unwrap_or(0) > 1 {
            repeated_after_record.push(body);
        }
    }
    assert!(
        repeated_after_record.is_empty(),
        "sent again after a recorded success: {repeated_after_record:?}"
    );
    let repeats: u32 = settled.values().map(|n| n - 1).sum();
    eprintln!(
        "delivery failover: {total} delivered, {} recorded before the kill, replica A held {held_by_a} destinations, {repeats} sends repeated (in flight when A died)",
        recorded.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_unavailable_and_delivery_resumes_without_a_restart() {
    let dir = TestDir::new();
    let mut pg = PgServer::start().unwrap();
    let url = pg.create_database("outage").await.unwrap();
    let peer = FakePeer::start().await;
    let service = replica(&dir, "delivery", &url).await;
    let mut client = DeliveryClient::new(support::channel(&service.url()).await.unwrap());
    client.enqueue(request(&peer, 0, 1)).await.unwrap();

    pg.stop();
    let started = Instant::now();
    let err = client.enqueue(request(&peer, 0, 2)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at once");

    pg.restart().unwrap();
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        match client.enqueue(request(&peer, 0, 2)).await {
            Ok(_) => break,
            Err(err) => assert_eq!(err.code(), Code::Unavailable, "{err:?}"),
        }
        assert!(Instant::now() < deadline, "enqueues did not work again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + support::DEADLINE;
    while arrivals(&peer).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both delivered after the outage: {:?}",
            arrivals(&peer)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_trickle_of_work_every_delivery_arrives_exactly_once() {
    let dir = TestDir::new();
    let pg = PgServer::start().unwrap();
    let url = pg.create_database("queue").await.unwrap();
    let peer = FakePeer::start().await;
    let service = replica(&dir, "delivery", &url).await;
    let client = DeliveryClient::new(support::channel(&service.url()).await.unwrap());
    support::load::every_delivery_arrives_once(&client, &peer, 6_000, 300).await;
}
