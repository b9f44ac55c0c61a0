//! `fedsx.delivery.v1.Delivery`: validates and converts, then asks the peer queues.

use crate::error::DeliveryError;
use crate::peer::{PeerQueue, Shared, Status};
use fedsx_proto::delivery::v1 as pb;
use fedsx_runtime::error::ServiceError;
use pb::delivery_server::{Delivery as DeliveryApi, DeliveryServer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status as GrpcStatus};

/// Every peer queue, by peer actor URL.
pub struct Queues {
    pub shared: Arc<Shared>,
    pub peers: Mutex<HashMap<String, Arc<PeerQueue>>>,
}

impl Queues {
    /// The queue of `peer`, created (with its worker) on first use.
    pub fn queue(&self, peer: &str) -> Arc<PeerQueue> {
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        if let Some(queue) = peers.get(peer) {
            return queue.clone();
        }
        let queue = Arc::new(PeerQueue::new(peer));
        peers.insert(peer.to_owned(), queue.clone());
        tokio::spawn(queue.clone().run(self.shared.clone()));
        queue
    }

    fn all(&self) -> Vec<Arc<PeerQueue>> {
        self.peers
            .lock()
            .expect("peers lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Every peer's numbers.
    pub fn statuses(&self) -> Vec<Status> {
        self.all().iter().map(|q| q.status()).collect()
    }

    /// Every peer with when its oldest pending activity was enqueued.
    pub fn oldest_pending(&self) -> Vec<(String, Option<u64>)> {
        self.all()
            .iter()
            .map(|q| (q.status().peer, q.oldest_pending_ms(&self.shared)))
            .collect()
    }

    fn existing(&self, peer: &str) -> Result<Arc<PeerQueue>, DeliveryError> {
        self.peers
            .lock()
            .expect("peers lock poisoned")
            .get(peer)
            .cloned()
            .ok_or_else(|| DeliveryError::NoSuchPeer(peer.to_owned()))
    }
}

pub(crate) fn server(queues: Arc<Queues>) -> DeliveryServer<DeliveryService> {
    DeliveryServer::new(DeliveryService { queues }).max_decoding_message_size(2 * fedsx_wire::MAX_ENVELOPE_BYTES)
}

pub(crate) struct DeliveryService {
    queues: Arc<Queues>,
}

fn status(err: DeliveryError) -> GrpcStatus {
    err.to_status()
}

fn is_url(text: &str) -> bool {
    text.starts_with("https://") || text.starts_with("http://")
}

fn id_of(bytes: &[u8]) -> Result<[u8; 32], DeliveryError> {
    bytes
        .try_into()
        .map_err(|_| DeliveryError::BadRequest(format!("id is {} bytes, must be 32", bytes.len())))
}

fn to_proto(status: Status) -> pb::PeerStatus {
    pb::PeerStatus {
        peer: status.peer,
        pending: status.pending as u64,
        head_attempts: status.head_attempts,
        head_next_retry_ms: status.head_next_retry_ms,
        last_error: status.last_error,
        dead_letters: status.dead_letters as u64,
        delivered: status.delivered,
        in_flight: status.in_flight as u32,
    }
}

#[tonic::async_trait]
impl DeliveryApi for DeliveryService {
    async fn enqueue(&self, request: Request<pb::EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, GrpcStatus> {
        let traceparent = fedsx_runtime::trace_context::current_traceparent().unwrap_or_default();
        let request = request.into_inner();
        if !is_url(&request.peer) {
            return Err(status(DeliveryError::BadRequest(format!(
                "peer {:?} is not an http(s) URL",
                request.peer
            ))));
        }
        if !request.inbox_url.is_empty() && !is_url(&request.inbox_url) {
            return Err(status(DeliveryError::BadRequest(format!(
                "inbox url {:?} is not an http(s) URL",
                request.inbox_url
            ))));
        }
        let id = id_of(&request.id).map_err(status)?;
        if request.envelope.is_empty() || request.envelope.len() > fedsx_wire::MAX_ENVELOPE_BYTES {
            return Err(status(DeliveryError::BadRequest(format!(
                "envelope is {} bytes, must be 1 to {}",
                request.envelope.len(),
                fedsx_wire::MAX_ENVELOPE_BYTES
            ))));
        }
        let queue = self.queues.queue(&request.peer);
        let new = queue
            .enqueue(
                &self.queues.shared,
                id,
                request.inbox_url,
                request.envelope,
                traceparent,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::EnqueueResponse { new }))
    }

    async fn peer_status(
        &self,
        request: Request<pb::PeerStatusRequest>,
    ) -> Result<Response<pb::PeerStatus>, GrpcStatus> {
        let queue = self.queues.existing(&request.into_inner().peer).map_err(status)?;
        Ok(Response::new(to_proto(queue.status())))
    }

    async fn list_peers(
        &self,
        _: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, GrpcStatus> {
        let mut peers: Vec<pb::PeerStatus> = self.queues.statuses().into_iter().map(to_proto).collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, GrpcStatus> {
        let queue = self.queues.existing(&request.into_inner().peer).map_err(status)?;
        let dead_letters = queue
            .dead_letters()
            .into_iter()
            .map(|d| pb::DeadLetter {
                id: d.id.to_vec().into(),
                attempts: d.attempts,
                last_error: d.last_error,
            })
            .collect();
        Ok(Response::new(pb::ListDeadLettersResponse { dead_letters }))
    }

    async fn redrive(&self, request: Request<pb::RedriveRequest>) -> Result<Response<pb::RedriveResponse>, GrpcStatus> {
        let request = request.into_inner();
        let queue = self.queues.existing(&request.peer).map_err(status)?;
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
        let redriven = queue.redrive(&self.queues.shared, ids).await.map_err(status)?;
        Ok(Response::new(pb::RedriveResponse {
            redriven: redriven as u32,
        }))
    }
}
