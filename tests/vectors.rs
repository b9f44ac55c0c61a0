//! The published test vectors against a running node, at an actor inbox and at the node
//! inbox: every positive vector is accepted (202) and every negative one answered with the
//! status `docs/test-vectors.json` gives, appending nothing.

mod support;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{ActorRequest, CreateActorRequest};
use fedsx_runtime::http_client::PeerHttp;
use std::time::Duration;
use support::{Node, TestDir, free_addr};

const VECTORS: &str = include_str!("../docs/test-vectors.json");

async fn post(url: &str, body: Vec<u8>) -> (u16, String) {
    let request = http::Request::post(url)
        .header("content-type", "application/vnd.fed-sx.activity")
        .body(Bytes::from(body))
        .unwrap();
    let reply = PeerHttp::new(true, Duration::from_secs(10))
        .send(request, 1 << 20)
        .await
        .unwrap();
    (reply.status.as_u16(), String::from_utf8_lossy(&reply.body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_vector_gets_its_status_from_a_running_node() {
    let all: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let dir = TestDir::new();
    let node = Node::start("node", &dir.join("n"), free_addr(), "1s", dir.path())
        .await
        .unwrap();
    let mut kernel = KernelClient::new(support::channel(&node.kernel_url()).await.unwrap());
    kernel
        .create_actor(CreateActorRequest { name: "carol".into() })
        .await
        .unwrap();
    // The vectors' senders, known to the node as peers with the vectors' keys.
    for v in all["vectors"].as_array().unwrap() {
        let seed: [u8; 32] = hex::decode(v["seed"].as_str().unwrap()).unwrap().try_into().unwrap();
        let actor = v["activity"]["actor"].as_str().unwrap();
        let document = fedsx_wire::document::new(actor, "", &SigningKey::from_bytes(&seed).verifying_key(), "");
        kernel.register_peer(document).await.unwrap();
    }
    let inbox = format!("{}/actors/carol/inbox", node.url());
    let node_inbox = format!("{}/inbox", node.url());

    // The node inbox makes the same checks and gives the same answers.
    for v in all["negative"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        for url in [&inbox, &node_inbox] {
            let (status, why) = post(url, hex::decode(v["envelope"].as_str().unwrap()).unwrap()).await;
            assert_eq!(status as u64, v["status"].as_u64().unwrap(), "{name} at {url}: {why}");
            assert!(
                why.ends_with('\n') && why.trim().lines().count() == 1,
                "{name}: one line: {why:?}"
            );
        }
    }
    let tips = kernel
        .tips(ActorRequest { name: "carol".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tips.inbox_tip, 0, "no refused vector appended anything");

    let positive = all["vectors"].as_array().unwrap();
    for v in positive {
        let name = v["name"].as_str().unwrap();
        let (status, why) = post(&inbox, hex::decode(v["envelope"].as_str().unwrap()).unwrap()).await;
        assert_eq!(status, 202, "{name}: {why}");
        // Addressed to actors of another node: verified, then kept for none of this node's.
        let (status, why) = post(&node_inbox, hex::decode(v["envelope"].as_str().unwrap()).unwrap()).await;
        assert_eq!(status, 202, "{name} at the node inbox: {why}");
        let answer: serde_json::Value = serde_json::from_str(&why).unwrap();
        assert_eq!(answer["recipients"], serde_json::json!([]), "{name}: {why}");
    }
    let tips = kernel
        .tips(ActorRequest { name: "carol".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tips.inbox_tip, positive.len() as u64);
}
