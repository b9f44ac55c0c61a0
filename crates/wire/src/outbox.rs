//! An outbox page as JSON, the answer to `GET <outbox>?after=N&limit=M`
//! (`docs/protocol.md`): the outbox's tip and, per entry, its seq, the activity id (hex) and
//! the signed envelope (standard base64). The gateway serves it; a receiver filling a gap
//! reads it.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Page {
    #[serde(default)]
    tip: u64,
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    seq: u64,
    #[serde(default)]
    id: String,
    envelope: String,
}

/// The page of `entries` — (seq, activity id, envelope) — from an outbox whose tip is `tip`.
pub fn to_json<'a>(tip: u64, entries: impl IntoIterator<Item = (u64, &'a [u8], &'a [u8])>) -> serde_json::Value {
    let base64 = base64::engine::general_purpose::STANDARD;
    let entries = entries
        .into_iter()
        .map(|(seq, id, envelope)| Entry {
            seq,
            id: hex::encode(id),
            envelope: base64.encode(envelope),
        })
        .collect();
    serde_json::to_value(Page { tip, entries }).expect("an outbox page is JSON")
}

/// The (seq, envelope) of each entry of a page as served, in order; the envelopes are not
/// checked here.
pub fn from_json(body: &[u8]) -> Result<Vec<(u64, Bytes)>, String> {
    let page: Page = serde_json::from_slice(body).map_err(|err| format!("not an outbox page: {err}"))?;
    page.entries
        .into_iter()
        .map(|entry| {
            let envelope = base64::engine::general_purpose::STANDARD
                .decode(&entry.envelope)
                .map_err(|err| format!("entry {}: envelope is not base64: {err}", entry.seq))?;
            Ok((entry.seq, Bytes::from(envelope)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_served_page_reads_back() {
        let page = super::to_json(9, [(3, &[1u8, 2][..], &b"envelope three"[..])]);
        assert_eq!(page["tip"], 9);
        assert_eq!(page["entries"][0]["id"], "0102");
        let read = super::from_json(page.to_string().as_bytes()).unwrap();
        assert_eq!(read, [(3, bytes::Bytes::from_static(b"envelope three"))]);
        assert!(super::from_json(br#"{"entries":[{"seq":1,"envelope":"%%"}]}"#).is_err());
    }
}
