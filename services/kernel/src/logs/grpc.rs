//! The log-store over gRPC, with trace context on every call.

use super::port::{LogError, LogPort};
use bytes::Bytes;
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{
    AcquireLeaseRequest, AppendRequest, AppendResponse, Entry, Lease, ListLeasesRequest, LookupRequest, NewEntry,
    ReadRequest, ReleaseLeaseRequest, StreamId, StreamKind, SubscribeRequest, TipRequest,
};
use fedsx_runtime::ErrorCode;
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::time::Duration;

#[derive(Clone)]
pub struct GrpcLogs {
    client: LogStoreClient<TracedChannel>,
}

impl GrpcLogs {
    /// A client that connects on first use (and reconnects), so the kernel starts even when
    /// the log-store is not up yet.
    pub fn connect_lazy(url: &str) -> anyhow::Result<GrpcLogs> {
        Ok(GrpcLogs {
            client: LogStoreClient::new(lazy_channel("--log-store", url)?),
        })
    }
}

fn stream(actor: &str, kind: StreamKind) -> Option<StreamId> {
    Some(StreamId {
        actor: actor.to_owned(),
        kind: kind.into(),
    })
}

/// A log-store status as the kernel tells it apart.
fn log_error(status: tonic::Status) -> LogError {
    let message = status.message().to_owned();
    match ErrorCode::from_grpc(status.code()) {
        ErrorCode::Unavailable => LogError::Unavailable(message),
        ErrorCode::FailedPrecondition => {
            let tip = status
                .metadata()
                .get(fedsx_proto::TIP_METADATA_KEY)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            match tip {
                Some(tip) => LogError::Conflict { tip },
                None => LogError::Internal(format!("{:?}: {message}", status.code())),
            }
        }
        ErrorCode::InvalidArgument | ErrorCode::TooLarge | ErrorCode::NotFound => {
            LogError::Invalid(format!("{:?}: {message}", status.code()))
        }
        _ => LogError::Internal(format!("{:?}: {message}", status.code())),
    }
}

impl LogPort for GrpcLogs {
    fn append<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        id: Bytes,
        data: Bytes,
        expected_tip: Option<u64>,
    ) -> BoxFuture<'a, Result<AppendResponse, LogError>> {
        let request = AppendRequest {
            stream: stream(actor, kind),
            entries: vec![NewEntry { id, data }],
            expected_tip,
        };
        let mut client = self.client.clone();
        async move { Ok(client.append(request).await.map_err(log_error)?.into_inner()) }.boxed()
    }

    fn read<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        after_seq: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<Entry>, u64), LogError>> {
        let request = ReadRequest {
            stream: stream(actor, kind),
            after_seq,
            limit,
        };
        let mut client = self.client.clone();
        async move {
            let answer = client.read(request).await.map_err(log_error)?.into_inner();
            Ok((answer.entries, answer.tip))
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        after_seq: u64,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Entry, LogError>>, LogError>> {
        let request = SubscribeRequest {
            stream: stream(actor, kind),
            after_seq,
        };
        let mut client = self.client.clone();
        async move {
            let entries = client.subscribe(request).await.map_err(log_error)?.into_inner();
            Ok(entries.map(|entry| entry.map_err(log_error)).boxed())
        }
        .boxed()
    }

    fn lookup<'a>(
        &'a self,
        actor: &'a str,
        kind: StreamKind,
        id: Bytes,
    ) -> BoxFuture<'a, Result<Option<u64>, LogError>> {
        let request = LookupRequest {
            stream: stream(actor, kind),
            id,
        };
        let mut client = self.client.clone();
        async move {
            let seq = client.lookup(request).await.map_err(log_error)?.into_inner().seq;
            Ok((seq > 0).then_some(seq))
        }
        .boxed()
    }

    fn tip<'a>(&'a self, actor: &'a str, kind: StreamKind) -> BoxFuture<'a, Result<u64, LogError>> {
        let request = TipRequest {
            stream: stream(actor, kind),
        };
        let mut client = self.client.clone();
        async move { Ok(client.tip(request).await.map_err(log_error)?.into_inner().tip) }.boxed()
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
        data: Bytes,
    ) -> BoxFuture<'a, Result<Lease, LogError>> {
        let request = AcquireLeaseRequest {
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl_ms: ttl.as_millis() as u64,
            data,
        };
        let mut client = self.client.clone();
        async move { Ok(client.acquire_lease(request).await.map_err(log_error)?.into_inner()) }.boxed()
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str) -> BoxFuture<'a, Result<bool, LogError>> {
        let request = ReleaseLeaseRequest {
            name: name.to_owned(),
            holder: holder.to_owned(),
        };
        let mut client = self.client.clone();
        async move {
            Ok(client
                .release_lease(request)
                .await
                .map_err(log_error)?
                .into_inner()
                .released)
        }
        .boxed()
    }

    fn leases<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Lease>, LogError>> {
        let request = ListLeasesRequest {
            prefix: prefix.to_owned(),
        };
        let mut client = self.client.clone();
        async move {
            Ok(client
                .list_leases(request)
                .await
                .map_err(log_error)?
                .into_inner()
                .leases)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_told_apart() {
        let mut conflict = tonic::Status::failed_precondition("tip moved");
        conflict
            .metadata_mut()
            .insert(fedsx_proto::TIP_METADATA_KEY, "41".parse().unwrap());
        assert_eq!(log_error(conflict), LogError::Conflict { tip: 41 });
        assert!(matches!(
            log_error(tonic::Status::unavailable("engine down")),
            LogError::Unavailable(reason) if reason == "engine down"
        ));
        assert!(matches!(
            log_error(tonic::Status::invalid_argument("bad stream")),
            LogError::Invalid(_)
        ));
        assert!(matches!(
            log_error(tonic::Status::failed_precondition("no tip given")),
            LogError::Internal(_)
        ));
        assert!(matches!(
            log_error(tonic::Status::internal("disk")),
            LogError::Internal(_)
        ));
    }
}
