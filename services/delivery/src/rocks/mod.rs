//! The embedded engine: an act record per activity queued for destinations and an item
//! record per delivery something happened to (see `acts`, `records`), and in memory per peer
//! the pure [`PeerState`] as the index of what is pending, waiting and dead, so handing out
//! due work costs O(log n) however long the queue. One process owns the directory, so
//! leases are kept in memory.

mod acts;
mod enqueue;
mod records;

use crate::queue::{DeadLetter, Id, PeerState};
use crate::storage::{Due, NewDelivery, Outcome, PeerStatus, QueueError, QueueStorage};
use acts::RouteKey;
use records::{
    Changes, Item, ItemRecord, LoadedPeer, PeerRecord, Records, STATUS_DEAD, STATUS_DELIVERED, STATUS_PENDING,
};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Items of heads handed out kept per peer before those no longer heads are let go.
const HANDED_OUT_KEPT: usize = 4096;

/// Wake-ups buffered for the dispatcher.
const NOTICE_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct RocksQueue {
    inner: Arc<Inner>,
}

struct Inner {
    records: Records,
    peers: Mutex<HashMap<String, PeerEntry>>,
    /// Global enqueue order: restores each peer's FIFO after a restart. Act and route
    /// numbers are taken from it too.
    order: AtomicU64,
    /// The next destination number (for act records).
    nums: AtomicU32,
    notices: broadcast::Sender<String>,
    ready: watch::Sender<bool>,
    closed: AtomicBool,
    storage: StorageThread,
    shared: Mutex<SharedRecords>,
}

/// How many pending or dead deliveries name each record they share, and whether it is on
/// disk yet: act records and routes (see `acts`), and — in queues from before acts — an
/// envelope or recipient list stored once under the SHA-256 of its bytes. The last delivery
/// naming one that is delivered drops it, in the same write. Rebuilt at open; changed only
/// under the queue's lock (taken before this one).
#[derive(Default)]
struct SharedRecords {
    hashed: Counts<[u8; 32]>,
    /// By act number (unique; the key is made again from the id when it is released). Only
    /// acts of several deliveries are counted: one not counted has one, the one released.
    acts: Counts<u64>,
    routes: Counts<RouteKey>,
}

struct Counts<K> {
    refs: HashMap<K, SharedRef>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts { refs: HashMap::new() }
    }
}

struct SharedRef {
    count: u32,
    /// Written by an enqueue that succeeded: later enqueues naming it need not write it.
    stored: bool,
}

impl<K: Hash + Eq + Copy> Counts<K> {
    /// One more delivery names `key`: whether its enqueue must write the record (it is
    /// not known to be on disk).
    fn add(&mut self, key: K) -> bool {
        let entry = self.refs.entry(key).or_insert(SharedRef {
            count: 0,
            stored: false,
        });
        entry.count += 1;
        !entry.stored
    }

    /// `n` more deliveries name `key`, whose record is on disk.
    fn add_stored_n(&mut self, key: K, n: u32) {
        let entry = self.refs.entry(key).or_insert(SharedRef { count: 0, stored: true });
        entry.count += n;
        entry.stored = true;
    }

    /// `key`'s record is on disk (an enqueue writing it succeeded).
    fn stored(&mut self, key: &K) {
        if let Some(entry) = self.refs.get_mut(key) {
            entry.stored = true;
        }
    }

    /// One delivery fewer names `key`: the key when it was the last.
    fn release(&mut self, key: &K) -> Option<K> {
        let entry = self.refs.get_mut(key)?;
        entry.count -= 1;
        if entry.count > 0 {
            return None;
        }
        self.refs.remove(key);
        Some(*key)
    }
}

impl Counts<[u8; 32]> {
    /// As [`Counts::add_stored_n`] once, for a key as an item record holds it (empty: none).
    fn add_stored_slice(&mut self, key: &[u8]) {
        if let Ok(key) = <[u8; 32]>::try_from(key) {
            self.add_stored_n(key, 1);
        }
    }

    fn release_slice(&mut self, key: &[u8]) -> Option<[u8; 32]> {
        self.release(&<[u8; 32]>::try_from(key).ok()?)
    }
}

struct PeerEntry {
    state: PeerState,
    record: PeerRecord,
    /// Ids being enqueued right now (written, not yet in `state`).
    enqueuing: HashSet<Id>,
    /// (owner, until ms).
    lease: Option<(String, u64)>,
    /// Whether its record is on disk as it is (an enqueue writes it only while it is not).
    on_disk: bool,
    /// The route its deliveries were last queued with.
    route: Option<enqueue::Route>,
    /// The item records of heads handed out to be sent, as read then: their outcome is
    /// recorded on them without reading them again (only a head is handed out, and only its
    /// sender's outcome changes it).
    handed_out: HashMap<Id, ItemRecord>,
}

impl PeerEntry {
    fn new(peer: &str) -> PeerEntry {
        let mut entry = PeerEntry::restored(LoadedPeer {
            record: PeerRecord {
                peer: peer.to_owned(),
                ..PeerRecord::default()
            },
            items: Vec::new(),
        });
        entry.on_disk = false;
        entry
    }

    fn restored(loaded: LoadedPeer) -> PeerEntry {
        let mut state = PeerState::default();
        for (id, item) in loaded.items {
            if item.status == STATUS_DEAD {
                let dead = DeadLetter {
                    id,
                    attempts: item.attempts,
                    last_error: item.last_error,
                    ..DeadLetter::default()
                };
                state.restore_dead(&item.sender, dead);
            } else {
                let retry = (item.next_retry_ms > 0).then_some(item.next_retry_ms);
                state.restore(&item.sender, id, item.attempts, retry);
            }
        }
        PeerEntry {
            state,
            record: loaded.record,
            enqueuing: HashSet::new(),
            lease: None,
            on_disk: true,
            route: None,
            handed_out: HashMap::new(),
        }
    }
}

/// Applies one outcome to a peer's state and record, if the delivery is pending: the item
/// as it is to be written (none: not pending). The caller writes the items of a batch
/// together with the peer's record as it is after them, under the queue's lock, so what
/// `status` shows is what a restart finds. Not synced: a machine crash may lose it, and the
/// send is then repeated once (receivers are idempotent).
fn record_one(
    records: &Records,
    entry: &mut PeerEntry,
    now: u64,
    id: Id,
    outcome: &Outcome,
) -> Result<Option<ItemRecord>, QueueError> {
    // Only a lane's head is ever handed out, so only a head has an outcome.
    if !entry.state.is_head(&id) {
        return Ok(None);
    }
    let mut item = match entry.handed_out.remove(&id) {
        Some(item) => item,
        None => match records
            .item(&entry.record.peer, entry.record.num, &id)
            .map_err(QueueError::internal)?
        {
            Some(Item { record, .. }) => record,
            None => return Ok(None),
        },
    };
    match outcome {
        Outcome::Delivered => {
            entry.state.record_success(id);
            entry.record.delivered += 1;
            entry.record.failing_since_ms = 0;
            item.status = STATUS_DELIVERED;
            item.next_retry_ms = 0;
            // Kept only for idempotence from now on.
            item.recipients = Vec::new();
            item.inbox_url = String::new();
            item.traceparent = String::new();
        }
        Outcome::Retry { attempts, at, error } => {
            entry.state.retry_at(id, *attempts, *at);
            item.attempts = *attempts;
            item.next_retry_ms = *at;
            item.last_error.clone_from(error);
            entry.record.last_error.clone_from(error);
            if entry.record.failing_since_ms == 0 {
                entry.record.failing_since_ms = now;
            }
        }
        Outcome::Dead { attempts, error } => {
            if entry.record.failing_since_ms == 0 {
                entry.record.failing_since_ms = now;
            }
            entry.state.dead_letter(id, *attempts, error);
            item.status = STATUS_DEAD;
            item.attempts = *attempts;
            item.next_retry_ms = 0;
            item.last_error.clone_from(error);
            entry.record.last_error.clone_from(error);
        }
    }
    Ok(Some(item))
}

/// A thread of its own for the queue's quick, unsynced storage calls (reading due work,
/// recording outcomes): they come by the thousand per second under load, and one thread
/// that takes the next call as soon as it finishes the last costs far fewer wake-ups than a
/// blocking-pool task per call. Synced writes (enqueues) stay on the blocking pool, where
/// concurrent ones commit together.
struct StorageThread {
    calls: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl StorageThread {
    fn start() -> StorageThread {
        let (calls, queue) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("delivery-storage".into())
            .spawn(move || {
                while let Ok(call) = queue.recv() {
                    // A call that panics fails alone (its caller sees its answer dropped).
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
                }
            })
            .expect("starting the storage thread");
        StorageThread { calls }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.calls
            .send(Box::new(move || {
                let _ = answer.send(f());
            }))
            .map_err(|_| QueueError::internal("the storage thread is gone"))?;
        answered
            .await
            .map_err(|_| QueueError::internal("a storage call failed"))?
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| QueueError::internal(format!("storage task failed: {err}")))?
}

impl Inner {
    /// Takes up to `limit` of `peer`'s due ids (not in `skip`) out of waiting; with the
    /// peer's number in act records (0: none).
    fn take_ids(&self, peer: &str, now: u64, limit: usize, skip: &[Id]) -> (Vec<Id>, u32) {
        let mut peers = self.peers.lock().expect("queue lock poisoned");
        peers.get_mut(peer).map_or_else(Default::default, |entry| {
            let ids = entry.state.take_due(now, limit, |id| skip.contains(id));
            (ids, entry.record.num)
        })
    }

    /// The taken ids' deliveries to `peer` (number `num`), from disk (those still
    /// pending). Blocks.
    fn read_due(&self, peer: &str, num: u32, ids: Vec<Id>, recipients: bool) -> Result<Vec<Due>, QueueError> {
        let mut due = Vec::with_capacity(ids.len());
        let mut handed_out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut item) = self.records.item(peer, num, &id).map_err(QueueError::internal)? else {
                continue;
            };
            if item.record.status != STATUS_PENDING {
                continue;
            }
            if let Some(envelope) = self.records.envelope(peer, &id, &item).map_err(QueueError::internal)? {
                let recipients = if recipients || item.record.inbox_url.is_empty() {
                    self.records
                        .recipients(peer, &id, &mut item)
                        .map_err(QueueError::internal)?
                } else {
                    Default::default()
                };
                handed_out.push((id, item.record.clone()));
                due.push(Due {
                    id,
                    inbox_url: item.record.inbox_url,
                    recipients,
                    envelope,
                    traceparent: item.record.traceparent,
                    attempts: item.record.attempts,
                });
            }
        }
        let mut peers = self.peers.lock().expect("queue lock poisoned");
        if let Some(entry) = peers.get_mut(peer) {
            if entry.handed_out.len() > HANDED_OUT_KEPT {
                // Sends whose outcome never came (a lease lost): they are read again.
                let PeerEntry { state, handed_out, .. } = entry;
                handed_out.retain(|id, _| state.is_head(id));
            }
            entry.handed_out.extend(handed_out);
        }
        Ok(due)
    }

    /// Records outcomes, all in one write, if `owner` holds `peer`'s lease at `now`. Blocks.
    fn record(&self, owner: &str, now: u64, peer: &str, outcomes: Vec<(Id, Outcome)>) -> Result<Vec<bool>, QueueError> {
        let mut peers = self.peers.lock().expect("queue lock poisoned");
        let Some(entry) = peers.get_mut(peer) else {
            return Ok(vec![false; outcomes.len()]);
        };
        let holds = entry
            .lease
            .as_ref()
            .is_some_and(|(holder, until)| holder == owner && *until >= now);
        let mut recorded = Vec::with_capacity(outcomes.len());
        let mut items = Vec::new();
        let (mut released, mut unshared) = (Vec::new(), Vec::new());
        let mut changes = Changes::default();
        let (mut released_acts, mut released_routes) = (Vec::new(), Vec::new());
        let mut shared = self.shared.lock().expect("shared records lock poisoned");
        for (id, outcome) in outcomes {
            let item = if holds {
                record_one(&self.records, entry, now, id, &outcome)?
            } else {
                None
            };
            recorded.push(item.is_some());
            if let Some(item) = item {
                if item.status == STATUS_DELIVERED {
                    for key in [&item.envelope_key, &item.recipients_key] {
                        if !key.is_empty() {
                            released.push(key.clone());
                            unshared.extend(shared.hashed.release_slice(key));
                        }
                    }
                    if item.act != 0 {
                        let act = acts::act_key(&id, item.act);
                        let route = acts::route_key(entry.record.num, item.route);
                        released_routes.push(route);
                        let last = if shared.acts.refs.contains_key(&item.act) {
                            released_acts.push(item.act);
                            shared.acts.release(&item.act).is_some()
                        } else {
                            true
                        };
                        if last {
                            changes.acts.push((act, Arc::new(acts::tombstone(item.enqueued_ms))));
                        }
                        changes.dropped_routes.extend(shared.routes.release(&route));
                    }
                }
                items.push((id, item));
            }
        }
        let writes: Vec<_> = items
            .iter()
            .map(|(id, item)| (entry.record.peer.as_str(), id, item, None))
            .collect();
        if !writes.is_empty()
            && let Err(err) = self
                .records
                .put_all(&[&entry.record], &writes, &unshared, &changes, false)
        {
            // Not written: the deliveries still name their shared records, on disk.
            for key in &released {
                shared.hashed.add_stored_slice(key);
            }
            for key in released_acts {
                shared.acts.add_stored_n(key, 1);
            }
            for key in released_routes {
                shared.routes.add_stored_n(key, 1);
            }
            return Err(QueueError::internal(err));
        }
        Ok(recorded)
    }
}

impl RocksQueue {
    /// Opens or creates the queue in `dir` and loads every peer's pending and dead
    /// deliveries. Blocks.
    pub fn open(dir: &Path) -> Result<RocksQueue, String> {
        let records = Records::open(dir)?;
        let loaded = records.load()?;
        let order = loaded.max_order + 1;
        let mut shared = SharedRecords::default();
        for (_, item) in loaded.peers.iter().flat_map(|peer| &peer.items) {
            shared.hashed.add_stored_slice(&item.envelope_key);
            shared.hashed.add_stored_slice(&item.recipients_key);
        }
        for (key, count) in loaded.act_refs.into_iter().filter(|(_, count)| *count > 1) {
            shared
                .acts
                .add_stored_n(acts::act_of_key(&key).unwrap_or_default(), count);
        }
        for (key, count) in loaded.route_refs {
            shared.routes.add_stored_n(key, count);
        }
        let peers = loaded
            .peers
            .into_iter()
            .map(|peer| (peer.record.peer.clone(), PeerEntry::restored(peer)))
            .collect();
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        Ok(RocksQueue {
            inner: Arc::new(Inner {
                records,
                peers: Mutex::new(peers),
                order: AtomicU64::new(order),
                nums: AtomicU32::new(loaded.max_num + 1),
                notices,
                ready: watch::Sender::new(true),
                closed: AtomicBool::new(false),
                storage: StorageThread::start(),
                shared: Mutex::new(shared),
            }),
        })
    }

    fn open_or_closed(&self) -> Result<(), QueueError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(QueueError::ShuttingDown);
        }
        Ok(())
    }

    /// The numbers of some peers (all with `None`), by peer. What memory holds is copied
    /// under the queue's lock; the head's enqueue time is read from disk after it, so
    /// enqueues and sends never wait for that I/O.
    fn statuses_of(&self, only: Option<&str>) -> Vec<PeerStatus> {
        let mut heads = Vec::new();
        {
            let peers = self.inner.peers.lock().expect("queue lock poisoned");
            let chosen: Vec<&PeerEntry> = match only {
                Some(peer) => peers.get(peer).into_iter().collect(),
                None => peers.values().collect(),
            };
            for entry in chosen {
                let head = entry.state.oldest_pending();
                let status = PeerStatus {
                    peer: entry.record.peer.clone(),
                    pending: entry.state.pending_len() as u64,
                    head_attempts: head.map_or(0, |id| entry.state.attempts_for(&id)),
                    head_next_retry_ms: head.and_then(|id| entry.state.next_retry_at(&id)).unwrap_or(0),
                    head_enqueued_ms: 0,
                    last_error: entry.record.last_error.clone(),
                    dead_letters: entry.state.dead_letter_len() as u64,
                    delivered: entry.record.delivered,
                    failing_since_ms: entry.record.failing_since_ms,
                };
                heads.push((status, entry.record.num, head));
            }
        }
        let mut all: Vec<PeerStatus> = heads
            .into_iter()
            .map(|(mut status, num, head)| {
                if let Some(id) = head
                    && let Ok(Some(item)) = self.inner.records.item(&status.peer, num, &id)
                {
                    status.head_enqueued_ms = item.record.enqueued_ms;
                }
                status
            })
            .collect();
        all.sort_by(|a, b| a.peer.cmp(&b.peer));
        all
    }
}

impl QueueStorage for RocksQueue {
    async fn enqueue_all(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<bool>, QueueError> {
        self.enqueue(deliveries).await
    }

    async fn claim(&self, owner: &str, now: u64, until: u64, limit: usize) -> Result<Vec<String>, QueueError> {
        self.open_or_closed()?;
        let mut peers = self.inner.peers.lock().expect("queue lock poisoned");
        let mut claimed = Vec::new();
        for (peer, entry) in peers.iter_mut() {
            if claimed.len() == limit {
                break;
            }
            let free = match &entry.lease {
                None => true,
                Some((holder, lapses)) => holder == owner || *lapses < now,
            };
            if free && entry.state.pending_len() > 0 {
                entry.lease = Some((owner.to_owned(), until));
                claimed.push(peer.clone());
            }
        }
        Ok(claimed)
    }

    async fn release(&self, owner: &str, peer: &str, until: u64) -> Result<(), QueueError> {
        let mut peers = self.inner.peers.lock().expect("queue lock poisoned");
        if let Some(entry) = peers.get_mut(peer)
            && entry
                .lease
                .as_ref()
                .is_some_and(|(holder, ends)| holder == owner && *ends == until)
        {
            entry.lease = None;
        }
        Ok(())
    }

    async fn due(
        &self,
        peer: &str,
        now: u64,
        limit: usize,
        skip: Vec<Id>,
        recipients: bool,
    ) -> Result<Vec<Due>, QueueError> {
        self.open_or_closed()?;
        let (ids, num) = self.inner.take_ids(peer, now, limit, &skip);
        let (inner, peer) = (self.inner.clone(), peer.to_owned());
        self.inner
            .storage
            .run(move || inner.read_due(&peer, num, ids, recipients))
            .await
    }

    async fn next_retry(&self, peer: &str, now: u64) -> Result<Option<u64>, QueueError> {
        let peers = self.inner.peers.lock().expect("queue lock poisoned");
        Ok(peers
            .get(peer)
            .and_then(|entry| entry.state.next_wake())
            .map(|at| at.max(now)))
    }

    async fn record(
        &self,
        owner: &str,
        now: u64,
        peer: &str,
        outcomes: Vec<(Id, Outcome)>,
    ) -> Result<Vec<bool>, QueueError> {
        self.open_or_closed()?;
        let (inner, owner, peer) = (self.inner.clone(), owner.to_owned(), peer.to_owned());
        self.inner
            .storage
            .run(move || inner.record(&owner, now, &peer, outcomes))
            .await
    }

    async fn redrive(&self, peer: &str, ids: Option<Vec<Id>>) -> Result<Option<usize>, QueueError> {
        self.open_or_closed()?;
        let (inner, peer) = (self.inner.clone(), peer.to_owned());
        let moved = blocking(move || {
            let mut peers = inner.peers.lock().expect("queue lock poisoned");
            let Some(entry) = peers.get_mut(&peer) else {
                return Ok(None);
            };
            let moved = entry.state.redrive(ids.as_deref());
            for id in &moved {
                if let Some(Item { record: mut item, .. }) = inner
                    .records
                    .item(&peer, entry.record.num, id)
                    .map_err(QueueError::internal)?
                {
                    item.status = STATUS_PENDING;
                    item.attempts = 0;
                    item.next_retry_ms = 0;
                    inner
                        .records
                        .put(&entry.record, id, &item, true)
                        .map_err(QueueError::internal)?;
                }
            }
            if !moved.is_empty() {
                let _ = inner.notices.send(peer);
            }
            Ok(Some(moved.len()))
        })
        .await?;
        Ok(moved)
    }

    async fn status(&self, peer: &str) -> Result<Option<PeerStatus>, QueueError> {
        let (queue, peer) = (self.clone(), peer.to_owned());
        blocking(move || Ok(queue.statuses_of(Some(&peer)).pop())).await
    }

    async fn statuses(&self) -> Result<Vec<PeerStatus>, QueueError> {
        let queue = self.clone();
        blocking(move || Ok(queue.statuses_of(None))).await
    }

    async fn dead_letters(&self, peer: &str) -> Result<Option<Vec<DeadLetter>>, QueueError> {
        let listed: Option<(Vec<DeadLetter>, u32)> = {
            let peers = self.inner.peers.lock().expect("queue lock poisoned");
            peers
                .get(peer)
                .map(|entry| (entry.state.dead_letters().cloned().collect(), entry.record.num))
        };
        let Some((mut listed, num)) = listed else {
            return Ok(None);
        };
        // Whose and for whom: from the records on disk.
        let (inner, peer) = (self.inner.clone(), peer.to_owned());
        blocking(move || {
            for dead in &mut listed {
                if let Some(mut item) = inner.records.item(&peer, num, &dead.id).map_err(QueueError::internal)? {
                    dead.recipients = inner
                        .records
                        .recipients(&peer, &dead.id, &mut item)
                        .and_then(|stored| stored.read(&peer, &item.record.inbox_url))
                        .map_err(QueueError::internal)?;
                    dead.sender = item.record.sender;
                }
            }
            Ok(Some(listed))
        })
        .await
    }

    async fn revive(&self, peer: &str) -> Result<Option<()>, QueueError> {
        self.open_or_closed()?;
        let (inner, peer) = (self.inner.clone(), peer.to_owned());
        blocking(move || {
            let mut peers = inner.peers.lock().expect("queue lock poisoned");
            let Some(entry) = peers.get_mut(&peer) else {
                return Ok(None);
            };
            if entry.record.failing_since_ms != 0 {
                entry.record.failing_since_ms = 0;
                inner.records.put_peer(&entry.record).map_err(QueueError::internal)?;
            }
            Ok(Some(()))
        })
        .await
    }

    async fn expire(&self, before: u64) -> Result<u64, QueueError> {
        self.open_or_closed()?;
        let inner = self.inner.clone();
        blocking(move || inner.records.expire(before).map_err(QueueError::internal)).await
    }

    fn notices(&self) -> broadcast::Receiver<String> {
        self.inner.notices.subscribe()
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    async fn close(&self) -> Result<(), QueueError> {
        self.inner.closed.store(true, Ordering::Relaxed);
        let inner = self.inner.clone();
        blocking(move || inner.records.sync().map_err(QueueError::internal)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Recipient;

    fn open(dir: &Path) -> RocksQueue {
        RocksQueue::open(dir).unwrap()
    }

    fn to(peer: &str, envelope: &bytes::Bytes) -> NewDelivery {
        NewDelivery {
            peer: peer.into(),
            id: [1; 32],
            sender: "https://a.example/actors/alice".into(),
            inbox_url: format!("{peer}/inbox"),
            envelope: envelope.clone(),
            ..NewDelivery::default()
        }
    }

    /// (acts pending or dead, acts kept as delivered, routes, item records).
    fn acts_and_routes(queue: &RocksQueue) -> (usize, usize, usize, usize) {
        let records = &queue.inner.records;
        let kept = records.kept_acts();
        (
            records.count("acts") - kept,
            kept,
            records.count("routes"),
            records.count("items"),
        )
    }

    #[tokio::test]
    async fn an_activity_for_several_destinations_is_one_record_dropped_with_its_last_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let envelope = bytes::Bytes::from(vec![9u8; 500]);
        let peers = ["https://b.example", "https://c.example", "https://d.example"];
        {
            let queue = open(dir.path());
            let batch = peers.iter().map(|peer| to(peer, &envelope)).collect();
            assert_eq!(queue.enqueue_all(batch).await.unwrap(), [true, true, true]);
            assert_eq!(
                acts_and_routes(&queue),
                (1, 0, 3, 0),
                "one act, a route per destination, no items"
            );
            queue.claim("a", 1, u64::MAX, 10).await.unwrap();
            queue
                .record("a", 1, peers[0], vec![([1; 32], Outcome::Delivered)])
                .await
                .unwrap();
            let dead = Outcome::Dead {
                attempts: 1,
                error: "status 404".into(),
            };
            queue.record("a", 1, peers[1], vec![([1; 32], dead)]).await.unwrap();
            assert_eq!(acts_and_routes(&queue), (1, 0, 2, 2), "two deliveries still name it");
            queue.close().await.unwrap();
        }
        let queue = open(dir.path());
        // Queued again after the restart (a repeated hand-off): still one delivery each.
        let batch = peers.iter().map(|peer| to(peer, &envelope)).collect();
        assert_eq!(queue.enqueue_all(batch).await.unwrap(), [false, false, false]);
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let due = queue.due(peers[2], 1, 10, vec![], true).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].envelope, envelope);
        assert_eq!(due[0].inbox_url, "https://d.example/inbox");
        assert_eq!(due[0].traceparent, to(peers[2], &envelope).traceparent);
        let recorded = queue
            .record("a", 1, peers[2], vec![([1; 32], Outcome::Delivered)])
            .await;
        assert_eq!(recorded.unwrap(), [true]);
        assert_eq!(
            acts_and_routes(&queue).0,
            1,
            "the dead letter still names it (counted again at open)"
        );
        let letters = queue.dead_letters(peers[1]).await.unwrap().unwrap();
        assert_eq!(letters[0].sender, "https://a.example/actors/alice");
        assert_eq!(queue.redrive(peers[1], None).await.unwrap(), Some(1));
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let due = queue.due(peers[1], 1, 10, vec![], true).await.unwrap();
        assert_eq!(due[0].envelope, envelope);
        let recorded = queue
            .record("a", 1, peers[1], vec![([1; 32], Outcome::Delivered)])
            .await;
        assert_eq!(recorded.unwrap(), [true]);
        assert_eq!(
            acts_and_routes(&queue),
            (0, 1, 0, 3),
            "the act kept as delivered, the routes dropped with the last delivery, the delivered records stay"
        );
        {
            let shared = queue.inner.shared.lock().unwrap();
            assert!(shared.acts.refs.is_empty() && shared.routes.refs.is_empty());
        }
        let batch = peers.iter().map(|peer| to(peer, &envelope)).collect();
        assert_eq!(
            queue.enqueue_all(batch).await.unwrap(),
            [false, false, false],
            "delivered: kept"
        );
        assert_eq!(queue.expire(1).await.unwrap(), 3);
        assert_eq!(
            acts_and_routes(&queue),
            (0, 0, 0, 0),
            "the retention expires the act with them"
        );
        let batch = peers.iter().map(|peer| to(peer, &envelope)).collect();
        assert_eq!(
            queue.enqueue_all(batch).await.unwrap(),
            [true, true, true],
            "after the retention the same id is new"
        );
    }

    #[tokio::test]
    async fn a_destinations_recipients_are_stored_once_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let peer = "https://b.example";
        let followers: Vec<Recipient> = (0..5)
            .map(|n| Recipient {
                actor: format!("{peer}/actors/follower-{n}"),
                inbox_url: format!("{peer}/inbox"),
            })
            .collect();
        let activity = |n: u8, recipients: &[Recipient]| NewDelivery {
            id: [n; 32],
            // Senders of their own: every one is due at once.
            sender: format!("https://a.example/actors/sender-{n}"),
            recipients: recipients.into(),
            ..to(peer, &bytes::Bytes::from(vec![n; 100]))
        };
        let recipients_of = |due: &[Due]| -> Vec<Vec<Recipient>> {
            due.iter()
                .map(|d| d.recipients.read(peer, &d.inbox_url).unwrap())
                .collect()
        };
        {
            let queue = open(dir.path());
            // One batch after another, as the relay hands them off.
            for n in 1..=3 {
                assert_eq!(queue.enqueue_all(vec![activity(n, &followers)]).await.unwrap(), [true]);
            }
            assert_eq!(acts_and_routes(&queue), (3, 0, 1, 0), "one route for the three");
            // A follower less: a route of its own.
            assert_eq!(
                queue.enqueue_all(vec![activity(4, &followers[..1])]).await.unwrap(),
                [true]
            );
            assert_eq!(acts_and_routes(&queue), (4, 0, 2, 0));
            queue.claim("a", 1, u64::MAX, 10).await.unwrap();
            let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
            assert_eq!(
                recipients_of(&due),
                [&followers[..], &followers[..], &followers[..], &followers[..1]]
            );
            let done = vec![([1; 32], Outcome::Delivered), ([4; 32], Outcome::Delivered)];
            queue.record("a", 1, peer, done).await.unwrap();
            assert_eq!(
                acts_and_routes(&queue),
                (2, 2, 1, 2),
                "the second route went with its last delivery"
            );
            queue.close().await.unwrap();
        }
        let queue = open(dir.path());
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
        assert_eq!(recipients_of(&due), [followers.clone(), followers.clone()]);
        let dead = Outcome::Dead {
            attempts: 1,
            error: "status 404".into(),
        };
        queue
            .record("a", 1, peer, vec![([2; 32], Outcome::Delivered), ([3; 32], dead)])
            .await
            .unwrap();
        let letters = queue.dead_letters(peer).await.unwrap().unwrap();
        assert_eq!(letters[0].recipients, followers);
        // Queued after the restart: the same followers, a route again (the memo is gone).
        assert_eq!(queue.enqueue_all(vec![activity(5, &followers)]).await.unwrap(), [true]);
        assert_eq!(queue.redrive(peer, None).await.unwrap(), Some(1));
        let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
        assert_eq!(recipients_of(&due), [followers.clone(), followers.clone()]);
        let done = due.iter().map(|d| (d.id, Outcome::Delivered)).collect();
        assert_eq!(queue.record("a", 1, peer, done).await.unwrap(), [true, true]);
        assert_eq!(
            acts_and_routes(&queue),
            (0, 5, 0, 5),
            "only what delivered deliveries need stays"
        );
    }

    #[tokio::test]
    async fn a_queue_from_before_acts_is_sent_and_queued_to_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let peer = "https://b.example";
        let inbox = format!("{peer}/inbox");
        let bob = Recipient {
            actor: format!("{peer}/actors/bob"),
            inbox_url: inbox.clone(),
        };
        {
            // As a queue before acts wrote it: an item record holding all, its own envelope
            // and recipients, a peer record without a number.
            let records = Records::open(dir.path()).unwrap();
            let record = PeerRecord {
                peer: peer.into(),
                ..PeerRecord::default()
            };
            let item = ItemRecord {
                order: 7,
                status: STATUS_PENDING,
                inbox_url: inbox.clone(),
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                enqueued_ms: 5,
                sender: "https://a.example/actors/alice".into(),
                ..ItemRecord::default()
            };
            let recipients = crate::storage::StoredRecipients::store(peer, &inbox, std::slice::from_ref(&bob));
            let new = records::NewPayload {
                envelope: Some(b"old envelope"),
                recipients: Some(recipients.bytes()),
            };
            let writes = [(peer, &[1; 32], &item, Some(new))];
            records
                .put_all(&[&record], &writes, &[], &Changes::default(), true)
                .unwrap();
        }
        let queue = open(dir.path());
        let old = to(peer, &bytes::Bytes::from("old envelope"));
        let later = NewDelivery {
            id: [2; 32],
            recipients: vec![bob.clone()].into(),
            ..to(peer, &bytes::Bytes::from("new envelope"))
        };
        assert_eq!(
            queue.enqueue_all(vec![old.clone(), later.clone()]).await.unwrap(),
            [false, true]
        );
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
        assert_eq!(due.len(), 1, "the later one waits behind its sender's earlier one");
        assert_eq!((due[0].id, &due[0].envelope[..]), ([1; 32], &b"old envelope"[..]));
        assert_eq!(
            due[0].recipients.read(peer, &due[0].inbox_url).unwrap(),
            std::slice::from_ref(&bob)
        );
        let recorded = queue.record("a", 1, peer, vec![([1; 32], Outcome::Delivered)]).await;
        assert_eq!(recorded.unwrap(), [true]);
        let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
        assert_eq!((due[0].id, &due[0].envelope[..]), ([2; 32], &b"new envelope"[..]));
        assert_eq!(due[0].recipients.read(peer, &due[0].inbox_url).unwrap(), [bob]);
        let recorded = queue.record("a", 1, peer, vec![([2; 32], Outcome::Delivered)]).await;
        assert_eq!(recorded.unwrap(), [true]);
        queue.close().await.unwrap();
        drop(queue);
        let queue = open(dir.path());
        assert_eq!(queue.status(peer).await.unwrap().unwrap().pending, 0);
        assert_eq!(queue.enqueue_all(vec![old, later]).await.unwrap(), [false, false]);
        assert_eq!(acts_and_routes(&queue), (0, 1, 0, 2));
    }

    /// One activity queued for two destinations by two calls at once (two kernel replicas
    /// handing off, a retry racing the first try) is two acts of one id: each destination
    /// gets it, also while its acts are being read (and cached) for sending.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_activity_queued_to_two_destinations_at_once_reaches_both() {
        let dir = tempfile::tempdir().unwrap();
        let queue = open(dir.path());
        let (b, c) = ("https://b.example", "https://c.example");
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let mut sent: HashMap<&str, HashSet<Id>> = HashMap::new();
        for n in 0..100u8 {
            let envelope = bytes::Bytes::from(vec![n; 40]);
            // Senders of their own, so every one is due at once.
            let one = |peer: &str| NewDelivery {
                id: [n; 32],
                sender: format!("https://a.example/actors/s{n}"),
                ..to(peer, &envelope)
            };
            let (to_b, to_c) = (queue.clone(), queue.clone());
            let (first, second) = (one(b), one(c));
            let reader = queue.clone();
            let (x, y, read) = tokio::join!(
                tokio::spawn(async move { to_b.enqueue_all(vec![first]).await.unwrap() }),
                tokio::spawn(async move { to_c.enqueue_all(vec![second]).await.unwrap() }),
                tokio::spawn(async move { reader.due(b, 1, 10, vec![], false).await.unwrap() }),
            );
            assert_eq!((x.unwrap(), y.unwrap()), (vec![true], vec![true]));
            sent.entry(b).or_default().extend(read.unwrap().iter().map(|d| d.id));
        }
        for peer in [b, c] {
            queue.claim("a", 1, u64::MAX, 10).await.unwrap();
            let due = queue.due(peer, 1, 1000, vec![], false).await.unwrap();
            sent.entry(peer).or_default().extend(due.iter().map(|d| d.id));
            for d in &due {
                assert_eq!(&d.envelope[..], &[d.id[0]; 40][..], "its own envelope");
            }
        }
        for peer in [b, c] {
            assert_eq!(sent[peer].len(), 100, "{peer}: every activity handed out once read");
            let status = queue.status(peer).await.unwrap().unwrap();
            assert_eq!(status.pending, 100, "{peer}: every activity queued");
        }
    }
}
