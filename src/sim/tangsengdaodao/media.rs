//! The fake's files (docs/upstreams/tangsengdaodao.md, "Attachments"): `GET
//! /v1/file/preview/*path` answers, as the real server's `getFile` does, with a 302 to the
//! storage's download URL (MinIO's: `{download_url}/{path}?response-content-disposition=
//! inline; filename="…"`), and the storage is a second listener on another port (another
//! origin), which serves the bytes with a content type.
//!
//! Bytes are a function of the path: a small solid-colour PNG (any browser renders it) for
//! pictures, stickers and covers, seeded bytes for everything else. The storage holds every
//! path of the generator's shape (`chat/<type>/<channel>/<16 hex>.<ext>`), so it is more
//! lenient than a real bucket about paths no message names. Quirks, switched per path on
//! the world: a file deleted from storage (404 `NoSuchKey`), and one whose download URL has
//! expired (403 `AccessDenied`, "Request has expired", as S3 and MinIO answer a presigned
//! URL past its expiry).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::world::World;
use crate::attachments::AttachmentKind;
use crate::sim::serve::{self, RequestCounts, Serving};

/// The route of the preview endpoint, relative to the API root.
pub const PREVIEW_PREFIX: &str = "file/preview/";
/// How deep merged forwards are followed for files: the depth the archive maps them to.
const FORWARD_DEPTH: usize = 4;

/// What the storage does with one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaFate {
    /// 200 with the bytes.
    Served,
    /// 404: deleted from storage.
    Gone,
    /// 403: the download URL has expired.
    Expired,
}

/// One file a message references, with what the storage answers for it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttachmentTruth {
    pub kind: AttachmentKind,
    /// As in the payload (`file/preview/chat/…`).
    pub url: String,
    /// The object's key in storage (the path after `file/preview/`).
    pub key: String,
    pub content_type: &'static str,
    /// sha256 (lowercase hex) of the bytes served.
    pub sha256: String,
    pub size: u64,
    pub fate: MediaFate,
}

/// Which paths the storage refuses (see [`World::break_media`]).
#[derive(Clone, Debug, Default)]
pub struct MediaQuirks {
    /// Keys answered with 404 `NoSuchKey`.
    pub gone: BTreeSet<String>,
    /// Keys answered with 403 `AccessDenied` / "Request has expired".
    pub expired: BTreeSet<String>,
    /// A slow storage: each file is sent half at once and the rest after this pause (so
    /// a test can catch downloads in flight).
    pub trickle: Option<std::time::Duration>,
}

impl World {
    /// The files `payload` references, in the order the archive lists them (a video's cover
    /// after the video; the files of forwarded messages in order, forwards four deep; each
    /// URL once).
    pub fn attachments_of(&self, payload: &Value) -> Vec<AttachmentTruth> {
        let mut out = Vec::new();
        self.collect(payload, 0, &mut out);
        out
    }

    fn collect(&self, payload: &Value, depth: usize, out: &mut Vec<AttachmentTruth>) {
        let url = |key: &str| payload.get(key).and_then(Value::as_str);
        let mut add = |kind, url: Option<&str>| {
            if let Some(url) = url.filter(|u| !u.is_empty()) {
                if !out.iter().any(|a| a.url == url) {
                    out.push(self.attachment(kind, url));
                }
            }
        };
        match payload.get("type").and_then(Value::as_i64) {
            Some(2) => add(AttachmentKind::Image, url("url")),
            Some(3 | 12 | 13) => add(AttachmentKind::Sticker, url("url")),
            Some(4) => add(AttachmentKind::Voice, url("url")),
            Some(5) => {
                add(AttachmentKind::Video, url("url"));
                add(AttachmentKind::Thumbnail, url("cover"));
            }
            Some(8) => add(AttachmentKind::File, url("url")),
            Some(11) if depth < FORWARD_DEPTH => {
                for msg in payload
                    .get("msgs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(inner) = msg.get("payload") {
                        self.collect(inner, depth + 1, out);
                    }
                }
            }
            _ => {}
        }
    }

    fn attachment(&self, kind: AttachmentKind, url: &str) -> AttachmentTruth {
        let key = url.strip_prefix(PREVIEW_PREFIX).unwrap_or(url).to_string();
        let bytes = file_bytes(&key);
        AttachmentTruth {
            kind,
            url: url.to_string(),
            content_type: content_type(&key),
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            fate: self.media_fate(&key),
            key,
        }
    }

    fn media_fate(&self, key: &str) -> MediaFate {
        if self.media_quirks.gone.contains(key) {
            MediaFate::Gone
        } else if self.media_quirks.expired.contains(key) {
            MediaFate::Expired
        } else {
            MediaFate::Served
        }
    }

    /// Switch on both storage quirks, deterministically: the first file (type 8) of the
    /// archiving user's conversations is deleted from storage and the first picture's
    /// download URL has expired. Returns `(gone, expired)` as payload URLs.
    pub fn break_media(&mut self) -> (Option<String>, Option<String>) {
        let first = |t: i64| {
            self.truth()
                .iter()
                .flat_map(|c| c.messages.iter())
                .find(|m| m.payload.get("type").and_then(Value::as_i64) == Some(t))
                .and_then(|m| m.payload.get("url").and_then(Value::as_str))
                .map(str::to_string)
        };
        let (gone, expired) = (first(8), first(2));
        let key = |url: &String| url.strip_prefix(PREVIEW_PREFIX).unwrap_or(url).to_string();
        if let Some(url) = &gone {
            self.media_quirks.gone.insert(key(url));
        }
        if let Some(url) = &expired {
            self.media_quirks.expired.insert(key(url));
        }
        (gone, expired)
    }
}

/// The content type the storage gives `key`, by its extension.
fn content_type(key: &str) -> &'static str {
    match extension(key) {
        "jpg" | "jpeg" | "png" | "gif" | "webp" => "image/png",
        "amr" => "audio/amr",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "pdf" => "application/pdf",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn extension(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(_, ext)| ext)
}

/// Whether `key` has the shape of an object the fake's clients uploaded.
fn known_key(key: &str) -> bool {
    let parts: Vec<&str> = key.split('/').collect();
    matches!(parts.as_slice(), ["chat", t, channel, file]
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
        && !channel.is_empty()
        && file.split_once('.').is_some_and(|(stem, ext)| {
            stem.len() == 16 && stem.bytes().all(|b| b.is_ascii_hexdigit()) && !ext.is_empty()
        }))
}

/// The bytes of `key`: a PNG for images, seeded bytes (256 B to 8 KiB) otherwise.
pub fn file_bytes(key: &str) -> Vec<u8> {
    let seed: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    if content_type(key) == "image/png" {
        return solid_png(16, 16, [seed[0], seed[1], seed[2]]);
    }
    let len = 256 + (u16::from_le_bytes([seed[3], seed[4]]) as usize % 8000);
    let mut out = Vec::with_capacity(len + 32);
    let mut block = seed;
    while out.len() < len {
        block = Sha256::digest(block).into();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

/// A `width`×`height` PNG of one RGB colour.
pub fn solid_png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    // each scanline: filter type 0 (none), then the pixels
    let mut line = vec![0u8];
    for _ in 0..width {
        line.extend_from_slice(&rgb);
    }
    crate::sim::png::rgb(width, height, &line.repeat(height as usize))
}

// ---- serving ------------------------------------------------------------------------

/// The storage listener: its base URL, kept running as long as the API server's state.
pub(super) struct Storage {
    serving: Serving,
}

impl Storage {
    /// Serve the world's files on another port of `ip`; its requests count with the API
    /// server's (`counts`), by path, and an armed failure fires on them too.
    pub(super) async fn start(
        ip: std::net::IpAddr,
        world: Arc<Mutex<World>>,
        counts: Arc<RequestCounts>,
    ) -> std::io::Result<Storage> {
        let state = StorageState {
            world,
            counts: counts.clone(),
        };
        let app = Router::new()
            .route("/{*key}", get(object))
            .layer(middleware::from_fn_with_state(state.clone(), count))
            .with_state(state);
        let serving = Serving::start(SocketAddr::new(ip, 0), app, counts).await?;
        Ok(Storage { serving })
    }

    /// Where the storage is reached: its bound address, or the loopback one when it is
    /// bound to all addresses.
    pub(super) fn base_url(&self) -> String {
        let url = self.serving.base_url();
        url.replace("://0.0.0.0:", "://127.0.0.1:")
            .replace("://[::]:", "://[::1]:")
    }
}

#[derive(Clone)]
struct StorageState {
    world: Arc<Mutex<World>>,
    counts: Arc<RequestCounts>,
}

async fn count(State(state): State<StorageState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    match state.counts.record(&path) {
        Some(how) => serve::fail_request(how, request, next).await,
        None => next.run(request).await,
    }
}

/// S3's error document.
fn s3_error(status: StatusCode, code: &str, message: &str, key: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Key>{key}</Key><BucketName>tsdd</BucketName><Resource>/tsdd/{key}</Resource><RequestId>17E0C0A1B2C3D4E5</RequestId><HostId>dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8</HostId></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// The query a download URL may carry: MinIO answers with the `Content-Disposition` it
/// names (S3's `response-content-disposition`).
#[derive(serde::Deserialize)]
struct ObjectQuery {
    #[serde(rename = "response-content-disposition")]
    disposition: Option<String>,
}

async fn object(
    State(state): State<StorageState>,
    Path(key): Path<String>,
    Query(query): Query<ObjectQuery>,
) -> Response {
    let (fate, trickle) = {
        let world = serve::lock(&state.world);
        (world.media_fate(&key), world.media_quirks.trickle)
    };
    let escaped: String = key
        .chars()
        .filter(|c| !matches!(c, '<' | '>' | '&' | '"'))
        .collect();
    match fate {
        MediaFate::Expired => s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request has expired",
            &escaped,
        ),
        MediaFate::Gone => s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
            &escaped,
        ),
        MediaFate::Served if !known_key(&key) => s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
            &escaped,
        ),
        MediaFate::Served => (
            [
                (header::CONTENT_TYPE, content_type(&key).to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    query
                        .disposition
                        .filter(|d| d.bytes().all(|b| (0x20..0x7f).contains(&b)))
                        .unwrap_or_else(|| "inline".to_string()),
                ),
            ],
            trickled(file_bytes(&key), trickle),
        )
            .into_response(),
    }
}

/// `bytes` as a response body: all at once, or half at once and the rest after `pause`.
fn trickled(bytes: Vec<u8>, pause: Option<std::time::Duration>) -> axum::body::Body {
    let Some(pause) = pause else {
        return axum::body::Body::from(bytes);
    };
    let bytes = bytes::Bytes::from(bytes);
    let half = bytes.len() / 2;
    let parts = [
        (bytes.slice(..half), std::time::Duration::ZERO),
        (bytes.slice(half..), pause),
    ];
    axum::body::Body::from_stream(futures::StreamExt::then(
        futures::stream::iter(parts),
        |(part, wait)| async move {
            tokio::time::sleep(wait).await;
            Ok::<_, std::convert::Infallible>(part)
        },
    ))
}

#[derive(serde::Deserialize)]
pub(super) struct PreviewQuery {
    filename: Option<String>,
}

/// `GET /v1/file/preview/*path`: no authentication; a 302 to the storage's download URL,
/// the file name from `?filename=` or the path's last part (`getFile`, `DownloadURL` of
/// the MinIO service).
pub(super) async fn preview(
    storage_url: String,
    Path(path): Path<String>,
    Query(query): Query<PreviewQuery>,
) -> Response {
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"msg": "访问路径不能为空", "status": 400})),
        )
            .into_response();
    }
    let filename = query
        .filename
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| path.rsplit('/').next().unwrap_or_default().to_string());
    let disposition: String = url_encode(&format!("inline; filename=\"{filename}\""));
    let location = format!("{storage_url}/{path}?response-content-disposition={disposition}");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// `application/x-www-form-urlencoded` escaping, as Go's `url.Values.Encode`.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_is_well_formed() {
        let png = solid_png(16, 16, [200, 10, 30]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR's CRC, as any PNG decoder checks it
        let ihdr_crc = u32::from_be_bytes(png[29..33].try_into().unwrap());
        assert_eq!(ihdr_crc, crate::sim::png::crc32(&png[12..29]));
        assert!(png.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]));
    }

    #[test]
    fn bytes_are_a_function_of_the_key() {
        let a = "chat/2/g1/00000000000000aa.pdf";
        assert_eq!(file_bytes(a), file_bytes(a));
        assert_ne!(file_bytes(a), file_bytes("chat/2/g1/00000000000000ab.pdf"));
        assert!((256..8256).contains(&file_bytes(a).len()));
        assert!(file_bytes("chat/2/g1/00000000000000aa.jpg").starts_with(b"\x89PNG"));
        assert!(known_key(a));
        assert!(!known_key("chat/2/g1/x.pdf"));
        assert!(!known_key("etc/passwd"));
    }
}
