//! The fake's NOS: the files image, audio, video and file messages point to, served at
//! `GET /nos/<bucket>/<key>` of the fake itself, as NOS serves them (no credentials; a
//! missing object is a 404, a signed URL past its `Expires` a 403, both with an XML error
//! body; `docs/upstreams/yunxin.md`, "Attachments").
//!
//! Bytes are deterministic per file and made when asked for, never kept: a small valid PNG
//! for images (stored deflate blocks, CRC-32, Adler-32: a browser renders it), bytes drawn
//! from the file's seed for the other kinds. The digests are computed once, when the file
//! is made, so the world's truth can give them.

use md5::Md5;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The route of NOS objects on the fake (bucket, then the object key).
pub const NOS_PATH: &str = "/nos/{bucket}/{key}";

/// The bucket the fake's objects live in.
pub const BUCKET: &str = "nimtest";

/// What happens to a request for a file (switchable per file, see [`MediaFile`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaOutcome {
    /// 200 with the bytes.
    Served,
    /// 404 `NoSuchKey`: the object was deleted (or expired and removed) upstream.
    Gone,
    /// 403 `AccessDenied`: the URL's signature expired (`Expires` in the past).
    Expired,
}

/// One NOS object of the fake.
#[derive(Clone, Debug)]
pub struct MediaFile {
    /// The message type it belongs to (1 image, 2 audio, 3 video, 6 file).
    pub message_type: i64,
    /// The object key within [`BUCKET`] (`<hex>.<ext>`).
    pub key: String,
    pub ext: String,
    seed: u128,
    /// Image size in pixels, or `(length, 0)` for the other kinds.
    shape: (u32, u32),
    /// Digests and length of the bytes served.
    pub md5: String,
    pub sha256: String,
    pub size: usize,
    /// The `md5` the message declares (differs from `md5` only for the one file whose
    /// declared digest is deliberately wrong).
    pub declared_md5: String,
    /// Deleted upstream: every request answers 404.
    pub gone: bool,
    /// The URL is signed and expires at this Unix second (`?Expires=...`); past it, 403.
    pub expires: Option<i64>,
}

impl MediaFile {
    /// The file of a media message of `message_type` drawn from `seed`; `n` shapes it
    /// (an image's width and height, the other kinds' length).
    pub fn new(message_type: i64, ext: &str, seed: u128, n: u64) -> MediaFile {
        let shape = match message_type {
            1 => (24 + (n % 65) as u32, 24 + ((n / 65) % 65) as u32),
            2 => (1024 + (seed % 3072) as u32, 0),
            3 => (2048 + (seed % 6144) as u32, 0),
            _ => (1024 + (seed % 5120) as u32, 0),
        };
        let mut file = MediaFile {
            message_type,
            key: format!("{seed:032x}.{ext}"),
            ext: ext.to_string(),
            seed,
            shape,
            md5: String::new(),
            sha256: String::new(),
            size: 0,
            declared_md5: String::new(),
            gone: false,
            expires: None,
        };
        let bytes = file.bytes();
        file.md5 = hex::encode(Md5::digest(&bytes));
        file.sha256 = hex::encode(Sha256::digest(&bytes));
        file.size = bytes.len();
        file.declared_md5 = file.md5.clone();
        file
    }

    /// Image width and height in pixels.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        (self.message_type == 1).then_some(self.shape)
    }

    /// The path under the fake's origin: `/nos/<bucket>/<key>`, with the signature
    /// query when the URL expires.
    pub fn path(&self) -> String {
        match self.expires {
            Some(at) => format!(
                "/nos/{BUCKET}/{}?NOSAccessKeyId=sim&Expires={at}&Signature=c2lt",
                self.key
            ),
            None => format!("/nos/{BUCKET}/{}", self.key),
        }
    }

    /// What a request now (`now_s`, Unix seconds) gets.
    pub fn outcome(&self, now_s: i64) -> MediaOutcome {
        if self.gone {
            MediaOutcome::Gone
        } else if self.expires.is_some_and(|at| at < now_s) {
            MediaOutcome::Expired
        } else {
            MediaOutcome::Served
        }
    }

    pub fn mime(&self) -> &'static str {
        crate::connector::yunxin::attachments::mime_of(
            match self.message_type {
                1 => crate::attachments::AttachmentKind::Image,
                2 => crate::attachments::AttachmentKind::Voice,
                3 => crate::attachments::AttachmentKind::Video,
                _ => crate::attachments::AttachmentKind::File,
            },
            &self.ext,
        )
        .unwrap_or("application/octet-stream")
    }

    /// The bytes served, made again on every call (the same every time).
    pub fn bytes(&self) -> Vec<u8> {
        if self.message_type == 1 {
            let (w, h) = self.shape;
            return png(w, h, self.seed);
        }
        let mut out = format!(
            "chatvault sim yunxin type {} {}\n",
            self.message_type, self.key
        )
        .into_bytes();
        let len = self.shape.0 as usize;
        let start = out.len();
        out.resize(len.max(start), 0);
        StdRng::seed_from_u64((self.seed ^ (self.seed >> 64)) as u64).fill_bytes(&mut out[start..]);
        out
    }
}

/// An RGB PNG of `width` × `height` pixels, a pattern drawn from `seed`.
pub fn png(width: u32, height: u32, seed: u128) -> Vec<u8> {
    let [r0, g0, b0, r1, g1, b1, ..] = seed.to_le_bytes();
    let mut raw = Vec::with_capacity((height * (1 + 3 * width)) as usize);
    for y in 0..height {
        raw.push(0); // filter: none
        for x in 0..width {
            let stripe = ((x / 4) + (y / 4)) % 2 == 0;
            let (r, g, b) = if stripe { (r0, g0, b0) } else { (r1, g1, b1) };
            let shade = ((x + y) * 255 / (width + height)) as u8;
            raw.extend_from_slice(&[r ^ shade, g, b.wrapping_add(shade / 2)]);
        }
    }
    crate::sim::png::rgb(width, height, &raw)
}

/// NOS's XML error body.
pub fn error_xml(code: &str, message: &str, resource: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource><RequestId>sim</RequestId></Error>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pngs_have_the_size_asked_for() {
        for (w, h) in [(1, 1), (40, 17), (200, 120)] {
            let png = png(w, h, 0x0123_4567_89ab_cdef_0011_2233_4455_6677);
            assert_eq!(png.len(), crate::sim::png::rgb_len(w, h));
            assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), w);
            assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), h);
        }
    }

    #[test]
    fn files_are_deterministic_and_their_digests_are_of_their_bytes() {
        for ty in [1, 2, 3, 6] {
            let a = MediaFile::new(ty, "bin", 42 << 70 | 7, 1234);
            let b = MediaFile::new(ty, "bin", 42 << 70 | 7, 1234);
            assert_eq!(a.bytes(), b.bytes());
            assert_eq!(a.md5, hex::encode(Md5::digest(a.bytes())));
            assert_eq!(a.sha256, hex::encode(Sha256::digest(a.bytes())));
            assert_eq!(a.size, a.bytes().len());
            assert_ne!(a.md5, MediaFile::new(ty, "bin", 43, 1234).md5);
        }
        assert_eq!(MediaFile::new(1, "png", 1, 70).dimensions(), Some((29, 25)));
        let mut f = MediaFile::new(6, "pdf", 9, 0);
        assert_eq!(f.outcome(100), MediaOutcome::Served);
        f.expires = Some(99);
        assert_eq!(f.outcome(100), MediaOutcome::Expired);
        assert!(f.path().contains("Expires=99"));
        f.gone = true;
        assert_eq!(f.outcome(100), MediaOutcome::Gone);
    }
}
