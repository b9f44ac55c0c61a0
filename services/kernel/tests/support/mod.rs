//! The kernel library's test harness: a real log-store in-process (real RocksDB), a kernel
//! on it with the in-memory delivery port, and remote actors that sign what they send.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use fedsx_kernel::delivery::MemoryDelivery;
use fedsx_kernel::peers::PeerFetcher;
use fedsx_kernel::{Draft, Kernel, Logs, NodeSecret};
use fedsx_proto::kernel::v1::ActorDocument;
use fedsx_proto::wire::v1::{Activity, ActivityType};
use fedsx_runtime::CancellationToken;
use fedsx_wire::{ActivityId, key_id, sign};
use std::sync::Arc;

pub const BASE: &str = "https://b.example";
pub const PEER: &str = "https://a.example/actors/alice";
/// The node `PEER` lives on: its deliveries' queue.
pub const PEER_NODE: &str = "https://a.example";

pub struct Node {
    pub kernel: Arc<Kernel>,
    pub delivery: Arc<MemoryDelivery>,
    pub logs_url: String,
    pub _dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn log_store(dir: &std::path::Path, shutdown: CancellationToken) -> String {
    fedsx_log_store::spawn_on_loopback(dir, shutdown).await.unwrap()
}

/// Partitions of a test node: several, so records of different actors go to different
/// journals.
pub const PARTITIONS: u32 = 4;

pub async fn kernel_on(logs_url: &str, shutdown: &CancellationToken) -> (Arc<Kernel>, Arc<MemoryDelivery>) {
    kernel_with(logs_url, shutdown, PARTITIONS).await
}

/// A kernel on the log-store at `logs_url`; a new node gets `partitions`.
pub async fn kernel_with(
    logs_url: &str,
    shutdown: &CancellationToken,
    partitions: u32,
) -> (Arc<Kernel>, Arc<MemoryDelivery>) {
    let replica = fedsx_kernel::ReplicaConfig {
        partitions,
        ..Default::default()
    };
    kernel_replica(logs_url, shutdown, replica).await
}

/// A kernel replica taking part as `replica` says.
pub async fn kernel_replica(
    logs_url: &str,
    shutdown: &CancellationToken,
    replica: fedsx_kernel::ReplicaConfig,
) -> (Arc<Kernel>, Arc<MemoryDelivery>) {
    kernel_timed(logs_url, shutdown, replica, Arc::new(fedsx_kernel::clock::SystemClock)).await
}

/// A kernel replica on `clock`.
pub async fn kernel_timed(
    logs_url: &str,
    shutdown: &CancellationToken,
    replica: fedsx_kernel::ReplicaConfig,
    clock: Arc<dyn fedsx_kernel::clock::Clock>,
) -> (Arc<Kernel>, Arc<MemoryDelivery>) {
    let delivery = Arc::new(MemoryDelivery::default());
    let ports = fedsx_kernel::Ports {
        logs: Logs::connect_lazy(logs_url).unwrap(),
        peers: Arc::new(PeerFetcher::new(true)),
        delivery: delivery.clone(),
        clock,
    };
    let kernel = loop {
        match Kernel::start(
            ports.clone(),
            NodeSecret::from_bytes([5; 32]),
            fedsx_kernel::NodeUrls::new(BASE, true),
            replica.clone(),
            shutdown.child_token(),
        )
        .await
        {
            Ok(kernel) => break kernel,
            Err(fedsx_kernel::KernelError::LogStoreUnavailable(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(err) => panic!("{err}"),
        }
    };
    (kernel, delivery)
}

pub async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let logs_url = log_store(dir.path(), shutdown.clone()).await;
    let (kernel, delivery) = kernel_on(&logs_url, &shutdown).await;
    kernel.create_actor("bob").await.unwrap();
    Node {
        kernel,
        delivery,
        logs_url,
        _dir: dir,
        shutdown,
    }
}

/// A remote actor made in the test: its key, and its document registered with the node.
pub struct Peer {
    pub key: SigningKey,
    pub url: String,
    pub seq: u64,
    pub prev: Option<ActivityId>,
}

impl Peer {
    pub fn new(url: &str, seed: u8) -> Peer {
        Peer {
            key: SigningKey::from_bytes(&[seed; 32]),
            url: url.into(),
            seq: 0,
            prev: None,
        }
    }

    pub fn document(&self) -> ActorDocument {
        fedsx_wire::document::new(&self.url, "", &self.key.verifying_key(), "")
    }

    pub fn activity(&mut self, kind: ActivityType, object: &str) -> Activity {
        self.seq += 1;
        Activity {
            r#type: kind.into(),
            actor: self.url.clone(),
            seq: self.seq,
            object: object.into(),
            to: vec![format!("{BASE}/actors/bob")],
            published_ms: 1_767_225_600_000 + self.seq as i64,
            content: String::new(),
            prev: self.prev.map(|id| id.0.to_vec().into()).unwrap_or_default(),
        }
    }

    pub fn sign(&mut self, activity: &Activity) -> (ActivityId, Vec<u8>) {
        let signed = sign(activity, &self.key, &key_id(&self.url, &self.key.verifying_key()));
        self.prev = Some(signed.id);
        (signed.id, signed.to_bytes())
    }

    pub fn signed(&mut self, kind: ActivityType, object: &str) -> (ActivityId, Vec<u8>) {
        let activity = self.activity(kind, object);
        self.sign(&activity)
    }
}

/// The journal stream of partition `partition` (partition 0 keeps the name of a node's one
/// journal from before partitions).
pub fn journal_of(partition: u32) -> String {
    match partition {
        0 => "~kernel".to_owned(),
        p => format!("~kernel-{p}"),
    }
}

/// The Follows that local actor `actor`'s outbox holds an Accept of (their ids in hex), in
/// outbox order.
pub async fn accepts(kernel: &Kernel, actor: &str) -> Vec<String> {
    let (_, entries) = kernel
        .read_log(actor, fedsx_proto::logstore::v1::StreamKind::Outbox, 0, 1000)
        .await
        .unwrap();
    entries
        .iter()
        .filter_map(|entry| fedsx_wire::decode(&entry.envelope).ok())
        .filter(|received| received.kind == ActivityType::Accept)
        .map(|received| received.activity.object)
        .collect()
}

/// [`accepts`] once there is one, or after 10 s.
pub async fn accepts_published(kernel: &Kernel, actor: &str) -> Vec<String> {
    for _ in 0..200 {
        let found = accepts(kernel, actor).await;
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Vec::new()
}

pub fn bob_url() -> String {
    format!("{BASE}/actors/bob")
}

pub async fn tips(node: &Node) -> (u64, u64) {
    node.kernel.tips("bob").await.unwrap()
}

pub fn draft(actor: &str, kind: ActivityType, to: &[&str], content: &str) -> Draft {
    Draft {
        actor: actor.into(),
        kind,
        object: String::new(),
        to: to.iter().map(|t| t.to_string()).collect(),
        content: content.into(),
        once_key: None,
    }
}

pub fn first_page() -> fedsx_runtime::paging::PageRequest {
    fedsx_runtime::paging::PageRequest::parse(0, "").unwrap()
}
