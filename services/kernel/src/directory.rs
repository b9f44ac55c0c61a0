//! Peer discovery: the documents of the actors activities come from — known (a local actor
//! or a peer the journal holds), else fetched from their URL and kept — and the rule for a
//! document that does not verify what arrived: fetched again at most once per interval
//! per actor (it may have rotated its key), never when it was just fetched or is local.
//! The native inbox and the ActivityPub inbox both find their sender's document here.

use crate::error::KernelError;
use crate::peers::{FetchError, PeerPort};
use crate::throttle::Throttle;
use fedsx_proto::kernel::v1::ActorDocument;
use std::sync::Arc;
use std::time::Duration;

/// How often a peer's document may be refetched because it did not verify what arrived.
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// Peers a throttle remembers at most.
const MAX_THROTTLED: usize = 100_000;

/// What the directory keeps its documents in: the kernel's state and journal.
pub(crate) trait Documents: Send + Sync {
    /// The document of the actor at `url` as known now, and whether it is a local actor.
    fn known(&self, url: &str) -> Option<(ActorDocument, bool)>;

    /// Keeps a fetched peer document (durably, when it answers).
    fn keep(&self, document: &ActorDocument) -> impl Future<Output = Result<(), KernelError>> + Send;
}

pub(crate) struct Directory {
    port: Arc<dyn PeerPort>,
    refetches: Throttle,
}

impl Directory {
    pub(crate) fn new(port: Arc<dyn PeerPort>) -> Directory {
        Directory {
            port,
            refetches: Throttle::new(REFETCH_INTERVAL, MAX_THROTTLED),
        }
    }

    /// The document of the actor at `url`: known, or fetched and kept. The outer error is
    /// the kernel's (keeping it failed), the inner the peer's.
    pub(crate) async fn document_of(
        &self,
        documents: &impl Documents,
        url: &str,
    ) -> Result<Result<ActorDocument, FetchError>, KernelError> {
        if let Some((document, _)) = documents.known(url) {
            return Ok(Ok(document));
        }
        self.fetch_and_keep(documents, url).await
    }

    /// The document of sender `url` that `accepts` (verifies what it sent): the known one
    /// when `usable`, else fetched and kept; a known one that does not accept is fetched
    /// again once (throttled per actor). Fails with what `accepts` answered, or
    /// UnknownSender when the document cannot be fetched.
    pub(crate) async fn sender(
        &self,
        documents: &impl Documents,
        url: &str,
        usable: impl Fn(&ActorDocument) -> bool,
        accepts: impl Fn(&ActorDocument) -> Result<(), KernelError>,
    ) -> Result<ActorDocument, KernelError> {
        let unknown = |err: FetchError| KernelError::UnknownSender {
            actor: url.to_owned(),
            reason: err.to_string(),
        };
        let (document, refetchable) = match documents.known(url).filter(|(document, _)| usable(document)) {
            Some((document, local)) => (document, !local),
            None => (self.fetch_and_keep(documents, url).await?.map_err(unknown)?, false),
        };
        match accepts(&document) {
            Ok(()) => Ok(document),
            Err(_) if refetchable && self.refetches.allow(url) => {
                let fresh = self.fetch_and_keep(documents, url).await?.map_err(unknown)?;
                accepts(&fresh)?;
                Ok(fresh)
            }
            Err(err) => Err(err),
        }
    }

    /// Fetches the peer document at `url` and keeps it; errors as in `document_of`.
    async fn fetch_and_keep(
        &self,
        documents: &impl Documents,
        url: &str,
    ) -> Result<Result<ActorDocument, FetchError>, KernelError> {
        let document = match self.port.fetch(url).await {
            Ok(document) => document,
            Err(err) => return Ok(Err(err)),
        };
        documents.keep(&document).await?;
        tracing::info!(peer = url, key_id = %document.key_id, "peer document fetched");
        Ok(Ok(document))
    }
}

#[cfg(test)]
mod tests;
