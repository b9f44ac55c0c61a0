//! The one conformance suite every [`LogStorage`] engine passes, written once and run
//! against each (restate's loglet tests are the model): ordering, limits, idempotence under
//! a retried append whose answer was lost, expected-tip conflicts, racing writers, empty
//! and missing streams, bad input, wake-ups, restart, and leases (one holder, epochs,
//! lapse, release, racing takers, restart). A new engine is done when the suite
//! passes; add it at the bottom with one `conformance!` line.

use crate::error::StoreError;
use crate::storage::{Appended, LogStorage, Notice, Page};
use crate::stream::{Kind, NewEntry, StreamId, limits};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

/// An engine under test: opens the store called `name` (created empty on first use; the
/// same name again is the same data, as after a restart).
pub(crate) trait Engine: Sync {
    type Store: LogStorage;
    fn open(&self, name: &str) -> impl Future<Output = Self::Store> + Send;
}

fn entry(id: &str) -> NewEntry {
    NewEntry {
        id: Bytes::copy_from_slice(id.as_bytes()),
        data: Bytes::copy_from_slice(format!("data of {id}").as_bytes()),
    }
}

fn entries(prefix: &str, n: usize) -> Vec<NewEntry> {
    (0..n).map(|i| entry(&format!("{prefix}-{i}"))).collect()
}

fn outbox(actor: &str) -> StreamId {
    StreamId::new(actor, Kind::Outbox).unwrap()
}

fn seqs(appended: &[Appended]) -> Vec<u64> {
    appended.iter().map(|a| a.seq).collect()
}

/// Every entry of `stream`, paging through reads.
async fn read_all<S: LogStorage>(store: &S, stream: &StreamId) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |(seq, _)| *seq);
        let page = store.read(stream.clone(), after, 0).await.unwrap();
        if page.entries.is_empty() {
            return out;
        }
        out.extend(page.entries.into_iter().map(|e| (e.seq, e.id)));
    }
}

pub(crate) async fn seqs_start_at_one_and_tips_are_per_stream<E: Engine>(engine: &E) {
    let store = engine.open("seqs").await;
    assert_eq!(store.tip(outbox("ab")).await.unwrap(), 0);
    let outcome = store.append(outbox("ab"), entries("x", 3), None).await.unwrap();
    assert_eq!(seqs(&outcome.entries), [1, 2, 3]);
    assert!(outcome.entries.iter().all(|a| a.appended));
    assert_eq!(outcome.tip, 3);
    // Another kind of the same actor, and an actor whose name extends this one, are apart.
    assert_eq!(store.tip(StreamId::new("ab", Kind::Inbox).unwrap()).await.unwrap(), 0);
    assert_eq!(store.tip(outbox("abc")).await.unwrap(), 0);
    let other = store.append(outbox("abc"), entries("x", 1), None).await.unwrap();
    assert_eq!(seqs(&other.entries), [1], "ids are per stream");
    let next = store.append(outbox("ab"), entries("y", 2), Some(3)).await.unwrap();
    assert_eq!(seqs(&next.entries), [4, 5]);
    let all = read_all(&store, &outbox("ab")).await;
    assert_eq!(all.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(&all[3].1[..], b"y-0", "entries keep their order and ids");
}

pub(crate) async fn reads_are_bounded_in_entries_and_bytes<E: Engine>(engine: &E) {
    let store = engine.open("limits").await;
    let stream = outbox("many");
    for batch in 0..2 {
        let outcome = store
            .append(stream.clone(), entries(&format!("b{batch}"), 550), None)
            .await
            .unwrap();
        assert_eq!(outcome.tip, 550 * (batch + 1));
    }
    let page = store.read(stream.clone(), 0, 0).await.unwrap();
    assert_eq!(page.entries.len(), limits::DEFAULT_READ_LIMIT, "0 asks for the default");
    assert_eq!(page.tip, 1100);
    let page = store.read(stream.clone(), 0, 5000).await.unwrap();
    assert_eq!(page.entries.len(), limits::MAX_READ_LIMIT, "capped");
    let page = store.read(stream.clone(), 1095, 10).await.unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1096, 1097, 1098, 1099, 1100]
    );
    let page = store.read(stream.clone(), 1100, 10).await.unwrap();
    assert_eq!((page.entries.len(), page.tip), (0, 1100), "after the tip: empty");
    let page = store.read(stream.clone(), 5000, 10).await.unwrap();
    assert_eq!((page.entries.len(), page.tip), (0, 1100), "far after the tip: empty");

    let big = outbox("big");
    let large: Vec<NewEntry> = (0..6)
        .map(|i| NewEntry {
            id: Bytes::from(format!("big-{i}")),
            data: Bytes::from(vec![i as u8; limits::MAX_ENTRY_BYTES]),
        })
        .collect();
    store.append(big.clone(), large, None).await.unwrap();
    let page = store.read(big.clone(), 0, 100).await.unwrap();
    assert_eq!(
        page.entries.len(),
        limits::MAX_READ_BYTES / limits::MAX_ENTRY_BYTES,
        "bytes bound a page"
    );
    assert_eq!(page.entries[3].data[0], 3);
    let rest = store.read(big, 4, 100).await.unwrap();
    assert_eq!(rest.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6]);
}

pub(crate) async fn missing_streams_are_empty_with_tip_zero<E: Engine>(engine: &E) {
    let store = engine.open("missing").await;
    let stream = StreamId::new("nobody", Kind::Flow).unwrap();
    assert_eq!(store.tip(stream.clone()).await.unwrap(), 0);
    assert_eq!(
        store.read(stream.clone(), 0, 0).await.unwrap(),
        Page {
            entries: vec![],
            tip: 0
        }
    );
    assert_eq!(store.lookup(stream, Bytes::from_static(b"x")).await.unwrap(), None);
}

pub(crate) async fn a_repeated_id_answers_its_first_seq_and_writes_nothing<E: Engine>(engine: &E) {
    let store = engine.open("idempotence").await;
    let stream = outbox("idem");
    let first = store.append(stream.clone(), entries("a", 2), Some(0)).await.unwrap();
    assert_eq!(first.tip, 2);
    // The answer was lost; the caller sends the same append again, with the same
    // (now stale) expected tip: it gets the same seqs and nothing is written.
    let again = store.append(stream.clone(), entries("a", 2), Some(0)).await.unwrap();
    assert_eq!(
        again.entries,
        [
            Appended {
                seq: 1,
                appended: false
            },
            Appended {
                seq: 2,
                appended: false
            }
        ]
    );
    assert_eq!(again.tip, 2);
    // Known and new ids in one append, and one id twice in one append.
    let mixed = store
        .append(stream.clone(), vec![entry("a-1"), entry("n"), entry("n")], Some(2))
        .await
        .unwrap();
    assert_eq!(
        mixed.entries,
        [
            Appended {
                seq: 2,
                appended: false
            },
            Appended { seq: 3, appended: true },
            Appended {
                seq: 3,
                appended: false
            }
        ]
    );
    assert_eq!(store.tip(stream.clone()).await.unwrap(), 3);
    assert_eq!(read_all(&store, &stream).await.len(), 3, "nothing duplicated");
    assert_eq!(
        store.lookup(stream.clone(), Bytes::from_static(b"n")).await.unwrap(),
        Some(3)
    );
    assert_eq!(store.lookup(stream, Bytes::from_static(b"zz")).await.unwrap(), None);
}

pub(crate) async fn an_expected_tip_that_moved_appends_nothing<E: Engine>(engine: &E) {
    let store = engine.open("conflict").await;
    let stream = outbox("c");
    store.append(stream.clone(), entries("a", 1), None).await.unwrap();
    let err = store
        .append(stream.clone(), entries("b", 2), Some(0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TipMismatch { expected: 0, tip: 1 }), "{err}");
    assert_eq!(store.tip(stream.clone()).await.unwrap(), 1);
    assert_eq!(
        store.lookup(stream.clone(), Bytes::from_static(b"b-0")).await.unwrap(),
        None,
        "refused ids are not recorded"
    );
    let err = store
        .append(stream.clone(), entries("b", 1), Some(7))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TipMismatch { expected: 7, tip: 1 }), "{err}");
    let ok = store.append(stream.clone(), entries("b", 1), Some(1)).await.unwrap();
    assert_eq!(ok.entries, [Appended { seq: 2, appended: true }]);
}

pub(crate) async fn racing_writers_win_each_tip_exactly_once<E: Engine>(engine: &E) {
    let store = engine.open("race").await;
    let stream = outbox("contended");
    let mut writers = Vec::new();
    for w in 0..8 {
        let (store, stream) = (store.clone(), stream.clone());
        writers.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut i = 0;
            while won.len() < 15 {
                let tip = store.tip(stream.clone()).await.unwrap();
                let id = format!("w{w}-{i}");
                match store.append(stream.clone(), vec![entry(&id)], Some(tip)).await {
                    Ok(outcome) => {
                        assert_eq!(outcome.entries[0].seq, tip + 1, "a win takes the next seq");
                        won.push((tip + 1, id));
                    }
                    Err(StoreError::TipMismatch { tip: now, .. }) => assert!(now > tip, "lost to a later tip"),
                    Err(err) => panic!("unexpected error {err}"),
                }
                i += 1;
            }
            won
        }));
    }
    let mut winners = BTreeMap::new();
    for writer in writers {
        for (seq, id) in writer.await.unwrap() {
            assert!(winners.insert(seq, id).is_none(), "seq {seq} won twice");
        }
    }
    assert_eq!(
        winners.keys().copied().collect::<Vec<_>>(),
        (1..=120).collect::<Vec<_>>()
    );
    let stored = read_all(&store, &stream).await;
    for (seq, id) in &stored {
        assert_eq!(winners[seq].as_bytes(), &id[..], "seq {seq} holds its winner");
    }
    assert_eq!(stored.len(), 120, "losers wrote nothing");
}

pub(crate) async fn concurrent_appends_get_gap_free_distinct_seqs<E: Engine>(engine: &E) {
    let store = engine.open("concurrent").await;
    let stream = outbox("busy");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (store, stream) = (store.clone(), stream.clone());
        // Every id is sent twice, by two concurrent appenders.
        tasks.push(tokio::spawn(async move {
            let outcome = store
                .append(stream, vec![entry(&format!("id-{}", i % 100))], None)
                .await
                .unwrap();
            (i % 100, outcome.entries[0].seq)
        }));
    }
    let mut seq_of = BTreeMap::new();
    for task in tasks {
        let (id, seq) = task.await.unwrap();
        if let Some(previous) = seq_of.insert(id, seq) {
            assert_eq!(previous, seq, "both senders of one id get its one seq");
        }
    }
    let distinct: BTreeSet<u64> = seq_of.values().copied().collect();
    assert_eq!(distinct, (1..=100).collect(), "gap-free and distinct");
    assert_eq!(store.tip(stream).await.unwrap(), 100);
}

pub(crate) async fn bad_input_is_refused_and_changes_nothing<E: Engine>(engine: &E) {
    let store = engine.open("invalid").await;
    let stream = outbox("v");
    let long_id = NewEntry {
        id: Bytes::from(vec![1u8; 65]),
        data: Bytes::new(),
    };
    let err = store
        .append(stream.clone(), vec![entry("ok"), long_id], None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "entry 1: id is 65 bytes, must be 1 to 64");
    let empty_id = NewEntry {
        id: Bytes::new(),
        data: Bytes::new(),
    };
    assert!(matches!(
        store.append(stream.clone(), vec![empty_id], None).await,
        Err(StoreError::BadId { index: 0, len: 0 })
    ));
    let huge = NewEntry {
        id: Bytes::from_static(b"h"),
        data: Bytes::from(vec![0u8; limits::MAX_ENTRY_BYTES + 1]),
    };
    assert!(matches!(
        store.append(stream.clone(), vec![huge], None).await,
        Err(StoreError::EntryTooLarge { index: 0, .. })
    ));
    assert!(matches!(
        store.append(stream.clone(), vec![], None).await,
        Err(StoreError::NoEntries)
    ));
    let err = store
        .append(stream.clone(), entries("m", 1025), None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "append has 1025 entries, over the limit of 1024");
    assert_eq!(store.tip(stream.clone()).await.unwrap(), 0);
    assert_eq!(store.lookup(stream, Bytes::from_static(b"ok")).await.unwrap(), None);
    assert!(matches!(
        StreamId::new("a\0b", Kind::Inbox),
        Err(StoreError::ActorHasNul)
    ));
}

pub(crate) async fn appends_wake_waiting_readers<E: Engine>(engine: &E) {
    let store = engine.open("wake").await;
    let stream = StreamId::new("woken", Kind::Inbox).unwrap();
    let mut notices = store.notices();
    store
        .append(outbox("someone-else"), entries("o", 1), None)
        .await
        .unwrap();
    store.append(stream.clone(), entries("w", 1), None).await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match notices.recv().await.unwrap() {
                Notice::Appended(s) if s == stream => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "a notice names the stream that grew");
}

pub(crate) async fn a_reopened_store_keeps_entries_tips_and_ids<E: Engine>(engine: &E) {
    {
        let store = engine.open("restart").await;
        store.append(outbox("r"), entries("x", 2), None).await.unwrap();
        store
            .append(StreamId::new("r", Kind::Meta).unwrap(), entries("m", 1), None)
            .await
            .unwrap();
        store.close().await.unwrap();
        let err = store.append(outbox("r"), entries("late", 1), None).await.unwrap_err();
        assert!(
            matches!(err, StoreError::ShuttingDown),
            "a closed store refuses appends: {err}"
        );
    }
    let store = engine.open("restart").await;
    assert_eq!(store.tip(outbox("r")).await.unwrap(), 2);
    assert_eq!(store.tip(StreamId::new("r", Kind::Meta).unwrap()).await.unwrap(), 1);
    let again = store
        .append(outbox("r"), vec![entry("x-0"), entry("w")], Some(2))
        .await
        .unwrap();
    assert_eq!(
        again.entries,
        [
            Appended {
                seq: 1,
                appended: false
            },
            Appended { seq: 3, appended: true }
        ]
    );
    assert_eq!(read_all(&store, &outbox("r")).await.len(), 3);
}

fn take(name: &str, holder: &str, ttl_ms: u64) -> crate::lease::Acquire {
    let data = Bytes::from(format!("reach {holder} here"));
    crate::lease::Acquire::new(name.into(), holder.into(), ttl_ms, data).unwrap()
}

pub(crate) async fn a_lease_has_one_holder_until_it_lapses_or_is_released<E: Engine>(engine: &E) {
    {
        let store = engine.open("leases").await;
        let a = store.acquire_lease(take("part-1", "a", 60_000)).await.unwrap();
        assert_eq!((a.holder.as_str(), a.epoch), ("a", 1));
        assert!((59_000..=60_000).contains(&a.remaining_ms), "{a:?}");
        let b = store.acquire_lease(take("part-1", "b", 60_000)).await.unwrap();
        assert_eq!(
            (b.holder.as_str(), b.epoch, &b.data[..]),
            ("a", 1, &b"reach a here"[..]),
            "held by a: b is told who holds it"
        );
        let renewed = store.acquire_lease(take("part-1", "a", 60_000)).await.unwrap();
        assert_eq!(
            (renewed.holder.as_str(), renewed.epoch),
            ("a", 1),
            "a renewal keeps the epoch"
        );
        let other = store.acquire_lease(take("part-2", "b", 60_000)).await.unwrap();
        assert_eq!((other.holder.as_str(), other.epoch), ("b", 1), "leases are apart");
        let names = |leases: Vec<crate::lease::Lease>| leases.into_iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(names(store.leases("part-".into()).await.unwrap()), ["part-1", "part-2"]);
        assert_eq!(names(store.leases("part-2".into()).await.unwrap()), ["part-2"]);
        assert!(store.leases("x".into()).await.unwrap().is_empty());

        assert!(
            !store.release_lease("part-1".into(), "b".into()).await.unwrap(),
            "b does not hold it"
        );
        assert!(store.release_lease("part-1".into(), "a".into()).await.unwrap());
        assert_eq!(
            names(store.leases("part-".into()).await.unwrap()),
            ["part-2"],
            "released"
        );
        let b = store.acquire_lease(take("part-1", "b", 60_000)).await.unwrap();
        assert_eq!((b.holder.as_str(), b.epoch), ("b", 2), "a new holder, a higher epoch");

        let short = store.acquire_lease(take("short", "c", 200)).await.unwrap();
        assert_eq!(short.holder, "c");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(store.leases("short".into()).await.unwrap().is_empty(), "lapsed");
        let d = store.acquire_lease(take("short", "d", 60_000)).await.unwrap();
        assert_eq!((d.holder.as_str(), d.epoch), ("d", 2), "a lapsed lease passes on");
        store.close().await.unwrap();
    }
    let store = engine.open("leases").await;
    let after = store.acquire_lease(take("part-1", "a", 60_000)).await.unwrap();
    assert_eq!(
        (after.holder.as_str(), after.epoch),
        ("b", 2),
        "a reopened store keeps its leases"
    );
}

pub(crate) async fn racing_holders_get_a_lease_once<E: Engine>(engine: &E) {
    let store = engine.open("lease-race").await;
    let mut racers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        racers.spawn(async move {
            let holder = format!("h{n}");
            let lease = store.acquire_lease(take("race", &holder, 60_000)).await.unwrap();
            (holder, lease)
        });
    }
    let answers = racers.join_all().await;
    let winners: Vec<_> = answers
        .iter()
        .filter(|(holder, lease)| *holder == lease.holder)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one takes it: {answers:?}");
    assert!(
        answers
            .iter()
            .all(|(_, lease)| lease.holder == winners[0].0 && lease.epoch == 1),
        "every racer is told the same holder: {answers:?}"
    );
}

/// One `#[tokio::test]` per case for one engine; `$engine` makes the engine for a case
/// from the case's name.
macro_rules! conformance {
    ($module:ident, $engine:expr) => {
        mod $module {
            use super::*;
            conformance!(@cases $engine;
                seqs_start_at_one_and_tips_are_per_stream,
                reads_are_bounded_in_entries_and_bytes,
                missing_streams_are_empty_with_tip_zero,
                a_repeated_id_answers_its_first_seq_and_writes_nothing,
                an_expected_tip_that_moved_appends_nothing,
                racing_writers_win_each_tip_exactly_once,
                concurrent_appends_get_gap_free_distinct_seqs,
                bad_input_is_refused_and_changes_nothing,
                appends_wake_waiting_readers,
                a_reopened_store_keeps_entries_tips_and_ids,
                a_lease_has_one_holder_until_it_lapses_or_is_released,
                racing_holders_get_a_lease_once);
        }
    };
    (@cases $engine:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(&($engine)(stringify!($case))).await;
            }
        )*
    };
}

/// RocksDB: each name is a directory under one temp dir.
pub(crate) struct Rocks {
    dir: tempfile::TempDir,
}

impl Rocks {
    pub fn new() -> Rocks {
        Rocks {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Engine for Rocks {
    type Store = crate::RocksStore;

    async fn open(&self, name: &str) -> crate::RocksStore {
        let path = self.dir.path().join(name);
        tokio::task::spawn_blocking(move || crate::RocksStore::open(&path).unwrap())
            .await
            .unwrap()
    }
}

/// PostgreSQL: each name is a database on the test process's shared throwaway server.
pub(crate) struct Postgres(pub(crate) fedsx_pg::testing::CaseDatabases);

impl Engine for Postgres {
    type Store = crate::PgStore;

    async fn open(&self, name: &str) -> crate::PgStore {
        let url = self.0.url(name).await;
        crate::PgStore::open(&url, &fedsx_pg::PoolOptions::new("conformance"))
            .await
            .unwrap()
    }
}

conformance!(rocksdb, |_| Rocks::new());
conformance!(postgres, |case| Postgres(fedsx_pg::testing::CaseDatabases::new(case)));
