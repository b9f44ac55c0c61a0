//! The operator's commands: talk to a node's kernel (and delivery) over gRPC and print what
//! a person wants to read, or JSON with `--json`.

use anyhow::Context;
use fedsx_proto::delivery::v1::delivery_client::DeliveryClient;
use fedsx_proto::delivery::v1::{ListDeadLettersRequest, ListPeersRequest, PeerStatus, RedriveRequest, ReviveRequest};
use fedsx_proto::kernel::v1::kernel_client::KernelClient;
use fedsx_proto::kernel::v1::{
    ActorDocument, ActorListRequest, ActorRequest, CreateActorRequest, FollowRequest, FollowerHistoryRequest,
    GetActorRequest, ListGapsRequest, ListReplicasRequest, LogEntry, LogKind, PublishRequest, ReadLogRequest,
};
use fedsx_proto::wire::v1::ActivityType;
use fedsx_runtime::trace_context::{TracedChannel, lazy_channel};
use futures::StreamExt;
use serde_json::json;

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The node's kernel.
    #[arg(long, env = "FEDSX_KERNEL", default_value = "http://127.0.0.1:8701")]
    pub(crate) kernel: String,
    /// The node's delivery service.
    #[arg(long, env = "FEDSX_DELIVERY", default_value = "http://127.0.0.1:8703")]
    delivery: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ActorCommand {
    /// Create a local actor (and its key).
    Create {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// An actor's document, inbox and outbox tips, followers and following.
    Show {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// The history of an actor's follower list: who was added and removed, and why.
    History {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Which {
    Inbox,
    Outbox,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    #[command(subcommand)]
    Actor(ActorCommand),
    /// Durable flows: start, signal, show, list.
    #[command(subcommand)]
    Flow(crate::flow_cli::FlowCommand),
    /// LOCAL follows the actor at REMOTE_ACTOR_URL (recorded once its Accept arrives).
    Follow {
        local: String,
        remote: String,
        #[command(flatten)]
        target: Target,
    },
    /// Publish a note (a Create) from ACTOR to its followers.
    Publish {
        actor: String,
        #[arg(long)]
        content: String,
        /// Also address the public (ActivityPub servers show it publicly); by default it is
        /// for the followers only.
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print an actor's inbox or outbox, decoded; with --follow, keep printing new entries.
    Log {
        actor: String,
        which: Which,
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delivery queues per peer.
    Deliveries {
        #[command(flatten)]
        target: Target,
    },
    /// Dead letters of one peer, or of all.
    DeadLetters {
        peer: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Gaps in senders' sequences this node could not fill from their outboxes.
    Gaps {
        #[command(flatten)]
        target: Target,
    },
    /// The node's live kernel replicas and the partitions each serves.
    Replicas {
        #[command(flatten)]
        target: Target,
    },
    /// Move a peer's dead letters (all, or the given hex ids) back to pending.
    Redrive {
        peer: String,
        ids: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Make an unavailable destination available again: new deliveries to it are sent.
    Revive {
        peer: String,
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) fn kernel(target: &Target) -> anyhow::Result<KernelClient<TracedChannel>> {
    Ok(KernelClient::new(lazy_channel("--kernel", &target.kernel)?))
}

fn delivery(target: &Target) -> anyhow::Result<DeliveryClient<TracedChannel>> {
    Ok(DeliveryClient::new(lazy_channel("--delivery", &target.delivery)?))
}

/// A gRPC failure as one line naming the service.
pub(crate) fn failed(service: &str, url: &str) -> impl Fn(tonic::Status) -> anyhow::Error {
    let (service, url) = (service.to_owned(), url.to_owned());
    move |status| anyhow::anyhow!("{service} at {url}: {}", status.message())
}

impl Command {
    fn target(&self) -> &Target {
        match self {
            Command::Actor(
                ActorCommand::Create { target, .. }
                | ActorCommand::Show { target, .. }
                | ActorCommand::History { target, .. },
            )
            | Command::Follow { target, .. }
            | Command::Publish { target, .. }
            | Command::Log { target, .. }
            | Command::Deliveries { target }
            | Command::Gaps { target }
            | Command::Replicas { target }
            | Command::DeadLetters { target, .. }
            | Command::Redrive { target, .. }
            | Command::Revive { target, .. } => target,
            Command::Flow(flow) => flow.target(),
        }
    }
}

/// Every peer's delivery status.
async fn list_peers(client: &DeliveryClient<TracedChannel>) -> Result<Vec<PeerStatus>, tonic::Status> {
    fedsx_runtime::paging::all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let request = ListPeersRequest {
                page_size: 0,
                page_token,
            };
            let page = client.list_peers(request).await?.into_inner();
            Ok((page.peers, page.next_page_token))
        }
    })
    .await
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    let target = command.target().clone();
    let k = || failed("kernel", &target.kernel);
    let d = || failed("delivery", &target.delivery);
    match command {
        Command::Flow(flow) => crate::flow_cli::run(flow).await?,
        Command::Actor(ActorCommand::Create { name, .. }) => {
            let document = kernel(&target)?
                .create_actor(CreateActorRequest { name })
                .await
                .map_err(k())?
                .into_inner();
            print_document(&target, &document);
        }
        Command::Actor(ActorCommand::History { name, .. }) => {
            let mut client = kernel(&target)?;
            let mut after = 0;
            loop {
                let request = FollowerHistoryRequest {
                    name: name.clone(),
                    after,
                    limit: 1000,
                };
                let page = client.follower_history(request).await.map_err(k())?.into_inner();
                for event in &page.events {
                    if target.json {
                        println!(
                            "{}",
                            json!({ "journal_seq": event.journal_seq, "follower": event.follower, "added": event.added, "reason": event.reason })
                        );
                    } else {
                        let sign = if event.added { '+' } else { '-' };
                        println!("#{:<7} {sign} {}  {}", event.journal_seq, event.follower, event.reason);
                    }
                }
                if page.done {
                    break;
                }
                after = page.next_after;
            }
        }
        Command::Actor(ActorCommand::Show { name, .. }) => {
            let mut client = kernel(&target)?;
            let document = client
                .get_actor(GetActorRequest { name: name.clone() })
                .await
                .map_err(k())?
                .into_inner();
            let tips = client
                .tips(ActorRequest { name: name.clone() })
                .await
                .map_err(k())?
                .into_inner();
            let list = |page_token: String| ActorListRequest {
                name: name.clone(),
                page_size: 0,
                page_token,
            };
            let followers = fedsx_runtime::paging::all_pages(|token| {
                let (mut client, request) = (client.clone(), list(token));
                async move {
                    let page = client.followers(request).await?.into_inner();
                    Ok((page.actors, page.next_page_token))
                }
            })
            .await
            .map_err(k())?;
            let following = fedsx_runtime::paging::all_pages(|token| {
                let (mut client, request) = (client.clone(), list(token));
                async move {
                    let page = client.following(request).await?.into_inner();
                    Ok((page.actors, page.next_page_token))
                }
            })
            .await
            .map_err(k())?;
            if target.json {
                let mut out = fedsx_wire::document::to_json(&document);
                out["inbox_tip"] = json!(tips.inbox_tip);
                out["outbox_tip"] = json!(tips.outbox_tip);
                out["followers"] = json!(followers);
                out["following"] = json!(following);
                println!("{out}");
            } else {
                print_document(&target, &document);
                println!("  inbox tip   {}\n  outbox tip  {}", tips.inbox_tip, tips.outbox_tip);
                println!("  followers   {}", listing(&followers));
                println!("  following   {}", listing(&following));
            }
        }
        Command::Follow { local, remote, .. } => {
            let request = FollowRequest {
                actor: local.clone(),
                remote: remote.clone(),
            };
            let sent = kernel(&target)?.follow(request).await.map_err(k())?.into_inner();
            print_published(
                &target,
                &format!("{local} sent a Follow to {remote}"),
                sent.seq,
                &sent.id,
            );
        }
        Command::Publish {
            actor, content, public, ..
        } => {
            let mut to = vec!["followers".to_owned()];
            if public {
                to.push("public".into());
            }
            let request = PublishRequest {
                actor: actor.clone(),
                r#type: ActivityType::Create.into(),
                object: String::new(),
                to,
                content,
                once_key: Default::default(),
            };
            let published = kernel(&target)?.publish(request).await.map_err(k())?.into_inner();
            print_published(
                &target,
                &format!("{actor} published a note"),
                published.seq,
                &published.id,
            );
        }
        Command::Log {
            actor, which, follow, ..
        } => {
            let kind = match which {
                Which::Inbox => LogKind::Inbox,
                Which::Outbox => LogKind::Outbox,
            };
            let mut client = kernel(&target)?;
            let request = ReadLogRequest {
                actor,
                kind: kind.into(),
                after: 0,
                limit: 0,
            };
            if follow {
                let mut entries = client.tail_log(request).await.map_err(k())?.into_inner();
                while let Some(entry) = entries.next().await {
                    print_entry(&target, &entry.map_err(k())?);
                }
            } else {
                let mut after = 0;
                loop {
                    let page = client
                        .read_log(ReadLogRequest {
                            after,
                            ..request.clone()
                        })
                        .await
                        .map_err(k())?
                        .into_inner();
                    let Some(last) = page.entries.last() else { break };
                    after = last.seq;
                    page.entries.iter().for_each(|e| print_entry(&target, e));
                    if after >= page.tip {
                        break;
                    }
                }
            }
        }
        Command::Deliveries { .. } => {
            let peers = list_peers(&delivery(&target)?).await.map_err(d())?;
            if target.json {
                println!("{}", json!(peers.iter().map(status_json).collect::<Vec<_>>()));
            } else if peers.is_empty() {
                println!("no deliveries yet");
            } else {
                println!(
                    "{:<50} {:>8} {:>9} {:>5} {:>8}  last error",
                    "peer", "pending", "delivered", "dead", "attempts"
                );
                for p in &peers {
                    let unavailable = if p.unavailable { "UNAVAILABLE; " } else { "" };
                    println!(
                        "{:<50} {:>8} {:>9} {:>5} {:>8}  {unavailable}{}",
                        p.peer, p.pending, p.delivered, p.dead_letters, p.head_attempts, p.last_error
                    );
                }
            }
        }
        Command::Gaps { .. } => {
            let client = kernel(&target)?;
            let gaps = fedsx_runtime::paging::all_pages(|page_token| {
                let mut client = client.clone();
                async move {
                    let request = ListGapsRequest {
                        page_size: 0,
                        page_token,
                    };
                    let page = client.list_gaps(request).await?.into_inner();
                    Ok((page.gaps, page.next_page_token))
                }
            })
            .await
            .map_err(k())?;
            if target.json {
                let gaps: Vec<_> = gaps
                    .iter()
                    .map(|g| json!({ "sender": g.sender, "first_seq": g.first_seq, "last_seq": g.last_seq, "reason": g.reason }))
                    .collect();
                println!("{}", json!(gaps));
            } else if gaps.is_empty() {
                println!("no unfilled gaps");
            } else {
                for g in &gaps {
                    println!("{}  seq {}..={}  {}", g.sender, g.first_seq, g.last_seq, g.reason);
                }
            }
        }
        Command::Replicas { .. } => {
            let mut client = kernel(&target)?;
            let answer = client
                .list_replicas(ListReplicasRequest {})
                .await
                .map_err(k())?
                .into_inner();
            if target.json {
                let replicas: Vec<_> = answer
                    .replicas
                    .iter()
                    .map(|r| json!({ "id": r.id, "url": r.url, "partitions": r.partitions, "flows": r.flows }))
                    .collect();
                let all = json!({ "partitions": answer.partitions, "replicas": replicas, "unserved": answer.unserved });
                println!("{all}");
            } else {
                println!("{} partitions, {} replicas", answer.partitions, answer.replicas.len());
                for r in &answer.replicas {
                    let flows = if r.flows { "  (runs the flows)" } else { "" };
                    println!("{}  {}  partitions {:?}{flows}", r.id, r.url, r.partitions);
                }
                if !answer.unserved.is_empty() {
                    println!("not served right now (moving): {:?}", answer.unserved);
                }
            }
        }
        Command::DeadLetters { peer, .. } => {
            let client = delivery(&target)?;
            let peers = match peer {
                Some(peer) => vec![peer],
                None => list_peers(&client)
                    .await
                    .map_err(d())?
                    .into_iter()
                    .map(|p| p.peer)
                    .collect(),
            };
            let mut all = Vec::new();
            for peer in peers {
                let dead = fedsx_runtime::paging::all_pages(|page_token| {
                    let mut client = client.clone();
                    let request = ListDeadLettersRequest {
                        peer: peer.clone(),
                        page_size: 0,
                        page_token,
                    };
                    async move {
                        let page = client.list_dead_letters(request).await?.into_inner();
                        Ok((page.dead_letters, page.next_page_token))
                    }
                })
                .await
                .map_err(d())?;
                for letter in dead {
                    all.push(json!({ "peer": peer, "id": hex::encode(&letter.id), "attempts": letter.attempts, "last_error": letter.last_error }));
                }
            }
            if target.json {
                println!("{}", json!(all));
            } else if all.is_empty() {
                println!("no dead letters");
            } else {
                for letter in &all {
                    println!(
                        "{}  {}  attempts {}  {}",
                        letter["peer"].as_str().unwrap_or_default(),
                        letter["id"].as_str().unwrap_or_default(),
                        letter["attempts"],
                        letter["last_error"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        Command::Redrive { peer, ids, .. } => {
            let ids = ids
                .iter()
                .map(|id| {
                    fedsx_wire::ActivityId::from_hex(id)
                        .map(|id| id.0.to_vec().into())
                        .with_context(|| format!("{id} is not a 64-digit hex activity id"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let answer = delivery(&target)?
                .redrive(RedriveRequest {
                    peer: peer.clone(),
                    ids,
                })
                .await
                .map_err(d())?
                .into_inner();
            if target.json {
                println!("{}", json!({ "peer": peer, "redriven": answer.redriven }));
            } else {
                println!("{} dead letter(s) of {peer} back to pending", answer.redriven);
            }
        }
        Command::Revive { peer, .. } => {
            let request = ReviveRequest { peer: peer.clone() };
            delivery(&target)?.revive(request).await.map_err(d())?;
            if target.json {
                println!("{}", json!({ "peer": peer, "revived": true }));
            } else {
                println!("{peer} is available again");
            }
        }
    }
    Ok(())
}

fn listing(actors: &[String]) -> String {
    if actors.is_empty() {
        "(none)".to_owned()
    } else {
        actors.join(", ")
    }
}

fn print_document(target: &Target, document: &ActorDocument) {
    if target.json {
        println!("{}", fedsx_wire::document::to_json(document));
    } else {
        println!(
            "{}\n  id          {}\n  inbox       {}\n  outbox      {}\n  key id      {}",
            document.name, document.id, document.inbox, document.outbox, document.key_id
        );
    }
}

fn print_published(target: &Target, what: &str, seq: u64, id: &[u8]) {
    if target.json {
        println!("{}", json!({ "seq": seq, "id": hex::encode(id) }));
    } else {
        println!("{what}: outbox seq {seq}, id {}", hex::encode(id));
    }
}

fn print_entry(target: &Target, entry: &LogEntry) {
    if let Some(kept) = fedsx_activitypub::inbox::read(&entry.envelope) {
        let activity = &kept.activity;
        if target.json {
            let kept = json!({ "signer": kept.signer, "key_id": kept.key_id, "signature": kept.signature, "activity": activity });
            println!(
                "{}",
                json!({ "seq": entry.seq, "id": hex::encode(&entry.id), "activitypub": kept })
            );
            return;
        }
        let object = &activity["object"];
        let what = match object.get("content").or(object.get("id")) {
            Some(serde_json::Value::String(text)) => text.clone(),
            _ => object.as_str().unwrap_or_default().to_owned(),
        };
        println!(
            "#{:<5} {:<7} from {}  {what}  (ActivityPub, {} signature)",
            entry.seq,
            activity["type"].as_str().unwrap_or("?"),
            kept.signer,
            kept.signature,
        );
        return;
    }
    let decoded = fedsx_wire::decode(&entry.envelope).ok();
    if target.json {
        let activity = decoded.as_ref().map(|r| {
            json!({ "type": format!("{:?}", r.kind), "actor": r.activity.actor, "seq": r.activity.seq, "object": r.activity.object, "to": r.activity.to, "published_ms": r.activity.published_ms, "content": r.activity.content })
        });
        println!(
            "{}",
            json!({ "seq": entry.seq, "id": hex::encode(&entry.id), "activity": activity })
        );
        return;
    }
    match decoded {
        Some(r) => {
            let what = if r.activity.content.is_empty() {
                r.activity.object.clone()
            } else {
                format!("{:?}", r.activity.content)
            };
            println!(
                "#{:<5} {:<7} from {}  {}",
                entry.seq,
                format!("{:?}", r.kind),
                r.activity.actor,
                what
            );
        }
        None => println!("#{:<5} (undecodable entry)", entry.seq),
    }
}

fn status_json(p: &PeerStatus) -> serde_json::Value {
    json!({
        "peer": p.peer, "pending": p.pending, "in_flight": p.in_flight, "delivered": p.delivered,
        "dead_letters": p.dead_letters, "head_attempts": p.head_attempts,
        "head_next_retry_ms": p.head_next_retry_ms, "last_error": p.last_error,
        "failing_since_ms": p.failing_since_ms, "unavailable": p.unavailable,
    })
}
