//! Streams and entries as the domain sees them, validated once at the edge.

use crate::error::StoreError;
use bytes::Bytes;

/// Input limits. Requests past them are refused with INVALID_ARGUMENT before anything is
/// written.
pub mod limits {
    /// Longest actor name of a stream, in bytes.
    pub const MAX_ACTOR_BYTES: usize = 256;
    /// Longest entry id, in bytes (an activity id is 32).
    pub const MAX_ID_BYTES: usize = 64;
    /// Largest entry payload, in bytes (1 MiB).
    pub const MAX_ENTRY_BYTES: usize = 1 << 20;
    /// Most entries in one append.
    pub const MAX_ENTRIES_PER_APPEND: usize = 1024;
    /// Largest gRPC request the service decodes (16 MiB).
    pub const MAX_REQUEST_BYTES: usize = 16 << 20;
    /// Entries a read returns when the caller asks for 0.
    pub const DEFAULT_READ_LIMIT: usize = 256;
    /// Most entries one read returns.
    pub const MAX_READ_LIMIT: usize = 1024;
    /// Most entry bytes one read returns: a page ends before the entry that would pass it
    /// (but always holds at least one entry), so a page of large entries stays bounded.
    pub const MAX_READ_BYTES: usize = 4 << 20;

    /// The number of entries a read asking for `limit` returns at most.
    pub fn read_limit(limit: usize) -> usize {
        match limit {
            0 => DEFAULT_READ_LIMIT,
            n => n.min(MAX_READ_LIMIT),
        }
    }
}

/// What a stream holds. Every actor has one stream of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Inbox,
    Outbox,
    Meta,
    Flow,
}

impl Kind {
    /// The number this kind is stored under. Never renumber: it is part of the on-disk keys
    /// of every engine.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Kind::Inbox => 1,
            Kind::Outbox => 2,
            Kind::Meta => 3,
            Kind::Flow => 4,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Kind> {
        [Kind::Inbox, Kind::Outbox, Kind::Meta, Kind::Flow]
            .into_iter()
            .find(|kind| kind.tag() == tag)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Inbox => "inbox",
            Kind::Outbox => "outbox",
            Kind::Meta => "meta",
            Kind::Flow => "flow",
        }
    }
}

/// One stream: an actor's log of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    actor: String,
    kind: Kind,
}

impl StreamId {
    pub fn new(actor: impl Into<String>, kind: Kind) -> Result<Self, StoreError> {
        let actor = actor.into();
        if actor.is_empty() {
            return Err(StoreError::EmptyActor);
        }
        if actor.len() > limits::MAX_ACTOR_BYTES {
            return Err(StoreError::ActorTooLong { len: actor.len() });
        }
        // PostgreSQL text cannot hold NUL; no engine accepts what another would refuse.
        if actor.contains('\0') {
            return Err(StoreError::ActorHasNul);
        }
        Ok(StreamId { actor, kind })
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.actor, self.kind.name())
    }
}

/// An entry to append: its idempotency id (usually the activity id) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub id: Bytes,
    pub data: Bytes,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub id: Bytes,
    pub data: Bytes,
}

/// Checks an append's entries against the limits; the error names the offending entry.
pub(crate) fn validate_entries(entries: &[NewEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Err(StoreError::NoEntries);
    }
    if entries.len() > limits::MAX_ENTRIES_PER_APPEND {
        return Err(StoreError::TooManyEntries { count: entries.len() });
    }
    for (index, entry) in entries.iter().enumerate() {
        if entry.id.is_empty() || entry.id.len() > limits::MAX_ID_BYTES {
            return Err(StoreError::BadId {
                index,
                len: entry.id.len(),
            });
        }
        if entry.data.len() > limits::MAX_ENTRY_BYTES {
            return Err(StoreError::EntryTooLarge {
                index,
                len: entry.data.len(),
            });
        }
    }
    Ok(())
}
