//! The node secret: 32 random bytes in one file (a Kubernetes Secret in a cluster), created
//! on the kernel's first start. The kernel derives every actor's ed25519 key from it and
//! seals the actors' RSA keys under it; delivery opens those to sign ActivityPub requests.

use anyhow::{Context, bail};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The node secret keys are derived from and sealed under.
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

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads the secret from `path` (64 hex digits).
    pub fn load(path: &Path) -> anyhow::Result<NodeSecret> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut secret = [0u8; 32];
        if hex::decode_to_slice(text.trim(), &mut secret).is_err() {
            bail!("{}: not 64 hex digits", path.display());
        }
        Ok(NodeSecret(secret))
    }

    /// Reads the secret from `path`, or creates the file (mode 0600) with a random secret
    /// when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<NodeSecret> {
        if path.exists() {
            return NodeSecret::load(path);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_file_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernel/node-secret");
        let first = NodeSecret::load_or_create(&path).unwrap();
        let again = NodeSecret::load_or_create(&path).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        assert_eq!(NodeSecret::load(&path).unwrap().to_bytes(), first.to_bytes());
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
