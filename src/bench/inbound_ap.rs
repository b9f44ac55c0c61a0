//! `fedsx bench inbound --activitypub`: ActivityPub actors whose documents this process
//! serves (RSA keys made here), each activity a Create of a Note signed draft-cavage as
//! Mastodon signs, POSTed to the same inbox as the native run.

use super::Run;
use super::inbound::{Prepared, load};
use fedsx_activitypub::json;
use fedsx_activitypub::keys::ActorKey;
use std::sync::Arc;

/// Serves `actors` ActivityPub actors on loopback, signs `activities` Creates addressed to
/// `recipient` (round robin over the actors), and POSTs them to `inbox`.
pub async fn run(
    inbox: &str,
    recipient: &str,
    actors: usize,
    activities: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let keys: Vec<ActorKey> =
        tokio::task::spawn_blocking(move || (0..actors).map(|_| ActorKey::generate()).collect::<Result<_, _>>())
            .await??;
    let urls: Vec<String> = (0..actors).map(|i| format!("{base}/users/a{salt}-{i}")).collect();
    let documents: Arc<Vec<String>> = Arc::new(
        keys.iter()
            .zip(&urls)
            .enumerate()
            .map(|(i, (key, url))| {
                json::actor(&json::LocalActor {
                    url,
                    name: &format!("a{i}"),
                    shared_inbox: "",
                    public_pem: &key.public_pem(),
                    ed25519: None,
                })
                .to_string()
            })
            .collect(),
    );
    let app = axum::Router::new().route(
        "/users/{name}",
        axum::routing::get(move |axum::extract::Path(name): axum::extract::Path<String>| {
            let documents = documents.clone();
            async move {
                let i: Option<usize> = name.rsplit('-').next().and_then(|i| i.parse().ok());
                match i.and_then(|i| documents.get(i)) {
                    Some(document) => (
                        http::StatusCode::OK,
                        [(http::header::CONTENT_TYPE, fedsx_activitypub::CONTENT_TYPE)],
                        document.clone(),
                    ),
                    None => (
                        http::StatusCode::NOT_FOUND,
                        [(http::header::CONTENT_TYPE, "text/plain")],
                        String::new(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (target, recipient) = (inbox.to_owned(), recipient.to_owned());
    let started = std::time::Instant::now();
    let requests: Vec<Prepared> = tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now();
        (0..activities)
            .map(|n| {
                let (key, url) = (&keys[n % keys.len()], &urls[n % urls.len()]);
                let id = format!("{url}/notes/{n}");
                let body = json::create_note(
                    url,
                    &id,
                    "<p>bench</p>",
                    &json::rfc3339(0),
                    std::slice::from_ref(&recipient),
                    &[],
                )
                .to_string()
                .into_bytes();
                let headers = fedsx_activitypub::signature::sign(
                    key,
                    &json::key_id(url),
                    &target,
                    fedsx_activitypub::CONTENT_TYPE,
                    &body,
                    now,
                );
                (headers, body)
            })
            .collect()
    })
    .await?;
    println!(
        "activitypub: {activities} Creates by {actors} actors signed (RSA-2048) in {:?}",
        started.elapsed()
    );
    load(inbox, &Arc::new(requests), concurrency).await
}
