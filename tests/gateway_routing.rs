//! A gateway in front of two kernel replicas (real processes on one log-store) sends each
//! inbox POST straight to the replica serving the recipient's partition: the replicas
//! together answer one `Ingest` per POST, none forwarded from one to the other — though
//! the gateway is configured with one replica's address only.

mod support;

use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::CreateActorRequest;
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::wire::v1::{Activity, ActivityType};
use std::net::SocketAddr;
use std::time::Duration;
use support::{Service, TestDir, eventually, free_addr, sample, scrape};

const PARTITIONS: u32 = 8;
const PEER: &str = "https://p.example/actors/pat";

/// One actor name per partition, so each replica serves some of them.
fn actors() -> Vec<String> {
    fedsx_kernel::one_name_per_partition("r", PARTITIONS as usize, PARTITIONS)
}

/// `Ingest` calls the kernel at `addr` answered so far, and the partitions it serves.
async fn ingests_and_partitions(addr: SocketAddr) -> (f64, f64) {
    let metrics = scrape(&format!("http://{addr}")).await;
    let ingests = sample(
        &metrics,
        "rpc_server_call_duration_seconds_count",
        &[("rpc_method", "Ingest"), ("rpc_response_status_code", "OK")],
    );
    let served = sample(&metrics, "fedsx_kernel_partitions_served", &[]);
    (ingests.unwrap_or(0.0), served.unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_posts_go_straight_to_the_replica_serving_the_recipient() {
    let dir = TestDir::new();
    let log_store = support::spawn_log_store(&dir).await;
    let gateway_addr = free_addr();
    let public_url = format!("http://{gateway_addr}");
    let partitions = PARTITIONS.to_string();
    let mut addrs = Vec::new();
    let mut kernels = Vec::new();
    for n in 0..2 {
        let (addr, kernel) =
            support::spawn_kernel_replica(&dir, n, &log_store.url(), &public_url, &["--partitions", &partitions]).await;
        kernels.push(kernel);
        addrs.push(addr);
    }
    eventually("two replicas sharing the partitions", || {
        let addrs = addrs.clone();
        async move {
            let (_, a) = ingests_and_partitions(addrs[0]).await;
            let (_, b) = ingests_and_partitions(addrs[1]).await;
            (a + b == f64::from(PARTITIONS) && a > 0.0 && b > 0.0).then_some(())
        }
    })
    .await
    .unwrap();
    let _gateway = Service::spawn_http(
        "gateway",
        &[
            "gateway",
            "--listen",
            &gateway_addr.to_string(),
            "--kernel",
            &format!("http://{}", addrs[0]),
            "--public-url",
            &public_url,
        ],
        dir.path(),
    )
    .await
    .unwrap();

    let mut kernel = KernelClient::new(support::channel(&format!("http://{}", addrs[0])).await.unwrap());
    let names = actors();
    for name in &names {
        kernel
            .create_actor(CreateActorRequest { name: name.clone() })
            .await
            .unwrap();
    }
    let key = SigningKey::from_bytes(&[3; 32]);
    let kid = fedsx_wire::key_id(PEER, &key.verifying_key());
    kernel
        .register_peer(fedsx_wire::document::new(PEER, "pat", &key.verifying_key(), ""))
        .await
        .unwrap();
    let http = fedsx_runtime::http_client::PeerHttp::new(true, Duration::from_secs(5));
    let mut seq = 0;
    let mut prev = None;
    let mut post = async |name: &str| {
        seq += 1;
        let activity = Activity {
            r#type: ActivityType::Create.into(),
            actor: PEER.into(),
            seq,
            content: format!("note {seq}"),
            prev: prev
                .map(|id: fedsx_wire::ActivityId| id.0.to_vec().into())
                .unwrap_or_default(),
            ..Activity::default()
        };
        let signed = fedsx_wire::sign(&activity, &key, &kid);
        prev = Some(signed.id);
        let request = http::Request::post(format!("{public_url}/actors/{name}/inbox"))
            .header("content-type", "application/vnd.fed-sx.activity")
            .body(bytes::Bytes::from(signed.to_bytes()))
            .unwrap();
        let reply = http.send(request, 1 << 20).await.unwrap();
        assert_eq!(reply.status.as_u16(), 202, "{}", String::from_utf8_lossy(&reply.body));
    };
    // The gateway reads which replica serves what on its first calls.
    for name in &names {
        post(name).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ingests_and_partitions(addrs[0]).await.0 + ingests_and_partitions(addrs[1]).await.0;
    let rounds = 5;
    for _ in 0..rounds {
        for name in &names {
            post(name).await;
        }
    }
    let after = ingests_and_partitions(addrs[0]).await.0 + ingests_and_partitions(addrs[1]).await.0;
    // One call per POST: through replica 0's address, the half for replica 1's
    // partitions would be two (replica 0 forwarding each).
    assert_eq!(after - before, (rounds * names.len()) as f64);
}
