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
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
pub fn route_of(mut packed: &[u8], peer: u32) -> Result<Option<u64>, String> {
    let corrupt = |err: prost::DecodeError| format!("corrupt act record: {err}");
    while !packed.is_empty() {
        let num = prost::encoding::decode_varint(&mut packed).map_err(corrupt)?;
        let route = prost::encoding::decode_varint(&mut packed).map_err(corrupt)?;
        if num == u64::from(peer) {
            return Ok(Some(route));
        }
    }
    Ok(None)
}

/// What is kept of an act once every delivery of it is delivered: when it was queued, so
/// the retention expires it with its delivered records (until then, an enqueue of its id
/// looks for those records).
pub fn tombstone(enqueued_ms: u64) -> ActRecord {
    ActRecord {
        enqueued_ms,
        ..ActRecord::default()
    }
}

/// Activity ids whose act records are kept decoded in memory, at most, and their bytes
/// (envelopes up to 256 KiB, a member list of 4 bytes per destination).
const CACHED_IDS: usize = 256;
const CACHED_BYTES: usize = 8 << 20;

/// An act's bytes, as the cache counts them.
fn size(act: &ActRecord) -> usize {
    act.envelope.len() + act.members.len() + act.sender.len() + act.traceparent.len()
}

/// Act records read lately, by activity id: every destination of a fan-out reads the same
/// act to send it, so it is read and decoded once, not once per destination. An id held
/// holds every act record of it (acts are written whole and never changed, only dropped).
#[derive(Default)]
pub struct ActCache {
    held: Mutex<Held>,
    /// Acts written so far: a read that saw a write start after it does not fill the cache
    /// (it may have missed that act).
    writes: AtomicU64,
}

#[derive(Default)]
struct Held {
    by_id: HashMap<[u8; 32], Vec<(u64, Arc<ActRecord>)>>,
    /// Ids in the order they came in: the oldest goes first.
    order: VecDeque<[u8; 32]>,
    /// The bytes of the acts held.
    bytes: usize,
}

impl Held {
    fn drop_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front()
            && let Some(acts) = self.by_id.remove(&oldest)
        {
            self.bytes -= acts.iter().map(|(_, act)| size(act)).sum::<usize>();
        }
    }
}

impl ActCache {
    /// What to pass [`ActCache::fill`] after reading an id's acts from disk.
    pub fn before_read(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    pub fn get(&self, id: &[u8; 32]) -> Option<Vec<(u64, Arc<ActRecord>)>> {
        self.held
            .lock()
            .expect("act cache lock poisoned")
            .by_id
            .get(id)
            .cloned()
    }

    /// Holds every act of `id`, as read from disk after `before_read` gave `seen`.
    pub fn fill(&self, id: [u8; 32], acts: Vec<(u64, Arc<ActRecord>)>, seen: u64) {
        let mut held = self.held.lock().expect("act cache lock poisoned");
        if self.writes.load(Ordering::Acquire) != seen || held.by_id.contains_key(&id) {
            return;
        }
        let bytes: usize = acts.iter().map(|(_, act)| size(act)).sum();
        while !held.order.is_empty() && (held.order.len() >= CACHED_IDS || held.bytes + bytes > CACHED_BYTES) {
            held.drop_oldest();
        }
        held.order.push_back(id);
        held.bytes += bytes;
        held.by_id.insert(id, acts);
    }

    /// Act `act` of `id` was written (new, or kept as delivered): held with the others
    /// where the id is held.
    pub fn written(&self, id: &[u8; 32], act: u64, record: Arc<ActRecord>) {
        let mut held = self.held.lock().expect("act cache lock poisoned");
        self.writes.fetch_add(1, Ordering::AcqRel);
        let (added, gone) = match held.by_id.get_mut(id) {
            None => return,
            Some(acts) => match acts.iter_mut().find(|(no, _)| *no == act) {
                Some((_, was)) if record.members.is_empty() => {
                    let gone = size(was);
                    *was = record.clone();
                    (size(&record), gone)
                }
                Some(_) => (0, 0),
                None => {
                    let added = size(&record);
                    acts.push((act, record));
                    (added, 0)
                }
            },
        };
        held.bytes = held.bytes + added - gone;
    }

    /// The act under `key` was dropped.
    pub fn dropped(&self, key: &ActKey) {
        let (Ok(id), Some(act)) = (<[u8; 32]>::try_from(&key[..32]), act_of_key(key)) else {
            return;
        };
        let mut held = self.held.lock().expect("act cache lock poisoned");
        let mut gone = 0;
        if let Some(acts) = held.by_id.get_mut(&id) {
            acts.retain(|(no, record)| {
                let keep = *no != act;
                if !keep {
                    gone += size(record);
                }
                keep
            });
        }
        held.bytes -= gone;
    }
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
    fn the_cache_holds_every_act_of_an_id_or_none() {
        let cache = ActCache::default();
        let act = |n: u64| (n, Arc::new(ActRecord::default()));
        let seen = cache.before_read();
        cache.written(&[1; 32], 5, act(5).1);
        cache.fill([1; 32], vec![act(3)], seen);
        assert!(
            cache.get(&[1; 32]).is_none(),
            "a read that may have missed act 5 is not held"
        );
        let seen = cache.before_read();
        cache.fill([1; 32], vec![act(3), act(5)], seen);
        cache.written(&[1; 32], 5, act(5).1);
        cache.written(&[1; 32], 7, act(7).1);
        let held: Vec<u64> = cache.get(&[1; 32]).unwrap().iter().map(|(no, _)| *no).collect();
        assert_eq!(held, [3, 5, 7]);
        cache.dropped(&act_key(&[1; 32], 5));
        let held: Vec<u64> = cache.get(&[1; 32]).unwrap().iter().map(|(no, _)| *no).collect();
        assert_eq!(held, [3, 7]);
        for n in 0..CACHED_IDS as u64 {
            let mut id = [0; 32];
            id[..8].copy_from_slice(&(n + 2).to_be_bytes());
            let seen = cache.before_read();
            cache.fill(id, vec![], seen);
        }
        assert!(cache.get(&[1; 32]).is_none(), "the oldest id went first");
    }

    #[test]
    fn the_cache_holds_a_bounded_number_of_bytes() {
        let cache = ActCache::default();
        let big = |n: u8| {
            let act = ActRecord {
                envelope: Bytes::from(vec![n; 1 << 20]),
                ..ActRecord::default()
            };
            vec![(1, Arc::new(act))]
        };
        for n in 0..20u8 {
            let seen = cache.before_read();
            cache.fill([n; 32], big(n), seen);
        }
        let held = cache.held.lock().unwrap();
        assert_eq!(held.order.len(), 8, "8 MiB of 1 MiB envelopes");
        assert_eq!(held.bytes, 8 << 20);
        assert!(held.by_id.contains_key(&[19; 32]) && !held.by_id.contains_key(&[11; 32]));
    }

    #[test]
    fn an_act_key_holds_its_number_after_the_id() {
        let key = act_key(&[7; 32], 42);
        assert_eq!(&key[..32], &[7; 32]);
        assert_eq!(act_of_key(&key), Some(42));
    }
}
