//! End to end: the real `fedsx delivery` process on a real RocksDB dir, delivering to fake
//! peers on loopback with a millisecond retry schedule.

mod support;

use bytes::Bytes;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{
    ActivityHandoff, Destination, EnqueueActivitiesRequest, EnqueueRequest, ListDeadLettersRequest, PeerStatus,
    PeerStatusRequest, Recipient, RecipientList, RedriveRequest,
};
use std::time::{Duration, Instant};
use support::fake_peer::{Answer, FakePeer};
use support::{Service, TestDir, eventually};
use tonic::transport::Channel;

const FAST: &str = "10ms,10ms,10ms,10ms,10ms";

/// Delivery with a 300 ms send timeout unless `extra` sets one.
async fn start(dir: &TestDir, schedule: &str, extra: &[&str]) -> Service {
    let mut flags = extra.to_vec();
    if !extra.contains(&"--send-timeout") {
        flags.extend_from_slice(&["--send-timeout", "300ms"]);
    }
    support::spawn_delivery(dir, schedule, &flags).await
}

async fn client(service: &Service) -> DeliveryClient<Channel> {
    DeliveryClient::new(support::channel(&service.url()).await.unwrap())
}

fn id(n: u8) -> Bytes {
    Bytes::from(vec![n; 32])
}

fn enqueue(peer: &str, inbox: &str, n: u8) -> EnqueueRequest {
    EnqueueRequest {
        peer: peer.into(),
        inbox_url: inbox.into(),
        envelope: Bytes::from(format!("envelope {n}")),
        id: id(n),
        ..EnqueueRequest::default()
    }
}

async fn status(client: &mut DeliveryClient<Channel>, peer: &str) -> PeerStatus {
    client
        .peer_status(PeerStatusRequest { peer: peer.into() })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_status(
    client: &DeliveryClient<Channel>,
    peer: &str,
    what: &str,
    done: impl Fn(&PeerStatus) -> bool,
) -> PeerStatus {
    eventually(what, || {
        let mut client = client.clone();
        let peer = peer.to_owned();
        let done = &done;
        async move {
            let status = client.peer_status(PeerStatusRequest { peer }).await.ok()?.into_inner();
            done(&status).then_some(status)
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn delivers_once_with_content_type_and_traceparent() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, inbox) = peer.actor("bob");

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut request = tonic::Request::new(enqueue(&actor, &inbox, 1));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    assert!(client.enqueue(request).await.unwrap().into_inner().new);
    assert!(
        !client
            .enqueue(enqueue(&actor, &inbox, 1))
            .await
            .unwrap()
            .into_inner()
            .new,
        "same id, same peer"
    );

    wait_status(&client, &actor, "delivered", |s| s.delivered == 1 && s.pending == 0).await;
    let received = peer.received("/actors/bob/inbox");
    assert_eq!(received.len(), 1, "delivered exactly once");
    assert_eq!(received[0].content_type, "application/vnd.fed-sx.activity");
    assert_eq!(&received[0].body[..], b"envelope 1");
    let sent_trace = received[0].traceparent.split('-').nth(1).unwrap_or_default();
    assert_eq!(
        sent_trace, "0af7651916cd43dd8448eb211c80319c",
        "the enqueuer's trace continues on the peer"
    );

    assert!(
        !client
            .enqueue(enqueue(&actor, &inbox, 1))
            .await
            .unwrap()
            .into_inner()
            .new,
        "after delivery too"
    );
    assert_eq!(peer.received("/actors/bob/inbox").len(), 1);
}

#[tokio::test]
async fn retries_on_the_schedule_then_dead_letters_on_the_sixth_failure() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, inbox) = peer.actor("down");
    peer.answer("/actors/down/inbox", Answer::Status(500));

    client.enqueue(enqueue(&actor, &inbox, 1)).await.unwrap();
    let status = wait_status(&client, &actor, "dead letter", |s| s.dead_letters == 1).await;
    assert_eq!((status.pending, status.delivered), (0, 0));
    assert_eq!(status.last_error, "status 500");
    assert_eq!(peer.received("/actors/down/inbox").len(), 6, "tried six times");
    let dead = client
        .list_dead_letters(ListDeadLettersRequest {
            peer: actor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.dead_letters.len(), 1);
    assert_eq!(
        (dead.dead_letters[0].attempts, dead.dead_letters[0].last_error.as_str()),
        (6, "status 500")
    );
}

#[tokio::test]
async fn a_permanent_refusal_is_dead_lettered_at_once_and_redrive_delivers_later() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, inbox) = peer.actor("gone");
    peer.answer("/actors/gone/inbox", Answer::Status(410));

    client.enqueue(enqueue(&actor, &inbox, 1)).await.unwrap();
    wait_status(&client, &actor, "dead letter", |s| s.dead_letters == 1).await;
    assert_eq!(peer.received("/actors/gone/inbox").len(), 1, "not retried");
    let dead = client
        .list_dead_letters(ListDeadLettersRequest {
            peer: actor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dead.dead_letters[0].attempts, dead.dead_letters[0].last_error.as_str()),
        (1, "status 410")
    );

    peer.answer("/actors/gone/inbox", Answer::Status(202));
    let redriven = client
        .redrive(RedriveRequest {
            peer: actor.clone(),
            ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redriven.redriven, 1);
    let status = wait_status(&client, &actor, "delivered after redrive", |s| s.delivered == 1).await;
    assert_eq!((status.pending, status.dead_letters), (0, 0));
    assert_eq!(peer.received("/actors/gone/inbox").len(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let dir = TestDir::new();
    let service = start(&dir, "50ms,50ms,50ms,50ms,5s", &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, inbox) = peer.actor("busy");
    peer.answer("/actors/busy/inbox", Answer::TooManyRequests(1));

    let sent = now_ms();
    client.enqueue(enqueue(&actor, &inbox, 1)).await.unwrap();
    let status = wait_status(&client, &actor, "first failure", |s| s.head_attempts == 1).await;
    assert_eq!(status.last_error, "status 429");
    assert!(
        status.head_next_retry_ms >= sent + 1000,
        "retry no sooner than Retry-After: {} vs {}",
        status.head_next_retry_ms,
        sent
    );
    peer.answer("/actors/busy/inbox", Answer::Status(202));
    wait_status(&client, &actor, "delivered after the wait", |s| s.delivered == 1).await;
    assert!(now_ms() >= sent + 1000);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn transport_failures_closed_ports_and_hangs_are_retried_with_their_reason() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let closed_actor = format!("http://{closed}/actors/nobody");
    client
        .enqueue(enqueue(&closed_actor, &format!("{closed_actor}/inbox"), 1))
        .await
        .unwrap();

    let peer = FakePeer::start().await;
    let (slow_actor, slow_inbox) = peer.actor("slow");
    peer.answer("/actors/slow/inbox", Answer::Hang);
    client.enqueue(enqueue(&slow_actor, &slow_inbox, 2)).await.unwrap();

    let status = wait_status(&client, &closed_actor, "closed port dead-lettered", |s| {
        s.dead_letters == 1
    })
    .await;
    assert!(status.last_error.starts_with("connect "), "{}", status.last_error);
    let status = wait_status(&client, &slow_actor, "hanging peer dead-lettered", |s| {
        s.dead_letters == 1
    })
    .await;
    assert_eq!(status.last_error, "no answer within 300ms");

    // No inbox URL known: fails with "no peer url".
    let lost = "https://unknown.example/actors/x";
    client.enqueue(enqueue(lost, "", 3)).await.unwrap();
    let status = wait_status(&client, lost, "no peer url", |s| !s.last_error.is_empty()).await;
    assert_eq!(status.last_error, "no peer url");
}

#[tokio::test]
async fn one_activity_failing_never_disturbs_another() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, _) = peer.actor("carol");
    // Same peer queue; one activity's inbox path fails for good, the other's works.
    peer.answer("/fail", Answer::Status(500));
    client
        .enqueue(enqueue(&actor, &format!("{}/fail", peer.base()), 1))
        .await
        .unwrap();
    client
        .enqueue(enqueue(&actor, &format!("{}/actors/carol/inbox", peer.base()), 2))
        .await
        .unwrap();
    let status = wait_status(&client, &actor, "one dead, one delivered", |s| {
        s.dead_letters == 1 && s.delivered == 1
    })
    .await;
    assert_eq!(status.pending, 0);
    assert_eq!(peer.received("/actors/carol/inbox").len(), 1);
    assert_eq!(peer.received("/fail").len(), 6);
}

#[tokio::test]
async fn the_static_peer_url_map_overrides_the_kernels_inbox() {
    let dir = TestDir::new();
    let peer = FakePeer::start().await;
    let actor = "https://elsewhere.example/actors/dora";
    let mapping = format!("{actor}={}", peer.base());
    let service = start(&dir, FAST, &["--peer-url", &mapping]).await;
    let mut client = client(&service).await;
    client
        .enqueue(enqueue(actor, "https://wrong.example/inbox", 1))
        .await
        .unwrap();
    wait_status(&client, actor, "delivered via the map", |s| s.delivered == 1).await;
    assert_eq!(peer.received("/actors/dora/inbox").len(), 1);
}

#[tokio::test]
async fn sigkill_mid_backoff_resumes_where_it_stopped() {
    let dir = TestDir::new();
    let mut service = start(&dir, "1500ms,1500ms,1500ms,1500ms,1500ms", &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (down, down_inbox) = peer.actor("down");
    let (up, up_inbox) = peer.actor("up");
    peer.answer("/actors/down/inbox", Answer::Status(500));
    let gone_peer = FakePeer::start().await;
    let (gone, gone_inbox) = gone_peer.actor("gone");
    gone_peer.answer("/actors/gone/inbox", Answer::Status(404));

    client.enqueue(enqueue(&down, &down_inbox, 1)).await.unwrap();
    client.enqueue(enqueue(&up, &up_inbox, 2)).await.unwrap();
    client.enqueue(enqueue(&gone, &gone_inbox, 3)).await.unwrap();
    let before = wait_status(&client, &down, "first failure", |s| s.head_attempts == 1).await;
    wait_status(&client, &up, "delivered", |s| s.delivered == 1).await;
    wait_status(&client, &gone, "dead", |s| s.dead_letters == 1).await;

    service.sigkill().unwrap();
    let service = start(&dir, "1500ms,1500ms,1500ms,1500ms,1500ms", &[]).await;
    let mut client = self::client(&service).await;
    let after = status(&mut client, &down).await;
    assert_eq!(
        (
            after.pending,
            after.head_attempts,
            after.head_next_retry_ms,
            after.last_error.as_str()
        ),
        (1, 1, before.head_next_retry_ms, "status 500"),
        "pending, attempts, retry time and error survive"
    );
    assert_eq!(status(&mut client, &gone).await.dead_letters, 1, "dead letters survive");
    assert_eq!(status(&mut client, &up).await.delivered, 1);
    assert!(
        !client
            .enqueue(enqueue(&up, &up_inbox, 2))
            .await
            .unwrap()
            .into_inner()
            .new,
        "delivered stays delivered"
    );

    // The timer resumes: once the peer recovers, the retry delivers it.
    peer.answer("/actors/down/inbox", Answer::Status(202));
    let started = Instant::now();
    wait_status(&client, &down, "delivered after restart", |s| {
        s.delivered == 1 && s.pending == 0
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(peer.received("/actors/up/inbox").len(), 1, "nothing delivered twice");
}

#[tokio::test]
async fn bad_enqueues_are_refused_with_a_reason() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let cases = [
        (
            EnqueueRequest {
                peer: "bob".into(),
                ..enqueue("x", "", 1)
            },
            "peer \"bob\" is not an http(s) URL",
        ),
        (
            EnqueueRequest {
                id: Bytes::from_static(b"short"),
                ..enqueue("https://a.example/actors/b", "", 1)
            },
            "id is 5 bytes, must be 32",
        ),
        (
            EnqueueRequest {
                envelope: Bytes::new(),
                ..enqueue("https://a.example/actors/b", "", 1)
            },
            "envelope is 0 bytes, must be 1 to 262144",
        ),
        (
            enqueue("https://a.example/actors/b", "ftp://x", 1),
            "inbox url \"ftp://x\" is not an http(s) URL",
        ),
    ];
    for (request, reason) in cases {
        let err = client.enqueue(request).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::InvalidArgument, reason));
    }
    let err = client
        .peer_status(PeerStatusRequest {
            peer: "https://a.example/actors/b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "nothing was queued");
}

/// A damaged write-ahead log or table file makes delivery refuse to start (exit 1, a line
/// naming the damaged file) instead of forgetting queued or delivered activities.
#[tokio::test]
async fn damaged_wal_or_table_refuses_to_start() {
    let dir = TestDir::new();
    let data = dir.join("delivery");
    let mut service = start(&dir, "1h,1h,1h,1h,1h", &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, inbox) = peer.actor("down");
    peer.answer("/actors/down/inbox", Answer::Status(500));
    for n in 1..=20 {
        client.enqueue(enqueue(&actor, &inbox, n)).await.unwrap();
    }
    service.sigkill().unwrap();
    let intact = dir.join("intact");
    support::copy_dir(&data, &intact);

    let refused = |damaged: &std::path::Path| {
        let (status, stderr) = support::run_to_exit(&[
            "delivery",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        let file = damaged.file_name().unwrap().to_str().unwrap();
        assert!(
            last.contains(&format!("the delivery queue data in {} is damaged", data.display())) && last.contains(file),
            "{stderr}"
        );
    };
    let wal = support::files_ending(&data, ".log").remove(0);
    support::flip_byte(&wal, 0.6);
    refused(&wal);

    support::copy_dir(&intact, &data);
    support::flush_to_tables(&data);
    let table = support::files_ending(&data, ".sst").remove(0);
    support::flip_byte(&table, 0.3);
    refused(&table);
}

/// ListPeers and ListDeadLetters page (AIP-158): every peer and every dead letter once, in
/// key order, no page larger than asked.
#[tokio::test]
async fn peers_and_dead_letters_page() {
    use fedsx_proto::delivery::v1::ListPeersRequest;
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let mut actors = Vec::new();
    for name in ["p1", "p2", "p3", "p4", "p5"] {
        let (actor, inbox) = peer.actor(name);
        peer.answer(&format!("/actors/{name}/inbox"), Answer::Status(410));
        client.enqueue(enqueue(&actor, &inbox, 1)).await.unwrap();
        actors.push((actor, inbox));
    }
    let (gone, gone_inbox) = &actors[0];
    for n in 2..=7 {
        client.enqueue(enqueue(gone, gone_inbox, n)).await.unwrap();
    }
    wait_status(&client, gone, "seven dead letters", |s| s.dead_letters == 7).await;

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListPeersRequest {
            page_size: 2,
            page_token: token,
        };
        let page = client.list_peers(request).await.unwrap().into_inner();
        assert!(page.peers.len() <= 2);
        listed.extend(page.peers.into_iter().map(|p| p.peer));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<String> = actors.iter().map(|(a, _)| a.clone()).collect();
    expected.sort();
    assert_eq!(listed, expected);

    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListDeadLettersRequest {
            peer: gone.clone(),
            page_size: 3,
            page_token: token,
        };
        let page = client.list_dead_letters(request).await.unwrap().into_inner();
        assert!(page.dead_letters.len() <= 3);
        ids.extend(page.dead_letters.into_iter().map(|d| d.id[0]));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, (1..=7).collect::<Vec<u8>>());

    let bad = ListPeersRequest {
        page_size: 2,
        page_token: "zz".into(),
    };
    let status = client.list_peers(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_in_flight_over_all_destinations_stay_under_the_global_cap() {
    let dir = TestDir::new();
    let service = start(
        &dir,
        "10s,10s,10s,10s,10s",
        &["--max-requests", "2", "--send-timeout", "3s"],
    )
    .await;
    let mut client = client(&service).await;
    let mut peers = Vec::new();
    for n in 0..4u8 {
        let peer = FakePeer::start().await;
        let (_, inbox) = peer.actor("bob");
        peer.answer("/actors/bob/inbox", Answer::Hang);
        client.enqueue(enqueue(&peer.base(), &inbox, n)).await.unwrap();
        peers.push(peer);
    }
    let arrived = || {
        peers
            .iter()
            .map(|p| p.received("/actors/bob/inbox").len())
            .sum::<usize>()
    };
    eventually("two sends arriving", || async { (arrived() >= 2).then_some(()) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(arrived(), 2, "four destinations, two requests at a time");
    // Once those time out, the other two go.
    eventually("the other two sends", || async { (arrived() >= 4).then_some(()) })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_delivered_record_is_forgotten_after_the_retention() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &["--retention", "1s"]).await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (_, inbox) = peer.actor("bob");
    assert!(
        client
            .enqueue(enqueue(&peer.base(), &inbox, 1))
            .await
            .unwrap()
            .into_inner()
            .new
    );
    eventually("the first delivery", || async {
        (peer.received("/actors/bob/inbox").len() == 1).then_some(())
    })
    .await
    .unwrap();
    assert!(
        !client
            .enqueue(enqueue(&peer.base(), &inbox, 1))
            .await
            .unwrap()
            .into_inner()
            .new,
        "within the retention: the same delivery"
    );
    let again = eventually("the record expired", || {
        let mut client = client.clone();
        let request = enqueue(&peer.base(), &inbox, 1);
        async move { client.enqueue(request).await.unwrap().into_inner().new.then_some(()) }
    })
    .await;
    assert!(again.is_ok());
    eventually("the second delivery", || async {
        (peer.received("/actors/bob/inbox").len() == 2).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_trickle_of_work_every_delivery_arrives_exactly_once() {
    let dir = TestDir::new();
    let peer = FakePeer::start().await;
    let service = start(&dir, FAST, &[]).await;
    support::load::every_delivery_arrives_once(&client(&service).await, &peer, 6_000, 300).await;
}

/// A destination's worker with a send in flight still sends a retry when its time comes:
/// it does not wait for the hanging send to end first.
#[tokio::test]
async fn a_retry_goes_out_on_time_while_another_senders_send_hangs() {
    let dir = TestDir::new();
    // A long lease: its renewal (every third of it) wakes the worker too.
    let service = start(
        &dir,
        "300ms,300ms,300ms,300ms,300ms",
        &["--send-timeout", "30s", "--lease", "120s"],
    )
    .await;
    let mut client = client(&service).await;
    let peer = FakePeer::start().await;
    let (actor, _) = peer.actor("dora");
    peer.answer("/hang", Answer::Hang);
    peer.answer("/flaky", Answer::Status(503));
    let mut hanging = enqueue(&actor, &format!("{}/hang", peer.base()), 1);
    hanging.sender = "https://a.example/actors/slow".into();
    client.enqueue(hanging).await.unwrap();
    peer.received_at_least("/hang", 1, "the hanging send").await.unwrap();
    let mut flaky = enqueue(&actor, &format!("{}/flaky", peer.base()), 2);
    flaky.sender = "https://a.example/actors/quick".into();
    client.enqueue(flaky).await.unwrap();
    peer.received_at_least("/flaky", 1, "the first attempt").await.unwrap();
    let failed = Instant::now();
    peer.answer("/flaky", Answer::Status(202));
    let status = wait_status(&client, &actor, "the retry delivered", |s| s.delivered == 1).await;
    assert!(
        failed.elapsed() < Duration::from_secs(10),
        "retried {:?} after the failure, not when its time came (300 ms)",
        failed.elapsed()
    );
    assert_eq!(status.pending, 1, "the hanging send is still pending");
    assert_eq!(peer.received("/flaky").len(), 2);
}

/// An activity for several destination nodes in one call, its envelope once and each
/// recipient list once: every valid destination gets it once with its own recipients' node
/// inbox, a destination naming no list is refused alone, and the same call again queues
/// nothing new.
#[tokio::test]
async fn enqueue_activities_queues_each_destination_of_each_activity_once() {
    let dir = TestDir::new();
    let service = start(&dir, FAST, &[]).await;
    let mut client = client(&service).await;
    let (b, c) = (FakePeer::start().await, FakePeer::start().await);
    let list = |peer: &FakePeer, names: &[&str]| RecipientList {
        recipients: names
            .iter()
            .map(|name| Recipient {
                actor: peer.actor(name).0,
                inbox_url: String::new(),
            })
            .collect(),
    };
    let to = |peer: &FakePeer, recipients: u32| Destination {
        peer: peer.base(),
        inbox_url: format!("{}/inbox", peer.base()),
        recipients,
        undeliverable: String::new(),
    };
    let activity = |n: u8, destinations: Vec<Destination>| ActivityHandoff {
        id: id(n),
        sender: "http://127.0.0.1:1/actors/alice".into(),
        envelope: Bytes::from(format!("envelope {n}")),
        traceparent: String::new(),
        destinations,
    };
    let request = EnqueueActivitiesRequest {
        activities: vec![
            activity(1, vec![to(&b, 1), to(&c, 2), to(&c, 7)]),
            activity(2, vec![to(&b, 1), to(&c, 2)]),
        ],
        recipient_lists: vec![list(&b, &["bob", "bea"]), list(&c, &["carol"])],
    };
    let results = client
        .enqueue_activities(request.clone())
        .await
        .unwrap()
        .into_inner()
        .results;
    let answers: Vec<(bool, &str)> = results.iter().map(|r| (r.new, r.refused.as_str())).collect();
    assert_eq!(
        answers,
        [
            (true, ""),
            (true, ""),
            (false, "recipients 7 names no list (the request has 2)"),
            (true, ""),
            (true, ""),
        ]
    );
    for peer in [&b, &c] {
        wait_status(&client, &peer.base(), "both delivered", |s| {
            s.delivered == 2 && s.pending == 0
        })
        .await;
        let bodies: Vec<Bytes> = peer.received("/inbox").into_iter().map(|r| r.body).collect();
        assert_eq!(
            bodies,
            [Bytes::from("envelope 1"), Bytes::from("envelope 2")],
            "in order, once each"
        );
    }
    let again = client.enqueue_activities(request).await.unwrap().into_inner().results;
    assert!(
        again.iter().all(|r| !r.new),
        "the same call again is nothing new: {again:?}"
    );
    assert_eq!(status(&mut client, &c.base()).await.delivered, 2);

    let too_many = EnqueueActivitiesRequest {
        activities: vec![activity(3, (0..10_001).map(|_| to(&b, 0)).collect())],
        recipient_lists: Vec::new(),
    };
    let refused = client.enqueue_activities(too_many).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "10001 destinations in one request, at most 10000");
    assert_eq!(status(&mut client, &b.base()).await.pending, 0, "nothing queued");
}
