//! Actor keys. Every actor's ed25519 key is derived from one 32-byte node secret:
//! `seed = SHA-256("fed-sx/actor-key/v1" ‖ 0x00 ‖ secret ‖ actor name)`. So the kernel stores
//! no per-actor private key anywhere — not on disk, not in the logs — and a restart with the
//! same secret yields the same keys. The secret lives in one file (a Kubernetes Secret in a
//! cluster), created with a fresh random value on first start.

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const DERIVATION_PREFIX: &[u8] = b"fed-sx/actor-key/v1\0";

/// The node secret actor keys are derived from.
pub struct NodeSecret([u8; 32]);

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

impl NodeSecret {
    pub fn from_bytes(bytes: [u8; 32]) -> NodeSecret {
        NodeSecret(bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Reads the secret from `path`, or creates the file (mode 0600) with a random secret
    /// when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<NodeSecret> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut secret = [0u8; 32];
                if hex::decode_to_slice(text.trim(), &mut secret).is_err() {
                    bail!("{}: not 64 hex digits", path.display());
                }
                Ok(NodeSecret(secret))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                writeln!(file, "{}", hex::encode(secret))?;
                file.sync_all()?;
                tracing::info!(path = %path.display(), "created a new node secret");
                Ok(NodeSecret(secret))
            }
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The signing key of the local actor `name`.
    pub fn actor_key(&self, name: &str) -> SigningKey {
        let seed: [u8; 32] = Sha256::new()
            .chain_update(DERIVATION_PREFIX)
            .chain_update(self.0)
            .chain_update(name.as_bytes())
            .finalize()
            .into();
        SigningKey::from_bytes(&seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_name_and_distinct_between_names() {
        let secret = NodeSecret::from_bytes([9; 32]);
        assert_eq!(
            secret.actor_key("alice").to_bytes(),
            secret.actor_key("alice").to_bytes()
        );
        assert_ne!(secret.actor_key("alice").to_bytes(), secret.actor_key("bob").to_bytes());
        let other = NodeSecret::from_bytes([8; 32]);
        assert_ne!(
            secret.actor_key("alice").to_bytes(),
            other.actor_key("alice").to_bytes()
        );
    }

    #[test]
    fn the_secret_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel/node-secret");
        let first = NodeSecret::load_or_create(&path).unwrap();
        let again = NodeSecret::load_or_create(&path).unwrap();
        assert_eq!(first.actor_key("a").to_bytes(), again.actor_key("a").to_bytes());
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_secret_file_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-secret");
        std::fs::write(&path, "not hex").unwrap();
        let err = NodeSecret::load_or_create(&path).unwrap_err();
        assert!(err.to_string().ends_with("not 64 hex digits"), "{err}");
    }
}
