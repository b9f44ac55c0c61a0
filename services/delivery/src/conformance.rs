//! The one conformance suite every [`QueueStorage`] engine passes, written once and run
//! against each: idempotent enqueue, FIFO and retry times, one sender at a time, recipients, outcomes, isolation, leases and
//! fencing, redrive, unknown peers, restart. Add an engine with one `conformance!` line.

use crate::queue::Id;
use crate::storage::{NewDelivery, Outcome, QueueStorage, Recipient, unavailable_reason};
use bytes::Bytes;
use std::future::Future;

/// An engine under test: opens the queue called `name` (created empty on first use; the
/// same name again is the same data, as after a restart).
pub(crate) trait Engine: Sync {
    type Queue: QueueStorage;
    fn open(&self, name: &str) -> impl Future<Output = Self::Queue> + Send;
}

const PEER: &str = "https://b.example/actors/bob";
const OTHER: &str = "https://c.example/actors/carol";
const NOW: u64 = 1_000_000;
const LEASE: u64 = NOW + 10_000;

fn id(n: u8) -> Id {
    [n; 32]
}

/// Delivery `n` to `peer`, from a sender of its own (each is the head of its lane).
fn delivery(peer: &str, n: u8) -> NewDelivery {
    NewDelivery {
        peer: peer.into(),
        id: id(n),
        sender: format!("https://a.example/actors/s{n}"),
        inbox_url: format!("{peer}/inbox"),
        recipients: Default::default(),
        envelope: Bytes::from(format!("envelope {n}")),
        undeliverable: None,
        unavailable_before: 0,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        enqueued_ms: NOW - 1000 + u64::from(n),
    }
}

/// Delivery `n` to `peer` from `sender`.
fn from(sender: &str, peer: &str, n: u8) -> NewDelivery {
    NewDelivery {
        sender: sender.into(),
        ..delivery(peer, n)
    }
}

/// Dead-lettered after `attempts` for `error`.
fn dead(attempts: u32, error: &str) -> Outcome {
    Outcome::Dead {
        attempts,
        error: error.into(),
    }
}

/// Records one outcome: whether it was recorded.
async fn record_one<Q: QueueStorage>(
    queue: &Q,
    owner: &str,
    now: u64,
    peer: &str,
    id: Id,
    outcome: Outcome,
) -> Result<bool, crate::QueueError> {
    let recorded = queue.record(owner, now, peer, vec![(id, outcome)]).await?;
    Ok(recorded[0])
}

async fn due_ids<Q: QueueStorage>(queue: &Q, peer: &str, now: u64) -> Vec<u8> {
    let due = queue.due(peer, now, 100, vec![], true).await.unwrap();
    due.iter().map(|d| d.id[0]).collect()
}

pub(crate) async fn enqueue_is_durable_once_per_peer_and_id<E: Engine>(engine: &E) {
    let queue = engine.open("enqueue").await;
    assert!(queue.enqueue(delivery(PEER, 1)).await.unwrap());
    assert!(
        !queue.enqueue(delivery(PEER, 1)).await.unwrap(),
        "the same (peer, id) again"
    );
    assert!(
        queue.enqueue(delivery(OTHER, 1)).await.unwrap(),
        "the same id for another peer"
    );
    let due = queue.due(PEER, NOW, 10, vec![], true).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].envelope, Bytes::from("envelope 1"));
    assert_eq!(due[0].inbox_url, format!("{PEER}/inbox"));
    assert_eq!(due[0].attempts, 0);
    assert!(due[0].traceparent.starts_with("00-0af7"));
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.pending, status.dead_letters, status.delivered), (1, 0, 0));
    assert_eq!(status.head_enqueued_ms, NOW - 999);
    // Queued behind its sender's head, and again.
    let sender = "https://a.example/actors/s1";
    assert!(queue.enqueue(from(sender, PEER, 2)).await.unwrap());
    assert!(
        !queue.enqueue(from(sender, PEER, 2)).await.unwrap(),
        "the same (peer, id) again, behind its sender's head"
    );
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().pending, 2);
}

pub(crate) async fn concurrent_enqueues_of_one_id_queue_it_once<E: Engine>(engine: &E) {
    let queue = engine.open("concurrent").await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.enqueue(delivery(PEER, 7)).await.unwrap() })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        new += usize::from(task.await.unwrap());
    }
    assert_eq!(new, 1, "exactly one enqueue is new");
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().pending, 1);

    // Many at once (engines may write them in groups): each id new exactly once.
    let tasks: Vec<_> = (0..96u8)
        .map(|n| {
            let queue = queue.clone();
            tokio::spawn(async move { (n % 48, queue.enqueue(delivery(PEER, 100 + n % 48)).await.unwrap()) })
        })
        .collect();
    let mut new_per_id = [0; 48];
    for task in tasks {
        let (n, new) = task.await.unwrap();
        new_per_id[n as usize] += usize::from(new);
    }
    assert_eq!(new_per_id, [1; 48], "every id new exactly once");
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().pending, 49);
}

pub(crate) async fn due_work_is_fifo_skips_in_flight_and_waits_for_retry_times<E: Engine>(engine: &E) {
    let queue = engine.open("fifo").await;
    for n in 1..=5 {
        queue.enqueue(delivery(PEER, n)).await.unwrap();
    }
    assert_eq!(due_ids(&queue, PEER, NOW).await, [1, 2, 3, 4, 5]);
    let limited = queue.due(PEER, NOW, 2, vec![id(1)], true).await.unwrap();
    assert_eq!(
        limited.iter().map(|d| d.id[0]).collect::<Vec<_>>(),
        [2, 3],
        "limit, skipping in flight"
    );
    assert_eq!(queue.claim("a", NOW, LEASE, 10).await.unwrap(), [PEER]);
    let retry = Outcome::Retry {
        attempts: 1,
        at: NOW + 500,
        error: "status 503".into(),
    };
    assert!(record_one(&queue, "a", NOW, PEER, id(2), retry).await.unwrap());
    assert_eq!(
        due_ids(&queue, PEER, NOW).await,
        [1, 3, 4, 5],
        "waiting for its retry time"
    );
    assert_eq!(queue.next_retry(PEER, NOW).await.unwrap(), Some(NOW + 500));
    assert_eq!(
        due_ids(&queue, PEER, NOW + 500).await,
        [1, 2, 3, 4, 5],
        "due again, in its place"
    );
    let again = queue.due(PEER, NOW + 500, 10, vec![], true).await.unwrap();
    assert_eq!(again[1].attempts, 1);
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!(status.last_error, "status 503");
    assert_eq!(
        queue.next_retry(OTHER, NOW).await.unwrap(),
        None,
        "an unknown peer waits for nothing"
    );
}

pub(crate) async fn outcomes_move_one_delivery_and_never_another<E: Engine>(engine: &E) {
    let queue = engine.open("outcomes").await;
    for n in 1..=3 {
        queue.enqueue(delivery(PEER, n)).await.unwrap();
    }
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    assert!(
        record_one(&queue, "a", NOW, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap()
    );
    let dead = dead(6, "status 410");
    assert!(record_one(&queue, "a", NOW, PEER, id(3), dead).await.unwrap());
    assert_eq!(due_ids(&queue, PEER, NOW).await, [2], "the others are untouched");
    assert!(
        !record_one(&queue, "a", NOW, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap(),
        "a delivery is recorded once"
    );
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.pending, status.dead_letters, status.delivered), (1, 1, 1));
    let dead = queue.dead_letters(PEER).await.unwrap().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].attempts, dead[0].last_error.as_str()),
        (id(3), 6, "status 410")
    );
    assert!(
        !queue.enqueue(delivery(PEER, 1)).await.unwrap(),
        "delivered: not queued again"
    );
    assert!(
        !queue.enqueue(delivery(PEER, 3)).await.unwrap(),
        "dead: not queued again"
    );
    assert_eq!(
        due_ids(&queue, PEER, NOW).await,
        [2],
        "a delivered one is never handed out again"
    );
}

pub(crate) async fn concurrent_outcomes_of_one_peer_all_land<E: Engine>(engine: &E) {
    let queue = engine.open("concurrent_outcomes").await;
    for n in 1..=32 {
        queue.enqueue(delivery(PEER, n)).await.unwrap();
    }
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    let tasks: Vec<_> = (1..=32u8)
        .map(|n| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let outcome = match n % 3 {
                    0 => Outcome::Delivered,
                    1 => Outcome::Retry {
                        attempts: 1,
                        at: NOW + 100,
                        error: "status 500".into(),
                    },
                    _ => dead(1, "status 410"),
                };
                record_one(&queue, "a", NOW, PEER, id(n), outcome).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap(), "every outcome is recorded");
    }
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.delivered, status.dead_letters, status.pending), (10, 11, 11));
}

pub(crate) async fn a_batch_of_outcomes_is_recorded_together<E: Engine>(engine: &E) {
    let queue = engine.open("batch").await;
    for n in 1..=4 {
        queue.enqueue(delivery(PEER, n)).await.unwrap();
    }
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    record_one(&queue, "a", NOW, PEER, id(4), Outcome::Delivered)
        .await
        .unwrap();
    let batch = vec![
        (id(1), Outcome::Delivered),
        (
            id(2),
            Outcome::Retry {
                attempts: 1,
                at: NOW + 50,
                error: "status 502".into(),
            },
        ),
        (id(4), Outcome::Delivered),
        (id(9), Outcome::Delivered),
    ];
    assert_eq!(
        queue.record("a", NOW, PEER, batch.clone()).await.unwrap(),
        [true, true, false, false],
        "already delivered and unknown ids are not recorded"
    );
    assert_eq!(
        queue.record("b", NOW, PEER, batch).await.unwrap(),
        [false; 4],
        "not the lease holder"
    );
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.delivered, status.pending), (2, 2));
    assert_eq!(due_ids(&queue, PEER, NOW).await, [3]);
}

pub(crate) async fn a_lease_gives_a_peer_to_one_owner_and_fences_the_others<E: Engine>(engine: &E) {
    let queue = engine.open("leases").await;
    queue.enqueue(delivery(PEER, 1)).await.unwrap();
    queue.enqueue(delivery(OTHER, 2)).await.unwrap();
    let mut a = queue.claim("a", NOW, LEASE, 10).await.unwrap();
    a.sort();
    assert_eq!(a, [PEER, OTHER], "peers with pending work");
    assert!(
        queue.claim("b", NOW + 1, NOW + 20_000, 10).await.unwrap().is_empty(),
        "held by a"
    );
    assert!(
        !record_one(&queue, "b", NOW + 1, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap(),
        "b cannot record for a peer a holds"
    );
    assert_eq!(
        queue.claim("a", NOW + 5, LEASE + 5, 10).await.unwrap().len(),
        2,
        "a renews"
    );
    // a stops renewing; once its lease lapsed b takes both, and a is fenced.
    let mut b = queue.claim("b", LEASE + 6, LEASE + 10_000, 10).await.unwrap();
    b.sort();
    assert_eq!(b, [PEER, OTHER]);
    assert!(
        !record_one(&queue, "a", LEASE + 7, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap()
    );
    assert!(
        record_one(&queue, "b", LEASE + 7, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap()
    );
    queue.release("b", OTHER, LEASE + 9_999).await.unwrap();
    assert!(
        queue
            .claim("a", LEASE + 8, LEASE + 20_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "a release naming another end than the lease's (renewed since) keeps it"
    );
    queue.release("b", OTHER, LEASE + 10_000).await.unwrap();
    assert_eq!(
        queue.claim("a", LEASE + 8, LEASE + 20_000, 10).await.unwrap(),
        [OTHER],
        "released"
    );
    assert!(
        queue
            .claim("c", LEASE + 9, LEASE + 30_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing pending for the delivered peer, nothing to claim"
    );
}

pub(crate) async fn redrive_moves_dead_letters_to_the_end_with_attempts_reset<E: Engine>(engine: &E) {
    let queue = engine.open("redrive").await;
    for n in 1..=3 {
        queue.enqueue(delivery(PEER, n)).await.unwrap();
    }
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    for n in [1, 2] {
        let dead = dead(2, "status 404");
        record_one(&queue, "a", NOW, PEER, id(n), dead).await.unwrap();
    }
    assert_eq!(queue.redrive(PEER, Some(vec![id(2)])).await.unwrap(), Some(1));
    assert_eq!(due_ids(&queue, PEER, NOW).await, [3, 2], "back at the end of pending");
    assert_eq!(queue.due(PEER, NOW, 10, vec![], true).await.unwrap()[1].attempts, 0);
    assert_eq!(queue.redrive(PEER, None).await.unwrap(), Some(1), "the rest");
    assert_eq!(queue.redrive(PEER, None).await.unwrap(), Some(0), "nothing left");
    assert_eq!(queue.dead_letters(PEER).await.unwrap().unwrap().len(), 0);
    assert_eq!(queue.redrive("https://nobody.example/a", None).await.unwrap(), None);
    assert!(queue.dead_letters("https://nobody.example/a").await.unwrap().is_none());
    assert!(queue.status("https://nobody.example/a").await.unwrap().is_none());
}

pub(crate) async fn one_senders_deliveries_go_one_at_a_time_in_order<E: Engine>(engine: &E) {
    let queue = engine.open("lanes").await;
    let (alice, carol) = ("https://a.example/actors/alice", "https://a.example/actors/carol");
    for n in 1..=3 {
        queue.enqueue(from(alice, PEER, n)).await.unwrap();
    }
    queue.enqueue(from(carol, PEER, 4)).await.unwrap();
    queue.enqueue(from(alice, PEER, 5)).await.unwrap();
    queue.enqueue(from(carol, PEER, 6)).await.unwrap();
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW).await, [1, 4], "each sender's oldest");
    let skip = vec![id(1), id(4)];
    assert!(
        queue.due(PEER, NOW, 10, skip, true).await.unwrap().is_empty(),
        "in flight: nothing after them"
    );

    // A retry holds its sender's later deliveries back until it is due again.
    let retry = Outcome::Retry {
        attempts: 1,
        at: NOW + 500,
        error: "status 503".into(),
    };
    record_one(&queue, "a", NOW, PEER, id(1), retry).await.unwrap();
    record_one(&queue, "a", NOW, PEER, id(4), Outcome::Delivered)
        .await
        .unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW).await, [6], "alice waits; carol goes on");
    assert_eq!(due_ids(&queue, PEER, NOW + 500).await, [1, 6]);

    // Delivered or dead-lettered, the next of the sender follows.
    record_one(&queue, "a", NOW + 500, PEER, id(1), Outcome::Delivered)
        .await
        .unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW + 500).await, [2, 6]);
    let dead = dead(1, "status 400");
    record_one(&queue, "a", NOW + 500, PEER, id(2), dead).await.unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW + 500).await, [3, 6]);

    // A redriven delivery goes back at the end of its sender's lane.
    assert_eq!(queue.redrive(PEER, None).await.unwrap(), Some(1));
    for n in [3, 5] {
        record_one(&queue, "a", NOW + 500, PEER, id(n), Outcome::Delivered)
            .await
            .unwrap();
    }
    assert_eq!(due_ids(&queue, PEER, NOW + 500).await, [6, 2]);
}

/// With room for one send at a time, a sender whose lane keeps refilling does not keep the
/// destination: another sender's work goes within a few turns.
pub(crate) async fn a_busy_sender_does_not_starve_the_others<E: Engine>(engine: &E) {
    let queue = engine.open("turns").await;
    let (busy, quiet) = ("https://a.example/actors/busy", "https://a.example/actors/quiet");
    for n in 1..=3 {
        queue.enqueue(from(busy, PEER, n)).await.unwrap();
    }
    queue.enqueue(from(quiet, PEER, 4)).await.unwrap();
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    let mut taken = Vec::new();
    for n in 5..=12 {
        let due = queue.due(PEER, NOW, 1, vec![], true).await.unwrap();
        assert_eq!(due.len(), 1);
        taken.push(due[0].id[0]);
        record_one(&queue, "a", NOW, PEER, due[0].id, Outcome::Delivered)
            .await
            .unwrap();
        queue.enqueue(from(busy, PEER, n)).await.unwrap();
    }
    let turn = taken.iter().position(|n| *n == 4);
    assert!(
        turn.is_some_and(|t| t < 4),
        "the quiet sender's turn came late: {taken:?}"
    );
    let busy_order: Vec<u8> = taken.iter().copied().filter(|n| *n != 4).collect();
    assert!(busy_order.is_sorted(), "the busy sender's work in order: {taken:?}");
}

pub(crate) async fn recipients_come_back_as_queued<E: Engine>(engine: &E) {
    let queue = engine.open("recipients").await;
    let recipients = vec![
        Recipient {
            actor: "https://b.example/actors/bob".into(),
            inbox_url: "https://b.example/actors/bob/inbox".into(),
        },
        Recipient {
            actor: "https://b.example/actors/dan".into(),
            inbox_url: String::new(),
        },
        Recipient {
            actor: "https://b.example/actors/eve".into(),
            inbox_url: "https://b.example/inbox".into(),
        },
    ];
    let node = "https://b.example";
    let delivery = NewDelivery {
        inbox_url: "https://b.example/inbox".into(),
        recipients: recipients.clone().into(),
        ..delivery(node, 1)
    };
    queue.enqueue(delivery).await.unwrap();
    let due = queue.due(node, NOW, 10, vec![], true).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].inbox_url, "https://b.example/inbox");
    assert_eq!(due[0].recipients.read(node, &due[0].inbox_url).unwrap(), recipients);
}

pub(crate) async fn a_batch_is_queued_in_order_once_per_id_and_kept<E: Engine>(engine: &E) {
    let alice = "https://a.example/actors/alice";
    let recipients = vec![Recipient {
        actor: "https://c.example/actors/carol".into(),
        inbox_url: "https://c.example/actors/carol/inbox".into(),
    }];
    let batch = || {
        vec![
            from(alice, PEER, 1),
            delivery(OTHER, 2),
            from(alice, PEER, 3),
            from(alice, PEER, 1),
            NewDelivery {
                recipients: recipients.clone().into(),
                undeliverable: Some("recipient gone".into()),
                ..delivery(OTHER, 4)
            },
        ]
    };
    {
        let queue = engine.open("batch").await;
        let new = queue.enqueue_all(batch()).await.unwrap();
        assert_eq!(
            new,
            [true, true, true, false, true],
            "the second id 1 is the same delivery"
        );
        assert_eq!(
            queue.enqueue_all(batch()).await.unwrap(),
            [false; 5],
            "a repeated batch is not new"
        );
        assert_eq!(queue.enqueue_all(Vec::new()).await.unwrap(), Vec::<bool>::new());
        queue.close().await.unwrap();
    }
    let queue = engine.open("batch").await;
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW).await, [1], "one sender, in batch order");
    record_one(&queue, "a", NOW, PEER, id(1), Outcome::Delivered)
        .await
        .unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW).await, [3]);
    assert_eq!(due_ids(&queue, OTHER, NOW).await, [2]);
    let dead = queue.dead_letters(OTHER).await.unwrap().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error, "recipient gone");
    assert_eq!(dead[0].recipients, recipients, "kept across the restart");
}

pub(crate) async fn an_undeliverable_delivery_is_a_dead_letter_at_once<E: Engine>(engine: &E) {
    let queue = engine.open("undeliverable").await;
    let refused = NewDelivery {
        envelope: Bytes::new(),
        undeliverable: Some("refused by delivery: envelope too large".into()),
        ..delivery(PEER, 1)
    };
    assert!(queue.enqueue(refused.clone()).await.unwrap());
    assert!(!queue.enqueue(refused).await.unwrap(), "once per (peer, id)");
    queue.enqueue(delivery(PEER, 2)).await.unwrap();
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    assert_eq!(due_ids(&queue, PEER, NOW).await, [2], "never handed out to be sent");
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.pending, status.dead_letters), (1, 1));
    let dead = queue.dead_letters(PEER).await.unwrap().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id(1));
    assert_eq!(dead[0].last_error, "refused by delivery: envelope too large");
}

pub(crate) async fn delivered_records_expire_after_the_retention<E: Engine>(engine: &E) {
    let queue = engine.open("expire").await;
    for n in 1..=3 {
        queue.enqueue(delivery(PEER, n)).await.unwrap();
    }
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    record_one(&queue, "a", NOW, PEER, id(1), Outcome::Delivered)
        .await
        .unwrap();
    let dead = dead(1, "status 410");
    record_one(&queue, "a", NOW, PEER, id(2), dead).await.unwrap();
    // Enqueued at NOW - 999 .. NOW - 997: a cut-off before them forgets nothing.
    assert_eq!(queue.expire(NOW - 999).await.unwrap(), 0);
    assert!(!queue.enqueue(delivery(PEER, 1)).await.unwrap(), "still remembered");
    assert_eq!(queue.expire(NOW).await.unwrap(), 1, "only the delivered one");
    assert!(
        queue.enqueue(delivery(PEER, 1)).await.unwrap(),
        "forgotten: a new delivery"
    );
    assert!(!queue.enqueue(delivery(PEER, 2)).await.unwrap(), "dead letters stay");
    assert!(!queue.enqueue(delivery(PEER, 3)).await.unwrap(), "pending stays");
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.pending, status.dead_letters), (2, 1));
}

pub(crate) async fn a_failing_destination_takes_no_new_deliveries_until_revived<E: Engine>(engine: &E) {
    let queue = engine.open("unavailable").await;
    let cut_off = |n: u8, before: u64| NewDelivery {
        unavailable_before: before,
        ..delivery(PEER, n)
    };
    queue.enqueue(delivery(PEER, 1)).await.unwrap();
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    let retry = Outcome::Retry {
        attempts: 1,
        at: NOW + 100,
        error: "status 500".into(),
    };
    record_one(&queue, "a", NOW, PEER, id(1), retry).await.unwrap();
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().failing_since_ms, NOW);

    queue.enqueue(cut_off(2, NOW)).await.unwrap();
    assert_eq!(
        queue.dead_letters(PEER).await.unwrap().unwrap().len(),
        0,
        "failing, not yet for long"
    );
    queue.enqueue(cut_off(3, NOW + 1)).await.unwrap();
    let dead = queue.dead_letters(PEER).await.unwrap().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].last_error.clone()),
        (id(3), unavailable_reason(NOW))
    );

    assert_eq!(queue.revive(PEER).await.unwrap(), Some(()));
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().failing_since_ms, 0);
    queue.enqueue(cut_off(4, NOW + 1)).await.unwrap();
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().pending, 3, "1, 2 and 4");

    let retry = Outcome::Retry {
        attempts: 2,
        at: NOW + 200,
        error: "status 500".into(),
    };
    record_one(&queue, "a", NOW + 100, PEER, id(1), retry).await.unwrap();
    assert_eq!(queue.status(PEER).await.unwrap().unwrap().failing_since_ms, NOW + 100);
    record_one(&queue, "a", NOW + 200, PEER, id(2), Outcome::Delivered)
        .await
        .unwrap();
    assert_eq!(
        queue.status(PEER).await.unwrap().unwrap().failing_since_ms,
        0,
        "a delivery ends the failing"
    );
    assert_eq!(queue.revive("https://nobody.example").await.unwrap(), None);
}

pub(crate) async fn work_wakes_the_dispatcher<E: Engine>(engine: &E) {
    let queue = engine.open("notices").await;
    let mut notices = queue.notices();
    queue.enqueue(delivery(PEER, 1)).await.unwrap();
    let woken = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if notices.recv().await.unwrap() == PEER {
                return;
            }
        }
    })
    .await;
    assert!(woken.is_ok(), "a notice names the peer with new work");
}

pub(crate) async fn a_reopened_queue_keeps_pending_attempts_dead_and_delivered<E: Engine>(engine: &E) {
    {
        let queue = engine.open("restart").await;
        for n in 1..=4 {
            queue.enqueue(delivery(PEER, n)).await.unwrap();
        }
        queue.claim("a", NOW, LEASE, 10).await.unwrap();
        record_one(&queue, "a", NOW, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap();
        let retry = Outcome::Retry {
            attempts: 2,
            at: NOW + 300,
            error: "status 500".into(),
        };
        record_one(&queue, "a", NOW, PEER, id(2), retry).await.unwrap();
        let dead = dead(1, "status 410");
        record_one(&queue, "a", NOW, PEER, id(3), dead).await.unwrap();
        queue.close().await.unwrap();
        assert!(
            queue.enqueue(delivery(PEER, 9)).await.is_err(),
            "a closed queue refuses work"
        );
    }
    let queue = engine.open("restart").await;
    assert_eq!(due_ids(&queue, PEER, NOW).await, [4]);
    assert_eq!(due_ids(&queue, PEER, NOW + 300).await, [2, 4]);
    let status = queue.status(PEER).await.unwrap().unwrap();
    assert_eq!((status.pending, status.dead_letters, status.delivered), (2, 1, 1));
    assert!(
        !queue.enqueue(delivery(PEER, 1)).await.unwrap(),
        "still known as delivered"
    );
    let all = queue.statuses().await.unwrap();
    assert_eq!(all.iter().map(|s| s.peer.as_str()).collect::<Vec<_>>(), [PEER]);
}

/// One activity queued for several destinations in one batch (an engine may store its
/// envelope once): each destination gets it whole — also after the others had it
/// delivered, after a restart, and when redriven from the dead letters.
pub(crate) async fn one_activity_for_several_destinations_comes_whole_to_each<E: Engine>(engine: &E) {
    const THIRD: &str = "https://d.example/actors/dave";
    let envelope = Bytes::from(vec![7u8; 600]);
    let batch = || {
        [PEER, OTHER, THIRD]
            .into_iter()
            .map(|peer| NewDelivery {
                envelope: envelope.clone(),
                ..delivery(peer, 1)
            })
            .chain(std::iter::once(delivery(PEER, 2)))
            .collect::<Vec<_>>()
    };
    {
        let queue = engine.open("shared").await;
        assert_eq!(queue.enqueue_all(batch()).await.unwrap(), [true, true, true, true]);
        queue.claim("a", NOW, LEASE, 10).await.unwrap();
        record_one(&queue, "a", NOW, PEER, id(1), Outcome::Delivered)
            .await
            .unwrap();
        let dead = dead(1, "status 404");
        record_one(&queue, "a", NOW, OTHER, id(1), dead).await.unwrap();
        let due = queue.due(THIRD, NOW, 10, vec![], true).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].envelope, envelope, "the others' outcomes leave it whole");
        queue.close().await.unwrap();
    }
    let queue = engine.open("shared").await;
    queue.claim("a", NOW, LEASE, 10).await.unwrap();
    let due = queue.due(THIRD, NOW, 10, vec![], true).await.unwrap();
    assert_eq!(due[0].envelope, envelope, "after a restart");
    record_one(&queue, "a", NOW, THIRD, id(1), Outcome::Delivered)
        .await
        .unwrap();
    assert_eq!(queue.redrive(OTHER, None).await.unwrap(), Some(1));
    let due = queue.due(OTHER, NOW, 10, vec![], true).await.unwrap();
    assert_eq!(due[0].envelope, envelope, "redriven after every other was delivered");
    let due = queue.due(PEER, NOW, 10, vec![], true).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].envelope,
        Bytes::from("envelope 2"),
        "another activity keeps its own"
    );
}

/// One `#[tokio::test]` per case for one engine; `$engine` makes the engine for a case
/// from the case's name.
macro_rules! conformance {
    ($module:ident, $engine:expr) => {
        mod $module {
            use super::*;
            conformance!(@cases $engine;
                enqueue_is_durable_once_per_peer_and_id,
                concurrent_enqueues_of_one_id_queue_it_once,
                due_work_is_fifo_skips_in_flight_and_waits_for_retry_times,
                outcomes_move_one_delivery_and_never_another,
                concurrent_outcomes_of_one_peer_all_land,
                a_batch_of_outcomes_is_recorded_together,
                a_lease_gives_a_peer_to_one_owner_and_fences_the_others,
                redrive_moves_dead_letters_to_the_end_with_attempts_reset,
                one_senders_deliveries_go_one_at_a_time_in_order,
                a_busy_sender_does_not_starve_the_others,
                recipients_come_back_as_queued,
                a_batch_is_queued_in_order_once_per_id_and_kept,
                an_undeliverable_delivery_is_a_dead_letter_at_once,
                delivered_records_expire_after_the_retention,
                a_failing_destination_takes_no_new_deliveries_until_revived,
                work_wakes_the_dispatcher,
                a_reopened_queue_keeps_pending_attempts_dead_and_delivered,
                one_activity_for_several_destinations_comes_whole_to_each);
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

impl Engine for Rocks {
    type Queue = crate::RocksQueue;

    async fn open(&self, name: &str) -> crate::RocksQueue {
        let path = self.dir.path().join(name);
        tokio::task::spawn_blocking(move || crate::RocksQueue::open(&path).unwrap())
            .await
            .unwrap()
    }
}

/// PostgreSQL: each name is a database on the test process's shared throwaway server.
pub(crate) struct Postgres(pub(crate) fedsx_pg::testing::CaseDatabases);

impl Engine for Postgres {
    type Queue = crate::PgQueue;

    async fn open(&self, name: &str) -> crate::PgQueue {
        let url = self.0.url(name).await;
        crate::PgQueue::open(&url, &fedsx_pg::PoolOptions::new("conformance"))
            .await
            .unwrap()
    }
}

conformance!(rocksdb, |_| Rocks {
    dir: tempfile::tempdir().unwrap()
});
conformance!(postgres, |case| Postgres(fedsx_pg::testing::CaseDatabases::new(case)));
