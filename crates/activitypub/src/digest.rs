//! Body digests: `Digest: SHA-256=<base64>` (RFC 3230, what draft-cavage signers cover) and
//! `Content-Digest: sha-256=:<base64>:` (RFC 9530, what RFC 9421 signers cover).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha512};

/// The `Digest` header value of `body`.
pub fn digest_header(body: &[u8]) -> String {
    format!("SHA-256={}", STANDARD.encode(Sha256::digest(body)))
}

/// Whether a `Digest` header value names `body`: some SHA-256 or SHA-512 member matches,
/// and no member of those algorithms disagrees. Members of other algorithms are ignored.
pub fn digest_matches(value: &str, body: &[u8]) -> bool {
    let mut matched = false;
    for member in value.split(',') {
        let Some((alg, encoded)) = member.trim().split_once('=') else {
            return false;
        };
        let expected = match alg.trim().to_ascii_lowercase().as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        if STANDARD.decode(encoded.trim()).ok() != Some(expected) {
            return false;
        }
        matched = true;
    }
    matched
}

/// Whether a `Content-Digest` value (`sha-256=:…:`, a structured dictionary) names `body`,
/// under the same rule as [`digest_matches`].
pub fn content_digest_matches(value: &str, body: &[u8]) -> bool {
    let mut matched = false;
    for member in value.split(',') {
        let Some((alg, encoded)) = member.trim().split_once('=') else {
            return false;
        };
        let expected = match alg.trim() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let Some(encoded) = encoded.trim().strip_prefix(':').and_then(|e| e.strip_suffix(':')) else {
            return false;
        };
        if STANDARD.decode(encoded).ok() != Some(expected) {
            return false;
        }
        matched = true;
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_name_their_body_only() {
        let header = digest_header(b"{}");
        assert_eq!(header, "SHA-256=RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=");
        assert!(digest_matches(&header, b"{}"));
        assert!(digest_matches(&header.replace("SHA-256", "sha-256"), b"{}"));
        assert!(!digest_matches(&header, b"{ }"));
        assert!(!digest_matches("MD5=abc", b"{}"), "no algorithm we check");
        assert!(content_digest_matches(
            "sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:",
            b"{}"
        ));
        assert!(!content_digest_matches(
            "sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:",
            b"[]"
        ));
        assert!(!content_digest_matches("sha-256=RBNvo1WzZ4oRRq0W9", b"{}"));
    }
}
