//! Actor keys. Every actor's ed25519 key is derived from the node secret:
//! `seed = SHA-256("fed-sx/actor-key/v1" ‖ 0x00 ‖ secret ‖ actor name)`. So the kernel stores
//! no per-actor ed25519 key anywhere — not on disk, not in the logs — and a restart with the
//! same secret yields the same keys. (RSA keys for ActivityPub cannot be derived; they are
//! journaled sealed under the same secret: `fedsx_activitypub::keys`.)

use ed25519_dalek::SigningKey;
pub use fedsx_runtime::secret::NodeSecret;
use sha2::{Digest, Sha256};

const DERIVATION_PREFIX: &[u8] = b"fed-sx/actor-key/v1\0";

/// The signing key of the local actor `name`.
pub fn actor_key(secret: &NodeSecret, name: &str) -> SigningKey {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(DERIVATION_PREFIX)
        .chain_update(secret.as_bytes())
        .chain_update(name.as_bytes())
        .finalize()
        .into();
    SigningKey::from_bytes(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_name_and_distinct_between_names() {
        let secret = NodeSecret::from_bytes([9; 32]);
        assert_eq!(
            actor_key(&secret, "alice").to_bytes(),
            actor_key(&secret, "alice").to_bytes()
        );
        assert_ne!(
            actor_key(&secret, "alice").to_bytes(),
            actor_key(&secret, "bob").to_bytes()
        );
        let other = NodeSecret::from_bytes([8; 32]);
        assert_ne!(
            actor_key(&secret, "alice").to_bytes(),
            actor_key(&other, "alice").to_bytes()
        );
    }
}
