//! Moving a node's streams from RocksDB to PostgreSQL (`fedsx log-store migrate`): every
//! stream is copied page by page with the same seqs (each page is appended with the
//! expected tip it must follow), then every tip is compared. Safe to run again after an
//! interruption: entries already copied are recognised by id and skipped; a target that
//! holds something else stops the copy with the stream and seq where they differ.

use crate::error::StoreError;
use crate::storage::{LogStorage, Page};
use crate::stream::{NewEntry, StreamId, limits};
use crate::{PgStore, RocksStore};

/// Streams listed per step of the copy.
const STREAM_PAGE: usize = 256;

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateSummary {
    pub streams: u64,
    /// Entries written to the target now.
    pub copied: u64,
    /// Entries the target already held (an earlier, interrupted run).
    pub already_there: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "{stream}: the target holds other entries (its tip is {target_tip}, the source's entry {seq} does not follow it); migrate into an empty database"
    )]
    Diverged {
        stream: StreamId,
        seq: u64,
        target_tip: u64,
    },
    #[error("{stream}: after the copy the target's tip is {target} but the source's is {source_tip}")]
    TipDiffers {
        stream: StreamId,
        source_tip: u64,
        target: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every stream of `from` into `to`; `progress` is told each finished stream.
pub async fn copy_streams(
    from: &RocksStore,
    to: &PgStore,
    mut progress: impl FnMut(&StreamId, u64),
) -> Result<MigrateSummary, MigrateError> {
    let mut summary = MigrateSummary::default();
    let mut cursor: Option<StreamId> = None;
    loop {
        let streams = from.streams_after(cursor.as_ref(), STREAM_PAGE)?;
        let Some((last, _)) = streams.last() else {
            return Ok(summary);
        };
        cursor = Some(last.clone());
        for (stream, source_tip) in streams {
            copy_stream(from, to, &stream, &mut summary).await?;
            let target = to.tip(stream.clone()).await?;
            if target != source_tip {
                return Err(MigrateError::TipDiffers {
                    stream,
                    source_tip,
                    target,
                });
            }
            summary.streams += 1;
            progress(&stream, source_tip);
        }
    }
}

async fn copy_stream(
    from: &RocksStore,
    to: &PgStore,
    stream: &StreamId,
    summary: &mut MigrateSummary,
) -> Result<(), MigrateError> {
    let mut after = 0;
    loop {
        let Page { entries, .. } = from.read(stream.clone(), after, limits::MAX_READ_LIMIT).await?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let expected = first.seq - 1;
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        summary.bytes += entries.iter().map(|e| (e.id.len() + e.data.len()) as u64).sum::<u64>();
        let batch: Vec<NewEntry> = entries
            .into_iter()
            .map(|e| NewEntry { id: e.id, data: e.data })
            .collect();
        let outcome = match to.append(stream.clone(), batch, Some(expected)).await {
            Ok(outcome) => outcome,
            Err(StoreError::TipMismatch { tip, .. }) => {
                return Err(MigrateError::Diverged {
                    stream: stream.clone(),
                    seq: seqs[0],
                    target_tip: tip,
                });
            }
            Err(err) => return Err(err.into()),
        };
        for (appended, seq) in outcome.entries.iter().zip(&seqs) {
            if appended.seq != *seq {
                return Err(MigrateError::Diverged {
                    stream: stream.clone(),
                    seq: *seq,
                    target_tip: outcome.tip,
                });
            }
            if appended.appended {
                summary.copied += 1;
            } else {
                summary.already_there += 1;
            }
        }
        after = *seqs.last().expect("a page with entries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{Engine, Postgres, Rocks};
    use crate::stream::Kind;
    use bytes::Bytes;

    fn entries(prefix: &str, n: usize) -> Vec<NewEntry> {
        (0..n)
            .map(|i| NewEntry {
                id: Bytes::from(format!("{prefix}-{i}")),
                data: Bytes::from(format!("data {prefix} {i}")),
            })
            .collect()
    }

    async fn everything<S: LogStorage>(store: &S, stream: &StreamId) -> Vec<(u64, Bytes, Bytes)> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map_or(0, |(seq, _, _)| *seq);
            let page = store.read(stream.clone(), after, 0).await.unwrap();
            if page.entries.is_empty() {
                return out;
            }
            out.extend(page.entries.into_iter().map(|e| (e.seq, e.id, e.data)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rocksdb_store_moves_to_postgres_with_the_same_seqs_and_a_rerun_copies_nothing() {
        let rocks = Rocks::new();
        let source = rocks.open("source").await;
        let streams = [
            StreamId::new("alice", Kind::Outbox).unwrap(),
            StreamId::new("bob", Kind::Inbox).unwrap(),
            StreamId::new("~flows", Kind::Flow).unwrap(),
        ];
        for batch in 0..3 {
            source
                .append(streams[0].clone(), entries(&format!("a{batch}"), 500), None)
                .await
                .unwrap();
        }
        source.append(streams[1].clone(), entries("b", 3), None).await.unwrap();
        source.append(streams[2].clone(), entries("f", 2), None).await.unwrap();

        let pg = Postgres(fedsx_pg::testing::CaseDatabases::new("migrate"));
        let target = pg.open("target").await;
        let mut seen = Vec::new();
        let summary = copy_streams(&source, &target, |s, tip| seen.push((s.clone(), tip)))
            .await
            .unwrap();
        assert_eq!((summary.streams, summary.copied, summary.already_there), (3, 1505, 0));
        assert_eq!(seen.len(), 3);
        for stream in &streams {
            assert_eq!(
                everything(&target, stream).await,
                everything(&source, stream).await,
                "{stream}"
            );
        }
        let again = copy_streams(&source, &target, |_, _| {}).await.unwrap();
        assert_eq!((again.copied, again.already_there), (0, 1505), "a rerun writes nothing");

        let other = pg.open("diverged").await;
        other
            .append(streams[1].clone(), entries("else", 1), None)
            .await
            .unwrap();
        let err = copy_streams(&source, &other, |_, _| {}).await.unwrap_err();
        assert!(
            matches!(&err, MigrateError::Diverged { stream, seq: 1, .. } if *stream == streams[1]),
            "{err}"
        );
    }
}
