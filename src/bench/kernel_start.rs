//! Kernel start time and memory with a long journal: writes `--records` journal records
//! straight into a log-store (actors, followers, then relay cursors — history that leaves
//! the state small), starts a kernel with no snapshot (it replays everything, then writes a
//! snapshot), and starts it again (snapshot plus the journal after it).

use super::{KillOnDrop, path, spawn_kernel, spawn_service};
use anyhow::Context;
use bytes::Bytes;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{ActorCreated, FollowerAdded, JournalRecord, RelayCursor, StateSnapshot};
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
    /// Where the temp data dirs go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: std::path::PathBuf,
}

fn stream(actor: &str) -> Option<StreamId> {
    Some(StreamId {
        actor: actor.into(),
        kind: StreamKind::Meta.into(),
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

async fn write_journal(log_store: &mut LogStoreClient<Channel>, args: &Args) -> anyhow::Result<()> {
    let mut i = 0;
    while i < args.records {
        let entries = (i..args.records.min(i + 1024))
            .map(|n| NewEntry {
                id: Bytes::from(format!("bench-journal-{n}")),
                data: JournalRecord {
                    record: Some(record(args, n)),
                }
                .encode_to_vec()
                .into(),
            })
            .collect::<Vec<_>>();
        i += entries.len();
        let request = AppendRequest {
            stream: stream("~kernel"),
            entries,
            expected_tip: None,
        };
        log_store.append(request).await.context("writing the journal")?;
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

/// Waits until the snapshot stream ends with a complete snapshot; its journal seq.
async fn complete_snapshot(log_store: &mut LogStoreClient<Channel>) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let tip = log_store
            .tip(TipRequest {
                stream: stream("~kernel-snapshots"),
            })
            .await?
            .into_inner()
            .tip;
        if tip > 0 {
            let read = ReadRequest {
                stream: stream("~kernel-snapshots"),
                after_seq: tip - 1,
                limit: 1,
            };
            let entries = log_store.read(read).await?.into_inner().entries;
            if let Some(entry) = entries.first() {
                let part = StateSnapshot::decode(entry.data.as_ref())?;
                if part.part + 1 == part.parts {
                    return Ok(part.journal_seq);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no complete snapshot within 120 s")
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
        "journal: {} records ({} actors, {} followers, the rest relay cursors) written in {:.1?}",
        args.records,
        args.actors,
        args.followers,
        began.elapsed()
    );
    let first = start(&url, secret, "no snapshot (the whole journal replayed):")?;
    let covered = complete_snapshot(&mut log_store).await?;
    drop(first);
    println!("  (that kernel then wrote a snapshot covering journal record {covered})");
    let _second = start(&url, secret, "from the snapshot and the journal after it:")?;
    Ok(())
}
