//! The fake's stand-in for Yunhu's media hosts (`docs/upstreams/yunhu.md`, "Attachments"):
//! every file a message of the world references is served by the fake itself under
//! `/media/<host>/<path>` (`<host>` the first label of the real host: `chat-img`,
//! `chat-file`, `chat-storage1`, `chat-video1`, `chat-audio1`), with the hosts' rules:
//! `Referer: http://myapp.jwznb.com` (or `https://`) or 403, except on `chat-storage1`,
//! whose URLs are signed (`?sign=…&t=…`, `t` the expiry in Unix seconds of the world's
//! clock) and answer 403 when the signature is wrong or expired; a deleted file is a 404.
//!
//! The world keeps media fields as Yunhu's clients would (a bare key, or a URL on a real
//! Yunhu host); what the fake serves replaces them with URLs on the fake ([`served_url`]).
//! Every file's bytes are a function of its path: a small valid PNG (stored deflate
//! blocks, crc32, adler32) on the image hosts, bytes derived from the path elsewhere.

use sha2::{Digest, Sha256};

/// The media hosts the fake stands in for, by their first label.
pub const HOSTS: [&str; 8] = [
    "chat-img",
    "chat-img2",
    "chat-img3",
    "chat-file",
    "chat-file-oss",
    "chat-storage1",
    "chat-video1",
    "chat-audio1",
];

/// The host whose URLs are signed instead of checked for the `Referer`.
pub const SIGNED_HOST: &str = "chat-storage1";

/// The domain of Yunhu's media hosts.
const DOMAIN: &str = ".jwznb.com";

/// What the fake signs with (a real host's secret is unknown; only the rule matters).
const SIGNING_KEY: &str = "chatvault-sim-yunhu-media";

/// Where a media field points: a host of the fake (by first label), a path under it, and
/// the expiry a signed URL carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub host: String,
    pub path: String,
    pub expires: Option<u64>,
}

impl Located {
    /// The key the fake knows the file under: `host/path`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.host, self.path)
    }
}

/// Where a media field's value points: a bare key is under `default_host`, a URL on a
/// Yunhu media host under that host; anything else is not the fake's.
pub fn locate(value: &str, default_host: &str) -> Option<Located> {
    if value.is_empty() {
        return None;
    }
    if !value.contains("://") {
        let path = value.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_start_matches('/');
        return (!path.is_empty()).then(|| Located {
            host: default_host.to_string(),
            path: path.to_string(),
            expires: None,
        });
    }
    let url = reqwest::Url::parse(value).ok()?;
    let host = url.host_str()?.strip_suffix(DOMAIN)?;
    if !HOSTS.contains(&host) {
        return None;
    }
    let path = url.path().trim_start_matches('/');
    let expires = url
        .query_pairs()
        .find(|(k, _)| k == "t")
        .and_then(|(_, v)| v.parse().ok());
    (!path.is_empty()).then(|| Located {
        host: host.to_string(),
        path: path.to_string(),
        expires,
    })
}

/// The signature of a signed URL for `path` expiring at `t`.
pub fn sign(path: &str, t: u64) -> String {
    let digest = Sha256::digest(format!("{SIGNING_KEY}\n{path}\n{t}"));
    hex::encode(&digest[..8])
}

/// The URL the fake serves for a located file: `{media_base}/{host}/{path}`, signed on the
/// signed host (expiring at `expires`, or `default_expiry`).
pub fn served_url(media_base: &str, located: &Located, default_expiry: u64) -> String {
    let base = format!("{media_base}/{}/{}", located.host, located.path);
    if located.host == SIGNED_HOST {
        let t = located.expires.unwrap_or(default_expiry);
        format!("{base}?sign={}&t={t}", sign(&located.path, t))
    } else {
        base
    }
}

/// Whether a request for `host` is let through by its `Referer` rule.
pub fn referer_ok(referer: Option<&str>) -> bool {
    let Some(referer) = referer else {
        return false;
    };
    reqwest::Url::parse(referer).ok().is_some_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str() == Some("myapp.jwznb.com")
    })
}

/// Whether a host checks the `Referer` (all but the signed one and the object store that
/// large files are redirected to).
pub fn checks_referer(host: &str) -> bool {
    host != SIGNED_HOST && host != "chat-file-oss"
}

/// Whether the file is on an image host (and so a PNG).
pub fn is_image_host(host: &str) -> bool {
    host.starts_with("chat-img")
}

/// A file's bytes: a PNG on the image hosts, derived bytes elsewhere.
pub fn bytes(located: &Located) -> Vec<u8> {
    if is_image_host(&located.host) {
        let (w, h) = png_size(&located.path);
        png(&located.path, w, h)
    } else {
        derived(&located.path, derived_len(&located.host, &located.path))
    }
}

/// The content type a file is served with.
pub fn content_type(located: &Located) -> &'static str {
    if is_image_host(&located.host) {
        return "image/png";
    }
    let ext = located.path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "mp4" => "video/mp4",
        "m4a" => "audio/mp4",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

fn seed(path: &str) -> [u8; 32] {
    Sha256::digest(path.as_bytes()).into()
}

/// The dimensions of the PNG served for `path`: 40–119 by 30–89 pixels.
pub fn png_size(path: &str) -> (u32, u32) {
    let s = seed(path);
    (40 + u32::from(s[0]) % 80, 30 + u32::from(s[1]) % 60)
}

/// The length of [`png`]'s output for `w`×`h` pixels, without encoding it.
pub fn png_len(w: u32, h: u32) -> usize {
    crate::sim::png::rgb_len(w, h)
}

/// The length of the bytes served for a non-image file.
pub fn derived_len(host: &str, path: &str) -> usize {
    let s = seed(path);
    let n = usize::from(u16::from_le_bytes([s[2], s[3]]));
    match host {
        "chat-video1" => 20_000 + n % 40_000,
        "chat-audio1" => 4_000 + n % 12_000,
        _ => 1_000 + n % 60_000,
    }
}

/// `len` bytes from `path`: sha256 of the path and a counter, block after block.
fn derived(path: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(path.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

/// An RGB PNG of `w`×`h` pixels, colours from `path`: a diagonal gradient between two
/// colours with stripes, so different files look different.
pub fn png(path: &str, w: u32, h: u32) -> Vec<u8> {
    let s = seed(path);
    let (a, b) = ([s[4], s[5], s[6]], [s[7], s[8], s[9]]);
    let stripe = 4 + u32::from(s[10]) % 8;
    let mut raw = Vec::with_capacity(((w * 3 + 1) * h) as usize);
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            let t = (x + y) * 255 / (w + h).max(1);
            let dark = ((x + 2 * y) / stripe) % 2 == 0;
            for c in 0..3 {
                let v = (u32::from(a[c]) * (255 - t) + u32::from(b[c]) * t) / 255;
                raw.push(if dark { (v * 3 / 4) as u8 } else { v as u8 });
            }
        }
    }
    crate::sim::png::rgb(w, h, &raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pngs_are_well_formed() {
        let (w, h) = png_size("a.png");
        let p = png("a.png", w, h);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(p[16..20].try_into().unwrap()), w);
        assert_eq!(u32::from_be_bytes(p[20..24].try_into().unwrap()), h);
        assert_eq!(&p[p.len() - 8..p.len() - 4], b"IEND");
        // the IDAT holds exactly the filtered rows
        let idat_len = u32::from_be_bytes(p[33..37].try_into().unwrap()) as usize;
        assert_eq!(&p[37..41], b"IDAT");
        let raw = (w as usize * 3 + 1) * h as usize;
        assert_eq!(idat_len, 2 + raw + 5 * raw.div_ceil(65_535) + 4);
        assert_eq!(p.len(), png_len(w, h));
        assert_ne!(p, png("b.png", w, h), "colours differ per file");
        assert_eq!(p, png("a.png", w, h), "and are the same for the same file");
        // more than one stored block
        let big = png("big", 200, 200);
        assert_eq!(big.len(), png_len(200, 200));
        assert_eq!(&big[big.len() - 8..big.len() - 4], b"IEND");
    }

    #[test]
    fn locating_and_signing() {
        let l = locate("abc.png", "chat-img").unwrap();
        assert_eq!((l.host.as_str(), l.path.as_str()), ("chat-img", "abc.png"));
        let l = locate(
            "https://chat-storage1.jwznb.com/x/f.pdf?sign=ab12&t=99",
            "chat-file",
        )
        .unwrap();
        assert_eq!(l.host, "chat-storage1");
        assert_eq!(l.path, "x/f.pdf");
        assert_eq!(l.expires, Some(99));
        let url = served_url("http://127.0.0.1:1/media", &l, 5);
        assert_eq!(
            url,
            format!(
                "http://127.0.0.1:1/media/chat-storage1/x/f.pdf?sign={}&t=99",
                sign("x/f.pdf", 99)
            )
        );
        assert!(locate("https://example.com/a.png", "chat-img").is_none());
        assert!(locate("https://evil.jwznb.com/a.png", "chat-img").is_none());
        assert!(locate("", "chat-img").is_none());
        assert!(referer_ok(Some("http://myapp.jwznb.com")));
        assert!(referer_ok(Some("https://myapp.jwznb.com/")));
        assert!(!referer_ok(Some("http://myapp.jwznb.com.evil.example")));
        assert!(!referer_ok(None));
    }
}
