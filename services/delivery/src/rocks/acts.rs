//! Activities queued for several destinations, stored once: an act record holds what its
//! deliveries share (sender, trace context, enqueue time, envelope) and, per destination, two
//! small numbers — the destination's number and its route (the inbox and recipients the
//! activity goes to there, stored once per destination until they change). A delivery has
//! an item record of its own only once something happened to it (a failed send, a dead
//! letter, delivered), so queueing an activity for a thousand destinations is one write of
//! a few kilobytes, not a thousand records. An act record is keyed by its activity id and
//! act number (the enqueue order of its deliveries), so the deliveries of an id are found by
//! the id alone; it is dropped once every delivery it names is delivered, and a route once no
//! pending or dead delivery names it.

use bytes::Bytes;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ActRecord {
    #[prost(string, tag = "1")]
    pub sender: String,
    #[prost(string, tag = "2")]
    pub traceparent: String,
    #[prost(uint64, tag = "3")]
    pub enqueued_ms: u64,
    #[prost(bytes = "bytes", tag = "4")]
    pub envelope: Bytes,
    /// (destination number, route number) of each delivery, as pairs of varints.
    #[prost(bytes = "vec", tag = "5")]
    pub members: Vec<u8>,
}

/// Where a destination's deliveries go: its inbox and its recipients as stored.
#[derive(Clone, PartialEq, Message)]
pub struct RouteRecord {
    #[prost(string, tag = "1")]
    pub inbox_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub recipients: Vec<u8>,
}

pub type ActKey = [u8; 40];
pub type RouteKey = [u8; 12];

pub fn act_key(id: &[u8; 32], act: u64) -> ActKey {
    let mut key = [0; 40];
    key[..32].copy_from_slice(id);
    key[32..].copy_from_slice(&act.to_be_bytes());
    key
}

/// The act number in an act record's key.
pub fn act_of_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(32..40)?.try_into().ok()?))
}

pub fn route_key(peer: u32, route: u64) -> RouteKey {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&peer.to_be_bytes());
    key[4..].copy_from_slice(&route.to_be_bytes());
    key
}

pub fn pack_members(members: &[(u32, u64)]) -> Vec<u8> {
    let mut packed = Vec::with_capacity(members.len() * 4);
    for (peer, route) in members {
        prost::encoding::encode_varint(u64::from(*peer), &mut packed);
        prost::encoding::encode_varint(*route, &mut packed);
    }
    packed
}

/// The (destination number, route number) pairs of packed members; an error when corrupt.
pub fn members(mut packed: &[u8]) -> Result<Vec<(u32, u64)>, String> {
    let mut out = Vec::new();
    while !packed.is_empty() {
        let mut next =
            || prost::encoding::decode_varint(&mut packed).map_err(|err| format!("corrupt act record: {err}"));
        let peer = u32::try_from(next()?).map_err(|_| "corrupt act record: destination out of range".to_owned())?;
        let route = next()?;
        out.push((peer, route));
    }
    Ok(out)
}

/// The route of destination `peer` among packed members, if it is one.
pub fn route_of(packed: &[u8], peer: u32) -> Result<Option<u64>, String> {
    Ok(members(packed)?
        .into_iter()
        .find(|(p, _)| *p == peer)
        .map(|(_, route)| route))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_pack_and_unpack() {
        let list = vec![(1, 1), (300, 2), (u32::MAX, u64::MAX)];
        let packed = pack_members(&list);
        assert_eq!(members(&packed).unwrap(), list);
        assert_eq!(route_of(&packed, 300).unwrap(), Some(2));
        assert_eq!(route_of(&packed, 2).unwrap(), None);
        assert!(members(&[0x80]).is_err(), "a cut varint is corrupt");
    }

    #[test]
    fn an_act_key_holds_its_number_after_the_id() {
        let key = act_key(&[7; 32], 42);
        assert_eq!(&key[..32], &[7; 32]);
        assert_eq!(act_of_key(&key), Some(42));
    }
}
