//! The outbox chain alone: `Outboxes` on a real log-store (RocksDB) in the test's process.

use super::*;
use crate::clock::SystemClock;
use crate::logs::testing::{LogStore, log_store};
use crate::state::{NodeUrls, local_document};

/// A local actor: its name, document and key.
struct Actor {
    name: String,
    document: ActorDocument,
    key: SigningKey,
}

impl Actor {
    fn new(name: &str) -> Actor {
        let key = SigningKey::from_bytes(&[7; 32]);
        let node = NodeUrls::new("https://b.example", true);
        Actor {
            name: name.to_owned(),
            document: local_document(&node, name, &key),
            key,
        }
    }

    fn note<'a>(&'a self, content: &'a str, to: &'a [String]) -> Next<'a> {
        Next {
            actor: &self.name,
            document: &self.document,
            key: &self.key,
            kind: ActivityType::Create,
            object: "",
            to,
            content,
            once_key: None,
        }
    }
}

/// Two writers' `Outboxes` on one log-store in this process, until the guard is dropped.
async fn outboxes() -> (Logs, Arc<Outboxes>, Arc<Outboxes>, LogStore) {
    let (logs, store) = log_store().await;
    let writer = || Arc::new(Outboxes::new(logs.clone(), Arc::new(SystemClock)));
    (logs.clone(), writer(), writer(), store)
}

/// The outbox's entries as (seq, activity id, activity); each checked to be signed by the
/// actor's key.
async fn chain(logs: &Logs, actor: &Actor) -> Vec<(u64, ActivityId, Activity)> {
    let key = fedsx_wire::public_key(&actor.document.public_key).unwrap();
    let entries = logs.read_all(&actor.name, StreamKind::Outbox, 0).await.unwrap();
    entries
        .iter()
        .map(|entry| {
            let received = fedsx_wire::decode(&entry.data).unwrap();
            received.verify(&key).expect("signed by the actor's key");
            (entry.seq, received.id, received.activity)
        })
        .collect()
}

/// Each activity's seq is its entry's, and its prev the activity before it: one chain, no
/// gaps, no forks.
fn assert_chained(chain: &[(u64, ActivityId, Activity)], len: u64) {
    assert_eq!(chain.len() as u64, len);
    let mut prev = Bytes::new();
    for (n, (seq, id, activity)) in chain.iter().enumerate() {
        assert_eq!((*seq, activity.seq), (n as u64 + 1, n as u64 + 1), "entry {n}");
        assert_eq!(activity.prev, prev, "entry {seq} follows the one before it");
        prev = Bytes::copy_from_slice(&id.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_make_one_chain() {
    let (logs, writer, _, _store) = outboxes().await;
    let alice = Arc::new(Actor::new("alice"));
    let to = ["https://a.example/actors/bob".to_owned()];
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..40 {
        let (writer, alice, to) = (writer.clone(), alice.clone(), to.clone());
        calls.spawn(async move { writer.append(alice.note(&format!("note {n}"), &to)).await });
    }
    let mut seqs = Vec::new();
    while let Some(published) = calls.join_next().await {
        let published = published.unwrap().unwrap();
        assert!(published.new);
        seqs.push(published.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>(), "each append got a seq of its own");
    let chain = chain(&logs, &alice).await;
    assert_chained(&chain, 40);
    assert_eq!(chain[0].2.to, to, "the activity names its recipients");
}

#[tokio::test]
async fn a_writer_whose_view_of_the_end_went_stale_builds_on_the_real_end() {
    // Two writers on one outbox: a partition that moved from one replica to another and
    // back. Each one's view of the end goes stale while the other appends.
    let (logs, first, second, _store) = outboxes().await;
    let alice = Actor::new("alice");
    assert_eq!(first.append(alice.note("1", &[])).await.unwrap().seq, 1);
    for n in 2..=4 {
        assert_eq!(second.append(alice.note("by the other", &[])).await.unwrap().seq, n);
    }
    let stale = first.append(alice.note("5", &[])).await.unwrap();
    assert_eq!((stale.seq, stale.new), (5, true), "rebuilt on the tip it found");
    assert_eq!(second.append(alice.note("6", &[])).await.unwrap().seq, 6);
    assert_chained(&chain(&logs, &alice).await, 6);
}

#[tokio::test]
async fn an_append_with_a_once_key_happens_once() {
    let (logs, writer, other, _store) = outboxes().await;
    let alice = Actor::new("alice");
    let accept = |content| Next {
        once_key: Some([9; 32]),
        ..alice.note(content, &[])
    };
    let first = writer.append(accept("accepted")).await.unwrap();
    assert_eq!((first.seq, first.new), (1, true));
    // Retried, by this writer and by another one (whose view of the end is empty).
    for writer in [&writer, &other] {
        let again = writer.append(accept("accepted")).await.unwrap();
        assert_eq!((again.seq, again.id, again.new), (1, first.id, false));
    }
    let next = other.append(alice.note("after", &[])).await.unwrap();
    assert_eq!((next.seq, next.new), (2, true));
    assert_chained(&chain(&logs, &alice).await, 2);
}

#[tokio::test]
async fn an_activity_no_inbox_would_take_is_refused_and_nothing_is_written() {
    let (logs, writer, _, _store) = outboxes().await;
    let alice = Actor::new("alice");
    let long = "x".repeat(fedsx_wire::MAX_ENVELOPE_BYTES);
    let refused = writer.append(alice.note(&long, &[])).await.unwrap_err();
    assert!(
        matches!(&refused, KernelError::BadRequest(reason) if reason.contains("shorten the content")),
        "{refused:?}"
    );
    assert_eq!(logs.tip("alice", StreamKind::Outbox).await.unwrap(), 0);
    let next = writer.append(alice.note("short", &[])).await.unwrap();
    assert_eq!(next.seq, 1);
    assert_chained(&chain(&logs, &alice).await, 1);
}
