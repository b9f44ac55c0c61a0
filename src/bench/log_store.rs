//! `fedsx bench log-store`: synced appends/s through gRPC to a log-store (1, 10 and 1,000
//! streams, at concurrency 1 and 64) on RocksDB and, with `--store` or `--pg-throwaway`,
//! on PostgreSQL; then the machine's limits in the same run — raw synced RocksDB writes on
//! the same disk (1 writer, 64 writers, batches of 64) and raw single-row committed INSERTs
//! on the same PostgreSQL server (1 and 64 clients) — and the ratios the targets are stated
//! in.

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
    /// Also measure the PostgreSQL engine on this database (a log-store is started on it),
    /// beside raw single-row synced commits on the same server.
    #[arg(long, value_parser = fedsx_pg::parse_store_url, conflicts_with = "target")]
    store: Option<String>,
    /// Start a throwaway PostgreSQL server (fsync on, under --dir) and measure on it, as
    /// with --store.
    #[arg(long, conflicts_with_all = ["store", "target"])]
    pg_throwaway: bool,
    /// With --pg-throwaway: add a streaming standby and make it synchronous.
    #[arg(long, requires = "pg_throwaway")]
    pg_sync_standby: bool,
    /// Where the temp data dirs go; put it on the disk you want measured.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Only this scenario, as STREAMS:CONCURRENCY (e.g. 1000:64); repeatable.
    #[arg(long, value_parser = parse_scenario)]
    scenario: Vec<(usize, usize)>,
    /// On PostgreSQL, afterwards: this many more rounds of each concurrency-64 scenario,
    /// each right before raw 64-client commits on the same server, and the median of the
    /// rounds' ratios (a shared machine's load drifts between measurements minutes apart).
    #[arg(long, default_value_t = 0)]
    rounds: usize,
}

fn parse_scenario(text: &str) -> Result<(usize, usize), String> {
    let (streams, concurrency) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected STREAMS:CONCURRENCY, e.g. 1000:64"))?;
    let number = |part: &str| match part.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?}: {part:?} is not a positive number")),
    };
    Ok((number(streams)?, number(concurrency)?))
}

/// (streams, concurrency) of each measured scenario.
const SCENARIOS: [(usize, usize); 5] = [(1, 1), (1, 64), (10, 64), (1000, 1), (1000, 64)];

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
    let (store, _servers) = super::throwaway_postgres(args.pg_throwaway, args.pg_sync_standby).await?;
    let store = store.or(args.store.clone());

    let mut engines: Vec<(&str, String, Option<super::KillOnDrop>)> = Vec::new();
    match &args.target {
        Some(target) => engines.push(("running", target.clone(), None)),
        None => {
            let data = scratch.path().join("log-store");
            let (url, child) =
                super::spawn_service(&["log-store", "--listen", "127.0.0.1:0", "--data-dir", path(&data)?])?;
            engines.push(("rocksdb", url, Some(child)));
        }
    }
    if let Some(store) = &store {
        let (url, child) = super::spawn_service(&[
            "log-store",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
            "--store-pool-size",
            "64",
        ])?;
        engines.push(("postgres", url, Some(child)));
    }

    // A tag per run keeps streams and ids apart from earlier runs on the same database.
    let tag = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut results = Vec::new();
    let mut pg_connections = Vec::new();
    for (engine, target, _) in &engines {
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            connections.push(
                LogStoreClient::connect(target.clone())
                    .await
                    .with_context(|| format!("connecting to {target}"))?,
            );
        }
        println!("\n{engine} log-store: synced appends/s through gRPC ({target}), {PAYLOAD}-byte entries:");
        let scenarios = if args.scenario.is_empty() {
            SCENARIOS.to_vec()
        } else {
            args.scenario.clone()
        };
        for (run, (streams, concurrency)) in scenarios.into_iter().enumerate() {
            let prefix = format!("{tag}-{engine}-{run}");
            let rate = grpc_appends(&connections, &prefix, streams, concurrency, duration).await?;
            println!("  {streams:>5} stream(s), concurrency {concurrency:>2}: {rate:>9.0}/s");
            results.push((*engine, streams, concurrency, rate));
        }
        if *engine == "postgres" {
            pg_connections = connections;
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

    let raw_pg_64 = match &store {
        Some(store) => {
            println!("\nraw PostgreSQL on the same server: single-row INSERT transactions, committed (synced):");
            let one = raw_commits(store, 1, duration).await?;
            println!("  1 client:                             {one:>9.0}/s");
            let many = raw_commits(store, 64, duration).await?;
            println!("  64 clients:                           {many:>9.0}/s");
            Some(many)
        }
        None => None,
    };

    println!("\ntargets: rocksdb at concurrency 64 >= 50% of raw 64-writer synced puts; postgres at");
    println!("concurrency 64 >= 50% (1,000 streams) and >= 30% (10 streams) of raw 64-client commits:");
    for (engine, streams, concurrency, rate) in results.into_iter().filter(|r| r.2 == 64) {
        let (raw, what) = match engine {
            "postgres" => (raw_pg_64.unwrap_or(f64::NAN), "raw 64-client commits"),
            _ => (raw_64, "raw 64-writer puts"),
        };
        println!(
            "  {engine:>8} {streams:>5} stream(s), concurrency {concurrency}: {:>4.0}% of {what}",
            100.0 * rate / raw
        );
    }
    if let Some(store) = store.as_deref().filter(|_| args.rounds > 0) {
        let scenarios = if args.scenario.is_empty() {
            SCENARIOS.to_vec()
        } else {
            args.scenario.clone()
        };
        for (streams, concurrency) in scenarios.into_iter().filter(|s| s.1 == 64) {
            let prefix = format!("{tag}-rounds-{streams}");
            paired_rounds(
                &pg_connections,
                store,
                &prefix,
                streams,
                concurrency,
                args.rounds,
                duration,
            )
            .await?;
        }
    }
    drop(engines);
    Ok(())
}

/// `rounds` times: the PostgreSQL log-store on `streams` streams at `concurrency`, then raw
/// 64-client commits right after; prints each round's ratio and their median.
async fn paired_rounds(
    connections: &[LogStoreClient<Channel>],
    store: &str,
    prefix: &str,
    streams: usize,
    concurrency: usize,
    rounds: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    println!(
        "
postgres {streams} stream(s), concurrency {concurrency}, each round beside raw 64-client commits:"
    );
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let ours = grpc_appends(
            connections,
            &format!("{prefix}-{round}"),
            streams,
            concurrency,
            duration,
        )
        .await?;
        let raw = raw_commits(store, 64, duration).await?;
        let ratio = 100.0 * ours / raw;
        println!(
            "  round {}: {ours:>7.0}/s against raw {raw:>7.0}/s: {ratio:>4.0}%",
            round + 1
        );
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() % 2 {
        1 => ratios[ratios.len() / 2],
        _ => (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0,
    };
    println!(
        "  median of {rounds} rounds: {median:.0}% of raw 64-client commits (lowest {:.0}%, highest {:.0}%)",
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
}

/// `clients` connections each committing single-row INSERTs for `duration`: commits/s.
async fn raw_commits(url: &str, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    use fedsx_pg::tokio_postgres::{NoTls, connect};
    let (setup, connection) = connect(url, NoTls).await?;
    tokio::spawn(connection);
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS fedsx_bench_raw (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, connection) = connect(url, NoTls).await?;
        tokio::spawn(connection);
        let (done, stop) = (done.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO fedsx_bench_raw (payload) VALUES ($1)")
                .await?;
            let payload = vec![7u8; PAYLOAD];
            while !stop.load(Ordering::Relaxed) {
                client.execute(&insert, &[&payload]).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    done.store(0, Ordering::Relaxed);
    let rate = rate_over(started, duration, &done, &stop, workers).await?;
    setup.batch_execute("DROP TABLE fedsx_bench_raw").await?;
    Ok(rate)
}

/// Lets `workers` count into `done` for `duration`, stops them, and answers what they
/// counted per second since `started`.
async fn rate_over(
    started: Instant,
    duration: Duration,
    done: &AtomicU64,
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<f64> {
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for worker in workers {
        worker.await??;
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

pub async fn grpc_appends(
    connections: &[LogStoreClient<Channel>],
    run: &str,
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
        let (done, stop, payload, run) = (done.clone(), stop.clone(), payload.clone(), run.to_owned());
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
    rate_over(started, duration, &done, &stop, workers).await
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
