//! Leases: a named claim one holder has until it lapses, kept by the engine on the engine's
//! clock, so processes sharing the log-store (kernel replicas owning partitions) agree on
//! who holds what without trusting each other's clocks. The rule is here, once; the RocksDB
//! engine applies it under its lock and PostgreSQL in one statement (`postgres/lease.rs`).

use crate::error::StoreError;
use bytes::Bytes;

pub const MAX_NAME_BYTES: usize = 200;
pub const MAX_HOLDER_BYTES: usize = 200;
pub const MAX_DATA_BYTES: usize = 4096;
pub const MIN_TTL_MS: u64 = 100;
pub const MAX_TTL_MS: u64 = 600_000;
/// Most leases one listing answers.
pub const MAX_LISTED: usize = 10_000;

/// A checked request to take or renew a lease.
#[derive(Debug, Clone)]
pub struct Acquire {
    pub name: String,
    pub holder: String,
    pub ttl_ms: u64,
    pub data: Bytes,
}

/// A lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub epoch: u64,
    /// Until it lapses (0: lapsed or released).
    pub remaining_ms: u64,
    pub data: Bytes,
}

/// A lease as an engine keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub holder: String,
    pub epoch: u64,
    /// Lapses at this time (ms since the epoch, the engine's clock); 0 once released.
    pub until_ms: u64,
    pub data: Bytes,
}

fn invalid(reason: String) -> StoreError {
    StoreError::BadLease { reason }
}

pub fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
        return Err(invalid(format!(
            "lease name must be 1 to {MAX_NAME_BYTES} bytes without NUL (got {} bytes)",
            name.len()
        )));
    }
    Ok(())
}

pub fn check_holder(holder: &str) -> Result<(), StoreError> {
    if holder.is_empty() || holder.len() > MAX_HOLDER_BYTES {
        return Err(invalid(format!(
            "lease holder must be 1 to {MAX_HOLDER_BYTES} bytes (got {})",
            holder.len()
        )));
    }
    Ok(())
}

impl Acquire {
    pub fn new(name: String, holder: String, ttl_ms: u64, data: Bytes) -> Result<Acquire, StoreError> {
        check_name(&name)?;
        check_holder(&holder)?;
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(invalid(format!(
                "lease ttl_ms must be {MIN_TTL_MS} to {MAX_TTL_MS} (got {ttl_ms})"
            )));
        }
        if data.len() > MAX_DATA_BYTES {
            return Err(invalid(format!(
                "lease data is {} bytes, over the limit of {MAX_DATA_BYTES}",
                data.len()
            )));
        }
        Ok(Acquire {
            name,
            holder,
            ttl_ms,
            data,
        })
    }

    /// What the lease becomes at `now_ms` when it was `current`: taken or renewed (Some),
    /// or left as it is because someone else holds it (None).
    pub fn apply(&self, current: Option<&Stored>, now_ms: u64) -> Option<Stored> {
        let held_by = current.filter(|c| c.until_ms > now_ms).map(|c| c.holder.as_str());
        let epoch = match (held_by, current) {
            (Some(holder), Some(current)) if holder == self.holder => current.epoch,
            (Some(_), _) => return None,
            (None, current) => current.map_or(0, |c| c.epoch) + 1,
        };
        Some(Stored {
            holder: self.holder.clone(),
            epoch,
            until_ms: now_ms + self.ttl_ms,
            data: self.data.clone(),
        })
    }
}

impl Stored {
    pub fn lease(&self, name: &str, now_ms: u64) -> Lease {
        Lease {
            name: name.to_owned(),
            holder: self.holder.clone(),
            epoch: self.epoch,
            remaining_ms: self.until_ms.saturating_sub(now_ms),
            data: self.data.clone(),
        }
    }

    /// Whether `holder` holds it at `now_ms`.
    pub fn held_by(&self, holder: &str, now_ms: u64) -> bool {
        self.holder == holder && self.until_ms > now_ms
    }

    /// The stored form (RocksDB): epoch, until, holder length, holder, data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.holder.len() + self.data.len());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.until_ms.to_be_bytes());
        out.extend_from_slice(&(self.holder.len() as u32).to_be_bytes());
        out.extend_from_slice(self.holder.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Stored, StoreError> {
        let corrupt = || StoreError::internal("a stored lease is corrupt");
        let u64_at = |at: usize| -> Result<u64, StoreError> {
            Ok(u64::from_be_bytes(
                bytes.get(at..at + 8).ok_or_else(corrupt)?.try_into().expect("8 bytes"),
            ))
        };
        let len = u32::from_be_bytes(bytes.get(16..20).ok_or_else(corrupt)?.try_into().expect("4 bytes")) as usize;
        let holder = bytes.get(20..20 + len).ok_or_else(corrupt)?;
        Ok(Stored {
            epoch: u64_at(0)?,
            until_ms: u64_at(8)?,
            holder: String::from_utf8(holder.to_vec()).map_err(|_| corrupt())?,
            data: Bytes::copy_from_slice(&bytes[20 + len..]),
        })
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    fedsx_runtime::clock::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(holder: &str) -> Acquire {
        Acquire::new("p1".into(), holder.into(), 1000, Bytes::from_static(b"url")).unwrap()
    }

    #[test]
    fn a_lease_passes_on_only_when_free_and_its_epoch_counts_holders() {
        let first = acquire("a").apply(None, 10).unwrap();
        assert_eq!((first.epoch, first.until_ms), (1, 1010));
        assert_eq!(acquire("b").apply(Some(&first), 500), None, "held by a");
        let renewed = acquire("a").apply(Some(&first), 500).unwrap();
        assert_eq!(
            (renewed.epoch, renewed.until_ms),
            (1, 1500),
            "a renewal keeps the epoch"
        );
        let taken = acquire("b").apply(Some(&renewed), 1500).unwrap();
        assert_eq!((taken.holder.as_str(), taken.epoch), ("b", 2), "lapsed at 1500");
        let back = acquire("a").apply(Some(&taken), 2600).unwrap();
        assert_eq!(back.epoch, 3);
        assert_eq!(Stored::decode(&back.encode()).unwrap(), back);
    }

    #[test]
    fn bad_requests_are_refused_with_the_limit() {
        let bad = |name: &str, holder: &str, ttl: u64, data: usize| {
            Acquire::new(name.into(), holder.into(), ttl, Bytes::from(vec![0; data]))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("", "a", 1000, 0).contains("1 to 200 bytes"));
        assert!(bad("a\0b", "a", 1000, 0).contains("without NUL"));
        assert!(bad("p", "", 1000, 0).contains("holder"));
        assert!(bad("p", "a", 99, 0).contains("100 to 600000"));
        assert!(bad("p", "a", 600_001, 0).contains("100 to 600000"));
        assert!(bad("p", "a", 1000, 4097).contains("4096"));
    }
}
