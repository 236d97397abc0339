//! Canonical bytes and hashes: the encoding the hash chain is computed over.
//!
//! Canonical JSON here is: objects with keys sorted by their UTF-8 bytes, no whitespace,
//! strings escaped as serde_json escapes them (only `"`, `\` and control characters),
//! numbers as PostgreSQL stores them in `jsonb` ([`stored_decimal`]). It is written
//! explicitly rather than relying on `serde_json::Map` ordering, so no feature flag elsewhere
//! can change it. ARCHITECTURE.md documents it for auditors.
//!
//! Why numbers follow PostgreSQL: what is hashed when an event is written is the value in
//! memory, what `verify` hashes is the value read back from `jsonb`, and `jsonb` keeps a
//! number as a `numeric`, which has no negative zero and no exponent (`-0.0` comes back as
//! `0.0`, `1e16` as `10000000000000000`). Hashing serde_json's own spelling made `verify`
//! report tampering for content any chat member can post. The canonical spelling is the
//! stored one, so both sides agree. Reading `jsonb` back needs serde_json's correctly rounded
//! float parser (the `float_roundtrip` feature), so the same double comes back.
//!
//! Events written before this change were hashed with serde_json's spelling
//! ([`Numbers::Legacy`]); the two differ only for a negative zero or a double written with an
//! exponent. `verify` accepts an event or version whose digest matches either form, and the
//! store's diff treats a version whose digest matches either form as unchanged, so existing
//! chains verify and no message gains a phantom version.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::model::Content;

pub type Hash = [u8; 32];

/// The `prev_hash` of the first event of a chain.
pub const GENESIS: Hash = [0u8; 32];

/// How numbers are spelled in the canonical bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Numbers {
    /// As PostgreSQL stores them (the canonical form).
    Stored,
    /// As serde_json prints them: the form of events written before numbers followed
    /// PostgreSQL. Only for checking those.
    Legacy,
}

/// Write `value` as canonical JSON.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    write_canonical_as(value, out, Numbers::Stored)
}

fn write_canonical_as(value: &Value, out: &mut Vec<u8>, numbers: Numbers) {
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
                write_canonical_as(&map[key], out, numbers);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_as(item, out, numbers);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        Value::Number(n) if numbers == Numbers::Stored && n.is_f64() => {
            out.extend_from_slice(stored_decimal(&n.to_string()).as_bytes())
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// A JSON number as PostgreSQL's `numeric` (and so `jsonb`) keeps and prints it: plain decimal
/// notation, the exponent applied to the digits (`1.5e-7` → `0.00000015`, `1e16` →
/// `10000000000000000`), as many fractional digits as the text has after applying the
/// exponent (`100.0` stays `100.0`, `1.250e1` is `12.50`), no leading zeros, and zero without
/// a sign (`-0.0` → `0.0`). Text that is not a plain JSON number is returned as it is.
pub fn stored_decimal(text: &str) -> String {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => match unsigned[i + 1..].parse::<i64>() {
            Ok(e) if e.abs() <= 100_000 => (&unsigned[..i], e),
            _ => return text.to_string(),
        },
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) {
        return text.to_string();
    }
    let digits = format!("{int}{frac}");
    let scale = (frac.len() as i64 - exponent).max(0) as usize;
    let point = int.len() as i64 + exponent;
    let (int_part, frac_part) = if point <= 0 {
        (
            "0".to_string(),
            format!("{}{digits}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        let (i, f) = digits.split_at(point as usize);
        (i.to_string(), f.to_string())
    };
    debug_assert_eq!(frac_part.len(), scale);
    let int_part = int_part.trim_start_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let zero = digits.bytes().all(|b| b == b'0');
    let mut out = String::with_capacity(int_part.len() + frac_part.len() + 2);
    if negative && !zero {
        out.push('-');
    }
    out.push_str(int_part);
    if scale > 0 {
        out.push('.');
        out.push_str(&frac_part);
    }
    out
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
    canonical_bytes_as(value, Numbers::Stored)
}

fn canonical_bytes_as(value: &Value, numbers: Numbers) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical_as(value, &mut out, numbers);
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
    content_hash_as(content, Numbers::Stored)
}

pub fn content_hash_as(content: &Content, numbers: Numbers) -> Hash {
    let value = serde_json::json!({
        "kind": content.kind.as_str(),
        "text": content.text,
        "content": content.content,
    });
    sha256(&canonical_bytes_as(&value, numbers))
}

/// Whether `recorded` is the digest of `content`, in the canonical form or the legacy one
/// (see the module doc).
pub fn content_matches(recorded: &Hash, content: &Content) -> bool {
    *recorded == content_hash(content) || *recorded == content_hash_as(content, Numbers::Legacy)
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
    event_bytes_as(e, Numbers::Stored)
}

fn event_bytes_as(e: &EventFields<'_>, numbers: Numbers) -> Vec<u8> {
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
    canonical_bytes_as(&value, numbers)
}

/// `hash = sha256(prev_hash || canonical event)`.
pub fn chain_hash(prev: &Hash, e: &EventFields<'_>) -> Hash {
    chain_hash_as(prev, e, Numbers::Stored)
}

pub fn chain_hash_as(prev: &Hash, e: &EventFields<'_>, numbers: Numbers) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(event_bytes_as(e, numbers));
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
    fn numbers_are_spelled_as_postgresql_stores_them() {
        for (given, stored) in [
            ("-0.0", "0.0"),
            ("-0", "0"),
            ("1.0", "1.0"),
            ("100.0", "100.0"),
            ("1e2", "100"),
            ("1E+2", "100"),
            ("1.250e1", "12.50"),
            ("-0.0e5", "0"),
            ("1e16", "10000000000000000"),
            ("1.5e-7", "0.00000015"),
            ("-1.5e-7", "-0.00000015"),
            ("1.2345e20", "123450000000000000000"),
            ("0.001", "0.001"),
            ("007.50", "7.50"),
            ("12", "12"),
        ] {
            assert_eq!(stored_decimal(given), stored, "{given}");
        }
        let tiny = stored_decimal("5e-324");
        assert_eq!(tiny, format!("0.{}5", "0".repeat(323)));
        assert_eq!(stored_decimal("1e400").len(), 401);
        assert_eq!(stored_decimal("not a number"), "not a number");
    }

    #[test]
    fn negative_zero_and_exponents_hash_like_what_jsonb_gives_back() {
        // in memory as parsed from upstream, and as PostgreSQL returns it from jsonb
        for (upstream, from_jsonb) in [
            ("[-0.0]", "[0.0]"),
            ("[1e16]", "[10000000000000000]"),
            ("[1.5e-7]", "[0.00000015]"),
            ("[1e300]", &*format!("[1{}]", "0".repeat(300))),
            ("[1.0, 2.5]", "[1.0, 2.5]"),
        ] {
            let written: Value = serde_json::from_str(upstream).unwrap();
            let read: Value = serde_json::from_str(from_jsonb).unwrap();
            assert_eq!(
                canonical_bytes(&written),
                canonical_bytes(&read),
                "{upstream}"
            );
        }
        // the legacy spelling of events written before differs exactly there
        let v: Value = serde_json::from_str("[-0.0, 1e16]").unwrap();
        assert_eq!(canonical_bytes_as(&v, Numbers::Legacy), b"[-0.0,1e+16]");
        assert_eq!(canonical_bytes(&v), b"[0.0,10000000000000000]");
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
