//! End to end: the real `fedsx log-store` process on a real RocksDB data dir.

mod support;

use bytes::Bytes;
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{
    AppendRequest, AppendResponse, NewEntry, ReadRequest, StreamId, StreamKind, SubscribeRequest, TipRequest,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use support::{Service, TestDir, eventually};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

async fn start(dir: &TestDir) -> Service {
    start_on(dir.path(), &dir.join("log-store")).await
}

async fn start_on(log_dir: &Path, data_dir: &Path) -> Service {
    let data_dir = data_dir.to_str().unwrap();
    let args = ["log-store", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
    Service::spawn("log-store", &args, log_dir).await.unwrap()
}

async fn client(service: &Service) -> LogStoreClient<Channel> {
    LogStoreClient::connect(service.url()).await.unwrap()
}

fn stream(actor: &str, kind: StreamKind) -> Option<StreamId> {
    Some(StreamId {
        actor: actor.into(),
        kind: kind.into(),
    })
}

fn entry(id: &str, data: &str) -> NewEntry {
    NewEntry {
        id: Bytes::copy_from_slice(id.as_bytes()),
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

async fn append(
    client: &mut LogStoreClient<Channel>,
    actor: &str,
    kind: StreamKind,
    entries: Vec<NewEntry>,
    expected_tip: Option<u64>,
) -> Result<AppendResponse, tonic::Status> {
    let request = AppendRequest {
        stream: stream(actor, kind),
        entries,
        expected_tip,
    };
    client.append(request).await.map(|r| r.into_inner())
}

async fn tip(client: &mut LogStoreClient<Channel>, actor: &str, kind: StreamKind) -> u64 {
    client
        .tip(TipRequest {
            stream: stream(actor, kind),
        })
        .await
        .unwrap()
        .into_inner()
        .tip
}

async fn read_all(client: &mut LogStoreClient<Channel>, actor: &str, kind: StreamKind) -> Vec<(u64, Bytes)> {
    support::read_ids(client, stream(actor, kind).unwrap()).await
}

#[tokio::test]
async fn append_read_tip_and_independent_streams() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut client = client(&service).await;

    assert_eq!(
        tip(&mut client, "alice", StreamKind::Outbox).await,
        0,
        "a stream never written has tip 0"
    );

    let answer = append(
        &mut client,
        "alice",
        StreamKind::Outbox,
        vec![entry("a", "one"), entry("b", "two"), entry("c", "three")],
        None,
    )
    .await
    .unwrap();
    let seqs: Vec<u64> = answer.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(answer.entries.iter().all(|e| e.appended));
    assert_eq!(answer.tip, 3);

    let read = ReadRequest {
        stream: stream("alice", StreamKind::Outbox),
        after_seq: 1,
        limit: 10,
    };
    let page = client.read(read).await.unwrap().into_inner();
    assert_eq!(page.tip, 3);
    let got: Vec<(u64, &[u8], &[u8])> = page.entries.iter().map(|e| (e.seq, &e.id[..], &e.data[..])).collect();
    assert_eq!(got, [(2, &b"b"[..], &b"two"[..]), (3, &b"c"[..], &b"three"[..])]);

    let read = ReadRequest {
        stream: stream("alice", StreamKind::Outbox),
        after_seq: 0,
        limit: 2,
    };
    assert_eq!(
        client.read(read).await.unwrap().into_inner().entries.len(),
        2,
        "limit is honoured"
    );

    // Inbox and outbox of one actor, and the same kind of two actors, are independent.
    assert_eq!(tip(&mut client, "alice", StreamKind::Inbox).await, 0);
    let answer = append(&mut client, "alice", StreamKind::Inbox, vec![entry("a", "in")], None)
        .await
        .unwrap();
    assert_eq!(answer.entries[0].seq, 1);
    assert_eq!(tip(&mut client, "alice", StreamKind::Outbox).await, 3);
    assert_eq!(tip(&mut client, "alicex", StreamKind::Outbox).await, 0);
    assert_eq!(tip(&mut client, "alic", StreamKind::Outbox).await, 0);
}

#[tokio::test]
async fn duplicate_ids_keep_their_seq_and_leave_the_tip() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut client = client(&service).await;

    append(
        &mut client,
        "bob",
        StreamKind::Inbox,
        vec![entry("follow-1", "x")],
        None,
    )
    .await
    .unwrap();
    let again = append(
        &mut client,
        "bob",
        StreamKind::Inbox,
        vec![entry("follow-1", "x")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.entries[0].seq, again.entries[0].appended, again.tip),
        (1, false, 1)
    );

    // In one batch: a new id, a known one, and the new one repeated.
    let mixed = append(
        &mut client,
        "bob",
        StreamKind::Inbox,
        vec![entry("n", "x"), entry("follow-1", "x"), entry("n", "x")],
        None,
    )
    .await
    .unwrap();
    let got: Vec<(u64, bool)> = mixed.entries.iter().map(|e| (e.seq, e.appended)).collect();
    assert_eq!(got, [(2, true), (1, false), (2, false)]);
    assert_eq!(mixed.tip, 2);
    assert_eq!(
        read_all(&mut client, "bob", StreamKind::Inbox).await.len(),
        2,
        "nothing appended twice"
    );
    let lookup = |id: &str| fedsx_proto::logstore::v1::LookupRequest {
        stream: stream("bob", StreamKind::Inbox),
        id: Bytes::copy_from_slice(id.as_bytes()),
    };
    assert_eq!(client.lookup(lookup("n")).await.unwrap().into_inner().seq, 2);
    assert_eq!(client.lookup(lookup("never")).await.unwrap().into_inner().seq, 0);

    // A pure retry succeeds even with the expected tip it had the first time.
    let retry = append(&mut client, "bob", StreamKind::Inbox, vec![entry("n", "x")], Some(1))
        .await
        .unwrap();
    assert_eq!(
        (retry.entries[0].seq, retry.entries[0].appended, retry.tip),
        (2, false, 2)
    );
}

#[tokio::test]
async fn expected_tip_conflict_appends_nothing_and_reports_the_tip() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut client = client(&service).await;

    append(
        &mut client,
        "carol",
        StreamKind::Outbox,
        vec![entry("1", "a"), entry("2", "b")],
        Some(0),
    )
    .await
    .unwrap();
    let conflict = append(&mut client, "carol", StreamKind::Outbox, vec![entry("3", "c")], Some(1))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::FailedPrecondition);
    assert_eq!(conflict.message(), "expected tip 1 but the stream's tip is 2");
    assert_eq!(conflict.metadata().get("fedsx-tip").unwrap().to_str().unwrap(), "2");
    assert_eq!(tip(&mut client, "carol", StreamKind::Outbox).await, 2);

    let ok = append(&mut client, "carol", StreamKind::Outbox, vec![entry("3", "c")], Some(2))
        .await
        .unwrap();
    assert_eq!(ok.tip, 3);
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_changes_nothing() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut client = client(&service).await;
    append(&mut client, "dave", StreamKind::Outbox, vec![entry("1", "a")], None)
        .await
        .unwrap();

    let huge = NewEntry {
        id: Bytes::from_static(b"big"),
        data: Bytes::from(vec![0u8; (1 << 20) + 1]),
    };
    let cases: Vec<(AppendRequest, &str)> = vec![
        (
            AppendRequest {
                stream: None,
                entries: vec![entry("x", "a")],
                expected_tip: None,
            },
            "stream is missing",
        ),
        (
            AppendRequest {
                stream: stream("", StreamKind::Outbox),
                entries: vec![entry("x", "a")],
                expected_tip: None,
            },
            "stream actor is empty",
        ),
        (
            AppendRequest {
                stream: Some(StreamId {
                    actor: "dave".into(),
                    kind: 0,
                }),
                entries: vec![entry("x", "a")],
                expected_tip: None,
            },
            "unknown stream kind 0",
        ),
        (
            AppendRequest {
                stream: Some(StreamId {
                    actor: "dave".into(),
                    kind: 99,
                }),
                entries: vec![entry("x", "a")],
                expected_tip: None,
            },
            "unknown stream kind 99",
        ),
        (
            AppendRequest {
                stream: stream("dave", StreamKind::Outbox),
                entries: vec![],
                expected_tip: None,
            },
            "append has no entries",
        ),
        (
            AppendRequest {
                stream: stream("dave", StreamKind::Outbox),
                entries: vec![entry("ok", "a"), entry("", "a")],
                expected_tip: None,
            },
            "entry 1: id is 0 bytes, must be 1 to 64",
        ),
        (
            AppendRequest {
                stream: stream("dave", StreamKind::Outbox),
                entries: vec![entry("ok", "a"), huge],
                expected_tip: None,
            },
            "entry 1: data is 1048577 bytes, over the limit of 1048576",
        ),
        (
            AppendRequest {
                stream: stream(&"x".repeat(257), StreamKind::Outbox),
                entries: vec![entry("x", "a")],
                expected_tip: None,
            },
            "stream actor is 257 bytes, over the limit of 256",
        ),
    ];
    for (request, reason) in cases {
        let err = client.append(request).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, reason));
    }
    assert_eq!(
        tip(&mut client, "dave", StreamKind::Outbox).await,
        1,
        "nothing appended by bad input"
    );
    assert_eq!(read_all(&mut client, "dave", StreamKind::Outbox).await.len(), 1);

    let err = client.tip(TipRequest { stream: None }).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "stream is missing")
    );
    let err = client
        .read(ReadRequest {
            stream: Some(StreamId {
                actor: "dave".into(),
                kind: 7,
            }),
            after_seq: 0,
            limit: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "unknown stream kind 7")
    );

    // A lease asked for too short a time is refused and not taken.
    let lease = |ttl_ms| fedsx_proto::logstore::v1::AcquireLeaseRequest {
        name: "partition-1".into(),
        holder: "kernel-a".into(),
        ttl_ms,
        data: Bytes::new(),
    };
    let err = client.acquire_lease(lease(0)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "lease ttl_ms must be 100 to 600000 (got 0)")
    );
    let listed = client
        .list_leases(fedsx_proto::logstore::v1::ListLeasesRequest { prefix: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.leases.is_empty(), "nothing taken: {listed:?}");
    let taken = client.acquire_lease(lease(5_000)).await.unwrap().into_inner();
    assert_eq!((taken.holder.as_str(), taken.epoch), ("kernel-a", 1));
}

/// Runs `writers` tasks each appending one entry at a time until `stop` is set or `count`
/// appends are done; returns every acknowledged (id → seq).
async fn appenders(
    service: &Service,
    writers: usize,
    count: usize,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = client(service).await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..count {
                let id = format!("w{w}-{i}");
                match append(
                    &mut client,
                    "shared",
                    StreamKind::Outbox,
                    vec![entry(&id, "payload")],
                    None,
                )
                .await
                {
                    Ok(answer) => {
                        acked.lock().unwrap().insert(id, answer.entries[0].seq);
                        mine.push(answer.entries[0].seq);
                    }
                    Err(_) => break,
                }
            }
            mine
        }));
    }
    tasks
}

#[tokio::test]
async fn concurrent_appenders_get_gap_free_distinct_seqs() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let tasks = appenders(&service, 8, 40, acked.clone()).await;
    for task in tasks {
        let mine = task.await.unwrap();
        assert_eq!(mine.len(), 40);
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "one appender's entries keep their order"
        );
    }
    let mut seqs: Vec<u64> = acked.lock().unwrap().values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=320).collect::<Vec<u64>>(), "seqs 1..N, no gap, no duplicate");

    let mut client = client(&service).await;
    let stored = read_all(&mut client, "shared", StreamKind::Outbox).await;
    let acked = acked.lock().unwrap();
    for (seq, id) in &stored {
        assert_eq!(acked[std::str::from_utf8(id).unwrap()], *seq);
    }
    assert_eq!(stored.len(), 320);
}

#[tokio::test]
async fn sigkill_during_concurrent_appends_loses_nothing_acknowledged() {
    let dir = TestDir::new();
    let mut service = start(&dir).await;
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let tasks = appenders(&service, 8, 100_000, acked.clone()).await;
    eventually("300 acknowledged appends", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await
    .unwrap();
    service.sigkill().unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let service = start(&dir).await;
    let mut client = client(&service).await;
    let stored = read_all(&mut client, "shared", StreamKind::Outbox).await;
    let tip = tip(&mut client, "shared", StreamKind::Outbox).await;
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=tip).collect::<Vec<u64>>(), "entries 1..tip with no gap");
    let by_id: BTreeMap<String, u64> = stored
        .iter()
        .map(|(seq, id)| (String::from_utf8(id.to_vec()).unwrap(), *seq))
        .collect();
    for (id, seq) in &acked {
        assert_eq!(by_id.get(id), Some(seq), "acknowledged {id} survives at seq {seq}");
    }
    assert!(
        tip >= acked.values().copied().max().unwrap(),
        "tip never below the highest acknowledged seq"
    );
}

#[tokio::test]
async fn sigterm_exits_zero_and_keeps_the_data() {
    let dir = TestDir::new();
    let mut service = start(&dir).await;
    let mut client = client(&service).await;
    append(&mut client, "erin", StreamKind::Outbox, vec![entry("1", "a")], None)
        .await
        .unwrap();
    // An open subscription must not hold the shutdown up; it ends with the server.
    let request = SubscribeRequest {
        stream: stream("erin", StreamKind::Outbox),
        after_seq: 0,
    };
    let mut tail = client.subscribe(request).await.unwrap().into_inner();
    assert_eq!(tail.next().await.unwrap().unwrap().seq, 1);
    let status = service.sigterm().await.unwrap();
    assert_eq!(status.code(), Some(0), "clean exit; log:\n{}", service.log_tail());
    let ended = tokio::time::timeout(support::DEADLINE, tail.next()).await.unwrap();
    assert!(!matches!(ended, Some(Ok(_))), "the subscription ends: {ended:?}");

    let service = start(&dir).await;
    let mut client = self::client(&service).await;
    assert_eq!(tip(&mut client, "erin", StreamKind::Outbox).await, 1);
}

#[tokio::test]
async fn subscribe_sees_existing_then_new_entries() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut client = client(&service).await;
    append(
        &mut client,
        "fred",
        StreamKind::Inbox,
        vec![entry("1", "a"), entry("2", "b")],
        None,
    )
    .await
    .unwrap();

    let request = SubscribeRequest {
        stream: stream("fred", StreamKind::Inbox),
        after_seq: 1,
    };
    let mut entries = client.subscribe(request).await.unwrap().into_inner();
    assert_eq!(entries.next().await.unwrap().unwrap().seq, 2);

    // Appends to other streams do not show up; an append to ours does.
    append(&mut client, "fred", StreamKind::Outbox, vec![entry("o", "x")], None)
        .await
        .unwrap();
    append(&mut client, "fred", StreamKind::Inbox, vec![entry("3", "c")], None)
        .await
        .unwrap();
    let next = tokio::time::timeout(support::DEADLINE, entries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((next.seq, &next.id[..], &next.data[..]), (3, &b"3"[..], &b"c"[..]));
}

#[tokio::test]
async fn health_and_reflection_name_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(support::channel(&service.url()).await.unwrap());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "fedsx.logstore.v1.LogStore".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        answer.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let mut reflection = ServerReflectionClient::new(support::channel(&service.url()).await.unwrap());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"fedsx.logstore.v1.LogStore".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

#[tokio::test]
async fn a_data_dir_it_cannot_own_stops_the_process_with_one_line() {
    let dir = TestDir::new();
    let data = dir.join("log-store");
    let _running = start(&dir).await;

    // Locked by the running process.
    let (status, stderr) = support::run_to_exit(&[
        "log-store",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(status.code(), Some(1));
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("fedsx: --data-dir ") && last.contains("lock"),
        "{stderr}"
    );

    // A directory holding something else.
    let foreign = dir.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let (status, stderr) = support::run_to_exit(&[
        "log-store",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        foreign.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("holds no log-store database; refusing to start over it"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&foreign).unwrap().count(),
        1,
        "nothing written into it"
    );

    // A corrupt database.
    let corrupt = dir.join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("CURRENT"), "MANIFEST-999999\n").unwrap();
    let (status, stderr) = support::run_to_exit(&[
        "log-store",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        corrupt.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("cannot open the log-store database in"),
        "{stderr}"
    );

    // A bad flag names itself.
    let (status, stderr) = support::run_to_exit(&["log-store", "--listen", "nowhere"]).unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--listen"), "{stderr}");
}

/// A damaged write-ahead log or table file makes the log-store refuse to start (exit 1, a
/// line naming the damaged file and the way out) instead of serving a shorter log whose seqs
/// it would hand out again.
#[tokio::test]
async fn damaged_wal_or_table_refuses_to_start() {
    let dir = TestDir::new();
    let data = dir.join("log-store");
    let mut service = start(&dir).await;
    let mut client = client(&service).await;
    for n in 1..=20 {
        let id = format!("{n}");
        append(
            &mut client,
            "erin",
            StreamKind::Outbox,
            vec![entry(&id, "acknowledged")],
            None,
        )
        .await
        .unwrap();
    }
    // Acknowledged means synced: the entries are in the write-ahead log only.
    service.sigkill().unwrap();
    let intact = dir.join("intact");
    support::copy_dir(&data, &intact);

    let refused = |what: &str| {
        let (status, stderr) = support::run_to_exit(&[
            "log-store",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(status.code(), Some(1), "{what}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default().to_owned();
        assert!(
            last.contains(&format!("the log-store data in {} is damaged", data.display())) && last.contains("Restore"),
            "{what}: {stderr}"
        );
        last
    };

    let wal = support::files_ending(&data, ".log").remove(0);
    support::flip_byte(&wal, 0.6);
    let said = refused("flipped WAL byte");
    assert!(
        said.contains(wal.file_name().unwrap().to_str().unwrap()),
        "names the file: {said}"
    );

    std::fs::remove_dir_all(&data).unwrap();
    support::copy_dir(&intact, &data);
    support::flush_to_tables(&data);
    let table = support::files_ending(&data, ".sst").remove(0);
    support::flip_byte(&table, 0.3);
    let said = refused("flipped table byte");
    assert!(
        said.contains(table.file_name().unwrap().to_str().unwrap()),
        "names the file: {said}"
    );

    // The intact copy serves every acknowledged entry.
    std::fs::remove_dir_all(&data).unwrap();
    support::copy_dir(&intact, &data);
    let service = start(&dir).await;
    let mut client = self::client(&service).await;
    assert_eq!(read_all(&mut client, "erin", StreamKind::Outbox).await.len(), 20);
}

/// A request over the 16 MiB message limit is RESOURCE_EXHAUSTED (not tonic's OUT_OF_RANGE),
/// as docs/grpc-api.md says, and appends nothing.
#[tokio::test]
async fn a_request_over_the_message_limit_is_resource_exhausted() {
    let dir = TestDir::new();
    let service = start(&dir).await;
    let mut client = client(&service).await.max_encoding_message_size(64 << 20);
    let entries: Vec<NewEntry> = (0..17)
        .map(|n| NewEntry {
            id: Bytes::from(format!("big-{n}")),
            data: Bytes::from(vec![7u8; 1 << 20]),
        })
        .collect();
    let status = append(&mut client, "gus", StreamKind::Outbox, entries, None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert_eq!(tip(&mut client, "gus", StreamKind::Outbox).await, 0);
}
