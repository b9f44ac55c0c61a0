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

/// `count` names `<prefix>0`, `<prefix>1`, … each in a different partition of `partitions`
/// (the first found for each), ordered by partition: local actors that spread a load over
/// every partition, for tests and benchmarks. `count` is at most `partitions`.
pub fn one_name_per_partition(prefix: &str, count: usize, partitions: u32) -> Vec<String> {
    assert!(
        count <= partitions.max(1) as usize,
        "{count} names, {partitions} partitions"
    );
    let mut names: std::collections::BTreeMap<u32, String> = std::collections::BTreeMap::new();
    for n in 0.. {
        if names.len() == count {
            break;
        }
        let name = format!("{prefix}{n}");
        names.entry(partition_of(&name, partitions)).or_insert(name);
    }
    names.into_values().collect()
}
