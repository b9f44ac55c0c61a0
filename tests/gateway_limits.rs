//! The gateway against broken or hostile HTTP clients, over raw TCP connections: silent and
//! half-sent connections are closed after the header timeout, idle ones after the idle one, the connection cap holds, a trickling body
//! gets 408, and every path outside the routes gets a one-line 404 or 405.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{Node, Service, TestDir, free_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway without a kernel (none of these requests get that far) and `flags`.
async fn gateway(dir: &TestDir, flags: &[&str]) -> Service {
    let mut args = vec!["gateway", "--listen", "127.0.0.1:0", "--kernel", "http://127.0.0.1:1"];
    args.extend_from_slice(flags);
    Service::spawn_http("gateway", &args, dir.path()).await.unwrap()
}

/// Reads until the server closes the connection (or `limit` passes); what it sent, and
/// whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// Sends `request` on a new connection and reads the answer (the server closes after it:
/// `connection: close`): status and body.
async fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "no complete answer to {request:?}: {answer:?}");
    let status = answer.split_whitespace().nth(1).unwrap_or("0").parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

/// Reads one answer to GET /healthz from a kept-alive connection.
async fn read_healthz_answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn silent_and_half_sent_connections_are_closed_after_the_header_timeout() {
    let dir = TestDir::new();
    let service = gateway(&dir, &["--header-timeout", "1s", "--idle-timeout", "30s"]).await;
    let started = Instant::now();

    let mut silent = TcpStream::connect(service.addr).await.unwrap();
    let mut half = TcpStream::connect(service.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    // A kept-alive connection whose second request stops halfway: the header deadline,
    // not the idle one, applies from its first byte.
    let mut second_half = TcpStream::connect(service.addr).await.unwrap();
    second_half.write_all(HEALTHZ).await.unwrap();
    assert!(
        read_healthz_answer(&mut second_half)
            .await
            .starts_with("HTTP/1.1 200 OK")
    );
    second_half.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();

    let (said, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed && said.is_empty(), "silent connection: {said:?}");
    let (said, closed) = read_until_closed(&mut half, Duration::from_secs(5)).await;
    assert!(closed && !said.contains("200 OK"), "half-sent headers: {said:?}");
    let (said, closed) = read_until_closed(&mut second_half, Duration::from_secs(5)).await;
    assert!(closed && !said.contains("200 OK"), "half-sent second request: {said:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "closed after the 1 s header timeout, not {took:?}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let dir = TestDir::new();
    let service = gateway(&dir, &["--header-timeout", "1s", "--idle-timeout", "3s"]).await;
    let mut stream = TcpStream::connect(service.addr).await.unwrap();
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz_answer(&mut stream).await.starts_with("HTTP/1.1 200 OK"));

    // Idle longer than the header timeout: still open, and serves the next request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_healthz_answer(&mut stream).await.starts_with("HTTP/1.1 200 OK"));

    let idle_from = Instant::now();
    let (said, closed) = read_until_closed(&mut stream, Duration::from_secs(8)).await;
    let idled = idle_from.elapsed();
    assert!(closed && said.is_empty(), "idle connection: {said:?}");
    assert!(
        idled >= Duration::from_millis(2_500) && idled < Duration::from_secs(6),
        "closed after the 3 s idle timeout, not {idled:?}"
    );
}

#[tokio::test]
async fn past_the_connection_cap_a_client_waits_until_one_closes() {
    let dir = TestDir::new();
    let service = gateway(&dir, &["--max-connections", "2", "--header-timeout", "30s"]).await;
    let first = TcpStream::connect(service.addr).await.unwrap();
    let _second = TcpStream::connect(service.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut third = TcpStream::connect(service.addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (said, _) = read_until_closed(&mut third, Duration::from_millis(700)).await;
    assert!(said.is_empty(), "served past the cap: {said:?}");

    drop(first);
    let (said, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed && said.starts_with("HTTP/1.1 200 OK"), "{said:?}");
    assert!(said.ends_with("ok\n"), "{said:?}");
}

#[tokio::test]
async fn a_body_slower_than_the_request_timeout_gets_408() {
    let dir = TestDir::new();
    let service = gateway(&dir, &["--request-timeout", "1s"]).await;
    let mut stream = TcpStream::connect(service.addr).await.unwrap();
    let head = "POST /actors/bob/inbox HTTP/1.1\r\nhost: x\r\ncontent-type: application/vnd.fed-sx.activity\r\n\
                content-length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[1u8; 10]).await.unwrap();
    let (said, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(said.starts_with("HTTP/1.1 408 "), "{said:?}");
    assert!(
        said.ends_with("\r\n\r\nthe request body did not arrive within 1s\n"),
        "{said:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_routes_get_one_line_and_nothing_else() {
    let dir = TestDir::new();
    let node = Node::start("node", &dir.join("node"), free_addr(), "1s", dir.path())
        .await
        .unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    for path in [
        "/nope",
        "/actors",
        "/actors/",
        "/../metrics",
        "/%2e%2e/metrics",
        "/actors/bob/../../metrics",
        "/actors/bob/%2e%2e/%2e%2e/metrics",
        "/actors/bob%2Finbox",
        "/actors/..%2F..%2Fmetrics",
        "/actors/..",
        "//metrics",
        "/metrics/",
        "/healthz/..",
    ] {
        let (status, body) = exchange(node.http, &get(path)).await;
        assert!(matches!(status, 400 | 404), "{path}: {status} {body:?}");
        assert!(
            body.ends_with('\n') && body.trim_end().lines().count() == 1 && !body.trim().is_empty(),
            "{path}: one line, not {body:?}"
        );
        assert!(!body.contains("http_server"), "{path} served metrics: {body:?}");
    }
    let (status, body) = exchange(
        node.http,
        "DELETE /actors/bob HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (405, "/actors/bob does not take DELETE\n"));
    let (status, body) = exchange(node.http, &get("/nope")).await;
    assert_eq!((status, body.as_str()), (404, "no route for GET /nope\n"));
}
