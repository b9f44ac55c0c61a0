//! The embedded engine: one record per (peer, id) in RocksDB (see `records`), and in memory
//! per peer the pure [`PeerState`] as the index of what is pending, waiting and dead, so
//! handing out due work costs O(log n) however long the queue. One process owns the
//! directory, so leases are kept in memory.

mod records;

use crate::queue::{DeadLetter, Id, PeerState};
use crate::storage::{
    Due, NewDelivery, Outcome, PeerStatus, QueueError, QueueStorage, StoredRecipients, unavailable_reason,
};
use records::{ItemRecord, LoadedPeer, NewPayload, PeerRecord, Records, STATUS_DEAD, STATUS_DELIVERED, STATUS_PENDING};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Wake-ups buffered for the dispatcher.
const NOTICE_BUFFER: usize = 1024;

#[derive(Clone)]
pub struct RocksQueue {
    inner: Arc<Inner>,
}

struct Inner {
    records: Records,
    peers: Mutex<HashMap<String, PeerEntry>>,
    /// Global enqueue order: restores each peer's FIFO after a restart.
    order: AtomicU64,
    notices: broadcast::Sender<String>,
    ready: watch::Sender<bool>,
    closed: AtomicBool,
    storage: StorageThread,
    shared: Mutex<SharedRecords>,
}

/// How many pending or dead deliveries name each shared record, and whether it is on disk
/// yet. A shared record is stored once under the SHA-256 of its bytes: the envelope of an
/// activity queued for several destinations in one batch, and a recipient list (the same
/// followers on one node, activity after activity). The last delivery naming one that is
/// delivered drops it, in the same write. Rebuilt from the items at open; changed only
/// under the queue's lock (taken before this one).
#[derive(Default)]
struct SharedRecords {
    refs: HashMap<[u8; 32], SharedRef>,
}

struct SharedRef {
    count: u32,
    /// Written by an enqueue that succeeded: later enqueues naming it need not write it.
    stored: bool,
}

impl SharedRecords {
    /// One more delivery names `key`: whether its enqueue must write the record (it is
    /// not known to be on disk).
    fn add(&mut self, key: &[u8]) -> bool {
        let Ok(key) = <[u8; 32]>::try_from(key) else {
            return false;
        };
        let entry = self.refs.entry(key).or_insert(SharedRef {
            count: 0,
            stored: false,
        });
        entry.count += 1;
        !entry.stored
    }

    /// One more delivery names `key`, whose record is on disk (read back at open, or kept
    /// by a write that failed).
    fn add_stored(&mut self, key: &[u8]) {
        self.add(key);
        if let Ok(key) = <[u8; 32]>::try_from(key) {
            self.stored(&key);
        }
    }

    /// `key`'s record is on disk (an enqueue writing it succeeded).
    fn stored(&mut self, key: &[u8; 32]) {
        if let Some(entry) = self.refs.get_mut(key) {
            entry.stored = true;
        }
    }

    /// One delivery fewer names `key`: the key when it was the last.
    fn release(&mut self, key: &[u8]) -> Option<[u8; 32]> {
        let key = <[u8; 32]>::try_from(key).ok()?;
        let entry = self.refs.get_mut(&key)?;
        entry.count -= 1;
        if entry.count > 0 {
            return None;
        }
        self.refs.remove(&key);
        Some(key)
    }
}

/// Recipient lists shorter than this stay with their item: a shared one costs a key.
const SHARED_RECIPIENTS_MIN: usize = 64;

/// Each delivery's recipients as stored, and the shared key of those long enough to share:
/// the SHA-256 of the stored bytes (hashed once per destination and list in a batch).
fn stored_recipients(deliveries: &[NewDelivery]) -> Vec<(StoredRecipients, Option<[u8; 32]>)> {
    use sha2::Digest;
    let mut last: HashMap<&str, (StoredRecipients, [u8; 32])> = HashMap::new();
    deliveries
        .iter()
        .map(|delivery| {
            let stored = StoredRecipients::store(&delivery.peer, &delivery.inbox_url, &delivery.recipients);
            if stored.bytes().len() < SHARED_RECIPIENTS_MIN {
                return (stored, None);
            }
            if let Some((previous, key)) = last.get(delivery.peer.as_str())
                && previous == &stored
            {
                return (previous.clone(), Some(*key));
            }
            let key: [u8; 32] = sha2::Sha256::digest(stored.bytes()).into();
            last.insert(&delivery.peer, (stored.clone(), key));
            (stored, Some(key))
        })
        .collect()
}

/// The shared-envelope key of each delivery in a batch: for an activity queued to several
/// destinations with the same envelope bytes, the SHA-256 of those bytes; else none (its
/// envelope is stored with its item).
fn shared_keys(deliveries: &[NewDelivery]) -> Vec<Option<[u8; 32]>> {
    use sha2::Digest;
    let mut keys = vec![None; deliveries.len()];
    if deliveries.len() < 2 {
        return keys;
    }
    let mut firsts: HashMap<Id, usize> = HashMap::new();
    let mut group_key: HashMap<usize, [u8; 32]> = HashMap::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        let first = *firsts.entry(delivery.id).or_insert(index);
        if first == index || deliveries[first].envelope != delivery.envelope {
            continue;
        }
        let key = *group_key
            .entry(first)
            .or_insert_with(|| sha2::Sha256::digest(&delivery.envelope).into());
        keys[first] = Some(key);
        keys[index] = Some(key);
    }
    keys
}

struct PeerEntry {
    state: PeerState,
    record: PeerRecord,
    /// Ids being enqueued right now (written, not yet in `state`).
    enqueuing: HashSet<Id>,
    /// (owner, until ms).
    lease: Option<(String, u64)>,
    /// Whether its record is on disk (an enqueue writes it only while it is not).
    on_disk: bool,
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
    let Some(mut item) = records.item(&entry.record.peer, &id).map_err(QueueError::internal)? else {
        return Ok(None);
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
    /// Takes up to `limit` of `peer`'s due ids (not in `skip`) out of waiting.
    fn take_ids(&self, peer: &str, now: u64, limit: usize, skip: &[Id]) -> Vec<Id> {
        let mut peers = self.peers.lock().expect("queue lock poisoned");
        peers.get_mut(peer).map_or_else(Vec::new, |entry| {
            entry.state.take_due(now, limit, |id| skip.contains(id))
        })
    }

    /// The taken ids' deliveries, from disk (those still pending). Blocks.
    fn read_due(&self, peer: &str, ids: Vec<Id>, recipients: bool) -> Result<Vec<Due>, QueueError> {
        let mut due = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut item) = self.records.item(peer, &id).map_err(QueueError::internal)? else {
                continue;
            };
            if item.status != STATUS_PENDING {
                continue;
            }
            if let Some(envelope) = self.records.envelope(peer, &id, &item).map_err(QueueError::internal)? {
                let recipients = if recipients || item.inbox_url.is_empty() {
                    self.records
                        .recipients(peer, &id, &mut item)
                        .map_err(QueueError::internal)?
                } else {
                    Default::default()
                };
                due.push(Due {
                    id,
                    inbox_url: item.inbox_url,
                    recipients,
                    envelope,
                    traceparent: item.traceparent,
                    attempts: item.attempts,
                });
            }
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
                            unshared.extend(shared.release(key));
                        }
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
            && let Err(err) = self.records.put_all(&[&entry.record], &writes, &unshared, false)
        {
            // Not written: the deliveries still name their shared records, on disk.
            for key in &released {
                shared.add_stored(key);
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
        let order = Records::max_order(&loaded) + 1;
        let mut shared = SharedRecords::default();
        for (_, item) in loaded.iter().flat_map(|peer| &peer.items) {
            shared.add_stored(&item.envelope_key);
            shared.add_stored(&item.recipients_key);
        }
        let peers = loaded
            .into_iter()
            .map(|peer| (peer.record.peer.clone(), PeerEntry::restored(peer)))
            .collect();
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        Ok(RocksQueue {
            inner: Arc::new(Inner {
                records,
                peers: Mutex::new(peers),
                order: AtomicU64::new(order),
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
                heads.push((status, head));
            }
        }
        let mut all: Vec<PeerStatus> = heads
            .into_iter()
            .map(|(mut status, head)| {
                if let Some(id) = head
                    && let Ok(Some(item)) = self.inner.records.item(&status.peer, &id)
                {
                    status.head_enqueued_ms = item.enqueued_ms;
                }
                status
            })
            .collect();
        all.sort_by(|a, b| a.peer.cmp(&b.peer));
        all
    }
}

/// A delivery of an enqueue, checked under the queue's lock, to be written.
struct Staged {
    index: usize,
    delivery: NewDelivery,
    /// Its peer's record, when not on disk yet (written with it).
    new_peer: Option<PeerRecord>,
    recipients: StoredRecipients,
    envelope_key: Option<[u8; 32]>,
    recipients_key: Option<[u8; 32]>,
    /// Whether its enqueue writes its envelope and recipients (not when shared and on disk).
    write_envelope: bool,
    write_recipients: bool,
}

impl Staged {
    fn shared_keys(&self) -> Vec<[u8; 32]> {
        self.envelope_key.into_iter().chain(self.recipients_key).collect()
    }
}

impl QueueStorage for RocksQueue {
    /// All in one synced write. Under the queue's lock first: ids pending, dead or being
    /// enqueued are not new; the rest are marked as being enqueued until written.
    async fn enqueue_all(&self, deliveries: Vec<NewDelivery>) -> Result<Vec<bool>, QueueError> {
        self.open_or_closed()?;
        let mut new = vec![false; deliveries.len()];
        let mut staged = Vec::with_capacity(deliveries.len());
        let envelope_keys = shared_keys(&deliveries);
        let recipients = stored_recipients(&deliveries);
        {
            let mut peers = self.inner.peers.lock().expect("queue lock poisoned");
            let mut shared = self.inner.shared.lock().expect("shared records lock poisoned");
            let each = deliveries.into_iter().zip(envelope_keys).zip(recipients);
            for (index, ((mut delivery, envelope_key), (recipients, recipients_key))) in each.enumerate() {
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
                // A shared record already on disk is not written again.
                let write_envelope = envelope_key.is_none_or(|key| shared.add(&key));
                let write_recipients = recipients_key.is_none_or(|key| shared.add(&key));
                staged.push(Staged {
                    index,
                    delivery,
                    new_peer: (!entry.on_disk).then(|| entry.record.clone()),
                    recipients,
                    envelope_key,
                    recipients_key,
                    write_envelope,
                    write_recipients,
                });
            }
        }
        let marked: Vec<(String, Id, Vec<[u8; 32]>)> = staged
            .iter()
            .map(|s| (s.delivery.peer.clone(), s.delivery.id, s.shared_keys()))
            .collect();
        let inner = self.inner.clone();
        let written = blocking(move || {
            // Delivered before (a repeated hand-off after a kernel restart): one delivery.
            let keys: Vec<_> = staged
                .iter()
                .map(|s| (s.delivery.peer.as_str(), &s.delivery.id))
                .collect();
            let exist = inner.records.exist(&keys).map_err(QueueError::internal)?;
            let mut fresh = Vec::with_capacity(staged.len());
            let mut unwritten = Vec::new();
            for (staged, exists) in staged.into_iter().zip(exist) {
                if exists {
                    unwritten.extend(staged.shared_keys());
                } else {
                    fresh.push(staged);
                }
            }
            let items: Vec<ItemRecord> = fresh
                .iter()
                .map(|staged| {
                    let delivery = &staged.delivery;
                    ItemRecord {
                        envelope_key: staged.envelope_key.map(Vec::from).unwrap_or_default(),
                        recipients_key: staged.recipients_key.map(Vec::from).unwrap_or_default(),
                        order: inner.order.fetch_add(1, Ordering::Relaxed),
                        status: if delivery.undeliverable.is_some() {
                            STATUS_DEAD
                        } else {
                            STATUS_PENDING
                        },
                        last_error: delivery.undeliverable.clone().unwrap_or_default(),
                        inbox_url: delivery.inbox_url.clone(),
                        traceparent: delivery.traceparent.clone(),
                        enqueued_ms: delivery.enqueued_ms,
                        sender: delivery.sender.clone(),
                        ..ItemRecord::default()
                    }
                })
                .collect();
            let writes: Vec<_> = fresh
                .iter()
                .zip(&items)
                .map(|(staged, item)| {
                    let new = NewPayload {
                        envelope: staged.write_envelope.then_some(&staged.delivery.envelope[..]),
                        recipients: staged.write_recipients.then_some(staged.recipients.bytes()),
                    };
                    (staged.delivery.peer.as_str(), &staged.delivery.id, item, Some(new))
                })
                .collect();
            let mut new_peers: Vec<&PeerRecord> = fresh.iter().filter_map(|s| s.new_peer.as_ref()).collect();
            new_peers.sort_by(|a, b| a.peer.cmp(&b.peer));
            new_peers.dedup_by(|a, b| a.peer == b.peer);
            if !writes.is_empty() {
                inner
                    .records
                    .put_all(&new_peers, &writes, &[], true)
                    .map_err(QueueError::internal)?;
            }
            let stored: Vec<[u8; 32]> = fresh.iter().flat_map(Staged::shared_keys).collect();
            let written: Vec<_> = fresh
                .into_iter()
                .map(|staged| (staged.index, staged.delivery))
                .collect();
            Ok((written, stored, unwritten))
        })
        .await;
        let mut peers = self.inner.peers.lock().expect("queue lock poisoned");
        for (peer, id, _) in &marked {
            if let Some(entry) = peers.get_mut(peer) {
                entry.enqueuing.remove(id);
            }
        }
        {
            let mut shared = self.inner.shared.lock().expect("shared records lock poisoned");
            match &written {
                Ok((_, stored, unwritten)) => {
                    // The written deliveries hold their counts, so these stay until marked.
                    for key in stored {
                        shared.stored(key);
                    }
                    // What was not written holds no count: a count back at zero here had
                    // nothing stored for it alone (the deliveries that wrote it hold theirs).
                    for key in unwritten {
                        shared.release(key);
                    }
                }
                Err(_) => {
                    for key in marked.iter().flat_map(|(_, _, keys)| keys) {
                        shared.release(key);
                    }
                }
            }
        }
        // The dispatcher is woken once per destination, and only for a delivery that can
        // go now: one queued behind its sender's earlier one goes when that one is done.
        let mut wake: HashSet<String> = HashSet::new();
        for (index, delivery) in written?.0 {
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
        let ids = self.inner.take_ids(peer, now, limit, &skip);
        let (inner, peer) = (self.inner.clone(), peer.to_owned());
        self.inner
            .storage
            .run(move || inner.read_due(&peer, ids, recipients))
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
                if let Some(mut item) = inner.records.item(&peer, id).map_err(QueueError::internal)? {
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
        let listed: Option<Vec<DeadLetter>> = {
            let peers = self.inner.peers.lock().expect("queue lock poisoned");
            peers
                .get(peer)
                .map(|entry| entry.state.dead_letters().cloned().collect())
        };
        let Some(mut listed) = listed else { return Ok(None) };
        // Whose and for whom: from the records on disk.
        let (inner, peer) = (self.inner.clone(), peer.to_owned());
        blocking(move || {
            for dead in &mut listed {
                if let Some(mut item) = inner.records.item(&peer, &dead.id).map_err(QueueError::internal)? {
                    dead.recipients = inner
                        .records
                        .recipients(&peer, &dead.id, &mut item)
                        .and_then(|stored| stored.read(&peer, &item.inbox_url))
                        .map_err(QueueError::internal)?;
                    dead.sender = item.sender;
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
    use sha2::Digest;

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

    #[tokio::test]
    async fn a_shared_envelope_is_stored_once_and_dropped_with_its_last_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let envelope = bytes::Bytes::from(vec![9u8; 500]);
        let key: [u8; 32] = sha2::Sha256::digest(&envelope).into();
        let peers = ["https://b.example", "https://c.example", "https://d.example"];
        {
            let queue = open(dir.path());
            let batch = peers.iter().map(|peer| to(peer, &envelope)).collect();
            assert_eq!(queue.enqueue_all(batch).await.unwrap(), [true, true, true]);
            assert!(queue.inner.records.has_shared(&key));
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
            assert!(queue.inner.records.has_shared(&key), "two deliveries still name it");
            queue.close().await.unwrap();
        }
        let queue = open(dir.path());
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let recorded = queue
            .record("a", 1, peers[2], vec![([1; 32], Outcome::Delivered)])
            .await;
        assert_eq!(recorded.unwrap(), [true]);
        assert!(
            queue.inner.records.has_shared(&key),
            "the dead letter still names it (counted again at open)"
        );
        assert_eq!(queue.redrive(peers[1], None).await.unwrap(), Some(1));
        queue.claim("a", 1, u64::MAX, 10).await.unwrap();
        let recorded = queue
            .record("a", 1, peers[1], vec![([1; 32], Outcome::Delivered)])
            .await;
        assert_eq!(recorded.unwrap(), [true]);
        assert!(!queue.inner.records.has_shared(&key), "dropped with its last delivery");
        assert!(queue.inner.shared.lock().unwrap().refs.is_empty());
    }

    #[tokio::test]
    async fn a_recipient_list_queued_again_and_again_is_stored_once_and_dropped_with_its_last_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let peer = "https://b.example";
        let followers: Vec<Recipient> = (0..5)
            .map(|n| Recipient {
                actor: format!("{peer}/actors/follower-{n}"),
                inbox_url: format!("{peer}/inbox"),
            })
            .collect();
        let stored = StoredRecipients::store(peer, &format!("{peer}/inbox"), &followers);
        let key: [u8; 32] = sha2::Sha256::digest(stored.bytes()).into();
        let activity = |n: u8, recipients: &[Recipient]| NewDelivery {
            id: [n; 32],
            // Senders of their own: every one is due at once.
            sender: format!("https://a.example/actors/sender-{n}"),
            recipients: recipients.to_vec(),
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
            // A list too short to share stays with its item.
            assert_eq!(
                queue.enqueue_all(vec![activity(4, &followers[..1])]).await.unwrap(),
                [true]
            );
            let item = |n: u8| queue.inner.records.item(peer, &[n; 32]).unwrap().unwrap();
            assert_eq!(item(1).recipients_key, key);
            assert_eq!(item(3).recipients_key, key);
            assert!(item(4).recipients_key.is_empty());
            assert!(queue.inner.records.has_shared(&key));
            assert_eq!(queue.inner.shared.lock().unwrap().refs[&key].count, 3);
            assert!(
                queue.inner.shared.lock().unwrap().refs[&key].stored,
                "later enqueues skip writing it"
            );
            queue.claim("a", 1, u64::MAX, 10).await.unwrap();
            let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
            assert_eq!(
                recipients_of(&due),
                [&followers[..], &followers[..], &followers[..], &followers[..1]]
            );
            queue
                .record(
                    "a",
                    1,
                    peer,
                    vec![([1; 32], Outcome::Delivered), ([4; 32], Outcome::Delivered)],
                )
                .await
                .unwrap();
            assert!(queue.inner.records.has_shared(&key), "two deliveries still name it");
            queue.close().await.unwrap();
        }
        let queue = open(dir.path());
        assert_eq!(
            queue.inner.shared.lock().unwrap().refs[&key].count,
            2,
            "counted again at open"
        );
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
        assert!(queue.inner.records.has_shared(&key), "the dead letter still names it");
        let letters = queue.dead_letters(peer).await.unwrap().unwrap();
        assert_eq!(letters[0].recipients, followers);
        // Queued again after it was written: not written again, still read back whole.
        assert_eq!(queue.enqueue_all(vec![activity(5, &followers)]).await.unwrap(), [true]);
        assert_eq!(queue.redrive(peer, None).await.unwrap(), Some(1));
        let due = queue.due(peer, 1, 10, vec![], true).await.unwrap();
        assert_eq!(recipients_of(&due), [followers.clone(), followers.clone()]);
        let done = due.iter().map(|d| (d.id, Outcome::Delivered)).collect();
        assert_eq!(queue.record("a", 1, peer, done).await.unwrap(), [true, true]);
        assert!(!queue.inner.records.has_shared(&key), "dropped with its last delivery");
        assert!(queue.inner.shared.lock().unwrap().refs.is_empty());
    }

    #[test]
    fn only_an_activity_queued_with_the_same_bytes_to_several_destinations_shares() {
        let (a, b) = (bytes::Bytes::from("a"), bytes::Bytes::from("b"));
        let mut other = to("https://c.example", &b);
        other.id = [2; 32];
        let batch = [
            to("https://b.example", &a),
            to("https://c.example", &a),
            to("https://d.example", &b),
            other,
        ];
        let keys = shared_keys(&batch);
        let key_a: [u8; 32] = sha2::Sha256::digest(&a).into();
        assert_eq!(keys, [Some(key_a), Some(key_a), None, None]);
    }
}
