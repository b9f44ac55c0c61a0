//! Followers that are gone: a destination answered 410 Gone for a recipient, so delivery
//! dead-lettered the activity with that answer (`status 410`, or `status 410 from <inbox>`
//! for one of several inboxes). Every [`SWEEP_EVERY`] the kernel reads the dead letters of
//! destinations whose count changed and removes each such recipient from the sender's
//! followers — a `FollowerRemoved` journal record with the reason, so the removal is in the
//! follower list's history — and counts it (`fedsx_kernel_followers_gone_total`).

use crate::delivery::{DeadLetter, HandoffError};
use crate::kernel::{Kernel, derived_id};
use fedsx_proto::kernel::v1::FollowerRemoved;
use fedsx_proto::kernel::v1::journal_record::Record;
use fedsx_runtime::CancellationToken;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub(crate) fn spawn(kernel: Arc<Kernel>, shutdown: CancellationToken) {
    kernel.tasks.clone().spawn(async move {
        // Dead letters per destination at the last sweep: unchanged ones are not read again.
        let mut seen: HashMap<String, u64> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
            if let Err(err) = kernel.sweep_gone(&mut seen).await {
                tracing::debug!(error = %err, "reading dead letters for gone followers failed; will retry");
            }
        }
    });
}

/// The recipients a dead letter says are gone (their node answered 410 for them).
pub(crate) fn gone_recipients(dead: &DeadLetter) -> Vec<String> {
    match dead.recipients.as_slice() {
        [(actor, _)] if dead.last_error == "status 410" => vec![actor.clone()],
        recipients => recipients
            .iter()
            .filter(|(_, inbox)| !inbox.is_empty() && dead.last_error.contains(&format!("status 410 from {inbox}")))
            .map(|(actor, _)| actor.clone())
            .collect(),
    }
}

impl Kernel {
    async fn sweep_gone(&self, seen: &mut HashMap<String, u64>) -> Result<(), HandoffError> {
        for (peer, count) in self.ports.delivery.dead_letter_counts().await? {
            if seen.get(&peer) == Some(&count) {
                continue;
            }
            for dead in self.ports.delivery.dead_letters(peer.clone()).await? {
                if !self.serves(&dead.sender) {
                    // The replica serving the sender's partition removes its followers.
                    continue;
                }
                for follower in gone_recipients(&dead) {
                    if let Err(err) = self.follower_gone(&dead.sender, &follower, &dead.last_error).await {
                        tracing::warn!(%follower, error = %err, "removing a gone follower failed; will retry");
                        return Ok(());
                    }
                }
            }
            seen.insert(peer, count);
        }
        Ok(())
    }

    /// Removes `follower` from the followers of local actor `sender` (a URL), if it follows.
    async fn follower_gone(&self, sender: &str, follower: &str, answer: &str) -> Result<(), crate::KernelError> {
        let Some(actor) = self.local_name(sender) else {
            return Ok(());
        };
        let follow_id = self
            .read_state()
            .followers
            .get(actor)
            .and_then(|followers| followers.get(follower))
            .copied();
        let Some(follow_id) = follow_id else { return Ok(()) };
        let record = Record::FollowerRemoved(FollowerRemoved {
            actor: actor.to_owned(),
            follower: follower.to_owned(),
            undo_id: Default::default(),
            reason: format!("its node answered 410 Gone ({answer})"),
        });
        let id = derived_id("follower-gone", &[actor.as_bytes(), follower.as_bytes(), &follow_id.0]);
        if self.journal(id, record).await? {
            crate::metrics::follower_gone();
            tracing::info!(actor, follower, "follower removed: its node answered 410 Gone for it");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(error: &str, recipients: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            last_error: error.into(),
            sender: "https://a.example/actors/alice".into(),
            recipients: recipients.iter().map(|(a, i)| (a.to_string(), i.to_string())).collect(),
        }
    }

    #[test]
    fn a_410_names_the_recipients_that_are_gone() {
        let b = ("https://n.example/actors/b", "https://n.example/actors/b/inbox");
        let c = ("https://n.example/actors/c", "https://n.example/actors/c/inbox");
        assert_eq!(gone_recipients(&dead("status 410", &[b])), [b.0]);
        assert!(gone_recipients(&dead("status 404", &[b])).is_empty());
        assert!(
            gone_recipients(&dead("status 410", &[b, c])).is_empty(),
            "which one is not known"
        );
        let one_of_two = dead("status 410 from https://n.example/actors/c/inbox", &[b, c]);
        assert_eq!(gone_recipients(&one_of_two), [c.0]);
    }
}
