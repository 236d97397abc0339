//! Quick comments (快捷评论) of one history page, by the batch query
//! `POST /im/v2/messages/actions/quick_comment` (`docs/upstreams/yunxin.md`, "Quick
//! comments").
//!
//! The query never holds back the page's messages. A failed query (an error code, an HTTP
//! error, an answer without `success_list`, a message the answer does not mention) leaves
//! those messages' reactions untouched and names them in [`Comments::pending`]; the feed
//! keeps their window in its cursor and reads it again on a later run. Only a transient
//! failure on the first tries of a page is handed to the engine, which repeats the page, so
//! a single failed request changes nothing. Messages without a `message_client_id` (a
//! field the API marks required) are asked for in queries of their own, so that whatever
//! upstream does with them cannot fail the query for the others.

use std::collections::{HashMap, HashSet};

use reqwest::Method;
use serde_json::{json, Value};
use tracing::warn;

use super::{api, map, YunxinConnector};
use crate::connector::ConnectorError;

/// Messages per quick-comment query.
pub(super) const BATCH: usize = 100;
/// Tries of one page (`FetchRequest::attempt`) on which a transient failure of the query
/// goes to the engine (which repeats the page); later ones leave the comments pending.
pub(super) const TRIES: u32 = 2;

/// One history item to ask about: the item, its id, its `create_time`.
pub(super) type Item<'a> = (&'a Value, String, i64);

/// What the queries of one page found.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Comments {
    /// Each message's full comment list (readable), by message id.
    pub found: HashMap<String, Value>,
    /// `create_time` of messages whose comments are to be read again later.
    pub pending: Vec<i64>,
    /// Messages upstream refused to give comments for, with why (reactions untouched).
    pub refused: HashMap<String, String>,
}

/// Per-item codes worth asking again (server busy or failing, rate limited).
fn retryable_code(code: i64) -> bool {
    matches!(code, 416 | 500 | 503 | 514)
}

/// Fold one query's answer (`data`) into `out`.
pub(super) fn take_answer(data: &Value, asked: &[Item<'_>], out: &mut Comments) {
    let ids: HashMap<&str, i64> = asked.iter().map(|(_, id, ct)| (id.as_str(), *ct)).collect();
    let mut answered: HashSet<String> = HashSet::new();
    let list = |key: &str| {
        data.get(key)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    };
    for entry in list("success_list") {
        let Some(id) = map::int(entry, "message_server_id").map(|i| i.to_string()) else {
            continue;
        };
        if !ids.contains_key(id.as_str()) || !answered.insert(id.clone()) {
            continue;
        }
        match entry.get("comments") {
            Some(c) if map::reactions(c).is_some() => {
                out.found.insert(id, c.clone());
            }
            _ => {
                out.refused.insert(
                    id,
                    "the quick-comment answer for this message has no readable comments list"
                        .into(),
                );
            }
        }
    }
    for entry in list("failed_list") {
        let Some(id) = map::int(entry, "message_server_id").map(|i| i.to_string()) else {
            continue;
        };
        let Some(&ct) = ids.get(id.as_str()) else {
            continue;
        };
        if !answered.insert(id.clone()) {
            continue;
        }
        let code = map::int(entry, "error_code");
        if code.is_none_or(retryable_code) {
            out.pending.push(ct);
        } else {
            let msg: String = map::string(entry, "error_msg")
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            out.refused.insert(
                id,
                format!(
                    "quick comments refused (code {}): {msg}",
                    code.unwrap_or_default()
                ),
            );
        }
    }
    // not mentioned at all (e.g. no success_list): ask again later
    for (_, id, ct) in asked {
        if !answered.contains(id) {
            out.pending.push(*ct);
        }
    }
}

impl YunxinConnector {
    /// The quick comments of one page's messages. `Err` only for a rate limit or a
    /// transient failure on the page's first [`TRIES`] tries (the engine repeats the page).
    pub(super) async fn quick_comments(
        &self,
        conv: &str,
        items: &[Item<'_>],
        attempt: u32,
    ) -> Result<Comments, ConnectorError> {
        let mut out = Comments::default();
        let (with_id, without_id): (Vec<&Item<'_>>, Vec<&Item<'_>>) = items
            .iter()
            .partition(|(item, _, _)| map::client_id(item).is_some());
        for (chunk, has_client_id) in with_id
            .chunks(BATCH)
            .map(|c| (c, true))
            .chain(without_id.chunks(BATCH).map(|c| (c, false)))
        {
            let asked: Vec<Item<'_>> = chunk.iter().map(|it| (it.0, it.1.clone(), it.2)).collect();
            self.query(conv, &asked, attempt, has_client_id, &mut out)
                .await?;
        }
        Ok(out)
    }

    async fn query(
        &self,
        conv: &str,
        asked: &[Item<'_>],
        attempt: u32,
        has_client_id: bool,
        out: &mut Comments,
    ) -> Result<(), ConnectorError> {
        let body = json!({"messages": asked.iter().map(|(i, _, _)| map::comment_key(i)).collect::<Vec<_>>()});
        let what = format!("{} (conversation {conv})", api::QUICK_COMMENTS);
        match self
            .api
            .call(Method::POST, api::QUICK_COMMENTS, &[], Some(&body), &what)
            .await
        {
            Ok(data) => take_answer(&data, asked, out),
            Err(e @ ConnectorError::RateLimited { .. }) => return Err(e),
            Err(e @ ConnectorError::Transient(_)) if attempt < TRIES => return Err(e),
            Err(ConnectorError::Permanent(e)) if !has_client_id => {
                // upstream cannot answer for these messages; asking again changes nothing
                for (_, id, _) in asked {
                    out.refused.insert(
                        id.clone(),
                        format!("quick comments of a message without message_client_id: {e}"),
                    );
                }
            }
            Err(e) => {
                warn!(conversation = conv, messages = asked.len(), error = %e,
                      "quick-comment query failed; the messages are archived and their comments read on a later run");
                out.pending.extend(asked.iter().map(|(_, _, ct)| *ct));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[Value]) -> Vec<Item<'_>> {
        v.iter()
            .map(|i| {
                (
                    i,
                    map::int(i, "message_server_id").unwrap().to_string(),
                    map::int(i, "create_time").unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn answers_are_sorted_into_found_pending_and_refused() {
        let msgs: Vec<Value> = (1..=5)
            .map(|i| json!({"message_server_id": i, "create_time": i * 10}))
            .collect();
        let asked = items(&msgs);
        let data = json!({
            "success_list": [
                {"message_server_id": 1, "comments": [{"operator_id": "a", "index": 2}]},
                {"message_server_id": 2, "comments": [{"operator_id": "a"}]},
                {"message_server_id": 99, "comments": []},
            ],
            "failed_list": [
                {"message_server_id": 3, "error_code": 107404, "error_msg": "not found"},
                {"message_server_id": 4, "error_code": 503},
            ],
        });
        let mut out = Comments::default();
        take_answer(&data, &asked, &mut out);
        assert_eq!(out.found.keys().collect::<Vec<_>>(), vec!["1"]);
        let mut refused: Vec<&String> = out.refused.keys().collect();
        refused.sort();
        assert_eq!(refused, vec!["2", "3"]);
        out.pending.sort();
        assert_eq!(out.pending, vec![40, 50], "busy, and not mentioned");
    }

    #[test]
    fn an_answer_without_success_list_leaves_everything_pending() {
        let msgs: Vec<Value> = (1..=3)
            .map(|i| json!({"message_server_id": i, "create_time": i}))
            .collect();
        let mut out = Comments::default();
        take_answer(&json!({"failed_list": []}), &items(&msgs), &mut out);
        assert!(out.found.is_empty() && out.refused.is_empty());
        assert_eq!(out.pending, vec![1, 2, 3]);
        let mut out = Comments::default();
        take_answer(&Value::Null, &items(&msgs), &mut out);
        assert_eq!(out.pending.len(), 3);
    }
}
