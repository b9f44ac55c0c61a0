use super::*;
use crate::keys::ActorKey;
use std::sync::LazyLock;

static KEY: LazyLock<ActorKey> = LazyLock::new(|| ActorKey::generate().unwrap());
const URL: &str = "https://b.example/actors/bob/inbox";
const KEY_ID: &str = "https://a.example/users/alice#main-key";

fn rsa() -> VerifyKey {
    VerifyKey::Rsa(PeerKey::from_pem(&KEY.public_pem()).unwrap())
}

fn signed(body: &[u8], at: SystemTime) -> Vec<(String, String)> {
    sign(&KEY, KEY_ID, URL, "application/activity+json", body, at)
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect()
}

fn request<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> Request<'a> {
    Request {
        method: "POST",
        target_uri: URL,
        headers,
        body,
    }
}

#[test]
fn a_cavage_signature_made_here_verifies_here() {
    let now = SystemTime::now();
    let headers = signed(b"{\"a\":1}", now);
    let claim = claim(&request(&headers, b"{\"a\":1}"), now).unwrap();
    assert_eq!(claim.key_id, KEY_ID);
    assert_eq!(claim.scheme, Scheme::Cavage);
    claim.verify(&rsa()).unwrap();
}

#[test]
fn a_changed_body_a_stale_date_or_another_key_is_refused() {
    let now = SystemTime::now();
    let headers = signed(b"{\"a\":1}", now);
    assert_eq!(
        claim(&request(&headers, b"{\"a\":2}"), now).unwrap_err(),
        SignatureError::WrongDigest
    );
    let later = now + Duration::from_secs(2 * 3600);
    assert!(matches!(
        claim(&request(&headers, b"{\"a\":1}"), later).unwrap_err(),
        SignatureError::StaleDate(_)
    ));
    let other = ActorKey::generate().unwrap();
    let other = VerifyKey::Rsa(PeerKey::from_pem(&other.public_pem()).unwrap());
    let claim = claim(&request(&headers, b"{\"a\":1}"), now).unwrap();
    assert_eq!(
        claim.verify(&other).unwrap_err(),
        SignatureError::BadSignature(KEY_ID.into())
    );
    let ed = VerifyKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key());
    assert!(
        matches!(
            claim.verify(&ed),
            Err(SignatureError::WrongKeyType { have: "ed25519", .. })
        ),
        "an rsa-sha256 signature is not checked with an ed25519 key"
    );
}

#[test]
fn a_signature_that_leaves_out_what_it_must_cover_is_refused() {
    let now = SystemTime::now();
    let mut headers = signed(b"{}", now);
    let signature = headers.iter_mut().find(|(n, _)| n == "signature").unwrap();
    signature.1 = signature.1.replace(" digest", "");
    assert_eq!(
        claim(&request(&headers, b"{}"), now).unwrap_err(),
        SignatureError::NotCovered("digest")
    );
    assert_eq!(claim(&request(&[], b"{}"), now).unwrap_err(), SignatureError::Unsigned);
    let headers = vec![(
        "signature".to_owned(),
        "keyId=\"k\",algorithm=\"dsa\",signature=\"AA==\"".to_owned(),
    )];
    assert_eq!(
        claim(&request(&headers, b"{}"), now).unwrap_err(),
        SignatureError::UnsupportedAlgorithm("dsa".into())
    );
}

/// Signs the request as RFC 9421 does (the way Fedify sends it) with `sign_base`.
fn rfc9421_headers(
    body: &[u8],
    created: u64,
    alg: &str,
    sign_base: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<(String, String)> {
    sign_rfc9421(sign_base, alg, KEY_ID, URL, "application/activity+json", body, created)
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect()
}

#[test]
fn rfc9421_signatures_verify_with_rsa_and_ed25519_keys() {
    let now = SystemTime::now();
    let created = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let headers = rfc9421_headers(b"{}", created, "rsa-v1_5-sha256", |base| KEY.sign(base));
    let found = claim(&request(&headers, b"{}"), now).unwrap();
    assert_eq!((found.key_id.as_str(), found.scheme), (KEY_ID, Scheme::Rfc9421));
    found.verify(&rsa()).unwrap();

    let ed = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let headers = rfc9421_headers(b"{}", created, "ed25519", |base| {
        ed25519_dalek::Signer::sign(&ed, base).to_bytes().to_vec()
    });
    let found = claim(&request(&headers, b"{}"), now).unwrap();
    found.verify(&VerifyKey::Ed25519(ed.verifying_key())).unwrap();
    assert!(matches!(found.verify(&rsa()), Err(SignatureError::WrongKeyType { .. })));

    let stale = rfc9421_headers(b"{}", created - 7200, "ed25519", |_| vec![0; 64]);
    assert!(matches!(
        claim(&request(&stale, b"{}"), now),
        Err(SignatureError::StaleDate(_))
    ));
    assert_eq!(
        claim(&request(&headers, b"{ }"), now).unwrap_err(),
        SignatureError::WrongDigest
    );
}
