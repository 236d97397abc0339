//! Canonical bytes and hashes: the encoding the hash chain is computed over.
//!
//! Canonical JSON here is: objects with keys sorted by their UTF-8 bytes, no whitespace,
//! strings escaped as serde_json escapes them (only `"`, `\` and control characters),
//! numbers as serde_json prints them. It is written explicitly rather than relying on
//! `serde_json::Map` ordering, so no feature flag elsewhere can change it. ARCHITECTURE.md
//! documents it for auditors.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::Content;

pub type Hash = [u8; 32];

/// The `prev_hash` of the first event of a chain.
pub const GENESIS: Hash = [0u8; 32];

/// Write `value` as canonical JSON.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string serialisation is the canonical escaping.
    out.extend_from_slice(
        serde_json::to_string(s)
            .expect("strings always serialise")
            .as_bytes(),
    );
}

pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

pub fn sha256(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Times in canonical form: RFC 3339, UTC, exactly six fractional digits, `Z`.
pub fn canonical_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The digest of one version of a message's content, recorded in its event.
pub fn content_hash(content: &Content) -> Hash {
    let value = serde_json::json!({
        "kind": content.kind.as_str(),
        "text": content.text,
        "content": content.content,
    });
    sha256(&canonical_bytes(&value))
}

/// The digest of a raw payload, used to notice that upstream sent something new.
pub fn value_hash(value: &Value) -> Hash {
    sha256(&canonical_bytes(value))
}

/// The fields of one event that the chain covers.
#[derive(Clone, Debug, PartialEq)]
pub struct EventFields<'a> {
    pub source: &'a str,
    pub event_seq: i64,
    pub kind: &'a str,
    pub conversation_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub observed_at: DateTime<Utc>,
    pub detail: &'a Value,
}

/// The canonical bytes of an event: a canonical JSON object of all its fields.
pub fn event_bytes(e: &EventFields<'_>) -> Vec<u8> {
    let value = serde_json::json!({
        "source": e.source,
        "event_seq": e.event_seq,
        "kind": e.kind,
        "conversation_id": e.conversation_id,
        "message_id": e.message_id,
        "occurred_at": e.occurred_at.as_ref().map(canonical_time),
        "observed_at": canonical_time(&e.observed_at),
        "detail": e.detail,
    });
    canonical_bytes(&value)
}

/// `hash = sha256(prev_hash || canonical event)`.
pub fn chain_hash(prev: &Hash, e: &EventFields<'_>) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(event_bytes(e));
    hasher.finalize().into()
}

/// PostgreSQL cannot store NUL in `text` or `jsonb`. Upstream strings are kept with each
/// NUL replaced by U+FFFD; everything else is kept as received.
pub fn strip_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// [`strip_nul`] over every string (and key) of a JSON value.
pub fn strip_nul_value(value: &Value) -> std::borrow::Cow<'_, Value> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    fn clean(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(strip_nul(s).into_owned()),
            Value::Array(a) => Value::Array(a.iter().map(clean).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (strip_nul(k).into_owned(), clean(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    if has_nul(value) {
        std::borrow::Cow::Owned(clean(value))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_has_no_whitespace() {
        let v = json!({"b": 1, "a": {"d": [1, "x"], "c": null}, "é": "中文\n"});
        let s = String::from_utf8(canonical_bytes(&v)).unwrap();
        assert_eq!(s, r#"{"a":{"c":null,"d":[1,"x"]},"b":1,"é":"中文\n"}"#);
    }

    #[test]
    fn big_integers_stay_exact() {
        let v: Value =
            serde_json::from_str(r#"{"id":18446744073709551615,"n":-9007199254740993}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_bytes(&v)).unwrap(),
            r#"{"id":18446744073709551615,"n":-9007199254740993}"#
        );
    }

    #[test]
    fn times_have_six_fraction_digits() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.5+08:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(canonical_time(&t), "2026-01-01T19:04:05.500000Z");
    }

    #[test]
    fn chain_hash_depends_on_every_field() {
        let detail = json!({"x": 1});
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let base = EventFields {
            source: "s",
            event_seq: 1,
            kind: "message_created",
            conversation_id: Some("c"),
            message_id: Some("m"),
            occurred_at: None,
            observed_at: t,
            detail: &detail,
        };
        let h = chain_hash(&GENESIS, &base);
        let other_detail = json!({"x": 2});
        let variants = [
            EventFields {
                source: "t",
                ..base.clone()
            },
            EventFields {
                event_seq: 2,
                ..base.clone()
            },
            EventFields {
                kind: "message_edited",
                ..base.clone()
            },
            EventFields {
                conversation_id: None,
                ..base.clone()
            },
            EventFields {
                message_id: Some("n"),
                ..base.clone()
            },
            EventFields {
                occurred_at: Some(t),
                ..base.clone()
            },
            EventFields {
                observed_at: t + chrono::Duration::microseconds(1),
                ..base.clone()
            },
            EventFields {
                detail: &other_detail,
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(chain_hash(&GENESIS, &v), h, "{v:?}");
        }
        assert_ne!(chain_hash(&[1u8; 32], &base), h);
    }

    #[test]
    fn nul_is_replaced_everywhere() {
        let v = json!({"a\u{0}": ["x\u{0}y"]});
        let clean = strip_nul_value(&v);
        assert_eq!(*clean, json!({"a\u{FFFD}": ["x\u{FFFD}y"]}));
        let plain = json!({"a": 1});
        assert!(matches!(
            strip_nul_value(&plain),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
