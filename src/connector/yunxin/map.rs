//! Pure mapping of Yunxin payloads to observations (the fields and their meaning:
//! `docs/upstreams/yunxin.md`, "Identifiers", "Conversations", "Paging", "Quick comments").
//! Ids above 2^53 stay exact: `serde_json` keeps integers as `i64`/`u64`, and numbers sent
//! as strings are accepted. Every item gives an observation or a reason to quarantine it;
//! nothing here panics, whatever the input.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::model::{
    Content, ConversationObservation, ConversationType, MessageHeader, MessageKind,
    MessageObservation, ReactionState,
};

/// An integer field, as a JSON integer or a decimal string.
pub fn int(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn string(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Upstream times are Unix milliseconds; anything before 1970 or after 9999 is not one.
pub const MAX_MS: i64 = 253_402_300_799_999;

/// A Unix-millisecond time, if it is one PostgreSQL and the archive can hold.
pub fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    if !(0..=MAX_MS).contains(&ms) {
        return None;
    }
    DateTime::from_timestamp_millis(ms)
}

/// A conversation object. Only the facts worth a `conversation_changed` event go
/// into `metadata`; `update_time` and friends move with every message and are returned
/// separately.
pub fn conversation(item: &Value) -> Result<(ConversationObservation, i64), String> {
    let id = string(item, "conversation_id")
        .filter(|s| !s.is_empty())
        .ok_or("conversation without conversation_id")?;
    let parts: Vec<&str> = id.splitn(3, '|').collect();
    if parts.len() != 3 {
        return Err(format!("conversation id {id:?} is not owner|type|target"));
    }
    let ty = int(item, "type")
        .or_else(|| parts[1].parse().ok())
        .ok_or_else(|| format!("conversation {id}: no type"))?;
    let conversation_type = match ty {
        1 => ConversationType::Direct,
        2 | 3 => ConversationType::Group,
        _ => ConversationType::Other,
    };
    let target = string(item, "receiver_id").unwrap_or_else(|| parts[2].to_string());
    let mut md = Map::new();
    md.insert("owner".into(), json!(parts[0]));
    md.insert("target".into(), json!(target));
    md.insert("conversation_type".into(), json!(ty));
    md.insert("super_team".into(), json!(ty == 3));
    for key in [
        "stick_top",
        "group_ids",
        "server_extension",
        "message_state",
        "revoke_notification",
    ] {
        if let Some(v) = item.get(key) {
            if !v.is_null() {
                md.insert(key.into(), v.clone());
            }
        }
    }
    let update_time = int(item, "update_time").unwrap_or(0);
    Ok((
        ConversationObservation {
            conversation_id: id,
            conversation_type,
            name: Some(target),
            metadata: Value::Object(md),
        },
        update_time,
    ))
}

/// The kind of a message type.
pub fn kind_of(message_type: i64) -> MessageKind {
    match message_type {
        0 | 11 => MessageKind::Text,
        1 => MessageKind::Image,
        2 => MessageKind::Voice,
        3 => MessageKind::Video,
        4 => MessageKind::Location,
        5 | 10 => MessageKind::System,
        6 => MessageKind::File,
        7 | 12 => MessageKind::Call,
        _ => MessageKind::Other,
    }
}

/// A message's non-empty `message_client_id`.
pub fn client_id(item: &Value) -> Option<String> {
    string(item, "message_client_id").filter(|s| !s.is_empty())
}

/// The identity of a message for the quick-comment query: the six keys the API requires
/// (a missing client id is sent as `""`; such messages are asked for apart).
pub fn comment_key(item: &Value) -> Value {
    let receiver = string(item, "receiver_id")
        .filter(|s| !s.is_empty())
        .or_else(|| string(item, "team_id"));
    json!({
        "conversation_type": int(item, "conversation_type"),
        "sender_id": string(item, "sender_id"),
        "receiver_id": receiver,
        "message_server_id": int(item, "message_server_id"),
        "message_client_id": client_id(item).unwrap_or_default(),
        "create_time": int(item, "create_time"),
    })
}

/// A quick-comment list as reactions (each comment's `index` is the emoji), sorted and
/// without duplicates; `None` unless it is an array of comments that all name their
/// operator and index: a list read only in part would end the reactions it left out.
pub fn reactions(comments: &Value) -> Option<Vec<ReactionState>> {
    let mut out: Vec<ReactionState> = comments
        .as_array()?
        .iter()
        .map(|c| {
            Some(ReactionState {
                user_id: string(c, "operator_id").filter(|s| !s.is_empty())?,
                user_name: None,
                emoji: int(c, "index")?.to_string(),
            })
        })
        .collect::<Option<_>>()?;
    out.sort();
    out.dedup();
    Some(out)
}

/// A history item as a full observation. `comments`: the item's quick comments from the
/// batch query, `None` when the query did not answer for it (or answered in a shape that
/// cannot be read): its reactions are then left as they are.
pub fn message(
    conversation_id: &str,
    item: &Value,
    comments: Option<&Value>,
) -> Result<MessageObservation, String> {
    if !item.is_object() {
        return Err("history item is not an object".into());
    }
    let id = int(item, "message_server_id").ok_or("message without a numeric message_server_id")?;
    let create_time = int(item, "create_time").ok_or("message without a numeric create_time")?;
    let sent_at = ms_to_time(create_time).ok_or("create_time out of range")?;
    let message_type = int(item, "message_type").ok_or("message without message_type")?;
    let text = string(item, "text").unwrap_or_default();
    let attachment = item.get("attachment").filter(|a| !a.is_null()).cloned();
    let kind = kind_of(message_type);
    let mut words: Vec<String> = Vec::new();
    if !text.is_empty() {
        words.push(text.clone());
    }
    if let Some(a) = &attachment {
        for key in ["name", "title"] {
            if let Some(s) = a.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                words.push(s.to_string());
            }
        }
    }
    let modify_time = int(item, "modify_time").filter(|t| *t > 0);
    let modified_by = string(item, "modify_account_id").filter(|s| !s.is_empty());
    let mut content = Map::new();
    content.insert("message_type".into(), json!(message_type));
    content.insert("sub_type".into(), json!(int(item, "sub_type").unwrap_or(0)));
    content.insert("text".into(), json!(text));
    if let Some(a) = &attachment {
        content.insert("attachment".into(), a.clone());
    }
    if let Some(e) = string(item, "extension").filter(|s| !s.is_empty()) {
        content.insert("extension".into(), json!(e));
    }
    if let Some(t) = modify_time {
        content.insert("modify_time".into(), json!(t));
        content.insert("modified_by".into(), json!(modified_by));
    }
    let reply = item
        .get("thread_config")
        .and_then(|t| t.get("thread_reply"))
        .and_then(|r| int(r, "message_server_id"))
        .map(|r| r.to_string());
    if let Some(r) = &reply {
        content.insert("reply_to".into(), json!(r));
    }
    let reactions = comments.and_then(reactions);
    Ok(MessageObservation {
        conversation_id: conversation_id.to_string(),
        message_id: id.to_string(),
        header: Some(MessageHeader {
            seq: None,
            sender_id: string(item, "sender_id"),
            sender_name: None,
            sent_at,
            reply_to: reply,
        }),
        content: Some(Content {
            kind,
            text: words.join(" "),
            content: Value::Object(content),
        }),
        edited_at: modify_time.and_then(ms_to_time),
        earlier_versions: Vec::new(),
        recalled: None,
        deleted: None,
        reactions,
        raw: json!({"message": item, "quick_comments": comments}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_ids_stay_exact_and_strings_are_accepted() {
        let item: Value = serde_json::from_str(
            r#"{"message_server_id": 158844553334358021, "create_time": "1753951805248",
                "message_type": 0, "text": "你好", "sender_id": "alice", "receiver_id": "bob"}"#,
        )
        .unwrap();
        let m = message("alice|1|bob", &item, None).unwrap();
        assert_eq!(m.message_id, "158844553334358021");
        assert_eq!(
            m.header.unwrap().sent_at.timestamp_millis(),
            1_753_951_805_248
        );
        assert_eq!(m.reactions, None);
    }

    #[test]
    fn every_type_has_a_kind_and_text() {
        for (ty, kind) in [
            (0, MessageKind::Text),
            (1, MessageKind::Image),
            (2, MessageKind::Voice),
            (3, MessageKind::Video),
            (4, MessageKind::Location),
            (5, MessageKind::System),
            (6, MessageKind::File),
            (7, MessageKind::Call),
            (10, MessageKind::System),
            (11, MessageKind::Text),
            (12, MessageKind::Call),
            (100, MessageKind::Other),
            (4242, MessageKind::Other),
        ] {
            assert_eq!(kind_of(ty), kind, "type {ty}");
        }
        let item = json!({"message_server_id": 1, "create_time": 1, "message_type": 6,
                          "attachment": {"name": "报告.pdf"}});
        assert_eq!(
            message("c", &item, None).unwrap().content.unwrap().text,
            "报告.pdf"
        );
    }

    #[test]
    fn malformed_items_are_refused() {
        assert!(message(
            "c",
            &json!({"message_server_id": "x", "create_time": 1, "message_type": 0}),
            None
        )
        .is_err());
        assert!(message(
            "c",
            &json!({"message_server_id": 1, "message_type": 0}),
            None
        )
        .is_err());
        assert!(message("c", &json!([1]), None).is_err());
    }

    #[test]
    fn comments_become_reactions_by_index() {
        let item =
            json!({"message_server_id": 1, "create_time": 1, "message_type": 0, "text": "x"});
        let comments = json!([{"operator_id": "bob", "index": 3, "extension": "{}", "time": 5}]);
        let m = message("c", &item, Some(&comments)).unwrap();
        assert_eq!(
            m.reactions.unwrap(),
            vec![ReactionState {
                user_id: "bob".into(),
                user_name: None,
                emoji: "3".into()
            }]
        );
        assert_eq!(m.raw["quick_comments"][0]["extension"], "{}");
    }

    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        /// The field names the mapper reads, and a few it does not.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "message_server_id",
                    "create_time",
                    "message_type",
                    "sub_type",
                    "text",
                    "attachment",
                    "extension",
                    "modify_time",
                    "modify_account_id",
                    "sender_id",
                    "receiver_id",
                    "team_id",
                    "message_client_id",
                    "conversation_type",
                    "thread_config",
                    "thread_reply",
                    "conversation_id",
                    "type",
                    "stick_top",
                    "group_ids",
                    "server_extension",
                    "message_state",
                    "revoke_notification",
                    "update_time",
                    "operator_id",
                    "index",
                    "name",
                    "title",
                    "server_id",
                ])
                .prop_map(str::to_string),
                "[a-z_]{1,8}",
            ]
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (0i64..4_000_000_000_000).prop_map(Value::from),
                any::<f64>().prop_filter_map("finite", |f| {
                    serde_json::Number::from_f64(f).map(Value::Number)
                }),
                "-?[0-9]{1,22}".prop_map(Value::from),
                "[a-z0-9|]{0,12}".prop_map(Value::from),
                "\\PC{0,16}".prop_map(Value::from),
                Just(Value::from("a\u{0}b")),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(3, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// An object with any of the mapper's fields, each holding anything; often with
        /// the fields a message or a conversation needs, so both outcomes are exercised.
        fn record() -> impl Strategy<Value = Value> {
            let fields = || prop::collection::btree_map(key(), value(), 0..12);
            prop_oneof![
                fields().prop_map(|m| Value::Object(m.into_iter().collect())),
                value(),
                (
                    fields(),
                    any::<i64>(),
                    prop_oneof![any::<i64>(), 0i64..4_000_000_000_000],
                    -2i64..120
                )
                    .prop_map(|(m, id, t, ty)| {
                        let mut o: Map<String, Value> = m.into_iter().collect();
                        o.insert("message_server_id".into(), json!(id));
                        o.insert("create_time".into(), json!(t));
                        o.insert("message_type".into(), json!(ty));
                        Value::Object(o)
                    }),
                (fields(), "[a-z\\x00]{0,5}\\|[0-9]{1,2}\\|[a-z0-9]{0,6}").prop_map(|(m, id)| {
                    let mut o: Map<String, Value> = m.into_iter().collect();
                    o.insert("conversation_id".into(), json!(id));
                    Value::Object(o)
                }),
            ]
        }

        fn size(v: &impl serde::Serialize) -> usize {
            serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any message and comment list gives an observation or a reason (for the
            /// quarantine), never a panic, and the output is bounded by the input.
            #[test]
            fn any_message_maps_or_is_refused(item in record(), comments in proptest::option::of(value())) {
                let input = size(&item) + comments.as_ref().map_or(0, size);
                match message("c", &item, comments.as_ref()) {
                    Ok(m) => {
                        prop_assert!(size(&m) <= 6 * input + 4096, "{} from {}", size(&m), input);
                        prop_assert_eq!(Some(m.message_id.clone()),
                            int(&item, "message_server_id").map(|i| i.to_string()));
                        let sent = m.header.as_ref().map(|h| h.sent_at.timestamp_millis());
                        prop_assert!(sent.is_some_and(|t| (0..=MAX_MS).contains(&t)));
                        if let Some(r) = &m.reactions {
                            let n = comments.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
                            prop_assert!(r.len() <= n);
                        }
                    }
                    Err(reason) => prop_assert!(!reason.is_empty() && reason.len() <= 200 + input),
                }
                prop_assert!(size(&comment_key(&item)) <= 2 * input + 512);
            }

            /// Any conversation object gives an observation or a reason, bounded.
            #[test]
            fn any_conversation_maps_or_is_refused(item in record()) {
                let input = size(&item);
                match conversation(&item) {
                    Ok((c, _)) => {
                        prop_assert!(size(&c) <= 4 * input + 1024, "{} from {}", size(&c), input);
                        prop_assert!(!c.conversation_id.is_empty());
                    }
                    Err(reason) => prop_assert!(!reason.is_empty() && reason.len() <= 200 + input),
                }
            }
        }
    }
}
