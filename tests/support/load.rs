//! Delivery under a trickle of load to one destination: the queue drains and refills all
//! the time, so the destination's worker ends and a new one starts over and over — where a
//! lease given up late could fence the new worker and its successes be sent again.

use super::fake_peer::FakePeer;
use bytes::Bytes;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{EnqueueRequest, PeerStatusRequest};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;

/// Enqueues `n` deliveries to one destination on `peer` from `senders` senders through 8
/// callers, each pausing a little after each enqueue, waits until the queue reports all delivered, and asserts each
/// arrived exactly once, and nothing more after.
pub async fn every_delivery_arrives_once(client: &DeliveryClient<Channel>, peer: &FakePeer, n: usize, senders: usize) {
    let (actor, inbox) = peer.actor("p");
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut callers = Vec::new();
    for caller in 0..8u64 {
        let (mut client, next, actor, inbox) = (client.clone(), next.clone(), actor.clone(), inbox.clone());
        callers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let mut id = [5u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let request = EnqueueRequest {
                    peer: actor.clone(),
                    inbox_url: inbox.clone(),
                    envelope: Bytes::from(format!("envelope {i}")),
                    id: Bytes::copy_from_slice(&id),
                    sender: format!("https://sender.example/actors/s{}", i % senders),
                    ..EnqueueRequest::default()
                };
                client.enqueue(request).await.expect("enqueue");
                tokio::time::sleep(Duration::from_micros(500 + 250 * caller)).await;
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    super::eventually("every delivery recorded", || {
        let mut client = client.clone();
        let actor = actor.clone();
        async move {
            let status = client
                .peer_status(PeerStatusRequest { peer: actor })
                .await
                .ok()?
                .into_inner();
            (status.delivered == n as u64 && status.pending == 0).then_some(())
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut arrivals: BTreeMap<String, usize> = BTreeMap::new();
    for received in peer.received("/actors/p/inbox") {
        *arrivals
            .entry(String::from_utf8_lossy(&received.body).into_owned())
            .or_default() += 1;
    }
    let repeated: Vec<_> = arrivals.iter().filter(|(_, times)| **times > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} of {n} deliveries arrived more than once, e.g. {:?}",
        repeated.len(),
        repeated.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(arrivals.len(), n, "every delivery arrived");
}
