//! Attachments: the files a message points to (images, files, voice, video, stickers,
//! video covers). Connectors say which files a stored message version references
//! ([`AttachmentRef`], from `Connector::attachments`) and how to ask upstream for one
//! ([`MediaRequest`], from `Connector::media_request`); the blob store (`blob.rs`) keeps
//! each file once by its sha256.

pub mod blob;
pub mod check;
pub mod fetcher;

use serde::{Deserialize, Serialize};

/// What an attachment is. `attachments.kinds` in the configuration chooses among these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    Image,
    File,
    Voice,
    Video,
    Sticker,
    /// A preview image of another attachment (a video's cover).
    Thumbnail,
}

impl AttachmentKind {
    pub const ALL: [AttachmentKind; 6] = [
        AttachmentKind::Image,
        AttachmentKind::File,
        AttachmentKind::Voice,
        AttachmentKind::Video,
        AttachmentKind::Sticker,
        AttachmentKind::Thumbnail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentKind::Image => "image",
            AttachmentKind::File => "file",
            AttachmentKind::Voice => "voice",
            AttachmentKind::Video => "video",
            AttachmentKind::Sticker => "sticker",
            AttachmentKind::Thumbnail => "thumbnail",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for AttachmentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file a message version references, as its platform describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub kind: AttachmentKind,
    /// As upstream gives it: a URL, or a path under the API root (TangSengDaoDao).
    pub url: String,
    pub name: Option<String>,
    pub mime: Option<String>,
    /// The size upstream declares, in bytes.
    pub size: Option<i64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub duration_ms: Option<i64>,
    /// The platform's own digest of the file (Yunxin's `md5`), lowercase hex.
    pub md5: Option<String>,
}

impl AttachmentRef {
    /// A reference with only its kind and URL; the rest unknown.
    pub fn new(kind: AttachmentKind, url: impl Into<String>) -> Self {
        AttachmentRef {
            kind,
            url: url.into(),
            name: None,
            mime: None,
            size: None,
            width: None,
            height: None,
            duration_ms: None,
            md5: None,
        }
    }
}

/// The URL as it may be shown and stored for people to read: without user info, query
/// string or fragment, which is where signed URLs carry their credentials.
pub fn shown_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// How to ask upstream for one attachment. The fetcher sends it with its own client and
/// rate limit; `headers` go with every request, `credentials` only to the origin of `url`
/// (a redirect to another origin, such as TangSengDaoDao's preview answering with the
/// object store, is followed without them).
#[derive(Clone)]
pub struct MediaRequest {
    pub url: reqwest::Url,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub credentials: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

impl std::fmt::Debug for MediaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRequest")
            .field("url", &shown_url(self.url.as_str()))
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("credentials", &self.credentials.len())
            .finish()
    }
}

impl MediaRequest {
    /// A plain GET of an absolute http(s) URL.
    pub fn get(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("not an http(s) URL (scheme {})", parsed.scheme()));
        }
        Ok(MediaRequest {
            url: parsed,
            headers: Vec::new(),
            credentials: Vec::new(),
        })
    }
}

/// The media type of a file extension, for the extensions chat clients send (`m4a` is a
/// video for a video attachment); `None` for others (the blob is then served as
/// `application/octet-stream`).
pub fn mime_of(kind: AttachmentKind, ext: &str) -> Option<&'static str> {
    let ext = ext.trim().trim_start_matches('.').to_ascii_lowercase();
    Some(match (kind, ext.as_str()) {
        (_, "jpg" | "jpeg") => "image/jpeg",
        (_, "png") => "image/png",
        (_, "gif") => "image/gif",
        (_, "webp") => "image/webp",
        (_, "bmp") => "image/bmp",
        (_, "heic") => "image/heic",
        (_, "aac") => "audio/aac",
        (_, "amr") => "audio/amr",
        (_, "mp3") => "audio/mpeg",
        (_, "wav") => "audio/wav",
        (_, "ogg") => "audio/ogg",
        (AttachmentKind::Video, "m4a" | "mp4") => "video/mp4",
        (_, "m4a") => "audio/mp4",
        (_, "mp4") => "video/mp4",
        (_, "mov") => "video/quicktime",
        (_, "3gp") => "video/3gpp",
        (_, "webm") => "video/webm",
        (_, "pdf") => "application/pdf",
        (_, "txt") => "text/plain",
        (_, "zip") => "application/zip",
        (_, "doc") => "application/msword",
        (_, "docx") => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        (_, "xls") => "application/vnd.ms-excel",
        (_, "xlsx") => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        (_, "ppt") => "application/vnd.ms-powerpoint",
        (_, "pptx") => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_lose_credentials() {
        assert_eq!(
            shown_url("https://u:p@chat-storage1.jwznb.com/a/b.png?sign=x&t=1#f"),
            "https://chat-storage1.jwznb.com/a/b.png"
        );
        assert_eq!(
            shown_url("file/preview/chat/1/a.png"),
            "file/preview/chat/1/a.png"
        );
        assert_eq!(
            shown_url("http://nos.netease.com/x"),
            "http://nos.netease.com/x"
        );
    }

    #[test]
    fn extensions_name_media_types() {
        assert_eq!(mime_of(AttachmentKind::Image, "PNG"), Some("image/png"));
        assert_eq!(mime_of(AttachmentKind::Video, "m4a"), Some("video/mp4"));
        assert_eq!(mime_of(AttachmentKind::Voice, "m4a"), Some("audio/mp4"));
        assert_eq!(mime_of(AttachmentKind::File, "exe"), None);
    }

    #[test]
    fn kinds_round_trip() {
        for k in AttachmentKind::ALL {
            assert_eq!(AttachmentKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(AttachmentKind::parse("gif"), None);
    }

    #[test]
    fn media_requests_are_http_only() {
        assert!(MediaRequest::get("https://a.example/x").is_ok());
        assert!(MediaRequest::get("file:///etc/passwd").is_err());
        assert!(MediaRequest::get("/relative").is_err());
        let debug = format!("{:?}", MediaRequest::get("https://a/x?sig=SECRET").unwrap());
        assert!(!debug.contains("SECRET"), "{debug}");
    }
}
