//! Any kernel replica answers any call: a call that writes for a local actor runs on the
//! replica serving the actor's partition, and another replica forwards it there over gRPC
//! (marked, so a forwarded call is never forwarded again — a replica that no longer serves
//! the partition answers UNAVAILABLE instead, and the caller retries). Reads are answered
//! where they arrive: every replica follows every journal.

use crate::error::KernelError;
use crate::ingest::Ingested;
use crate::kernel::Kernel;
use crate::ownership::Owner;
use fedsx_proto::kernel::v1 as pb;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};
use std::collections::HashMap;
use std::sync::Mutex;

/// The metadata key a forwarded call carries.
pub const FORWARDED: &str = "fedsx-forwarded";
/// Clients kept for replicas, at most (replicas come and go).
const MAX_CLIENTS: usize = 64;

pub(crate) type ReplicaClient = KernelClient<TracedChannel>;

/// A call on its way to the replica serving its partition: the client, and what to say
/// when that replica does not answer.
pub(crate) struct Forward {
    client: ReplicaClient,
    partition: u32,
    replica: String,
    url: String,
}

impl std::ops::Deref for Forward {
    type Target = ReplicaClient;
    fn deref(&self) -> &ReplicaClient {
        &self.client
    }
}

impl std::ops::DerefMut for Forward {
    fn deref_mut(&mut self) -> &mut ReplicaClient {
        &mut self.client
    }
}

impl Forward {
    /// The caller's answer when the forwarded call failed: the serving replica's own answer,
    /// or, when it could not be reached, which replica that was and what to expect.
    pub(crate) fn failed(&self, status: tonic::Status) -> tonic::Status {
        if std::error::Error::source(&status).is_none() {
            return status;
        }
        tonic::Status::unavailable(format!(
            "partition {} is served by kernel replica {} ({}), which did not answer ({}); \
             if it is gone, another replica serves the partition once its lease lapses — retry",
            self.partition,
            self.replica,
            self.url,
            status.message()
        ))
    }
}

/// Clients for the other replicas, by URL.
#[derive(Default)]
pub(crate) struct Replicas {
    clients: Mutex<HashMap<String, ReplicaClient>>,
}

impl Replicas {
    fn client(&self, url: &str) -> Result<ReplicaClient, KernelError> {
        let mut clients = self.clients.lock().expect("replica clients lock poisoned");
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let channel = lazy_channel("kernel replica", url).map_err(|err| KernelError::Internal(err.to_string()))?;
        let client = KernelClient::new(channel).max_decoding_message_size(2 * fedsx_wire::MAX_ENVELOPE_BYTES);
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }
}

/// Marks `request` as forwarded.
pub(crate) fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

impl Kernel {
    /// Where a call writing for local actor `name` runs: here (None), or on the replica
    /// whose client is answered. A call that was itself forwarded runs here or fails. While
    /// the partition has no replica (it is moving), waits up to one ownership round.
    pub(crate) async fn route(&self, name: &str, was_forwarded: bool) -> Result<Option<Forward>, KernelError> {
        self.route_partition(self.machine.journals.partition_of(name), was_forwarded)
            .await
    }

    /// The same for a flow call: the flows run on the replica serving their partition.
    pub(crate) async fn route_flows(&self, was_forwarded: bool) -> Result<Option<Forward>, KernelError> {
        self.route_partition(crate::flows::FLOWS_PARTITION, was_forwarded).await
    }

    async fn route_partition(&self, partition: u32, was_forwarded: bool) -> Result<Option<Forward>, KernelError> {
        let mut owner = self.ownership.owner(partition);
        if owner == Owner::Nobody {
            let round = self.ownership.period() * 2;
            let _ = tokio::time::timeout(round, self.ownership.next_round()).await;
            owner = self.ownership.owner(partition);
        }
        match owner {
            Owner::Here => Ok(None),
            Owner::Elsewhere { url, replica } if !was_forwarded && !url.is_empty() => {
                tracing::debug!(partition, %replica, %url, "forwarding the call");
                Ok(Some(Forward {
                    client: self.replicas.client(&url)?,
                    partition,
                    replica,
                    url,
                }))
            }
            owner => Err(KernelError::NotOwner { partition, owner }),
        }
    }

    /// Lands a verified node-inbox activity in `name`'s inbox on the replica serving it.
    pub(crate) async fn ingest_elsewhere(
        &self,
        mut there: Forward,
        name: &str,
        envelope: &[u8],
    ) -> Result<Ingested, KernelError> {
        let answer = there
            .ingest(forwarded(pb::IngestRequest {
                recipient: name.to_owned(),
                envelope: envelope.to_vec().into(),
            }))
            .await
            .map_err(|status| there.failed(status))?
            .into_inner();
        landed_of(&answer)
    }

    /// The same for an ActivityPub request.
    pub(crate) async fn ingest_activitypub_elsewhere(
        &self,
        mut there: Forward,
        name: &str,
        request: &crate::activitypub::ApRequest,
    ) -> Result<Ingested, KernelError> {
        let answer = there
            .ingest_activity_pub(forwarded(pb::IngestActivityPubRequest {
                recipient: name.to_owned(),
                method: request.method.clone(),
                target_uri: request.target_uri.clone(),
                headers: request
                    .headers
                    .iter()
                    .map(|(name, value)| pb::HttpHeader {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                body: request.body.clone(),
            }))
            .await
            .map_err(|status| there.failed(status))?
            .into_inner();
        landed_of(&answer)
    }

    /// Publishes `draft` on the replica serving its actor.
    pub(crate) async fn publish_elsewhere(
        &self,
        mut there: Forward,
        draft: crate::publish::Draft,
    ) -> Result<crate::publish::Published, KernelError> {
        let answer = there
            .publish(forwarded(pb::PublishRequest {
                actor: draft.actor,
                r#type: draft.kind.into(),
                object: draft.object,
                to: draft.to,
                content: draft.content,
                once_key: draft.once_key.map(|key| key.to_vec().into()).unwrap_or_default(),
            }))
            .await
            .map_err(|status| there.failed(status))?
            .into_inner();
        let id = fedsx_wire::ActivityId::from_slice(&answer.id)
            .ok_or_else(|| KernelError::Internal("a replica answered a publish without its id".into()))?;
        Ok(crate::publish::Published {
            seq: answer.seq,
            id,
            new: answer.new,
        })
    }

    /// Waits until this replica applied the journal of actor `name`'s partition up to its
    /// tip now: what another replica just journaled for the actor (its creation) is then
    /// here too.
    pub(crate) async fn caught_up(&self, name: &str) -> Result<(), KernelError> {
        let journal = self.machine.journals.of_actor(name);
        let tip = self
            .ports
            .logs
            .tip(
                self.machine.journals.stream(journal),
                fedsx_proto::logstore::v1::StreamKind::Meta,
            )
            .await?;
        self.applied_up_to(journal, tip).await
    }
}

fn landed_of(answer: &pb::IngestResponse) -> Result<Ingested, KernelError> {
    let id = fedsx_wire::ActivityId::from_slice(&answer.id)
        .ok_or_else(|| KernelError::Internal("a replica answered an ingest without its id".into()))?;
    Ok(Ingested {
        seq: answer.seq,
        new: answer.new,
        id,
    })
}
