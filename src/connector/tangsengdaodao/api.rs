//! TangSengDaoDao HTTP calls and error classification (docs/upstreams/tangsengdaodao.md,
//! "Errors").
//!
//! Every call is a JSON `POST` under `{base_url}/v1/` with the `token` header, sent through
//! the shared [`HttpClient`] (rate limit, request counters, bounded body). Responses are
//! classified here into [`ConnectorError`]s; nothing is retried. Error texts name the source
//! and the path, never the token or the password.
//!
//! A 400 is the server's generic handler failure, `{"msg": ..., "status": 400}`, and most of
//! them are the server's own trouble (its MySQL, Redis or WuKongIM call failed), not a bad
//! request: those are transient. A 500 with an empty body is a panic inside a handler, which
//! gin's recovery turns into that answer; channel sync reports it apart
//! ([`Api::post_window`]) so the connector can read around the record that causes it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::super::http::{self, HttpClient, Response};
use super::super::ConnectorError;
use crate::config::Secret;
use crate::model::SourceName;

pub const LOGIN: &str = "/v1/user/login";
pub const CONVERSATION_SYNC: &str = "/v1/conversation/sync";
pub const CHANNEL_SYNC: &str = "/v1/message/channel/sync";
pub const EXTRA_SYNC: &str = "/v1/message/extra/sync";
pub const REACTION_SYNC: &str = "/v1/reaction/sync";

/// 400 messages that say the request itself is wrong: the same request fails again. Every
/// other 400 of the endpoints chatvault calls reports a failure on the server's side.
const CLIENT_FAULTS: &[&str] = &[
    "数据格式有误！",
    "请求数据格式有误！",
    "频道ID不能为空！",
    "用户名不能为空！",
    "密码不能为空！",
    "登录设备信息不能为空！",
];

/// Login refusals about the credentials themselves.
const BAD_CREDENTIALS: &[&str] = &["用户不存在", "密码不正确！", "此账号不允许登录"];

/// Login refusals about the state of the account (disabled, banned, needs a phone check).
const ACCOUNT_REFUSALS: &[&str] = &["该用户已被禁用", "此账号已经被封禁！", "需要验证手机号码！"];

/// Why a channel-sync window could not be read.
#[derive(Debug)]
pub enum SeqWindowError {
    /// HTTP 500 with an empty body: the handler panicked on something in the window.
    Panic,
    Other(ConnectorError),
}

impl From<ConnectorError> for SeqWindowError {
    fn from(e: ConnectorError) -> Self {
        SeqWindowError::Other(e)
    }
}

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

    async fn send(
        &self,
        path: &str,
        what: &str,
        token: Option<&Secret>,
        body: &Value,
    ) -> Result<Response, ConnectorError> {
        let mut request = self
            .http
            .request(Method::POST, &format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.header("token", token.expose());
        }
        self.http.send(request.json(body), what).await
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
        let response = self.send(path, &what, Some(token), body).await?;
        classify(
            &what,
            response.status,
            response.retry_after(),
            &response.body,
        )
    }

    /// A channel-sync call that tells a handler panic (500, empty body) from other failures.
    pub async fn post_window(
        &self,
        channel: &str,
        token: &Secret,
        body: &Value,
    ) -> Result<Value, SeqWindowError> {
        let what = self.what(CHANNEL_SYNC, Some(channel));
        let response = self.send(CHANNEL_SYNC, &what, Some(token), body).await?;
        if is_panic(response.status, &response.body) {
            return Err(SeqWindowError::Panic);
        }
        Ok(classify(
            &what,
            response.status,
            response.retry_after(),
            &response.body,
        )?)
    }

    /// An authenticated `GET` (the push channel's address); the decoded JSON body on 2xx.
    pub async fn get(&self, path: &str, token: &Secret) -> Result<Value, ConnectorError> {
        let what = format!("tsdd source {}: GET {path}", self.source);
        let request = self
            .http
            .request(Method::GET, &format!("{}{path}", self.base_url))
            .header("token", token.expose());
        let response = self.http.send(request, &what).await?;
        classify(
            &what,
            response.status,
            response.retry_after(),
            &response.body,
        )
    }

    /// `POST /v1/user/login` (no token). The response carries the token, so a body that
    /// cannot be decoded is never kept.
    pub async fn login(&self, body: &Value) -> Result<Value, ConnectorError> {
        let what = self.what(LOGIN, None);
        let response = self.send(LOGIN, &what, None, body).await?;
        classify_login(
            &what,
            response.status,
            response.retry_after(),
            &response.body,
        )
    }
}

/// gin's recovery answers a panicking handler with a bare 500.
pub fn is_panic(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::INTERNAL_SERVER_ERROR && body.iter().all(u8::is_ascii_whitespace)
}

/// Classify a response: 2xx decodes; a 400 is transient when its `msg` reports the
/// server's own failure (its handlers answer 400 for both) and permanent when it says the
/// request is wrong; every other status goes by the connectors' one table
/// ([`http::status_error`]), with the server's `msg`, or the panic a bare 500 is, named.
pub fn classify(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Value, ConnectorError> {
    if !status.is_success() {
        return Err(status_error(what, status, retry_after, body));
    }
    serde_json::from_slice(body).map_err(|e| ConnectorError::Decode {
        message: format!("{what}: response is not JSON: {e}"),
        raw: Some(http::raw_body(body)),
    })
}

fn status_error(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ConnectorError {
    let msg = upstream_msg(body);
    if status == StatusCode::BAD_REQUEST {
        if let Some(msg) = msg.as_deref().filter(|m| server_failure(m)) {
            return ConnectorError::Transient(format!(
                "{what}: the server failed on its side (HTTP 400: {msg})"
            ));
        }
    }
    let said = match msg {
        Some(msg) => Some(msg),
        None if is_panic(status, body) => {
            Some("an empty body, from a panic in the server's handler".to_string())
        }
        None => None,
    };
    http::status_error(what, status, retry_after, said.as_deref())
}

/// Whether a 400 `msg` reports a failure of the server's own storage or of WuKongIM (e.g.
/// `同步频道内的消息失败！`, `同步离线后的最近会话失败！`, `获取缓存seq错误`, or a raw database
/// error text) rather than a bad request.
pub fn server_failure(msg: &str) -> bool {
    let msg = msg.trim();
    if CLIENT_FAULTS.contains(&msg)
        || BAD_CREDENTIALS.contains(&msg)
        || ACCOUNT_REFUSALS.contains(&msg)
    {
        return false;
    }
    // The server's own failure texts all say 失败 (failed) or 错误 (error); a handler that
    // passes a Go error through (`c.ResponseError(err)`) shows an English error text.
    msg.contains("失败")
        || msg.contains("错误")
        || msg.contains("error")
        || msg.contains("Error")
        || msg.contains("dial tcp")
        || msg.contains("timeout")
        || msg.contains("connection")
}

/// Login classification. A refusal of the credentials or of the account is unauthorized and
/// says what the server said; a failure on the server's side is transient; decode errors
/// never carry the body (it would hold the token).
pub fn classify_login(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Value, ConnectorError> {
    if status == StatusCode::BAD_REQUEST {
        let msg = upstream_msg(body);
        let shown = msg.as_deref().unwrap_or("no message");
        let trimmed = shown.trim();
        if BAD_CREDENTIALS.contains(&trimmed) {
            return Err(ConnectorError::Unauthorized(format!(
                "{what}: login refused: {trimmed} (check the username and password of this source)"
            )));
        }
        if ACCOUNT_REFUSALS.contains(&trimmed) {
            return Err(ConnectorError::Unauthorized(format!(
                "{what}: login refused: {trimmed} (the server refuses this account)"
            )));
        }
        if msg.as_deref().is_some_and(server_failure) {
            return Err(ConnectorError::Transient(format!(
                "{what}: login failed on the server's side (HTTP 400: {trimmed})"
            )));
        }
        return Err(ConnectorError::Permanent(format!(
            "{what}: login refused (HTTP 400: {trimmed})"
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

    /// The 400 texts of the endpoints chatvault calls, as the real handlers write them
    /// (modules/message/api.go, modules/message/api_conversation.go, modules/user/api.go).
    #[test]
    fn a_400_reporting_the_servers_own_failure_is_transient_and_says_what_failed() {
        for msg in [
            "同步频道内的消息失败！",
            "查询是否在群内存在失败！",
            "查询频道设置错误",
            "同步消息扩展数据失败！",
            "从缓存中获取消息扩展版本失败！",
            "缓存最大的消息扩展版本失败！",
            "获取缓存seq错误",
            "同步离线后的最近会话失败！",
            "获取用户超大群失败！",
            "查询最近会话扩展失败！",
        ] {
            let body = serde_json::json!({"msg": msg, "status": 400}).to_string();
            let e = classify(WHAT, status(400), None, body.as_bytes()).unwrap_err();
            match &e {
                ConnectorError::Transient(text) => {
                    assert!(text.contains(msg) && text.contains("acme"), "{text}")
                }
                other => panic!("{msg}: {other:?}"),
            }
        }
        for msg in ["频道ID不能为空！", "数据格式有误！"] {
            let body = serde_json::json!({"msg": msg, "status": 400}).to_string();
            let e = classify(WHAT, status(400), None, body.as_bytes()).unwrap_err();
            assert!(matches!(e, ConnectorError::Permanent(_)), "{msg}: {e:?}");
        }
        // a bare 500 is a panic in the handler, and says so
        let e = classify(WHAT, status(500), None, b"").unwrap_err();
        assert!(e.to_string().contains("panic"), "{e}");
        assert!(is_panic(status(500), b""));
        assert!(!is_panic(status(500), b"<html>oops</html>"));
        assert!(!is_panic(status(502), b""));
    }

    #[test]
    fn login_answers_say_what_the_server_said() {
        let what = "tsdd source acme: POST /v1/user/login";
        let login = |msg: &str| {
            let body = serde_json::json!({"msg": msg, "status": 400}).to_string();
            classify_login(what, status(400), None, body.as_bytes()).unwrap_err()
        };
        match login("用户不存在") {
            ConnectorError::Unauthorized(text) => {
                assert!(
                    text.contains("用户不存在") && text.contains("username"),
                    "{text}"
                )
            }
            other => panic!("{other:?}"),
        }
        match login("该用户已被禁用") {
            ConnectorError::Unauthorized(text) => {
                assert!(text.contains("该用户已被禁用"), "{text}");
                assert!(!text.contains("password"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        for msg in [
            "设置token缓存失败！",
            "更新IM的token失败！",
            "获取旧token错误",
        ] {
            match login(msg) {
                ConnectorError::Transient(text) => {
                    assert!(text.contains(msg), "{text}");
                    assert!(!text.contains("password"), "{text}");
                }
                other => panic!("{msg}: {other:?}"),
            }
        }
        match login("需要绑定手机号") {
            ConnectorError::Permanent(text) => {
                assert!(
                    text.contains("需要绑定手机号") && !text.contains("password"),
                    "{text}"
                )
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
