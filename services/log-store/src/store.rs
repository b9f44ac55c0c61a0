//! The storage layer: a RocksDB database holding every stream, one writer thread that
//! group-commits appends, and reads that run on the blocking pool.

use crate::error::{OpenError, StoreError};
use crate::keys::{self, CF_ENTRIES, CF_IDS, CF_META, CF_TIPS};
use crate::stream::{Entry, NewEntry, StreamId, limits, validate_entries};
use crate::writer::{self, AppendJob, WriterHandle};
use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, oneshot};

/// The on-disk format this build writes and reads.
const FORMAT_VERSION: u32 = 1;

/// The seq one entry of an append got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// False when the id was already in the stream and nothing was written for it.
    pub appended: bool,
}

/// The answer to an append: one result per entry, in order, and the stream's tip after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub entries: Vec<Appended>,
    pub tip: u64,
}

/// A handle on the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DB>,
    writer: Mutex<Option<WriterHandle>>,
    appended: broadcast::Sender<Vec<u8>>,
}

impl Store {
    /// Opens (or creates, when `dir` is missing or empty) the database. Blocks: call it from
    /// a blocking context.
    pub fn open(dir: &Path) -> Result<Store, OpenError> {
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
        options.set_paranoid_checks(true);
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
        let db = DB::open_cf_descriptors(&options, dir, cfs).map_err(|err| OpenError::RocksDb(err.into_string()))?;
        check_format(&db, fresh)?;

        let db = Arc::new(db);
        let (appended, _) = broadcast::channel(1024);
        let writer = writer::spawn(db.clone(), appended.clone())?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(Some(writer)),
                appended,
            }),
        })
    }

    /// Appends `entries` to `stream` atomically; answers once the write is synced.
    pub async fn append(
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
            entries,
            expected_tip,
            reply,
        };
        sender.send(job).await.map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Entries of `stream` with seq > `after_seq`, at most `limit` (0 = default), and the tip,
    /// read from one consistent snapshot.
    pub async fn read(&self, stream: StreamId, after_seq: u64, limit: usize) -> Result<(Vec<Entry>, u64), StoreError> {
        let db = self.inner.db.clone();
        let limit = match limit {
            0 => limits::DEFAULT_READ_LIMIT,
            n => n.min(limits::MAX_READ_LIMIT),
        };
        blocking(move || read_entries(&db, &keys::stream_key(&stream), after_seq, limit)).await
    }

    /// The last seq of `stream`, 0 when it was never written.
    pub async fn tip(&self, stream: StreamId) -> Result<u64, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || read_tip(&db, &keys::stream_key(&stream), None)).await
    }

    /// The seq of the entry with `id` in `stream`, if it holds one.
    pub async fn lookup(&self, stream: StreamId, id: bytes::Bytes) -> Result<Option<u64>, StoreError> {
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

    /// Notices of appends: the stream key of every stream a committed group touched.
    pub(crate) fn appended(&self) -> broadcast::Receiver<Vec<u8>> {
        self.inner.appended.subscribe()
    }

    /// Stops the writer after it committed what it already took, then flushes. Blocks.
    pub fn close(&self) -> Result<(), StoreError> {
        let writer = self.inner.writer.lock().expect("writer lock poisoned").take();
        if let Some(writer) = writer {
            writer.stop();
        }
        self.inner.db.flush_wal(true)?;
        Ok(())
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
        .map_err(|err| StoreError::Storage(format!("read task failed: {err}")))?
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

fn read_entries(db: &DB, stream_key: &[u8], after_seq: u64, limit: usize) -> Result<(Vec<Entry>, u64), StoreError> {
    let snapshot = db.snapshot();
    let tip = read_tip(db, stream_key, Some(&snapshot))?;
    if after_seq >= tip {
        return Ok((Vec::new(), tip));
    }
    let entries_cf = db.cf_handle(CF_ENTRIES).expect("entries column family opened");
    let mut options = ReadOptions::default();
    options.set_snapshot(&snapshot);
    options.set_iterate_upper_bound(keys::entry_key(stream_key, tip.saturating_add(1)));
    let start = keys::entry_key(stream_key, after_seq + 1);
    let mut entries = Vec::with_capacity(limit.min((tip - after_seq) as usize));
    for item in db.iterator_cf_opt(entries_cf, options, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item?;
        if !key.starts_with(stream_key) || entries.len() == limit {
            break;
        }
        entries.push(keys::decode_entry(stream_key, &key, &value)?);
    }
    Ok((entries, tip))
}

#[cfg(test)]
mod tests {
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
    async fn seqs_start_at_one_and_tips_are_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tip(outbox("a")).await.unwrap(), 0);
        let outcome = store
            .append(outbox("a"), vec![entry("x"), entry("y")], None)
            .await
            .unwrap();
        assert_eq!(outcome.tip, 2);
        assert_eq!(
            outcome.entries,
            [Appended { seq: 1, appended: true }, Appended { seq: 2, appended: true }]
        );
        assert_eq!(store.tip(StreamId::new("a", Kind::Inbox).unwrap()).await.unwrap(), 0);
        assert_eq!(store.tip(outbox("b")).await.unwrap(), 0);
        let (entries, tip) = store.read(outbox("a"), 0, 0).await.unwrap();
        assert_eq!(tip, 2);
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(store.read(outbox("a"), 2, 0).await.unwrap().0, []);
    }

    #[tokio::test]
    async fn an_append_is_all_or_nothing_on_tip_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.append(outbox("a"), vec![entry("x")], None).await.unwrap();
        let err = store
            .append(outbox("a"), vec![entry("y"), entry("z")], Some(0))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TipMismatch { expected: 0, tip: 1 }));
        assert_eq!(store.tip(outbox("a")).await.unwrap(), 1);
        // The refused ids were not recorded either.
        let outcome = store.append(outbox("a"), vec![entry("y")], Some(1)).await.unwrap();
        assert_eq!(outcome.entries[0], Appended { seq: 2, appended: true });
    }

    #[tokio::test]
    async fn group_commit_keeps_jobs_in_one_group_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Many concurrent jobs, some repeating ids and some expecting tips, land in few groups.
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
    async fn reopening_keeps_entries_tips_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .append(outbox("a"), vec![entry("x"), entry("y")], None)
                .await
                .unwrap();
            store.close().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.tip(outbox("a")).await.unwrap(), 2);
        let again = store
            .append(outbox("a"), vec![entry("x"), entry("w")], Some(2))
            .await
            .unwrap();
        assert_eq!(
            again.entries,
            [
                Appended {
                    seq: 1,
                    appended: false
                },
                Appended { seq: 3, appended: true }
            ]
        );
    }

    #[tokio::test]
    async fn closed_store_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.close().unwrap();
        let err = store.append(outbox("a"), vec![entry("x")], None).await.unwrap_err();
        assert!(matches!(err, StoreError::ShuttingDown));
    }

    #[test]
    fn refuses_a_directory_holding_something_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), "data").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(OpenError::ForeignData(_))));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_a_file_as_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(Store::open(&file), Err(OpenError::NotADirectory(_))));
    }

    #[tokio::test]
    async fn validation_names_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let long_id = NewEntry {
            id: Bytes::from(vec![1u8; 65]),
            data: Bytes::new(),
        };
        let err = store
            .append(outbox("a"), vec![entry("ok"), long_id], None)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "entry 1: id is 65 bytes, must be 1 to 64");
        let many: Vec<NewEntry> = (0..1025).map(|i| entry(&i.to_string())).collect();
        let err = store.append(outbox("a"), many, None).await.unwrap_err();
        assert_eq!(err.to_string(), "append has 1025 entries, over the limit of 1024");
        assert_eq!(store.tip(outbox("a")).await.unwrap(), 0);
    }
}
