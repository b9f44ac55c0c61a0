//! On-disk key and value layout. Stream keys are length-prefixed so no actor name can be a
//! prefix of another's keys:
//!
//! - `entries`: `stream ‖ seq (u64 BE)` → `id_len (u8) ‖ id ‖ data`
//! - `ids`:     `stream ‖ id` → `seq (u64 BE)`
//! - `tips`:    `stream` → `tip (u64 BE)`
//!
//! where `stream = kind tag (u8) ‖ actor length (u16 BE) ‖ actor bytes`.

use crate::error::StoreError;
use crate::stream::{Entry, Kind, StreamId};
use bytes::Bytes;

pub(crate) const CF_ENTRIES: &str = "entries";
pub(crate) const CF_IDS: &str = "ids";
pub(crate) const CF_TIPS: &str = "tips";
pub(crate) const CF_META: &str = "meta";
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

pub(crate) fn stream_key(stream: &StreamId) -> Vec<u8> {
    let actor = stream.actor().as_bytes();
    let mut key = Vec::with_capacity(3 + actor.len());
    key.push(stream.kind().tag());
    // StreamId::new caps the actor at 256 bytes, so it fits in a u16.
    key.extend_from_slice(&(actor.len() as u16).to_be_bytes());
    key.extend_from_slice(actor);
    key
}

/// The stream a `stream_key` names (for export).
pub(crate) fn decode_stream_key(key: &[u8]) -> Result<StreamId, StoreError> {
    let corrupt = || StoreError::internal(format!("corrupt stream key of {} bytes", key.len()));
    let (&tag, rest) = key.split_first().ok_or_else(corrupt)?;
    let kind = Kind::from_tag(tag).ok_or_else(corrupt)?;
    let len = u16::from_be_bytes(rest.get(..2).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?) as usize;
    let actor = rest.get(2..2 + len).ok_or_else(corrupt)?;
    let actor = String::from_utf8(actor.to_vec()).map_err(|_| corrupt())?;
    StreamId::new(actor, kind)
}

pub(crate) fn entry_key(stream_key: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_key.len() + 8);
    key.extend_from_slice(stream_key);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn id_key(stream_key: &[u8], id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_key.len() + id.len());
    key.extend_from_slice(stream_key);
    key.extend_from_slice(id);
    key
}

pub(crate) fn encode_u64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::internal(format!("corrupt counter of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(array))
}

pub(crate) fn encode_entry(id: &[u8], data: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + id.len() + data.len());
    // Ids are capped at 64 bytes by validation.
    value.push(id.len() as u8);
    value.extend_from_slice(id);
    value.extend_from_slice(data);
    value
}

/// Decodes an `entries` row; `key` must start with `stream_key`.
pub(crate) fn decode_entry(stream_key: &[u8], key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
    let seq = decode_u64(&key[stream_key.len()..])?;
    let id_len = *value
        .first()
        .ok_or_else(|| StoreError::internal(format!("corrupt entry at seq {seq}: empty")))? as usize;
    if value.len() < 1 + id_len {
        return Err(StoreError::internal(format!(
            "corrupt entry at seq {seq}: truncated id"
        )));
    }
    Ok(Entry {
        seq,
        id: Bytes::copy_from_slice(&value[1..1 + id_len]),
        data: Bytes::copy_from_slice(&value[1 + id_len..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_decode_to_their_stream() {
        let stream = StreamId::new("zoë", Kind::Flow).unwrap();
        assert_eq!(decode_stream_key(&stream_key(&stream)).unwrap(), stream);
        assert!(decode_stream_key(&[9, 0]).is_err());
    }

    #[test]
    fn no_actor_is_a_prefix_of_another() {
        let a = stream_key(&StreamId::new("ab", Kind::Inbox).unwrap());
        let b = stream_key(&StreamId::new("abc", Kind::Inbox).unwrap());
        assert!(!b.starts_with(&a));
        let outbox = stream_key(&StreamId::new("ab", Kind::Outbox).unwrap());
        assert_ne!(a, outbox);
    }

    #[test]
    fn entries_sort_by_seq() {
        let s = stream_key(&StreamId::new("alice", Kind::Outbox).unwrap());
        assert!(entry_key(&s, 9) < entry_key(&s, 10));
        assert!(entry_key(&s, 255) < entry_key(&s, 256));
    }

    #[test]
    fn entry_round_trips() {
        let s = stream_key(&StreamId::new("alice", Kind::Outbox).unwrap());
        let key = entry_key(&s, 42);
        let value = encode_entry(b"id-1", b"payload");
        let entry = decode_entry(&s, &key, &value).unwrap();
        assert_eq!(entry.seq, 42);
        assert_eq!(&entry.id[..], b"id-1");
        assert_eq!(&entry.data[..], b"payload");
    }

    #[test]
    fn truncated_entry_is_an_error_not_a_panic() {
        let s = stream_key(&StreamId::new("alice", Kind::Outbox).unwrap());
        let key = entry_key(&s, 1);
        assert!(decode_entry(&s, &key, &[10, 1, 2]).is_err());
        assert!(decode_entry(&s, &key, &[]).is_err());
    }
}
