//! Yunxin HTTP calls: the CheckSum signature, the `{code, msg, data}` envelope and error
//! classification (`docs/upstreams/yunxin.md`, "Signing" and "Errors and rate limits").
//! Nothing is retried here. Error texts name the source, the method and the path, never a
//! header, the app secret or a query string.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha1::{Digest, Sha1};

use super::super::http::{self, raw_body, HttpClient};
use super::super::ConnectorError;
use crate::config::Secret;
use crate::model::SourceName;

pub const LIST: &str = "/im/v2.1/conversations";
pub const BATCH: &str = "/im/v2.1/conversations/actions/conversation_ids";
pub const QUICK_COMMENTS: &str = "/im/v2/messages/actions/quick_comment";

/// Path segment encoding: everything but unreserved characters (`|` becomes `%7C`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// `hex_lower(SHA1(app_secret ‖ nonce ‖ cur_time))`.
pub fn checksum(app_secret: &str, nonce: &str, cur_time: &str) -> String {
    let mut h = Sha1::new();
    h.update(app_secret.as_bytes());
    h.update(nonce.as_bytes());
    h.update(cur_time.as_bytes());
    hex::encode(h.finalize())
}

/// The history path of a conversation, its id percent-encoded as one segment.
pub fn history_path(conversation_id: &str) -> String {
    format!(
        "/im/v2.1/conversations/{}/messages",
        utf8_percent_encode(conversation_id, SEGMENT)
    )
}

pub struct Api {
    http: HttpClient,
    base_url: String,
    app_key: String,
    app_secret: Secret,
    source: SourceName,
}

impl Api {
    pub fn new(
        http: HttpClient,
        base_url: &str,
        app_key: &str,
        app_secret: Secret,
        source: SourceName,
    ) -> Self {
        Api {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            app_key: app_key.to_string(),
            app_secret,
            source,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A signed call; `data` of a `code: 200` answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, ConnectorError> {
        let what = format!("yunxin source {}: {method} {what}", self.source);
        let nonce: String = {
            let mut rng = rand::thread_rng();
            (0..32)
                .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
                .collect()
        };
        let cur_time = chrono::Utc::now().timestamp().to_string();
        let sum = checksum(self.app_secret.expose(), &nonce, &cur_time);
        let mut request = self
            .http
            .request(method, &format!("{}{path}", self.base_url))
            .header("AppKey", &self.app_key)
            .header("Nonce", &nonce)
            .header("CurTime", &cur_time)
            .header("CheckSum", sum)
            .header("X-custom-traceid", &nonce);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json;charset=UTF-8")
                .body(body.to_string());
        }
        let response = self.http.send(request, &what).await?;
        classify(
            &what,
            response.status,
            &response.body,
            response.retry_after(),
        )
    }
}

/// Turn an HTTP answer into `data` or a classified error. The IM API answers HTTP 200
/// with the outcome in `code`; any other HTTP status comes from the path to it (a proxy,
/// a load balancer) and goes by the connectors' one table ([`http::status_error`]).
pub fn classify(
    what: &str,
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Result<Value, ConnectorError> {
    if !status.is_success() {
        return Err(http::status_error(what, status, retry_after, None));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ConnectorError::Decode {
        message: format!("{what}: the answer is not JSON ({e})"),
        raw: Some(raw_body(body)),
    })?;
    let Some(code) = value.get("code").and_then(Value::as_i64) else {
        return Err(ConnectorError::Decode {
            message: format!("{what}: the answer has no integer code"),
            raw: Some(value),
        });
    };
    let msg = value
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    match code {
        200 => Ok(value
            .get("data")
            .or_else(|| value.get("ret"))
            .cloned()
            .unwrap_or(Value::Null)),
        416 => Err(ConnectorError::RateLimited { retry_after: None }),
        // 408: the status table's "client request times out"; 500/503/514 server error,
        // busy, unavailable
        408 | 500 | 503 | 514 => Err(ConnectorError::Transient(format!(
            "{what}: upstream code {code} (timed out, server busy or failing): {msg}"
        ))),
        414 => Err(ConnectorError::Permanent(format!(
            "{what}: upstream refused the request (code 414, parameter or signature error: {msg}); \
             if every call fails this way, check app_key, app_secret and the host clock"
        ))),
        403 | 404 | 417 | 508 | 107404 | 107449 | 108404 | 109404 => Err(
            ConnectorError::Permanent(format!("{what}: upstream code {code}: {msg}")),
        ),
        108403 => Err(ConnectorError::Permanent(format!(
            "{what}: the account is not a member of the team (code 108403): {msg}"
        ))),
        _ => Err(ConnectorError::Permanent(format!(
            "{what}: unknown upstream code {code}: {msg}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_vectors() {
        // plain concatenation, SHA-1, lowercase hex (vectors computed with sha1sum)
        assert_eq!(
            checksum("0123456789ab", "4tgggergigwow323t23t", "1443592222"),
            "2b3c3ba113c760606d5830e4d807ad8490040efd"
        );
        assert_eq!(
            checksum("b4a195302963", "12345", "1700000000"),
            "d5c826fa4e91d0b0b8af0f4e4217b1507fe8dd16"
        );
        assert_eq!(
            checksum("appsecret", "nonce", "1"),
            "287f988d04b0249d94c25193736faecd11963e17"
        );
    }

    #[test]
    fn conversation_ids_are_one_encoded_segment() {
        assert_eq!(
            history_path("alice|1|bob"),
            "/im/v2.1/conversations/alice%7C1%7Cbob/messages"
        );
        assert_eq!(
            history_path("a/b|2|1"),
            "/im/v2.1/conversations/a%2Fb%7C2%7C1/messages"
        );
    }

    #[test]
    fn envelope_codes_are_classified() {
        let ok = |b: &str| classify("x", StatusCode::OK, b.as_bytes(), None);
        assert_eq!(
            ok(r#"{"code":200,"msg":"success","data":{"a":158844553334358021}}"#).unwrap()["a"]
                .as_i64(),
            Some(158_844_553_334_358_021)
        );
        assert!(matches!(
            ok(r#"{"code":416,"msg":"freq","data":{}}"#),
            Err(ConnectorError::RateLimited { .. })
        ));
        assert!(matches!(
            ok(r#"{"code":503,"msg":"busy","data":{}}"#),
            Err(ConnectorError::Transient(_))
        ));
        match ok(r#"{"code":414,"msg":"bad time","data":{}}"#) {
            Err(ConnectorError::Permanent(m)) => assert!(m.contains("bad time")),
            other => panic!("{other:?}"),
        }
        match ok(r#"{"code":0,"msg":"???","data":{}}"#) {
            Err(ConnectorError::Permanent(m)) => assert!(m.contains("unknown upstream code 0")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok("<html>"),
            Err(ConnectorError::Decode { raw: Some(_), .. })
        ));
        assert!(matches!(
            classify("x", StatusCode::BAD_GATEWAY, b"", None),
            Err(ConnectorError::Transient(_))
        ));
        assert!(matches!(
            classify("x", StatusCode::TOO_MANY_REQUESTS, b"", None),
            Err(ConnectorError::RateLimited { .. })
        ));
        assert!(matches!(
            classify("x", StatusCode::REQUEST_TIMEOUT, b"", None),
            Err(ConnectorError::Transient(_))
        ));
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
        ] {
            assert!(matches!(
                classify("x", status, b"", None),
                Err(ConnectorError::Permanent(_))
            ));
        }
        for code in [408, 500, 503, 514] {
            let body = format!(r#"{{"code":{code},"msg":"busy","data":{{}}}}"#);
            assert!(matches!(ok(&body), Err(ConnectorError::Transient(_))));
        }
        for code in [403, 404, 414, 417, 107404, 108404] {
            let body = format!(r#"{{"code":{code},"msg":"no","data":{{}}}}"#);
            assert!(
                matches!(ok(&body), Err(ConnectorError::Permanent(_))),
                "{code}"
            );
        }
        // a 200 without data is an empty answer, and `ret` is read where `data` is missing
        assert_eq!(ok(r#"{"code":200,"msg":"success"}"#).unwrap(), Value::Null);
        assert_eq!(
            ok(r#"{"code":200,"ret":{"k":1}}"#).unwrap()["k"].as_i64(),
            Some(1)
        );
    }
}
