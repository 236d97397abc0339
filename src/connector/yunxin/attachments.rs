//! The files a Yunxin message points to, read from a stored version's mapped content
//! (`map::message` keeps upstream's `attachment` as it came). Image, audio, video and file
//! messages (types 1, 2, 3, 6) carry one NOS object each: `url`, `md5`, `ext`, `size`, and
//! `name`, `w`/`h` or `dur` by type (`docs/upstreams/yunxin.md`, "Attachments").
//!
//! Pure and total: any content gives a list (empty when there is nothing to fetch) of at
//! most [`MAX_PER_MESSAGE`] references, every string in it bounded; an `md5` that is not
//! 32 hex digits is left out rather than trusted, and an attachment sent as a JSON string
//! holding the object is read like the object.

use serde_json::Value;

use crate::attachments::{AttachmentKind, AttachmentRef};
use crate::model::{Content, MessageKind};

use super::map::int;

/// A Yunxin message carries at most one file.
pub const MAX_PER_MESSAGE: usize = 1;

/// Longest URL taken (longer ones are not a NOS URL; the reference is left out).
pub const MAX_URL_CHARS: usize = 4096;

/// Longest file name kept (a longer one is cut at a character boundary).
pub const MAX_NAME_CHARS: usize = 512;

/// Longest attachment sent as a JSON string that is parsed.
const MAX_STRING_ATTACHMENT: usize = 256 * 1024;

/// The attachments of one stored version, in order (the ordinal is the index).
pub fn of(content: &Content) -> Vec<AttachmentRef> {
    let message_type = int(&content.content, "message_type");
    let Some(kind) = kind_of(message_type, content.kind) else {
        return Vec::new();
    };
    let Some(attachment) = content.content.get("attachment").and_then(object) else {
        return Vec::new();
    };
    reference(kind, &attachment).into_iter().collect()
}

/// Which kind of file a message type carries; `None` for types without one. A version
/// without `message_type` (never the case for what `map` wrote) falls back to its kind.
fn kind_of(message_type: Option<i64>, kind: MessageKind) -> Option<AttachmentKind> {
    match message_type {
        Some(1) => Some(AttachmentKind::Image),
        Some(2) => Some(AttachmentKind::Voice),
        Some(3) => Some(AttachmentKind::Video),
        Some(6) => Some(AttachmentKind::File),
        Some(_) => None,
        None => match kind {
            MessageKind::Image => Some(AttachmentKind::Image),
            MessageKind::Voice => Some(AttachmentKind::Voice),
            MessageKind::Video => Some(AttachmentKind::Video),
            MessageKind::File => Some(AttachmentKind::File),
            _ => None,
        },
    }
}

/// The attachment as an object: itself, or the object a JSON string holds.
fn object(attachment: &Value) -> Option<Value> {
    match attachment {
        Value::Object(_) => Some(attachment.clone()),
        Value::String(s) if s.len() <= MAX_STRING_ATTACHMENT => {
            match serde_json::from_str::<Value>(s.trim()) {
                Ok(v @ Value::Object(_)) => Some(v),
                _ => None,
            }
        }
        _ => None,
    }
}

fn reference(kind: AttachmentKind, a: &Value) -> Option<AttachmentRef> {
    let url = a.get("url")?.as_str()?.trim();
    if url.is_empty() || url.chars().count() > MAX_URL_CHARS {
        return None;
    }
    let name = a
        .get("name")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(MAX_NAME_CHARS).collect::<String>());
    let ext = a
        .get("ext")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            name.as_deref()
                .and_then(|n| n.rsplit_once('.'))
                .map(|(_, e)| e)
        });
    let positive = |key: &str| int(a, key).filter(|v| *v > 0);
    let dimension = |key: &str| positive(key).and_then(|v| i32::try_from(v).ok());
    let (width, height, duration_ms) = match kind {
        AttachmentKind::Image => (dimension("w"), dimension("h"), None),
        AttachmentKind::Video => (dimension("w"), dimension("h"), positive("dur")),
        AttachmentKind::Voice => (None, None, positive("dur")),
        _ => (None, None, None),
    };
    let mime = ext.and_then(|e| mime_of(kind, e)).map(str::to_string);
    Some(AttachmentRef {
        kind,
        url: url.to_string(),
        name,
        mime,
        size: int(a, "size").filter(|s| *s >= 0),
        width,
        height,
        duration_ms,
        md5: a.get("md5").and_then(Value::as_str).and_then(md5),
    })
}

/// A declared md5 as 32 lowercase hex digits, or `None` when it is not one.
pub fn md5(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The media type of a file extension (shared with the other platforms).
pub use crate::attachments::mime_of;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(message_type: i64, attachment: Value) -> Content {
        Content {
            kind: super::super::map::kind_of(message_type),
            text: String::new(),
            content: json!({"message_type": message_type, "sub_type": 0, "text": "",
                            "attachment": attachment}),
        }
    }

    /// The bodies of the official Java server SDK's history test (`TestHistoryV1`).
    #[test]
    fn the_four_media_types_as_the_server_sdk_sends_them() {
        let image = of(&content(
            1,
            json!({"name": "测试图片.jpg", "md5": "9894907e4ad9de4678091277509361f7",
                   "url": "http://example.com/image.jpg", "ext": "jpg", "w": 800, "h": 600,
                   "size": 102400}),
        ));
        assert_eq!(
            image,
            vec![AttachmentRef {
                kind: AttachmentKind::Image,
                url: "http://example.com/image.jpg".into(),
                name: Some("测试图片.jpg".into()),
                mime: Some("image/jpeg".into()),
                size: Some(102_400),
                width: Some(800),
                height: Some(600),
                duration_ms: None,
                md5: Some("9894907e4ad9de4678091277509361f7".into()),
            }]
        );
        let audio = of(&content(
            2,
            json!({"dur": 3000, "md5": "87b94a090dec5c58f242b7132a530a01",
                   "url": "http://example.com/audio.aac", "ext": "aac", "size": 16420}),
        ));
        assert_eq!(audio.len(), 1);
        assert_eq!(audio[0].kind, AttachmentKind::Voice);
        assert_eq!(audio[0].duration_ms, Some(3000));
        assert_eq!(audio[0].mime.as_deref(), Some("audio/aac"));
        assert_eq!(audio[0].name, None);
        assert_eq!(audio[0].size, Some(16420));
        let video = of(&content(
            3,
            json!({"dur": 10000, "md5": "da2cef3e5663ee9c3547ef5d127f7e3e",
                   "url": "http://example.com/video.mp4", "w": 1280, "h": 720, "ext": "mp4",
                   "size": 2048000}),
        ));
        assert_eq!(
            (
                video[0].kind,
                video[0].width,
                video[0].height,
                video[0].duration_ms
            ),
            (AttachmentKind::Video, Some(1280), Some(720), Some(10_000))
        );
        assert_eq!(video[0].mime.as_deref(), Some("video/mp4"));
        let file = of(&content(
            6,
            json!({"name": "测试文件.pdf", "md5": "79d62a35fa3d34c367b20c66afc2a500",
                   "url": "http://example.com/file.pdf", "ext": "pdf", "size": 1024000}),
        ));
        assert_eq!(
            (
                file[0].kind,
                file[0].name.as_deref(),
                file[0].mime.as_deref()
            ),
            (
                AttachmentKind::File,
                Some("测试文件.pdf"),
                Some("application/pdf")
            )
        );
        assert_eq!(
            file[0].md5.as_deref(),
            Some("79d62a35fa3d34c367b20c66afc2a500")
        );
    }

    #[test]
    fn other_types_have_none() {
        for (ty, a) in [
            (0, json!({"url": "http://x/a.jpg"})),
            (4, json!({"title": "杭州", "lng": 120.1, "lat": 30.2})),
            (5, json!({"id": 0, "data": {"ids": ["a"]}})),
            (
                100,
                json!({"url": "http://x/a.jpg", "md5": "9894907e4ad9de4678091277509361f7"}),
            ),
        ] {
            assert_eq!(of(&content(ty, a)), Vec::new(), "type {ty}");
        }
        // a media type without a url has nothing to fetch
        assert_eq!(of(&content(1, json!({"name": "a.jpg"}))), Vec::new());
        assert_eq!(of(&content(1, json!({"url": "  "}))), Vec::new());
        assert_eq!(of(&content(1, json!({"url": 5}))), Vec::new());
        assert_eq!(of(&content(1, Value::Null)), Vec::new());
    }

    #[test]
    fn an_attachment_sent_as_a_json_string_is_read_like_the_object() {
        let object = json!({"dur": 3000, "md5": "87B94A090DEC5C58F242B7132A530A01",
                            "url": "https://nim-nosdn.netease.im/a/b.aac", "ext": "aac",
                            "size": "16420"});
        let from_object = of(&content(2, object.clone()));
        let from_string = of(&content(2, Value::String(object.to_string())));
        assert_eq!(from_object, from_string);
        assert_eq!(from_string[0].size, Some(16420));
        assert_eq!(
            from_string[0].md5.as_deref(),
            Some("87b94a090dec5c58f242b7132a530a01"),
            "md5 is lowercased"
        );
        assert_eq!(of(&content(2, json!("not json"))), Vec::new());
        assert_eq!(of(&content(2, json!("[1,2]"))), Vec::new());
    }

    #[test]
    fn a_malformed_md5_is_left_out_never_trusted() {
        for bad in [
            json!("9894907e4ad9de4678091277509361f"),
            json!("9894907e4ad9de4678091277509361f7a"),
            json!("9894907e4ad9de4678091277509361fz"),
            json!(""),
            json!(12345),
            json!({"md5": "9894907e4ad9de4678091277509361f7"}),
        ] {
            let refs = of(&content(
                1,
                json!({"url": "https://nos.netease.com/b/k", "md5": bad}),
            ));
            assert_eq!(refs.len(), 1);
            assert_eq!(refs[0].md5, None, "{bad}");
        }
    }

    #[test]
    fn nonsense_sizes_and_dimensions_are_left_out() {
        let refs = of(&content(
            3,
            json!({"url": "https://nos.netease.com/b/k", "w": -1, "h": 1e10, "dur": "x",
                   "size": -5, "ext": "weird"}),
        ));
        let r = &refs[0];
        assert_eq!(
            (r.width, r.height, r.duration_ms, r.size, r.mime.as_deref()),
            (None, None, None, None, None)
        );
        let refs = of(&content(
            1,
            json!({"url": "https://nos.netease.com/b/k", "w": 4_000_000_000i64}),
        ));
        assert_eq!(refs[0].width, None, "beyond i32");
    }

    #[test]
    fn the_mime_type_falls_back_to_the_name_and_the_kind_to_the_message_kind() {
        let refs = of(&content(
            6,
            json!({"url": "https://nos.netease.com/b/k", "name": "季度报告.PDF"}),
        ));
        assert_eq!(refs[0].mime.as_deref(), Some("application/pdf"));
        let without_type = Content {
            kind: MessageKind::Image,
            text: String::new(),
            content: json!({"attachment": {"url": "https://nos.netease.com/b/k", "ext": "PNG"}}),
        };
        let refs = of(&without_type);
        assert_eq!(refs[0].kind, AttachmentKind::Image);
        assert_eq!(refs[0].mime.as_deref(), Some("image/png"));
        assert_eq!(mime_of(AttachmentKind::Voice, "m4a"), Some("audio/mp4"));
        assert_eq!(mime_of(AttachmentKind::Video, ".MP4"), Some("video/mp4"));
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let long_name = "名".repeat(10_000);
        let refs = of(&content(
            6,
            json!({"url": "https://nos.netease.com/b/k", "name": long_name}),
        ));
        assert_eq!(
            refs[0].name.as_ref().unwrap().chars().count(),
            MAX_NAME_CHARS
        );
        let long_url = format!("https://nos.netease.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(of(&content(6, json!({"url": long_url}))), Vec::new());
    }

    mod arbitrary {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "url",
                    "md5",
                    "name",
                    "ext",
                    "w",
                    "h",
                    "dur",
                    "size",
                    "message_type",
                    "attachment",
                ])
                .prop_map(str::to_string),
                "[a-z_]{1,6}",
            ]
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_filter_map("finite", |f| {
                    serde_json::Number::from_f64(f).map(Value::Number)
                }),
                "[0-9a-fA-F]{30,34}".prop_map(Value::from),
                "https?://[a-z.]{1,12}/[a-z0-9/._?=&]{0,24}".prop_map(Value::from),
                "\\PC{0,24}".prop_map(Value::from),
                "-?[0-9]{1,22}".prop_map(Value::from),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(3, 48, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..9)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// An attachment: anything, an object of the fields read, or either as a JSON
        /// string (the shape Yunxin sometimes sends).
        fn attachment() -> impl Strategy<Value = Value> {
            let object = || {
                prop::collection::btree_map(key(), value(), 0..10)
                    .prop_map(|m| Value::Object(m.into_iter().collect()))
            };
            prop_oneof![
                value(),
                object(),
                object().prop_map(|o| Value::String(o.to_string())),
            ]
        }

        fn kind() -> impl Strategy<Value = MessageKind> {
            prop::sample::select(vec![
                MessageKind::Text,
                MessageKind::Image,
                MessageKind::Voice,
                MessageKind::Video,
                MessageKind::File,
                MessageKind::Other,
            ])
        }

        fn size(v: &impl serde::Serialize) -> usize {
            serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any content gives at most one reference, never a panic; what it holds is
            /// bounded by the input, its md5 is 32 lowercase hex digits and its numbers
            /// are positive.
            #[test]
            fn any_content_gives_a_bounded_list(
                message_type in prop_oneof![Just(Value::Null), (-2i64..8).prop_map(Value::from),
                                            Just(json!(100)), Just(json!("1")), leaf()],
                attachment in attachment(),
                kind in kind(),
                extra in prop::collection::btree_map(key(), value(), 0..4),
            ) {
                let mut c: serde_json::Map<String, Value> = extra.into_iter().collect();
                c.insert("message_type".into(), message_type);
                c.insert("attachment".into(), attachment.clone());
                let content = Content { kind, text: String::new(), content: Value::Object(c) };
                let refs = of(&content);
                prop_assert!(refs.len() <= MAX_PER_MESSAGE);
                for r in &refs {
                    prop_assert!(size(r) <= 2 * size(&attachment) + 512,
                        "{} from {}", size(r), size(&attachment));
                    prop_assert!(!r.url.is_empty() && r.url.chars().count() <= MAX_URL_CHARS);
                    prop_assert!(r.name.as_ref().is_none_or(|n| n.chars().count() <= MAX_NAME_CHARS));
                    if let Some(m) = &r.md5 {
                        prop_assert!(m.len() == 32
                            && m.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                    }
                    prop_assert!(r.size.is_none_or(|s| s >= 0));
                    prop_assert!(r.width.is_none_or(|w| w > 0) && r.height.is_none_or(|h| h > 0));
                    prop_assert!(r.duration_ms.is_none_or(|d| d > 0));
                }
                if let Value::String(s) = &attachment {
                    // the string form reads exactly like the object it holds
                    if let Ok(inner @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
                        let mut c2 = content.content.clone();
                        c2["attachment"] = inner;
                        let as_object = of(&Content { kind, text: String::new(), content: c2 });
                        prop_assert_eq!(as_object, refs);
                    }
                }
            }
        }
    }
}
