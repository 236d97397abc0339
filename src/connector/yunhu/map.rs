//! Pure mapping of Yunhu records to observations. What each field means, and how sure the
//! community is of it, is written down in `docs/upstreams/yunhu.md`.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::pb;
use crate::model::{
    Content, ConversationObservation, ConversationType, EarlierVersion, Mark, MessageHeader,
    MessageKind, MessageObservation,
};

/// A mapped message and the facts paging and edit records need.
pub struct Mapped {
    pub observation: MessageObservation,
    pub seq: i64,
    pub edit_time: u64,
    /// `send_time`, ms.
    pub sent_ms: i64,
    /// What an earlier version read from an edit record is completed from.
    pub current: Current,
}

/// A message's current content, as upstream sent it: the base an edit record's partial
/// `contentOld` is laid over (see [`edit_record`]).
#[derive(Clone, Debug, Default)]
pub struct Current {
    pub content_type: i64,
    pub content: pb::MsgContent,
    pub quote_msg_id: String,
}

/// `chat_type` 1/2/3 → direct/group/bot.
pub fn conversation_type(chat_type: i64) -> ConversationType {
    match chat_type {
        1 => ConversationType::Direct,
        2 => ConversationType::Group,
        3 => ConversationType::Bot,
        _ => ConversationType::Other,
    }
}

/// A conversation as listed. Only stable facts go into the metadata (not unread counts or
/// previews), so that a new message is not also a conversation change.
pub fn conversation(
    chat_id: &str,
    chat_type: i64,
    name: &str,
    remark: &str,
    avatar_url: &str,
    certification_level: i64,
) -> ConversationObservation {
    let display = if !remark.is_empty() { remark } else { name };
    let mut metadata = json!({"chat_type": chat_type});
    if !name.is_empty() {
        metadata["name"] = json!(name);
    }
    if !remark.is_empty() {
        metadata["remark"] = json!(remark);
    }
    if !avatar_url.is_empty() {
        metadata["avatar_url"] = json!(avatar_url);
    }
    if certification_level != 0 {
        metadata["certification_level"] = json!(certification_level);
    }
    ConversationObservation {
        conversation_id: chat_id.to_string(),
        conversation_type: conversation_type(chat_type),
        name: (!display.is_empty()).then(|| display.to_string()),
        metadata,
    }
}

/// The last millisecond upstream times are taken for: the end of year 9999. A later one is
/// not a time any Yunhu client shows (nor one PostgreSQL must be asked to store).
const LAST_MS: u64 = 253_402_300_799_999;

/// A Unix time in ms, if it is one (after 1970, before year 10000).
pub fn millis(ms: u64) -> Option<DateTime<Utc>> {
    if ms > LAST_MS {
        return None;
    }
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
}

/// A message record, or why it cannot be archived as one.
pub fn message(conversation_id: &str, msg: &pb::MsgData, bytes: &[u8]) -> Result<Mapped, String> {
    if msg.msg_id.is_empty() {
        return Err("message has no msg_id".into());
    }
    if msg.msg_seq <= 0 {
        return Err(format!("message {} has no msg_seq", msg.msg_id));
    }
    let sent_at = millis(msg.send_time)
        .filter(|_| msg.send_time > 0)
        .ok_or_else(|| format!("message {} has no valid send_time", msg.msg_id))?;
    let sender = msg.sender.clone().unwrap_or_default();
    let content = msg.content.clone().unwrap_or_default();
    let recalled = (msg.recall_time > 0).then(|| Mark {
        at: millis(msg.recall_time),
        by: None,
        reason: None,
    });
    let mut raw = serde_json::to_value(msg).unwrap_or(Value::Null);
    prune(&mut raw);
    raw["pb"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(Mapped {
        seq: msg.msg_seq,
        edit_time: msg.edit_time,
        sent_ms: sent_at.timestamp_millis(),
        current: Current {
            content_type: msg.content_type,
            content: content.clone(),
            quote_msg_id: msg.quote_msg_id.clone(),
        },
        observation: MessageObservation {
            conversation_id: conversation_id.to_string(),
            message_id: msg.msg_id.clone(),
            header: Some(MessageHeader {
                seq: Some(msg.msg_seq),
                sender_id: (!sender.chat_id.is_empty()).then(|| sender.chat_id.clone()),
                sender_name: (!sender.name.is_empty()).then(|| sender.name.clone()),
                sent_at,
                reply_to: (!msg.quote_msg_id.is_empty()).then(|| msg.quote_msg_id.clone()),
            }),
            content: Some(content_of(msg.content_type, &content, &msg.quote_msg_id)),
            edited_at: (msg.edit_time > 0).then(|| millis(msg.edit_time)).flatten(),
            earlier_versions: Vec::new(),
            recalled,
            deleted: None,
            reactions: None,
            raw,
        },
    })
}

/// Drop the fields protobuf leaves at their defaults (proto3 cannot tell them from absent
/// ones): the decoded payload keeps what upstream sent, and `pb` keeps the exact bytes.
fn prune(value: &mut Value) {
    if let Value::Object(map) = value {
        for v in map.values_mut() {
            prune(v);
        }
        map.retain(|_, v| match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::Bool(b) => *b,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        });
    }
}

/// The kind a `content_type` maps to (`docs/upstreams/yunhu.md`, "Content types").
pub fn kind_of(content_type: i64) -> MessageKind {
    match content_type {
        1 => MessageKind::Text,
        2 => MessageKind::Image,
        3 => MessageKind::Markdown,
        4 => MessageKind::File,
        5 => MessageKind::Form,
        6 => MessageKind::Post,
        7 => MessageKind::Sticker,
        8 => MessageKind::Html,
        9 => MessageKind::System,
        10 => MessageKind::Video,
        11 => MessageKind::Voice,
        13 => MessageKind::Call,
        14 => MessageKind::Card,
        _ => MessageKind::Other,
    }
}

/// A media field as a URL: a bare key gets the host of its media type
/// (`docs/upstreams/yunhu.md`, "Transport").
fn media_url(value: &str, host: &str) -> String {
    if value.contains("://") {
        value.to_string()
    } else {
        format!("https://{host}/{}", value.trim_start_matches('/'))
    }
}

/// A JSON-string field parsed where it is JSON, kept as a string otherwise.
fn json_field(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| json!(s))
}

/// Media hosts of bare keys, per media type (`docs/upstreams/yunhu.md`, "Transport").
const IMAGE_HOST: &str = "chat-img.jwznb.com";
const FILE_HOST: &str = "chat-file.jwznb.com";
const VIDEO_HOST: &str = "chat-video1.jwznb.com";
const AUDIO_HOST: &str = "chat-audio1.jwznb.com";

/// Normalised content: `kind`, plain `text` for search, and the fields that say what the
/// message holds (urls, names, sizes, mentions, the quoted message).
pub fn content_of(content_type: i64, c: &pb::MsgContent, quote_msg_id: &str) -> Content {
    let kind = kind_of(content_type);
    let mut m = Map::new();
    said_fields(c, &mut m);
    media_fields(c, &mut m);
    post_fields(c, &mut m);
    if let Some(quote) = quote_of(c, quote_msg_id) {
        m.insert("quote".into(), quote);
    }
    if kind == MessageKind::Other {
        m.insert("content_type".into(), json!(content_type));
    }
    Content {
        kind,
        text: text_of(kind, c),
        content: Value::Object(m),
    }
}

/// A string field under `key`, unless it is empty.
fn put_str(m: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        m.insert(key.to_string(), json!(value));
    }
}

/// A media field under `key` as a URL ([`media_url`]), unless it is empty.
fn put_url(m: &mut Map<String, Value>, key: &str, value: &str, host: &str) {
    if !value.is_empty() {
        m.insert(key.to_string(), json!(media_url(value, host)));
    }
}

/// A number under `key`, unless it is 0.
fn put_number(m: &mut Map<String, Value>, key: &str, value: i64) {
    if value != 0 {
        m.insert(key.to_string(), json!(value));
    }
}

/// What the message says: its text, buttons, form, mentions, tip and call texts.
fn said_fields(c: &pb::MsgContent, m: &mut Map<String, Value>) {
    put_str(m, "text", &c.text);
    if !c.buttons.is_empty() {
        m.insert("buttons".into(), json_field(&c.buttons));
    }
    if !c.mentioned_id.is_empty() {
        m.insert("mentions".into(), json!(c.mentioned_id));
    }
    if !c.form.is_empty() {
        m.insert("form".into(), json_field(&c.form));
    }
    put_str(m, "call_text", &c.call_text);
    put_str(m, "call_status", &c.call_status_text);
    put_str(m, "tip", &c.tip);
}

/// What the message carries: images, files, stickers, video and audio.
fn media_fields(c: &pb::MsgContent, m: &mut Map<String, Value>) {
    put_url(m, "image_url", &c.image_url, IMAGE_HOST);
    put_str(m, "file_name", &c.file_name);
    put_url(m, "file_url", &c.file_url, FILE_HOST);
    put_number(m, "file_size", c.file_size);
    if c.width != 0 || c.height != 0 {
        m.insert("width".into(), json!(c.width));
        m.insert("height".into(), json!(c.height));
    }
    put_url(m, "sticker_url", &c.image, IMAGE_HOST);
    put_str(m, "expression_id", &c.expression_id);
    if c.sticker_item_id != 0 || c.sticker_pack_id != 0 {
        m.insert("sticker_item_id".into(), json!(c.sticker_item_id));
        m.insert("sticker_pack_id".into(), json!(c.sticker_pack_id));
    }
    put_url(m, "video_url", &c.video_url, VIDEO_HOST);
    put_number(m, "video_seconds", c.video_time);
    put_url(m, "audio_url", &c.audio_url, AUDIO_HOST);
    put_number(m, "audio_seconds", c.audio_time);
}

/// A community post the message shares.
fn post_fields(c: &pb::MsgContent, m: &mut Map<String, Value>) {
    if c.post_id.is_empty() {
        return;
    }
    m.insert("post_id".into(), json!(c.post_id));
    m.insert("post_title".into(), json!(c.post_title));
    m.insert("post_content".into(), json!(c.post_content));
    let format = if c.post_content_type == "2" {
        "markdown"
    } else {
        "text"
    };
    m.insert("post_format".into(), json!(format));
}

/// The quoted message: its id and what the quote shows of it.
fn quote_of(c: &pb::MsgContent, quote_msg_id: &str) -> Option<Value> {
    let mut quote = Map::new();
    put_str(&mut quote, "msg_id", quote_msg_id);
    put_str(&mut quote, "text", &c.quote_msg_text);
    put_str(&mut quote, "image_url", &c.quote_image_url);
    put_str(&mut quote, "image_name", &c.quote_image_name);
    put_str(&mut quote, "video_url", &c.quote_video_url);
    (!quote.is_empty()).then_some(Value::Object(quote))
}

/// The plain text search indexes for a message of `kind`.
fn text_of(kind: MessageKind, c: &pb::MsgContent) -> String {
    let joined = |parts: [&str; 2], sep: &str| {
        parts
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(sep)
    };
    match kind {
        MessageKind::File => c.file_name.clone(),
        MessageKind::Post => joined([&c.post_title, &c.post_content], "\n"),
        MessageKind::Call => joined([&c.call_status_text, &c.call_text], " "),
        MessageKind::Form if c.text.is_empty() => c.form.clone(),
        _ => c.text.clone(),
    }
}

/// One row of `list-message-edit-record`, oldest-first sortable.
pub struct EditRecord {
    /// The edit time (`msgTime`), ms.
    pub edited_ms: i64,
    pub id: i64,
    pub version: EarlierVersion,
}

/// The parts of a content an edit record's `contentOld` may carry: its keys (the
/// protobuf's field names, snake_case or camelCase) and where each lands in the normalised
/// content (a JSON pointer into [`content_of`]'s output).
const RECORD_FIELDS: [(&[&str], &str); 14] = [
    (&["text"], "/text"),
    (&["buttons"], "/buttons"),
    (&["quote_msg_text", "quoteMsgText"], "/quote/text"),
    (&["quote_image_url", "quoteImageUrl"], "/quote/image_url"),
    (&["quote_image_name", "quoteImageName"], "/quote/image_name"),
    (&["quote_video_url", "quoteVideoUrl"], "/quote/video_url"),
    (&["mentioned_id", "mentionedId"], "/mentions"),
    (&["image_url", "imageUrl"], "/image_url"),
    (&["file_name", "fileName"], "/file_name"),
    (&["file_url", "fileUrl", "file_key", "fileKey"], "/file_url"),
    (&["form"], "/form"),
    (&["file_size", "fileSize"], "/file_size"),
    (&["width"], "/width"),
    (&["height"], "/height"),
];

/// An edit-record row. `contentOld` (a JSON-encoded string, or an object) carries only what
/// an edit can change: the text, the buttons, the quoted text. The earlier version is the
/// current content with those parts put back as they were, and it says which parts upstream
/// reported (`known_fields`), so that the store can tell it is an archived version even
/// when the parts it was completed with changed too.
pub fn edit_record(row: &Value, current: &Current) -> Result<EditRecord, String> {
    let old = row
        .get("contentOld")
        .ok_or("edit record has no contentOld")?;
    let old: Value = match old {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| format!("edit record contentOld is not JSON: {e}"))?,
        Value::Object(_) => old.clone(),
        _ => return Err("edit record contentOld is neither a string nor an object".into()),
    };
    let Value::Object(old) = old else {
        return Err("edit record contentOld is not an object".into());
    };
    let content_type = row
        .get("contentType")
        .and_then(Value::as_i64)
        .unwrap_or(current.content_type);
    let edited_ms = row
        .get("msgTime")
        .and_then(Value::as_i64)
        .ok_or("edit record has no msgTime")?;
    let replaced_at = u64::try_from(edited_ms)
        .ok()
        .and_then(millis)
        .ok_or_else(|| format!("edit record msgTime {edited_ms} is not a time"))?;
    let (content, known) = overlay(&current.content, &old);
    Ok(EditRecord {
        edited_ms,
        id: row.get("id").and_then(Value::as_i64).unwrap_or(0),
        version: EarlierVersion {
            content: content_of(content_type, &content, &current.quote_msg_id),
            replaced_at: Some(replaced_at),
            known_fields: Some(known),
        },
    })
}

/// A JSON value as the string a protobuf string field holds: strings as they are, `null`
/// as empty, anything else (an array of buttons, a form object) as its JSON text.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `current` with every part `old` carries replaced by `old`'s value, and the pointers of
/// those parts.
fn overlay(current: &pb::MsgContent, old: &Map<String, Value>) -> (pb::MsgContent, Vec<String>) {
    let mut c = current.clone();
    let mut known = Vec::new();
    for (keys, pointer) in RECORD_FIELDS {
        let Some(v) = keys.iter().find_map(|k| old.get(*k)) else {
            continue;
        };
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0);
        match pointer {
            "/text" => c.text = as_text(v),
            "/buttons" => c.buttons = as_text(v),
            "/quote/text" => c.quote_msg_text = as_text(v),
            "/quote/image_url" => c.quote_image_url = as_text(v),
            "/quote/image_name" => c.quote_image_name = as_text(v),
            "/quote/video_url" => c.quote_video_url = as_text(v),
            "/mentions" => {
                c.mentioned_id = match v {
                    Value::Array(ids) => ids.iter().map(as_text).collect(),
                    Value::Null => Vec::new(),
                    other => vec![as_text(other)],
                }
            }
            "/image_url" => c.image_url = as_text(v),
            "/file_name" => c.file_name = as_text(v),
            "/file_url" => c.file_url = as_text(v),
            "/form" => c.form = as_text(v),
            "/file_size" => c.file_size = n,
            "/width" => c.width = n,
            "/height" => c.height = n,
            _ => continue,
        }
        known.push(pointer.to_string());
    }
    (c, known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_content_type_has_a_kind() {
        let expected = [
            (1, "text"),
            (2, "image"),
            (3, "markdown"),
            (4, "file"),
            (5, "form"),
            (6, "post"),
            (7, "sticker"),
            (8, "html"),
            (9, "system"),
            (10, "video"),
            (11, "voice"),
            (13, "call"),
            (14, "card"),
            (12, "other"),
            (99, "other"),
        ];
        for (code, kind) in expected {
            assert_eq!(kind_of(code).as_str(), kind, "content_type {code}");
        }
    }

    #[test]
    fn bare_media_keys_get_their_host() {
        let c = pb::MsgContent {
            image_url: "abc.jpg".into(),
            ..Default::default()
        };
        let mapped = content_of(2, &c, "");
        assert_eq!(
            mapped.content["image_url"],
            json!("https://chat-img.jwznb.com/abc.jpg")
        );
        let c = pb::MsgContent {
            file_url: "https://chat-storage1.jwznb.com/x.pdf?sign=1".into(),
            file_name: "x.pdf".into(),
            ..Default::default()
        };
        let mapped = content_of(4, &c, "");
        assert_eq!(mapped.text, "x.pdf");
        assert_eq!(
            mapped.content["file_url"],
            json!("https://chat-storage1.jwznb.com/x.pdf?sign=1")
        );
    }

    /// A text message with a mention, a quote and a row of buttons, as upstream sends it.
    fn rich(text: &str) -> pb::MsgContent {
        pb::MsgContent {
            text: text.into(),
            buttons: r#"[[{"text":"打开","actionType":1,"url":"https://www.yhchat.com"}]]"#.into(),
            mentioned_id: vec!["7654321".into()],
            quote_msg_text: "王伟: 明天开会".into(),
            ..Default::default()
        }
    }

    fn current(content: pb::MsgContent) -> Current {
        Current {
            content_type: 1,
            content,
            quote_msg_id: "q1".into(),
        }
    }

    #[test]
    fn an_earlier_version_is_the_current_content_with_what_the_record_carries_put_back() {
        let original = content_of(1, &rich("旧的"), "q1");
        // edited: the text changed; the record carries the old text, buttons (as the
        // array they are) and quoted text, and nothing of the mention
        let row = json!({"id": 3, "msgId": "m", "contentType": 1,
            "contentOld": json!({"text": "旧的",
                "buttons": [[{"text":"打开","actionType":1,"url":"https://www.yhchat.com"}]],
                "quote_msg_text": "王伟: 明天开会"}).to_string(),
            "createTime": 1, "msgTime": 1_700_000_000_000i64});
        let rec = edit_record(&row, &current(rich("新的"))).unwrap();
        assert_eq!(
            rec.version.content, original,
            "mention, quote and buttons kept"
        );
        assert_eq!(
            rec.version.known_fields.as_deref(),
            Some(&["/text".to_string(), "/buttons".into(), "/quote/text".into()][..])
        );
        assert_eq!(rec.edited_ms, 1_700_000_000_000);

        // camelCase keys, buttons as a string, contentOld as an object: the same
        let row = json!({"id": 4, "contentType": 1, "msgTime": 1_700_000_000_001i64,
            "contentOld": {"text": "旧的", "quoteMsgText": "王伟: 明天开会",
                "buttons": rich("").buttons}});
        let rec = edit_record(&row, &current(rich("新的"))).unwrap();
        assert_eq!(rec.version.content, original);

        // an edit that changed the quoted text: the old one comes back
        let mut now = rich("新的");
        now.quote_msg_text = "李娜: 改了".into();
        let row = json!({"id": 5, "msgTime": 2, "contentOld": "{\"text\":\"旧的\",\"quote_msg_text\":\"王伟: 明天开会\"}"});
        let rec = edit_record(&row, &current(now)).unwrap();
        assert_eq!(
            rec.version.content.content["quote"]["text"],
            json!("王伟: 明天开会")
        );
        assert_eq!(rec.version.content.content["quote"]["msg_id"], json!("q1"));
    }

    #[test]
    fn edit_records_that_cannot_be_read_are_errors() {
        let cur = current(rich("x"));
        for row in [
            json!({"contentOld": "not json", "msgTime": 1}),
            json!({"msgTime": 1}),
            json!({"contentOld": "[1]", "msgTime": 1}),
            json!({"contentOld": 5, "msgTime": 1}),
            json!({"contentOld": "{}"}),
            json!({"contentOld": "{}", "msgTime": -1}),
            json!({"contentOld": "{}", "msgTime": 253_402_300_800_000i64}),
        ] {
            assert!(edit_record(&row, &cur).is_err(), "{row}");
        }
    }

    #[test]
    fn times_past_year_9999_are_not_times() {
        assert!(millis(LAST_MS).is_some());
        assert!(millis(LAST_MS + 1).is_none());
        assert!(millis(u64::MAX).is_none());
        let msg = pb::MsgData {
            msg_id: "m".into(),
            msg_seq: 1,
            send_time: u64::MAX,
            ..Default::default()
        };
        assert!(message("c", &msg, b"").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use prost::Message;

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("text".to_string()),
                            Just("buttons".to_string()),
                            Just("quote_msg_text".to_string()),
                            Just("mentionedId".to_string()),
                            Just("width".to_string()),
                            ".{0,6}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn any_content() -> impl Strategy<Value = pb::MsgContent> {
            (
                (".{0,40}", ".{0,20}", ".{0,20}", ".{0,10}", ".{0,10}"),
                (prop::collection::vec(".{0,8}", 0..4), ".{0,20}", ".{0,10}"),
                (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
                (".{0,10}", ".{0,10}", "[12]?", ".{0,10}", ".{0,10}"),
            )
                .prop_map(
                    |(
                        (text, buttons, image_url, file_name, file_url),
                        (mentioned_id, form, quote),
                        (file_size, width, height, video_time),
                        (post_id, post_title, post_content_type, call_text, tip),
                    )| pb::MsgContent {
                        text,
                        buttons,
                        image_url,
                        file_name,
                        file_url,
                        mentioned_id,
                        form,
                        quote_msg_text: quote,
                        file_size,
                        width,
                        height,
                        video_time,
                        post_id,
                        post_title,
                        post_content_type,
                        call_text,
                        tip,
                        ..Default::default()
                    },
                )
        }

        fn any_msg() -> impl Strategy<Value = pb::MsgData> {
            (
                ".{0,34}",
                any::<i64>(),
                (any::<u64>(), any::<u64>(), any::<u64>()),
                prop::option::of(any_content()),
                (any::<i64>(), ".{0,10}", ".{0,10}"),
            )
                .prop_map(
                    |(
                        msg_id,
                        msg_seq,
                        (send_time, recall_time, edit_time),
                        content,
                        (content_type, quote_msg_id, sender),
                    )| pb::MsgData {
                        msg_id,
                        msg_seq,
                        send_time,
                        recall_time,
                        edit_time,
                        content,
                        content_type,
                        quote_msg_id,
                        sender: Some(pb::Sender {
                            chat_id: sender.clone(),
                            name: sender,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
        }

        fn size(v: &impl serde::Serialize) -> usize {
            serde_json::to_string(v).map_or(0, |s| s.len())
        }

        /// Every record of a list yields an observation or a reason to quarantine it, and
        /// what comes out is at most a constant times what came in.
        fn check_list(body: &[u8]) -> Result<(), TestCaseError> {
            let Ok(list) = pb::lenient_list(body) else {
                return Ok(());
            };
            let mut outputs = 0usize;
            let mut out_bytes = 0usize;
            for (bytes, decoded) in &list.records {
                prop_assert!(bytes.len() <= body.len());
                let mapped = decoded
                    .as_ref()
                    .map_err(|e| e.to_string())
                    .and_then(|msg| message("c", msg, bytes));
                match mapped {
                    Ok(m) => {
                        prop_assert!(!m.observation.message_id.is_empty());
                        prop_assert!(m.seq > 0);
                        prop_assert!(m.sent_ms > 0);
                        out_bytes += size(&m.observation);
                    }
                    Err(reason) => {
                        prop_assert!(!reason.is_empty());
                        out_bytes += reason.len();
                    }
                }
                outputs += 1;
            }
            prop_assert_eq!(outputs, list.records.len());
            prop_assert!(
                out_bytes <= 64 * body.len() + 4096 * outputs,
                "{} bytes out of {} in",
                out_bytes,
                body.len()
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
                check_list(&body)?;
            }

            #[test]
            fn arbitrary_messages_map_or_are_refused(
                msgs in prop::collection::vec(any_msg(), 0..6),
                junk in prop::collection::vec(any::<u8>(), 0..40),
            ) {
                let mut body = pb::ListMsgResponse {
                    status: Some(pb::Status { request_id: 1, code: 1, msg: "success".into() }),
                    data: msgs.clone(),
                    total: msgs.len() as i64,
                }
                .encode_to_vec();
                check_list(&body)?;
                // and with a broken record among them
                prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut body);
                prost::encoding::encode_varint(junk.len() as u64, &mut body);
                body.extend_from_slice(&junk);
                check_list(&body)?;
                for msg in &msgs {
                    if let Ok(m) = message("c", msg, &msg.encode_to_vec()) {
                        prop_assert_eq!(&m.observation.message_id, &msg.msg_id);
                        let content = m.observation.content.as_ref().unwrap();
                        prop_assert_eq!(content.kind, kind_of(msg.content_type));
                    }
                }
            }

            #[test]
            fn arbitrary_edit_records_are_a_version_or_a_reason(
                row in any_json(),
                old in any_json(),
                content in any_content(),
                msg_time in any::<i64>(),
            ) {
                let cur = current(content);
                for row in [
                    row.clone(),
                    json!({"id": 1, "contentOld": old.to_string(), "msgTime": msg_time}),
                    json!({"id": 1, "contentOld": old, "msgTime": msg_time, "contentType": row}),
                ] {
                    match edit_record(&row, &cur) {
                        Ok(rec) => {
                            prop_assert!(rec.version.replaced_at.is_some());
                            let known = rec.version.known_fields.unwrap_or_default();
                            prop_assert!(known.len() <= RECORD_FIELDS.len());
                            prop_assert!(
                                size(&rec.version.content)
                                    <= 8 * (size(&row) + size(&cur.content.text) + 64) + 4096
                            );
                        }
                        Err(reason) => prop_assert!(!reason.is_empty()),
                    }
                }
            }
        }
    }
}
