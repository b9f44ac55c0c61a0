//! `fedsx.logstore.v1.LogStore` over any [`LogStorage`] engine: converts proto ↔ domain,
//! maps errors, and runs subscriptions. No storage logic lives here.

use crate::error::StoreError;
use crate::storage::{LogStorage, Page};
use crate::stream::{Entry, Kind, NewEntry, StreamId, limits};
use crate::waiters::{Waiter, Waiters};
use fedsx_proto::logstore::v1 as pb;
use fedsx_runtime::CancellationToken;
use fedsx_runtime::error::ServiceError;
use pb::log_store_server::{LogStore, LogStoreServer};
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Entries a subscription buffers for a slow client before it waits for it.
const SUBSCRIBE_BUFFER: usize = 256;

pub(crate) fn server<S: LogStorage>(store: S, shutdown: CancellationToken) -> LogStoreServer<LogStoreService<S>> {
    let source = store.clone();
    let waiters = Waiters::new(move || source.notices());
    LogStoreServer::new(LogStoreService {
        store,
        waiters,
        shutdown,
    })
    .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
    .max_encoding_message_size(limits::MAX_REQUEST_BYTES)
}

pub(crate) struct LogStoreService<S> {
    store: S,
    waiters: Waiters,
    shutdown: CancellationToken,
}

fn stream_id(stream: Option<pb::StreamId>) -> Result<StreamId, StoreError> {
    let stream = stream.ok_or(StoreError::MissingStream)?;
    let kind = match pb::StreamKind::try_from(stream.kind) {
        Ok(pb::StreamKind::Inbox) => Kind::Inbox,
        Ok(pb::StreamKind::Outbox) => Kind::Outbox,
        Ok(pb::StreamKind::Meta) => Kind::Meta,
        Ok(pb::StreamKind::Flow) => Kind::Flow,
        Ok(pb::StreamKind::Unspecified) | Err(_) => {
            return Err(StoreError::UnknownKind(stream.kind));
        }
    };
    StreamId::new(stream.actor, kind)
}

fn to_proto(entry: Entry) -> pb::Entry {
    pb::Entry {
        seq: entry.seq,
        id: entry.id,
        data: entry.data,
    }
}

fn lease_to_proto(lease: crate::lease::Lease) -> pb::Lease {
    pb::Lease {
        name: lease.name,
        holder: lease.holder,
        epoch: lease.epoch,
        remaining_ms: lease.remaining_ms,
        data: lease.data,
    }
}

fn status(err: StoreError) -> Status {
    err.to_status()
}

#[tonic::async_trait]
impl<S: LogStorage> LogStore for LogStoreService<S> {
    async fn append(&self, request: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_id(request.stream).map_err(status)?;
        let entries = request
            .entries
            .into_iter()
            .map(|e| NewEntry { id: e.id, data: e.data })
            .collect();
        let outcome = self
            .store
            .append(stream, entries, request.expected_tip)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AppendResponse {
            entries: outcome
                .entries
                .into_iter()
                .map(|a| pb::AppendedEntry {
                    seq: a.seq,
                    appended: a.appended,
                })
                .collect(),
            tip: outcome.tip,
        }))
    }

    async fn read(&self, request: Request<pb::ReadRequest>) -> Result<Response<pb::ReadResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_id(request.stream).map_err(status)?;
        let Page { entries, tip } = self
            .store
            .read(stream, request.after_seq, request.limit as usize)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadResponse {
            entries: entries.into_iter().map(to_proto).collect(),
            tip,
        }))
    }

    async fn tip(&self, request: Request<pb::TipRequest>) -> Result<Response<pb::TipResponse>, Status> {
        let stream = stream_id(request.into_inner().stream).map_err(status)?;
        let tip = self.store.tip(stream).await.map_err(status)?;
        Ok(Response::new(pb::TipResponse { tip }))
    }

    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_id(request.stream).map_err(status)?;
        let seq = self.store.lookup(stream, request.id).await.map_err(status)?;
        Ok(Response::new(pb::LookupResponse { seq: seq.unwrap_or(0) }))
    }

    async fn acquire_lease(&self, request: Request<pb::AcquireLeaseRequest>) -> Result<Response<pb::Lease>, Status> {
        let request = request.into_inner();
        let acquire =
            crate::lease::Acquire::new(request.name, request.holder, request.ttl_ms, request.data).map_err(status)?;
        let lease = self.store.acquire_lease(acquire).await.map_err(status)?;
        Ok(Response::new(lease_to_proto(lease)))
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let request = request.into_inner();
        crate::lease::check_name(&request.name).map_err(status)?;
        crate::lease::check_holder(&request.holder).map_err(status)?;
        let released = self
            .store
            .release_lease(request.name, request.holder)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReleaseLeaseResponse { released }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let prefix = request.into_inner().prefix;
        if prefix.len() > crate::lease::MAX_NAME_BYTES {
            return Err(status(StoreError::BadLease {
                reason: format!("lease prefix is over {} bytes", crate::lease::MAX_NAME_BYTES),
            }));
        }
        let leases = self.store.leases(prefix).await.map_err(status)?;
        Ok(Response::new(pb::ListLeasesResponse {
            leases: leases.into_iter().map(lease_to_proto).collect(),
        }))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::Entry, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let stream = stream_id(request.stream).map_err(status)?;
        let (sender, receiver) = mpsc::channel(SUBSCRIBE_BUFFER);
        let subscription = Subscription {
            store: self.store.clone(),
            // Made before the first read, so no append between the read and the wait is missed.
            waiter: self.waiters.waiter(&stream),
            stream,
            cursor: request.after_seq,
            sender,
        };
        tokio::spawn(subscription.run(self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// One `Subscribe` call: sends what the stream holds after the cursor, then waits for
/// appends to the stream and sends those, until the client goes away or shutdown.
struct Subscription<S> {
    store: S,
    waiter: Waiter,
    stream: StreamId,
    cursor: u64,
    sender: mpsc::Sender<Result<pb::Entry, Status>>,
}

impl<S: LogStorage> Subscription<S> {
    async fn run(mut self, shutdown: CancellationToken) {
        let _watching = self.store.watch(&self.stream);
        loop {
            match self.send_new_entries().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    let _ = self.sender.send(Err(status(err))).await;
                    return;
                }
            }
            if !self.wait_for_append(&shutdown).await {
                return;
            }
        }
    }

    /// Waits until this stream may have new entries; false when the subscription must end.
    /// Engines whose notices can be lost are read again every poll interval anyway.
    async fn wait_for_append(&mut self, shutdown: &CancellationToken) -> bool {
        let poll = self.store.poll_interval();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = self.sender.closed() => false,
            () = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => true,
            woken = self.waiter.woken() => woken,
        }
    }

    /// Sends every entry after the cursor; false when the client is gone.
    async fn send_new_entries(&mut self) -> Result<bool, StoreError> {
        loop {
            let Page { entries, tip } = self
                .store
                .read(self.stream.clone(), self.cursor, limits::MAX_READ_LIMIT)
                .await?;
            for entry in entries {
                self.cursor = entry.seq;
                if self.sender.send(Ok(to_proto(entry))).await.is_err() {
                    return Ok(false);
                }
            }
            if self.cursor >= tip {
                return Ok(true);
            }
        }
    }
}
