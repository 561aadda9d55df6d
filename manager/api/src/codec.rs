//! The compact, versioned encoding of what the managers store and send in bulk: Raft
//! log entries, snapshots and Raft payloads, and the assignments sent to agents.
//!
//! A record is a 4-byte header, `00 'M' 'C'` and a format version, followed by the
//! record in that format. Version 1 is MessagePack with named fields (`rmp-serde`):
//! self-describing like JSON, so the serde attributes of this crate's records
//! (defaults, skipped empty fields, renames) mean the same, at about 70 % of JSON's
//! size for a populated cluster state (field names stay; numbers, IDs and addresses
//! travel as integers and 4 bytes instead of text), and without JSON's escaping and
//! number parsing.
//!
//! [`decode`] also reads records written before this encoding, as plain JSON (which
//! never starts with a zero byte), so a store or a peer from before it stays
//! readable; anything else, such as a version this build does not know, is refused
//! with a [`CodecError`] that says so.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The header's first three bytes.
const MAGIC: [u8; 3] = [0, b'M', b'C'];

/// The format [`encode`] writes: MessagePack with named fields.
pub const VERSION: u8 = 1;

/// A record that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The header names a format this build does not know.
    #[error(
        "record encoded in format version {0}, which this build does not read (it reads {VERSION} and JSON): upgrade this program"
    )]
    UnknownVersion(u8),
    /// The record starts like an encoded one but is cut short.
    #[error("record truncated in its header ({0} bytes)")]
    Truncated(usize),
    /// The value could not be written as MessagePack.
    #[error("encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The bytes are not the expected record in MessagePack.
    #[error("decoding: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The bytes are not the expected record in JSON (a record from before this
    /// encoding).
    #[error("decoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes `value` in the current format, header included.
///
/// # Errors
/// [`CodecError::Encode`] if the value's serde implementation fails.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    rmp_serde::encode::write_named(&mut out, value)?;
    Ok(out)
}

/// Decodes a record written by [`encode`], or plain JSON written before it.
///
/// # Errors
/// [`CodecError::UnknownVersion`] for a format this build does not read,
/// [`CodecError::Truncated`] for a header cut short, [`CodecError::Decode`] or
/// [`CodecError::Json`] if the bytes do not hold a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes {
        [0, b'M', b'C', VERSION, body @ ..] => Ok(rmp_serde::from_slice(body)?),
        [0, b'M', b'C', version, ..] => Err(CodecError::UnknownVersion(*version)),
        [0, ..] => Err(CodecError::Truncated(bytes.len())),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// Whether `bytes` are in the current format (rather than legacy JSON).
#[must_use]
pub fn is_current(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && bytes[..3] == MAGIC && bytes[3] == VERSION
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: u64,
        addr: Ipv4Addr,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        by_id: BTreeMap<u64, String>,
        kind: Kind,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Plain,
        Weighted(u32),
        Named { name: String },
    }

    fn record() -> Record {
        Record {
            id: 0x1234_5678_9abc,
            addr: Ipv4Addr::new(10, 255, 0, 7),
            labels: vec![],
            note: Some("n".into()),
            by_id: BTreeMap::from([(1, "a".into()), (u64::MAX, "z".into())]),
            kind: Kind::Named { name: "web".into() },
        }
    }

    #[test]
    fn a_record_round_trips_and_is_smaller_than_json() {
        let value = record();
        let bytes = encode(&value).unwrap();
        assert!(is_current(&bytes));
        assert_eq!(decode::<Record>(&bytes).unwrap(), value);
        assert!(bytes.len() < serde_json::to_vec(&value).unwrap().len());
        for kind in [Kind::Plain, Kind::Weighted(3)] {
            let value = Record { kind, ..record() };
            assert_eq!(decode::<Record>(&encode(&value).unwrap()).unwrap(), value);
        }
    }

    #[test]
    fn json_written_before_the_encoding_still_decodes() {
        let value = record();
        let json = serde_json::to_vec(&value).unwrap();
        assert!(!is_current(&json));
        assert_eq!(decode::<Record>(&json).unwrap(), value);
        // Whitespace first, as a pretty-printed record would be.
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(
            decode::<Record>(&[b"\n ", &pretty[..]].concat()).unwrap(),
            value
        );
    }

    #[test]
    fn an_unknown_version_or_a_cut_header_is_refused_by_name() {
        let mut bytes = encode(&record()).unwrap();
        bytes[3] = 9;
        let err = decode::<Record>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::UnknownVersion(9)), "{err}");
        assert!(err.to_string().contains("format version 9"), "{err}");
        assert!(matches!(
            decode::<Record>(&[0, b'M']).unwrap_err(),
            CodecError::Truncated(2)
        ));
        let body = encode(&record()).unwrap();
        assert!(matches!(
            decode::<Record>(&body[..body.len() - 3]).unwrap_err(),
            CodecError::Decode(_)
        ));
        assert!(matches!(
            decode::<Record>(b"{\"id\":").unwrap_err(),
            CodecError::Json(_)
        ));
    }
}
