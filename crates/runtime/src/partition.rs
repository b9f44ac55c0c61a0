//! Which partition a node's local actor belongs to: the kernel spreads actors over its
//! partitions by this, and a caller that knows which replica serves which partition
//! (`Kernel.ListReplicas`) sends an actor's calls straight to it.

use sha2::{Digest, Sha256};

/// The partition of `partitions` that local actor `name` belongs to: a stable hash of the
/// name (the first 8 bytes of its SHA-256, big-endian, modulo `partitions`).
pub fn partition_of(name: &str, partitions: u32) -> u32 {
    let hash = Sha256::digest(name.as_bytes());
    let head = u64::from_be_bytes(hash[..8].try_into().expect("eight bytes"));
    (head % u64::from(partitions.max(1))) as u32
}
