//! The files a TangSengDaoDao message references, read from its *mapped* content (what
//! `map::map_payload` keeps per payload type, docs/upstreams/tangsengdaodao.md,
//! "Attachments"), and how to ask the server for one.
//!
//! - picture (type 2): `url`, `width`, `height`;
//! - GIF and vector stickers (3, 12, 13): `url`, `width`, `height`;
//! - voice (4): `url`, its length (`timeTrad` seconds, kept as `duration`);
//! - video (5): `url` with `size`, dimensions and length (`second`, kept as `duration`),
//!   then its `cover` as a thumbnail;
//! - file (8): `url`, `name`, `size`;
//! - merged forward (11): the files of the forwarded messages, in order (each forwarded
//!   message keeps them under `media`, nested forwards flattened while mapping, so the
//!   depth is bounded there).
//!
//! Pure: the list depends on the content only, so versions archived before attachments
//! were fetched yield theirs too. A URL appears once per message (the first place it
//! occurs), at most [`MAX_ATTACHMENTS`] per message, each URL at most [`MAX_URL_BYTES`].
//!
//! A `url` is resolved as the official web client does: an `http…` URL as it is, any other
//! one under the API root `{base_url}/v1/`. `GET /v1/file/preview/*path` is outside the
//! server's authentication group and answers with a 302 to the storage's download URL, so
//! no session token is ever sent with a media request.

use serde_json::Value;

use super::map::content_type;
use crate::attachments::{AttachmentKind, AttachmentRef, MediaRequest};
use crate::model::Content;

/// At most this many attachments per message version.
pub const MAX_ATTACHMENTS: usize = 200;
/// A `url` longer than this is not a file reference the server hands out; it is skipped.
pub const MAX_URL_BYTES: usize = 4096;

/// The files `content` (one mapped TangSengDaoDao version) references, in order.
pub fn attachments(content: &Content) -> Vec<AttachmentRef> {
    let mut out = Vec::new();
    let body = &content.content;
    if integer(body.get("type")) == Some(content_type::MULTIPLE_FORWARD) {
        for entry in body
            .get("msgs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match entry.get("media") {
                Some(media @ Value::Object(_)) => files_of(media, &mut out),
                Some(Value::Array(nested)) => {
                    for media in nested {
                        files_of(media, &mut out);
                    }
                }
                _ => {}
            }
            if out.len() >= MAX_ATTACHMENTS {
                break;
            }
        }
    } else {
        files_of(body, &mut out);
    }
    out.truncate(MAX_ATTACHMENTS);
    out
}

/// The files of one mapped media content (`{"type": 2, "url": …}` and the like), appended
/// to `out` unless their URL is already there.
fn files_of(media: &Value, out: &mut Vec<AttachmentRef>) {
    use content_type::*;
    let Some(kind) = integer(media.get("type")) else {
        return;
    };
    let mut push = |reference: Option<AttachmentRef>| {
        if let Some(reference) = reference {
            if out.len() < MAX_ATTACHMENTS && !out.iter().any(|r| r.url == reference.url) {
                out.push(reference);
            }
        }
    };
    match kind {
        IMAGE => push(reference(media, "url", AttachmentKind::Image).map(|r| sized(r, media))),
        GIF | VECTOR_STICKER | EMOJI_STICKER => {
            push(reference(media, "url", AttachmentKind::Sticker).map(|r| sized(r, media)))
        }
        VOICE => push(reference(media, "url", AttachmentKind::Voice).map(|mut r| {
            r.duration_ms = seconds_as_ms(media.get("duration"));
            r
        })),
        VIDEO => {
            push(reference(media, "url", AttachmentKind::Video).map(|mut r| {
                r = sized(r, media);
                r.size = non_negative(media.get("size"));
                r.duration_ms = seconds_as_ms(media.get("duration"));
                r
            }));
            push(reference(media, "cover", AttachmentKind::Thumbnail));
        }
        FILE => push(reference(media, "url", AttachmentKind::File).map(|mut r| {
            r.name = media
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
                .map(|n| n.chars().take(512).collect());
            r.size = non_negative(media.get("size"));
            r
        })),
        _ => {}
    }
}

/// A reference of `kind` to the URL in `media[key]`, if it is a usable one.
fn reference(media: &Value, key: &str, kind: AttachmentKind) -> Option<AttachmentRef> {
    let url = media.get(key)?.as_str()?.trim();
    if url.is_empty() || url.len() > MAX_URL_BYTES || url.chars().any(char::is_control) {
        return None;
    }
    let mut reference = AttachmentRef::new(kind, url);
    // The payload gives no media type; the storage's object names keep the extension the
    // client uploaded with, so the page can show a picture inline.
    reference.mime = url
        .split(['?', '#'])
        .next()
        .and_then(|path| path.rsplit('/').next())
        .and_then(|name| name.rsplit_once('.'))
        .and_then(|(_, ext)| crate::attachments::mime_of(kind, ext))
        .map(str::to_string);
    Some(reference)
}

/// `r` with the `width` and `height` of `media`, where they are sensible.
fn sized(mut r: AttachmentRef, media: &Value) -> AttachmentRef {
    let dimension = |key| {
        non_negative(media.get(key))
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    r.width = dimension("width");
    r.height = dimension("height");
    r
}

/// An integer as clients write them: a JSON integer, an integral float, or digits in a
/// string.
fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn non_negative(value: Option<&Value>) -> Option<i64> {
    integer(value).filter(|n| *n >= 0)
}

/// A length in seconds, as milliseconds (a fractional one kept to the millisecond).
fn seconds_as_ms(value: Option<&Value>) -> Option<i64> {
    let seconds = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (seconds.is_finite() && (0.0..1.0e12).contains(&seconds))
        .then(|| (seconds * 1000.0).round() as i64)
}

/// The absolute URL of a payload `url` or `cover`, as the official web client resolves it
/// (`getImageURL`, `getFileURL`): one longer than four characters that starts with `http`
/// is used as it is; any other is a path under the API root,
/// `{base_url}/v1/` (a leading `/` is dropped, as the server's upload answers never have
/// one). Only http(s) URLs are accepted.
pub fn resolve(base_url: &str, url: &str) -> Result<reqwest::Url, String> {
    let url = url.trim();
    let absolute = if url.len() > 4 && url.starts_with("http") {
        url.to_string()
    } else {
        format!(
            "{}/v1/{}",
            base_url.trim_end_matches('/'),
            url.trim_start_matches('/')
        )
    };
    let parsed = reqwest::Url::parse(&absolute).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("not an http(s) URL (scheme {})", parsed.scheme()));
    }
    Ok(parsed)
}

/// The request for one file: a plain GET of the resolved URL, with no header and no
/// credentials (the preview route is public; where it redirects, the storage's URL carries
/// whatever that storage needs).
pub fn media_request(base_url: &str, reference: &AttachmentRef) -> Result<MediaRequest, String> {
    Ok(MediaRequest {
        url: resolve(base_url, &reference.url)?,
        headers: Vec::new(),
        credentials: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::tangsengdaodao::map::map_payload;
    use proptest::prelude::*;
    use serde_json::json;

    fn refs(payload: Value) -> Vec<AttachmentRef> {
        attachments(&map_payload(&payload))
    }

    #[test]
    fn a_picture_is_one_image_with_its_dimensions() {
        let r = refs(json!({"type": 2, "url": "file/preview/chat/2/g1/a.jpg",
                            "width": 1080, "height": 1920}));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, AttachmentKind::Image);
        assert_eq!(r[0].url, "file/preview/chat/2/g1/a.jpg");
        assert_eq!((r[0].width, r[0].height), (Some(1080), Some(1920)));
        assert_eq!(r[0].size, None);
        assert_eq!(
            r[0].mime.as_deref(),
            Some("image/jpeg"),
            "from the extension"
        );
        let bare = refs(json!({"type": 2, "url": "file/preview/chat/2/g1/a?x=y.png"}));
        assert_eq!(bare[0].mime, None, "no extension, no media type");
    }

    #[test]
    fn stickers_voice_and_files_carry_what_their_type_says() {
        for t in [3, 12, 13] {
            let r = refs(json!({"type": t, "url": "s.gif", "width": 240, "height": 240}));
            assert_eq!(r.len(), 1, "type {t}");
            assert_eq!(r[0].kind, AttachmentKind::Sticker);
            assert_eq!(r[0].width, Some(240));
        }
        let voice = refs(json!({"type": 4, "url": "v.amr", "timeTrad": 7, "waveform": "AA"}));
        assert_eq!(voice.len(), 1);
        assert_eq!(voice[0].kind, AttachmentKind::Voice);
        assert_eq!(voice[0].duration_ms, Some(7000));

        let file = refs(json!({"type": 8, "url": "f.pdf", "name": "季度报告.pdf",
                               "size": 2048, "ext": "pdf"}));
        assert_eq!(file.len(), 1);
        assert_eq!(file[0].kind, AttachmentKind::File);
        assert_eq!(file[0].name.as_deref(), Some("季度报告.pdf"));
        assert_eq!(file[0].size, Some(2048));
    }

    #[test]
    fn a_video_is_the_video_then_its_cover() {
        let r = refs(
            json!({"type": 5, "url": "v.mp4", "cover": "c.jpg", "size": 1024,
                            "width": 720, "height": 1280, "second": 12}),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].kind, AttachmentKind::Video);
        assert_eq!(r[0].url, "v.mp4");
        assert_eq!(r[0].size, Some(1024));
        assert_eq!(r[0].duration_ms, Some(12_000));
        assert_eq!((r[0].width, r[0].height), (Some(720), Some(1280)));
        let mut cover = AttachmentRef::new(AttachmentKind::Thumbnail, "c.jpg");
        cover.mime = Some("image/jpeg".into());
        assert_eq!(r[1], cover);
        // a cover that is the video itself is listed once
        let same = refs(json!({"type": 5, "url": "v.mp4", "cover": "v.mp4"}));
        assert_eq!(same.len(), 1);
    }

    #[test]
    fn other_types_and_unusable_urls_reference_nothing() {
        for payload in [
            json!({"type": 1, "content": "file/preview/x.png"}),
            json!({"type": 6, "lng": 1.0, "lat": 2.0, "img": "m.png"}),
            json!({"type": 7, "uid": "u1", "avatar": "users/u1/avatar"}),
            json!({"type": 2}),
            json!({"type": 2, "url": ""}),
            json!({"type": 2, "url": 42}),
            json!({"type": 2, "url": "a\u{0}b"}),
            json!({"type": 2, "url": "x".repeat(MAX_URL_BYTES + 1)}),
            json!({"type": 17, "url": "u.png"}),
        ] {
            assert!(refs(payload.clone()).is_empty(), "{payload}");
        }
    }

    #[test]
    fn odd_numbers_are_read_where_they_make_sense() {
        let r = refs(
            json!({"type": 5, "url": "v.mp4", "size": "4096", "second": 2.5,
                            "width": -1, "height": 1e20}),
        );
        assert_eq!(r[0].size, Some(4096));
        assert_eq!(r[0].duration_ms, Some(2500));
        assert_eq!((r[0].width, r[0].height), (None, None));
        let r = refs(json!({"type": 8, "url": "f", "size": -5, "name": "  "}));
        assert_eq!((r[0].size, r[0].name.clone()), (None, None));
    }

    #[test]
    fn merged_forwards_list_the_files_of_their_messages_nested_ones_too() {
        let inner = json!({"type": 11, "msgs": [
            {"message_id": "3", "payload": {"type": 8, "url": "deep.pdf", "name": "d.pdf", "size": 9}},
            {"message_id": "4", "payload": {"type": 1, "content": "hi"}},
        ]});
        let content = map_payload(
            &json!({"type": 11, "channel_type": 2, "users": [], "msgs": [
                {"message_id": "1", "payload": {"type": 2, "url": "a.png", "width": 10, "height": 20}},
                {"message_id": "2", "payload": {"type": 1, "content": "text"}},
                {"message_id": "5", "payload": inner},
                {"message_id": "6", "payload": {"type": 5, "url": "v.mp4", "cover": "c.jpg", "second": 3}},
                {"message_id": "7", "payload": {"type": 2, "url": "a.png"}},
            ]}),
        );
        let r = attachments(&content);
        let listed: Vec<(AttachmentKind, &str)> =
            r.iter().map(|r| (r.kind, r.url.as_str())).collect();
        assert_eq!(
            listed,
            vec![
                (AttachmentKind::Image, "a.png"),
                (AttachmentKind::File, "deep.pdf"),
                (AttachmentKind::Video, "v.mp4"),
                (AttachmentKind::Thumbnail, "c.jpg"),
            ]
        );
        assert_eq!(r[0].width, Some(10));
        assert_eq!(r[1].name.as_deref(), Some("d.pdf"));
        // a forwarded text message keeps exactly the entry it always had
        assert_eq!(
            content.content["msgs"][1],
            json!({"message_id": "2", "kind": "text", "text": "text"})
        );
        assert_eq!(
            content.text,
            "[image]\ntext\n[file] d.pdf\nhi\n[video 3s]\n[image]"
        );
    }

    #[test]
    fn forwards_nested_past_the_mapping_depth_are_not_followed() {
        let mut payload = json!({"type": 2, "url": "bottom.png"});
        for i in 0..10 {
            payload =
                json!({"type": 11, "msgs": [{"message_id": i.to_string(), "payload": payload}]});
        }
        // the mapping keeps forwards four deep; the picture is below that
        assert!(refs(payload).is_empty());
        let mut payload = json!({"type": 2, "url": "bottom.png"});
        for i in 0..3 {
            payload =
                json!({"type": 11, "msgs": [{"message_id": i.to_string(), "payload": payload}]});
        }
        assert_eq!(refs(payload).len(), 1);
    }

    #[test]
    fn a_huge_forward_is_cut_at_the_cap() {
        let msgs: Vec<Value> = (0..MAX_ATTACHMENTS + 50)
            .map(|i| {
                json!({"message_id": i.to_string(),
                            "payload": {"type": 2, "url": format!("{i}.png")}})
            })
            .collect();
        assert_eq!(
            refs(json!({"type": 11, "msgs": msgs})).len(),
            MAX_ATTACHMENTS
        );
    }

    #[test]
    fn urls_resolve_as_the_web_client_does() {
        let base = "http://im.example:8090/";
        assert_eq!(
            resolve(base, "file/preview/chat/1/u/a.jpg")
                .unwrap()
                .as_str(),
            "http://im.example:8090/v1/file/preview/chat/1/u/a.jpg"
        );
        assert_eq!(
            resolve(base, "/file/preview/chat/1/u/a.jpg")
                .unwrap()
                .as_str(),
            "http://im.example:8090/v1/file/preview/chat/1/u/a.jpg"
        );
        assert_eq!(
            resolve(base, "https://cdn.example/x.png?sig=1")
                .unwrap()
                .as_str(),
            "https://cdn.example/x.png?sig=1"
        );
        assert!(resolve(base, "httpx:/nonsense").is_err());
        let request = media_request(
            base,
            &AttachmentRef::new(AttachmentKind::Image, "file/preview/a"),
        )
        .unwrap();
        assert!(request.headers.is_empty() && request.credentials.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any JSON maps and lists its files without panicking, and the list is bounded.
        #[test]
        fn any_payload_lists_a_bounded_set_of_files(payload in any_payload()) {
            let refs = attachments(&map_payload(&payload));
            prop_assert!(refs.len() <= MAX_ATTACHMENTS);
            for (i, r) in refs.iter().enumerate() {
                prop_assert!(!r.url.is_empty() && r.url.len() <= MAX_URL_BYTES);
                prop_assert!(refs[..i].iter().all(|o| o.url != r.url));
            }
            // and from any content at all, mapped or not
            let raw = Content { kind: crate::model::MessageKind::Other, text: String::new(), content: payload };
            prop_assert!(attachments(&raw).len() <= MAX_ATTACHMENTS);
        }
    }

    fn any_payload() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            prop::sample::select(vec![1i64, 2, 3, 4, 5, 8, 11, 12, 13, -1]).prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z./0-9 ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 128, 8, |inner| {
            let key = prop::sample::select(vec![
                "type",
                "url",
                "cover",
                "width",
                "height",
                "size",
                "second",
                "timeTrad",
                "name",
                "msgs",
                "payload",
                "media",
                "duration",
                "message_id",
            ])
            .prop_map(String::from);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
