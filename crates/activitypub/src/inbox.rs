//! What an inbox keeps of an ActivityPub activity: the original JSON (as received, under
//! `activity`), who verifiably signed it, with which key and signature draft, and when. A
//! JSON object, so readers tell it from a fed-sx envelope (a protobuf, never starting with
//! `{`). Written by the kernel, read by the kernel (the Follow an Accept embeds) and by
//! `fedsx log`.

use crate::signature::Scheme;
use serde_json::Value;

const FORMAT: &str = "activitypub";

/// An inbox entry read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub activity: Value,
    pub signer: String,
    pub key_id: String,
    /// `rfc9421` or `draft-cavage`.
    pub signature: String,
}

/// The entry for `body` (which must be JSON: the original bytes are kept), signed by
/// `signer` with `key_id` under `scheme`, received at `received_ms`.
pub fn entry(body: &[u8], signer: &str, key_id: &str, scheme: Scheme, received_ms: i64) -> Result<Vec<u8>, String> {
    let raw: &serde_json::value::RawValue =
        serde_json::from_slice(body).map_err(|err| format!("the body is not JSON: {err}"))?;
    let entry = serde_json::json!({
        "format": FORMAT,
        "signer": signer,
        "key_id": key_id,
        "signature": match scheme {
            Scheme::Cavage => "draft-cavage",
            Scheme::Rfc9421 => "rfc9421",
        },
        "received_ms": received_ms,
        "activity": raw,
    });
    Ok(serde_json::to_vec(&entry).expect("JSON values encode"))
}

/// The entry made by [`entry`]; None for anything else (a fed-sx envelope).
pub fn read(entry: &[u8]) -> Option<Kept> {
    let mut entry: Value = serde_json::from_slice(entry).ok()?;
    if entry.get("format")? != FORMAT {
        return None;
    }
    let text = |entry: &Value, name: &str| entry[name].as_str().unwrap_or_default().to_owned();
    Some(Kept {
        signer: text(&entry, "signer"),
        key_id: text(&entry, "key_id"),
        signature: text(&entry, "signature"),
        activity: entry["activity"].take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_back_and_an_envelope_is_none() {
        let kept = entry(
            br#"{"type":"Follow"}"#,
            "https://m/u",
            "https://m/u#k",
            Scheme::Rfc9421,
            7,
        )
        .unwrap();
        let read = read(&kept).unwrap();
        assert_eq!(read.activity["type"], "Follow");
        assert_eq!(
            (read.signer.as_str(), read.signature.as_str()),
            ("https://m/u", "rfc9421")
        );
        assert_eq!(super::read(b"\x0a\x01x"), None);
        assert!(entry(b"nope", "", "", Scheme::Cavage, 0).is_err());
    }
}
