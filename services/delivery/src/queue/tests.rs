//! The seed's delivery-retry cases, and the rest of the pure core.

use super::*;

const NOW: u64 = 1_000_000;

fn id(n: u8) -> Id {
    [n; 32]
}

fn transient() -> Failure {
    Failure::Transient {
        reason: "status 500".into(),
        retry_after: None,
    }
}

/// A queue holding `ids`, each from a sender of its own.
fn state_with(ids: &[u8]) -> PeerState {
    let mut state = PeerState::default();
    for n in ids {
        assert!(state.enqueue_from(&format!("s{n}"), id(*n)));
    }
    state
}

#[test]
fn one_senders_ids_are_due_one_at_a_time_in_order() {
    let schedule = Schedule::default();
    let mut state = PeerState::default();
    for n in [1, 2, 3] {
        state.enqueue_from("alice", id(n));
    }
    state.enqueue_from("carol", id(4));
    assert_eq!(state.next_due(NOW), [id(1), id(4)]);
    assert!(state.is_head(&id(1)) && state.is_head(&id(4)));
    assert!(!state.is_head(&id(2)), "behind alice's first");
    state.record_failure(id(1), NOW, &transient(), &schedule);
    assert_eq!(state.next_due(NOW), [id(4)], "alice's next waits behind her retry");
    assert!(state.record_success(id(1)));
    assert_eq!(state.next_due(NOW), [id(2), id(4)]);
    assert!(state.is_head(&id(2)) && !state.is_head(&id(1)));
    state.dead_letter(id(2), 1, "status 400");
    assert_eq!(state.take_due(NOW, 8, |i| *i == id(4)), [id(3)]);
    assert_eq!(state.redrive(None), [id(2)]);
    assert!(state.record_success(id(3)));
    assert_eq!(state.next_due(NOW), [id(4), id(2)], "redriven: back in alice's lane");
}

#[test]
fn a_fresh_state_has_no_attempts_no_retry_time_no_dead_letters() {
    let state = state_with(&[1]);
    assert_eq!(state.attempts_for(&id(1)), 0);
    assert_eq!(state.next_retry_at(&id(1)), None);
    assert_eq!(state.dead_letter_len(), 0);
}

#[test]
fn the_first_failure_waits_slot_one_and_the_second_slot_two() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1]);
    assert_eq!(
        state.record_failure(id(1), NOW, &transient(), &schedule),
        Some(AfterFailure::RetryAt(NOW + 30_000))
    );
    assert_eq!(state.attempts_for(&id(1)), 1);
    assert_eq!(state.next_retry_at(&id(1)), Some(NOW + 30_000));
    state.record_failure(id(1), NOW, &transient(), &schedule);
    assert_eq!(state.attempts_for(&id(1)), 2);
    assert_eq!(state.next_retry_at(&id(1)), Some(NOW + 300_000));
}

#[test]
fn success_clears_attempts_and_retry_time() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1]);
    state.record_failure(id(1), NOW, &transient(), &schedule);
    assert!(state.record_success(id(1)));
    assert_eq!(state.attempts_for(&id(1)), 0);
    assert_eq!(state.next_retry_at(&id(1)), None);
    assert_eq!(state.pending_len(), 0, "a delivered activity leaves the queue");
}

#[test]
fn next_due_is_fifo_and_nothing_before_it_is_due() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1, 2, 3]);
    state.record_failure(id(2), NOW, &transient(), &schedule);
    assert_eq!(
        state.next_due(NOW),
        [id(1), id(3)],
        "a failed id waits; the others are due in order"
    );
    assert_eq!(state.next_due(NOW + 29_999), [id(1), id(3)]);
    assert_eq!(state.next_due(NOW + 30_000), [id(1), id(2), id(3)]);
    assert_eq!(state.next_wake(), Some(NOW + 30_000));
}

#[test]
fn the_sixth_failure_dead_letters_and_clears_the_retry_time() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1]);
    for _ in 0..5 {
        assert!(matches!(
            state.record_failure(id(1), NOW, &transient(), &schedule),
            Some(AfterFailure::RetryAt(_))
        ));
    }
    assert_eq!(state.next_retry_at(&id(1)), Some(NOW + 28_800_000), "slot 5 is 8 h");
    assert_eq!(
        state.record_failure(id(1), NOW, &transient(), &schedule),
        Some(AfterFailure::DeadLettered)
    );
    assert_eq!(state.pending_len(), 0, "out of pending");
    assert_eq!(state.next_retry_at(&id(1)), None);
    assert_eq!(
        state.dead_letters().cloned().collect::<Vec<_>>(),
        [DeadLetter {
            sender: String::new(),
            recipients: Default::default(),
            id: id(1),
            attempts: 6,
            last_error: "status 500".into()
        }]
    );
}

#[test]
fn one_id_never_disturbs_another() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1, 2]);
    state.record_failure(id(1), NOW, &transient(), &schedule);
    state.record_failure(id(2), NOW, &transient(), &schedule);
    state.record_failure(id(2), NOW, &transient(), &schedule);
    assert!(state.record_success(id(1)));
    assert_eq!(state.attempts_for(&id(2)), 2);
    assert_eq!(state.next_retry_at(&id(2)), Some(NOW + 300_000));
    for _ in 0..4 {
        state.record_failure(id(2), NOW, &transient(), &schedule);
    }
    assert_eq!(state.dead_letter_len(), 1);
    let mut other = state_with(&[3]);
    other.record_failure(id(3), NOW, &transient(), &schedule);
    assert_eq!(other.attempts_for(&id(3)), 1);
}

#[test]
fn a_permanent_failure_dead_letters_at_once() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1, 2]);
    let gone = Failure::Permanent {
        reason: "status 410".into(),
    };
    assert_eq!(
        state.record_failure(id(1), NOW, &gone, &schedule),
        Some(AfterFailure::DeadLettered)
    );
    let dead: Vec<DeadLetter> = state.dead_letters().cloned().collect();
    assert_eq!((dead[0].last_error.as_str(), dead[0].attempts), ("status 410", 1));
    assert_eq!(state.pending(), [id(2)]);
}

#[test]
fn retry_after_is_honoured_within_the_schedule() {
    let schedule = Schedule::parse("100ms,1s,10s").unwrap();
    let mut state = state_with(&[1]);
    let asked = |secs| Failure::Transient {
        reason: "status 429".into(),
        retry_after: Some(Duration::from_secs(secs)),
    };
    assert_eq!(
        state.record_failure(id(1), NOW, &asked(5), &schedule),
        Some(AfterFailure::RetryAt(NOW + 5_000))
    );
    assert_eq!(
        state.record_failure(id(1), NOW, &asked(3600), &schedule),
        Some(AfterFailure::RetryAt(NOW + 10_000)),
        "clamped to the last slot"
    );
    assert_eq!(
        state.record_failure(id(1), NOW, &asked(0), &schedule),
        Some(AfterFailure::RetryAt(NOW + 10_000)),
        "never sooner than the schedule's own slot"
    );
}

#[test]
fn enqueueing_twice_is_one_entry() {
    let mut state = state_with(&[1]);
    assert!(!state.enqueue(id(1)));
    assert_eq!(state.pending_len(), 1);
}

#[test]
fn redrive_moves_dead_letters_back_with_attempts_reset() {
    let schedule = Schedule::default();
    let mut state = state_with(&[1, 2, 3]);
    let gone = Failure::Permanent {
        reason: "status 404".into(),
    };
    state.record_failure(id(1), NOW, &gone, &schedule);
    state.record_failure(id(2), NOW, &gone, &schedule);
    assert_eq!(state.redrive(Some(&[id(2)])), [id(2)]);
    assert_eq!(state.pending(), [id(3), id(2)]);
    assert_eq!(state.attempts_for(&id(2)), 0);
    assert_eq!(state.dead_letter_len(), 1);
    assert_eq!(state.redrive(None), [id(1)]);
    assert_eq!(state.dead_letter_len(), 0);
}

#[test]
fn schedules_parse_with_units_and_refuse_nonsense() {
    assert_eq!(Schedule::parse("30s,5m,30m,2h,8h").unwrap(), Schedule::default());
    assert_eq!(
        Schedule::parse("10ms, 20ms").unwrap().backoff(2),
        Backoff::RetryAfter(Duration::from_millis(20))
    );
    assert_eq!(Schedule::parse("10ms,20ms").unwrap().backoff(3), Backoff::DeadLetter);
    assert!(Schedule::parse("").is_err());
    assert!(Schedule::parse("5 minutes").is_err());
    assert!(Schedule::parse("10x").is_err());
}

#[test]
fn due_skips_in_flight_ids_and_stops_at_the_limit() {
    let state = state_with(&[1, 2, 3, 4]);
    let mut state = state;
    assert_eq!(state.take_due(NOW, 2, |i| *i == id(1)), [id(2), id(3)]);
}

#[test]
fn a_large_queue_stays_cheap() {
    let schedule = Schedule::default();
    let mut state = PeerState::default();
    for n in 0..100_000u32 {
        let mut i = [0u8; 32];
        i[..4].copy_from_slice(&n.to_be_bytes());
        state.enqueue_from(&format!("s{}", n % 1000), i);
    }
    // Fail them all, then deliver them all: quadratic structures would take minutes here.
    let ids: Vec<Id> = state.pending();
    for i in &ids {
        state.record_failure(*i, NOW, &transient(), &schedule);
    }
    assert!(state.take_due(NOW, 8, |_| false).is_empty());
    assert_eq!(state.take_due(NOW + 30_000, 8, |_| false), ids[..8]);
    for i in &ids {
        assert!(state.record_success(*i));
    }
    assert_eq!(state.pending_len(), 0);
}
