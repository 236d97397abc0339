//! `POST /hooks/yunxin/{source}`: Yunxin's message copies (消息抄送). Yunxin posts every
//! message (and recall) of the app as JSON to the URL set in its console; the request is
//! checked by its signature ([`access::verify_yunxin_copy`]: no API token, Yunxin cannot
//! send one), answered at once, and turned into push signals for the source's targeted
//! runs: a copy is only a trigger, the message itself is read through the history API like
//! any polled one.
//!
//! The copy's fields, from NetEase's documentation of 消息抄送
//! (<https://doc.yunxin.163.com/messaging/guide/TcxNzU4NzU?platform=server>,
//! <https://doc.commsease.com/en/messaging/server-apis/DI3OTg5Mjg?platform=server>):
//! `eventType` "1" a conversation message, with `convType` (`PERSON`, `TEAM`,
//! `SUPER_TEAM`, …), `fromAccount`, `to` (an account or a team id), `msgidServer`,
//! `msgTimestamp` (ms). Recalls: `eventType` 7 (one-to-one) and 8 (team), with the same
//! keys and the recalled message's id in `msgidServer` or `deleteMsgid` (inferred: the
//! pages name the events, not every key). Other event types are acknowledged and ignored.

use std::collections::BTreeSet;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tracing::{info, warn};

use super::access::{self, CopyRefused};
use super::{ApiError, ApiState};
use crate::config::PlatformConfig;
use crate::push::{PushKind, PushSignal};

/// The largest message copy accepted (a text message is at most 5000 characters; an
/// attachment's description is short).
pub const MAX_COPY_BYTES: usize = 256 * 1024;

pub(super) async fn yunxin(
    State(state): State<ApiState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(config) = state
        .sources
        .iter()
        .find(|s| s.enabled && s.name.as_str() == source)
        .and_then(|s| match &s.platform {
            PlatformConfig::Yunxin(cfg) => Some((s.name.clone(), cfg.clone())),
            _ => None,
        })
    else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no enabled Yunxin source of that name: the URL is /hooks/yunxin/<source name>",
        )
        .into_response();
    };
    let (name, cfg) = config;
    let body = match to_bytes(body, MAX_COPY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("message copy refused: larger than {MAX_COPY_BYTES} bytes"),
            )
            .into_response()
        }
    };
    if let Err(why) =
        access::verify_yunxin_copy(&cfg.app_key, &cfg.app_secret, &headers, &body, Utc::now())
    {
        warn!(source = %name, reason = ?why, "refused a Yunxin message copy");
        return refused(why);
    }
    let Some(sink) = state.push.as_ref().and_then(|hub| hub.sink(name.as_str())) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "pushes are not applied for this source (only `chatvault run` applies them, and not for a source with `push = false`)",
        )
        .into_response();
    };
    let copy: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("message copy is not JSON: {e}"),
            )
            .into_response()
        }
    };
    sink.connected();
    let candidates = signals(&copy, &cfg.accounts);
    // a team copy names every archived account's view of the team: read the ones archived
    // (all of them when none is, so that discovery finds a new conversation)
    let ids: Vec<String> = candidates
        .iter()
        .map(|s| s.conversation_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let known = match state.store.known_conversations(&name, &ids).await {
        Ok(known) if !known.is_empty() => Some(known),
        _ => None,
    };
    let mut sent = 0;
    for signal in candidates {
        if known
            .as_ref()
            .is_none_or(|k| k.contains(&signal.conversation_id))
        {
            sink.signal(signal);
            sent += 1;
        }
    }
    info!(source = %name, signals = sent, "Yunxin message copy received");
    (StatusCode::OK, Json(serde_json::json!({"signals": sent}))).into_response()
}

fn refused(why: CopyRefused) -> Response {
    ApiError::new(why.status(), why.message()).into_response()
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The signals a message copy stands for: one per archived account's view of the
/// conversation (ids `owner|type|target`, as the connector's). Empty for events that are
/// not messages or recalls, or conversations of no archived account.
pub fn signals(copy: &Value, accounts: &[String]) -> Vec<PushSignal> {
    let event = text(copy, "eventType").unwrap_or_default();
    let conv_type = text(copy, "convType").unwrap_or_default();
    let kind = match event.as_str() {
        "1" => PushKind::NewMessage,
        "7" | "8" => PushKind::Recall,
        // another event of a conversation (a message updated, say): read the conversation
        _ if matches!(conv_type.as_str(), "PERSON" | "TEAM" | "SUPER_TEAM") => PushKind::Other,
        _ => return Vec::new(),
    };
    let (Some(from), Some(to)) = (text(copy, "fromAccount"), text(copy, "to")) else {
        return Vec::new();
    };
    let message_id = text(copy, "msgidServer").or_else(|| text(copy, "deleteMsgid"));
    let upstream_at = text(copy, "msgTimestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_millis);
    let team_type = match (event.as_str(), conv_type.as_str()) {
        (_, "TEAM") | ("8", "") => Some(2),
        (_, "SUPER_TEAM") => Some(3),
        (_, "PERSON") | ("7", "") => None,
        _ => return Vec::new(),
    };
    let mut ids = Vec::new();
    for account in accounts {
        match team_type {
            Some(t) => ids.push(format!("{account}|{t}|{to}")),
            None => {
                if *account == from {
                    ids.push(format!("{account}|1|{to}"));
                }
                if *account == to {
                    ids.push(format!("{account}|1|{from}"));
                }
            }
        }
    }
    ids.into_iter()
        .map(|conversation_id| PushSignal {
            conversation_id,
            kind,
            message_id: message_id.clone(),
            upstream_at,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(copy: Value) -> Vec<String> {
        signals(&copy, &["alice".into(), "bob".into()])
            .into_iter()
            .map(|s| s.conversation_id)
            .collect()
    }

    #[test]
    fn another_event_of_a_conversation_reads_it_and_the_rest_are_ignored() {
        let update = json!({"eventType": "36", "convType": "TEAM", "fromAccount": "carol",
            "to": "77", "msgidServer": "1"});
        let s = signals(&update, &["alice".into()]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].conversation_id, "alice|2|77");
        assert_eq!(s[0].kind, PushKind::Other);
        let login = json!({"eventType": "2", "accid": "alice", "clientType": "WEB"});
        assert!(ids(login).is_empty());
        let odd = json!({"eventType": "36", "convType": "ROOM", "fromAccount": "a", "to": "b"});
        assert!(ids(odd).is_empty());
    }

    #[test]
    fn a_one_to_one_message_names_each_archived_side() {
        let copy = json!({"eventType": "1", "convType": "PERSON", "fromAccount": "alice",
            "to": "bob", "msgidServer": "158844553334358021", "msgTimestamp": "1754000000000"});
        assert_eq!(ids(copy.clone()), vec!["alice|1|bob", "bob|1|alice"]);
        let s = &signals(&copy, &["carol".into(), "bob".into()])[0];
        assert_eq!(s.conversation_id, "bob|1|alice");
        assert_eq!(s.kind, PushKind::NewMessage);
        assert_eq!(s.message_id.as_deref(), Some("158844553334358021"));
        assert_eq!(s.upstream_at.unwrap().timestamp_millis(), 1_754_000_000_000);
    }

    #[test]
    fn teams_recalls_and_other_events() {
        let team = json!({"eventType": 1, "convType": "TEAM", "fromAccount": "x", "to": "t1"});
        assert_eq!(ids(team), vec!["alice|2|t1", "bob|2|t1"]);
        let sup =
            json!({"eventType": "1", "convType": "SUPER_TEAM", "fromAccount": "x", "to": "s"});
        assert_eq!(ids(sup), vec!["alice|3|s", "bob|3|s"]);
        let recall = json!({"eventType": "7", "fromAccount": "carol", "to": "alice",
            "deleteMsgid": "5"});
        let s = signals(&recall, &["alice".into()]);
        assert_eq!(s[0].conversation_id, "alice|1|carol");
        assert_eq!(s[0].kind, PushKind::Recall);
        assert_eq!(s[0].message_id.as_deref(), Some("5"));
        assert!(ids(json!({"eventType": "2", "accid": "alice"})).is_empty());
        assert!(ids(
            json!({"eventType": "1", "convType": "CHATROOM", "fromAccount": "a",
            "to": "r"})
        )
        .is_empty());
        assert!(ids(
            json!({"eventType": "1", "convType": "PERSON", "fromAccount": "x",
            "to": "y"})
        )
        .is_empty());
    }
}
