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

/// Mastodon's own fixtures (spec/requests/signature_verification_spec.rb): its test key, and
/// requests it signed at 2023-12-20T10:00:00Z for www.example.com.
mod mastodon {
    use super::*;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};

    const PRIVATE_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAqIAYvNFGbZ5g4iiK6feSdXD4bDStFM58A7tHycYXaYtzZQpI
eHXAmaXuZzXIwtrP4N0gIk8JNwZvXj2UPS+S07t0V9wNK94he01LV5EMz/GN4eNn
FmDL64HIEuKLvV8TvgjbUPRD6Y5X0UpKi2ZIFLSb96Q5w0Z/k7ntpVKV52y8kz5F
jr/O/0JuHryZe0yItzJh8kzFfeMf0EXzfSnaKvT7P9jhgC6uTre+jXyvVZjiHDrn
qvvucdI3I7DRfXo1OqARBrLjy+TdseUAjNYJ+OuPRI1URIWQI01DCHqcohVu9+Ar
+BiCjFp3ua+XMuJvrvbD61d1Fvig/9nbBRR+8QIDAQABAoIBAAgySHnFWI6gItR3
fkfiqIm80cHCN3Xk1C6iiVu+3oBOZbHpW9R7vl9e/WOA/9O+LPjiSsQOegtWnVvd
RRjrl7Hj20VDlZKv5Mssm6zOGAxksrcVbqwdj+fUJaNJCL0AyyseH0x/IE9T8rDC
I1GH+3tB3JkhkIN/qjipdX5ab8MswEPu8IC4ViTpdBgWYY/xBcAHPw4xuL0tcwzh
FBlf4DqoEVQo8GdK5GAJ2Ny0S4xbXHUURzx/R4y4CCts7niAiLGqd9jmLU1kUTMk
QcXfQYK6l+unLc7wDYAz7sFEHh04M48VjWwiIZJnlCqmQbLda7uhhu8zkF1DqZTu
ulWDGQECgYEA0TIAc8BQBVab979DHEEmMdgqBwxLY3OIAk0b+r50h7VBGWCDPRsC
STD73fQY3lNet/7/jgSGwwAlAJ5PpMXxXiZAE3bUwPmHzgF7pvIOOLhA8O07tHSO
L2mvQe6NPzjZ+6iAO2U9PkClxcvGvPx2OBvisfHqZLmxC9PIVxzruQECgYEAzjM6
BTUXa6T/qHvLFbN699BXsUOGmHBGaLRapFDBfVvgZrwqYQcZpBBhesLdGTGSqwE7
gWsITPIJ+Ldo+38oGYyVys+w/V67q6ud7hgSDTW3hSvm+GboCjk6gzxlt9hQ0t9X
8vfDOYhEXvVUJNv3mYO60ENqQhILO4bQ0zi+VfECgYBb/nUccfG+pzunU0Cb6Dp3
qOuydcGhVmj1OhuXxLFSDG84Tazo7juvHA9mp7VX76mzmDuhpHPuxN2AzB2SBEoE
cSW0aYld413JRfWukLuYTc6hJHIhBTCRwRQFFnae2s1hUdQySm8INT2xIc+fxBXo
zrp+Ljg5Wz90SAnN5TX0AQKBgDaatDOq0o/r+tPYLHiLtfWoE4Dau+rkWJDjqdk3
lXWn/e3WyHY3Vh/vQpEqxzgju45TXjmwaVtPATr+/usSykCxzP0PMPR3wMT+Rm1F
rIoY/odij+CaB7qlWwxj0x/zRbwB7x1lZSp4HnrzBpxYL+JUUwVRxPLIKndSBTza
GvVRAoGBAIVBcNcRQYF4fvZjDKAb4fdBsEuHmycqtRCsnkGOz6ebbEQznSaZ0tZE
+JuouZaGjyp8uPjNGD5D7mIGbyoZ3KyG4mTXNxDAGBso1hrNDKGBOrGaPhZx8LgO
4VXJ+ybXrATf4jr8ccZYsZdFpOphPzz+j55Mqg5vac5P1XjmsGTb
-----END RSA PRIVATE KEY-----";
    const KEY_ID: &str = "https://remote.domain/users/bob#main-key";
    const DATE: &str = "Wed, 20 Dec 2023 10:00:00 GMT";
    const GET_SIGNATURE: &str = "Z8ilar3J7bOwqZkMp7sL8sRs4B1FT+UorbmvWoE+A5UeoOJ3KBcUmbsh+k3wQwbP5gMNUrra9rEWabpasZGphLsbDxfbsWL3Cf0PllAc7c1c7AFEwnewtExI83/qqgEkfWc2z7UDutXc2NfgAx89Ox8DXU/fA2GG0jILjB6UpFyNugkY9rg6oI31UnvfVi3R7sr3/x8Ea3I9thPvqI2byF6cojknSpDAwYzeKdngX3TAQEGzFHz3SDWwyp3jeMWfwvVVbM38FxhvAnSumw7YwWW4L7M7h4M68isLimoT3yfCn2ucBVL5Dz8koBpYf/40w7QidClAwCafZQFC29yDOg==";
    const POST_SIGNATURE: &str = "gmhMjgMROGElJU3fpehV2acD5kMHeELi8EFP2UPHOdQ54H0r55AxIpji+J3lPe+N2qSb/4H1KXIh6f0lRu8TGSsu12OQmg5hiO8VA9flcA/mh9Lpk+qwlQZIPRqKP9xUEfqD+Z7ti5wPzDKrWAUK/7FIqWgcT/mlqB1R1MGkpMFc/q4CIs2OSNiWgA4K+Kp21oQxzC2kUuYob04gAZ7cyE/FTia5t08uv6lVYFdRsn4XNPn1MsHgFBwBMRG79ng3SyhoG4PrqBEi5q2IdLq3zfre/M6He3wlCpyO2VJNdGVoTIzeZ0Zz8jUscPV3XtWUchpGclLGSaKaq/JyNZeiYQ==";
    const DIGEST: &str = "SHA-256=ZOyIygCyaOW6GjVnihtTFtIS9PNmskdyMlNKiuyjfzw=";

    fn key() -> VerifyKey {
        let private = rsa::PrivateKey::from_pkcs1_pem(PRIVATE_KEY).unwrap();
        let pem = private.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        VerifyKey::Rsa(PeerKey::from_pem(&pem).unwrap())
    }

    fn at() -> SystemTime {
        httpdate::parse_http_date(DATE).unwrap()
    }

    fn headers(covered: &str, signature: &str, date: &str, digest: bool) -> Vec<(String, String)> {
        let mut headers = vec![
            ("host".to_owned(), "www.example.com".to_owned()),
            ("date".to_owned(), date.to_owned()),
            (
                "signature".to_owned(),
                format!("keyId=\"{KEY_ID}\",algorithm=\"rsa-sha256\",headers=\"{covered}\",signature=\"{signature}\""),
            ),
        ];
        if digest {
            headers.push(("digest".to_owned(), DIGEST.to_owned()));
        }
        headers
    }

    fn request<'a>(method: &'a str, uri: &'a str, headers: &'a [(String, String)], body: &'a [u8]) -> Request<'a> {
        Request {
            method,
            target_uri: uri,
            headers,
            body,
        }
    }

    #[test]
    fn mastodons_signed_post_verifies() {
        let headers = headers("host date digest (request-target)", POST_SIGNATURE, DATE, true);
        let post = request(
            "POST",
            "https://www.example.com/activitypub/success",
            &headers,
            b"Hello world",
        );
        let claim = claim(&post, at()).unwrap();
        assert_eq!(claim.key_id, KEY_ID);
        claim.verify(&key()).unwrap();
        let other = request(
            "POST",
            "https://www.example.com/activitypub/success",
            &headers,
            b"Hello world!",
        );
        assert_eq!(super::claim(&other, at()).unwrap_err(), SignatureError::WrongDigest);
    }

    #[test]
    fn mastodons_signed_get_verifies_and_not_on_another_path_or_method() {
        let headers = headers("date host (request-target)", GET_SIGNATURE, DATE, false);
        let get = request("GET", "https://www.example.com/activitypub/success", &headers, b"");
        claim(&get, at()).unwrap().verify(&key()).unwrap();
        let elsewhere = request(
            "GET",
            "https://www.example.com/activitypub/alternative-path",
            &headers,
            b"",
        );
        assert!(matches!(
            claim(&elsewhere, at()).unwrap().verify(&key()),
            Err(SignatureError::BadSignature(_))
        ));
        let post = request("POST", "https://www.example.com/activitypub/success", &headers, b"");
        assert_eq!(claim(&post, at()).unwrap_err(), SignatureError::NotCovered("digest"));
    }

    #[test]
    fn mastodons_old_or_undated_requests_are_refused() {
        let old = headers(
            "date host (request-target)",
            GET_SIGNATURE,
            "Wed, 18 Dec 2023 10:00:00 GMT",
            false,
        );
        let get = request("GET", "https://www.example.com/activitypub/success", &old, b"");
        assert!(matches!(claim(&get, at()), Err(SignatureError::StaleDate(_))));
        let wrong = headers("date host (request-target)", GET_SIGNATURE, "wrong date", false);
        let get = request("GET", "https://www.example.com/activitypub/success", &wrong, b"");
        assert!(matches!(claim(&get, at()), Err(SignatureError::StaleDate(_))));
    }
}
