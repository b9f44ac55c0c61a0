//! The RocksDB engine's records. An activity queued for destinations is one act record
//! (see `acts`); a delivery gets a small item record of its own — pending, dead or delivered
//! — only once something happened to it (attempts, retry time, last error), naming its act
//! for what it shares. The delivered record stays, so a repeated hand-off is one delivery,
//! until the retention period expires it. Queues from before acts hold an item record per
//! (peer, activity id) with the trace context, sender and inbox in it and the envelope and
//! recipients apart (shared by SHA-256 when several named the same bytes); they are read and
//! worked as they are. Enqueues are synced before they are acknowledged; later transitions
//! are written as they happen (they survive a process crash; after a machine crash the
//! worst case is one send too many, which receivers treat idempotently).

use super::acts::{self, ActKey, ActRecord, RouteKey, RouteRecord};
use crate::storage::StoredRecipients;
use bytes::Bytes;
use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const CF_ITEMS: &str = "items";
const CF_ENVELOPES: &str = "envelopes";
/// A delivery's recipients, apart from its item (read only to send it or list it as a dead
/// letter; dropped once delivered). Records from before it hold them in the item.
const CF_RECIPIENTS: &str = "recipients";
const CF_PEERS: &str = "peers";
/// Records several deliveries name, once, by the SHA-256 of their bytes: the envelope of an
/// activity queued for several destinations, a recipient list queued again and again;
/// dropped when the last of their deliveries is delivered (see `SharedRecords`). (The
/// name is from when it held envelopes only.)
const CF_SHARED: &str = "shared_envelopes";
/// Activities queued for several destinations, once each (see `acts`), by id and act number.
const CF_ACTS: &str = "acts";
/// Each destination's routes (inbox and recipients), by destination and route number.
const CF_ROUTES: &str = "routes";
/// Memtable size per column family, and how many: bounds write-buffer memory.
const WRITE_BUFFER_BYTES: usize = 2 << 20;
const BLOCK_CACHE_BYTES: usize = 8 << 20;

pub const STATUS_PENDING: i32 = 0;
pub const STATUS_DEAD: i32 = 1;
pub const STATUS_DELIVERED: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct ItemRecord {
    /// Global enqueue order: restores each peer's FIFO.
    #[prost(uint64, tag = "1")]
    pub order: u64,
    #[prost(int32, tag = "2")]
    pub status: i32,
    #[prost(string, tag = "3")]
    pub inbox_url: String,
    #[prost(string, tag = "5")]
    pub traceparent: String,
    #[prost(uint32, tag = "6")]
    pub attempts: u32,
    #[prost(uint64, tag = "7")]
    pub next_retry_ms: u64,
    #[prost(string, tag = "8")]
    pub last_error: String,
    /// When it was first enqueued (ms since the epoch; 0 in records from before it was kept).
    #[prost(uint64, tag = "9")]
    pub enqueued_ms: u64,
    /// The sending actor (empty in records from before senders were kept).
    #[prost(string, tag = "10")]
    pub sender: String,
    /// Only in records from before recipients had a record of their own.
    #[prost(message, repeated, tag = "11")]
    pub recipients: Vec<crate::storage::Recipient>,
    /// The key of its envelope among the shared ones; empty: the envelope is its own,
    /// under the item's key.
    #[prost(bytes = "vec", tag = "12")]
    pub envelope_key: Vec<u8>,
    /// The key of its recipients among the shared records; empty: they are its own, in
    /// the recipients column family (or, in records from before it, in the item).
    #[prost(bytes = "vec", tag = "13")]
    pub recipients_key: Vec<u8>,
    /// The act record its sender, trace context, enqueue time and envelope are in (0: they
    /// are in this record, as they were before act records).
    #[prost(uint64, tag = "14")]
    pub act: u64,
    /// With an act: its route (inbox and recipients) on its destination.
    #[prost(uint64, tag = "15")]
    pub route: u64,
}

impl ItemRecord {
    /// As written: one of an act holds only what is its own.
    fn stored(&self) -> Vec<u8> {
        if self.act == 0 {
            return self.encode_to_vec();
        }
        ItemRecord {
            order: self.order,
            status: self.status,
            attempts: self.attempts,
            next_retry_ms: self.next_retry_ms,
            last_error: self.last_error.clone(),
            enqueued_ms: self.enqueued_ms,
            act: self.act,
            route: self.route,
            ..ItemRecord::default()
        }
        .encode_to_vec()
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct PeerRecord {
    #[prost(string, tag = "1")]
    pub peer: String,
    #[prost(uint64, tag = "2")]
    pub delivered: u64,
    #[prost(string, tag = "3")]
    pub last_error: String,
    /// Since when every send failed (ms since the epoch; 0: not failing).
    #[prost(uint64, tag = "4")]
    pub failing_since_ms: u64,
    /// Its number in act records (0: none given yet).
    #[prost(uint32, tag = "5")]
    pub num: u32,
}

/// A delivery as read back: its item record (with what its act and route hold filled in)
/// and, for one of an act, its envelope and recipients, read with it.
pub struct Item {
    pub record: ItemRecord,
    pub envelope: Option<Bytes>,
    pub recipients: Option<StoredRecipients>,
}

/// What an open reads back besides each peer: how many pending and dead deliveries name
/// each act and each route, and the highest numbers given.
#[derive(Default)]
pub struct Loaded {
    pub peers: Vec<LoadedPeer>,
    pub act_refs: HashMap<ActKey, u32>,
    pub route_refs: HashMap<RouteKey, u32>,
    pub max_order: u64,
    pub max_num: u32,
}

/// Writes besides items and peers: act and route records made and dropped.
#[derive(Default)]
pub struct Changes {
    pub acts: Vec<(ActKey, Arc<ActRecord>)>,
    pub routes: Vec<(RouteKey, Vec<u8>)>,
    pub dropped_acts: Vec<ActKey>,
    pub dropped_routes: Vec<RouteKey>,
}

/// What an enqueue writes besides the item: its envelope and its recipients as stored
/// (empty: none), each unless it is shared and on disk already (`None`).
pub struct NewPayload<'a> {
    pub envelope: Option<&'a [u8]>,
    pub recipients: Option<&'a [u8]>,
}

pub struct Records {
    db: DB,
    acts: acts::ActCache,
    /// Whether a delivered record of no act is on disk (from before acts, or a dead letter
    /// from the start redriven and delivered): then every enqueue looks for records of
    /// its deliveries; else only for those of ids with acts.
    delivered_alone: AtomicBool,
}

fn peer_key(peer: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(peer.len() + 1);
    key.extend_from_slice(peer.as_bytes());
    // A URL never holds NUL, so no peer's keys are a prefix of another's.
    key.push(0);
    key
}

fn item_key(peer: &str, id: &[u8; 32]) -> Vec<u8> {
    let mut key = peer_key(peer);
    key.extend_from_slice(id);
    key
}

/// Everything on disk about one peer.
pub struct LoadedPeer {
    pub record: PeerRecord,
    /// (id, record) of pending and dead items in enqueue order.
    pub items: Vec<([u8; 32], ItemRecord)>,
}

impl Records {
    /// Opens or creates the database. Blocks.
    pub fn open(dir: &Path) -> Result<Records, String> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cf_options = |name: &str| {
            let mut cf = Options::default();
            if name == CF_ACTS {
                // Looked up by activity id: the act number after it is not known.
                cf.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(32));
                cf.set_memtable_prefix_bloom_ratio(0.1);
            }
            cf.set_write_buffer_size(WRITE_BUFFER_BYTES);
            cf.set_max_write_buffer_number(2);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Most lookups are of ids not queued yet (is this hand-off new?): a filter
            // answers those without reading the tables.
            table.set_bloom_filter(10.0, false);
            cf.set_block_based_table_factory(&table);
            cf
        };
        let cfs = [
            CF_ITEMS,
            CF_ENVELOPES,
            CF_RECIPIENTS,
            CF_PEERS,
            CF_SHARED,
            CF_ACTS,
            CF_ROUTES,
        ]
        .map(|name| ColumnFamilyDescriptor::new(name, cf_options(name)));
        let db = fedsx_runtime::rocks::open_verified(options, dir, cfs.into(), "delivery queue")
            .map_err(|err| err.to_string())?;
        Ok(Records {
            db,
            acts: acts::ActCache::default(),
            delivered_alone: AtomicBool::new(false),
        })
    }

    /// Every peer with its pending and dead items (those of acts with what their act
    /// holds), and the counts of what names each act and route. Acts and routes nothing
    /// names any more (a crash between writes) are dropped. Blocks.
    pub fn load(&self) -> Result<Loaded, String> {
        let peers_cf = self.db.cf_handle(CF_PEERS).expect("peers cf");
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let mut loaded = Loaded::default();
        let mut by_num: HashMap<u32, usize> = HashMap::new();
        for entry in self.db.iterator_cf(peers_cf, IteratorMode::Start) {
            let (_, value) = entry.map_err(|err| err.to_string())?;
            let record = PeerRecord::decode(value.as_ref()).map_err(|err| format!("corrupt peer record: {err}"))?;
            if record.num != 0 {
                by_num.insert(record.num, loaded.peers.len());
                loaded.max_num = loaded.max_num.max(record.num);
            }
            loaded.peers.push(LoadedPeer {
                record,
                items: Vec::new(),
            });
        }
        // Every delivery of an act, as pending and untried; its item record (read next)
        // says otherwise when something happened to it.
        let mut of_acts: HashMap<(usize, [u8; 32]), ItemRecord> = HashMap::new();
        let acts_cf = self.db.cf_handle(CF_ACTS).expect("acts cf");
        let mut enqueued: HashMap<ActKey, u64> = HashMap::new();
        for entry in self.db.iterator_cf(acts_cf, IteratorMode::Start) {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let (Some(act), Ok(id)) = (acts::act_of_key(&key), <[u8; 32]>::try_from(&key[..32])) else {
                return Err("corrupt act key".into());
            };
            let record = ActRecord::decode(value.as_ref()).map_err(|err| format!("corrupt act record: {err}"))?;
            loaded.max_order = loaded.max_order.max(act);
            if record.members.is_empty() {
                // Every delivery of it delivered: kept until the retention expires it.
                continue;
            }
            loaded.act_refs.insert(acts::act_key(&id, act), 0);
            enqueued.insert(acts::act_key(&id, act), record.enqueued_ms);
            for (num, route) in acts::members(&record.members)? {
                let Some(&peer) = by_num.get(&num) else { continue };
                *loaded.act_refs.entry(acts::act_key(&id, act)).or_default() += 1;
                *loaded.route_refs.entry(acts::route_key(num, route)).or_default() += 1;
                let item = ItemRecord {
                    order: act,
                    status: STATUS_PENDING,
                    act,
                    route,
                    sender: record.sender.clone(),
                    enqueued_ms: record.enqueued_ms,
                    ..ItemRecord::default()
                };
                of_acts.insert((peer, id), item);
            }
        }
        for (index, peer) in loaded.peers.iter_mut().enumerate() {
            let prefix = peer_key(&peer.record.peer);
            for entry in self.db.prefix_iterator_cf(items_cf, &prefix) {
                let (key, value) = entry.map_err(|err| err.to_string())?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let mut item =
                    ItemRecord::decode(value.as_ref()).map_err(|err| format!("corrupt queue item: {err}"))?;
                let id: [u8; 32] = key[prefix.len()..]
                    .try_into()
                    .map_err(|_| "corrupt queue key".to_owned())?;
                loaded.max_order = loaded.max_order.max(item.order);
                if item.act == 0 && item.status == STATUS_DELIVERED {
                    self.delivered_alone.store(true, Ordering::Relaxed);
                }
                if item.act != 0 {
                    let Some(of_act) = of_acts.remove(&(index, id)) else {
                        // Delivered, its act gone with its last delivery.
                        continue;
                    };
                    if item.status == STATUS_DELIVERED {
                        let (act, route) = (
                            acts::act_key(&id, item.act),
                            acts::route_key(peer.record.num, item.route),
                        );
                        loaded.act_refs.entry(act).and_modify(|n| *n -= 1);
                        loaded.route_refs.entry(route).and_modify(|n| *n -= 1);
                        continue;
                    }
                    item.sender = of_act.sender;
                } else if item.status == STATUS_DELIVERED {
                    continue;
                }
                peer.items.push((id, item));
            }
        }
        for ((index, id), item) in of_acts {
            loaded.peers[index].items.push((id, item));
        }
        for peer in &mut loaded.peers {
            peer.items.sort_by_key(|(_, item)| item.order);
        }
        let mut unnamed = Changes::default();
        loaded.act_refs.retain(|key, refs| {
            if *refs == 0 {
                let enqueued_ms = enqueued.get(key).copied().unwrap_or_default();
                unnamed.acts.push((*key, Arc::new(acts::tombstone(enqueued_ms))));
            }
            *refs > 0
        });
        loaded.route_refs.retain(|key, refs| {
            *refs > 0 || {
                unnamed.dropped_routes.push(*key);
                false
            }
        });
        let routes_cf = self.db.cf_handle(CF_ROUTES).expect("routes cf");
        for entry in self.db.iterator_cf(routes_cf, IteratorMode::Start) {
            let (key, _) = entry.map_err(|err| err.to_string())?;
            if let Ok(key) = RouteKey::try_from(key.as_ref()) {
                let route = u64::from_be_bytes(key[4..].try_into().expect("8 bytes"));
                loaded.max_order = loaded.max_order.max(route);
            }
            if let Ok(key) = RouteKey::try_from(key.as_ref())
                && !loaded.route_refs.contains_key(&key)
                && !unnamed.dropped_routes.contains(&key)
            {
                unnamed.dropped_routes.push(key);
            }
        }
        if !unnamed.acts.is_empty() || !unnamed.dropped_routes.is_empty() {
            self.put_all(&[], &[], &[], &unnamed, true)?;
        }
        Ok(loaded)
    }

    /// The act records of activity `id`: (act number, record).
    fn acts_of(&self, id: &[u8; 32]) -> Result<Vec<(u64, Arc<ActRecord>)>, String> {
        if let Some(held) = self.acts.get(id) {
            return Ok(held);
        }
        let seen = self.acts.before_read();
        let acts_cf = self.db.cf_handle(CF_ACTS).expect("acts cf");
        let mut found = Vec::new();
        for entry in self.db.prefix_iterator_cf(acts_cf, id) {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            if !key.starts_with(id) {
                break;
            }
            let act = acts::act_of_key(&key).ok_or("corrupt act key")?;
            let record = ActRecord::decode(value.as_ref()).map_err(|err| format!("corrupt act record: {err}"))?;
            found.push((act, Arc::new(record)));
        }
        if !found.is_empty() {
            self.acts.fill(*id, found.clone(), seen);
        }
        Ok(found)
    }

    /// Whether a delivery of an id never queued in an act may have an item record (see
    /// `delivered_alone`).
    pub fn has_delivered_alone(&self) -> bool {
        self.delivered_alone.load(Ordering::Relaxed)
    }

    /// The destinations (by number) each of `ids` is queued for in act records (none for
    /// an id whose act is kept only as delivered): one lookup per activity however many
    /// destinations it went to. Ids never queued in an act are left out.
    pub fn members_of(&self, ids: &[[u8; 32]]) -> Result<HashMap<[u8; 32], std::collections::HashSet<u32>>, String> {
        let mut found: HashMap<[u8; 32], std::collections::HashSet<u32>> = HashMap::new();
        for id in ids {
            for (_, act) in self.acts_of(id)? {
                found
                    .entry(*id)
                    .or_default()
                    .extend(acts::members(&act.members)?.into_iter().map(|(num, _)| num));
            }
        }
        Ok(found)
    }

    /// A delivery: its item record, or (untried, of an act) what its act says.
    pub fn item(&self, peer: &str, num: u32, id: &[u8; 32]) -> Result<Option<Item>, String> {
        if let Some(record) = self.item_record(peer, id)? {
            if record.act == 0 {
                return Ok(Some(Item {
                    record,
                    envelope: None,
                    recipients: None,
                }));
            }
            let act = self.acts_of(id)?.into_iter().find(|(no, _)| *no == record.act);
            return self.filled(num, record, act.map(|(_, act)| act)).map(Some);
        }
        if num == 0 {
            return Ok(None);
        }
        for (act, record) in self.acts_of(id)? {
            if let Some(route) = acts::route_of(&record.members, num)? {
                let item = ItemRecord {
                    order: act,
                    status: STATUS_PENDING,
                    act,
                    route,
                    ..ItemRecord::default()
                };
                return self.filled(num, item, Some(record)).map(Some);
            }
        }
        Ok(None)
    }

    /// An item of an act with what its act and route hold.
    fn filled(&self, num: u32, mut record: ItemRecord, act: Option<Arc<ActRecord>>) -> Result<Item, String> {
        let mut envelope = None;
        if let Some(act) = act {
            record.sender.clone_from(&act.sender);
            record.traceparent.clone_from(&act.traceparent);
            record.enqueued_ms = act.enqueued_ms;
            envelope = Some(act.envelope.clone());
        }
        let routes_cf = self.db.cf_handle(CF_ROUTES).expect("routes cf");
        let route = self
            .db
            .get_cf(routes_cf, acts::route_key(num, record.route))
            .map_err(|err| err.to_string())?
            .map(|value| RouteRecord::decode(value.as_slice()).map_err(|err| format!("corrupt route record: {err}")))
            .transpose()?
            .unwrap_or_default();
        record.inbox_url = route.inbox_url;
        Ok(Item {
            record,
            envelope,
            recipients: Some(StoredRecipients::from_stored(route.recipients)),
        })
    }

    fn item_record(&self, peer: &str, id: &[u8; 32]) -> Result<Option<ItemRecord>, String> {
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let value = self
            .db
            .get_pinned_cf(items_cf, item_key(peer, id))
            .map_err(|err| err.to_string())?;
        value
            .map(|v| ItemRecord::decode(v.as_ref()).map_err(|err| format!("corrupt queue item: {err}")))
            .transpose()
    }

    /// Which of (peer, id) have a record, in any state: one batched lookup, without decoding
    /// them (the tables' bloom filters answer most absent ids).
    pub fn exist(&self, keys: &[(&str, &[u8; 32])]) -> Result<Vec<bool>, String> {
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let keys: Vec<Vec<u8>> = keys.iter().map(|(peer, id)| item_key(peer, id)).collect();
        self.db
            .batched_multi_get_cf(items_cf, &keys, false)
            .into_iter()
            .map(|found| found.map(|value| value.is_some()).map_err(|err| err.to_string()))
            .collect()
    }

    /// A delivery's recipients as stored: in their own record, or (records from before it)
    /// in the item.
    pub fn recipients(&self, peer: &str, id: &[u8; 32], item: &mut Item) -> Result<StoredRecipients, String> {
        if let Some(recipients) = item.recipients.take() {
            return Ok(recipients);
        }
        let item = &mut item.record;
        if !item.recipients.is_empty() {
            let list = std::mem::take(&mut item.recipients);
            return Ok(StoredRecipients::store(peer, &item.inbox_url, &list));
        }
        let value = self.own_or_shared(CF_RECIPIENTS, peer, id, &item.recipients_key)?;
        Ok(StoredRecipients::from_stored(value.unwrap_or_default()))
    }

    /// An item's envelope: the shared one it names, or its own.
    pub fn envelope(&self, peer: &str, id: &[u8; 32], item: &Item) -> Result<Option<Bytes>, String> {
        if item.record.act != 0 {
            return Ok(item.envelope.clone());
        }
        let item = &item.record;
        Ok(self
            .own_or_shared(CF_ENVELOPES, peer, id, &item.envelope_key)?
            .map(bytes::Bytes::from))
    }

    /// An item's record in column family `own` (under the item's key), or, when it names
    /// `shared_key`, the shared record.
    fn own_or_shared(
        &self,
        own: &str,
        peer: &str,
        id: &[u8; 32],
        shared_key: &[u8],
    ) -> Result<Option<Vec<u8>>, String> {
        let value = if shared_key.is_empty() {
            let cf = self.db.cf_handle(own).expect("own cf");
            self.db.get_cf(cf, item_key(peer, id))
        } else {
            let cf = self.db.cf_handle(CF_SHARED).expect("shared records cf");
            self.db.get_cf(cf, shared_key)
        };
        value.map_err(|err| err.to_string())
    }

    /// How many acts are kept as delivered (tests).
    #[cfg(test)]
    pub fn kept_acts(&self) -> usize {
        let cf = self.db.cf_handle(CF_ACTS).expect("acts cf");
        self.db
            .iterator_cf(cf, IteratorMode::Start)
            .filter(|entry| {
                let (_, value) = entry.as_ref().expect("readable");
                ActRecord::decode(value.as_ref()).expect("an act").members.is_empty()
            })
            .count()
    }

    /// How many records column family `name` holds (tests).
    #[cfg(test)]
    pub fn count(&self, name: &str) -> usize {
        let cf = self.db.cf_handle(name).expect("a column family");
        self.db.iterator_cf(cf, IteratorMode::Start).count()
    }

    /// Deletes delivered items enqueued before `before`; how many. Blocks (a scan of every
    /// item record; envelopes of delivered items are gone already).
    pub fn expire(&self, before: u64) -> Result<u64, String> {
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let mut batch = WriteBatch::default();
        let mut expired = 0;
        for entry in self.db.iterator_cf(items_cf, IteratorMode::Start) {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let item = ItemRecord::decode(value.as_ref()).map_err(|err| format!("corrupt queue item: {err}"))?;
            if item.status == STATUS_DELIVERED && item.enqueued_ms < before {
                batch.delete_cf(items_cf, key);
                expired += 1;
            }
            if batch.len() >= 10_000 {
                self.db
                    .write(std::mem::take(&mut batch))
                    .map_err(|err| err.to_string())?;
            }
        }
        self.db.write(batch).map_err(|err| err.to_string())?;
        // Acts kept as delivered, once their delivered records are gone.
        let acts_cf = self.db.cf_handle(CF_ACTS).expect("acts cf");
        let mut gone = Vec::new();
        for entry in self.db.iterator_cf(acts_cf, IteratorMode::Start) {
            let (key, value) = entry.map_err(|err| err.to_string())?;
            let act = ActRecord::decode(value.as_ref()).map_err(|err| format!("corrupt act record: {err}"))?;
            if act.members.is_empty() && act.enqueued_ms < before {
                gone.push(ActKey::try_from(key.as_ref()).map_err(|_| "corrupt act key".to_owned())?);
            }
        }
        let changes = Changes {
            dropped_acts: gone,
            ..Changes::default()
        };
        self.put_all(&[], &[], &[], &changes, false)?;
        Ok(expired)
    }

    /// Writes a peer's record alone, synced.
    pub fn put_peer(&self, peer: &PeerRecord) -> Result<(), String> {
        let peers_cf = self.db.cf_handle(CF_PEERS).expect("peers cf");
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db
            .put_cf_opt(peers_cf, peer_key(&peer.peer), peer.encode_to_vec(), &options)
            .map_err(|err| err.to_string())
    }

    /// Makes every write so far durable (the WAL synced).
    pub fn sync(&self) -> Result<(), String> {
        self.db.flush_wal(true).map_err(|err| err.to_string())
    }

    /// Writes an item and its peer's record in one batch; once delivered, drops its
    /// envelope and recipients. `sync` waits for the WAL fsync.
    pub fn put(&self, peer: &PeerRecord, id: &[u8; 32], item: &ItemRecord, sync: bool) -> Result<(), String> {
        self.put_all(&[peer], &[(&peer.peer, id, item, None)], &[], &Changes::default(), sync)
    }

    /// Writes `peers`' records and each (peer, id, item, new) as [`Records::put`] does, all
    /// in one write; `new`: the envelope and recipients of one just enqueued.
    /// An item naming a shared envelope or recipient list writes that record (once per
    /// batch, when given) instead of its own; `unshared`: shared records no delivery needs
    /// any more, deleted; `changes`: act and route records made and dropped.
    pub fn put_all(
        &self,
        peers: &[&PeerRecord],
        writes: &[(&str, &[u8; 32], &ItemRecord, Option<NewPayload<'_>>)],
        unshared: &[[u8; 32]],
        changes: &Changes,
        sync: bool,
    ) -> Result<(), String> {
        let shared_cf = self.db.cf_handle(CF_SHARED).expect("shared records cf");
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let envelopes_cf = self.db.cf_handle(CF_ENVELOPES).expect("envelopes cf");
        let recipients_cf = self.db.cf_handle(CF_RECIPIENTS).expect("recipients cf");
        let peers_cf = self.db.cf_handle(CF_PEERS).expect("peers cf");
        let mut batch = WriteBatch::default();
        let mut shared_written = std::collections::HashSet::new();
        for (peer, id, item, new) in writes {
            let key = item_key(peer, id);
            batch.put_cf(items_cf, &key, item.stored());
            if let Some(new) = new {
                for (shared_key, own_cf, bytes) in [
                    (&item.envelope_key, envelopes_cf, new.envelope),
                    (
                        &item.recipients_key,
                        recipients_cf,
                        new.recipients.filter(|r| !r.is_empty()),
                    ),
                ] {
                    let Some(bytes) = bytes else { continue };
                    if shared_key.is_empty() {
                        batch.put_cf(own_cf, &key, bytes);
                    } else if shared_written.insert(shared_key.as_slice()) {
                        batch.put_cf(shared_cf, shared_key, bytes);
                    }
                }
            } else if item.status == STATUS_DELIVERED {
                if item.envelope_key.is_empty() {
                    batch.delete_cf(envelopes_cf, &key);
                }
                if item.recipients_key.is_empty() {
                    batch.delete_cf(recipients_cf, &key);
                }
            }
        }
        for peer in peers {
            batch.put_cf(peers_cf, peer_key(&peer.peer), peer.encode_to_vec());
        }
        for key in unshared {
            batch.delete_cf(shared_cf, key);
        }
        let acts_cf = self.db.cf_handle(CF_ACTS).expect("acts cf");
        let routes_cf = self.db.cf_handle(CF_ROUTES).expect("routes cf");
        for (key, record) in &changes.acts {
            batch.put_cf(acts_cf, key, record.encode_to_vec());
        }
        for (key, value) in &changes.routes {
            batch.put_cf(routes_cf, key, value);
        }
        for key in &changes.dropped_acts {
            batch.delete_cf(acts_cf, key);
        }
        for key in &changes.dropped_routes {
            batch.delete_cf(routes_cf, key);
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options).map_err(|err| err.to_string())?;
        for (key, record) in &changes.acts {
            let id: [u8; 32] = key[..32].try_into().expect("an act key starts with its id");
            self.acts
                .written(&id, acts::act_of_key(key).unwrap_or_default(), record.clone());
        }
        for key in &changes.dropped_acts {
            self.acts.dropped(key);
        }
        if writes
            .iter()
            .any(|(_, _, item, _)| item.act == 0 && item.status == STATUS_DELIVERED)
        {
            self.delivered_alone.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}
