//! Feed cursors and discovery states as connectors store them: a JSON object that carries
//! its format version in `v` (`{"v": 1, ...}`), so that a format can change and a cursor
//! written by an older chatvault is still told apart. Each platform module owns its formats
//! and their versions; this is the one way they are written and read back.
//!
//! A cursor is serialised from its struct by `serde_json` with sorted keys, so the stored
//! JSON of a given struct value never depends on which connector wrote it or how.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::ConnectorError;
use crate::model::Cursor;

/// How much of an unreadable cursor an error shows.
const SHOWN_CHARS: usize = 200;

/// A cursor from its typed form.
///
/// The cursor types are plain structs whose maps have string keys, so serialising them
/// cannot fail; if one ever did, the cursor is `null`, which [`decode`] refuses with a clear
/// error on the next fetch rather than starting the feed over without a word.
pub fn encode<T: Serialize>(value: &T) -> Cursor {
    Cursor(serde_json::to_value(value).unwrap_or(Value::Null))
}

/// A stored cursor in its typed form: its `v` must be one of `versions` and the rest must
/// read as `T`. Anything else is a permanent error naming `what` (e.g. `tsdd source acme:
/// messages cursor`) that tells the user to start over with `--full`.
pub fn decode<T: DeserializeOwned>(
    cursor: &Cursor,
    versions: &[u32],
    what: &str,
) -> Result<T, ConnectorError> {
    let unrecognised = |why: String| {
        let shown: String = cursor.0.to_string().chars().take(SHOWN_CHARS).collect();
        ConnectorError::Permanent(format!(
            "{what}: unrecognised cursor {shown} ({why}); run with --full to start over"
        ))
    };
    match version(cursor) {
        Some(v) if versions.contains(&v) => {}
        Some(v) => return Err(unrecognised(format!("format version {v}"))),
        None => return Err(unrecognised("no format version".into())),
    }
    serde_json::from_value(cursor.0.clone()).map_err(|e| unrecognised(e.to_string()))
}

/// [`decode`] for a caller that has a fallback (list again, sync the conversation): `None`
/// for a cursor of another version or shape.
pub fn peek<T: DeserializeOwned>(cursor: &Cursor, versions: &[u32]) -> Option<T> {
    version(cursor)
        .filter(|v| versions.contains(v))
        .and_then(|_| serde_json::from_value(cursor.0.clone()).ok())
}

/// The `v` of a cursor, if it is a version number.
fn version(cursor: &Cursor) -> Option<u32> {
    cursor
        .0
        .get("v")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Seq {
        v: u32,
        seq: u64,
    }

    #[test]
    fn a_cursor_is_written_with_sorted_keys_and_read_back() {
        let cursor = encode(&Seq { v: 1, seq: 42 });
        assert_eq!(cursor.0.to_string(), r#"{"seq":42,"v":1}"#);
        let back: Seq = decode(&cursor, &[1], "tsdd source a: messages cursor").unwrap();
        assert_eq!(back, Seq { v: 1, seq: 42 });
        assert_eq!(peek::<Seq>(&cursor, &[1]), Some(Seq { v: 1, seq: 42 }));
    }

    #[test]
    fn another_version_or_shape_is_refused_and_says_what_to_do() {
        for (stored, why) in [
            (json!({"v": 2, "seq": 1}), "format version 2"),
            (json!({"seq": 1}), "no format version"),
            (json!({"v": "1", "seq": 1}), "no format version"),
            (json!({"v": 1, "seq": "x"}), "invalid type"),
            (Value::Null, "no format version"),
        ] {
            let cursor = Cursor(stored.clone());
            match decode::<Seq>(&cursor, &[1], "tsdd source a: messages cursor") {
                Err(ConnectorError::Permanent(text)) => {
                    assert!(text.starts_with("tsdd source a: messages cursor"), "{text}");
                    assert!(text.contains(why) && text.contains("--full"), "{text}");
                }
                other => panic!("{stored}: {other:?}"),
            }
            assert_eq!(peek::<Seq>(&cursor, &[1]), None, "{stored}");
        }
        // several versions may be accepted (a reader that upgrades the older one)
        let old = Cursor(json!({"v": 1, "seq": 3}));
        assert!(decode::<Seq>(&old, &[1, 2], "x").is_ok());
        assert!(peek::<Seq>(&old, &[2]).is_none());
    }

    #[test]
    fn a_long_cursor_is_shown_cut() {
        let cursor = Cursor(json!({"v": 9, "ids": vec!["0123456789"; 500]}));
        let Err(ConnectorError::Permanent(text)) = decode::<Seq>(&cursor, &[1], "x") else {
            panic!("refused")
        };
        assert!(text.len() < 400, "{text}");
    }
}
