//! The kernel's domain API: actors, peers, followers, tips. Publishing and the inbound
//! pipeline live in `publish.rs` and `ingest.rs`; the gRPC handler only converts.

use crate::clock::{Clock, SystemClock};
use crate::delivery::DeliveryPort;
use crate::error::{KernelError, check_name};
use crate::flows::{FLOWS_ACTOR, FlowTable};
use crate::keys::NodeSecret;
use crate::logs::Logs;
use crate::peers::{FetchError, PeerPort};
use crate::state::{NodeUrls, State};
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{ActorCreated, ActorDocument, PeerRegistered};
use fedsx_proto::logstore::v1::StreamKind;
use fedsx_runtime::paging::PageRequest;
use prost::Message;
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Nodes the revivals throttle remembers at most.
const MAX_THROTTLED: usize = 100_000;

pub struct Kernel {
    /// What it uses from outside: logs, peers, delivery, the clock.
    pub(crate) ports: Ports,
    pub(crate) secret: NodeSecret,
    pub(crate) node: NodeUrls,
    /// `<base>/actors/`: local actor URLs start with it.
    pub(crate) actors_prefix: String,
    /// Which partitions this replica serves (`ownership/`).
    pub(crate) ownership: crate::ownership::Ownership,
    /// Clients for the replicas calls are forwarded to (`forward.rs`).
    pub(crate) replicas: crate::forward::Replicas,
    /// The journals, the state applied from them and its snapshots (`journal.rs`).
    pub(crate) machine: crate::journal::Machine,
    /// What applied records ask for, done by the partitions' owner (`effects.rs`).
    pub(crate) effects: crate::effects::Effects,
    /// The outboxes' chains this replica appends to (`outbox.rs`).
    pub(crate) outboxes: crate::outbox::Outboxes,
    /// Peers' documents, known or fetched (`directory.rs`).
    pub(crate) directory: crate::directory::Directory,
    /// Calls telling delivery a node is up (a request from it arrived), at most one per
    /// interval per node.
    pub(crate) revivals: crate::throttle::Throttle,
    /// Actors whose outboxes to hand off, and what was just published (`relay.rs`).
    pub(crate) relay: crate::relay::Relay,
    pub(crate) flows: FlowTable,
    /// Per sender, how far its sequence arrived without gaps, and the gaps not filled.
    pub(crate) gaps: crate::gaps::Gaps,
    /// This kernel, for the tasks it starts (a gap's fill).
    pub(crate) me: std::sync::Weak<Kernel>,
    /// Every background task it started (followers, relay, timers, snapshot writes, fills):
    /// awaited at shutdown (`finish`).
    pub(crate) tasks: tokio_util::task::TaskTracker,
    /// Reports flows by status while the kernel lives.
    _flow_gauge: fedsx_runtime::metrics::ObservableGauge<u64>,
    /// Reports the partitions served while the kernel lives.
    _ownership_gauges: [fedsx_runtime::metrics::ObservableGauge<u64>; 2],
}

/// What the kernel uses from outside, each behind a trait.
#[derive(Clone)]
pub struct Ports {
    pub logs: Logs,
    pub peers: Arc<dyn PeerPort>,
    pub delivery: Arc<dyn DeliveryPort>,
    pub clock: Arc<dyn Clock>,
}

impl Ports {
    /// The ports of a kernel process: the log-store and delivery over gRPC (connected on
    /// first use), peers over HTTP, the system clock.
    pub fn connect_lazy(log_store: &str, delivery: &str, allow_private_peers: bool) -> anyhow::Result<Ports> {
        Ok(Ports {
            logs: Logs::connect_lazy(log_store)?,
            peers: Arc::new(crate::peers::PeerFetcher::new(allow_private_peers)),
            delivery: Arc::new(crate::delivery::GrpcDelivery::connect_lazy(delivery)?),
            clock: Arc::new(SystemClock),
        })
    }
}

impl crate::ownership::OwnershipHost for Kernel {
    fn ownership(&self) -> &crate::ownership::Ownership {
        &self.ownership
    }

    /// The state has applied the partition's journal through the fencing record, and the
    /// flows are loaded from their journal when they are this partition's.
    async fn catch_up(&self, partition: u32, journal_seq: u64) -> Result<(), KernelError> {
        self.applied_up_to(1 + partition as usize, journal_seq).await?;
        if partition == crate::flows::FLOWS_PARTITION {
            self.reload_flows().await?;
        }
        Ok(())
    }

    /// The effects its previous owner may not have done are run again, and its actors'
    /// outboxes are relayed from their journaled cursors (anything published before that
    /// delivery may not have taken).
    fn taken(&self, partition: u32, journal_seq: u64) {
        self.rerun_effects(1 + partition as usize, journal_seq);
        let actors: Vec<String> = self
            .read_state()
            .actors
            .keys()
            .filter(|name| self.machine.journals.partition_of(name) == partition)
            .cloned()
            .collect();
        for actor in actors {
            self.relay.kick(&actor);
        }
    }
}

/// A stored inbox or outbox entry with the id of the activity it holds.
fn log_entry(entry: fedsx_proto::logstore::v1::Entry) -> crate::LogEntry {
    crate::LogEntry {
        seq: entry.seq,
        id: fedsx_wire::decode(&entry.data).map(|r| r.id).ok(),
        envelope: entry.data,
    }
}

/// A journal or idempotency key: SHA-256 over a purpose tag and parts.
pub(crate) fn derived_id(purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new().chain_update(purpose.as_bytes()).chain_update([0u8]);
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

impl Kernel {
    /// Replays the journals into memory, takes this replica's share of the partitions and
    /// starts the delivery relay. A node without a journal is created with
    /// `replica.partitions` partitions. Fails when the log-store cannot be read.
    pub async fn start(
        ports: Ports,
        secret: NodeSecret,
        node: NodeUrls,
        replica: crate::ownership::ReplicaConfig,
        shutdown: fedsx_runtime::CancellationToken,
    ) -> Result<Arc<Kernel>, KernelError> {
        let started = Instant::now();
        let logs = &ports.logs;
        let journals = crate::partition::Journals::open(logs, replica.partitions, ports.clock.now_ms()).await?;
        let ownership = crate::ownership::Ownership::new(replica, logs.clone(), &journals)?;
        let (state, applied, replayed) = crate::snapshot::restore(logs, &journals, &secret, &node).await?;
        let covered = applied.iter().sum::<u64>() - replayed;
        tracing::info!(
            partitions = journals.partitions(),
            snapshot = covered,
            replayed,
            actors = state.actors.len(),
            peers = state.peers.len(),
            took = ?started.elapsed(),
            "state restored from the newest snapshot and the journal after it"
        );
        let restored_flows = crate::flows::snapshot::restore(logs).await?;
        let flows_read = restored_flows.last;
        let flows = FlowTable::restore(restored_flows.latest, restored_flows.covered, flows_read);
        tracing::info!(
            snapshot = restored_flows.covered,
            replayed = restored_flows.last - restored_flows.covered,
            instances = ?flows.counts(),
            "flows restored from the newest flow snapshot and the flow journal after it"
        );
        let outboxes = crate::outbox::Outboxes::new(ports.logs.clone(), ports.clock.clone());
        let directory = crate::directory::Directory::new(ports.peers.clone());
        let kernel = Arc::new_cyclic(|this| Kernel {
            ports,
            secret,
            actors_prefix: format!("{}/actors/", node.base),
            node,
            machine: crate::journal::Machine {
                journals,
                state: RwLock::new(state),
                applied: crate::journal::Applied::new(&applied),
                snapshots: crate::snapshot::Snapshots::new(covered),
                restored_from: covered,
            },
            ownership,
            replicas: crate::forward::Replicas::default(),
            effects: crate::effects::Effects::new(&applied),
            outboxes,
            directory,
            revivals: crate::throttle::Throttle::new(crate::ingest::REVIVE_EVERY, MAX_THROTTLED),
            relay: crate::relay::Relay::default(),
            flows,
            gaps: crate::gaps::Gaps::default(),
            me: this.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
            _flow_gauge: {
                crate::metrics::init();
                crate::metrics::register_flows(this.clone())
            },
            _ownership_gauges: crate::metrics::register_ownership(this.clone()),
        });
        crate::journal::spawn_followers(&kernel, &shutdown);
        crate::effects::spawn_runners(&kernel, &kernel.tasks, &shutdown);
        // Takes this replica's share of the partitions before serving (all of them when it
        // is the only one); the rounds go on in the background.
        if let Err(err) = crate::ownership::round(&*kernel).await {
            tracing::warn!(error = %err, "the first ownership round failed; retried");
        }
        crate::ownership::spawn(&kernel, &kernel.tasks, shutdown.clone());
        // After a long journal since the last snapshot, the next start need not read it again.
        crate::snapshot::take_if_due(&kernel);
        crate::flows::snapshot::compact_if_due(&kernel, flows_read);
        kernel.restore_gaps().await?;
        crate::backfill::spawn_saver(&kernel, shutdown.clone());
        crate::relay::spawn(kernel.clone(), shutdown.clone());
        crate::gone::spawn(kernel.clone(), shutdown.clone());
        crate::flows::spawn_timers(kernel.clone(), shutdown);
        crate::activitypub::spawn_key_backfill(kernel.clone());
        Ok(kernel)
    }

    /// Whether this replica serves local actor `name`'s partition now.
    pub(crate) fn serves(&self, name: &str) -> bool {
        self.ownership.owned(self.machine.journals.partition_of(name)).is_some()
    }

    /// Where calls for local actor `name` are served now.
    pub fn owner_of(&self, name: &str) -> crate::ownership::Owner {
        self.ownership.owner(self.machine.journals.partition_of(name))
    }

    /// This replica's id (its leases' holder).
    pub fn replica(&self) -> &str {
        &self.ownership.replica
    }

    /// The partitions this replica serves now.
    pub fn owned_partitions(&self) -> Vec<u32> {
        self.ownership.owned_partitions()
    }

    /// Waits until the ownership round after the one running now has finished.
    pub async fn next_ownership_round(&self) {
        self.ownership.next_round().await
    }

    /// The live replicas (by id) with the partitions each holds, and the partitions no one
    /// holds right now.
    pub async fn replicas(&self) -> Result<(Vec<crate::ownership::ReplicaView>, Vec<u32>), KernelError> {
        self.ownership.replicas().await
    }

    /// The local actor name in `url`, when it is a local actor's URL (the actor may not
    /// exist).
    pub(crate) fn local_name<'a>(&self, url: &'a str) -> Option<&'a str> {
        url.strip_prefix(self.actors_prefix.as_str())
    }

    /// Seq `seq` of remote `sender` was taken: a gap it opens is filled in the background.
    /// Only while this replica is the only one: with several, each sees a share of a
    /// sender's activities, and what it misses would look like gaps (fetched for nothing).
    pub(crate) fn sequence_seen(&self, sender: &ActorDocument, seq: u64) {
        if self.local_name(&sender.id).is_some() || !self.ownership.alone() {
            return;
        }
        if let (Some(fill), Some(me)) = (self.gaps.seen(&sender.id, seq), self.me.upgrade()) {
            crate::backfill::spawn(me, sender.clone(), fill);
        }
    }

    /// Milliseconds since the Unix epoch, on the kernel's clock.
    pub(crate) fn now_ms(&self) -> i64 {
        self.ports.clock.now_ms()
    }

    pub(crate) fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.machine.state.read().expect("state lock poisoned")
    }

    /// The journal records covered by the snapshot this kernel started from, over all
    /// journals (0: it replayed the whole journals).
    pub fn restored_from(&self) -> u64 {
        self.machine.restored_from
    }

    /// After shutdown: waits up to `patience` for every background task to end (each loop
    /// ends on the shutdown token; a snapshot or a hand-off in flight completes). How many
    /// were still running when patience ran out (they are logged and abandoned).
    pub async fn finish(&self, patience: Duration) -> usize {
        self.tasks.close();
        if tokio::time::timeout(patience, self.tasks.wait()).await.is_ok() {
            return 0;
        }
        let running = self.tasks.len();
        tracing::warn!(
            running,
            ?patience,
            "background tasks still running at shutdown; abandoned"
        );
        running
    }

    /// The flow journal seq covered by the flow snapshot this kernel started from (0: it
    /// read the whole flow journal).
    pub fn flows_restored_from(&self) -> u64 {
        self.flows.restored_from()
    }

    /// Writes a snapshot of the flow journal now (besides the one every `snapshot::EVERY`
    /// flow journal entries); the flow journal seq it covers.
    pub async fn snapshot_flows(&self) -> Result<u64, KernelError> {
        self.check_serves_flows()?;
        self.flows.snapshots.turn().await;
        self.flows
            .snapshots
            .writing("flow", crate::flows::snapshot::compact(&self.ports.logs))
            .await
    }

    /// Writes a snapshot of the state now (besides the one every
    /// `snapshot::EVERY` records); the journal records it covers, over all journals.
    pub async fn snapshot(&self) -> Result<u64, KernelError> {
        self.check_serves_flows()?;
        self.machine.snapshots.turn().await;
        let (seqs, records) = {
            let state = self.read_state();
            (self.machine.applied.seqs(), state.as_records())
        };
        self.machine
            .snapshots
            .writing("state", crate::snapshot::write_state(&self.ports.logs, seqs, records))
            .await
    }

    /// How many partitions the node's actors are spread over.
    pub fn partitions(&self) -> u32 {
        self.machine.journals.partitions()
    }

    /// The partition local actor `name` belongs to.
    pub fn partition_of(&self, name: &str) -> u32 {
        self.machine.journals.partition_of(name)
    }

    /// Whether the state in memory — and every flow instance — is what replaying the
    /// journals builds (the check a restart would pass); when not, the first difference. Meaningful while nothing is
    /// being journaled.
    pub async fn matches_journal(&self) -> Result<Result<(), String>, KernelError> {
        let (replayed, last) =
            crate::journal::replay(&self.ports.logs, &self.machine.journals, &self.secret, &self.node).await?;
        let applied = self.machine.applied.seqs();
        if applied != last {
            return Ok(Err(format!(
                "applied up to records {applied:?}, the journals end at {last:?}"
            )));
        }
        if let Err(difference) = self.read_state().difference(&replayed) {
            return Ok(Err(difference));
        }
        let journal = self.ports.logs.read_all(FLOWS_ACTOR, StreamKind::Flow, 0).await?;
        let replayed: std::collections::BTreeMap<_, _> = crate::flows::latest_versions(&journal)?
            .into_iter()
            .map(|(id, (flow, _))| (id, flow))
            .collect();
        let live = self.flows.views();
        if live != replayed {
            return Ok(Err(format!(
                "flow instances differ:\n  live:     {live:?}\n  replayed: {replayed:?}"
            )));
        }
        Ok(Ok(()))
    }

    pub async fn create_actor(&self, name: &str) -> Result<ActorDocument, KernelError> {
        check_name(name)?;
        if self.read_state().actor(name).is_some() {
            return Err(KernelError::ActorExists(name.to_owned()));
        }
        let (rsa_key, rsa_public_pem) = crate::activitypub::new_rsa_key(&self.secret, name).await?;
        let record = Record::ActorCreated(ActorCreated {
            name: name.to_owned(),
            created_ms: self.now_ms(),
            rsa_key,
            rsa_public_pem,
        });
        if !self.journal(derived_id("actor", &[name.as_bytes()]), record).await? {
            return Err(KernelError::ActorExists(name.to_owned()));
        }
        tracing::info!(actor = name, "actor created");
        self.actor(name)
    }

    pub fn actor(&self, name: &str) -> Result<ActorDocument, KernelError> {
        self.read_state()
            .actor(name)
            .map(|a| a.document.clone())
            .ok_or_else(|| KernelError::NoSuchActor(name.to_owned()))
    }

    /// A page of the local actors' documents, in name order, and the next page's token.
    pub fn actors(&self, page: &PageRequest) -> (Vec<ActorDocument>, String) {
        let state = self.read_state();
        let (names, next) = page.take(state.actors.range::<str, _>(page.rest()), |(name, _)| name.to_string());
        (names.into_iter().map(|(_, a)| a.document.clone()).collect(), next)
    }

    /// Inbox and outbox tips of a local actor.
    pub async fn tips(&self, name: &str) -> Result<(u64, u64), KernelError> {
        self.actor(name)?;
        let (inbox, outbox) = tokio::try_join!(
            self.ports.logs.tip(name, StreamKind::Inbox),
            self.ports.logs.tip(name, StreamKind::Outbox)
        )?;
        Ok((inbox, outbox))
    }

    /// Entries of a local actor's inbox or outbox after `after`, with activity ids, and the
    /// tip.
    pub async fn read_log(
        &self,
        name: &str,
        kind: StreamKind,
        after: u64,
        limit: u32,
    ) -> Result<(u64, Vec<crate::LogEntry>), KernelError> {
        self.actor(name)?;
        let (entries, tip) = self.ports.logs.read(name, kind, after, limit.min(1024)).await?;
        let entries = entries.into_iter().map(log_entry).collect();
        Ok((tip, entries))
    }

    /// The entries after `after`, then new ones as they are appended (the log-store's tail).
    pub async fn tail_log(
        &self,
        name: &str,
        kind: StreamKind,
        after: u64,
    ) -> Result<impl futures::Stream<Item = Result<crate::LogEntry, KernelError>> + use<>, KernelError> {
        self.actor(name)?;
        let entries = self.ports.logs.subscribe(name, kind, after).await?;
        Ok(futures::StreamExt::map(entries, |entry| Ok(log_entry(entry?))))
    }

    /// A page of a local actor's followers (actor URLs in order), and the next page's token.
    pub fn followers(&self, name: &str, page: &PageRequest) -> Result<(Vec<String>, String), KernelError> {
        let state = self.read_state();
        state
            .actor(name)
            .ok_or_else(|| KernelError::NoSuchActor(name.to_owned()))?;
        let followers = state
            .followers
            .get(name)
            .into_iter()
            .flat_map(|f| f.range::<str, _>(page.rest()).map(|(url, _)| url));
        let (page, next) = page.take(followers, |url| url.to_string());
        Ok((page.into_iter().cloned().collect(), next))
    }

    /// A page of the actors a local actor follows (URLs in order), and the next page's token.
    pub fn following(&self, name: &str, page: &PageRequest) -> Result<(Vec<String>, String), KernelError> {
        let state = self.read_state();
        state
            .actor(name)
            .ok_or_else(|| KernelError::NoSuchActor(name.to_owned()))?;
        let following = state
            .following
            .get(name)
            .into_iter()
            .flat_map(|f| f.range::<str, _>(page.rest()));
        let (page, next) = page.take(following, |url| url.to_string());
        Ok((page.into_iter().cloned().collect(), next))
    }

    /// Records a peer's document (checked first) so it need not be fetched.
    pub async fn register_peer(&self, document: ActorDocument) -> Result<ActorDocument, KernelError> {
        fedsx_wire::document::check(&document)
            .map_err(|reason| KernelError::BadRequest(format!("bad actor document: {reason}")))?;
        if document
            .id
            .strip_prefix(&self.node.base)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(KernelError::BadRequest(format!(
                "{} is a local actor, not a peer",
                document.id
            )));
        }
        self.keep_peer(&document).await?;
        Ok(document)
    }

    /// Journals a peer's document.
    async fn keep_peer(&self, document: &ActorDocument) -> Result<(), KernelError> {
        let id = derived_id("peer", &[&document.encode_to_vec()]);
        let record = Record::PeerRegistered(PeerRegistered {
            document: Some(document.clone()),
        });
        self.journal(id, record).await.map(|_| ())
    }

    pub fn peer(&self, url: &str) -> Result<ActorDocument, KernelError> {
        self.read_state()
            .peers
            .get(url)
            .cloned()
            .ok_or_else(|| KernelError::NoSuchPeer(url.to_owned()))
    }

    /// The document of the actor at `url`: a local actor, a known peer, or fetched (and
    /// then kept). The outer error is this kernel's (keeping it failed), the inner the
    /// peer's.
    pub(crate) async fn document_of(&self, url: &str) -> Result<Result<ActorDocument, FetchError>, KernelError> {
        self.directory.document_of(self, url).await
    }
}

impl crate::directory::Documents for Kernel {
    fn known(&self, url: &str) -> Option<(ActorDocument, bool)> {
        let state = self.read_state();
        let (document, local) = state.known(&self.actors_prefix, url)?;
        Some((document.clone(), local))
    }

    async fn keep(&self, document: &ActorDocument) -> Result<(), KernelError> {
        self.keep_peer(document).await
    }
}
