//! The kernel's state is the journal folded in order: random concurrent operations through
//! the kernel's API (actors created twice at once, peers following again and again and
//! undoing, follows sent and accepted, publishes, flows started and signalled twice at
//! once), then the state in memory must equal the
//! state replaying the journals builds — what a restart would find.

mod support;

use fedsx_kernel::Kernel;
use fedsx_proto::wire::v1::ActivityType;
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// A small deterministic generator (xorshift64*), so a failing seed can be run again.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Peers live on loopback ports nothing listens on: a gap they seem to leave (their
/// activities arrive out of order on purpose) is fetched from there and fails at once.
fn peer_url(n: u64) -> String {
    format!("http://127.0.0.1:9/actors/p{n}")
}

/// One peer's activities, signed in its sequence and then sent all at once: Follows of bob
/// (some of them again), and Undos of some of those Follows.
fn follows_and_undos(rng: &mut Rng, peer: &mut Peer) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    let mut follows = Vec::new();
    for _ in 0..(3 + rng.below(5)) {
        if !follows.is_empty() && rng.below(3) == 0 {
            let undone: &fedsx_wire::ActivityId = &follows[rng.below(follows.len() as u64) as usize];
            let (_, undo) = peer.signed(ActivityType::Undo, &undone.to_hex());
            sent.push(undo);
        } else {
            let (id, follow) = peer.signed(ActivityType::Follow, &bob_url());
            follows.push(id);
            sent.push(follow);
        }
    }
    sent
}

async fn random_operations(kernel: Arc<Kernel>, seed: u64) {
    let mut rng = Rng(seed);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6 {
        let mut peer = Peer::new(&peer_url(seed * 100 + n), (seed * 10 + n) as u8);
        kernel.register_peer(peer.document()).await.unwrap();
        for envelope in follows_and_undos(&mut rng, &mut peer) {
            let (kernel, pause) = (kernel.clone(), rng.below(20));
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(pause)).await;
                // Out of order, a later Undo may come before its Follow: then it undoes
                // nothing. Either way the call answers.
                kernel.ingest("bob", &envelope).await.map(drop)
            });
        }
    }
    for n in 0..3 {
        // bob follows a peer, which accepts.
        let mut peer = Peer::new(&peer_url(seed * 100 + 50 + n), (seed * 10 + 5 + n) as u8);
        kernel.register_peer(peer.document()).await.unwrap();
        let kernel = kernel.clone();
        tasks.spawn(async move {
            let follow = kernel.follow("bob", &peer.url).await?;
            let (_, accept) = peer.signed(ActivityType::Accept, &follow.id.to_hex());
            kernel.ingest("bob", &accept).await.map(drop)
        });
    }
    for n in 0..8 {
        let creator = kernel.clone();
        let name = format!("a{}", rng.below(3));
        tasks.spawn(async move {
            match creator.create_actor(&name).await {
                Err(fedsx_kernel::KernelError::ActorExists(_)) => Ok(()),
                other => other.map(drop),
            }
        });
        let publisher = kernel.clone();
        tasks.spawn(async move {
            let note = draft("bob", ActivityType::Create, &["followers"], &format!("note {n}"));
            publisher.publish(note).await.map(drop)
        });
    }
    for n in 0..4 {
        // A digest of bob's notes, started and then approved or rejected (twice at once).
        let kernel = kernel.clone();
        let signal = if rng.below(2) == 0 { "approve" } else { "reject" };
        tasks.spawn(async move {
            let input = format!(r#"{{"actor": "bob", "notes": {}}}"#, 1 + n);
            let flow = kernel.start_flow("publish-digest", &input).await?;
            let (a, b) = tokio::join!(
                kernel.signal_flow(&flow.id, signal, ""),
                kernel.signal_flow(&flow.id, signal, "")
            );
            // One of the two wins; the other finds the instance no longer waiting.
            a.or(b).map(drop)
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
}

/// The live state equals the replayed one (retried while the relay still journals its
/// cursors).
async fn assert_matches_journal(kernel: &Kernel, seed: u64) {
    let mut last = String::new();
    for _ in 0..100 {
        match kernel.matches_journal().await.unwrap() {
            Ok(()) => return,
            Err(difference) => last = difference,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("seed {seed}: the live state is not the journal's:\n{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_state_is_the_journal_replayed() {
    for seed in 1..=4 {
        let node = node().await;
        random_operations(node.kernel.clone(), seed).await;
        assert_matches_journal(&node.kernel, seed).await;
        let following = node.kernel.following("bob", &first_page()).unwrap().0;
        assert_eq!(following.len(), 3, "seed {seed}: every accepted follow is recorded");
    }
}

/// Appends one snapshot part to a snapshot stream, as a crash mid-write would leave it.
async fn append_part(logs: &fedsx_kernel::Logs, stream: &str, part: &impl prost::Message) {
    logs.append_any(
        stream,
        fedsx_proto::logstore::v1::StreamKind::Meta,
        bytes::Bytes::from_static(b"cut-short"),
        part.encode_to_vec().into(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_from_a_snapshot_and_the_journal_after_it_is_the_whole_journal_replayed() {
    let node = node().await;
    random_operations(node.kernel.clone(), 7).await;
    let covered = node.kernel.snapshot().await.unwrap();
    assert!(covered > 0);
    let flows_covered = node.kernel.snapshot_flows().await.unwrap();
    assert!(flows_covered > 0);
    let flows_at_snapshot = node.kernel.list_flows("", None, "", 1000).0.len();
    // More after the snapshots, and snapshots cut short after that (only their first part).
    random_operations(node.kernel.clone(), 8).await;
    assert_matches_journal(&node.kernel, 8).await;
    let flows_after = node.kernel.list_flows("", None, "", 1000).0;
    assert!(
        flows_after.len() > flows_at_snapshot,
        "flows were started after the flow snapshot"
    );
    let logs = fedsx_kernel::Logs::connect_lazy(&node.logs_url).unwrap();
    let flows_cut_short = fedsx_proto::kernel::v1::FlowSnapshot {
        flow_journal_seq: flows_covered + 1,
        part: 0,
        parts: 3,
        records: Vec::new(),
    };
    append_part(&logs, "~flow-snapshots", &flows_cut_short).await;
    let cut_short = fedsx_proto::kernel::v1::StateSnapshot {
        journal_seq: covered + 1,
        part: 0,
        parts: 2,
        ..Default::default()
    };
    append_part(&logs, "~kernel-snapshots", &cut_short).await;

    let restarted = node.shutdown.child_token();
    let (kernel, _) = kernel_on(&node.logs_url, &restarted).await;
    assert_eq!(
        kernel.restored_from(),
        covered,
        "started from the complete snapshot, passing over the one cut short"
    );
    assert_eq!(
        kernel.flows_restored_from(),
        flows_covered,
        "flows started from the complete flow snapshot, passing over the one cut short"
    );
    assert_matches_journal(&kernel, 8).await;
    assert_eq!(
        kernel.list_flows("", None, "", 1000).0,
        flows_after,
        "every flow instance as it stood before the restart"
    );
    assert_eq!(
        kernel.followers("bob", &first_page()).unwrap(),
        node.kernel.followers("bob", &first_page()).unwrap()
    );
    restarted.cancel();
    assert_eq!(
        kernel.finish(Duration::from_secs(5)).await,
        0,
        "every background task of the kernel ended at shutdown"
    );
}
