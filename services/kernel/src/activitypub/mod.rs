//! The kernel's ActivityPub face: actors' RSA keys, inbound ActivityPub activities
//! (signature, key owner, inbox, side effects) and what the relay hands delivery for
//! ActivityPub followers. The native pipeline is untouched; both keep to the same state,
//! logs and delivery queue.

mod inbound;
pub(crate) mod outbound;

pub use inbound::ApRequest;

use crate::error::KernelError;
use crate::kernel::{Kernel, derived_id};
use crate::keys::NodeSecret;
use fedsx_activitypub::keys::ActorKey;
use fedsx_proto::kernel::v1::ActorCreated;
use fedsx_proto::kernel::v1::journal_record::Record;
use std::sync::Arc;

/// A new RSA key for actor `name`: (sealed under the node secret, public PEM). Generated
/// off the async threads.
pub(crate) async fn new_rsa_key(secret: &NodeSecret, name: &str) -> Result<(bytes::Bytes, String), KernelError> {
    let secret = secret.to_bytes();
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let key = ActorKey::generate().map_err(|err| KernelError::Internal(err.to_string()))?;
        let sealed = key
            .seal(&secret, &name)
            .map_err(|err| KernelError::Internal(err.to_string()))?;
        Ok((sealed.into(), key.public_pem()))
    })
    .await
    .map_err(|err| KernelError::Internal(format!("key generation stopped: {err}")))?
}

/// Gives every actor made before ActivityPub its RSA key, in the background: the actor's
/// record is journaled again with the key, by the replica serving its partition (once per
/// actor).
pub(crate) fn spawn_key_backfill(kernel: Arc<Kernel>) {
    let missing: Vec<String> = kernel
        .read_state()
        .actors
        .iter()
        .filter(|(name, actor)| actor.rsa_sealed.is_empty() && kernel.serves(name))
        .map(|(name, _)| name.clone())
        .collect();
    if missing.is_empty() {
        return;
    }
    kernel.tasks.clone().spawn(async move {
        for name in missing {
            let done = async {
                let (rsa_key, rsa_public_pem) = new_rsa_key(&kernel.secret, &name).await?;
                let record = Record::ActorCreated(ActorCreated {
                    name: name.clone(),
                    created_ms: kernel.now_ms(),
                    rsa_key,
                    rsa_public_pem,
                });
                kernel
                    .journal(derived_id("actor-rsa", &[name.as_bytes()]), record)
                    .await
            };
            match done.await {
                Ok(_) => tracing::info!(actor = %name, "gave an older actor its ActivityPub RSA key"),
                Err(err) => {
                    tracing::warn!(actor = %name, error = %err, "could not give the actor an RSA key; retried at the next start")
                }
            }
        }
    });
}
