//! Fetching peer actor documents over HTTP, safely: a timeout, a size cap, no redirects,
//! and no requests to loopback, private, link-local or other non-global addresses unless
//! the operator allowed them. The address checked is the address connected to, so a DNS
//! answer cannot change between the check and the request.

use bytes::Bytes;
use fedsx_proto::kernel::v1::ActorDocument;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Largest actor document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// Time allowed for a whole fetch: resolve, connect, request, body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct PeerFetcher {
    allow_private: bool,
    timeout: Duration,
}

impl PeerFetcher {
    pub fn new(allow_private: bool) -> PeerFetcher {
        PeerFetcher {
            allow_private,
            timeout: FETCH_TIMEOUT,
        }
    }

    /// The same fetcher with another time limit per fetch.
    pub fn with_timeout(self, timeout: Duration) -> PeerFetcher {
        PeerFetcher { timeout, ..self }
    }

    /// GETs and checks the actor document at `url`; the error says why in one line.
    pub async fn fetch(&self, url: &str) -> Result<ActorDocument, String> {
        match tokio::time::timeout(self.timeout, self.fetch_inner(url)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn fetch_inner(&self, url: &str) -> Result<ActorDocument, String> {
        let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err("https peers are not supported yet".into()),
            _ => return Err("not an http(s) URL".into()),
        }
        let host = uri
            .host()
            .ok_or("URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = self.resolve(host, port).await?;

        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|err| format!("connect {addr}: {err}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("http handshake: {err}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("fedsx/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|err| err.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| format!("request: {err}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|err| format!("document over {MAX_DOCUMENT_BYTES} bytes or unreadable: {err}"))?
            .to_bytes();
        fedsx_wire::document::from_json(url, &body)
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| format!("cannot resolve {host}: {err}"))?
            .collect();
        let allowed = addrs.iter().find(|a| self.allow_private || is_global(a.ip()));
        match (allowed, addrs.first()) {
            (Some(addr), _) => Ok(*addr),
            (None, Some(addr)) => Err(format!(
                "refusing to fetch from non-public address {} (allow with --allow-private-peers)",
                addr.ip()
            )),
            (None, None) => Err(format!("{host} resolves to no address")),
        }
    }
}

/// Whether `ip` is a public unicast address a peer may live at.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_global() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(is_global(public.parse().unwrap()), "{public}");
        }
    }

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
        let err = PeerFetcher::new(true).fetch(&url).await.unwrap_err();
        assert!(err.starts_with("document over 65536 bytes"), "{err}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let url = canned(Some(
            b"HTTP/1.1 302 Found\r\nlocation: http://10.0.0.1/\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ))
        .await;
        let err = PeerFetcher::new(true).fetch(&url).await.unwrap_err();
        assert_eq!(err, "answered 302 Found");
    }

    #[tokio::test]
    async fn a_peer_that_hangs_times_out() {
        let url = canned(None).await;
        let fetcher = PeerFetcher::new(true).with_timeout(Duration::from_millis(200));
        assert_eq!(fetcher.fetch(&url).await.unwrap_err(), "no answer within 200ms");
    }

    #[tokio::test]
    async fn a_document_for_another_actor_is_refused() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
        let other = "http://elsewhere.example/actors/y";
        let document = ActorDocument {
            id: other.into(),
            name: "y".into(),
            inbox: format!("{other}/inbox"),
            outbox: format!("{other}/outbox"),
            public_key: key.as_bytes().to_vec().into(),
            key_id: fedsx_wire::key_id(other, &key),
        };
        let body = serde_json::to_vec(&fedsx_wire::document::to_json(&document)).unwrap();
        let url = canned(Some(ok_with(&body))).await;
        let err = PeerFetcher::new(true).fetch(&url).await.unwrap_err();
        assert_eq!(err, format!("document is for {other}, not {url}"));
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let err = PeerFetcher::new(false)
            .fetch("http://127.0.0.1:9/actors/x")
            .await
            .unwrap_err();
        assert!(
            err.starts_with("refusing to fetch from non-public address 127.0.0.1"),
            "{err}"
        );
        let err = PeerFetcher::new(false)
            .fetch("http://localhost:9/actors/x")
            .await
            .unwrap_err();
        assert!(err.starts_with("refusing to fetch from non-public address"), "{err}");
    }
}
