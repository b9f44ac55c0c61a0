//! The gateway's inbound errors over real HTTP against a whole node: each answered with its
//! status and a one-line reason, and none of them appending anything.

mod support;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorRequest, CreateActorRequest};
use fedsx_proto::wire::v1::{Activity, ActivityType, SignedEnvelope};
use fedsx_runtime::http_client::{PeerHttp, Reply};
use prost::Message;
use std::time::Duration;
use support::{Node, Service, TestDir, free_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PEER: &str = "https://p.example/actors/pat";
const CONTENT_TYPE: &str = "application/vnd.fed-sx.activity";

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let request = http::Request::post(url)
        .header("content-type", content_type)
        .body(Bytes::from(body))
        .unwrap();
    PeerHttp::new(true, Duration::from_secs(10))
        .send(request, 1 << 20)
        .await
        .unwrap()
}

fn reason(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// A chunked POST (no Content-Length) of `size` bytes, over a raw connection; the status.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, size: usize) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {CONTENT_TYPE}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    let mut sent = 0;
    while sent < size {
        let n = chunk.len().min(size - sent);
        let frame = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
        if stream.write_all(&frame).await.is_err() {
            break; // the server may answer and close before the end
        }
        sent += n;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_inbound_error_has_its_status_and_appends_nothing() {
    let dir = TestDir::new();
    let node = Node::start("node", &dir.join("node"), free_addr(), "10ms", dir.path())
        .await
        .unwrap();
    let mut kernel = KernelClient::new(support::channel(&node.kernel_url()).await.unwrap());
    kernel
        .create_actor(CreateActorRequest { name: "bob".into() })
        .await
        .unwrap();
    let key = SigningKey::from_bytes(&[3; 32]);
    let kid = fedsx_wire::key_id(PEER, &key.verifying_key());
    let document = fedsx_wire::document::new(PEER, "pat", &key.verifying_key(), "");
    kernel.register_peer(document).await.unwrap();
    let activity = Activity {
        r#type: ActivityType::Create.into(),
        actor: PEER.into(),
        seq: 1,
        content: "hi".into(),
        ..Activity::default()
    };
    let good = fedsx_wire::sign(&activity, &key, &kid).to_bytes();
    let mut tampered = SignedEnvelope::decode(&good[..]).unwrap();
    tampered.activity = Activity {
        content: "ho".into(),
        ..activity.clone()
    }
    .encode_to_vec()
    .into();
    let forged = fedsx_wire::sign(&activity, &SigningKey::from_bytes(&[4; 32]), &kid).to_bytes();
    let inbox = format!("{}/actors/bob/inbox", node.url());
    let with_object = |kind: ActivityType, object: &str| {
        let activity = Activity {
            r#type: kind.into(),
            object: object.into(),
            ..activity.clone()
        };
        fedsx_wire::sign(&activity, &key, &kid).to_bytes()
    };
    let upper = "AB".repeat(32);

    let cases: Vec<(&str, String, &str, Vec<u8>, u16)> = vec![
        (
            "malformed body",
            inbox.clone(),
            CONTENT_TYPE,
            b"\xff\xff\xff".to_vec(),
            400,
        ),
        (
            "tampered signature",
            inbox.clone(),
            CONTENT_TYPE,
            tampered.encode_to_vec(),
            401,
        ),
        ("forged actor", inbox.clone(), CONTENT_TYPE, forged, 401),
        (
            "Accept of no activity id",
            inbox.clone(),
            CONTENT_TYPE,
            with_object(ActivityType::Accept, "https://p.example/follow/1"),
            400,
        ),
        (
            "Undo of an uppercase id",
            inbox.clone(),
            CONTENT_TYPE,
            with_object(ActivityType::Undo, &upper),
            400,
        ),
        (
            "Undo of a short id",
            inbox.clone(),
            CONTENT_TYPE,
            with_object(ActivityType::Undo, "abcd"),
            400,
        ),
        (
            "unknown actor",
            format!("{}/actors/nobody/inbox", node.url()),
            CONTENT_TYPE,
            good.clone(),
            404,
        ),
        (
            "wrong content type",
            inbox.clone(),
            "application/json",
            good.clone(),
            415,
        ),
        (
            "over the limit",
            inbox.clone(),
            CONTENT_TYPE,
            vec![0u8; 256 * 1024 + 1],
            413,
        ),
    ];
    for (what, url, content_type, body, status) in cases {
        let reply = post(&url, content_type, body).await;
        let why = reason(&reply);
        assert_eq!(reply.status, status, "{what}: {why}");
        assert!(
            why.ends_with('\n') && why.trim().lines().count() == 1 && !why.trim().is_empty(),
            "{what}: one line: {why:?}"
        );
    }
    assert_eq!(
        post_chunked(node.http, "/actors/bob/inbox", 300 * 1024).await,
        413,
        "over the limit without Content-Length"
    );
    let tips = kernel
        .tips(ActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tips.inbox_tip, tips.outbox_tip), (0, 0), "no error appended anything");

    // The same activity twice: the same 202, appended once.
    let first = post(&inbox, CONTENT_TYPE, good.clone()).await;
    let second = post(&inbox, CONTENT_TYPE, good).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (202, 202));
    let first: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let second: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!((first["seq"].as_u64(), first["new"].as_bool()), (Some(1), Some(true)));
    assert_eq!(
        (second["seq"].as_u64(), second["new"].as_bool(), &second["id"]),
        (Some(1), Some(false), &first["id"])
    );
    let tips = kernel
        .tips(ActorRequest { name: "bob".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tips.inbox_tip, 1);

    // Health, readiness and metrics for the cluster; the metrics counted the answers above.
    let get = |path: &str| {
        let request = http::Request::get(format!("{}{path}", node.url()))
            .body(Bytes::new())
            .unwrap();
        async move {
            PeerHttp::new(true, Duration::from_secs(10))
                .send(request, 1 << 20)
                .await
                .unwrap()
        }
    };
    assert_eq!(get("/healthz").await.status, 200);
    assert_eq!(get("/readyz").await.status, 200);
    let metrics = String::from_utf8(get("/metrics").await.body.to_vec()).unwrap();
    for (status, count) in [("202", 2.0), ("401", 2.0), ("415", 1.0)] {
        let labels = [
            ("http_request_method", "POST"),
            ("http_route", "/actors/{name}/inbox"),
            ("http_response_status_code", status),
        ];
        let counted = support::sample(&metrics, "http_server_request_duration_seconds_count", &labels);
        assert_eq!(counted, Some(count), "{status} in:\n{metrics}");
    }
}

#[tokio::test]
async fn an_unreachable_kernel_is_503() {
    let dir = TestDir::new();
    let args = ["gateway", "--listen", "127.0.0.1:0", "--kernel", "http://127.0.0.1:1"];
    let gateway = Service::spawn_http("gateway", &args, dir.path()).await.unwrap();
    let reply = post(
        &format!("http://{}/actors/bob/inbox", gateway.addr),
        CONTENT_TYPE,
        vec![1, 2, 3],
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reason(&reply));
    assert!(reason(&reply).starts_with("kernel unavailable"), "{}", reason(&reply));
    let ready = PeerHttp::new(true, Duration::from_secs(10))
        .send(
            http::Request::get(format!("http://{}/readyz", gateway.addr))
                .body(Bytes::new())
                .unwrap(),
            1024,
        )
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "not ready without a kernel");
}
