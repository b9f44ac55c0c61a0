//! A fed-sx activity (an outbox entry) as the ActivityStreams activity it stands for: the
//! one mapping both the relay (what ActivityPub followers receive) and the gateway (the
//! outbox collection) use.

use crate::json;
use fedsx_proto::wire::v1::{Activity, ActivityType};
use serde_json::Value;

/// `activity` (its fed-sx id `hex`) in ActivityStreams; None when it has none. An Accept
/// needs the Follow it accepts as that arrived (`accepted_follow`): servers match their
/// Follow's own id, which only the inbox knows.
pub fn to_activitypub(activity: &Activity, hex: &str, accepted_follow: Option<Value>) -> Option<Value> {
    let me = activity.actor.as_str();
    let id = json::activity_url(me, hex);
    let followers = format!("{me}/followers");
    match activity.r#type() {
        ActivityType::Create => {
            let content = json::text_to_html(&activity.content);
            let published = json::rfc3339(activity.published_ms);
            // Public: to the public, cc the followers (as Mastodon addresses a public post);
            // otherwise to whom it names (followers-only, or direct).
            let (to, cc) = if activity.to.iter().any(|t| t == json::PUBLIC) {
                let others = activity.to.iter().filter(|t| **t != followers && *t != json::PUBLIC);
                let to = std::iter::once(json::PUBLIC.to_owned())
                    .chain(others.cloned())
                    .collect();
                let cc = activity.to.iter().filter(|t| **t == followers).cloned().collect();
                (to, cc)
            } else {
                (activity.to.clone(), Vec::new())
            };
            Some(json::create_note(me, &id, &content, &published, &to, &cc))
        }
        ActivityType::Follow => Some(json::follow(me, &id, &activity.object)),
        ActivityType::Undo => {
            let followed = activity.to.first()?;
            let follow = json::follow(me, &json::activity_url(me, &activity.object), followed);
            Some(json::undo(me, &id, follow, followed))
        }
        ActivityType::Accept => accepted_follow.map(|follow| json::accept(me, &id, follow)),
        ActivityType::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_to_followers_is_a_create_of_a_note() {
        let activity = Activity {
            r#type: ActivityType::Create.into(),
            actor: "https://a.example/actors/alice".into(),
            seq: 1,
            to: vec!["https://a.example/actors/alice/followers".into()],
            published_ms: 0,
            content: "hi".into(),
            ..Default::default()
        };
        let create = to_activitypub(&activity, &"0".repeat(64), None).unwrap();
        assert_eq!(create["type"], "Create");
        assert_eq!(create["object"]["type"], "Note");
        assert_eq!(create["object"]["content"], "<p>hi</p>");
        assert_eq!(create["to"][0], "https://a.example/actors/alice/followers");
        assert_eq!(create["object"]["published"], "1970-01-01T00:00:00.000Z");
        let accept = Activity {
            r#type: ActivityType::Accept.into(),
            ..activity
        };
        assert_eq!(to_activitypub(&accept, "00", None), None, "no Follow to accept");
        assert!(create["cc"].as_array().unwrap().is_empty(), "followers-only: no cc");
        let public = Activity {
            to: vec!["https://a.example/actors/alice/followers".into(), json::PUBLIC.into()],
            ..accept
        };
        let public = Activity {
            r#type: ActivityType::Create.into(),
            ..public
        };
        let create = to_activitypub(&public, &"0".repeat(64), None).unwrap();
        assert_eq!(create["object"]["to"], serde_json::json!([json::PUBLIC]));
        assert_eq!(
            create["object"]["cc"],
            serde_json::json!(["https://a.example/actors/alice/followers"])
        );
    }
}
