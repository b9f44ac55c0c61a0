//! The RocksDB engine's records: one small record per (peer, activity id) — pending, dead or
//! delivered — with the attempts, the retry time, the last error and the trace context of
//! the enqueue; the envelope and recipients apart, so a failure rewrites a few bytes, and
//! dropped once delivered (an envelope queued for several destinations in one batch, and a
//! recipient list queued again and again, are stored once, shared, and dropped with their
//! last delivery). The delivered record stays, so a repeated hand-off is one delivery.
//! Enqueues are synced before they are
//! acknowledged; later transitions are written as they happen (they survive a process
//! crash; after a machine crash the worst case is one send too many, which receivers treat
//! idempotently).

use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use std::path::Path;

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
}

/// What an enqueue writes besides the item: its envelope and its recipients as stored
/// (empty: none), each unless it is shared and on disk already (`None`).
pub struct NewPayload<'a> {
    pub envelope: Option<&'a [u8]>,
    pub recipients: Option<&'a [u8]>,
}

pub struct Records {
    db: DB,
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
        let cf_options = || {
            let mut cf = Options::default();
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
        let cfs = [CF_ITEMS, CF_ENVELOPES, CF_RECIPIENTS, CF_PEERS, CF_SHARED]
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options()));
        let db = fedsx_runtime::rocks::open_verified(options, dir, cfs.into(), "delivery queue")
            .map_err(|err| err.to_string())?;
        Ok(Records { db })
    }

    /// Every peer with its pending and dead items. Blocks.
    pub fn load(&self) -> Result<Vec<LoadedPeer>, String> {
        let peers_cf = self.db.cf_handle(CF_PEERS).expect("peers cf");
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let mut loaded = Vec::new();
        for entry in self.db.iterator_cf(peers_cf, IteratorMode::Start) {
            let (_, value) = entry.map_err(|err| err.to_string())?;
            let record = PeerRecord::decode(value.as_ref()).map_err(|err| format!("corrupt peer record: {err}"))?;
            let prefix = peer_key(&record.peer);
            let mut items = Vec::new();
            for entry in self.db.prefix_iterator_cf(items_cf, &prefix) {
                let (key, value) = entry.map_err(|err| err.to_string())?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let item = ItemRecord::decode(value.as_ref()).map_err(|err| format!("corrupt queue item: {err}"))?;
                if item.status == STATUS_DELIVERED {
                    continue;
                }
                let id: [u8; 32] = key[prefix.len()..]
                    .try_into()
                    .map_err(|_| "corrupt queue key".to_owned())?;
                items.push((id, item));
            }
            items.sort_by_key(|(_, item)| item.order);
            loaded.push(LoadedPeer { record, items });
        }
        Ok(loaded)
    }

    /// The highest enqueue order on disk.
    pub fn max_order(peers: &[LoadedPeer]) -> u64 {
        peers
            .iter()
            .flat_map(|p| p.items.iter().map(|(_, i)| i.order))
            .max()
            .unwrap_or(0)
    }

    pub fn item(&self, peer: &str, id: &[u8; 32]) -> Result<Option<ItemRecord>, String> {
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
    pub fn recipients(
        &self,
        peer: &str,
        id: &[u8; 32],
        item: &mut ItemRecord,
    ) -> Result<crate::storage::StoredRecipients, String> {
        if !item.recipients.is_empty() {
            let list = std::mem::take(&mut item.recipients);
            return Ok(crate::storage::StoredRecipients::store(peer, &item.inbox_url, &list));
        }
        let value = self.own_or_shared(CF_RECIPIENTS, peer, id, &item.recipients_key)?;
        Ok(crate::storage::StoredRecipients::from_stored(value.unwrap_or_default()))
    }

    /// An item's envelope: the shared one it names, or its own.
    pub fn envelope(&self, peer: &str, id: &[u8; 32], item: &ItemRecord) -> Result<Option<bytes::Bytes>, String> {
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

    /// Whether a shared envelope is stored under `key` (tests).
    #[cfg(test)]
    pub fn has_shared(&self, key: &[u8]) -> bool {
        let cf = self.db.cf_handle(CF_SHARED).expect("shared records cf");
        self.db.get_pinned_cf(cf, key).ok().flatten().is_some()
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
        self.put_all(&[peer], &[(&peer.peer, id, item, None)], &[], sync)
    }

    /// Writes `peers`' records and each (peer, id, item, new) as [`Records::put`] does, all
    /// in one write; `new`: the envelope and recipients of one just enqueued.
    /// An item naming a shared envelope or recipient list writes that record (once per
    /// batch, when given) instead of its own; `unshared`: shared records no delivery needs
    /// any more, deleted.
    pub fn put_all(
        &self,
        peers: &[&PeerRecord],
        writes: &[(&str, &[u8; 32], &ItemRecord, Option<NewPayload<'_>>)],
        unshared: &[[u8; 32]],
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
            batch.put_cf(items_cf, &key, item.encode_to_vec());
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
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options).map_err(|err| err.to_string())
    }
}
