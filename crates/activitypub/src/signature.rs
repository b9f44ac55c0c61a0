//! HTTP Signatures as the fediverse sends them: draft-cavage-http-signatures-12
//! (`Signature:` header, `rsa-sha256` or `hs2019`, what Mastodon sends) and RFC 9421 HTTP
//! Message Signatures (`Signature-Input:` + `Signature:`, `rsa-v1_5-sha256` or `ed25519`,
//! what Fedify sends first). [`claim`] reads a request's signature, checks what it must cover,
//! its date window and the body digest, and says which key signed; [`Claim::verify`] then
//! checks it against that key once fetched. Outbound requests are signed draft-cavage
//! ([`sign`]), which every server accepts.

use crate::keys::{ActorKey, PeerKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::time::{Duration, SystemTime};

/// How far a signature's date may be from now, either way.
pub const DATE_WINDOW: Duration = Duration::from_secs(3600);

/// A received request as the signature covers it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The URL the sender addressed: `https://host/path?query`.
    pub target_uri: &'a str,
    /// Header (lower-case name, value), in arrival order.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The values of header `name` joined by ", " (how both drafts combine repeats).
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    fn path_and_query(&self) -> &str {
        let after_scheme = self.target_uri.split_once("://").map_or(self.target_uri, |(_, r)| r);
        after_scheme.find('/').map_or("/", |at| &after_scheme[at..])
    }
}

/// Why a request's signature is refused (each answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request is not signed (no Signature header)")]
    Unsigned,
    #[error("unreadable signature header: {0}")]
    Malformed(String),
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("the signature does not cover {0}")]
    NotCovered(&'static str),
    #[error("a covered header is missing: {0}")]
    MissingHeader(String),
    #[error("the signature's date {0} is outside the accepted window of an hour from now")]
    StaleDate(String),
    #[error("the body does not match its digest")]
    WrongDigest,
    #[error("the signature does not verify with key {0}")]
    BadSignature(String),
    #[error("key {key_id} is a {have} key, the signature is {want}")]
    WrongKeyType {
        key_id: String,
        have: &'static str,
        want: &'static str,
    },
}

/// Which draft a request was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Cavage,
    Rfc9421,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    RsaSha256,
    Ed25519,
}

/// A key to check a claim with.
#[derive(Debug, Clone)]
pub enum VerifyKey {
    Rsa(PeerKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A request's signature, read and checked except for the key.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key_id: String,
    pub scheme: Scheme,
    alg: Option<Alg>,
    base: Vec<u8>,
    signature: Vec<u8>,
}

impl Claim {
    /// Checks the signature with `key`, the key [`Claim::key_id`] names.
    pub fn verify(&self, key: &VerifyKey) -> Result<(), SignatureError> {
        let bad = || SignatureError::BadSignature(self.key_id.clone());
        match (key, self.alg) {
            (VerifyKey::Rsa(rsa), None | Some(Alg::RsaSha256)) => {
                rsa.verifies(&self.base, &self.signature).then_some(()).ok_or_else(bad)
            }
            (VerifyKey::Ed25519(ed), None | Some(Alg::Ed25519)) => {
                let signature = ed25519_dalek::Signature::from_slice(&self.signature).map_err(|_| bad())?;
                ed.verify_strict(&self.base, &signature).map_err(|_| bad())
            }
            (VerifyKey::Rsa(_), Some(Alg::Ed25519)) => Err(SignatureError::WrongKeyType {
                key_id: self.key_id.clone(),
                have: "RSA",
                want: "ed25519",
            }),
            (VerifyKey::Ed25519(_), Some(Alg::RsaSha256)) => Err(SignatureError::WrongKeyType {
                key_id: self.key_id.clone(),
                have: "ed25519",
                want: "RSA",
            }),
        }
    }
}

/// Reads the request's signature (RFC 9421 when `Signature-Input` is present, else
/// draft-cavage), and checks that it covers the method and target, the host, a date within
/// [`DATE_WINDOW`] of `now`, and the body's digest, which must match.
pub fn claim(request: &Request<'_>, now: SystemTime) -> Result<Claim, SignatureError> {
    if request.header("signature-input").is_some() {
        rfc9421(request, now)
    } else if let Some(value) = request.header("signature") {
        cavage(request, &value, now)
    } else {
        Err(SignatureError::Unsigned)
    }
}

fn check_date(value: SystemTime, shown: String, now: SystemTime) -> Result<(), SignatureError> {
    let off = match now.duration_since(value) {
        Ok(past) => past,
        Err(future) => future.duration(),
    };
    if off > DATE_WINDOW {
        return Err(SignatureError::StaleDate(shown));
    }
    Ok(())
}

fn check_http_date(request: &Request<'_>, now: SystemTime) -> Result<(), SignatureError> {
    let date = request
        .header("date")
        .ok_or_else(|| SignatureError::MissingHeader("date".into()))?;
    let at = httpdate::parse_http_date(&date).map_err(|_| SignatureError::StaleDate(date.clone()))?;
    check_date(at, date, now)
}

fn decode_signature(encoded: &str) -> Result<Vec<u8>, SignatureError> {
    STANDARD
        .decode(encoded.trim())
        .map_err(|_| SignatureError::Malformed("signature is not base64".into()))
}

/// draft-cavage-http-signatures-12: `keyId="…",algorithm="…",headers="…",signature="…"`.
fn cavage(request: &Request<'_>, value: &str, now: SystemTime) -> Result<Claim, SignatureError> {
    let params = cavage_params(value)?;
    let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let key_id = get("keyId").ok_or_else(|| SignatureError::Malformed("no keyId".into()))?;
    let signature =
        decode_signature(get("signature").ok_or_else(|| SignatureError::Malformed("no signature".into()))?)?;
    let alg = match get("algorithm").map(str::to_ascii_lowercase).as_deref() {
        None | Some("hs2019") => None,
        Some("rsa-sha256") => Some(Alg::RsaSha256),
        Some("ed25519") => Some(Alg::Ed25519),
        Some(other) => return Err(SignatureError::UnsupportedAlgorithm(other.to_owned())),
    };
    let covered: Vec<String> = get("headers")
        .unwrap_or("date")
        .split_ascii_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let covers = |name: &str| covered.iter().any(|c| c == name);
    if !covers("(request-target)") {
        return Err(SignatureError::NotCovered("(request-target)"));
    }
    if !covers("host") {
        return Err(SignatureError::NotCovered("host"));
    }
    if covers("(created)") {
        let created = get("created")
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| SignatureError::Malformed("(created) covered without a created parameter".into()))?;
        check_date(
            SystemTime::UNIX_EPOCH + Duration::from_secs(created),
            created.to_string(),
            now,
        )?;
    } else if covers("date") {
        check_http_date(request, now)?;
    } else {
        return Err(SignatureError::NotCovered("date"));
    }
    check_body_digest(request, covers("digest"), "digest")?;
    let mut base = Vec::new();
    for (i, name) in covered.iter().enumerate() {
        if i > 0 {
            base.push(b'\n');
        }
        let value = match name.as_str() {
            "(request-target)" => format!("{} {}", request.method.to_ascii_lowercase(), request.path_and_query()),
            "(created)" | "(expires)" => get(&name[1..name.len() - 1])
                .ok_or_else(|| SignatureError::Malformed(format!("{name} covered without its parameter")))?
                .to_owned(),
            header => request
                .header(header)
                .ok_or_else(|| SignatureError::MissingHeader(header.to_owned()))?,
        };
        base.extend_from_slice(format!("{name}: {value}").as_bytes());
    }
    Ok(Claim {
        key_id: key_id.to_owned(),
        scheme: Scheme::Cavage,
        alg,
        base,
        signature,
    })
}

/// A POST's body must be covered by a digest (`covered`), which must match.
fn check_body_digest(request: &Request<'_>, covered: bool, header: &'static str) -> Result<(), SignatureError> {
    if request.method.eq_ignore_ascii_case("GET") || request.method.eq_ignore_ascii_case("HEAD") {
        return Ok(());
    }
    if !covered {
        return Err(SignatureError::NotCovered(header));
    }
    let value = request
        .header(header)
        .ok_or_else(|| SignatureError::MissingHeader(header.to_owned()))?;
    let matches = if header == "digest" {
        crate::digest::digest_matches(&value, request.body)
    } else {
        crate::digest::content_digest_matches(&value, request.body)
    };
    matches.then_some(()).ok_or(SignatureError::WrongDigest)
}

/// `name="value",name=value,…` of a draft-cavage header.
fn cavage_params(value: &str) -> Result<Vec<(String, String)>, SignatureError> {
    let mut params = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| SignatureError::Malformed(format!("no '=' in {rest:?}")))?;
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| SignatureError::Malformed("unterminated quote".into()))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((name.trim().to_owned(), value.to_owned()));
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Ok(params)
}

/// RFC 9421: the first signature label present in both `Signature-Input` and `Signature`.
fn rfc9421(request: &Request<'_>, now: SystemTime) -> Result<Claim, SignatureError> {
    let inputs = request.header("signature-input").unwrap_or_default();
    let signatures = request.header("signature").ok_or(SignatureError::Unsigned)?;
    let signatures = dictionary(&signatures)?;
    let (label, input) = dictionary(&inputs)?
        .into_iter()
        .find(|(label, _)| signatures.iter().any(|(l, _)| l == label))
        .ok_or_else(|| SignatureError::Malformed("no Signature-Input label has a Signature".into()))?;
    let encoded = &signatures.iter().find(|(l, _)| *l == label).expect("found above").1;
    let signature = decode_signature(
        encoded
            .strip_prefix(':')
            .and_then(|e| e.strip_suffix(':'))
            .ok_or_else(|| SignatureError::Malformed("signature is not a byte sequence".into()))?,
    )?;
    let (components, params) = inner_list(&input)?;
    let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let key_id = param("keyid").ok_or_else(|| SignatureError::Malformed("no keyid".into()))?;
    let alg = match param("alg") {
        None => None,
        Some("rsa-v1_5-sha256") => Some(Alg::RsaSha256),
        Some("ed25519") => Some(Alg::Ed25519),
        Some(other) => return Err(SignatureError::UnsupportedAlgorithm(other.to_owned())),
    };
    let covers = |name: &str| components.iter().any(|c| c == name);
    if !covers("@method") {
        return Err(SignatureError::NotCovered("@method"));
    }
    if !(covers("@target-uri") || covers("@request-target") || covers("@path")) {
        return Err(SignatureError::NotCovered("@target-uri"));
    }
    if !(covers("@target-uri") || covers("@authority") || covers("host")) {
        return Err(SignatureError::NotCovered("@authority"));
    }
    match param("created").map(|c| c.parse::<u64>()) {
        Some(Ok(created)) => check_date(
            SystemTime::UNIX_EPOCH + Duration::from_secs(created),
            created.to_string(),
            now,
        )?,
        Some(Err(_)) => return Err(SignatureError::Malformed("created is not an integer".into())),
        None if covers("date") => check_http_date(request, now)?,
        None => return Err(SignatureError::NotCovered("created")),
    }
    if let Some(expires) = param("expires").and_then(|e| e.parse::<u64>().ok())
        && SystemTime::UNIX_EPOCH + Duration::from_secs(expires) < now
    {
        return Err(SignatureError::StaleDate(format!("expired at {expires}")));
    }
    check_body_digest(request, covers("content-digest"), "content-digest")?;
    let mut base = String::new();
    for name in &components {
        let value = match name.as_str() {
            "@method" => request.method.to_ascii_uppercase(),
            "@target-uri" => request.target_uri.to_owned(),
            "@authority" => authority(request.target_uri).to_ascii_lowercase(),
            "@scheme" => request
                .target_uri
                .split("://")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            "@request-target" => request.path_and_query().to_owned(),
            "@path" => request.path_and_query().split('?').next().unwrap_or("/").to_owned(),
            "@query" => format!("?{}", request.path_and_query().split_once('?').map_or("", |(_, q)| q)),
            derived if derived.starts_with('@') => {
                return Err(SignatureError::Malformed(format!("unsupported component {derived:?}")));
            }
            header => request
                .header(header)
                .ok_or_else(|| SignatureError::MissingHeader(header.to_owned()))?,
        };
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {input}"));
    Ok(Claim {
        key_id: key_id.to_owned(),
        scheme: Scheme::Rfc9421,
        alg,
        base: base.into_bytes(),
        signature,
    })
}

fn authority(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or_default()
}

/// The members of a structured-field dictionary, `label=value` split on top-level commas,
/// each value as written.
fn dictionary(value: &str) -> Result<Vec<(String, String)>, SignatureError> {
    let mut members = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let bytes = value.as_bytes();
    for i in 0..=bytes.len() {
        let c = bytes.get(i).copied();
        match c {
            Some(b'"') => quoted = !quoted,
            Some(b'\\') if quoted => {}
            Some(b'(') if !quoted => depth += 1,
            Some(b')') if !quoted => depth -= 1,
            Some(b',') | None if !quoted && depth == 0 => {
                let member = value[start..i].trim();
                if !member.is_empty() {
                    let (label, rest) = member
                        .split_once('=')
                        .ok_or_else(|| SignatureError::Malformed(format!("member without a value: {member:?}")))?;
                    members.push((label.trim().to_owned(), rest.trim().to_owned()));
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted || depth != 0 {
        return Err(SignatureError::Malformed("unbalanced quotes or parentheses".into()));
    }
    Ok(members)
}

/// `("a" "b");k="v";n=1` → (["a", "b"], [(k, v), (n, 1)]). Component parameters (`;sf`,
/// `;req`, …) are not supported.
#[allow(clippy::type_complexity)]
fn inner_list(value: &str) -> Result<(Vec<String>, Vec<(String, String)>), SignatureError> {
    let malformed = || SignatureError::Malformed(format!("not a signature input: {value:?}"));
    let inner = value.strip_prefix('(').ok_or_else(malformed)?;
    let end = inner.find(')').ok_or_else(malformed)?;
    let mut components = Vec::new();
    let mut rest = inner[..end].trim();
    while !rest.is_empty() {
        let quoted = rest.strip_prefix('"').ok_or_else(malformed)?;
        let close = quoted.find('"').ok_or_else(malformed)?;
        components.push(quoted[..close].to_ascii_lowercase());
        rest = quoted[close + 1..].trim_start();
        if rest.starts_with(';') {
            return Err(SignatureError::Malformed(
                "component parameters are not supported".into(),
            ));
        }
    }
    let mut params = Vec::new();
    for param in inner[end + 1..].split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').ok_or_else(malformed)?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        params.push((name.trim().to_owned(), value.to_owned()));
    }
    Ok((components, params))
}

/// The headers to add to a POST of `body` to `url`, signed draft-cavage (`rsa-sha256` over
/// `(request-target) host date digest content-type`) by `key` as `key_id`, dated `now`:
/// `Host`, `Date`, `Digest`, `Content-Type` and `Signature`.
pub fn sign(
    key: &ActorKey,
    key_id: &str,
    url: &str,
    content_type: &str,
    body: &[u8],
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let host = authority(url).to_owned();
    let date = httpdate::fmt_http_date(now);
    let digest = crate::digest::digest_header(body);
    let probe = Request {
        method: "POST",
        target_uri: url,
        headers: &[],
        body,
    };
    let base = format!(
        "(request-target): post {}\nhost: {host}\ndate: {date}\ndigest: {digest}\ncontent-type: {content_type}",
        probe.path_and_query()
    );
    let signature = STANDARD.encode(key.sign(base.as_bytes()));
    let header = format!(
        "keyId=\"{key_id}\",algorithm=\"rsa-sha256\",headers=\"(request-target) host date digest content-type\",signature=\"{signature}\""
    );
    vec![
        ("host", host),
        ("date", date),
        ("digest", digest),
        ("content-type", content_type.to_owned()),
        ("signature", header),
    ]
}

/// The headers of an RFC 9421 signature (label `sig1`) of a POST of `body` to `url`,
/// covering `@method @target-uri @authority content-type content-digest`, created at
/// `created` (Unix seconds), its base signed by `sign_base` under `alg` (`rsa-v1_5-sha256` or
/// `ed25519`) as `key_id`: `Content-Type`, `Content-Digest`, `Signature-Input`, `Signature`.
/// What Fedify sends first; fed-sx itself sends draft-cavage ([`sign`]).
pub fn sign_rfc9421(
    sign_base: impl Fn(&[u8]) -> Vec<u8>,
    alg: &str,
    key_id: &str,
    url: &str,
    content_type: &str,
    body: &[u8],
    created: u64,
) -> Vec<(&'static str, String)> {
    use sha2::Digest;
    let digest = format!("sha-256=:{}:", STANDARD.encode(sha2::Sha256::digest(body)));
    let params = format!(
        "(\"@method\" \"@target-uri\" \"@authority\" \"content-type\" \"content-digest\");alg=\"{alg}\";keyid=\"{key_id}\";created={created}"
    );
    let base = format!(
        "\"@method\": POST\n\"@target-uri\": {url}\n\"@authority\": {}\n\"content-type\": {content_type}\n\"content-digest\": {digest}\n\"@signature-params\": {params}",
        authority(url).to_ascii_lowercase()
    );
    let signature = STANDARD.encode(sign_base(base.as_bytes()));
    vec![
        ("content-type", content_type.to_owned()),
        ("content-digest", digest),
        ("signature-input", format!("sig1={params}")),
        ("signature", format!("sig1=:{signature}:")),
    ]
}

#[cfg(test)]
mod tests;
