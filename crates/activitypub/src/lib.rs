//! fed-sx's second face: what it takes for fed-sx actors to federate with ActivityPub
//! servers (Mastodon, Fedify, Lemmy). RSA actor keys sealed under the node secret
//! ([`keys`]), HTTP Signatures in both drafts the fediverse sends ([`signature`]), body
//! digests ([`digest`]), the ActivityStreams documents ([`json`]) and what an inbox keeps
//! of an activity ([`inbox`]). No I/O here: the
//! gateway serves the documents, the kernel verifies and keeps, delivery signs and sends.

pub mod digest;
pub mod inbox;
pub mod json;
pub mod keys;
pub mod native;
pub mod payload;
pub mod signature;

/// The media type ActivityPub activities and actors travel as.
pub const CONTENT_TYPE: &str = "application/activity+json";

/// Whether a `Content-Type` or one `Accept` entry names ActivityPub JSON:
/// `application/activity+json`, or `application/ld+json` with the ActivityStreams profile.
pub fn is_activitypub_media(value: &str) -> bool {
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    if essence.eq_ignore_ascii_case(CONTENT_TYPE) {
        return true;
    }
    essence.eq_ignore_ascii_case("application/ld+json")
        && parts.any(|p| {
            p.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("profile")
                    && value.trim_matches('"').split(' ').any(|v| v == json::AS_CONTEXT)
            })
        })
}

/// Whether an `Accept` header asks for ActivityPub JSON (any of its entries does).
pub fn accepts_activitypub(accept: &str) -> bool {
    accept.split(',').any(is_activitypub_media)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_recognised_as_servers_send_them() {
        assert!(accepts_activitypub("application/activity+json"));
        assert!(accepts_activitypub(
            "application/ld+json; profile=\"https://www.w3.org/ns/activitystreams\""
        ));
        assert!(accepts_activitypub("text/html, application/activity+json;q=0.9"));
        assert!(!accepts_activitypub("application/ld+json"));
        assert!(!accepts_activitypub("application/json"));
        assert!(is_activitypub_media("Application/Activity+JSON; charset=utf-8"));
    }
}
