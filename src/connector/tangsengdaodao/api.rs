//! TangSengDaoDao HTTP calls and error classification (spec §1).
//!
//! Every call is a JSON `POST` under `{base_url}/v1/` with the `token` header, sent through
//! the shared [`HttpClient`] (rate limit, request counters, bounded body). Responses are
//! classified here into [`ConnectorError`]s; nothing is retried. Error texts name the source
//! and the path, never the token or the password.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::super::http::HttpClient;
use super::super::ConnectorError;
use crate::config::Secret;
use crate::model::SourceName;

pub const LOGIN: &str = "/v1/user/login";
pub const CONVERSATION_SYNC: &str = "/v1/conversation/sync";
pub const CHANNEL_SYNC: &str = "/v1/message/channel/sync";
pub const EXTRA_SYNC: &str = "/v1/message/extra/sync";
pub const REACTION_SYNC: &str = "/v1/reaction/sync";

/// How much of an undecodable body is kept for quarantine.
const MAX_RAW_BODY: usize = 64 * 1024;

pub struct Api {
    http: HttpClient,
    /// API root without a trailing slash; paths start with `/v1/`.
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

    /// How a request is named in errors: the source, the path and (for channel calls) the
    /// channel. Never a header or a body.
    pub fn what(&self, path: &str, channel: Option<&str>) -> String {
        match channel {
            Some(channel) => format!(
                "tsdd source {}: POST {path} (channel {channel})",
                self.source
            ),
            None => format!("tsdd source {}: POST {path}", self.source),
        }
    }

    /// An authenticated call; the decoded JSON body on 2xx.
    pub async fn post(
        &self,
        path: &str,
        channel: Option<&str>,
        token: &Secret,
        body: &Value,
    ) -> Result<Value, ConnectorError> {
        let what = self.what(path, channel);
        let request = self
            .http
            .request(Method::POST, &format!("{}{path}", self.base_url))
            .header("token", token.expose())
            .json(body);
        let response = self.http.send(request, &what).await?;
        classify(
            &what,
            response.status,
            response.retry_after(),
            &response.body,
        )
    }

    /// `POST /v1/user/login` (no token). A refusal (400) means bad credentials here, so it is
    /// [`ConnectorError::Unauthorized`]. The response carries the token, so a body that
    /// cannot be decoded is never kept.
    pub async fn login(&self, body: &Value) -> Result<Value, ConnectorError> {
        let what = self.what(LOGIN, None);
        let request = self
            .http
            .request(Method::POST, &format!("{}{LOGIN}", self.base_url))
            .json(body);
        let response = self.http.send(request, &what).await?;
        classify_login(
            &what,
            response.status,
            response.retry_after(),
            &response.body,
        )
    }
}

/// Classify a response: 2xx decodes, 401 is unauthorized, 429 rate limited, 408 and
/// 500/502/503/504 transient, anything else (400 with `{"msg","status"}` included) permanent.
pub fn classify(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Value, ConnectorError> {
    if status.is_success() {
        return serde_json::from_slice(body).map_err(|e| ConnectorError::Decode {
            message: format!("{what}: response is not JSON: {e}"),
            raw: Some(raw_body(body)),
        });
    }
    let detail = match upstream_msg(body) {
        Some(msg) => format!("HTTP {}: {msg}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    Err(match status.as_u16() {
        401 => ConnectorError::Unauthorized(format!("{what}: token rejected ({detail})")),
        429 => ConnectorError::RateLimited { retry_after },
        408 | 500 | 502 | 503 | 504 => ConnectorError::Transient(format!("{what}: {detail}")),
        _ => ConnectorError::Permanent(format!("{what}: upstream refused the request ({detail})")),
    })
}

/// Login classification: a 400 (wrong username or password, device lock) is unauthorized;
/// decode errors never carry the body.
pub fn classify_login(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Value, ConnectorError> {
    if status == StatusCode::BAD_REQUEST {
        let detail = upstream_msg(body).unwrap_or_else(|| "no message".to_string());
        return Err(ConnectorError::Unauthorized(format!(
            "{what}: login refused, check the username and password of this source (HTTP 400: {detail})"
        )));
    }
    match classify(what, status, retry_after, body) {
        Err(ConnectorError::Decode { message, .. }) => {
            Err(ConnectorError::Decode { message, raw: None })
        }
        other => other,
    }
}

/// The `msg` of an error body `{"msg": "...", "status": 400}`, if there is one.
fn upstream_msg(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let msg = value.get("msg")?.as_str()?.trim();
    (!msg.is_empty()).then(|| msg.chars().take(500).collect())
}

fn raw_body(body: &[u8]) -> Value {
    let end = body.len().min(MAX_RAW_BODY);
    Value::String(String::from_utf8_lossy(&body[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHAT: &str = "tsdd source acme: POST /v1/message/channel/sync (channel g_9)";

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn status_codes_are_classified() {
        let ok = classify(WHAT, status(200), None, br#"{"messages":[]}"#).unwrap();
        assert_eq!(ok["messages"], serde_json::json!([]));

        let e = classify(
            WHAT,
            status(401),
            None,
            r#"{"msg":"请先登录！"}"#.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, ConnectorError::Unauthorized(_)), "{e:?}");

        let e = classify(WHAT, status(429), Some(Duration::from_secs(7)), b"").unwrap_err();
        assert!(matches!(
            e,
            ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)
        ));

        for code in [500, 502, 503, 504] {
            let e = classify(WHAT, status(code), None, b"").unwrap_err();
            assert!(matches!(e, ConnectorError::Transient(_)), "{code}: {e:?}");
            assert!(e.is_retryable());
        }

        let e = classify(
            WHAT,
            status(400),
            None,
            r#"{"msg":"频道ID不能为空！","status":400}"#.as_bytes(),
        )
        .unwrap_err();
        match &e {
            ConnectorError::Permanent(text) => {
                assert!(text.contains("频道ID不能为空！"), "{text}");
                assert!(text.contains("/v1/message/channel/sync"), "{text}");
                assert!(text.contains("acme"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.is_retryable());

        let e = classify(WHAT, status(404), None, b"404 page not found").unwrap_err();
        assert!(matches!(e, ConnectorError::Permanent(_)));

        match classify(WHAT, status(200), None, b"<html>gateway</html>").unwrap_err() {
            ConnectorError::Decode { message, raw } => {
                assert!(message.contains(WHAT));
                assert_eq!(raw, Some(Value::String("<html>gateway</html>".into())));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn login_refusal_is_unauthorized_and_keeps_no_body() {
        let what = "tsdd source acme: POST /v1/user/login";
        let e = classify_login(
            what,
            status(400),
            None,
            r#"{"msg":"密码不正确！","status":400}"#.as_bytes(),
        )
        .unwrap_err();
        match e {
            ConnectorError::Unauthorized(text) => {
                assert!(
                    text.contains("acme") && text.contains("login refused"),
                    "{text}"
                )
            }
            other => panic!("{other:?}"),
        }
        match classify_login(what, status(200), None, br#"{"token": "abc"#).unwrap_err() {
            ConnectorError::Decode { raw, .. } => assert_eq!(raw, None),
            other => panic!("{other:?}"),
        }
    }
}
