//! The delivery port: how the kernel hands a signed activity for its recipients on one
//! destination node to the delivery service. The gRPC implementation talks to `fedsx delivery`; the in-memory one
//! records hand-offs for tests of the kernel alone.

use bytes::Bytes;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{
    ActivityHandoff, Destination, EnqueueActivitiesRequest, EnqueueBatchRequest, EnqueueRequest,
    ListDeadLettersRequest, ListPeersRequest, Recipient, RecipientList, ReviveRequest,
};
use fedsx_runtime::paging::all_pages;
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};
use fedsx_wire::ActivityId;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// (actor URL, inbox URL) of recipients on one node: shared by the hand-offs of every
/// activity that goes to them.
pub type Recipients = std::sync::Arc<[(String, String)]>;

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
    pub recipients: Recipients,
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

/// Delivery's answer to one hand-off of a call: taken, or refused for good.
pub type Taken = Result<(), Refused>;

/// Delivery will never take this hand-off, and why (a recipient that is no URL, an
/// envelope over its limit): trying again cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Why a hand-off did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffError {
    /// Delivery will never take this one (a recipient that is no URL, an envelope over its
    /// limit): trying again cannot help.
    #[error("refused: {0}")]
    Refused(Refused),
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
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<Taken>, HandoffError>>;

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
    /// Delivery answered `EnqueueActivities` with UNIMPLEMENTED (a service from before
    /// it): until then, hand-offs go as `EnqueueBatch`, each with its envelope and
    /// recipients. Asked again after [`GrpcDelivery::ask_again`], so an upgraded delivery is
    /// used without restarting the kernel.
    batches_until: Mutex<Option<Instant>>,
    ask_again: Duration,
}

/// How long a kernel sends batches to a delivery service that took no `EnqueueActivities`
/// before it tries that call again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(600);

impl GrpcDelivery {
    /// Connects on first use, so the kernel starts even when delivery is not up yet.
    pub fn connect_lazy(url: &str) -> anyhow::Result<GrpcDelivery> {
        Ok(GrpcDelivery {
            client: DeliveryClient::new(lazy_channel("--delivery", url)?),
            batches_until: Mutex::new(None),
            ask_again: ASK_AGAIN_AFTER,
        })
    }

    /// Whether hand-offs go as batches now (delivery took no `EnqueueActivities` lately).
    fn batches_only(&self) -> bool {
        let mut until = self.batches_until.lock().expect("delivery lock poisoned");
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                tracing::info!("asking delivery for EnqueueActivities again");
                false
            }
            None => false,
        }
    }
}

impl DeliveryPort for GrpcDelivery {
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<Taken>, HandoffError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let mut results = None;
            if !self.batches_only() {
                match client.enqueue_activities(activities_request(&handoffs)).await {
                    Ok(response) => results = Some(response.into_inner().results),
                    Err(status) if status.code() == tonic::Code::Unimplemented => {
                        tracing::info!(
                            ask_again_in = ?self.ask_again,
                            "delivery takes no EnqueueActivities (an older service): hand-offs go as EnqueueBatch"
                        );
                        *self.batches_until.lock().expect("delivery lock poisoned") =
                            Some(Instant::now() + self.ask_again);
                    }
                    Err(status) => return Err(handoff_error(status)),
                }
            }
            let results = match results {
                Some(results) => results,
                None => {
                    let deliveries = handoffs.into_iter().map(enqueue_request).collect();
                    client
                        .enqueue_batch(EnqueueBatchRequest { deliveries })
                        .await
                        .map_err(handoff_error)?
                        .into_inner()
                        .results
                }
            };
            Ok(results
                .into_iter()
                .map(|result| {
                    if result.refused.is_empty() {
                        Ok(())
                    } else {
                        Err(Refused(result.refused))
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
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => HandoffError::Refused(Refused(why)),
        _ => HandoffError::Unavailable(why),
    }
}

/// `handoffs` as one `EnqueueActivities` request: consecutive hand-offs of one activity (same
/// id, sender, envelope and trace) are one activity with its destinations, and each list of
/// recipients goes once. Its results come in the order of `handoffs`.
fn activities_request(handoffs: &[Handoff]) -> EnqueueActivitiesRequest {
    let mut request = EnqueueActivitiesRequest::default();
    let mut lists: HashMap<*const (String, String), u32> = HashMap::new();
    for handoff in handoffs {
        let recipients = if handoff.recipients.is_empty() {
            0
        } else {
            let lists_sent = &mut request.recipient_lists;
            *lists.entry(handoff.recipients.as_ptr()).or_insert_with(|| {
                let recipients = handoff
                    .recipients
                    .iter()
                    .map(|(actor, inbox_url)| Recipient {
                        actor: actor.clone(),
                        inbox_url: inbox_url.clone(),
                    })
                    .collect();
                lists_sent.push(RecipientList { recipients });
                lists_sent.len() as u32
            })
        };
        let same = request.activities.last().is_some_and(|activity| {
            activity.id[..] == handoff.id.0[..]
                && activity.sender == handoff.sender
                && activity.traceparent == handoff.traceparent
                && activity.envelope == handoff.envelope
        });
        if !same {
            request.activities.push(ActivityHandoff {
                id: handoff.id.0.to_vec().into(),
                sender: handoff.sender.clone(),
                envelope: handoff.envelope.clone(),
                traceparent: handoff.traceparent.clone(),
                destinations: Vec::new(),
            });
        }
        let activity = request.activities.last_mut().expect("pushed above");
        activity.destinations.push(Destination {
            peer: handoff.peer.clone(),
            inbox_url: handoff.inbox_url.clone(),
            recipients,
            undeliverable: handoff.undeliverable.clone().unwrap_or_default(),
        });
    }
    request
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
            .iter()
            .map(|(actor, inbox_url)| Recipient {
                actor: actor.clone(),
                inbox_url: inbox_url.clone(),
            })
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
    fn enqueue(&self, handoffs: Vec<Handoff>) -> BoxFuture<'_, Result<Vec<Taken>, HandoffError>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fedsx_proto::delivery::v1 as pb;
    use fedsx_proto::delivery::v1::delivery_server::{Delivery, DeliveryServer};
    use std::sync::Arc;
    use tonic::{Request, Response, Status};

    /// A delivery service from before `EnqueueActivities`: it takes batches, nothing else.
    #[derive(Default, Clone)]
    struct Older {
        batches: Arc<Mutex<Vec<EnqueueBatchRequest>>>,
        /// `EnqueueActivities` calls it refused.
        asked: Arc<std::sync::atomic::AtomicUsize>,
    }

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in this version"))
    }

    #[tonic::async_trait]
    impl Delivery for Older {
        async fn enqueue(&self, _: Request<EnqueueRequest>) -> Result<Response<pb::EnqueueResponse>, Status> {
            unimplemented()
        }

        async fn enqueue_batch(
            &self,
            request: Request<EnqueueBatchRequest>,
        ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
            let request = request.into_inner();
            let taken = pb::EnqueueResult {
                new: true,
                refused: String::new(),
            };
            let results = vec![taken; request.deliveries.len()];
            self.batches.lock().unwrap().push(request);
            Ok(Response::new(pb::EnqueueBatchResponse { results }))
        }

        async fn enqueue_activities(
            &self,
            _: Request<EnqueueActivitiesRequest>,
        ) -> Result<Response<pb::EnqueueBatchResponse>, Status> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            unimplemented()
        }

        async fn peer_status(&self, _: Request<pb::PeerStatusRequest>) -> Result<Response<pb::PeerStatus>, Status> {
            unimplemented()
        }

        async fn list_peers(&self, _: Request<ListPeersRequest>) -> Result<Response<pb::ListPeersResponse>, Status> {
            unimplemented()
        }

        async fn list_dead_letters(
            &self,
            _: Request<ListDeadLettersRequest>,
        ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
            unimplemented()
        }

        async fn redrive(&self, _: Request<pb::RedriveRequest>) -> Result<Response<pb::RedriveResponse>, Status> {
            unimplemented()
        }

        async fn revive(&self, _: Request<ReviveRequest>) -> Result<Response<pb::ReviveResponse>, Status> {
            unimplemented()
        }
    }

    fn handoff(n: u8, peer: &str, recipients: &Recipients) -> Handoff {
        Handoff {
            peer: peer.into(),
            inbox_url: format!("{peer}/inbox"),
            sender: "https://a.example/actors/alice".into(),
            recipients: recipients.clone(),
            envelope: Bytes::from(vec![n; 10]),
            id: ActivityId([n; 32]),
            traceparent: String::new(),
            undeliverable: None,
        }
    }

    fn followers(peer: &str) -> Recipients {
        vec![(format!("{peer}/actors/bob"), String::new())].into()
    }

    #[test]
    fn an_activity_goes_once_for_its_destinations_and_each_list_once() {
        let (b, c) = (followers("https://b.example"), followers("https://c.example"));
        let unroutable = handoff(1, "mailto:x", &Recipients::default()).undeliverable("not a URL".into());
        let handoffs = vec![
            handoff(1, "https://b.example", &b),
            handoff(1, "https://c.example", &c),
            unroutable,
            handoff(2, "https://b.example", &b),
            handoff(2, "https://c.example", &c),
        ];
        let request = activities_request(&handoffs);
        type Shape<'a> = Vec<(u8, Vec<(&'a str, u32, &'a str)>)>;
        let shape: Shape = request
            .activities
            .iter()
            .map(|a| {
                let destinations = a
                    .destinations
                    .iter()
                    .map(|d| (d.peer.as_str(), d.recipients, d.undeliverable.as_str()))
                    .collect();
                (a.id[0], destinations)
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, vec![("https://b.example", 1, ""), ("https://c.example", 2, "")]),
                (1, vec![("mailto:x", 0, "not a URL")]),
                (2, vec![("https://b.example", 1, ""), ("https://c.example", 2, "")]),
            ],
            "in hand-off order, so the results line up"
        );
        assert_eq!(request.recipient_lists.len(), 2);
        assert_eq!(
            request.recipient_lists[1].recipients[0].actor,
            "https://c.example/actors/bob"
        );
        assert!(request.activities[1].envelope.is_empty());
    }

    #[tokio::test]
    async fn hand_offs_go_as_batches_to_a_delivery_service_from_before_enqueue_activities() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let older = Older::default();
        let stop = fedsx_runtime::CancellationToken::new();
        let routes = tonic::service::Routes::new(DeliveryServer::new(older.clone()));
        let server = tokio::spawn(fedsx_runtime::grpc::serve(
            "fedsx.delivery.v1.Delivery",
            routes,
            listener,
            stop.clone(),
        ));
        let mut delivery = GrpcDelivery::connect_lazy(&url).unwrap();
        delivery.ask_again = Duration::from_millis(300);
        let b = followers("https://b.example");
        for n in 1..=2 {
            let handoffs = vec![handoff(n, "https://b.example", &b), handoff(n, "https://c.example", &b)];
            assert_eq!(delivery.enqueue(handoffs).await.unwrap(), [Ok(()), Ok(())]);
        }
        let batches = older.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2, "both calls went, as batches");
        let second = &batches[1].deliveries[1];
        assert_eq!(second.peer, "https://c.example");
        assert_eq!(second.recipients[0].actor, "https://b.example/actors/bob");
        assert_eq!(&second.envelope[..], &[2; 10]);
        let asked = || older.asked.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(asked(), 1, "asked once, then batches");
        // Later, delivery is asked again (it may have been upgraded meanwhile).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let handoffs = vec![handoff(3, "https://b.example", &b)];
        assert_eq!(delivery.enqueue(handoffs).await.unwrap(), [Ok(())]);
        assert_eq!(asked(), 2, "asked again after a while");
        assert_eq!(older.batches.lock().unwrap().len(), 3, "and sent as a batch again");
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
