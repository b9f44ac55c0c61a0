//! The ActivityStreams documents fed-sx serves and sends, and the parts it reads of what
//! ActivityPub servers send: plain JSON with the ActivityStreams context, the compacted form
//! every server in practice exchanges (no JSON-LD expansion).

use serde_json::{Value, json};

pub const AS_CONTEXT: &str = "https://www.w3.org/ns/activitystreams";
pub const SECURITY_CONTEXT: &str = "https://w3id.org/security/v1";
pub const MULTIKEY_CONTEXT: &str = "https://w3id.org/security/multikey/v1";
/// The public collection, in `to`/`cc`.
pub const PUBLIC: &str = "https://www.w3.org/ns/activitystreams#Public";

/// The key id of a local actor's RSA key.
pub fn key_id(actor_url: &str) -> String {
    format!("{actor_url}#main-key")
}

/// The id of a local actor's activity whose fed-sx id is `hex` (dereferenceable: the
/// gateway serves it from the outbox).
pub fn activity_url(actor_url: &str, hex: &str) -> String {
    format!("{actor_url}/activities/{hex}")
}

/// The fed-sx id (64 hex digits) in a URL made by [`activity_url`] for `actor_url`.
pub fn activity_hex<'a>(actor_url: &str, url: &'a str) -> Option<&'a str> {
    let hex = url.strip_prefix(actor_url)?.strip_prefix("/activities/")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// What a local actor's ActivityPub document says.
#[derive(Debug, Clone)]
pub struct LocalActor<'a> {
    pub url: &'a str,
    pub name: &'a str,
    /// The node inbox (empty: none).
    pub shared_inbox: &'a str,
    pub public_pem: &'a str,
    /// Its Ed25519 key (key id, raw key), published as a Multikey in `assertionMethod`.
    pub ed25519: Option<(&'a str, [u8; 32])>,
}

/// The actor as ActivityStreams JSON-LD: a `Person` with its inbox, outbox, followers,
/// shared inbox, RSA public key and (when given) its Ed25519 key as a Multikey.
pub fn actor(actor: &LocalActor<'_>) -> Value {
    let url = actor.url;
    let mut document = json!({
        "@context": [AS_CONTEXT, SECURITY_CONTEXT],
        "id": url,
        "type": "Person",
        "preferredUsername": actor.name,
        "name": actor.name,
        "url": url,
        "inbox": format!("{url}/inbox"),
        "outbox": format!("{url}/outbox"),
        "followers": format!("{url}/followers"),
        "following": format!("{url}/following"),
        "manuallyApprovesFollowers": false,
        "publicKey": {
            "id": key_id(url),
            "owner": url,
            "publicKeyPem": actor.public_pem,
        },
    });
    if !actor.shared_inbox.is_empty() {
        document["endpoints"] = json!({ "sharedInbox": actor.shared_inbox });
    }
    if let Some((key_id, key)) = &actor.ed25519 {
        document["@context"] = json!([AS_CONTEXT, SECURITY_CONTEXT, MULTIKEY_CONTEXT]);
        document["assertionMethod"] = json!([{
            "id": key_id,
            "type": "Multikey",
            "controller": url,
            "publicKeyMultibase": ed25519_multikey(key),
        }]);
    }
    document
}

/// The WebFinger answer (JRD) for `acct:name@host`.
pub fn webfinger(name: &str, host: &str, actor_url: &str) -> Value {
    json!({
        "subject": format!("acct:{name}@{host}"),
        "aliases": [actor_url],
        "links": [
            { "rel": "self", "type": crate::CONTENT_TYPE, "href": actor_url },
            { "rel": "http://webfinger.net/rel/profile-page", "type": "text/html", "href": actor_url },
        ],
    })
}

/// `/.well-known/nodeinfo`: where the NodeInfo 2.1 document is.
pub fn nodeinfo_links(base: &str) -> Value {
    json!({
        "links": [{
            "rel": "http://nodeinfo.diaspora.software/ns/schema/2.1",
            "href": format!("{base}/nodeinfo/2.1"),
        }],
    })
}

/// The NodeInfo 2.1 document.
pub fn nodeinfo(version: &str, users: u64) -> Value {
    json!({
        "version": "2.1",
        "software": {
            "name": "fed-sx",
            "version": version,
            "repository": "https://github.com/fed-sx/fed-sx",
        },
        "protocols": ["activitypub"],
        "services": { "inbound": [], "outbound": [] },
        "openRegistrations": false,
        "usage": { "users": { "total": users } },
        "metadata": {},
    })
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds (`2026-11-29T19:12:16.000Z`).
pub fn rfc3339(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// Plain text as the HTML `content` of a Note: escaped, paragraphs by blank lines, line
/// breaks kept.
pub fn text_to_html(text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    escaped
        .split("\n\n")
        .map(|p| format!("<p>{}</p>", p.replace('\n', "<br>")))
        .collect()
}

/// The id of a JSON value that is a link or an object with an `id`.
pub fn id_of(value: &Value) -> Option<&str> {
    match value {
        Value::String(id) => Some(id),
        Value::Object(object) => object.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// A field that is one value or an array of them, as ids.
pub fn ids(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(id_of).map(str::to_owned).collect(),
        Some(one) => id_of(one).map(str::to_owned).into_iter().collect(),
        None => Vec::new(),
    }
}

/// An inbound activity: what fed-sx reads of it. The whole JSON is kept as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Activity {
    pub id: String,
    pub kind: String,
    pub actor: String,
    /// The object's id (a link or an embedded object's `id`; empty if neither).
    pub object_id: String,
    /// The object's `type` when embedded.
    pub object_kind: String,
    /// `to` and `cc` together.
    pub audience: Vec<String>,
}

/// Reads an inbound activity, refusing what is no activity.
pub fn activity(json: &Value) -> Result<Activity, String> {
    let object = json.as_object().ok_or("the body is not a JSON object")?;
    let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_owned);
    let id = text("id").ok_or("the activity has no id")?;
    if !id.starts_with("https://") && !id.starts_with("http://") {
        return Err(format!("the activity id {id:?} is no URL"));
    }
    let kind = text("type").ok_or("the activity has no type")?;
    let actor = object
        .get("actor")
        .and_then(id_of)
        .ok_or("the activity has no actor")?
        .to_owned();
    let embedded = object.get("object");
    let mut audience = ids(object.get("to"));
    audience.extend(ids(object.get("cc")));
    Ok(Activity {
        id,
        kind,
        actor,
        object_id: embedded.and_then(id_of).unwrap_or_default().to_owned(),
        object_kind: embedded
            .and_then(|o| o.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        audience,
    })
}

/// What fed-sx keeps of a remote ActivityPub actor's document.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteActor {
    pub id: String,
    pub preferred_username: String,
    pub inbox: String,
    pub shared_inbox: String,
    pub followers: String,
    /// RSA keys: (key id, owner, PEM).
    pub keys: Vec<(String, String, String)>,
    /// Ed25519 keys from `assertionMethod` Multikeys: (key id, controller, raw key).
    pub ed25519_keys: Vec<(String, String, [u8; 32])>,
}

/// Reads an ActivityPub actor document (or a key document whose `owner` is the actor:
/// then `id` is the owner and only the key is known).
pub fn remote_actor(json: &Value) -> Result<RemoteActor, String> {
    let object = json.as_object().ok_or("the document is not a JSON object")?;
    let text = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let id = text("id");
    if id.is_empty() {
        return Err("the document has no id".into());
    }
    let mut keys = Vec::new();
    let key_values: Vec<&Value> = match object.get("publicKey") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None if object.contains_key("publicKeyPem") => vec![json],
        None => Vec::new(),
    };
    for key in key_values {
        let field = |name: &str| key.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let pem = field("publicKeyPem");
        if !pem.is_empty() {
            keys.push((field("id"), field("owner"), pem));
        }
    }
    let methods: Vec<&Value> = match object.get("assertionMethod") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    };
    let ed25519_keys = methods
        .into_iter()
        .filter_map(|method| {
            let field = |name: &str| method.get(name).and_then(Value::as_str).unwrap_or_default();
            let key = multikey_ed25519(field("publicKeyMultibase"))?;
            Some((field("id").to_owned(), field("controller").to_owned(), key))
        })
        .collect();
    Ok(RemoteActor {
        ed25519_keys,
        preferred_username: text("preferredUsername"),
        inbox: text("inbox"),
        shared_inbox: object
            .get("endpoints")
            .and_then(|e| e.get("sharedInbox"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        followers: text("followers"),
        id,
        keys,
    })
}

/// The Ed25519 key in a Multikey `publicKeyMultibase`: base58btc (`z…`) of the multicodec
/// prefix 0xed 0x01 and the 32-byte key. None for anything else (an RSA Multikey included).
pub fn multikey_ed25519(multibase: &str) -> Option<[u8; 32]> {
    let bytes = base58btc(multibase.strip_prefix('z')?)?;
    let key = bytes.strip_prefix(&[0xed, 0x01])?;
    key.try_into().ok()
}

/// The Bitcoin base58 alphabet (multibase `z`).
const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// The Multikey `publicKeyMultibase` of an Ed25519 key (the inverse of
/// [`multikey_ed25519`]).
pub fn ed25519_multikey(key: &[u8; 32]) -> String {
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(key);
    // Base-58 digits, least significant first.
    let mut digits: Vec<u8> = Vec::new();
    for byte in &bytes {
        let mut carry = u32::from(*byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    let text: String = std::iter::repeat_n('1', zeros)
        .chain(digits.iter().rev().map(|&d| ALPHABET[usize::from(d)] as char))
        .collect();
    format!("z{text}")
}

/// Decodes Bitcoin-alphabet base58 (bounded: Multikeys are short).
fn base58btc(text: &str) -> Option<Vec<u8>> {
    if text.len() > 128 {
        return None;
    }
    // Big-endian base-256 digits of the number, built one base-58 digit at a time.
    let mut number: Vec<u8> = Vec::new();
    for c in text.bytes() {
        let mut carry = ALPHABET.iter().position(|&a| a == c)? as u32;
        for byte in number.iter_mut().rev() {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            number.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = text.bytes().take_while(|&c| c == b'1').count();
    let mut out = vec![0u8; zeros];
    out.extend(number);
    Some(out)
}

/// An activity a local actor sends.
fn outgoing(kind: &str, actor: &str, id: &str, object: Value, to: &[String]) -> Value {
    json!({
        "@context": AS_CONTEXT,
        "id": id,
        "type": kind,
        "actor": actor,
        "object": object,
        "to": to,
    })
}

pub fn follow(actor: &str, id: &str, followed: &str) -> Value {
    outgoing("Follow", actor, id, json!(followed), &[followed.to_owned()])
}

/// An Accept of `follow` (the Follow as received, embedded, as Mastodon expects).
pub fn accept(actor: &str, id: &str, follow: Value) -> Value {
    let follower = follow.get("actor").and_then(id_of).unwrap_or_default().to_owned();
    outgoing("Accept", actor, id, follow, &[follower])
}

/// An Undo of this actor's `inner` activity (a Follow, sent to `to`).
pub fn undo(actor: &str, id: &str, inner: Value, to: &str) -> Value {
    outgoing("Undo", actor, id, inner, &[to.to_owned()])
}

/// A Create of a Note with `content`, published at `published` (RFC 3339), addressed
/// `to` and `cc`.
pub fn create_note(actor: &str, id: &str, content: &str, published: &str, to: &[String], cc: &[String]) -> Value {
    let mut create = outgoing(
        "Create",
        actor,
        id,
        json!({
            "id": format!("{id}/note"),
            "type": "Note",
            "attributedTo": actor,
            "content": content,
            "published": published,
            "to": to,
            "cc": cc,
        }),
        to,
    );
    create["cc"] = json!(cc);
    create["published"] = json!(published);
    create
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_document_round_trips_through_the_remote_reader() {
        let document = actor(&LocalActor {
            url: "https://a.example/actors/alice",
            name: "alice",
            shared_inbox: "https://a.example/inbox",
            public_pem: "PEM",
            ed25519: Some(("https://a.example/actors/alice#ed25519-1", [3; 32])),
        });
        let read = remote_actor(&document).unwrap();
        assert_eq!(read.id, "https://a.example/actors/alice");
        assert_eq!(read.inbox, "https://a.example/actors/alice/inbox");
        assert_eq!(read.shared_inbox, "https://a.example/inbox");
        assert_eq!(read.followers, "https://a.example/actors/alice/followers");
        assert_eq!(
            read.keys,
            vec![(
                "https://a.example/actors/alice#main-key".into(),
                "https://a.example/actors/alice".into(),
                "PEM".into()
            )]
        );
        assert_eq!(
            read.ed25519_keys,
            vec![(
                "https://a.example/actors/alice#ed25519-1".into(),
                "https://a.example/actors/alice".into(),
                [3; 32]
            )]
        );
    }

    #[test]
    fn an_activity_names_its_actor_object_and_audience() {
        let follow = json!({
            "id": "https://m.example/1", "type": "Undo", "actor": {"id": "https://m.example/u/b"},
            "object": {"id": "https://m.example/0", "type": "Follow"}, "to": "https://a.example/x", "cc": ["c"],
        });
        let read = activity(&follow).unwrap();
        assert_eq!(read.actor, "https://m.example/u/b");
        assert_eq!(
            (read.object_id.as_str(), read.object_kind.as_str()),
            ("https://m.example/0", "Follow")
        );
        assert_eq!(read.audience, vec!["https://a.example/x".to_owned(), "c".to_owned()]);
        assert_eq!(activity(&json!([])).unwrap_err(), "the body is not a JSON object");
        assert_eq!(
            activity(&json!({"id": "x", "type": "Follow", "actor": "a"})).unwrap_err(),
            "the activity id \"x\" is no URL"
        );
    }

    #[test]
    fn dates_and_text_render_as_servers_expect() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_979_536_123), "2026-11-29T19:12:16.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(text_to_html("a<b>\n\nc\nd"), "<p>a&lt;b&gt;</p><p>c<br>d</p>");
    }

    #[test]
    fn an_ed25519_multikey_decodes_to_its_key() {
        // did:key test vector (W3C did:key spec): z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp
        // is the Ed25519 key 3b6a27bc…e5da (hex below).
        let key = multikey_ed25519("z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp").unwrap();
        assert_eq!(
            key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"
        );
        assert_eq!(
            ed25519_multikey(&key),
            "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
        assert_eq!(multikey_ed25519("z0OIl"), None, "not base58");
        assert_eq!(
            multikey_ed25519("6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"),
            None,
            "not base58btc"
        );
    }

    #[test]
    fn activity_urls_give_back_their_id() {
        let hex = "ab".repeat(32);
        let url = activity_url("https://a.example/actors/alice", &hex);
        assert_eq!(activity_hex("https://a.example/actors/alice", &url), Some(hex.as_str()));
        assert_eq!(activity_hex("https://a.example/actors/bob", &url), None);
    }
}
