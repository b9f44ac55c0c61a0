//! The kernel's view of the log-store: the port (`port.rs`, served over gRPC by
//! `grpc.rs`) and what the kernel builds on it — paging through a stream, an entry by id —
//! with the expected-tip conflict told apart from other failures.

mod grpc;
mod port;

pub use grpc::GrpcLogs;
pub use port::{LogError, LogPort};

use crate::error::KernelError;
use bytes::Bytes;
use fedsx_proto::logstore::v1::{AppendResponse, Entry, Lease, StreamKind};
use futures::stream::BoxStream;
use std::sync::Arc;

/// Why an append did not happen.
#[derive(Debug)]
pub enum AppendError {
    /// The stream's tip is not the expected one.
    Conflict {
        tip: u64,
    },
    Failed(KernelError),
}

impl From<LogError> for KernelError {
    fn from(err: LogError) -> Self {
        match err {
            LogError::Unavailable(reason) => KernelError::LogStoreUnavailable(reason),
            LogError::Conflict { tip } => KernelError::Internal(format!("unexpected tip conflict at {tip}")),
            LogError::Invalid(reason) | LogError::Internal(reason) => KernelError::LogStore(reason),
        }
    }
}

/// The log-store the kernel works on.
#[derive(Clone)]
pub struct Logs {
    port: Arc<dyn LogPort>,
}

impl Logs {
    pub fn new(port: Arc<dyn LogPort>) -> Logs {
        Logs { port }
    }

    /// The log-store at gRPC `url`, connected on first use (and reconnected), so the kernel
    /// starts even when the log-store is not up yet.
    pub fn connect_lazy(url: &str) -> anyhow::Result<Logs> {
        Ok(Logs::new(Arc::new(GrpcLogs::connect_lazy(url)?)))
    }

    pub async fn append(
        &self,
        actor: &str,
        kind: StreamKind,
        id: Bytes,
        data: Bytes,
        expected_tip: Option<u64>,
    ) -> Result<AppendResponse, AppendError> {
        match self.port.append(actor, kind, id, data, expected_tip).await {
            Ok(answer) => Ok(answer),
            Err(LogError::Conflict { tip }) => Err(AppendError::Conflict { tip }),
            Err(err) => Err(AppendError::Failed(err.into())),
        }
    }

    /// Appends without an expected tip: only idempotency by id applies.
    pub async fn append_any(
        &self,
        actor: &str,
        kind: StreamKind,
        id: Bytes,
        data: Bytes,
    ) -> Result<AppendResponse, KernelError> {
        Ok(self.port.append(actor, kind, id, data, None).await?)
    }

    /// Entries after `after_seq` (one page) and the tip.
    pub async fn read(
        &self,
        actor: &str,
        kind: StreamKind,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Entry>, u64), KernelError> {
        Ok(self.port.read(actor, kind, after_seq, limit).await?)
    }

    /// Every entry after `after_seq`, page by page.
    pub async fn read_all(&self, actor: &str, kind: StreamKind, after_seq: u64) -> Result<Vec<Entry>, KernelError> {
        let mut all = Vec::new();
        self.each_after(actor, kind, after_seq, |entry| {
            all.push(entry);
            Ok(())
        })
        .await?;
        Ok(all)
    }

    /// Hands `each` every entry after `after_seq` in seq order, one page in memory at a
    /// time, until the tip it finds; the seq of the last entry handed (`after_seq` when
    /// none) and how many were. Stops at the first error `each` returns.
    pub async fn each_after(
        &self,
        actor: &str,
        kind: StreamKind,
        after_seq: u64,
        mut each: impl FnMut(Entry) -> Result<(), KernelError>,
    ) -> Result<(u64, u64), KernelError> {
        let (mut last, mut count) = (after_seq, 0);
        loop {
            let (entries, tip) = self.read(actor, kind, last, 0).await?;
            let empty = entries.is_empty();
            for entry in entries {
                last = entry.seq;
                count += 1;
                each(entry)?;
            }
            if empty || last >= tip {
                return Ok((last, count));
            }
        }
    }

    /// The log-store's tail of a stream: entries after `after_seq`, then new ones.
    pub async fn subscribe(
        &self,
        actor: &str,
        kind: StreamKind,
        after_seq: u64,
    ) -> Result<BoxStream<'static, Result<Entry, LogError>>, KernelError> {
        Ok(self.port.subscribe(actor, kind, after_seq).await?)
    }

    /// The seq of the entry with `id` in a stream, if any.
    pub async fn lookup(&self, actor: &str, kind: StreamKind, id: Bytes) -> Result<Option<u64>, KernelError> {
        Ok(self.port.lookup(actor, kind, id).await?)
    }

    /// The entry of `actor`'s `kind` stream with `id`, if it holds one.
    pub async fn entry_by_id(&self, actor: &str, kind: StreamKind, id: Bytes) -> Result<Option<Entry>, KernelError> {
        let Some(seq) = self.lookup(actor, kind, id).await? else {
            return Ok(None);
        };
        let (entries, _) = self.read(actor, kind, seq - 1, 1).await?;
        Ok(entries.into_iter().next().filter(|entry| entry.seq == seq))
    }

    pub async fn tip(&self, actor: &str, kind: StreamKind) -> Result<u64, KernelError> {
        Ok(self.port.tip(actor, kind).await?)
    }

    /// Takes or renews lease `name` for `holder` (the log-store's clock decides); the lease
    /// as it stands after (held by someone else when `holder` differs).
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        data: Bytes,
    ) -> Result<Lease, KernelError> {
        Ok(self.port.acquire_lease(name, holder, ttl, data).await?)
    }

    /// Gives lease `name` up if `holder` holds it; whether it did.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, KernelError> {
        Ok(self.port.release_lease(name, holder).await?)
    }

    /// The leases held now whose names start with `prefix`.
    pub async fn leases(&self, prefix: &str) -> Result<Vec<Lease>, KernelError> {
        Ok(self.port.leases(prefix).await?)
    }
}

/// A real log-store for the kernel's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Logs;

    /// A log-store on RocksDB in a temp dir, served in the test's process; it stops when
    /// this is dropped.
    pub(crate) struct LogStore {
        shutdown: fedsx_runtime::CancellationToken,
        _dir: tempfile::TempDir,
    }

    impl Drop for LogStore {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    pub(crate) async fn log_store() -> (Logs, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = fedsx_runtime::CancellationToken::new();
        let url = fedsx_log_store::spawn_on_loopback(dir.path(), shutdown.clone())
            .await
            .unwrap();
        (Logs::connect_lazy(&url).unwrap(), LogStore { shutdown, _dir: dir })
    }
}
