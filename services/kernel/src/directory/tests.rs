//! The directory alone: documents kept in a map, peers answered by a fake port.

use super::*;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;

const PEER: &str = "https://a.example/actors/alice";
const LOCAL: &str = "https://b.example/actors/bob";

fn document(url: &str, key_id: &str) -> ActorDocument {
    ActorDocument {
        id: url.to_owned(),
        key_id: key_id.to_owned(),
        ..Default::default()
    }
}

/// Peers' documents as the fake port serves them, and the fetches made.
#[derive(Default)]
struct Peers {
    served: Mutex<HashMap<String, ActorDocument>>,
    fetched: Mutex<Vec<String>>,
}

impl PeerPort for Peers {
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<ActorDocument, FetchError>> {
        self.fetched.lock().unwrap().push(url.to_owned());
        let served = self.served.lock().unwrap().get(url).cloned();
        Box::pin(async move { served.ok_or(FetchError::Status(http::StatusCode::NOT_FOUND)) })
    }

    fn fetch_outbox<'a>(&'a self, _: &'a str, _: u64, _: u64) -> BoxFuture<'a, Result<Vec<(u64, Bytes)>, FetchError>> {
        Box::pin(async { Err(FetchError::Unreachable("not in this test".into())) })
    }
}

/// Documents known (by URL, with whether local) and kept.
#[derive(Default)]
struct Known {
    documents: Mutex<HashMap<String, (ActorDocument, bool)>>,
    kept: Mutex<Vec<ActorDocument>>,
}

impl Documents for Known {
    fn known(&self, url: &str) -> Option<(ActorDocument, bool)> {
        self.documents.lock().unwrap().get(url).cloned()
    }

    async fn keep(&self, document: &ActorDocument) -> Result<(), KernelError> {
        self.kept.lock().unwrap().push(document.clone());
        self.documents
            .lock()
            .unwrap()
            .insert(document.id.clone(), (document.clone(), false));
        Ok(())
    }
}

impl Known {
    fn insert(&self, document: ActorDocument, local: bool) {
        self.documents
            .lock()
            .unwrap()
            .insert(document.id.clone(), (document, local));
    }
}

fn setup() -> (Arc<Peers>, Directory, Known) {
    let peers = Arc::new(Peers::default());
    (peers.clone(), Directory::new(peers), Known::default())
}

/// Accepts a document naming `key_id`, as the native inbox does.
fn key(key_id: &str) -> impl Fn(&ActorDocument) -> Result<(), KernelError> + '_ {
    move |document| {
        if document.key_id == key_id {
            Ok(())
        } else {
            Err(KernelError::StaleKey {
                key_id: key_id.to_owned(),
                actor: document.id.clone(),
            })
        }
    }
}

fn any(_: &ActorDocument) -> bool {
    true
}

#[tokio::test]
async fn an_unknown_sender_is_fetched_once_and_kept() {
    let (peers, directory, known) = setup();
    peers.served.lock().unwrap().insert(PEER.into(), document(PEER, "k1"));
    for _ in 0..3 {
        let found = directory.sender(&known, PEER, any, key("k1")).await.unwrap();
        assert_eq!(found.key_id, "k1");
    }
    assert_eq!(*peers.fetched.lock().unwrap(), [PEER], "fetched once, then known");
    assert_eq!(known.kept.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_refetched_at_most_once_per_interval() {
    let (peers, directory, known) = setup();
    known.insert(document(PEER, "k1"), false);
    peers.served.lock().unwrap().insert(PEER.into(), document(PEER, "k2"));
    let found = directory.sender(&known, PEER, any, key("k2")).await.unwrap();
    assert_eq!(found.key_id, "k2", "the rotated key is fetched and kept");
    assert_eq!(known.known(PEER).unwrap().0.key_id, "k2");
    // A key it never had: one refetch per interval, not one per request.
    for _ in 0..3 {
        let refused = directory.sender(&known, PEER, any, key("k3")).await.unwrap_err();
        assert!(matches!(refused, KernelError::StaleKey { .. }), "{refused:?}");
    }
    assert_eq!(
        peers.fetched.lock().unwrap().len(),
        1,
        "the first refetch used the interval"
    );
}

#[tokio::test]
async fn a_document_just_fetched_or_local_is_not_fetched_again() {
    let (peers, directory, known) = setup();
    peers.served.lock().unwrap().insert(PEER.into(), document(PEER, "k1"));
    let refused = directory.sender(&known, PEER, any, key("k9")).await.unwrap_err();
    assert!(matches!(refused, KernelError::StaleKey { .. }));
    assert_eq!(peers.fetched.lock().unwrap().len(), 1);

    known.insert(document(LOCAL, "k1"), true);
    let refused = directory.sender(&known, LOCAL, any, key("k9")).await.unwrap_err();
    assert!(matches!(refused, KernelError::StaleKey { .. }));
    assert_eq!(peers.fetched.lock().unwrap().len(), 1, "a local actor is never fetched");
}

#[tokio::test]
async fn a_sender_whose_document_cannot_be_fetched_is_unknown_and_nothing_is_kept() {
    let (_, directory, known) = setup();
    let refused = directory.sender(&known, PEER, any, key("k1")).await.unwrap_err();
    assert!(
        matches!(&refused, KernelError::UnknownSender { actor, reason } if actor == PEER && reason.contains("404")),
        "{refused:?}"
    );
    assert!(known.kept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_known_document_that_is_not_usable_is_fetched() {
    // The ActivityPub inbox uses only documents fetched as ActivityPub actors.
    let (peers, directory, known) = setup();
    known.insert(document(PEER, "k1"), false);
    let fetched = ActorDocument {
        activitypub: true,
        ..document(PEER, "k1")
    };
    peers.served.lock().unwrap().insert(PEER.into(), fetched);
    let found = directory
        .sender(&known, PEER, |d| d.activitypub, key("k1"))
        .await
        .unwrap();
    assert!(found.activitypub);
    assert_eq!(peers.fetched.lock().unwrap().len(), 1);
}
