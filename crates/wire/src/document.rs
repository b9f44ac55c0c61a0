//! The actor document as JSON (what `GET <actor URL>` returns), and the checks a receiver
//! makes before trusting a fetched one.

use ed25519_dalek::VerifyingKey;
use fedsx_proto::kernel::v1::ActorDocument;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Json {
    id: String,
    #[serde(default)]
    name: String,
    inbox: String,
    outbox: String,
    /// 64 hex digits.
    public_key: String,
    key_id: String,
    #[serde(default, skip_serializing_if = "Endpoints::is_empty")]
    endpoints: Endpoints,
}

/// Node-wide URLs of the actor's node.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Endpoints {
    /// The node inbox: one envelope for several of the node's actors.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    shared_inbox: String,
}

impl Endpoints {
    fn is_empty(&self) -> bool {
        self.shared_inbox.is_empty()
    }
}

/// The document of the actor at `url` named `name` with `key`, its inbox and outbox at
/// `<url>/inbox` and `<url>/outbox` (the layout every fed-sx node uses), advertising
/// `shared_inbox` (empty: none).
pub fn new(url: &str, name: &str, key: &VerifyingKey, shared_inbox: &str) -> ActorDocument {
    ActorDocument {
        shared_inbox: shared_inbox.to_owned(),
        id: url.to_owned(),
        name: name.to_owned(),
        inbox: format!("{url}/inbox"),
        outbox: format!("{url}/outbox"),
        public_key: key.as_bytes().to_vec().into(),
        key_id: crate::key_id(url, key),
        ..Default::default()
    }
}

/// The JSON form of `document`.
pub fn to_json(document: &ActorDocument) -> serde_json::Value {
    serde_json::to_value(Json {
        id: document.id.clone(),
        name: document.name.clone(),
        inbox: document.inbox.clone(),
        outbox: document.outbox.clone(),
        public_key: hex::encode(&document.public_key),
        key_id: document.key_id.clone(),
        endpoints: Endpoints {
            shared_inbox: document.shared_inbox.clone(),
        },
    })
    .expect("an actor document serializes")
}

/// Parses and checks a fetched document: it is the actor at `url`, its key id belongs to
/// it, its public key is a valid ed25519 key and its inbox is an http(s) URL.
pub fn from_json(url: &str, body: &[u8]) -> Result<ActorDocument, String> {
    let json: Json = serde_json::from_slice(body).map_err(|err| format!("not an actor document: {err}"))?;
    let document = ActorDocument {
        public_key: hex::decode(&json.public_key)
            .map_err(|_| "public_key is not hex".to_owned())?
            .into(),
        id: json.id,
        name: json.name,
        inbox: json.inbox,
        outbox: json.outbox,
        key_id: json.key_id,
        shared_inbox: json.endpoints.shared_inbox,
        ..Default::default()
    };
    check(&document)?;
    if document.id != url {
        return Err(format!("document is for {}, not {url}", document.id));
    }
    Ok(document)
}

/// The checks every peer document passes before the kernel keeps it: among them, a shared
/// inbox is on the same node (scheme, host and port) as the actor's own inbox.
pub fn check(document: &ActorDocument) -> Result<VerifyingKey, String> {
    let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if !is_url(&document.id) {
        return Err(format!("id {:?} is not an http(s) URL", document.id));
    }
    if !is_url(&document.inbox) {
        return Err(format!("inbox {:?} is not an http(s) URL", document.inbox));
    }
    if !document.shared_inbox.is_empty() && origin(&document.shared_inbox) != origin(&document.inbox) {
        return Err(format!(
            "shared inbox {:?} is not on the node of inbox {:?}",
            document.shared_inbox, document.inbox
        ));
    }
    if !document
        .key_id
        .strip_prefix(document.id.as_str())
        .is_some_and(|rest| rest.starts_with('#'))
    {
        return Err(format!("key id {} does not belong to {}", document.key_id, document.id));
    }
    crate::public_key(&document.public_key)
}

/// The node part of an http(s) URL, `scheme://host[:port]` (lowercased), which names a
/// destination node; None for anything else.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{}", host_port.to_ascii_lowercase()))
}
