//! The delivery port: how the kernel hands a signed activity for its recipients on one
//! destination node to the delivery service. The gRPC implementation talks to `fedsx delivery`; the in-memory one
//! records hand-offs for tests of the kernel alone.

use bytes::Bytes;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{
    EnqueueBatchRequest, EnqueueRequest, ListDeadLettersRequest, ListPeersRequest, Recipient, ReviveRequest,
};
use fedsx_runtime::paging::all_pages;
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};
use fedsx_wire::ActivityId;
use futures::future::BoxFuture;
use std::sync::Mutex;

/// One activity for its recipients on one destination node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The destination node, `scheme://host[:port]`.
    pub peer: String,
    /// Where it is POSTed once: the node inbox all its recipients' documents advertise;
    /// empty: to each recipient's inbox.
    pub inbox_url: String,
    /// The local actor URL that sent it.
    pub sender: String,
    /// (actor URL, inbox URL — empty when unknown) of each recipient on the node, sorted.
    pub recipients: Vec<(String, String)>,
    pub envelope: Bytes,
    pub id: ActivityId,
    /// The trace its send continues (W3C `traceparent`; empty: the enqueue call's).
    pub traceparent: String,
    /// Some(why): it can never be handed on; delivery keeps it as a dead letter with this
    /// reason (visible to operators), never sending it.
    pub undeliverable: Option<String>,
}

impl Handoff {
    /// The record of this hand-off as undeliverable for `reason`, without its envelope.
    pub fn undeliverable(self, reason: String) -> Handoff {
        Handoff {
            envelope: Bytes::new(),
            undeliverable: Some(reason),
            ..self
        }
    }
}

/// Why a hand-off did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// Delivery will never take this one (a recipient that is no URL, an envelope over its
    /// limit): trying again cannot help.
    #[error("refused: {0}")]
    Refused(String),
    /// Delivery cannot take it right now; trying again later may.
    #[error("{0}")]
    Unavailable(String),
}

/// A dead letter, as the kernel reads it to find followers that are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetter {
    pub last_error: String,
    /// The local actor URL that sent it.
    pub sender: String,
    /// (actor URL, inbox URL) of each recipient.
    pub recipients: Vec<(String, String)>,
}

/// Where deliveries go. Enqueueing the same (peer, id) twice must be one delivery: the
/// kernel hands off at least once.
pub trait DeliveryPort: Send + Sync + 'static {
    /// Hands `handoffs` over together (durable once answered; one sender's hand-offs to one
    /// destination keep their order). Per hand-off: taken, or refused for good and why.
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<Result<(), String>>, HandoffError>>;

    /// A request from destination node `peer` arrived: it is up, so make it available again
    /// if delivery gave up on it. Whether delivery knew the destination.
    fn revive(&self, peer: String) -> BoxFuture<'_, Result<bool, HandoffError>>;

    /// Every destination with dead letters, and how many.
    fn dead_letter_counts(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, HandoffError>>;

    /// A destination's dead letters.
    fn dead_letters(&self, peer: String) -> BoxFuture<'_, Result<Vec<DeadLetter>, HandoffError>>;
}

/// The delivery service over gRPC.
pub struct GrpcDelivery {
    client: DeliveryClient<TracedChannel>,
}

impl GrpcDelivery {
    /// Connects on first use, so the kernel starts even when delivery is not up yet.
    pub fn connect_lazy(url: &str) -> anyhow::Result<GrpcDelivery> {
        Ok(GrpcDelivery {
            client: DeliveryClient::new(lazy_channel("--delivery", url)?),
        })
    }
}

impl DeliveryPort for GrpcDelivery {
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<Result<(), String>>, HandoffError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let deliveries = handoffs.into_iter().map(enqueue_request).collect();
            let results = client
                .enqueue_batch(EnqueueBatchRequest { deliveries })
                .await
                .map_err(handoff_error)?
                .into_inner()
                .results;
            Ok(results
                .into_iter()
                .map(|result| {
                    if result.refused.is_empty() {
                        Ok(())
                    } else {
                        Err(result.refused)
                    }
                })
                .collect())
        })
    }

    fn dead_letter_counts(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, HandoffError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let peers = all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let request = ListPeersRequest {
                        page_size: 1000,
                        page_token,
                    };
                    let page = client.list_peers(request).await?.into_inner();
                    Ok((page.peers, page.next_page_token))
                }
            })
            .await
            .map_err(handoff_error)?;
            Ok(peers
                .into_iter()
                .filter(|p| p.dead_letters > 0)
                .map(|p| (p.peer, p.dead_letters))
                .collect())
        })
    }

    fn dead_letters(&self, peer: String) -> BoxFuture<'_, Result<Vec<DeadLetter>, HandoffError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let listed = all_pages(|page_token| {
                let (mut client, peer) = (client.clone(), peer.clone());
                async move {
                    let request = ListDeadLettersRequest {
                        peer,
                        page_size: 1000,
                        page_token,
                    };
                    let page = client.list_dead_letters(request).await?.into_inner();
                    Ok((page.dead_letters, page.next_page_token))
                }
            })
            .await
            .map_err(handoff_error)?;
            Ok(listed
                .into_iter()
                .map(|d| DeadLetter {
                    last_error: d.last_error,
                    sender: d.sender,
                    recipients: d.recipients.into_iter().map(|r| (r.actor, r.inbox_url)).collect(),
                })
                .collect())
        })
    }

    fn revive(&self, peer: String) -> BoxFuture<'_, Result<bool, HandoffError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            match client.revive(ReviveRequest { peer }).await {
                Ok(_) => Ok(true),
                Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
                Err(status) => Err(handoff_error(status)),
            }
        })
    }
}

fn handoff_error(status: tonic::Status) -> HandoffError {
    let why = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => HandoffError::Refused(why),
        _ => HandoffError::Unavailable(why),
    }
}

fn enqueue_request(handoff: Handoff) -> EnqueueRequest {
    EnqueueRequest {
        peer: handoff.peer,
        inbox_url: handoff.inbox_url,
        envelope: handoff.envelope,
        id: handoff.id.0.to_vec().into(),
        sender: handoff.sender,
        recipients: handoff
            .recipients
            .into_iter()
            .map(|(actor, inbox_url)| Recipient { actor, inbox_url })
            .collect(),
        undeliverable: handoff.undeliverable.unwrap_or_default(),
        traceparent: handoff.traceparent,
    }
}

/// Records every hand-off (for tests of the kernel without a delivery service).
#[derive(Default)]
pub struct MemoryDelivery {
    handoffs: Mutex<Vec<Handoff>>,
    /// Nodes it was told are up, in order (failed calls included).
    revives: Mutex<Vec<String>>,
    /// Whether telling it a node is up fails (as when delivery is down).
    pub fail_revives: std::sync::atomic::AtomicBool,
}

impl MemoryDelivery {
    /// Every distinct (peer, id) handed off, in first-hand-off order.
    pub fn handoffs(&self) -> Vec<Handoff> {
        let all = self.handoffs.lock().expect("handoffs lock");
        let mut seen = std::collections::HashSet::new();
        all.iter()
            .filter(|h| seen.insert((h.peer.clone(), h.id)))
            .cloned()
            .collect()
    }

    /// Every call telling it a node is up, in order (failed ones included).
    pub fn revives(&self) -> Vec<String> {
        self.revives.lock().expect("revives lock").clone()
    }
}

impl DeliveryPort for MemoryDelivery {
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<Result<(), String>>, HandoffError>> {
        let taken = vec![Ok(()); handoffs.len()];
        self.handoffs.lock().expect("handoffs lock").extend(handoffs);
        Box::pin(async { Ok(taken) })
    }

    fn revive(&self, peer: String) -> BoxFuture<'_, Result<bool, HandoffError>> {
        self.revives.lock().expect("revives lock").push(peer);
        let failed = self.fail_revives.load(std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            if failed {
                return Err(HandoffError::Unavailable("delivery is down (test)".into()));
            }
            Ok(false)
        })
    }

    fn dead_letter_counts(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, HandoffError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn dead_letters(&self, _peer: String) -> BoxFuture<'_, Result<Vec<DeadLetter>, HandoffError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
