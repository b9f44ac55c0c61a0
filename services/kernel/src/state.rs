//! The kernel's in-memory projections — local actors, known peers, followers, following,
//! follows we sent — rebuilt at start by replaying the journal, and changed only by
//! applying a journal record after it is durably appended.

use crate::effects::Effect;
use crate::keys::NodeSecret;
use ed25519_dalek::SigningKey;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_proto::kernel::v1::{ActorDocument, JournalRecord};
use fedsx_wire::ActivityId;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A local actor: its document and its (derived) signing key.
#[derive(Debug, PartialEq)]
pub struct LocalActor {
    pub document: ActorDocument,
    pub key: SigningKey,
    /// Its RSA key for ActivityPub, sealed under the node secret (empty for an actor made
    /// before ActivityPub until the kernel gave it one); only delivery opens it, to sign.
    pub rsa_sealed: bytes::Bytes,
}

#[derive(Debug, Default, PartialEq)]
pub struct State {
    pub actors: BTreeMap<String, LocalActor>,
    /// Peer documents by actor URL.
    pub peers: HashMap<String, ActorDocument>,
    /// Local actor name → follower URL → id of the Follow that made it a follower.
    pub followers: HashMap<String, BTreeMap<String, ActivityId>>,
    /// Local actor name → URLs it follows (their Accept came back).
    pub following: HashMap<String, BTreeSet<String>>,
    /// The same the other way round: followed URL → local actor names following it (the
    /// recipients on this node of what it sends to its followers).
    pub followed_by: HashMap<String, BTreeSet<String>>,
    /// Follow id → (local actor, followed URL), for matching the Accept that answers it.
    pub follows_sent: HashMap<ActivityId, (String, String)>,
    /// Local actor name → the outbox seq up to which the relay handed everything to delivery.
    pub relay_cursors: HashMap<String, u64>,
}

/// The URL of local actor `name` on a node whose public base URL is `base`.
pub fn actor_url(base: &str, name: &str) -> String {
    format!("{}/actors/{name}", base.trim_end_matches('/'))
}

/// The followers collection URL of an actor; in `to`, it stands for all its followers.
pub fn followers_url(actor_url: &str) -> String {
    format!("{actor_url}/followers")
}

/// The node's own URLs, as peers reach its gateway.
#[derive(Debug, Clone)]
pub struct NodeUrls {
    /// The public base URL, without a trailing slash.
    pub base: String,
    /// The node inbox its actor documents advertise, `<base>/inbox`; empty when the node
    /// advertises none (peers then POST to each actor's inbox).
    pub shared_inbox: String,
}

impl NodeUrls {
    pub fn new(public_url: &str, advertise_node_inbox: bool) -> NodeUrls {
        let base = public_url.trim_end_matches('/').to_owned();
        let shared_inbox = if advertise_node_inbox {
            format!("{base}/inbox")
        } else {
            String::new()
        };
        NodeUrls { base, shared_inbox }
    }
}

pub fn local_document(node: &NodeUrls, name: &str, key: &SigningKey) -> ActorDocument {
    let url = actor_url(&node.base, name);
    let mut document = fedsx_wire::document::new(&url, name, &key.verifying_key(), &node.shared_inbox);
    document.rsa_key_id = fedsx_activitypub::json::key_id(&url);
    document
}

impl State {
    /// Applies one journal record; what it asks the world to do besides (`effects.rs`).
    pub fn apply(&mut self, record: JournalRecord, secret: &NodeSecret, node: &NodeUrls) -> Vec<Effect> {
        let Some(record) = record.record else { return Vec::new() };
        let effects = crate::effects::of(&record);
        self.change(record, secret, node);
        effects
    }

    fn change(&mut self, record: Record, secret: &NodeSecret, node: &NodeUrls) {
        match record {
            Record::ActorCreated(created) => {
                if let Some(actor) = self.actors.get_mut(&created.name) {
                    // Journaled again to give an older actor its RSA key.
                    if actor.rsa_sealed.is_empty() && !created.rsa_key.is_empty() {
                        actor.rsa_sealed = created.rsa_key;
                        actor.document.rsa_public_key_pem = created.rsa_public_pem;
                    }
                    return;
                }
                let key = crate::keys::actor_key(secret, &created.name);
                let mut document = local_document(node, &created.name, &key);
                document.rsa_public_key_pem = created.rsa_public_pem;
                self.actors.insert(
                    created.name,
                    LocalActor {
                        document,
                        key,
                        rsa_sealed: created.rsa_key,
                    },
                );
            }
            Record::PeerRegistered(registered) => {
                if let Some(document) = registered.document {
                    self.peers.insert(document.id.clone(), document);
                }
            }
            Record::FollowerAdded(added) => {
                if let Some(id) = ActivityId::from_slice(&added.follow_id) {
                    self.followers
                        .entry(added.actor)
                        .or_default()
                        .insert(added.follower, id);
                }
            }
            Record::FollowerRemoved(removed) => {
                if let Some(followers) = self.followers.get_mut(&removed.actor) {
                    followers.remove(&removed.follower);
                    if followers.is_empty() {
                        self.followers.remove(&removed.actor);
                    }
                }
            }
            Record::FollowSent(sent) => {
                if let Some(id) = ActivityId::from_slice(&sent.follow_id) {
                    self.follows_sent.insert(id, (sent.actor, sent.followed));
                }
            }
            Record::FollowingAdded(added) => {
                self.followed_by
                    .entry(added.followed.clone())
                    .or_default()
                    .insert(added.actor.clone());
                self.following.entry(added.actor).or_default().insert(added.followed);
            }
            Record::RelayCursor(cursor) => {
                let seq = self.relay_cursors.entry(cursor.actor).or_default();
                *seq = (*seq).max(cursor.seq);
            }
            // Read by `partition::Journals::open` before the state exists, and by the owner
            // of a partition that finds itself fenced (`ownership/`).
            Record::NodeCreated(_) | Record::PartitionOwned(_) => {}
        }
    }

    /// The journal records that rebuild this state from an empty one (a snapshot's content).
    pub fn as_records(&self) -> Vec<JournalRecord> {
        use fedsx_proto::kernel::v1::{
            ActorCreated, FollowSent, FollowerAdded, FollowingAdded, PeerRegistered, RelayCursor,
        };
        let mut records = Vec::new();
        let mut push = |record: Record| records.push(JournalRecord { record: Some(record) });
        for (name, actor) in &self.actors {
            push(Record::ActorCreated(ActorCreated {
                name: name.clone(),
                created_ms: 0,
                rsa_key: actor.rsa_sealed.clone(),
                rsa_public_pem: actor.document.rsa_public_key_pem.clone(),
            }));
        }
        for document in self.peers.values() {
            push(Record::PeerRegistered(PeerRegistered {
                document: Some(document.clone()),
            }));
        }
        for (actor, followers) in &self.followers {
            for (follower, follow_id) in followers {
                push(Record::FollowerAdded(FollowerAdded {
                    actor: actor.clone(),
                    follower: follower.clone(),
                    follow_id: follow_id.0.to_vec().into(),
                }));
            }
        }
        for (follow_id, (actor, followed)) in &self.follows_sent {
            push(Record::FollowSent(FollowSent {
                actor: actor.clone(),
                followed: followed.clone(),
                follow_id: follow_id.0.to_vec().into(),
            }));
        }
        for (actor, following) in &self.following {
            for followed in following {
                push(Record::FollowingAdded(FollowingAdded {
                    actor: actor.clone(),
                    followed: followed.clone(),
                    accept_id: Default::default(),
                }));
            }
        }
        for (actor, seq) in &self.relay_cursors {
            push(Record::RelayCursor(RelayCursor {
                actor: actor.clone(),
                seq: *seq,
            }));
        }
        records
    }

    /// The first part in which `other` differs from this state, named with both values.
    pub fn difference(&self, other: &State) -> Result<(), String> {
        fn part<T: PartialEq + std::fmt::Debug>(name: &str, mine: &T, theirs: &T) -> Result<(), String> {
            if mine == theirs {
                return Ok(());
            }
            Err(format!("{name} differ:\n  live:     {mine:?}\n  replayed: {theirs:?}"))
        }
        part("actors", &self.actors, &other.actors)?;
        part("peers", &self.peers, &other.peers)?;
        part("followers", &self.followers, &other.followers)?;
        part("following", &self.following, &other.following)?;
        part("followed_by", &self.followed_by, &other.followed_by)?;
        part("follows_sent", &self.follows_sent, &other.follows_sent)?;
        part("relay_cursors", &self.relay_cursors, &other.relay_cursors)
    }

    pub fn actor(&self, name: &str) -> Option<&LocalActor> {
        self.actors.get(name)
    }

    /// The local actors (name, URL) an activity from `sender` addressed `to` is for, by
    /// name: those named in `to` (URLs starting with `actors_prefix`, `<base>/actors/`),
    /// and, when `to` holds the sender's followers collection, every local actor following
    /// the sender.
    pub fn local_recipients(&self, actors_prefix: &str, sender: &str, to: &[String]) -> Vec<(String, String)> {
        let followers = followers_url(sender);
        let mut names = BTreeSet::new();
        for target in to {
            if *target == followers {
                names.extend(self.followed_by.get(sender).into_iter().flatten().map(String::as_str));
            } else if let Some(name) = target.strip_prefix(actors_prefix) {
                names.insert(name);
            }
        }
        names
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), self.actor(name)?.document.id.clone())))
            .collect()
    }

    /// The document of the actor at `url`: a local actor (its URL starts with
    /// `actors_prefix`, `<base>/actors/`) or a known peer.
    pub fn document(&self, actors_prefix: &str, url: &str) -> Option<&ActorDocument> {
        self.known(actors_prefix, url).map(|(document, _)| document)
    }

    /// As [`State::document`], with whether it is a local actor's.
    pub fn known(&self, actors_prefix: &str, url: &str) -> Option<(&ActorDocument, bool)> {
        if let Some(actor) = url.strip_prefix(actors_prefix).and_then(|name| self.actor(name)) {
            return Some((&actor.document, true));
        }
        self.peers.get(url).map(|document| (document, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_activity_is_for_the_local_actors_it_names_and_those_following_its_sender() {
        let node = NodeUrls::new("https://b.example", true);
        let mut state = State::default();
        for name in ["ann", "bob", "cat"] {
            let key = SigningKey::from_bytes(&[name.len() as u8; 32]);
            let document = local_document(&node, name, &key);
            let actor = LocalActor {
                document,
                key,
                rsa_sealed: Default::default(),
            };
            state.actors.insert(name.to_owned(), actor);
        }
        let sender = "https://a.example/actors/zed";
        state
            .followed_by
            .insert(sender.to_owned(), ["ann".to_owned(), "cat".to_owned()].into());
        let prefix = "https://b.example/actors/";
        let url = |name: &str| (name.to_owned(), format!("{prefix}{name}"));
        let to = |targets: &[&str]| targets.iter().map(|t| t.to_string()).collect::<Vec<_>>();

        let named = to(&[
            "https://b.example/actors/bob",
            "https://b.example/actors/nobody",
            "https://c.example/actors/bob",
        ]);
        assert_eq!(
            state.local_recipients(prefix, sender, &named),
            [url("bob")],
            "named, and existing, and local"
        );
        let followers = to(&[&followers_url(sender), "https://b.example/actors/ann"]);
        assert_eq!(
            state.local_recipients(prefix, sender, &followers),
            [url("ann"), url("cat")],
            "its followers here, each once"
        );
        let others = to(&[&followers_url("https://a.example/actors/yan")]);
        assert_eq!(
            state.local_recipients(prefix, sender, &others),
            [],
            "another actor's followers are not its"
        );
    }
}
