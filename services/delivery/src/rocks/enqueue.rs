//! Enqueueing on the embedded engine. A batch's deliveries of one activity (same id, same
//! envelope, same sender) become one act record: what they share once, and per destination
//! its number and route (see `acts`). Undeliverable ones are dead letters with an item
//! record of their own, as before acts.

use super::acts::{self, ActRecord, RouteKey, RouteRecord};
use super::records::{Changes, ItemRecord, NewPayload, PeerRecord, STATUS_DEAD};
use super::{Inner, PeerEntry, RocksQueue, blocking};
use crate::queue::{DeadLetter, Id};
use crate::storage::{NewDelivery, QueueError, StoredRecipients, unavailable_reason};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// A destination's route as last given: its number, inbox and recipients as stored.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) struct Route {
    pub no: u64,
    pub inbox_url: String,
    pub recipients: StoredRecipients,
}

/// A delivery of an enqueue, checked under the queue's lock, to be written.
struct Staged {
    index: usize,
    delivery: NewDelivery,
    /// Its peer's record, when not on disk as it is now (written with it).
    new_peer: Option<PeerRecord>,
    recipients: StoredRecipients,
    /// In an act: (destination number, route number, the route to write when it is not on
    /// disk yet). None: a dead letter from the start, with an item record of its own.
    member: Option<(u32, u64, Option<RouteRecord>)>,
}

impl Staged {
    fn route_key(&self) -> Option<RouteKey> {
        self.member
            .as_ref()
            .map(|(num, route, _)| acts::route_key(*num, *route))
    }
}

/// Each delivery's recipients as stored: a list named by several deliveries to one
/// destination (one per activity, in a batch of several activities) is encoded once.
fn stored_recipients(deliveries: &[NewDelivery]) -> Vec<StoredRecipients> {
    type Key<'a> = (*const crate::storage::Recipient, &'a str, &'a str);
    let mut encoded: HashMap<Key<'_>, StoredRecipients> = HashMap::new();
    deliveries
        .iter()
        .map(|d| {
            if d.recipients.is_empty() {
                return StoredRecipients::default();
            }
            encoded
                .entry((d.recipients.as_ptr(), &d.peer, &d.inbox_url))
                .or_insert_with(|| StoredRecipients::store(&d.peer, &d.inbox_url, &d.recipients))
                .clone()
        })
        .collect()
}

impl Inner {
    /// `entry`'s number, given now when it has none (its record is then written with the
    /// enqueue).
    fn number(&self, entry: &mut PeerEntry) -> u32 {
        if entry.record.num == 0 {
            entry.record.num = self.nums.fetch_add(1, Ordering::Relaxed);
            entry.on_disk = false;
        }
        entry.record.num
    }
}

/// The route of a delivery to `entry`'s destination: the last one given when the same, else
/// a new one, numbered from the queue's order (unique, and above any on disk after a restart).
fn route_for(entry: &mut PeerEntry, inbox_url: &str, recipients: &StoredRecipients, order: &AtomicU64) -> u64 {
    if let Some(route) = &entry.route
        && route.inbox_url == inbox_url
        && &route.recipients == recipients
    {
        return route.no;
    }
    let no = order.fetch_add(1, Ordering::Relaxed);
    entry.route = Some(Route {
        no,
        inbox_url: inbox_url.to_owned(),
        recipients: recipients.clone(),
    });
    no
}

impl RocksQueue {
    /// All in one synced write. Under the queue's lock first: ids pending, dead or being
    /// enqueued are not new; the rest are marked as being enqueued until written.
    pub(super) async fn enqueue(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<bool>, QueueError> {
        self.open_or_closed()?;
        let mut new = vec![false; deliveries.len()];
        let mut staged = Vec::with_capacity(deliveries.len());
        let stored = stored_recipients(&deliveries);
        {
            let mut peers = self.inner.peers.lock().expect("queue lock poisoned");
            let mut shared = self.inner.shared.lock().expect("shared records lock poisoned");
            for (index, (mut delivery, recipients)) in deliveries.into_iter().zip(stored).enumerate() {
                let peer = delivery.peer.as_str();
                if !peers.contains_key(peer) {
                    peers.insert(peer.to_owned(), PeerEntry::new(peer));
                }
                let entry = peers.get_mut(peer).expect("just inserted");
                let id = delivery.id;
                // Known at a glance, or being queued; any other is looked up on disk below.
                if entry.state.is_head(&id) || entry.state.is_dead(&id) || !entry.enqueuing.insert(id) {
                    continue;
                }
                let since = entry.record.failing_since_ms;
                if delivery.undeliverable.is_none() && since != 0 && since < delivery.unavailable_before {
                    delivery.undeliverable = Some(unavailable_reason(since));
                }
                let member = if delivery.undeliverable.is_some() {
                    None
                } else {
                    let num = self.inner.number(entry);
                    let route = route_for(entry, &delivery.inbox_url, &recipients, &self.inner.order);
                    let write = shared.routes.add(acts::route_key(num, route)).then(|| RouteRecord {
                        inbox_url: delivery.inbox_url.clone(),
                        recipients: recipients.bytes().to_vec(),
                    });
                    Some((num, route, write))
                };
                staged.push(Staged {
                    index,
                    new_peer: (!entry.on_disk).then(|| entry.record.clone()),
                    delivery,
                    recipients,
                    member,
                });
            }
        }
        let marked: Vec<(String, Id, Option<RouteKey>)> = staged
            .iter()
            .map(|s| (s.delivery.peer.clone(), s.delivery.id, s.route_key()))
            .collect();
        let inner = self.inner.clone();
        let written = blocking(move || write(&inner, staged)).await;
        let mut peers = self.inner.peers.lock().expect("queue lock poisoned");
        for (peer, id, _) in &marked {
            if let Some(entry) = peers.get_mut(peer) {
                entry.enqueuing.remove(id);
            }
        }
        {
            let mut shared = self.inner.shared.lock().expect("shared records lock poisoned");
            match &written {
                Ok(Written {
                    routes_stored,
                    unwritten,
                    acts: written_acts,
                    ..
                }) => {
                    for key in routes_stored {
                        shared.routes.stored(key);
                    }
                    // What was not written holds no count.
                    for key in unwritten {
                        shared.routes.release(key);
                    }
                    for (act, members) in written_acts.iter().filter(|(_, members)| *members > 1) {
                        shared.acts.add_stored_n(*act, *members);
                    }
                }
                Err(_) => {
                    for key in marked.iter().filter_map(|(_, _, key)| key.as_ref()) {
                        shared.routes.release(key);
                    }
                }
            }
        }
        // The dispatcher is woken once per destination, and only for a delivery that can
        // go now: one queued behind its sender's earlier one goes when that one is done.
        let mut wake: HashSet<String> = HashSet::new();
        for (index, delivery) in written?.deliveries {
            new[index] = true;
            let entry = peers.get_mut(&delivery.peer).expect("peer entries are never removed");
            entry.on_disk = true;
            match delivery.undeliverable {
                Some(reason) => {
                    let dead = DeadLetter {
                        id: delivery.id,
                        attempts: 0,
                        last_error: reason,
                        ..DeadLetter::default()
                    };
                    entry.state.restore_dead(&delivery.sender, dead);
                }
                None => {
                    entry.state.enqueue_from(&delivery.sender, delivery.id);
                    if entry.state.is_head(&delivery.id) {
                        wake.insert(delivery.peer);
                    }
                }
            }
        }
        drop(peers);
        for peer in wake {
            let _ = self.inner.notices.send(peer);
        }
        Ok(new)
    }
}

/// An act being made: its id, number, record and (destination, route) of each delivery.
type NewAct = (Id, u64, ActRecord, Vec<(u32, u64)>);

/// What an enqueue wrote.
struct Written {
    /// (index in the batch, delivery) of each written.
    deliveries: Vec<(usize, NewDelivery)>,
    routes_stored: Vec<RouteKey>,
    /// Routes of deliveries found queued before: not written for them.
    unwritten: Vec<RouteKey>,
    /// The number of each act written and how many deliveries it holds.
    acts: Vec<(u64, u32)>,
}

/// Drops what was queued before (delivered, dead or pending: a repeated hand-off is one
/// delivery), then writes the rest in one synced write. Blocks.
fn write(inner: &Inner, staged: Vec<Staged>) -> Result<Written, QueueError> {
    // Untried deliveries of an act have no item record: found by the activity's id.
    let ids: Vec<Id> = staged
        .iter()
        .map(|s| s.delivery.id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let in_acts = inner.records.members_of(&ids).map_err(QueueError::internal)?;
    // Delivered (or tried) ones have an item record: only ids queued in an act before can
    // have one (unless records of no act were delivered, from before acts).
    let look = |s: &Staged| inner.records.has_delivered_alone() || in_acts.contains_key(&s.delivery.id);
    let keys: Vec<_> = staged
        .iter()
        .filter(|s| look(s))
        .map(|s| (s.delivery.peer.as_str(), &s.delivery.id))
        .collect();
    let mut found = inner.records.exist(&keys).map_err(QueueError::internal)?.into_iter();
    let exist: Vec<bool> = staged
        .iter()
        .map(|s| look(s) && found.next().unwrap_or(false))
        .collect();
    let mut fresh = Vec::with_capacity(staged.len());
    let mut unwritten = Vec::new();
    for (staged, exists) in staged.into_iter().zip(exist) {
        let queued = exists
            || staged
                .member
                .as_ref()
                .is_some_and(|(num, _, _)| in_acts.get(&staged.delivery.id).is_some_and(|nums| nums.contains(num)));
        if queued {
            unwritten.extend(staged.route_key());
        } else {
            fresh.push(staged);
        }
    }
    // Acts: the fresh deliveries of one id with the same envelope and sender, in batch order.
    let mut acts: Vec<NewAct> = Vec::new();
    let mut act_of: HashMap<Id, Vec<usize>> = HashMap::new();
    let mut dead_items = Vec::new();
    let mut changes = Changes::default();
    let mut routes_stored = Vec::new();
    for staged in &fresh {
        let delivery = &staged.delivery;
        let Some((num, route, write_route)) = &staged.member else {
            dead_items.push(ItemRecord {
                order: inner.order.fetch_add(1, Ordering::Relaxed),
                status: STATUS_DEAD,
                last_error: delivery.undeliverable.clone().unwrap_or_default(),
                inbox_url: delivery.inbox_url.clone(),
                traceparent: delivery.traceparent.clone(),
                enqueued_ms: delivery.enqueued_ms,
                sender: delivery.sender.clone(),
                ..ItemRecord::default()
            });
            continue;
        };
        if let Some(record) = write_route {
            let key = acts::route_key(*num, *route);
            changes.routes.push((key, record.encode_to_vec()));
            routes_stored.push(key);
        }
        let same = act_of.get(&delivery.id).and_then(|indexes| {
            indexes.iter().copied().find(|&i| {
                let act = &acts[i].2;
                act.envelope == delivery.envelope && act.sender == delivery.sender
            })
        });
        let index = match same {
            Some(index) => index,
            None => {
                let act = ActRecord {
                    sender: delivery.sender.clone(),
                    traceparent: delivery.traceparent.clone(),
                    enqueued_ms: delivery.enqueued_ms,
                    envelope: delivery.envelope.clone(),
                    members: Vec::new(),
                };
                let no = inner.order.fetch_add(1, Ordering::Relaxed);
                acts.push((delivery.id, no, act, Vec::new()));
                act_of.entry(delivery.id).or_default().push(acts.len() - 1);
                acts.len() - 1
            }
        };
        acts[index].3.push((*num, *route));
    }
    let mut act_counts = Vec::with_capacity(acts.len());
    for (id, no, mut act, members) in acts {
        act.members = acts::pack_members(&members);
        let key = acts::act_key(&id, no);
        changes.acts.push((key, std::sync::Arc::new(act)));
        act_counts.push((no, members.len() as u32));
    }
    let dead: Vec<_> = fresh.iter().filter(|s| s.member.is_none()).collect();
    let writes: Vec<_> = dead
        .iter()
        .zip(&dead_items)
        .map(|(staged, item)| {
            let new = NewPayload {
                envelope: Some(&staged.delivery.envelope[..]),
                recipients: Some(staged.recipients.bytes()),
            };
            (staged.delivery.peer.as_str(), &staged.delivery.id, item, Some(new))
        })
        .collect();
    let mut new_peers: Vec<&PeerRecord> = fresh.iter().filter_map(|s| s.new_peer.as_ref()).collect();
    // The last staged of a peer holds its record as it is after all of them.
    new_peers.reverse();
    new_peers.sort_by(|a, b| a.peer.cmp(&b.peer));
    new_peers.dedup_by(|a, b| a.peer == b.peer);
    if !fresh.is_empty() {
        inner
            .records
            .put_all(&new_peers, &writes, &[], &changes, true)
            .map_err(QueueError::internal)?;
    }
    Ok(Written {
        deliveries: fresh
            .into_iter()
            .map(|staged| (staged.index, staged.delivery))
            .collect(),
        routes_stored,
        unwritten,
        acts: act_counts,
    })
}
