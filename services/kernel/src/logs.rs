//! The kernel's view of the log-store: typed calls over gRPC with trace context, and the
//! expected-tip conflict told apart from other failures.

use crate::error::KernelError;
use bytes::Bytes;
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{
    AcquireLeaseRequest, AppendRequest, AppendResponse, Entry, Lease, ListLeasesRequest, LookupRequest, NewEntry,
    ReadRequest, ReleaseLeaseRequest, StreamId, StreamKind, SubscribeRequest, TipRequest,
};
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};

/// Why an append did not happen.
#[derive(Debug)]
pub enum AppendError {
    /// The stream's tip is not the expected one.
    Conflict {
        tip: u64,
    },
    Failed(KernelError),
}

#[derive(Clone)]
pub struct Logs {
    client: LogStoreClient<TracedChannel>,
}

fn stream(actor: &str, kind: StreamKind) -> Option<StreamId> {
    Some(StreamId {
        actor: actor.to_owned(),
        kind: kind.into(),
    })
}

impl Logs {
    /// A client that connects on first use (and reconnects), so the kernel starts even when
    /// the log-store is not up yet.
    pub fn connect_lazy(url: &str) -> anyhow::Result<Logs> {
        Ok(Logs {
            client: LogStoreClient::new(lazy_channel("--log-store", url)?),
        })
    }

    pub async fn append(
        &self,
        actor: &str,
        kind: StreamKind,
        id: Bytes,
        data: Bytes,
        expected_tip: Option<u64>,
    ) -> Result<AppendResponse, AppendError> {
        let request = AppendRequest {
            stream: stream(actor, kind),
            entries: vec![NewEntry { id, data }],
            expected_tip,
        };
        match self.client.clone().append(request).await {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                let tip = status
                    .metadata()
                    .get(fedsx_proto::TIP_METADATA_KEY)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                match tip {
                    Some(tip) => Err(AppendError::Conflict { tip }),
                    None => Err(AppendError::Failed(status.into())),
                }
            }
            Err(status) => Err(AppendError::Failed(status.into())),
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
        self.append(actor, kind, id, data, None).await.map_err(|err| match err {
            AppendError::Failed(err) => err,
            AppendError::Conflict { tip } => KernelError::Internal(format!("unexpected tip conflict at {tip}")),
        })
    }

    /// Entries after `after_seq` (one page) and the tip.
    pub async fn read(
        &self,
        actor: &str,
        kind: StreamKind,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Entry>, u64), KernelError> {
        let request = ReadRequest {
            stream: stream(actor, kind),
            after_seq,
            limit,
        };
        let answer = self.client.clone().read(request).await?.into_inner();
        Ok((answer.entries, answer.tip))
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
    ) -> Result<tonic::Streaming<Entry>, KernelError> {
        let request = SubscribeRequest {
            stream: stream(actor, kind),
            after_seq,
        };
        Ok(self.client.clone().subscribe(request).await?.into_inner())
    }

    /// The seq of the entry with `id` in a stream, if any.
    pub async fn lookup(&self, actor: &str, kind: StreamKind, id: Bytes) -> Result<Option<u64>, KernelError> {
        let request = LookupRequest {
            stream: stream(actor, kind),
            id,
        };
        let seq = self.client.clone().lookup(request).await?.into_inner().seq;
        Ok((seq > 0).then_some(seq))
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
        Ok(self
            .client
            .clone()
            .tip(TipRequest {
                stream: stream(actor, kind),
            })
            .await?
            .into_inner()
            .tip)
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
        let request = AcquireLeaseRequest {
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl_ms: ttl.as_millis() as u64,
            data,
        };
        Ok(self.client.clone().acquire_lease(request).await?.into_inner())
    }

    /// Gives lease `name` up if `holder` holds it; whether it did.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, KernelError> {
        let request = ReleaseLeaseRequest {
            name: name.to_owned(),
            holder: holder.to_owned(),
        };
        Ok(self.client.clone().release_lease(request).await?.into_inner().released)
    }

    /// The leases held now whose names start with `prefix`.
    pub async fn leases(&self, prefix: &str) -> Result<Vec<Lease>, KernelError> {
        let request = ListLeasesRequest {
            prefix: prefix.to_owned(),
        };
        Ok(self.client.clone().list_leases(request).await?.into_inner().leases)
    }
}
