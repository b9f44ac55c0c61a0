//! `fedsx.kernel.v1.Kernel` over the domain API: converts proto ↔ domain and maps errors.

use crate::error::KernelError;
use crate::kernel::Kernel;
use crate::publish::Draft;
use fedsx_proto::kernel::v1 as pb;
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_proto::wire::v1::ActivityType;
use fedsx_runtime::error::ServiceError;
use fedsx_runtime::paging::{self, PageRequest};
use pb::kernel_server::{Kernel as KernelApi, KernelServer};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub(crate) fn server(kernel: Arc<Kernel>) -> KernelServer<KernelService> {
    KernelServer::new(KernelService { kernel }).max_decoding_message_size(2 * fedsx_wire::MAX_ENVELOPE_BYTES)
}

pub(crate) struct KernelService {
    kernel: Arc<Kernel>,
}

/// Whether the call came forwarded from another replica.
fn was_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(crate::forward::FORWARDED)
}

fn status(err: KernelError) -> Status {
    err.to_status()
}

fn page(page_size: i32, page_token: &str) -> Result<PageRequest, Status> {
    PageRequest::parse(page_size, page_token).map_err(|err| status(KernelError::BadRequest(err.to_string())))
}

fn log_kind(kind: i32) -> Result<StreamKind, Status> {
    match pb::LogKind::try_from(kind) {
        Ok(pb::LogKind::Inbox) => Ok(StreamKind::Inbox),
        Ok(pb::LogKind::Outbox) => Ok(StreamKind::Outbox),
        _ => Err(status(KernelError::BadRequest(format!(
            "unknown log kind {kind}: use inbox or outbox"
        )))),
    }
}

fn log_entry(entry: crate::LogEntry) -> pb::LogEntry {
    pb::LogEntry {
        seq: entry.seq,
        id: entry.id.map(|id| id.0.to_vec().into()).unwrap_or_default(),
        envelope: entry.envelope,
    }
}

fn published(p: crate::publish::Published) -> pb::PublishResponse {
    pb::PublishResponse {
        seq: p.seq,
        id: p.id.0.to_vec().into(),
        new: p.new,
    }
}

#[tonic::async_trait]
impl KernelApi for KernelService {
    async fn create_actor(
        &self,
        request: Request<pb::CreateActorRequest>,
    ) -> Result<Response<pb::ActorDocument>, Status> {
        let forwarded = was_forwarded(&request);
        let name = request.into_inner().name;
        crate::error::check_name(&name).map_err(status)?;
        if let Some(mut there) = self.kernel.route(&name, forwarded).await.map_err(status)? {
            let created = there
                .create_actor(crate::forward::forwarded(pb::CreateActorRequest { name: name.clone() }))
                .await
                .map_err(|s| there.failed(s))?;
            // So a read here right after sees it.
            self.kernel.caught_up(&name).await.map_err(status)?;
            return Ok(created);
        }
        self.kernel.create_actor(&name).await.map(Response::new).map_err(status)
    }

    async fn get_actor(&self, request: Request<pb::GetActorRequest>) -> Result<Response<pb::ActorDocument>, Status> {
        self.kernel
            .actor(&request.into_inner().name)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_actors(
        &self,
        request: Request<pb::ListActorsRequest>,
    ) -> Result<Response<pb::ListActorsResponse>, Status> {
        let request = request.into_inner();
        let (actors, next_page_token) = self.kernel.actors(&page(request.page_size, &request.page_token)?);
        Ok(Response::new(pb::ListActorsResponse {
            actors,
            next_page_token,
        }))
    }

    async fn publish(&self, request: Request<pb::PublishRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if let Some(mut there) = self.kernel.route(&request.actor, forwarded).await.map_err(status)? {
            return there
                .publish(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        let kind = ActivityType::try_from(request.r#type).map_err(|_| {
            status(KernelError::BadRequest(format!(
                "unknown activity type {}",
                request.r#type
            )))
        })?;
        let draft = Draft {
            actor: request.actor,
            kind,
            object: request.object,
            to: request.to,
            content: request.content,
            once_key: match request.once_key.len() {
                0 => None,
                32 => Some(request.once_key[..].try_into().expect("32 bytes")),
                len => {
                    return Err(status(KernelError::BadRequest(format!(
                        "once_key is {len} bytes; it must be 32 (or empty)"
                    ))));
                }
            },
        };
        self.kernel
            .publish(draft)
            .await
            .map(|p| Response::new(published(p)))
            .map_err(status)
    }

    async fn ingest(&self, request: Request<pb::IngestRequest>) -> Result<Response<pb::IngestResponse>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if !request.recipient.is_empty()
            && let Some(mut there) = self.kernel.route(&request.recipient, forwarded).await.map_err(status)?
        {
            return there
                .ingest(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        let (id, landed) = if request.recipient.is_empty() {
            let node = self.kernel.ingest_node(&request.envelope).await.map_err(status)?;
            (node.id, node.landed)
        } else {
            let ingested = self
                .kernel
                .ingest(&request.recipient, &request.envelope)
                .await
                .map_err(status)?;
            (ingested.id, vec![(request.recipient, ingested)])
        };
        Ok(Response::new(ingest_response(id, landed)))
    }

    async fn ingest_activity_pub(
        &self,
        request: Request<pb::IngestActivityPubRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if !request.recipient.is_empty()
            && let Some(mut there) = self.kernel.route(&request.recipient, forwarded).await.map_err(status)?
        {
            return there
                .ingest_activity_pub(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        let request = crate::activitypub::ApRequest {
            recipient: request.recipient,
            method: request.method,
            target_uri: request.target_uri,
            headers: request.headers.into_iter().map(|h| (h.name, h.value)).collect(),
            body: request.body,
        };
        let node = self.kernel.ingest_activitypub(request).await.map_err(status)?;
        Ok(Response::new(ingest_response(node.id, node.landed)))
    }

    async fn follow(&self, request: Request<pb::FollowRequest>) -> Result<Response<pb::PublishResponse>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if let Some(mut there) = self.kernel.route(&request.actor, forwarded).await.map_err(status)? {
            return there
                .follow(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        self.kernel
            .follow(&request.actor, &request.remote)
            .await
            .map(|p| Response::new(published(p)))
            .map_err(status)
    }

    async fn register_peer(&self, request: Request<pb::ActorDocument>) -> Result<Response<pb::ActorDocument>, Status> {
        self.kernel
            .register_peer(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_peer(&self, request: Request<pb::GetPeerRequest>) -> Result<Response<pb::ActorDocument>, Status> {
        self.kernel
            .peer(&request.into_inner().url)
            .map(Response::new)
            .map_err(status)
    }

    async fn followers(&self, request: Request<pb::ActorListRequest>) -> Result<Response<pb::ActorList>, Status> {
        let request = request.into_inner();
        let page = page(request.page_size, &request.page_token)?;
        let (actors, next_page_token) = self.kernel.followers(&request.name, &page).map_err(status)?;
        Ok(Response::new(pb::ActorList {
            actors,
            next_page_token,
        }))
    }

    async fn follower_history(
        &self,
        request: Request<pb::FollowerHistoryRequest>,
    ) -> Result<Response<pb::FollowerHistoryResponse>, Status> {
        let request = request.into_inner();
        let page = self
            .kernel
            .follower_history(&request.name, request.after, request.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FollowerHistoryResponse {
            events: page
                .events
                .into_iter()
                .map(|e| pb::FollowerEvent {
                    journal_seq: e.journal_seq,
                    follower: e.follower,
                    added: e.added,
                    reason: e.reason,
                })
                .collect(),
            next_after: page.next_after,
            done: page.done,
        }))
    }

    async fn following(&self, request: Request<pb::ActorListRequest>) -> Result<Response<pb::ActorList>, Status> {
        let request = request.into_inner();
        let page = page(request.page_size, &request.page_token)?;
        let (actors, next_page_token) = self.kernel.following(&request.name, &page).map_err(status)?;
        Ok(Response::new(pb::ActorList {
            actors,
            next_page_token,
        }))
    }

    async fn read_log(&self, request: Request<pb::ReadLogRequest>) -> Result<Response<pb::ReadLogResponse>, Status> {
        let request = request.into_inner();
        let kind = log_kind(request.kind)?;
        let (tip, entries) = self
            .kernel
            .read_log(&request.actor, kind, request.after, request.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadLogResponse {
            tip,
            entries: entries.into_iter().map(log_entry).collect(),
        }))
    }

    type TailLogStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

    async fn tail_log(&self, request: Request<pb::ReadLogRequest>) -> Result<Response<Self::TailLogStream>, Status> {
        let request = request.into_inner();
        let kind = log_kind(request.kind)?;
        let entries = self
            .kernel
            .tail_log(&request.actor, kind, request.after)
            .await
            .map_err(status)?;
        let stream = futures::StreamExt::map(entries, |entry| entry.map(log_entry).map_err(status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn tips(&self, request: Request<pb::ActorRequest>) -> Result<Response<pb::TipsResponse>, Status> {
        let (inbox_tip, outbox_tip) = self.kernel.tips(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::TipsResponse { inbox_tip, outbox_tip }))
    }

    async fn start_flow(&self, request: Request<pb::StartFlowRequest>) -> Result<Response<pb::Flow>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if let Some(mut there) = self.kernel.route_flows(forwarded).await.map_err(status)? {
            return there
                .start_flow(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        self.kernel
            .start_flow(&request.name, &request.input)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn signal(&self, request: Request<pb::SignalRequest>) -> Result<Response<pb::Flow>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if let Some(mut there) = self.kernel.route_flows(forwarded).await.map_err(status)? {
            return there
                .signal(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        self.kernel
            .signal_flow(&request.id, &request.signal, &request.payload)
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn get_flow(&self, request: Request<pb::GetFlowRequest>) -> Result<Response<pb::Flow>, Status> {
        // The flows in memory are current only where they run.
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if let Some(mut there) = self.kernel.route_flows(forwarded).await.map_err(status)? {
            return there
                .get_flow(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        self.kernel.flow(&request.id).map(Response::new).map_err(status)
    }

    async fn list_gaps(&self, request: Request<pb::ListGapsRequest>) -> Result<Response<pb::ListGapsResponse>, Status> {
        let request = request.into_inner();
        let page = page(request.page_size, &request.page_token)?;
        let unfilled = self.kernel.gaps.unfilled();
        let (gaps, next_page_token) = page.take(unfilled.into_iter().filter(|g| page.wants(&g.key())), |g| g.key());
        let gaps = gaps
            .into_iter()
            .map(|g| pb::Gap {
                sender: g.sender,
                first_seq: g.first,
                last_seq: g.last,
                reason: g.reason,
            })
            .collect();
        Ok(Response::new(pb::ListGapsResponse { gaps, next_page_token }))
    }

    async fn list_replicas(
        &self,
        _: Request<pb::ListReplicasRequest>,
    ) -> Result<Response<pb::ListReplicasResponse>, Status> {
        let (replicas, unserved) = self.kernel.replicas().await.map_err(status)?;
        Ok(Response::new(pb::ListReplicasResponse {
            replicas: replicas
                .into_iter()
                .map(|r| pb::Replica {
                    flows: r.partitions.contains(&crate::flows::FLOWS_PARTITION),
                    id: r.id,
                    url: r.url,
                    partitions: r.partitions,
                })
                .collect(),
            partitions: self.kernel.partitions(),
            unserved,
        }))
    }

    async fn list_flows(
        &self,
        request: Request<pb::ListFlowsRequest>,
    ) -> Result<Response<pb::ListFlowsResponse>, Status> {
        let forwarded = was_forwarded(&request);
        let request = request.into_inner();
        if let Some(mut there) = self.kernel.route_flows(forwarded).await.map_err(status)? {
            return there
                .list_flows(crate::forward::forwarded(request))
                .await
                .map_err(|s| there.failed(s));
        }
        let status_filter = match pb::FlowStatus::try_from(request.status) {
            Ok(pb::FlowStatus::Unspecified) => None,
            Ok(known) => Some(known),
            Err(_) => {
                return Err(status(KernelError::BadRequest(format!(
                    "unknown flow status {}",
                    request.status
                ))));
            }
        };
        // page_token and page_size when set, else after and limit.
        let after = page(request.page_size, &request.page_token)?
            .after
            .unwrap_or(request.after);
        let limit = if request.page_size > 0 {
            request.page_size as u32
        } else {
            request.limit
        };
        let (flows, next) = self.kernel.list_flows(&request.name, status_filter, &after, limit);
        let next_page_token = if next.is_empty() {
            String::new()
        } else {
            paging::token(&next)
        };
        Ok(Response::new(pb::ListFlowsResponse {
            flows,
            next,
            next_page_token,
        }))
    }
}

/// Where an ingested activity landed, the first recipient's place also on top (as an
/// actor inbox answers).
fn ingest_response(id: fedsx_wire::ActivityId, landed: Vec<(String, crate::Ingested)>) -> pb::IngestResponse {
    let first = landed.first().map(|(_, l)| *l);
    pb::IngestResponse {
        seq: first.map_or(0, |l| l.seq),
        new: first.is_some_and(|l| l.new),
        id: id.0.to_vec().into(),
        landed: landed
            .into_iter()
            .map(|(recipient, l)| pb::IngestLanded {
                recipient,
                seq: l.seq,
                new: l.new,
            })
            .collect(),
    }
}
