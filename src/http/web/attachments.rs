//! `GET /attachment/{source}/{conversation}/{message}/{ordinal}`: a stored attachment's
//! file, streamed from the blob store.
//!
//! The file is found through its row in `vault.attachments` (key and recorded sha256),
//! never through a path taken from the request. It is served as what its recorded type
//! says only when a browser cannot run it: images (not SVG), audio, video and PDF are
//! shown inline; anything else, and anything claiming HTML, XML or SVG, goes out as
//! `application/octet-stream` with `Content-Disposition: attachment`. Every answer carries
//! `X-Content-Type-Options: nosniff` and a Content-Security-Policy that allows no script.
//! Each file served is recorded in the access log (action `attachment`) before a byte of
//! it is sent; its ETag is its sha256, and a browser that already has it gets 304
//! (recorded the same way).

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;

use super::super::access::Caller;
use super::super::api::{record_access, ApiError};
use super::super::ApiState;
use super::pages::encode;
use crate::attachments::blob::{BlobPart, BlobReader, ByteRange, Sha256Hex};
use crate::store::browse::AttachmentView;
use crate::store::{AccessRecord, AccessedId, Via};

/// The policy of every file answer: nothing may run, load or frame it.
pub const FILE_CSP: &str =
    "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'self'";

/// The longest source, conversation or message id the route accepts (bytes).
const MAX_ID_BYTES: usize = 1024;

/// `/attachment/{source}/{conversation}/{message}/{ordinal}`, every part percent-encoded.
pub fn attachment_href(source: &str, conversation: &str, message: &str, ordinal: i32) -> String {
    format!(
        "/attachment/{}/{}/{}/{ordinal}",
        encode(source),
        encode(conversation),
        encode(message)
    )
}

/// The type a stored file with this recorded type is served as inline, or `None`: served
/// as a download (`application/octet-stream`). Only the essence (`type/subtype`,
/// lowercased) of a well-formed type is kept.
pub fn inline_type(mime: Option<&str>) -> Option<String> {
    let essence = mime?.split(';').next()?.trim().to_ascii_lowercase();
    let (top, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(top) || !token(sub) {
        return None;
    }
    // SVG and anything XML or HTML can carry script.
    if ["svg", "xml", "html"].iter().any(|bad| sub.contains(bad)) {
        return None;
    }
    let inline = match top {
        "image" | "audio" | "video" => true,
        "application" => sub == "pdf",
        _ => false,
    };
    inline.then_some(essence)
}

/// The name a downloaded file gets: the recorded name's last path part without control
/// characters (at most 200 characters), or `attachment-N`.
pub fn download_name(a: &AttachmentView) -> String {
    let name: String = a
        .name
        .as_deref()
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let name = name.trim().trim_start_matches('.');
    if name.is_empty() {
        format!("attachment-{}", a.ordinal)
    } else {
        name.to_string()
    }
}

/// `attachment; filename*=UTF-8''…` (RFC 6266, RFC 8187), or `inline; …`.
pub fn content_disposition(inline: bool, name: &str) -> String {
    let mut encoded = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename*=UTF-8''{encoded}")
}

/// One part of the path: present, not too long, no control characters (which no archived
/// id holds and PostgreSQL could not take).
fn check_id(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "bad {what} in the path: it must be 1 to {MAX_ID_BYTES} bytes without control \
                 characters; use a link from the conversation page"
            ),
        ));
    }
    Ok(())
}

/// The ordinal: a number from 0 up (at most 9 digits).
fn parse_ordinal(value: &str) -> Result<i32, ApiError> {
    if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad attachment number in the path: it must be a number from 0 up; use a link \
             from the conversation page",
        ));
    }
    value
        .parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "bad attachment number in the path"))
}

pub(super) async fn attachment_file(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
) -> Response {
    match serve(&state, &caller, &headers, path).await {
        Ok(response) => response,
        Err(e) => {
            let mut response = e.into_response_for(&headers);
            response.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            response
        }
    }
}

async fn serve(
    state: &ApiState,
    caller: &Caller,
    request: &HeaderMap,
    path: Result<Path<(String, String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((source, conversation, message, ordinal)) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    check_id("source", &source)?;
    check_id("conversation", &conversation)?;
    check_id("message", &message)?;
    let ordinal = parse_ordinal(&ordinal)?;
    let found = state
        .store
        .attachment(&source, &conversation, &message, ordinal)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "attachment: database query failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the archive database did not answer; try again in a moment",
            )
        })?;
    let Some(a) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the archive has no attachment {ordinal} of message {message:?} in conversation \
                 {conversation:?} of source {source:?}"
            ),
        ));
    };
    let sha256 = match (&a.sha256, a.status.as_str()) {
        (Some(sha), "stored") => Sha256Hex::parse(sha)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}")))?,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "attachment {ordinal} of message {message:?} is not stored (status {}); \
                     the conversation page shows where upstream keeps it",
                    a.status
                ),
            ))
        }
    };
    let Some(blobs) = &state.blobs else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no blob store open, so it serves no attachment files",
        ));
    };
    // One range (video seeking, resumed downloads), unless `If-Range` names another file.
    let range = request
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse)
        .filter(|_| {
            request.get(header::IF_RANGE).is_none_or(|v| {
                v.to_str()
                    .is_ok_and(|v| v.trim() == format!("\"{sha256}\""))
            })
        });
    let opened = match range {
        None => blobs.open(&sha256).await.map(|r| r.map(Opened::Whole)),
        Some(range) => blobs.open_range(&sha256, range).await.map(|r| {
            r.map(|part| match part {
                Ok(part) => Opened::Part(part),
                Err(size) => Opened::Unsatisfiable(size),
            })
        }),
    };
    let opened = opened
        .map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), %sha256, "attachment: cannot open blob");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the blob store cannot be read; try again in a moment",
            )
        })?
        .ok_or_else(|| {
            tracing::warn!(%sha256, %source, %conversation, %message, ordinal,
                "attachment recorded as stored is missing from the blob store");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the file of attachment {ordinal} of message {message:?} (sha256 {sha256}) \
                     is recorded as stored but missing from the blob store; \
                     `chatvault verify --attachments` checks every stored file"
                ),
            )
        })?;

    // Fail closed: a file leaves only with its record in the access log.
    let record = AccessRecord::new(&caller.who, Via::Web, "attachment")
        .client(caller.client.clone())
        .filter("source", &source)
        .filter("conversation", &conversation)
        .filter("message", &message)
        .filter("ordinal", ordinal)
        .filter("sha256", sha256.as_str())
        .filter(
            "range",
            match &opened {
                Opened::Whole(_) => None,
                Opened::Part(p) => Some(format!("{}-{}", p.range.start, p.range.end - 1)),
                Opened::Unsatisfiable(_) => Some("unsatisfiable".to_string()),
            },
        )
        .ids(vec![AccessedId {
            source: source.clone(),
            conversation_id: conversation.clone(),
            message_id: Some(message.clone()),
        }])
        .results(1);
    record_access(state, record).await?;

    // A browser that has this very file (its ETag is the sha256) gets 304.
    let etag = format!("\"{sha256}\"");
    let cached = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if cached {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let h = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache"),
        );
        return Ok(response);
    }

    let inline = inline_type(a.mime.as_deref());
    let content_type = inline
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let disposition = content_disposition(inline.is_some(), &download_name(&a));
    let mut response = match opened {
        Opened::Whole(reader) => {
            let mut r = Response::new(Body::from_stream(reader.bytes));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(reader.size));
            r
        }
        Opened::Part(part) => {
            let mut r = Response::new(Body::from_stream(part.bytes));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(part.range.end - part.range.start),
            );
            let content_range = format!(
                "bytes {}-{}/{}",
                part.range.start,
                part.range.end - 1,
                part.size
            );
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                h.insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Opened::Unsatisfiable(size) => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_CSP),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    Ok(response)
}

/// A stored file opened for an answer: whole, in part, or a range outside it.
enum Opened {
    Whole(BlobReader),
    Part(BlobPart),
    Unsatisfiable(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_types_a_browser_cannot_run_are_inline() {
        for (mime, want) in [
            (Some("image/png"), Some("image/png")),
            (Some("IMAGE/JPEG; charset=x"), Some("image/jpeg")),
            (Some("audio/amr"), Some("audio/amr")),
            (Some("video/mp4"), Some("video/mp4")),
            (Some("application/pdf"), Some("application/pdf")),
            (Some("image/svg+xml"), None),
            (Some("text/html"), None),
            (Some("application/xhtml+xml"), None),
            (Some("text/plain"), None),
            (Some("application/octet-stream"), None),
            (Some("image/png\r\nx: y"), None),
            (Some("image/"), None),
            (Some("png"), None),
            (None, None),
        ] {
            assert_eq!(inline_type(mime).as_deref(), want, "{mime:?}");
        }
    }

    #[test]
    fn download_names_are_encoded_and_have_no_path() {
        let mut a = AttachmentView {
            message_id: "m".into(),
            ordinal: 2,
            kind: "file".into(),
            name: Some("../../etc/报告 \"1\".pdf".into()),
            mime: None,
            size: None,
            width: None,
            height: None,
            status: "stored".into(),
            sha256: None,
            upstream_url: String::new(),
            error: None,
        };
        assert_eq!(download_name(&a), "报告 \"1\".pdf");
        assert_eq!(
            content_disposition(false, &download_name(&a)),
            "attachment; filename*=UTF-8''%E6%8A%A5%E5%91%8A%20%221%22.pdf"
        );
        a.name = Some("\u{7}..".into());
        assert_eq!(download_name(&a), "attachment-2");
        a.name = None;
        assert_eq!(download_name(&a), "attachment-2");
    }

    #[test]
    fn path_values_are_checked() {
        assert!(parse_ordinal("0").is_ok());
        assert_eq!(parse_ordinal("12").unwrap(), 12);
        for bad in ["", "-1", "x", "1.5", "9999999999", "+1"] {
            assert_eq!(
                parse_ordinal(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        assert!(check_id("message", "1824334157854015400").is_ok());
        assert!(check_id("message", "a\0b").is_err());
        assert!(check_id("message", "").is_err());
        assert!(check_id("message", &"x".repeat(2000)).is_err());
    }
}
