//! The relay alone, over a fake host: what reaches delivery, in which order, and where the
//! cursor goes.

use super::*;
use crate::delivery::DeadLetter;
use fedsx_proto::logstore::v1::Entry;
use fedsx_proto::wire::v1::ActivityType;
use std::sync::Mutex;

const ALICE: &str = "https://a.example/actors/alice";

/// Delivery that refuses the hand-offs to `refuses` (but not their dead letters), or
/// takes nothing while `down`.
#[derive(Default)]
struct FakeDelivery {
    taken: Mutex<Vec<Handoff>>,
    refuses: Option<String>,
    down: bool,
}

impl DeliveryPort for FakeDelivery {
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<crate::delivery::Taken>, HandoffError>> {
        let results = handoffs
            .iter()
            .map(|h| match &self.refuses {
                Some(peer) if *peer == h.peer && h.undeliverable.is_none() => {
                    Err(crate::delivery::Refused("envelope over 256 KiB".into()))
                }
                _ => Ok(()),
            })
            .collect();
        if !self.down {
            self.taken.lock().unwrap().extend(handoffs);
        }
        let down = self.down;
        Box::pin(async move {
            if down {
                return Err(HandoffError::Unavailable("delivery is down".into()));
            }
            Ok(results)
        })
    }

    fn revive(&self, _peer: String) -> BoxFuture<'_, Result<bool, HandoffError>> {
        Box::pin(async { Ok(true) })
    }

    fn dead_letter_counts(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, HandoffError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn dead_letters(&self, _peer: String) -> BoxFuture<'_, Result<Vec<DeadLetter>, HandoffError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Alice's outbox, her followers on two nodes, and a delivery service.
struct Host {
    relay: Relay,
    delivery: FakeDelivery,
    outbox: Vec<Entry>,
    journaled: Mutex<Vec<u64>>,
}

impl Host {
    fn new(notes: u64, delivery: FakeDelivery) -> Host {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let outbox = (1..=notes)
            .map(|seq| {
                let activity = Activity {
                    r#type: ActivityType::Create.into(),
                    actor: ALICE.into(),
                    to: vec![format!("{ALICE}/followers")],
                    content: format!("note {seq}"),
                    ..Activity::default()
                };
                let signed = fedsx_wire::sign(&activity, &key, "key");
                Entry {
                    seq,
                    id: signed.id.0.to_vec().into(),
                    data: signed.to_bytes().into(),
                }
            })
            .collect();
        Host {
            relay: Relay::default(),
            delivery,
            outbox,
            journaled: Mutex::new(Vec::new()),
        }
    }
}

impl RelayHost for Host {
    fn relay(&self) -> &Relay {
        &self.relay
    }

    fn delivery(&self) -> &dyn DeliveryPort {
        &self.delivery
    }

    fn serves(&self, _actor: &str) -> bool {
        true
    }

    fn saved_cursor(&self, _actor: &str) -> u64 {
        self.journaled.lock().unwrap().last().copied().unwrap_or(0)
    }

    fn journal_cursor<'a>(&'a self, _actor: &'a str, seq: u64) -> BoxFuture<'a, Result<(), KernelError>> {
        self.journaled.lock().unwrap().push(seq);
        Box::pin(async { Ok(()) })
    }

    fn read_outbox<'a>(&'a self, _actor: &'a str, after: u64, limit: u32) -> BoxFuture<'a, OutboxPage> {
        let page: Vec<Entry> = self
            .outbox
            .iter()
            .filter(|e| e.seq > after)
            .take(limit as usize)
            .cloned()
            .collect();
        let tip = self.outbox.len() as u64;
        Box::pin(async move { Ok((page, tip)) })
    }

    fn routes(&self, _name: &str, _sender: &str, _to: &[String]) -> Routes {
        let route = |node: &str, follower: &str| Route {
            node: node.into(),
            activitypub: false,
            inbox: format!("{node}/inbox"),
            recipients: vec![(format!("{node}/actors/{follower}"), String::new())].into(),
        };
        Routes {
            nodes: vec![route("https://b.example", "bob"), route("https://c.example", "carol")],
            unroutable: vec!["bob@b.example".into()],
        }
    }

    fn activitypub_post<'a>(
        &'a self,
        _name: &'a str,
        _activity: &'a Activity,
        _id: ActivityId,
    ) -> BoxFuture<'a, Result<Result<Vec<u8>, String>, KernelError>> {
        Box::pin(async { Ok(Err("no ActivityPub here".into())) })
    }
}

fn taken(host: &Host) -> Vec<(String, u64, Option<String>)> {
    let seq_of = |id: &ActivityId| host.outbox.iter().position(|e| e.id[..] == id.0[..]).unwrap() as u64 + 1;
    host.delivery
        .taken
        .lock()
        .unwrap()
        .iter()
        .map(|h| (h.peer.clone(), seq_of(&h.id), h.undeliverable.clone()))
        .collect()
}

#[tokio::test]
async fn every_entry_goes_to_each_destination_in_outbox_order_once() {
    let host = Host::new(3, FakeDelivery::default());
    let mut cursor = 0;
    hand_off(&host, "alice", &mut cursor).await.unwrap();
    hand_off(&host, "alice", &mut cursor).await.unwrap();
    let unroutable = Some("recipient is not an http(s) URL".to_owned());
    let mut expected = Vec::new();
    for seq in 1..=3 {
        expected.push(("https://b.example".to_owned(), seq, None));
        expected.push(("https://c.example".to_owned(), seq, None));
        expected.push(("bob@b.example".to_owned(), seq, unroutable.clone()));
    }
    assert_eq!(
        taken(&host),
        expected,
        "in order, and nothing twice from the second round"
    );
    assert_eq!(cursor, 3);
    let handoffs = host.delivery.taken.lock().unwrap();
    assert_eq!(
        &handoffs[0].envelope[..],
        &host.outbox[0].data[..],
        "the entry as signed"
    );
    assert_eq!(handoffs[0].inbox_url, "https://b.example/inbox");
    assert!(
        Arc::ptr_eq(&handoffs[0].recipients, &handoffs[3].recipients),
        "one recipient list for a page's activities to a node"
    );
}

#[tokio::test]
async fn a_hand_off_refused_for_good_is_kept_as_a_dead_letter_and_holds_nothing_up() {
    let delivery = FakeDelivery {
        refuses: Some("https://c.example".into()),
        ..FakeDelivery::default()
    };
    let host = Host::new(2, delivery);
    let mut cursor = 0;
    hand_off(&host, "alice", &mut cursor).await.unwrap();
    assert_eq!(cursor, 2);
    let to_c: Vec<_> = taken(&host)
        .into_iter()
        .filter(|(peer, ..)| peer == "https://c.example")
        .collect();
    let reason = Some("refused by delivery: envelope over 256 KiB".to_owned());
    let expected = [
        ("https://c.example".to_owned(), 1, None),
        ("https://c.example".to_owned(), 2, None),
        ("https://c.example".to_owned(), 1, reason.clone()),
        ("https://c.example".to_owned(), 2, reason),
    ];
    assert_eq!(to_c, expected, "tried, then handed over again as dead letters");
    let handoffs = host.delivery.taken.lock().unwrap();
    assert!(
        handoffs
            .iter()
            .filter(|h| h.undeliverable.is_some())
            .all(|h| h.envelope.is_empty())
    );
}

#[tokio::test]
async fn while_delivery_is_down_nothing_moves() {
    let delivery = FakeDelivery {
        down: true,
        ..FakeDelivery::default()
    };
    let host = Host::new(2, delivery);
    let mut cursor = 0;
    let err = hand_off(&host, "alice", &mut cursor).await.unwrap_err();
    assert!(err.to_string().contains("delivery is down"), "{err}");
    assert_eq!(cursor, 0, "handed off again once delivery is back");
}

#[tokio::test]
async fn the_relay_journals_how_far_it_got_every_thousand_entries() {
    let host = Arc::new(Host::new(1001, FakeDelivery::default()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(run(host.clone(), stop.clone()));
    host.relay.kick("alice");
    for _ in 0..500 {
        if !host.journaled.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    running.await.unwrap();
    assert_eq!(*host.journaled.lock().unwrap(), [1001]);
    assert_eq!(taken(&host).len(), 3003);
}
