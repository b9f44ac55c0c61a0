//! Outbound HTTP to peer nodes, the one way every service makes it: http and https
//! (rustls, web PKI roots), kept-alive connections per peer, a time limit for the whole
//! exchange, a cap on the response body,
//! no redirects followed, and no connections to loopback, private, link-local or other
//! non-global addresses unless the operator allowed them. The address checked is the address
//! connected to, so a DNS answer cannot change between the check and the request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a request to a peer got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL cannot be used.
    BadUrl(String),
    /// The address policy forbids the destination.
    Refused(String),
    /// Resolving, connecting, TLS or the exchange failed.
    Transport(String),
    /// No complete answer within the time limit.
    Timeout(Duration),
    /// The response body is over the cap.
    TooLarge(usize),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::BadUrl(reason) | HttpError::Refused(reason) | HttpError::Transport(reason) => {
                f.write_str(reason)
            }
            HttpError::Timeout(limit) => write!(f, "no answer within {limit:?}"),
            HttpError::TooLarge(cap) => write!(f, "response body over {cap} bytes"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A complete HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1.1 connection ready to send a request.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
/// Which peer a connection goes to: (https, host, port).
type PoolKey = (bool, String, u16);
/// Idle kept-alive connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 32;

/// The client for peers; cheap to clone (clones share the kept-alive connections).
#[derive(Clone)]
pub struct PeerHttp {
    allow_private: bool,
    timeout: Duration,
    tls: tokio_rustls::TlsConnector,
    pool: Arc<std::sync::Mutex<std::collections::HashMap<PoolKey, Vec<Sender>>>>,
}

impl std::fmt::Debug for PeerHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHttp")
            .field("allow_private", &self.allow_private)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn tls_connector(roots: rustls::RootCertStore) -> tokio_rustls::TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl PeerHttp {
    /// A client trusting the web PKI roots; `allow_private` permits non-global addresses
    /// (tests, single-machine setups).
    pub fn new(allow_private: bool, timeout: Duration) -> PeerHttp {
        let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        PeerHttp {
            allow_private,
            timeout,
            tls: tls_connector(roots),
            pool: Arc::default(),
        }
    }

    /// The same client trusting exactly `roots` (DER certificates) instead of the web PKI.
    pub fn with_roots(self, roots: &[Vec<u8>]) -> Result<PeerHttp, String> {
        let mut store = rustls::RootCertStore::empty();
        for der in roots {
            store
                .add(der.clone().into())
                .map_err(|err| format!("bad root certificate: {err}"))?;
        }
        Ok(PeerHttp {
            tls: tls_connector(store),
            ..self
        })
    }

    /// The same client with another time limit.
    pub fn with_timeout(self, timeout: Duration) -> PeerHttp {
        PeerHttp { timeout, ..self }
    }

    /// Sends `request` (whose URI is absolute) and reads the whole answer, at most
    /// `max_body` bytes of body. Redirects are answers like any other.
    pub async fn send(&self, request: http::Request<Bytes>, max_body: usize) -> Result<Reply, HttpError> {
        match tokio::time::timeout(self.timeout, self.exchange(request, max_body)).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self, request: http::Request<Bytes>, max_body: usize) -> Result<Reply, HttpError> {
        let (mut parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(HttpError::BadUrl(format!("{uri} is not an http(s) URL"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| HttpError::BadUrl(format!("{uri} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if let Some(authority) = uri.authority()
            && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(http::header::HOST, value);
        }
        parts
            .headers
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static(concat!(
                "fedsx/",
                env!("CARGO_PKG_VERSION")
            )));
        let path: http::Uri = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .expect("a path is a valid URI");
        let build = || {
            let mut request = http::Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = path.clone();
            *request.headers_mut() = parts.headers.clone();
            request
        };

        let key = (https, host, port);
        if let Some(sender) = self.idle(&key) {
            // A kept-alive connection the peer may have closed meanwhile: on a transport
            // failure, try once more on a fresh one.
            match self.send_on(sender, build(), max_body, &key).await {
                Err(HttpError::Transport(_)) => {}
                answer => return answer,
            }
        }
        let sender = self.connect(&key).await?;
        self.send_on(sender, build(), max_body, &key).await
    }

    /// An idle kept-alive connection to `key`, if one is still open.
    fn idle(&self, key: &PoolKey) -> Option<Sender> {
        let mut pool = self.pool.lock().expect("connection pool lock");
        let idle = pool.get_mut(key)?;
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self, (https, host, port): &PoolKey) -> Result<Sender, HttpError> {
        let addr = self.resolve(host, *port).await?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|err| HttpError::Transport(format!("connect {addr}: {err}")))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = if *https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| HttpError::BadUrl(format!("{host} is not a valid TLS server name")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|err| HttpError::Transport(format!("tls with {host}: {err}")))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| HttpError::Transport(format!("http handshake: {err}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends on `sender`, reads the whole answer, and keeps the connection for the next
    /// request to the same peer when it is still usable.
    async fn send_on(
        &self,
        mut sender: Sender,
        request: http::Request<Full<Bytes>>,
        max_body: usize,
        key: &PoolKey,
    ) -> Result<Reply, HttpError> {
        sender
            .ready()
            .await
            .map_err(|err| HttpError::Transport(format!("connection: {err}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| HttpError::Transport(format!("request: {err}")))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|err| {
                if err.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge(max_body)
                } else {
                    HttpError::Transport(format!("reading the answer: {err}"))
                }
            })?
            .to_bytes();
        if !sender.is_closed() {
            let mut pool = self.pool.lock().expect("connection pool lock");
            let idle = pool.entry(key.clone()).or_default();
            if idle.len() < MAX_IDLE_PER_PEER {
                idle.push(sender);
            }
        }
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, HttpError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| HttpError::Transport(format!("cannot resolve {host}: {err}")))?
            .collect();
        let allowed = addrs.iter().find(|a| self.allow_private || is_global(a.ip()));
        match (allowed, addrs.first()) {
            (Some(addr), _) => Ok(*addr),
            (None, Some(addr)) => Err(HttpError::Refused(format!(
                "refusing to connect to non-public address {} (allowed only with --allow-private-peers)",
                addr.ip()
            ))),
            (None, None) => Err(HttpError::Transport(format!("{host} resolves to no address"))),
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
mod tests;
