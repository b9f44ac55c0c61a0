//! Kernel start time and memory with a long journal: writes `--records` journal records
//! straight into a log-store (actors, followers, then relay cursors — history that leaves
//! the state small), starts a kernel with no snapshot (it replays everything, then writes a
//! snapshot), and starts it again (snapshot plus the journal after it). The flow journal
//! likewise: `--flow-records` versions of `--flow-instances` instances, read whole by the
//! first start and from a flow snapshot by the second.

use super::{KillOnDrop, path, spawn_kernel, spawn_service};
use anyhow::Context;
use bytes::Bytes;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{
    ActorCreated, Flow, FlowRecord, FlowSnapshot, FlowStatus, FollowerAdded, JournalRecord, RelayCursor, StateSnapshot,
};
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{AppendRequest, NewEntry, ReadRequest, StreamId, StreamKind, TipRequest};
use prost::Message;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Journal records in all.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Local actors among them.
    #[arg(long, default_value_t = 1_000)]
    actors: usize,
    /// Followers among them (spread over the actors).
    #[arg(long, default_value_t = 10_000)]
    followers: usize,
    /// Flow journal entries in all (versions of the flow instances).
    #[arg(long, default_value_t = 200_000)]
    flow_records: usize,
    /// Flow instances they are versions of (each ends suspended, awaiting a signal).
    #[arg(long, default_value_t = 1_000)]
    flow_instances: usize,
    /// Where the temp data dirs go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

fn stream(actor: &str) -> Option<StreamId> {
    stream_of(actor, StreamKind::Meta)
}

fn stream_of(actor: &str, kind: StreamKind) -> Option<StreamId> {
    Some(StreamId {
        actor: actor.into(),
        kind: kind.into(),
    })
}

/// The `i`th record of the synthetic journal.
fn record(args: &Args, i: usize) -> Record {
    let actor = |n: usize| format!("actor{}", n % args.actors);
    if i < args.actors {
        return Record::ActorCreated(ActorCreated {
            name: actor(i),
            created_ms: 1,
            // Not a real sealed key (the kernel never opens one; delivery does): present, so
            // the start does not generate RSA keys for the synthetic actors.
            rsa_key: Bytes::from_static(b"synthetic"),
            rsa_public_pem: String::new(),
        });
    }
    let i = i - args.actors;
    if i < args.followers {
        return Record::FollowerAdded(FollowerAdded {
            actor: actor(i),
            follower: format!("https://peer{}.example/actors/f{i}", i % 100),
            follow_id: Bytes::from(fedsx_wire::ActivityId::of(&i.to_be_bytes()).0.to_vec()),
        });
    }
    Record::RelayCursor(RelayCursor {
        actor: actor(i),
        seq: i as u64,
    })
}

/// The `i`th entry of the synthetic flow journal: the next version of one instance.
fn flow_record(args: &Args, i: usize) -> FlowRecord {
    let instances = args.flow_instances.max(1);
    let version = (i / instances + 1) as u64;
    FlowRecord {
        flow: Some(Flow {
            id: format!("{:032x}", i % instances),
            name: "publish-digest".into(),
            status: FlowStatus::Suspended.into(),
            awaiting: vec!["approve".into()],
            version,
            data: format!("{{\"round\":{version}}}"),
            ..Flow::default()
        }),
        step: 1,
    }
}

async fn write_journal(log_store: &mut LogStoreClient<Channel>, args: &Args) -> anyhow::Result<()> {
    let journal = |n| JournalRecord {
        record: Some(record(args, n)),
    };
    write_stream(log_store, "~kernel", StreamKind::Meta, args.records, |n| {
        journal(n).encode_to_vec()
    })
    .await?;
    write_stream(log_store, "~flows", StreamKind::Flow, args.flow_records, |n| {
        flow_record(args, n).encode_to_vec()
    })
    .await
}

/// Appends `count` entries made by `data` to a stream, 1,024 per call.
async fn write_stream(
    log_store: &mut LogStoreClient<Channel>,
    actor: &str,
    kind: StreamKind,
    count: usize,
    data: impl Fn(usize) -> Vec<u8>,
) -> anyhow::Result<()> {
    let mut i = 0;
    while i < count {
        let entries = (i..count.min(i + 1024))
            .map(|n| NewEntry {
                id: Bytes::from(format!("bench-{actor}-{n}")),
                data: data(n).into(),
            })
            .collect::<Vec<_>>();
        i += entries.len();
        let request = AppendRequest {
            stream: stream_of(actor, kind),
            entries,
            expected_tip: None,
        };
        log_store
            .append(request)
            .await
            .with_context(|| format!("writing {actor}"))?;
    }
    Ok(())
}

/// Resident and peak resident memory of a process, in MB.
fn memory_mb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts a kernel and reports how long until it served, and its memory then.
fn start(log_store: &str, secret: &str, what: &str) -> anyhow::Result<KillOnDrop> {
    let began = Instant::now();
    let (_, kernel) = spawn_kernel(log_store, super::NO_DELIVERY, secret, &[])?;
    let took = began.elapsed();
    let (rss, peak) = memory_mb(kernel.pid());
    println!("  {what:<44} serving after {took:>9.2?}; resident {rss} MB (peak {peak} MB)");
    Ok(kernel)
}

/// Waits until the snapshot stream `actor` ends with a complete snapshot (`place` reads a
/// part's (journal seq, part, parts)); its journal seq.
async fn complete_snapshot(
    log_store: &mut LogStoreClient<Channel>,
    actor: &str,
    place: impl Fn(&[u8]) -> Result<(u64, u32, u32), prost::DecodeError>,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let tip = log_store
            .tip(TipRequest { stream: stream(actor) })
            .await?
            .into_inner()
            .tip;
        if tip > 0 {
            let read = ReadRequest {
                stream: stream(actor),
                after_seq: tip - 1,
                limit: 1,
            };
            let entries = log_store.read(read).await?.into_inner().entries;
            if let Some(entry) = entries.first() {
                let (seq, part, parts) = place(entry.data.as_ref())?;
                if part + 1 == parts {
                    return Ok(seq);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no complete snapshot in {actor} within 120 s")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new().prefix("fedsx-bench-").tempdir_in(&args.dir)?;
    let data = scratch.path().join("log-store");
    let secret = scratch.path().join("node-secret");
    let secret = path(&secret)?;
    let (url, _log_store) = spawn_service(&["log-store", "--listen", "127.0.0.1:0", "--data-dir", path(&data)?])?;
    let mut log_store = LogStoreClient::connect(url.clone()).await?;
    let began = Instant::now();
    write_journal(&mut log_store, &args).await?;
    println!(
        "journal: {} records ({} actors, {} followers, the rest relay cursors); flow journal: {} versions of {} instances; written in {:.1?}",
        args.records,
        args.actors,
        args.followers,
        args.flow_records,
        args.flow_instances,
        began.elapsed()
    );
    let first = start(&url, secret, "no snapshots (both journals read whole):")?;
    let covered = complete_snapshot(&mut log_store, "~kernel-snapshots", |data| {
        StateSnapshot::decode(data).map(|p| (p.journal_seq, p.part, p.parts))
    })
    .await?;
    let flows_covered = if args.flow_records > 0 {
        complete_snapshot(&mut log_store, "~flow-snapshots", |data| {
            FlowSnapshot::decode(data).map(|p| (p.flow_journal_seq, p.part, p.parts))
        })
        .await?
    } else {
        0
    };
    drop(first);
    println!(
        "  (that kernel then wrote snapshots covering journal record {covered} and flow journal entry {flows_covered})"
    );
    let _second = start(&url, secret, "from the snapshots and the journals after them:")?;
    Ok(())
}
