//! `fedsx.delivery.v1.Delivery` over any [`QueueStorage`]: validates and converts, then
//! asks the queue (and the dispatcher, for the sends in flight from this replica).

use crate::dispatcher::{Dispatcher, now_ms};
use crate::error::DeliveryError;
use crate::storage::{NewDelivery, PeerStatus, QueueStorage, Recipient};
use fedsx_proto::delivery::v1 as pb;
use fedsx_runtime::error::ServiceError;
use fedsx_runtime::paging::PageRequest;
use pb::delivery_server::{Delivery as DeliveryApi, DeliveryServer};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status as GrpcStatus};

pub(crate) fn server<Q: QueueStorage>(
    dispatcher: Arc<Dispatcher<Q>>,
    unavailable_after: Duration,
) -> DeliveryServer<DeliveryService<Q>> {
    let unavailable_after_ms = u64::try_from(unavailable_after.as_millis()).unwrap_or(u64::MAX);
    DeliveryServer::new(DeliveryService {
        dispatcher,
        unavailable_after_ms,
    })
    .max_decoding_message_size(MAX_REQUEST_BYTES)
}

/// Bytes of one request, at most: a batch of enqueues, or one enqueue for a node where
/// thousands of recipients follow.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Deliveries in one `EnqueueBatch`, at most.
pub const MAX_BATCH: usize = 10_000;

pub(crate) struct DeliveryService<Q> {
    dispatcher: Arc<Dispatcher<Q>>,
    /// A peer failing this long is unavailable.
    unavailable_after_ms: u64,
}

fn status(err: DeliveryError) -> GrpcStatus {
    err.to_status()
}

fn page(page_size: i32, page_token: &str) -> Result<PageRequest, GrpcStatus> {
    PageRequest::parse(page_size, page_token).map_err(|err| status(DeliveryError::BadRequest(err.to_string())))
}

/// Bytes of a peer name or a reason given with an undeliverable enqueue, at most.
const MAX_NAME: usize = 2048;

fn is_url(text: &str) -> bool {
    text.starts_with("https://") || text.starts_with("http://")
}

fn id_of(bytes: &[u8]) -> Result<[u8; 32], DeliveryError> {
    bytes
        .try_into()
        .map_err(|_| DeliveryError::BadRequest(format!("id is {} bytes, must be 32", bytes.len())))
}

fn to_proto(status: PeerStatus, in_flight: usize, unavailable_after_ms: u64) -> pb::PeerStatus {
    let since = status.failing_since_ms;
    pb::PeerStatus {
        failing_since_ms: since,
        unavailable: since != 0 && now_ms().saturating_sub(since) >= unavailable_after_ms,
        peer: status.peer,
        pending: status.pending,
        head_attempts: status.head_attempts,
        head_next_retry_ms: status.head_next_retry_ms,
        last_error: status.last_error,
        dead_letters: status.dead_letters,
        delivered: status.delivered,
        in_flight: in_flight as u32,
    }
}

/// A checked recipient list.
fn recipients_of(list: Vec<pb::Recipient>) -> Result<Arc<[Recipient]>, DeliveryError> {
    let bad = |why: String| Err(DeliveryError::BadRequest(why));
    if let Some(url) = list
        .iter()
        .map(|r| &r.inbox_url)
        .filter(|url| !url.is_empty())
        .find(|url| !is_url(url))
    {
        return bad(format!("inbox url {url:?} is not an http(s) URL"));
    }
    if let Some(recipient) = list.iter().find(|r| !is_url(&r.actor)) {
        return bad(format!("recipient {:?} is not an http(s) URL", recipient.actor));
    }
    Ok(list
        .into_iter()
        .map(|r| Recipient {
            actor: r.actor,
            inbox_url: r.inbox_url,
        })
        .collect())
}

/// A checked `Enqueue` request, its recipients checked already.
fn new_delivery(
    request: pb::EnqueueRequest,
    recipients: Arc<[Recipient]>,
    traceparent: String,
    unavailable_after_ms: u64,
) -> Result<NewDelivery, DeliveryError> {
    let bad = |why: String| Err(DeliveryError::BadRequest(why));
    let undeliverable = (!request.undeliverable.is_empty()).then_some(request.undeliverable);
    match &undeliverable {
        Some(_) if request.peer.is_empty() || request.peer.len() > MAX_NAME => {
            return bad(format!("peer must be 1 to {MAX_NAME} bytes"));
        }
        Some(reason) if reason.len() > MAX_NAME => return bad(format!("undeliverable is over {MAX_NAME} bytes")),
        Some(_) => {}
        None if !is_url(&request.peer) => return bad(format!("peer {:?} is not an http(s) URL", request.peer)),
        None => {}
    }
    if !request.inbox_url.is_empty() && !is_url(&request.inbox_url) {
        return bad(format!("inbox url {:?} is not an http(s) URL", request.inbox_url));
    }
    if request.traceparent.len() > MAX_NAME {
        return bad(format!("traceparent is over {MAX_NAME} bytes"));
    }
    let traceparent = if request.traceparent.is_empty() {
        traceparent
    } else {
        request.traceparent
    };
    let id = id_of(&request.id)?;
    let size = request.envelope.len();
    if (size == 0 && undeliverable.is_none()) || size > fedsx_wire::MAX_ENVELOPE_BYTES {
        return bad(format!(
            "envelope is {size} bytes, must be 1 to {}",
            fedsx_wire::MAX_ENVELOPE_BYTES
        ));
    }
    Ok(NewDelivery {
        peer: request.peer,
        id,
        sender: request.sender,
        inbox_url: request.inbox_url,
        recipients,
        envelope: request.envelope,
        undeliverable,
        unavailable_before: now_ms().saturating_sub(unavailable_after_ms),
        traceparent,
        enqueued_ms: now_ms(),
    })
}

/// An `Enqueue` request checked whole.
fn checked(
    request: pb::EnqueueRequest,
    traceparent: String,
    unavailable_after_ms: u64,
) -> Result<NewDelivery, DeliveryError> {
    let (request, recipients) = unchecked(request);
    new_delivery(
        request,
        recipients.map_err(DeliveryError::BadRequest)?,
        traceparent,
        unavailable_after_ms,
    )
}

/// An enqueue request (its recipients apart) and its recipients as checked (or why not).
type Unchecked = (pb::EnqueueRequest, Result<Arc<[Recipient]>, String>);

/// An `Enqueue` request with its recipients taken out, and them checked (or why not).
fn unchecked(mut request: pb::EnqueueRequest) -> Unchecked {
    let recipients = recipients_of(std::mem::take(&mut request.recipients)).map_err(|err| err.to_string());
    (request, recipients)
}

/// The deliveries an `EnqueueActivities` request names, each as `EnqueueBatch` would take
/// it: its request (without recipients) and its recipients, checked once per list.
fn expand(request: pb::EnqueueActivitiesRequest) -> Vec<Unchecked> {
    let lists: Vec<Result<Arc<[Recipient]>, String>> = request
        .recipient_lists
        .into_iter()
        .map(|list| recipients_of(list.recipients).map_err(|err| err.to_string()))
        .collect();
    let mut out = Vec::new();
    for activity in request.activities {
        for destination in activity.destinations {
            let recipients = match destination.recipients as usize {
                0 => Ok(Arc::default()),
                n => lists.get(n - 1).cloned().unwrap_or_else(|| {
                    Err(format!(
                        "recipients {n} names no list (the request has {})",
                        lists.len()
                    ))
                }),
            };
            let request = pb::EnqueueRequest {
                peer: destination.peer,
                inbox_url: destination.inbox_url,
                envelope: activity.envelope.clone(),
                id: activity.id.clone(),
                sender: activity.sender.clone(),
                recipients: Vec::new(),
                undeliverable: destination.undeliverable,
                traceparent: activity.traceparent.clone(),
            };
            out.push((request, recipients));
        }
    }
    out
}

impl<Q: QueueStorage> DeliveryService<Q> {
    /// Queues every valid one of `requests` together; one result each, in order.
    async fn enqueue_each(&self, requests: Vec<Unchecked>) -> Result<Response<pb::EnqueueBatchResponse>, GrpcStatus> {
        if requests.len() > MAX_BATCH {
            let why = format!("{} deliveries in one batch, at most {MAX_BATCH}", requests.len());
            return Err(status(DeliveryError::BadRequest(why)));
        }
        let traceparent = fedsx_runtime::trace_context::current_traceparent().unwrap_or_default();
        let mut results = vec![pb::EnqueueResult::default(); requests.len()];
        let mut valid = Vec::with_capacity(requests.len());
        let mut places = Vec::with_capacity(requests.len());
        for (place, (request, recipients)) in requests.into_iter().enumerate() {
            let checked = recipients.map_err(DeliveryError::BadRequest).and_then(|recipients| {
                new_delivery(request, recipients, traceparent.clone(), self.unavailable_after_ms)
            });
            match checked {
                Ok(delivery) => {
                    valid.push(delivery);
                    places.push(place);
                }
                Err(err) => results[place].refused = err.to_string(),
            }
        }
        let new = self
            .dispatcher
            .queue()
            .enqueue_all(valid)
            .await
            .map_err(|err| status(err.into()))?;
        for (place, new) in places.into_iter().zip(new) {
            results[place].new = new;
        }
        Ok(Response::new(pb::EnqueueBatchResponse { results }))
    }
}

#[tonic::async_trait]
impl<Q: QueueStorage> DeliveryApi for DeliveryService<Q> {
    async fn enqueue(&self, request: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, GrpcStatus> {
        let traceparent = fedsx_runtime::trace_context::current_traceparent().unwrap_or_default();
        let delivery = checked(request.into_inner(), traceparent, self.unavailable_after_ms).map_err(status)?;
        let new = self
            .dispatcher
            .queue()
            .enqueue(delivery)
            .await
            .map_err(|err| status(err.into()))?;
        Ok(Response::new(pb::EnqueueResponse { new }))
    }

    async fn enqueue_batch(
        &self,
        request: Request<pb::EnqueueBatchRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, GrpcStatus> {
        let requests = request.into_inner().deliveries.into_iter().map(unchecked).collect();
        self.enqueue_each(requests).await
    }

    async fn enqueue_activities(
        &self,
        request: Request<pb::EnqueueActivitiesRequest>,
    ) -> Result<Response<pb::EnqueueBatchResponse>, GrpcStatus> {
        let request = request.into_inner();
        // Refused before the deliveries are spelled out (a small request can name many).
        let destinations: usize = request.activities.iter().map(|a| a.destinations.len()).sum();
        if destinations > MAX_BATCH {
            let why = format!("{destinations} destinations in one request, at most {MAX_BATCH}");
            return Err(status(DeliveryError::BadRequest(why)));
        }
        self.enqueue_each(expand(request)).await
    }

    async fn peer_status(
        &self,
        request: Request<pb::PeerStatusRequest>,
    ) -> Result<Response<pb::PeerStatus>, GrpcStatus> {
        let peer = request.into_inner().peer;
        let found = self
            .dispatcher
            .queue()
            .status(&peer)
            .await
            .map_err(|err| status(err.into()))?;
        let found = found.ok_or_else(|| status(DeliveryError::NoSuchPeer(peer.clone())))?;
        Ok(Response::new(to_proto(
            found,
            self.dispatcher.in_flight(&peer),
            self.unavailable_after_ms,
        )))
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, GrpcStatus> {
        let request = request.into_inner();
        let page = page(request.page_size, &request.page_token)?;
        let mut statuses = self
            .dispatcher
            .queue()
            .statuses()
            .await
            .map_err(|err| status(err.into()))?;
        statuses.retain(|s| page.wants(&s.peer));
        statuses.sort_unstable_by(|a, b| a.peer.cmp(&b.peer));
        let (statuses, next_page_token) = page.take(statuses, |s| s.peer.clone());
        let peers = statuses
            .into_iter()
            .map(|s| {
                let in_flight = self.dispatcher.in_flight(&s.peer);
                to_proto(s, in_flight, self.unavailable_after_ms)
            })
            .collect();
        Ok(Response::new(pb::ListPeersResponse { peers, next_page_token }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, GrpcStatus> {
        let request = request.into_inner();
        let page = page(request.page_size, &request.page_token)?;
        let dead = self
            .dispatcher
            .queue()
            .dead_letters(&request.peer)
            .await
            .map_err(|err| status(err.into()))?;
        let mut dead: Vec<(String, _)> = dead
            .ok_or_else(|| status(DeliveryError::NoSuchPeer(request.peer)))?
            .into_iter()
            .map(|d| (hex::encode(d.id), d))
            .filter(|(key, _)| page.wants(key))
            .collect();
        dead.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let (dead, next_page_token) = page.take(dead, |(key, _)| key.clone());
        let dead_letters = dead
            .into_iter()
            .map(|(_, d)| pb::DeadLetter {
                id: d.id.to_vec().into(),
                attempts: d.attempts,
                last_error: d.last_error,
                sender: d.sender,
                recipients: d
                    .recipients
                    .into_iter()
                    .map(|r| pb::Recipient {
                        actor: r.actor,
                        inbox_url: r.inbox_url,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }

    async fn redrive(&self, request: Request<pb::RedriveRequest>) -> Result<Response<pb::RedriveResponse>, GrpcStatus> {
        let request = request.into_inner();
        let ids = if request.ids.is_empty() {
            None
        } else {
            Some(
                request
                    .ids
                    .iter()
                    .map(|id| id_of(id))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(status)?,
            )
        };
        let redriven = self
            .dispatcher
            .queue()
            .redrive(&request.peer, ids)
            .await
            .map_err(|err| status(err.into()))?
            .ok_or_else(|| status(DeliveryError::NoSuchPeer(request.peer.clone())))?;
        if redriven > 0 {
            tracing::info!(peer = %request.peer, redriven, "dead letters redriven");
        }
        Ok(Response::new(pb::RedriveResponse {
            redriven: redriven as u32,
        }))
    }

    async fn revive(&self, request: Request<pb::ReviveRequest>) -> Result<Response<pb::ReviveResponse>, GrpcStatus> {
        let peer = request.into_inner().peer;
        self.dispatcher
            .queue()
            .revive(&peer)
            .await
            .map_err(|err| status(err.into()))?
            .ok_or_else(|| status(DeliveryError::NoSuchPeer(peer.clone())))?;
        tracing::debug!(%peer, "destination revived");
        Ok(Response::new(pb::ReviveResponse {}))
    }
}
