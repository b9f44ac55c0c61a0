//! Fetching peer actor documents: a GET through the shared peer HTTP client (time limit,
//! size cap, no redirects, the address policy), then the document checks of the wire crate.

use bytes::Bytes;
use fedsx_proto::kernel::v1::ActorDocument;
use fedsx_runtime::http_client::PeerHttp;
use futures::future::BoxFuture;
use std::time::Duration;

/// Largest actor document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Time allowed for a whole fetch: resolve, connect, request, body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a peer's document or outbox page could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not a URL")]
    BadUrl(String),
    /// Not reached, or no whole answer in time: the transport's reason (an address the
    /// policy refuses, DNS, connect, the time limit, the size cap).
    #[error("{0}")]
    Unreachable(String),
    /// It answered, but not 200.
    #[error("answered {0}")]
    Status(http::StatusCode),
    /// What it answered is no acceptable document or page.
    #[error("{0}")]
    Invalid(String),
}

/// What the kernel needs from peers over HTTP: their documents and outbox pages.
pub trait PeerPort: Send + Sync + 'static {
    /// The checked actor document at `url`.
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<ActorDocument, FetchError>>;
    /// Up to `limit` signed envelopes of the outbox at `outbox` after seq `after`, with
    /// their seqs, as the sender serves them (unverified).
    fn fetch_outbox<'a>(
        &'a self,
        outbox: &'a str,
        after: u64,
        limit: u64,
    ) -> BoxFuture<'a, Result<Vec<(u64, Bytes)>, FetchError>>;
}

/// The peer port over the shared peer HTTP client.
#[derive(Debug, Clone)]
pub struct PeerFetcher {
    http: PeerHttp,
}

impl PeerPort for PeerFetcher {
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<ActorDocument, FetchError>> {
        Box::pin(self.fetch_document(url))
    }

    fn fetch_outbox<'a>(
        &'a self,
        outbox: &'a str,
        after: u64,
        limit: u64,
    ) -> BoxFuture<'a, Result<Vec<(u64, Bytes)>, FetchError>> {
        Box::pin(self.outbox_page(outbox, after, limit))
    }
}

impl PeerFetcher {
    pub fn new(allow_private: bool) -> PeerFetcher {
        PeerFetcher {
            http: PeerHttp::new(allow_private, FETCH_TIMEOUT),
        }
    }

    /// The same fetcher with another time limit per fetch.
    pub fn with_timeout(self, timeout: Duration) -> PeerFetcher {
        PeerFetcher {
            http: self.http.with_timeout(timeout),
        }
    }

    /// GETs and checks the actor document at `url`; the error says why in one line. A fed-sx
    /// node answers `application/json` with its document; ActivityPub servers mostly with
    /// their ActivityStreams one. When that is neither, it is asked for again as ActivityPub
    /// (`application/activity+json`: servers that answer nothing else).
    pub async fn fetch_document(&self, url: &str) -> Result<ActorDocument, FetchError> {
        let first = match self.get(url, "application/json").await {
            Ok(body) => match fedsx_wire::document::from_json(url, &body) {
                Ok(document) => return Ok(document),
                Err(native) => match activitypub_document(url, &body) {
                    Ok(document) => return Ok(document),
                    Err(ap) if !ap.is_empty() => return Err(FetchError::Invalid(ap)),
                    Err(_) => FetchError::Invalid(native.to_string()),
                },
            },
            Err(err) => err,
        };
        match self.get(url, fedsx_activitypub::CONTENT_TYPE).await {
            Ok(body) => match activitypub_document(url, &body) {
                Ok(document) => Ok(document),
                Err(ap) if !ap.is_empty() => Err(FetchError::Invalid(ap)),
                Err(_) => Err(first),
            },
            Err(_) => Err(first),
        }
    }

    /// The body of a 200 answer to a GET of `url` asking for `accept`.
    async fn get(&self, url: &str, accept: &str) -> Result<Bytes, FetchError> {
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, accept)
            .body(Bytes::new())
            .map_err(|_| FetchError::BadUrl(url.to_owned()))?;
        let reply = self
            .http
            .send(request, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|err| FetchError::Unreachable(err.to_string()))?;
        if reply.status != http::StatusCode::OK {
            return Err(FetchError::Status(reply.status));
        }
        Ok(reply.body)
    }
}

/// An ActivityPub actor's document at `url` as the kernel keeps peers: its inbox, shared
/// inbox, followers collection and its first RSA key it owns. Err("") when the body is no
/// ActivityPub actor at all (then the native error is the one to report).
pub fn activitypub_document(url: &str, body: &[u8]) -> Result<ActorDocument, String> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|_| String::new())?;
    let actor = fedsx_activitypub::json::remote_actor(&json).map_err(|_| String::new())?;
    if actor.inbox.is_empty() {
        return Err(String::new());
    }
    if actor.id != url {
        return Err(format!("document is for {}, not {url}", actor.id));
    }
    let same_node = |other: &str| fedsx_wire::document::origin(other) == fedsx_wire::document::origin(url);
    if !same_node(&actor.inbox) || (!actor.shared_inbox.is_empty() && !same_node(&actor.shared_inbox)) {
        return Err(format!("ActivityPub actor {url}: its inbox is on another node"));
    }
    let (rsa_key_id, _, pem) = actor
        .keys
        .iter()
        .find(|(id, owner, _)| {
            (owner.is_empty() || *owner == actor.id)
                && fedsx_wire::document::origin(id) == fedsx_wire::document::origin(url)
        })
        .cloned()
        .ok_or_else(|| format!("ActivityPub actor {url} publishes no RSA key of its own"))?;
    fedsx_activitypub::keys::PeerKey::from_pem(&pem).map_err(|err| format!("ActivityPub actor {url}: {err}"))?;
    // Its Ed25519 Multikey (RFC 9421 `ed25519` signatures name it), in the native key fields.
    let (key_id, public_key) = actor
        .ed25519_keys
        .iter()
        .find(|(id, controller, _)| {
            *controller == actor.id && fedsx_wire::document::origin(id) == fedsx_wire::document::origin(url)
        })
        .map(|(id, _, key)| (id.clone(), bytes::Bytes::copy_from_slice(key)))
        .unwrap_or_default();
    Ok(ActorDocument {
        key_id,
        public_key,
        id: actor.id,
        name: actor.preferred_username,
        inbox: actor.inbox,
        shared_inbox: actor.shared_inbox,
        followers: actor.followers,
        rsa_public_key_pem: pem,
        rsa_key_id,
        activitypub: true,
        ..Default::default()
    })
}

/// Largest outbox page accepted, in bytes: [`OUTBOX_PAGE`] envelopes at the envelope limit,
/// base64-encoded in JSON.
pub const MAX_OUTBOX_PAGE_BYTES: usize = OUTBOX_PAGE as usize * fedsx_wire::MAX_ENVELOPE_BYTES * 3 / 2;
/// Entries asked for per outbox page.
pub const OUTBOX_PAGE: u64 = 16;

impl PeerFetcher {
    /// GETs `<outbox>?after=N&limit=M` (at most [`OUTBOX_PAGE`]): the signed envelopes
    /// with their seqs, in order, as the sender serves them (unverified).
    async fn outbox_page(&self, outbox: &str, after: u64, limit: u64) -> Result<Vec<(u64, Bytes)>, FetchError> {
        let limit = limit.clamp(1, OUTBOX_PAGE);
        let url = format!("{outbox}?after={after}&limit={limit}");
        let request = http::Request::get(&url)
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|_| FetchError::BadUrl(outbox.to_owned()))?;
        let reply = self
            .http
            .send(request, MAX_OUTBOX_PAGE_BYTES)
            .await
            .map_err(|err| FetchError::Unreachable(format!("GET {url}: {err}")))?;
        if reply.status != http::StatusCode::OK {
            return Err(FetchError::Status(reply.status));
        }
        fedsx_wire::outbox::from_json(&reply.body).map_err(|err| FetchError::Invalid(format!("GET {url}: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection-at-a-time HTTP server answering every request with `response`
    /// (or never answering when it is None).
    async fn canned(response: Option<Vec<u8>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/actors/x", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                match &response {
                    Some(bytes) => {
                        let _ = stream.write_all(bytes).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            }
        });
        url
    }

    fn ok_with(body: &[u8]) -> Vec<u8> {
        let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
        response.extend_from_slice(body);
        response
    }

    #[tokio::test]
    async fn an_oversized_document_is_refused() {
        let url = canned(Some(ok_with(&vec![b' '; MAX_DOCUMENT_BYTES + 1]))).await;
        let err = PeerFetcher::new(true).fetch_document(&url).await.unwrap_err();
        assert_eq!(err, FetchError::Unreachable("response body over 65536 bytes".into()));
    }

    #[tokio::test]
    async fn a_server_answering_only_activitypub_is_asked_again_for_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/users/m", listener.local_addr().unwrap());
        let key = fedsx_activitypub::keys::ActorKey::generate().unwrap();
        let document = fedsx_activitypub::json::actor(&fedsx_activitypub::json::LocalActor {
            url: &url,
            name: "m",
            shared_inbox: "",
            public_pem: &key.public_pem(),
            ed25519: None,
        })
        .to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&request[..n]).to_ascii_lowercase();
                let answer = if text.contains("accept: application/activity+json") {
                    ok_with(document.as_bytes())
                } else {
                    b"HTTP/1.1 406 Not Acceptable\r\ncontent-length: 0\r\n\r\n".to_vec()
                };
                let _ = stream.write_all(&answer).await;
            }
        });
        let found = PeerFetcher::new(true).fetch_document(&url).await.unwrap();
        assert!(found.activitypub);
        assert_eq!(found.inbox, format!("{url}/inbox"));
        assert_eq!(found.rsa_key_id, format!("{url}#main-key"));
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let url = canned(Some(
            b"HTTP/1.1 302 Found\r\nlocation: http://10.0.0.1/\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ))
        .await;
        let err = PeerFetcher::new(true).fetch_document(&url).await.unwrap_err();
        assert_eq!(err, FetchError::Status(http::StatusCode::FOUND));
        assert_eq!(err.to_string(), "answered 302 Found");
    }

    #[tokio::test]
    async fn a_peer_that_hangs_times_out() {
        let url = canned(None).await;
        let fetcher = PeerFetcher::new(true).with_timeout(Duration::from_millis(200));
        assert_eq!(
            fetcher.fetch_document(&url).await.unwrap_err(),
            FetchError::Unreachable("no answer within 200ms".into())
        );
    }

    #[tokio::test]
    async fn a_document_for_another_actor_is_refused() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
        let other = "http://elsewhere.example/actors/y";
        let document = fedsx_wire::document::new(other, "y", &key, "");
        let body = serde_json::to_vec(&fedsx_wire::document::to_json(&document)).unwrap();
        let url = canned(Some(ok_with(&body))).await;
        let err = PeerFetcher::new(true).fetch_document(&url).await.unwrap_err();
        assert_eq!(err, FetchError::Invalid(format!("document is for {other}, not {url}")));
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let err = PeerFetcher::new(false)
            .fetch_document("http://127.0.0.1:9/actors/x")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::Unreachable(reason) if reason.starts_with("refusing to connect to non-public address 127.0.0.1")),
            "{err}"
        );
        let err = PeerFetcher::new(false)
            .fetch_document("http://localhost:9/actors/x")
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("refusing to connect to non-public address"),
            "{err}"
        );
    }
}
