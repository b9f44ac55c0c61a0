//! The embedded engine: a RocksDB database holding every stream, one writer thread that
//! group-commits appends into one synced WriteBatch, and reads on the blocking pool.

mod keys;
mod lease;
mod writer;

use crate::error::{OpenError, StoreError};
use crate::storage::{AppendOutcome, LogStorage, Notice, Page};
use crate::stream::{Entry, NewEntry, StreamId, limits, validate_entries};
use keys::{CF_ENTRIES, CF_IDS, CF_META, CF_TIPS};
use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot, watch};
use writer::{AppendJob, WriterHandle};

/// The on-disk format this build writes and reads.
const FORMAT_VERSION: u32 = 1;
/// Wake-ups buffered for a slow subscriber (one that lags re-reads its stream).
const NOTICE_BUFFER: usize = 1024;

/// A handle on the open store; cheap to clone.
#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DB>,
    writer: Mutex<Option<WriterHandle>>,
    notices: broadcast::Sender<Notice>,
    leases: lease::Leases,
    /// Always ready: the disk is local.
    ready: watch::Sender<bool>,
}

impl RocksStore {
    /// Opens (or creates, when `dir` is missing or empty) the database. Blocks: call it from
    /// a blocking context.
    pub fn open(dir: &Path) -> Result<RocksStore, OpenError> {
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(OpenError::NotADirectory(dir.display().to_string()));
            }
            Err(err) => return Err(err.into()),
        };
        if !fresh && !dir.join("CURRENT").exists() {
            return Err(OpenError::ForeignData(dir.display().to_string()));
        }

        let mut options = Options::default();
        options.create_if_missing(fresh);
        options.create_missing_column_families(fresh);
        let mut ids_table = BlockBasedOptions::default();
        // Most id lookups are for ids the stream does not hold yet.
        ids_table.set_bloom_filter(10.0, false);
        let mut ids_options = Options::default();
        ids_options.set_block_based_table_factory(&ids_table);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_ENTRIES, Options::default()),
            ColumnFamilyDescriptor::new(CF_IDS, ids_options),
            ColumnFamilyDescriptor::new(CF_TIPS, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = fedsx_runtime::rocks::open_verified(options, dir, cfs, "log-store")?;
        check_format(&db, fresh)?;

        let db = Arc::new(db);
        let (notices, _) = broadcast::channel(NOTICE_BUFFER);
        let writer = writer::spawn(db.clone(), notices.clone())?;
        Ok(RocksStore {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(Some(writer)),
                notices,
                leases: lease::Leases::default(),
                ready: watch::Sender::new(true),
            }),
        })
    }

    /// Stops the writer after it committed what it already took, then flushes. Blocks.
    pub fn close_blocking(&self) -> Result<(), StoreError> {
        let writer = self.inner.writer.lock().expect("writer lock poisoned").take();
        if let Some(writer) = writer {
            writer.stop();
        }
        self.inner.db.flush_wal(true)?;
        Ok(())
    }

    /// Every stream with its tip, in key order, `after` the given one (for export).
    pub fn streams_after(&self, after: Option<&StreamId>, limit: usize) -> Result<Vec<(StreamId, u64)>, StoreError> {
        let tips = self.inner.db.cf_handle(CF_TIPS).expect("tips column family opened");
        let start = after.map(|s| {
            let mut key = keys::stream_key(s);
            key.push(0);
            key
        });
        let mode = match &start {
            Some(key) => IteratorMode::From(key, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(tips, mode) {
            let (key, value) = item?;
            if out.len() == limit {
                break;
            }
            out.push((keys::decode_stream_key(&key)?, keys::decode_u64(&value)?));
        }
        Ok(out)
    }
}

impl LogStorage for RocksStore {
    async fn append(
        &self,
        stream: StreamId,
        entries: Vec<NewEntry>,
        expected_tip: Option<u64>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_entries(&entries)?;
        let sender = {
            let writer = self.inner.writer.lock().expect("writer lock poisoned");
            writer.as_ref().ok_or(StoreError::ShuttingDown)?.sender()
        };
        let (reply, answer) = oneshot::channel();
        let job = AppendJob {
            stream_key: keys::stream_key(&stream),
            stream,
            entries,
            expected_tip,
            reply,
        };
        sender.send(job).await.map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    async fn read(&self, stream: StreamId, after_seq: u64, limit: usize) -> Result<Page, StoreError> {
        let db = self.inner.db.clone();
        let limit = limits::read_limit(limit);
        blocking(move || read_entries(&db, &keys::stream_key(&stream), after_seq, limit)).await
    }

    async fn tip(&self, stream: StreamId) -> Result<u64, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || read_tip(&db, &keys::stream_key(&stream), None)).await
    }

    async fn lookup(&self, stream: StreamId, id: bytes::Bytes) -> Result<Option<u64>, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || {
            let ids = db.cf_handle(CF_IDS).expect("ids column family opened");
            let key = keys::id_key(&keys::stream_key(&stream), &id);
            db.get_pinned_cf(ids, key)?
                .map(|bytes| keys::decode_u64(&bytes))
                .transpose()
        })
        .await
    }

    async fn acquire_lease(&self, request: crate::lease::Acquire) -> Result<crate::lease::Lease, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.leases.acquire(&inner.db, &request)).await
    }

    async fn release_lease(&self, name: String, holder: String) -> Result<bool, StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.leases.release(&inner.db, &name, &holder)).await
    }

    async fn leases(&self, prefix: String) -> Result<Vec<crate::lease::Lease>, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || lease::Leases::list(&db, &prefix)).await
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    async fn close(&self) -> Result<(), StoreError> {
        let store = self.clone();
        blocking(move || store.close_blocking()).await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer holds the database open; stop it so RocksDB closes before the process
        // exits rather than racing its static destructors.
        if let Some(writer) = self.writer.get_mut().ok().and_then(Option::take) {
            writer.stop();
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| StoreError::internal(format!("storage task failed: {err}")))?
}

fn check_format(db: &DB, fresh: bool) -> Result<(), OpenError> {
    let meta = db.cf_handle(CF_META).expect("meta column family opened");
    let stored = db
        .get_cf(meta, keys::FORMAT_VERSION_KEY)
        .map_err(|err| OpenError::RocksDb(err.into_string()))?;
    match stored {
        None if fresh => db
            .put_cf(meta, keys::FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes())
            .map_err(|err| OpenError::RocksDb(err.into_string())),
        None => Err(OpenError::RocksDb("the database has no format version".into())),
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            if found == FORMAT_VERSION {
                Ok(())
            } else {
                Err(OpenError::FormatVersion {
                    found,
                    expected: FORMAT_VERSION,
                })
            }
        }
    }
}

pub(crate) fn read_tip(
    db: &DB,
    stream_key: &[u8],
    snapshot: Option<&rocksdb::Snapshot<'_>>,
) -> Result<u64, StoreError> {
    let tips = db.cf_handle(CF_TIPS).expect("tips column family opened");
    let value = match snapshot {
        Some(snapshot) => snapshot.get_cf(tips, stream_key)?,
        None => db.get_cf(tips, stream_key)?,
    };
    value.map_or(Ok(0), |bytes| keys::decode_u64(&bytes))
}

fn read_entries(db: &DB, stream_key: &[u8], after_seq: u64, limit: usize) -> Result<Page, StoreError> {
    let snapshot = db.snapshot();
    let tip = read_tip(db, stream_key, Some(&snapshot))?;
    if after_seq >= tip {
        return Ok(Page {
            entries: Vec::new(),
            tip,
        });
    }
    let entries_cf = db.cf_handle(CF_ENTRIES).expect("entries column family opened");
    let mut options = ReadOptions::default();
    options.set_snapshot(&snapshot);
    options.set_iterate_upper_bound(keys::entry_key(stream_key, tip.saturating_add(1)));
    let start = keys::entry_key(stream_key, after_seq + 1);
    let mut entries: Vec<Entry> = Vec::with_capacity(limit.min((tip - after_seq) as usize));
    let mut bytes = 0;
    for item in db.iterator_cf_opt(entries_cf, options, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item?;
        if !key.starts_with(stream_key) || entries.len() == limit {
            break;
        }
        let entry = keys::decode_entry(stream_key, &key, &value)?;
        bytes += entry.data.len();
        if bytes > limits::MAX_READ_BYTES && !entries.is_empty() {
            break;
        }
        entries.push(entry);
    }
    Ok(Page { entries, tip })
}

#[cfg(test)]
mod tests {
    // What every engine promises is in `conformance.rs`; these are RocksDB's own.
    use super::*;
    use crate::stream::Kind;
    use bytes::Bytes;

    fn entry(id: &str) -> NewEntry {
        NewEntry {
            id: Bytes::copy_from_slice(id.as_bytes()),
            data: Bytes::from_static(b"data"),
        }
    }

    fn outbox(actor: &str) -> StreamId {
        StreamId::new(actor, Kind::Outbox).unwrap()
    }

    #[tokio::test]
    async fn group_commit_keeps_jobs_in_one_group_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        // Many concurrent jobs, some repeating ids, land in few groups.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .append(outbox("g"), vec![entry(&format!("id-{}", i % 100))], None)
                    .await
                    .unwrap()
            }));
        }
        let mut seqs_by_id = std::collections::HashMap::new();
        for (i, task) in tasks.into_iter().enumerate() {
            let outcome = task.await.unwrap();
            let seq = outcome.entries[0].seq;
            if let Some(previous) = seqs_by_id.insert(i % 100, seq) {
                assert_eq!(previous, seq, "a repeated id keeps its first seq");
            }
        }
        let mut seqs: Vec<u64> = seqs_by_id.values().copied().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        assert_eq!(store.tip(outbox("g")).await.unwrap(), 100);
    }

    #[tokio::test]
    async fn streams_are_listed_in_key_order_after_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        for actor in ["b", "a", "c"] {
            store.append(outbox(actor), vec![entry("x")], None).await.unwrap();
        }
        let all = store.streams_after(None, 10).unwrap();
        assert_eq!(all.iter().map(|(s, _)| s.actor()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let rest = store.streams_after(Some(&outbox("a")), 1).unwrap();
        assert_eq!(rest, [(outbox("b"), 1)]);
    }

    #[test]
    fn refuses_a_directory_holding_something_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), "data").unwrap();
        assert!(matches!(RocksStore::open(dir.path()), Err(OpenError::ForeignData(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_a_file_as_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(RocksStore::open(&file), Err(OpenError::NotADirectory(_))));
    }
}
