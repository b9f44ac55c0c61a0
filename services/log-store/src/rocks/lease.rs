//! Leases on RocksDB: one key per lease in the `meta` column family (`lease\0 ‖ name` →
//! [`Stored::encode`]), read, decided and written under one lock (this process owns the
//! directory), each write synced.

use super::keys::CF_META;
use crate::error::StoreError;
use crate::lease::{Acquire, Lease, MAX_LISTED, Stored, now_ms};
use rocksdb::{DB, Direction, IteratorMode, WriteOptions};
use std::sync::Mutex;

const PREFIX: &[u8] = b"lease\0";

fn key(name: &str) -> Vec<u8> {
    [PREFIX, name.as_bytes()].concat()
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn stored(db: &DB, name: &str) -> Result<Option<Stored>, StoreError> {
    let meta = db.cf_handle(CF_META).expect("meta column family opened");
    db.get_pinned_cf(meta, key(name))?
        .map(|bytes| Stored::decode(&bytes))
        .transpose()
}

/// Serialises lease changes: each is read, decided and written alone.
#[derive(Default)]
pub(crate) struct Leases {
    lock: Mutex<()>,
}

impl Leases {
    pub(crate) fn acquire(&self, db: &DB, request: &Acquire) -> Result<Lease, StoreError> {
        let _alone = self.lock.lock().expect("lease lock poisoned");
        let now = now_ms();
        let current = stored(db, &request.name)?;
        let Some(next) = request.apply(current.as_ref(), now) else {
            let current = current.expect("only a held lease refuses");
            return Ok(current.lease(&request.name, now));
        };
        let meta = db.cf_handle(CF_META).expect("meta column family opened");
        db.put_cf_opt(meta, key(&request.name), next.encode(), &synced())?;
        Ok(next.lease(&request.name, now))
    }

    pub(crate) fn release(&self, db: &DB, name: &str, holder: &str) -> Result<bool, StoreError> {
        let _alone = self.lock.lock().expect("lease lock poisoned");
        let Some(mut current) = stored(db, name)?.filter(|c| c.held_by(holder, now_ms())) else {
            return Ok(false);
        };
        // Kept with its epoch, so the next holder's is higher.
        current.until_ms = 0;
        let meta = db.cf_handle(CF_META).expect("meta column family opened");
        db.put_cf_opt(meta, key(name), current.encode(), &synced())?;
        Ok(true)
    }

    pub(crate) fn list(db: &DB, prefix: &str) -> Result<Vec<Lease>, StoreError> {
        let meta = db.cf_handle(CF_META).expect("meta column family opened");
        let start = key(prefix);
        let now = now_ms();
        let mut out = Vec::new();
        for item in db.iterator_cf(meta, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            if !key.starts_with(&start) || out.len() == MAX_LISTED {
                break;
            }
            let stored = Stored::decode(&value)?;
            if stored.until_ms > now {
                let name = String::from_utf8(key[PREFIX.len()..].to_vec())
                    .map_err(|_| StoreError::internal("a lease name is not UTF-8"))?;
                out.push(stored.lease(&name, now));
            }
        }
        Ok(out)
    }
}
