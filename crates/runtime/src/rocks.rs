//! Opening an embedded RocksDB store so that damaged data is refused, never served.
//!
//! RocksDB's default recovery replays the write-ahead log up to the first damaged record
//! and starts with what came before it: a log-store would then hand out again seqs it had
//! acknowledged. Here any inconsistency fails the open instead — the WAL is replayed with
//! absolute consistency, and every block of every table is read back with its checksum
//! verified before the store serves. The way out for the operator is in the README
//! ("Damaged data").

use rocksdb::{ColumnFamilyDescriptor, DB, DBRecoveryMode, ErrorKind, IteratorMode, Options, ReadOptions};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RocksOpenError {
    #[error(
        "the {what} data in {dir} is damaged: {detail}. Refusing to start: serving it could \
         lose or hand out again what was acknowledged. Restore {dir} from a backup or a \
         replica (README, \"Damaged data\")"
    )]
    Damaged { what: String, dir: String, detail: String },
    #[error("cannot open the {what} database in {dir}: {detail}")]
    Other { what: String, dir: String, detail: String },
}

/// Opens the database in `dir` with `cfs` (`what` names it in errors, e.g. "log-store"),
/// refusing a damaged write-ahead log or table. Reads every table once: start time grows
/// with the data held. Blocks.
pub fn open_verified(
    mut options: Options,
    dir: &Path,
    cfs: Vec<ColumnFamilyDescriptor>,
    what: &str,
) -> Result<DB, RocksOpenError> {
    options.set_paranoid_checks(true);
    options.set_wal_recovery_mode(DBRecoveryMode::AbsoluteConsistency);
    let names: Vec<String> = cfs.iter().map(|cf| cf.name().to_owned()).collect();
    let failed = |err: rocksdb::Error| classify(err, what, dir);
    let db = DB::open_cf_descriptors(&options, dir, cfs).map_err(failed)?;
    for name in &names {
        let cf = db.cf_handle(name).expect("column family just opened");
        let mut read = ReadOptions::default();
        read.set_verify_checksums(true);
        read.fill_cache(false);
        for item in db.iterator_cf_opt(cf, read, IteratorMode::Start) {
            item.map_err(failed)?;
        }
    }
    Ok(db)
}

fn classify(err: rocksdb::Error, what: &str, dir: &Path) -> RocksOpenError {
    let detail = err.clone().into_string();
    let damaged = err.kind() == ErrorKind::Corruption;
    let (what, dir_name) = (what.to_owned(), dir.display().to_string());
    if !damaged {
        return RocksOpenError::Other {
            what,
            dir: dir_name,
            detail,
        };
    }
    // RocksDB names the table in a block's checksum error, but not the write-ahead log
    // whose replay failed; its info log in `dir` does.
    let detail = match damaged_file_in_info_log(dir) {
        Some(file) if !detail.contains(&file) => format!("{detail} (in {file})"),
        _ => detail,
    };
    RocksOpenError::Damaged {
        what,
        dir: dir_name,
        detail,
    }
}

/// The data file named by the last corruption RocksDB wrote to its info log (`LOG`).
fn damaged_file_in_info_log(dir: &Path) -> Option<String> {
    let log = std::fs::read_to_string(dir.join("LOG")).ok()?;
    log.lines()
        .rev()
        .filter(|line| line.contains("Corruption"))
        .find_map(|line| {
            line.split_whitespace()
                .map(|word| word.trim_end_matches([':', ',', ';']))
                .find(|word| {
                    let name = word.rsplit('/').next().unwrap_or(word);
                    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
                    matches!(ext, "log" | "sst" | "blob")
                        && !stem.is_empty()
                        && stem.bytes().all(|b| b.is_ascii_digit())
                })
                .map(str::to_owned)
        })
}
