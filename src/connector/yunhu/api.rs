//! Yunhu HTTP calls and error classification (`docs/upstreams/yunhu.md`, "Transport" and
//! "Errors").
//!
//! Every call is a `POST` under `{base_url}/v1/` with the `token` header. Protobuf endpoints
//! take and answer raw protobuf; the edit record is JSON. A protobuf endpoint may still
//! answer with a JSON body (a bad or missing token gives `{"code":-101,"msg":"未登录"}`),
//! so a body starting with `{` is read as the JSON error it is. Nothing is retried here;
//! error texts name the source and the path, never the token.

use std::time::Duration;

use prost::Message;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::super::http::{self, raw_body, HttpClient};
use super::super::ConnectorError;
use crate::config::Secret;
use crate::model::SourceName;

pub const CONVERSATION_LIST: &str = "/v1/conversation/list";
pub const ADDRESS_BOOK_LIST: &str = "/v1/friend/address-book-list";
pub const LIST_MESSAGE: &str = "/v1/msg/list-message";
pub const LIST_MESSAGE_BY_SEQ: &str = "/v1/msg/list-message-by-seq";
pub const EDIT_RECORD: &str = "/v1/msg/list-message-edit-record";
/// The account's own profile (a `GET`): its user id, for the push channel's login.
pub const USER_INFO: &str = "/v1/user/info";

/// Yunhu's "not logged in" code.
pub const CODE_UNAUTHORIZED: i64 = -101;
/// The bot open API's "rate limited" code, treated the same here.
pub const CODE_RATE_LIMITED: i64 = 1007;

pub struct Api {
    http: HttpClient,
    base_url: String,
    source: SourceName,
}

impl Api {
    pub fn new(http: HttpClient, base_url: &str, source: SourceName) -> Self {
        Api {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            source,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// How a request is named in errors. Never a header or a body.
    pub fn what(&self, path: &str, chat: Option<&str>) -> String {
        match chat {
            Some(chat) => format!("yunhu source {}: POST {path} (chat {chat})", self.source),
            None => format!("yunhu source {}: POST {path}", self.source),
        }
    }

    /// How a `GET` is named in errors.
    pub fn what_get(&self, path: &str) -> String {
        format!("yunhu source {}: GET {path}", self.source)
    }

    /// `GET {base_url}{path}` with the token: the raw body once it is known to be protobuf
    /// (not a JSON error) on a 2xx.
    pub async fn get_proto(&self, path: &str, token: &Secret) -> Result<Vec<u8>, ConnectorError> {
        let what = self.what_get(path);
        let request = self
            .http
            .request(Method::GET, &format!("{}{path}", self.base_url))
            .header("token", token.expose());
        let body = self.send(request, &what).await?;
        if looks_like_json(&body) {
            return Err(json_error(&what, &body));
        }
        Ok(body)
    }

    /// `POST {base_url}{path}` with the token.
    fn post(&self, path: &str, token: &Secret) -> reqwest::RequestBuilder {
        self.http
            .request(Method::POST, &format!("{}{path}", self.base_url))
            .header("token", token.expose())
    }

    /// Send a request; the body of a 2xx answer, else the classified error.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Vec<u8>, ConnectorError> {
        let response = self.http.send(request, what).await?;
        check_http(
            what,
            response.status,
            response.retry_after(),
            &response.body,
        )?;
        Ok(response.body)
    }

    /// A protobuf call: the raw response body once it is known to be protobuf (not a JSON
    /// error) on a 2xx.
    pub async fn post_proto<M: Message>(
        &self,
        path: &str,
        chat: Option<&str>,
        token: &Secret,
        request: &M,
    ) -> Result<Vec<u8>, ConnectorError> {
        let what = self.what(path, chat);
        let request = self
            .post(path, token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(request.encode_to_vec());
        let body = self.send(request, &what).await?;
        if looks_like_json(&body) {
            return Err(json_error(&what, &body));
        }
        Ok(body)
    }

    /// A JSON call: the `data` of a `{"code":1,...}` answer.
    pub async fn post_json(
        &self,
        path: &str,
        chat: Option<&str>,
        token: &Secret,
        body: &Value,
    ) -> Result<Value, ConnectorError> {
        let what = self.what(path, chat);
        let body = self.send(self.post(path, token).json(body), &what).await?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| ConnectorError::Decode {
            message: format!("{what}: response is not JSON: {e}"),
            raw: Some(raw_body(&body)),
        })?;
        match value.get("code").and_then(Value::as_i64) {
            Some(1) => Ok(value.get("data").cloned().unwrap_or(Value::Null)),
            Some(code) => Err(code_error(
                &what,
                code,
                value.get("msg").and_then(Value::as_str),
            )),
            None => Err(ConnectorError::Decode {
                message: format!("{what}: response has no code"),
                raw: Some(value),
            }),
        }
    }
}

/// A decoded protobuf `Status` that is not success, as an error.
pub fn check_status(what: &str, status: Option<&super::pb::Status>) -> Result<(), ConnectorError> {
    match status {
        Some(s) if s.code == 1 => Ok(()),
        Some(s) => Err(code_error(what, s.code, Some(&s.msg))),
        None => Err(ConnectorError::Decode {
            message: format!("{what}: response has no status"),
            raw: None,
        }),
    }
}

/// An upstream code other than 1, classified.
pub fn code_error(what: &str, code: i64, msg: Option<&str>) -> ConnectorError {
    let detail = match msg.filter(|m| !m.is_empty()) {
        Some(msg) => format!("code {code}: {}", truncate(msg)),
        None => format!("code {code}"),
    };
    match code {
        CODE_UNAUTHORIZED => ConnectorError::Unauthorized(format!(
            "{what}: token rejected ({detail}); log in again and update the token"
        )),
        CODE_RATE_LIMITED => ConnectorError::RateLimited { retry_after: None },
        _ => ConnectorError::Permanent(format!("{what}: upstream refused ({detail})")),
    }
}

/// 2xx passes. A JSON error body with code -101 is "token rejected" whatever the status;
/// every other status goes by the connectors' one table ([`http::status_error`]).
fn check_http(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(), ConnectorError> {
    if status.is_success() {
        return Ok(());
    }
    // A JSON error body says more than the status line.
    if looks_like_json(body) {
        if let Ok(value) = serde_json::from_slice::<Value>(body) {
            if let Some(code) = value.get("code").and_then(Value::as_i64) {
                if code == CODE_UNAUTHORIZED {
                    return Err(code_error(
                        what,
                        code,
                        value.get("msg").and_then(Value::as_str),
                    ));
                }
            }
        }
    }
    Err(http::status_error(what, status, retry_after, None))
}

fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// A JSON body where protobuf was expected: an error either way.
fn json_error(what: &str, body: &[u8]) -> ConnectorError {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => match value.get("code").and_then(Value::as_i64) {
            Some(code) if code != 1 => {
                code_error(what, code, value.get("msg").and_then(Value::as_str))
            }
            _ => ConnectorError::Decode {
                message: format!("{what}: a JSON body where protobuf was expected"),
                raw: Some(value),
            },
        },
        Err(_) => ConnectorError::Decode {
            message: format!("{what}: response is neither protobuf nor JSON"),
            raw: Some(raw_body(body)),
        },
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_on_protobuf_endpoints_are_errors() {
        let e = json_error("w", r#"{"code":-101,"msg":"未登录"}"#.as_bytes());
        assert!(
            matches!(e, ConnectorError::Unauthorized(ref m) if m.contains("-101")),
            "{e}"
        );
        let e = json_error("w", br#"{"code":-1,"msg":"nope"}"#);
        assert!(
            matches!(e, ConnectorError::Permanent(ref m) if m.contains("nope")),
            "{e}"
        );
        let e = json_error("w", b"{not json");
        assert!(matches!(e, ConnectorError::Decode { .. }), "{e}");
        assert!(looks_like_json(b"  \n{\"code\":1}"));
        assert!(!looks_like_json(b"\x0a\x02{}"));
    }

    #[test]
    fn http_statuses_are_classified() {
        let ok = check_http("w", StatusCode::OK, None, b"");
        assert!(ok.is_ok());
        let e = check_http(
            "w",
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(2)),
            b"",
        );
        assert!(matches!(
            e,
            Err(ConnectorError::RateLimited {
                retry_after: Some(_)
            })
        ));
        let e = check_http("w", StatusCode::BAD_GATEWAY, None, b"<html>");
        assert!(matches!(e, Err(ConnectorError::Transient(_))));
        let e = check_http("w", StatusCode::NOT_FOUND, None, b"");
        assert!(matches!(e, Err(ConnectorError::Permanent(_))));
    }
}
