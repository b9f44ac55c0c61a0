//! The ActivityPub face of the gateway: WebFinger, NodeInfo, actors as ActivityStreams
//! (content negotiation on the actor URL), and inbox POSTs with an ActivityPub content type
//! handed to the kernel's `IngestActivityPub` as received. Thin: the kernel decides.

use crate::error::ApiError;
use crate::routes::Shared;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use fedsx_activitypub::json;
use fedsx_proto::kernel::v1::{
    ActorDocument, ActorListRequest, GetActorRequest, HttpHeader, IngestActivityPubRequest, ListActorsRequest, LogKind,
    ReadLogRequest,
};
use fedsx_proto::wire::v1::ActivityType;
use http::{HeaderMap, StatusCode, Uri};
use serde_json::{Value, json};

/// A JSON answer with the ActivityPub media type.
fn activity_json(value: Value) -> Response {
    (
        [(http::header::CONTENT_TYPE, fedsx_activitypub::CONTENT_TYPE)],
        Json(value),
    )
        .into_response()
}

/// Whether the request asks for ActivityStreams (its `Accept` names it).
pub fn wants_activitypub(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(fedsx_activitypub::accepts_activitypub)
}

/// Whether the request's body is ActivityPub (by its `Content-Type`).
pub fn is_activitypub_post(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(fedsx_activitypub::is_activitypub_media)
}

/// The actor as an ActivityStreams `Person`.
pub fn actor(document: &ActorDocument) -> Response {
    activity_json(json::actor(&json::LocalActor {
        url: &document.id,
        name: &document.name,
        shared_inbox: &document.shared_inbox,
        public_pem: &document.rsa_public_key_pem,
        ed25519: document
            .public_key
            .as_ref()
            .try_into()
            .ok()
            .map(|key| (document.key_id.as_str(), key)),
    }))
}

/// An ActivityPub POST to `recipient`'s inbox (empty: the shared inbox), handed to the
/// kernel with what its signature covers.
pub async fn ingest(
    app: &crate::routes::App,
    recipient: String,
    uri: &Uri,
    headers: &HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let target_uri = format!("{}{}", app.public_url, uri.path_and_query().map_or("/", |p| p.as_str()));
    let headers = headers
        .iter()
        .filter_map(|(name, value)| {
            Some(HttpHeader {
                name: name.as_str().to_owned(),
                value: value.to_str().ok()?.to_owned(),
            })
        })
        .collect();
    let request = IngestActivityPubRequest {
        recipient,
        method: "POST".into(),
        target_uri,
        headers,
        body,
    };
    app.kernels
        .routed(&request.recipient, |mut kernel| {
            let request = request.clone();
            async move { kernel.ingest_activity_pub(request).await }
        })
        .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct WebfingerQuery {
    #[serde(default)]
    resource: String,
}

/// `/.well-known/webfinger?resource=acct:name@host` (or the actor's URL): the JRD linking
/// to the actor.
pub async fn webfinger(State(app): Shared, Query(query): Query<WebfingerQuery>) -> Result<Response, ApiError> {
    let host = app
        .public_url
        .split_once("://")
        .map_or(app.public_url.as_str(), |(_, rest)| rest)
        .to_ascii_lowercase();
    let actors = format!("{}/actors/", app.public_url);
    let name = if let Some(acct) = query.resource.strip_prefix("acct:") {
        let (name, at) = acct.rsplit_once('@').ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("resource {:?} is not acct:name@host", query.resource),
            )
        })?;
        if !at.eq_ignore_ascii_case(&host) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("{at} is not this node ({host})"),
            ));
        }
        name.to_owned()
    } else if let Some(name) = query.resource.strip_prefix(&actors) {
        name.to_owned()
    } else if query.resource.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no resource parameter"));
    } else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} is no actor of this node", query.resource),
        ));
    };
    let document = app
        .kernels
        .any()
        .get_actor(GetActorRequest { name: name.clone() })
        .await?
        .into_inner();
    Ok((
        [(http::header::CONTENT_TYPE, "application/jrd+json")],
        Json(json::webfinger(&name, &host, &document.id)),
    )
        .into_response())
}

pub async fn nodeinfo_links(State(app): Shared) -> Json<Value> {
    Json(json::nodeinfo_links(&app.public_url))
}

/// NodeInfo 2.1, with the number of local actors as users.
pub async fn nodeinfo(State(app): Shared) -> Result<Response, ApiError> {
    let actors = fedsx_runtime::paging::all_pages(|page_token| {
        let mut kernel = app.kernels.any();
        async move {
            let page = kernel
                .list_actors(ListActorsRequest {
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.actors, page.next_page_token))
        }
    })
    .await?;
    let users = actors.len() as u64;
    let document = json::nodeinfo(env!("CARGO_PKG_VERSION"), users);
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "application/json; profile=\"http://nodeinfo.diaspora.software/ns/schema/2.1#\"",
        )],
        Json(document),
    )
        .into_response())
}

/// Items on one page of an ActivityPub outbox.
const OUTBOX_PAGE: u64 = 20;

/// The outbox as an ActivityStreams `OrderedCollection`, newest first, paged: without
/// `page`, the collection with its size and first page; `page=B`, the notes published
/// before outbox seq B (its `next` the page before those).
pub async fn outbox(app: &crate::routes::App, name: String, page: Option<u64>) -> Result<Response, ApiError> {
    let url = format!("{}/actors/{name}/outbox", app.public_url);
    let mut kernel = app.kernels.any();
    let read = |after: u64, limit: u32| ReadLogRequest {
        actor: name.clone(),
        kind: LogKind::Outbox.into(),
        after,
        limit,
    };
    let Some(before) = page else {
        let tip = kernel.read_log(read(0, 1)).await?.into_inner().tip;
        return Ok(activity_json(json!({
            "@context": json::AS_CONTEXT,
            "id": url,
            "type": "OrderedCollection",
            "totalItems": tip,
            "first": format!("{url}?page={}", tip + 1),
        })));
    };
    let after = before.saturating_sub(OUTBOX_PAGE + 1);
    let limit = before.saturating_sub(after + 1).min(OUTBOX_PAGE) as u32;
    let entries = if limit == 0 {
        Vec::new()
    } else {
        kernel.read_log(read(after, limit)).await?.into_inner().entries
    };
    // Notes only: what a profile shows (follows and their answers are not posts).
    let items: Vec<Value> = entries
        .iter()
        .rev()
        .filter_map(|entry| {
            let received = fedsx_wire::decode(&entry.envelope).ok()?;
            if received.kind != ActivityType::Create {
                return None;
            }
            fedsx_activitypub::native::to_activitypub(&received.activity, &received.id.to_hex(), None)
        })
        .collect();
    let mut page = json!({
        "@context": json::AS_CONTEXT,
        "id": format!("{url}?page={before}"),
        "type": "OrderedCollectionPage",
        "partOf": url,
        "orderedItems": items,
    });
    if after > 0 {
        page["next"] = json!(format!("{url}?page={}", after + 1));
    }
    Ok(activity_json(page))
}

/// The followers collection: its size (the members are not listed).
pub async fn followers(app: &crate::routes::App, name: String) -> Result<Response, ApiError> {
    let followers = fedsx_runtime::paging::all_pages(|page_token| {
        let (mut kernel, name) = (app.kernels.any(), name.clone());
        async move {
            let request = ActorListRequest {
                name,
                page_size: 1000,
                page_token,
            };
            let page = kernel.followers(request).await?.into_inner();
            Ok((page.actors, page.next_page_token))
        }
    })
    .await?;
    let total = followers.len() as u64;
    Ok(activity_json(json!({
        "@context": json::AS_CONTEXT,
        "id": format!("{}/actors/{name}/followers", app.public_url),
        "type": "OrderedCollection",
        "totalItems": total,
    })))
}
