//! The files a Yunhu message version references, read from its archived content (what
//! `map::content_of` keeps), and how to ask Yunhu's media hosts for one. What is known of
//! the hosts and their rules is in `docs/upstreams/yunhu.md`, "Attachments".
//!
//! Pure and bounded: a content yields at most [`MAX_ATTACHMENTS`] references, one per
//! distinct URL, in a fixed order that depends on the content only, so a version archived
//! before attachments were kept yields the same list, with the same ordinals, as a new one.

use serde_json::Value;

use crate::attachments::{AttachmentKind, AttachmentRef, MediaRequest};
use crate::model::{Content, MessageKind};

/// The `Referer` Yunhu's media hosts want (any other answers 403): the origin of Yunhu's
/// own web app.
pub const MEDIA_REFERER: &str = "http://myapp.jwznb.com";

/// The most references one content yields: one per media field `content_of` keeps.
pub const MAX_ATTACHMENTS: usize = 5;

/// The longest URL taken for a reference; a longer value is not a media URL.
const MAX_URL_LEN: usize = 4096;

/// The files `content` references, in a fixed order: the message's own media first (a
/// video, then its cover; or an image), then a sticker, a voice clip, a file.
///
/// On a video message, `image_url` is the video's cover (a thumbnail); on any other message
/// it is an image. `file_size` is the size of the file when there is one, else of the
/// image; `width`/`height` describe the image (or the video); `video_seconds` and
/// `audio_seconds` become durations.
pub fn attachments(content: &Content) -> Vec<AttachmentRef> {
    let Value::Object(m) = &content.content else {
        return Vec::new();
    };
    let text = |key: &str| {
        m.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let number = |key: &str| m.get(key).and_then(Value::as_i64);
    let dimension = |key: &str| {
        number(key)
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| *n > 0)
    };
    let seconds = |key: &str| {
        number(key)
            .filter(|s| *s > 0)
            .and_then(|s| s.checked_mul(1000))
    };
    let size = number("file_size").filter(|n| *n > 0);
    let has_file = text("file_url").is_some();

    let mut out: Vec<AttachmentRef> = Vec::with_capacity(MAX_ATTACHMENTS);
    let mut push = |reference: Option<AttachmentRef>| {
        if let Some(r) = reference {
            if !out.iter().any(|o| o.url == r.url) {
                out.push(r);
            }
        }
    };
    let reference = |kind: AttachmentKind, key: &str| {
        text(key).filter(|url| url.len() <= MAX_URL_LEN).map(|url| {
            let mut r = AttachmentRef::new(kind, url);
            r.name = last_segment(url);
            r.mime = r.name.as_deref().and_then(mime_of);
            r
        })
    };
    let image = |kind: AttachmentKind| {
        reference(kind, "image_url").map(|mut r| {
            if kind == AttachmentKind::Image {
                r.width = dimension("width");
                r.height = dimension("height");
                r.size = size.filter(|_| !has_file);
            }
            r
        })
    };
    let video = reference(AttachmentKind::Video, "video_url").map(|mut r| {
        r.duration_ms = seconds("video_seconds");
        if content.kind == MessageKind::Video {
            r.width = dimension("width");
            r.height = dimension("height");
        }
        r
    });
    if content.kind == MessageKind::Video {
        push(video);
        push(image(AttachmentKind::Thumbnail));
    } else {
        push(image(AttachmentKind::Image));
        push(video);
    }
    push(reference(AttachmentKind::Sticker, "sticker_url"));
    push(reference(AttachmentKind::Voice, "audio_url").map(|mut r| {
        r.duration_ms = seconds("audio_seconds");
        r
    }));
    push(reference(AttachmentKind::File, "file_url").map(|mut r| {
        if let Some(name) = text("file_name") {
            r.name = Some(name.chars().take(255).collect());
            r.mime = r.name.as_deref().and_then(mime_of).or(r.mime);
        }
        r.size = size;
        r
    }));
    out
}

/// How to download `url`: a plain GET with Yunhu's `Referer` on every hop (a large file on
/// `chat-file` is redirected to `chat-file-oss`) and no credentials: the account's token
/// never goes to a media host. `chat-storage1` URLs carry their own signature in the
/// query and need no `Referer`; it goes there too, as Yunhu's own clients send it.
pub fn media_request(url: &str) -> Result<MediaRequest, String> {
    let mut request = MediaRequest::get(url)?;
    request.headers.push((
        reqwest::header::REFERER,
        reqwest::header::HeaderValue::from_static(MEDIA_REFERER),
    ));
    Ok(request)
}

/// The last path segment of a URL, without query or fragment, if it has one.
fn last_segment(url: &str) -> Option<String> {
    let shown = crate::attachments::shown_url(url);
    let path = shown.split_once("://").map_or(shown.as_str(), |(_, rest)| {
        rest.split_once('/').map_or("", |(_, path)| path)
    });
    path.rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(255).collect())
}

/// The media type a file name's extension usually means (only the common ones).
fn mime_of(name: &str) -> Option<String> {
    let (_, ext) = name.rsplit_once('.')?;
    let mime = match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "amr" => "audio/amr",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        _ => return None,
    };
    Some(mime.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::yunhu::map::content_of;
    use crate::connector::yunhu::pb;
    use serde_json::json;

    fn refs(content_type: i64, c: pb::MsgContent) -> Vec<AttachmentRef> {
        attachments(&content_of(content_type, &c, ""))
    }

    #[test]
    fn an_image_with_its_size_and_dimensions() {
        let r = refs(
            2,
            pb::MsgContent {
                image_url: "0a1b.jpg".into(),
                width: 640,
                height: 480,
                file_size: 12345,
                ..Default::default()
            },
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, AttachmentKind::Image);
        assert_eq!(r[0].url, "https://chat-img.jwznb.com/0a1b.jpg");
        assert_eq!(r[0].name.as_deref(), Some("0a1b.jpg"));
        assert_eq!(r[0].mime.as_deref(), Some("image/jpeg"));
        assert_eq!((r[0].width, r[0].height), (Some(640), Some(480)));
        assert_eq!(r[0].size, Some(12345));
        assert_eq!(r[0].md5, None);
    }

    #[test]
    fn a_signed_file_keeps_its_url_name_and_size() {
        let url = "https://chat-storage1.jwznb.com/x/report.bin?sign=ab12&t=1755566778";
        let r = refs(
            4,
            pb::MsgContent {
                file_name: "季度报告.pdf".into(),
                file_url: url.into(),
                file_size: 2048,
                ..Default::default()
            },
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, AttachmentKind::File);
        assert_eq!(r[0].url, url, "the signature stays in what is fetched");
        assert_eq!(r[0].name.as_deref(), Some("季度报告.pdf"));
        assert_eq!(r[0].mime.as_deref(), Some("application/pdf"));
        assert_eq!(r[0].size, Some(2048));
    }

    #[test]
    fn a_video_comes_before_its_cover() {
        let r = refs(
            10,
            pb::MsgContent {
                video_url: "v.mp4".into(),
                video_time: 12,
                image_url: "v-cover.jpg".into(),
                width: 1280,
                height: 720,
                ..Default::default()
            },
        );
        let kinds: Vec<_> = r.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [AttachmentKind::Video, AttachmentKind::Thumbnail],
            "{r:?}"
        );
        assert_eq!(r[0].url, "https://chat-video1.jwznb.com/v.mp4");
        assert_eq!(r[0].duration_ms, Some(12_000));
        assert_eq!((r[0].width, r[0].height), (Some(1280), Some(720)));
        assert_eq!(r[1].url, "https://chat-img.jwznb.com/v-cover.jpg");
        assert_eq!(r[1].width, None);
    }

    #[test]
    fn voice_and_sticker() {
        let r = refs(
            11,
            pb::MsgContent {
                audio_url: "a.m4a".into(),
                audio_time: 7,
                ..Default::default()
            },
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, AttachmentKind::Voice);
        assert_eq!(r[0].url, "https://chat-audio1.jwznb.com/a.m4a");
        assert_eq!(r[0].duration_ms, Some(7_000));
        assert_eq!(r[0].mime.as_deref(), Some("audio/mp4"));

        let r = refs(
            7,
            pb::MsgContent {
                image: "https://chat-img.jwznb.com/sticker/1f.gif".into(),
                sticker_item_id: 3,
                sticker_pack_id: 4,
                ..Default::default()
            },
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, AttachmentKind::Sticker);
        assert_eq!(r[0].url, "https://chat-img.jwznb.com/sticker/1f.gif");
    }

    #[test]
    fn text_quotes_and_avatars_are_no_attachments() {
        let r = refs(
            1,
            pb::MsgContent {
                text: "看这张 https://chat-img.jwznb.com/x.jpg".into(),
                quote_image_url: "https://chat-img.jwznb.com/quoted.jpg".into(),
                quote_video_url: "https://chat-video1.jwznb.com/quoted.mp4".into(),
                ..Default::default()
            },
        );
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn the_same_url_twice_is_one_attachment_and_the_order_is_fixed() {
        let c = pb::MsgContent {
            image_url: "https://chat-img.jwznb.com/same.png".into(),
            image: "https://chat-img.jwznb.com/same.png".into(),
            audio_url: "a.m4a".into(),
            file_url: "f.zip".into(),
            file_name: "f.zip".into(),
            file_size: 9,
            ..Default::default()
        };
        let r = refs(2, c.clone());
        let kinds: Vec<_> = r.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                AttachmentKind::Image,
                AttachmentKind::Voice,
                AttachmentKind::File
            ]
        );
        assert_eq!(r[0].size, None, "file_size is the file's when there is one");
        assert_eq!(r[2].size, Some(9));
        assert_eq!(r, refs(2, c), "the same content, the same list");
    }

    #[test]
    fn odd_content_yields_what_can_be_read() {
        for content in [
            json!(null),
            json!([1, 2]),
            json!("image_url"),
            json!({"image_url": 5, "file_url": null, "audio_url": ["a"]}),
            json!({"image_url": "   ", "file_size": "big"}),
            json!({"file_url": "x".repeat(MAX_URL_LEN + 1)}),
        ] {
            let c = Content {
                kind: MessageKind::Image,
                text: String::new(),
                content,
            };
            assert!(attachments(&c).is_empty(), "{:?}", c.content);
        }
        let c = Content {
            kind: MessageKind::Image,
            text: String::new(),
            content: json!({"image_url": "https://h/i.png", "width": 1i64 << 40, "file_size": -3}),
        };
        let r = attachments(&c);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].width, r[0].size), (None, None));
    }

    #[test]
    fn media_requests_carry_the_referer_and_no_token() {
        let r = media_request("https://chat-img.jwznb.com/a.jpg").unwrap();
        assert_eq!(r.url.as_str(), "https://chat-img.jwznb.com/a.jpg");
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].0, reqwest::header::REFERER);
        assert_eq!(r.headers[0].1, MEDIA_REFERER);
        assert!(r.credentials.is_empty());
        let signed = media_request("https://chat-storage1.jwznb.com/f.pdf?sign=s&t=1").unwrap();
        assert_eq!(signed.url.query(), Some("sign=s&t=1"));
        assert!(media_request("javascript:alert(1)").is_err());
        assert!(media_request("chat-img.jwznb.com/a.jpg").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_value() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<i64>().prop_map(Value::from),
                ".{0,30}".prop_map(Value::from),
                "https?://[a-z.]{1,12}/[a-z0-9./?=&]{0,20}".prop_map(Value::from),
                prop::collection::vec(".{0,4}".prop_map(Value::from), 0..3).prop_map(Value::Array),
            ]
        }

        fn any_content() -> impl Strategy<Value = Content> {
            let keys = prop_oneof![
                Just("image_url".to_string()),
                Just("file_url".to_string()),
                Just("file_name".to_string()),
                Just("file_size".to_string()),
                Just("sticker_url".to_string()),
                Just("video_url".to_string()),
                Just("video_seconds".to_string()),
                Just("audio_url".to_string()),
                Just("audio_seconds".to_string()),
                Just("width".to_string()),
                Just("height".to_string()),
                ".{0,8}",
            ];
            (
                prop::sample::select(MessageKind::ALL.to_vec()),
                prop::collection::btree_map(keys, any_value(), 0..12),
            )
                .prop_map(|(kind, m)| Content {
                    kind,
                    text: String::new(),
                    content: Value::Object(m.into_iter().collect()),
                })
        }

        fn any_msg_content() -> impl Strategy<Value = (i64, pb::MsgContent)> {
            (
                0i64..16,
                (".{0,20}", ".{0,20}", ".{0,20}", ".{0,20}", ".{0,20}"),
                (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
                (".{0,10}", any::<i64>()),
            )
                .prop_map(
                    |(
                        ty,
                        (image_url, file_url, image, video_url, audio_url),
                        (a, b, c, d),
                        (file_name, e),
                    )| {
                        (
                            ty,
                            pb::MsgContent {
                                image_url,
                                file_url,
                                image,
                                video_url,
                                audio_url,
                                file_size: a,
                                width: b,
                                height: c,
                                video_time: d,
                                audio_time: e,
                                file_name,
                                ..Default::default()
                            },
                        )
                    },
                )
        }

        fn check(content: &Content) -> Result<(), TestCaseError> {
            let r = attachments(content);
            prop_assert!(r.len() <= MAX_ATTACHMENTS);
            for (i, a) in r.iter().enumerate() {
                prop_assert!(!a.url.is_empty() && a.url.len() <= MAX_URL_LEN);
                prop_assert!(r[..i].iter().all(|b| b.url != a.url), "one per URL");
                prop_assert!(a.name.as_ref().map_or(0, |n| n.chars().count()) <= 255);
                prop_assert!(a.size.is_none_or(|s| s > 0));
                prop_assert!(a.duration_ms.is_none_or(|d| d > 0));
            }
            prop_assert_eq!(&r, &attachments(content));
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn any_content_never_panics_and_stays_bounded(content in any_content()) {
                check(&content)?;
            }

            #[test]
            fn any_mapped_message_lists_each_media_field_at_most_once(
                (ty, c) in any_msg_content()
            ) {
                let content = content_of(ty, &c, "");
                check(&content)?;
                let fields = [&c.image_url, &c.file_url, &c.image, &c.video_url, &c.audio_url]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .count();
                prop_assert!(attachments(&content).len() <= fields);
            }
        }
    }
}
