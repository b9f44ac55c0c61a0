//! The queue on disk (RocksDB): one record per (peer, activity id) — pending, dead or
//! delivered — holding the envelope until it is delivered, the attempts, the retry time,
//! the last error and the trace context of the enqueue. Enqueues are synced before they are
//! acknowledged; later transitions are written as they happen (they survive a process
//! crash; after a machine crash the worst case is one send too many, which receivers treat
//! idempotently).

use prost::Message;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use std::path::Path;

const CF_ITEMS: &str = "items";
const CF_PEERS: &str = "peers";

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
    /// Dropped once delivered.
    #[prost(bytes = "bytes", tag = "4")]
    pub envelope: bytes::Bytes,
    #[prost(string, tag = "5")]
    pub traceparent: String,
    #[prost(uint32, tag = "6")]
    pub attempts: u32,
    #[prost(uint64, tag = "7")]
    pub next_retry_ms: u64,
    #[prost(string, tag = "8")]
    pub last_error: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PeerRecord {
    #[prost(string, tag = "1")]
    pub peer: String,
    #[prost(uint64, tag = "2")]
    pub delivered: u64,
    #[prost(string, tag = "3")]
    pub last_error: String,
}

pub struct Store {
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

impl Store {
    /// Opens or creates the database. Blocks.
    pub fn open(dir: &Path) -> Result<Store, String> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_paranoid_checks(true);
        let cfs = [CF_ITEMS, CF_PEERS].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&options, dir, cfs).map_err(|err| format!("cannot open the queue: {err}"))?;
        Ok(Store { db })
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

    /// Writes an item and its peer's record in one batch; `sync` waits for the WAL fsync.
    pub fn put(&self, peer: &PeerRecord, id: &[u8; 32], item: &ItemRecord, sync: bool) -> Result<(), String> {
        let items_cf = self.db.cf_handle(CF_ITEMS).expect("items cf");
        let peers_cf = self.db.cf_handle(CF_PEERS).expect("peers cf");
        let mut batch = WriteBatch::default();
        batch.put_cf(items_cf, item_key(&peer.peer, id), item.encode_to_vec());
        batch.put_cf(peers_cf, peer_key(&peer.peer), peer.encode_to_vec());
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options).map_err(|err| err.to_string())
    }
}
