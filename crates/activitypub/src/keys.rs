//! Actor RSA keys. ActivityPub servers (Mastodon first) verify nothing but RSA, so every
//! actor has an RSA-2048 key beside its ed25519 one. Unlike the ed25519 key it cannot be
//! derived from the node secret (key generation is not a stable function of its seed across
//! library versions), so it is generated once, when the actor is created, and kept sealed:
//! encrypted and authenticated (XChaCha20-Poly1305) under a key derived from the node
//! secret, bound to the actor's name. A sealed key is as safe as the node secret, like the
//! ed25519 keys: whoever holds the journal but not the secret learns nothing.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};

/// Bits of the actor keys this node makes.
pub const KEY_BITS: usize = 2048;
/// Largest RSA modulus accepted from a peer, in bits (bounds the cost of a verification).
pub const MAX_PEER_KEY_BITS: usize = 8192;

const SEAL_PREFIX: &[u8] = b"fed-sx/actor-rsa-seal/v1\0";
const SEAL_VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("sealed key does not open with this node secret (another node's, or damaged)")]
    Unsealable,
    #[error("not an RSA private key: {0}")]
    BadPrivateKey(String),
    #[error("not an RSA public key in PEM: {0}")]
    BadPublicKey(String),
    #[error("no randomness: {0}")]
    NoRandomness(String),
}

/// A local actor's RSA key.
#[derive(Clone)]
pub struct ActorKey(PrivateKey);

impl std::fmt::Debug for ActorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ActorKey(..)")
    }
}

impl ActorKey {
    /// A new random key of [`KEY_BITS`] (tens to hundreds of milliseconds: run it off the
    /// async threads).
    pub fn generate() -> Result<ActorKey, KeyError> {
        let key =
            PrivateKey::new(&mut getrandom04::SysRng, KEY_BITS).map_err(|e| KeyError::NoRandomness(e.to_string()))?;
        Ok(ActorKey(key))
    }

    /// The public half as a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), as
    /// `publicKeyPem` carries it.
    pub fn public_pem(&self) -> String {
        self.0
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("an RSA public key encodes")
    }

    /// A PKCS#1 v1.5 SHA-256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0
            .pkcs1v15_sign::<Sha256>(message)
            .expect("signing with a valid RSA key")
    }

    /// The key sealed for `actor` under `secret` (the node secret).
    pub fn seal(&self, secret: &[u8; 32], actor: &str) -> Result<Vec<u8>, KeyError> {
        let der = self
            .0
            .to_pkcs8_der()
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom04::fill(&mut nonce).map_err(|e| KeyError::NoRandomness(e.to_string()))?;
        let cipher = cipher(secret);
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: der.as_bytes(),
                    aad: actor.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Unsealable)?;
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`ActorKey::seal`] made for `actor` under `secret`.
    pub fn unseal(sealed: &[u8], secret: &[u8; 32], actor: &str) -> Result<ActorKey, KeyError> {
        let [SEAL_VERSION, rest @ ..] = sealed else {
            return Err(KeyError::Unsealable);
        };
        if rest.len() <= NONCE_BYTES {
            return Err(KeyError::Unsealable);
        }
        let (nonce, body) = rest.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("split at the nonce size");
        let der = cipher(secret)
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: body,
                    aad: actor.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Unsealable)?;
        let key = PrivateKey::from_pkcs8_der(&der).map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Ok(ActorKey(key))
    }
}

fn cipher(secret: &[u8; 32]) -> XChaCha20Poly1305 {
    let key: [u8; 32] = Sha256::new()
        .chain_update(SEAL_PREFIX)
        .chain_update(secret)
        .finalize()
        .into();
    XChaCha20Poly1305::new(&key.into())
}

/// A peer's RSA public key, from its `publicKeyPem` (SubjectPublicKeyInfo, or PKCS#1 as a
/// few servers still publish).
#[derive(Debug, Clone)]
pub struct PeerKey(PublicKey);

impl PeerKey {
    pub fn from_pem(pem: &str) -> Result<PeerKey, KeyError> {
        let pem = pem.trim();
        let key = match PublicKey::from_public_key_pem(pem) {
            Ok(key) => key,
            Err(spki) => <PublicKey as rsa::pkcs1::DecodeRsaPublicKey>::from_pkcs1_pem(pem)
                .map_err(|_| KeyError::BadPublicKey(spki.to_string()))?,
        };
        let bits = rsa::traits::PublicKeyParts::size(&key) * 8;
        if bits > MAX_PEER_KEY_BITS {
            return Err(KeyError::BadPublicKey(format!(
                "{bits}-bit modulus, over {MAX_PEER_KEY_BITS}"
            )));
        }
        Ok(PeerKey(key))
    }

    /// Whether `signature` is a PKCS#1 v1.5 SHA-256 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.pkcs1v15_verify::<Sha256>(message, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    pub static KEY: LazyLock<ActorKey> = LazyLock::new(|| ActorKey::generate().unwrap());

    #[test]
    fn a_sealed_key_opens_only_for_its_actor_under_its_secret() {
        let sealed = KEY.seal(&[7; 32], "alice").unwrap();
        let opened = ActorKey::unseal(&sealed, &[7; 32], "alice").unwrap();
        assert_eq!(opened.public_pem(), KEY.public_pem());
        assert_eq!(
            ActorKey::unseal(&sealed, &[8; 32], "alice").unwrap_err(),
            KeyError::Unsealable
        );
        assert_eq!(
            ActorKey::unseal(&sealed, &[7; 32], "bob").unwrap_err(),
            KeyError::Unsealable
        );
        let mut damaged = sealed.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(
            ActorKey::unseal(&damaged, &[7; 32], "alice").unwrap_err(),
            KeyError::Unsealable
        );
        assert_eq!(
            ActorKey::unseal(&[], &[7; 32], "alice").unwrap_err(),
            KeyError::Unsealable
        );
    }

    #[test]
    fn a_signature_verifies_with_the_published_pem_and_only_for_its_message() {
        let peer = PeerKey::from_pem(&KEY.public_pem()).unwrap();
        assert!(KEY.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        let signature = KEY.sign(b"hello");
        assert!(peer.verifies(b"hello", &signature));
        assert!(!peer.verifies(b"hellO", &signature));
    }

    #[test]
    fn garbage_is_no_public_key() {
        assert!(matches!(PeerKey::from_pem("nope"), Err(KeyError::BadPublicKey(_))));
    }
}
