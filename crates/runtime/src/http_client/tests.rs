//! The peer HTTP client against servers on loopback: plain and TLS, caps, redirects,
//! timeouts and the address policy.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAP: usize = 1024;

/// A server answering every connection with `response` (or never, when None), over TLS
/// when `tls` is given. Returns its port.
async fn canned(tls: Option<tokio_rustls::TlsAcceptor>, response: Option<Vec<u8>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, response) = (tls.clone(), response.clone());
            tokio::spawn(async move {
                let mut stream: Box<dyn Io> = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => Box::new(stream),
                        Err(_) => return,
                    },
                    None => Box::new(tcp),
                };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                match response {
                    Some(bytes) => {
                        let _ = stream.write_all(&bytes).await;
                        let _ = stream.flush().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    port
}

fn ok_with(body: &[u8]) -> Vec<u8> {
    let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    response.extend_from_slice(body);
    response
}

fn get(url: &str) -> http::Request<Bytes> {
    http::Request::get(url).body(Bytes::new()).unwrap()
}

fn client() -> PeerHttp {
    PeerHttp::new(true, Duration::from_secs(5))
}

/// A self-signed certificate for `localhost` and the acceptor serving it.
fn tls_server() -> (Vec<u8>, tokio_rustls::TlsAcceptor) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone().into()], key)
        .unwrap();
    (cert, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test]
async fn plain_http_answers_with_status_headers_and_body() {
    let port = canned(None, Some(ok_with(b"hello"))).await;
    let reply = client()
        .send(get(&format!("http://127.0.0.1:{port}/x")), CAP)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"hello");
}

#[tokio::test]
async fn https_works_with_a_trusted_root_and_fails_without() {
    let (cert, acceptor) = tls_server();
    let port = canned(Some(acceptor), Some(ok_with(b"secure"))).await;
    let url = format!("https://localhost:{port}/x");
    let trusting = client().with_roots(&[cert]).unwrap();
    let reply = trusting.send(get(&url), CAP).await.unwrap();
    assert_eq!(&reply.body[..], b"secure");

    let err = client().send(get(&url), CAP).await.unwrap_err();
    assert!(
        matches!(&err, HttpError::Transport(reason) if reason.starts_with("tls with localhost")),
        "{err}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let port = canned(None, Some(ok_with(&vec![b'x'; CAP + 1]))).await;
    let err = client()
        .send(get(&format!("http://127.0.0.1:{port}/x")), CAP)
        .await
        .unwrap_err();
    assert_eq!(err, HttpError::TooLarge(CAP));
}

#[tokio::test]
async fn redirects_are_answers_not_followed() {
    let redirect = b"HTTP/1.1 302 Found\r\nlocation: http://10.0.0.1/\r\ncontent-length: 0\r\n\r\n".to_vec();
    let port = canned(None, Some(redirect)).await;
    let reply = client()
        .send(get(&format!("http://127.0.0.1:{port}/x")), CAP)
        .await
        .unwrap();
    assert_eq!(reply.status, 302);
}

#[tokio::test]
async fn a_peer_that_hangs_times_out() {
    let port = canned(None, None).await;
    let quick = client().with_timeout(Duration::from_millis(200));
    let err = quick
        .send(get(&format!("http://127.0.0.1:{port}/x")), CAP)
        .await
        .unwrap_err();
    assert_eq!(err, HttpError::Timeout(Duration::from_millis(200)));
}

#[tokio::test]
async fn non_global_addresses_are_refused_unless_allowed() {
    let strict = PeerHttp::new(false, Duration::from_secs(5));
    for url in [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",
        "http://[::1]:9/x",
        "https://10.0.0.1/x",
    ] {
        let err = strict.send(get(url), CAP).await.unwrap_err();
        assert!(matches!(err, HttpError::Refused(_)), "{url}: {err}");
    }
}

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

/// A keep-alive HTTP/1.1 server answering 200 "ok", counting the connections it accepted.
async fn keep_alive_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(|_request: hyper::Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service));
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn connections_to_a_peer_are_kept_alive_and_reused() {
    let (port, accepted) = keep_alive_server().await;
    let http = client();
    for _ in 0..5 {
        let reply = http
            .send(get(&format!("http://127.0.0.1:{port}/x")), CAP)
            .await
            .unwrap();
        assert_eq!(&reply.body[..], b"ok");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection for five requests"
    );
}

#[tokio::test]
async fn a_peer_closing_its_connections_costs_nothing_but_new_ones() {
    // The canned server answers once per connection and closes it.
    let port = canned(None, Some(ok_with(b"once"))).await;
    let http = client();
    for _ in 0..3 {
        let reply = http
            .send(get(&format!("http://127.0.0.1:{port}/x")), CAP)
            .await
            .unwrap();
        assert_eq!(&reply.body[..], b"once");
    }
}
