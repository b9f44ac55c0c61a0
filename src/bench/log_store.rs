//! `fedsx bench log-store`: synced appends/s through gRPC to a running log-store (1 stream
//! and 1,000 streams, at concurrency 1 and 64), then raw synced RocksDB writes on the same
//! disk without gRPC (1 writer, 64 writers, batches of 64), and the ratio the target is
//! stated in: gRPC at concurrency 64 ÷ raw 64-writer synced puts.

use super::path;
use anyhow::Context;
use bytes::Bytes;
use fedsx_proto::logstore::v1::log_store_client::LogStoreClient;
use fedsx_proto::logstore::v1::{AppendRequest, NewEntry, StreamId, StreamKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Bytes per appended entry: about one signed activity.
const PAYLOAD: usize = 256;
/// Connections the concurrent gRPC workers share.
const CONNECTIONS: usize = 4;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A running log-store to measure (e.g. http://127.0.0.1:8702). Without it, one is
    /// started on a temp data dir under --dir.
    #[arg(long)]
    target: Option<String>,
    /// Where the temp data dirs go; put it on the disk you want measured.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let scratch = tempfile::Builder::new()
        .prefix("fedsx-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("--dir {}", args.dir.display()))?;
    println!(
        "machine: {} cores; data under {}",
        std::thread::available_parallelism()?,
        scratch.path().display()
    );

    let (target, _server) = match args.target {
        Some(target) => (target, None),
        None => {
            let data = scratch.path().join("log-store");
            let (url, child) =
                super::spawn_service(&["log-store", "--listen", "127.0.0.1:0", "--data-dir", path(&data)?])?;
            (url, Some(child))
        }
    };
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(
            LogStoreClient::connect(target.clone())
                .await
                .with_context(|| format!("connecting to {target}"))?,
        );
    }

    println!("\nsynced appends/s through gRPC ({target}), {PAYLOAD}-byte entries:");
    let mut grpc = Vec::new();
    for (run, streams) in [1usize, 1000].into_iter().enumerate() {
        for concurrency in [1usize, 64] {
            let rate = grpc_appends(&connections, run * 2 + concurrency, streams, concurrency, duration).await?;
            println!("  {streams:>5} stream(s), concurrency {concurrency:>2}: {rate:>9.0}/s");
            grpc.push((streams, concurrency, rate));
        }
    }

    println!("\nraw synced RocksDB on the same disk, no gRPC:");
    let raw_dir = scratch.path().join("raw");
    let raw_one = tokio::task::block_in_place(|| raw_puts(&raw_dir, 1, 1, duration))?;
    println!("  1 writer, 1 put per synced write:     {raw_one:>9.0}/s");
    let raw_64 = tokio::task::block_in_place(|| raw_puts(&raw_dir, 64, 1, duration))?;
    println!("  64 writers, 1 put per synced write:   {raw_64:>9.0}/s");
    let raw_batched = tokio::task::block_in_place(|| raw_puts(&raw_dir, 1, 64, duration))?;
    println!("  1 writer, synced batches of 64:       {raw_batched:>9.0} records/s");

    println!("\ntarget: gRPC at concurrency 64 >= 50% of raw 64-writer synced puts");
    for (streams, concurrency, rate) in grpc.into_iter().filter(|(_, c, _)| *c == 64) {
        println!(
            "  {streams:>5} stream(s), concurrency {concurrency}: {:.0}% of raw",
            100.0 * rate / raw_64
        );
    }
    Ok(())
}

pub async fn grpc_appends(
    connections: &[LogStoreClient<Channel>],
    run: usize,
    streams: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let mut client = connections[worker % connections.len()].clone();
        let (done, stop, payload) = (done.clone(), stop.clone(), payload.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let actor = format!("bench-{run}-{}", (worker + i * concurrency) % streams);
                let id = Bytes::from(format!("{run}-{worker}-{i}"));
                let request = AppendRequest {
                    stream: Some(StreamId {
                        actor,
                        kind: StreamKind::Outbox.into(),
                    }),
                    entries: vec![NewEntry {
                        id,
                        data: payload.clone(),
                    }],
                    expected_tip: None,
                };
                client.append(request).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for worker in workers {
        worker.await??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// `writers` threads each doing synced writes of `batch` puts, for `duration`: records/s.
fn raw_puts(dir: &std::path::Path, writers: usize, batch: usize, duration: Duration) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(dir);
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = Arc::new(rocksdb::DB::open(&options, dir)?);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let (db, done, stop) = (db.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || -> Result<(), rocksdb::Error> {
                let mut write_options = rocksdb::WriteOptions::default();
                write_options.set_sync(true);
                let payload = vec![7u8; PAYLOAD];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut wb = rocksdb::WriteBatch::default();
                    for _ in 0..batch {
                        wb.put(format!("{writer:03}-{i:012}"), &payload);
                        i += 1;
                    }
                    db.write_opt(wb, &write_options)?;
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("raw writer panicked"))??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}
