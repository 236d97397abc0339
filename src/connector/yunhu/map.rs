//! Pure mapping of Yunhu records to observations (spec §4.2–§4.4, §5, §6).

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::pb;
use crate::model::{
    Content, ConversationObservation, ConversationType, EarlierVersion, Mark, MessageHeader,
    MessageKind, MessageObservation,
};

/// A mapped message and the facts paging needs.
pub struct Mapped {
    pub observation: MessageObservation,
    pub seq: i64,
    pub edit_time: u64,
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

pub fn millis(ms: u64) -> Option<DateTime<Utc>> {
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

/// The kind a `content_type` maps to (spec §6.2).
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

/// A media field as a URL: a bare key gets the host of its media type (spec §1, §4.4).
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

/// Normalised content: `kind`, plain `text` for search, and the fields that say what the
/// message holds (urls, names, sizes, mentions, the quoted message).
pub fn content_of(content_type: i64, c: &pb::MsgContent, quote_msg_id: &str) -> Content {
    let kind = kind_of(content_type);
    let mut m = Map::new();
    let mut put = |key: &str, value: Value| {
        m.insert(key.to_string(), value);
    };
    let nonempty = |s: &str| !s.is_empty();
    if nonempty(&c.text) {
        put("text", json!(c.text));
    }
    if nonempty(&c.buttons) {
        put("buttons", json_field(&c.buttons));
    }
    if nonempty(&c.image_url) {
        put(
            "image_url",
            json!(media_url(&c.image_url, "chat-img.jwznb.com")),
        );
    }
    if nonempty(&c.file_name) {
        put("file_name", json!(c.file_name));
    }
    if nonempty(&c.file_url) {
        put(
            "file_url",
            json!(media_url(&c.file_url, "chat-file.jwznb.com")),
        );
    }
    if c.file_size != 0 {
        put("file_size", json!(c.file_size));
    }
    if c.width != 0 || c.height != 0 {
        put("width", json!(c.width));
        put("height", json!(c.height));
    }
    if !c.mentioned_id.is_empty() {
        put("mentions", json!(c.mentioned_id));
    }
    if nonempty(&c.form) {
        put("form", json_field(&c.form));
    }
    if nonempty(&c.image) {
        put(
            "sticker_url",
            json!(media_url(&c.image, "chat-img.jwznb.com")),
        );
    }
    if nonempty(&c.expression_id) {
        put("expression_id", json!(c.expression_id));
    }
    if c.sticker_item_id != 0 || c.sticker_pack_id != 0 {
        put("sticker_item_id", json!(c.sticker_item_id));
        put("sticker_pack_id", json!(c.sticker_pack_id));
    }
    if nonempty(&c.post_id) {
        put("post_id", json!(c.post_id));
        put("post_title", json!(c.post_title));
        put("post_content", json!(c.post_content));
        put(
            "post_format",
            json!(if c.post_content_type == "2" {
                "markdown"
            } else {
                "text"
            }),
        );
    }
    if nonempty(&c.video_url) {
        put(
            "video_url",
            json!(media_url(&c.video_url, "chat-video1.jwznb.com")),
        );
    }
    if c.video_time != 0 {
        put("video_seconds", json!(c.video_time));
    }
    if nonempty(&c.audio_url) {
        put(
            "audio_url",
            json!(media_url(&c.audio_url, "chat-audio1.jwznb.com")),
        );
    }
    if c.audio_time != 0 {
        put("audio_seconds", json!(c.audio_time));
    }
    if nonempty(&c.call_text) {
        put("call_text", json!(c.call_text));
    }
    if nonempty(&c.call_status_text) {
        put("call_status", json!(c.call_status_text));
    }
    if nonempty(&c.tip) {
        put("tip", json!(c.tip));
    }
    let mut quote = Map::new();
    if !quote_msg_id.is_empty() {
        quote.insert("msg_id".into(), json!(quote_msg_id));
    }
    if nonempty(&c.quote_msg_text) {
        quote.insert("text".into(), json!(c.quote_msg_text));
    }
    if nonempty(&c.quote_image_url) {
        quote.insert("image_url".into(), json!(c.quote_image_url));
    }
    if nonempty(&c.quote_image_name) {
        quote.insert("image_name".into(), json!(c.quote_image_name));
    }
    if nonempty(&c.quote_video_url) {
        quote.insert("video_url".into(), json!(c.quote_video_url));
    }
    if !quote.is_empty() {
        put("quote", Value::Object(quote));
    }
    if kind == MessageKind::Other {
        put("content_type", json!(content_type));
    }

    let text = match kind {
        MessageKind::File => c.file_name.clone(),
        MessageKind::Post => [c.post_title.as_str(), c.post_content.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
        MessageKind::Call => [c.call_status_text.as_str(), c.call_text.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        MessageKind::Form if c.text.is_empty() => c.form.clone(),
        _ => c.text.clone(),
    };
    Content {
        kind,
        text,
        content: Value::Object(m),
    }
}

/// One row of `list-message-edit-record`, oldest-first sortable.
pub struct EditRecord {
    /// The edit time (`msgTime`, spec §5 and §11.5), ms.
    pub edited_ms: i64,
    pub id: i64,
    pub version: EarlierVersion,
}

/// An edit-record row: `contentOld` is a JSON-encoded string of the replaced content.
pub fn edit_record(row: &Value) -> Result<EditRecord, String> {
    let old = row
        .get("contentOld")
        .ok_or("edit record has no contentOld")?;
    let old: Value = match old {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| format!("edit record contentOld is not JSON: {e}"))?,
        Value::Object(_) => old.clone(),
        _ => return Err("edit record contentOld is neither a string nor an object".into()),
    };
    if !old.is_object() {
        return Err("edit record contentOld is not an object".into());
    }
    let content_type = row.get("contentType").and_then(Value::as_i64).unwrap_or(1);
    let edited_ms = row
        .get("msgTime")
        .and_then(Value::as_i64)
        .ok_or("edit record has no msgTime")?;
    let content = pb_content_from_json(&old);
    Ok(EditRecord {
        edited_ms,
        id: row.get("id").and_then(Value::as_i64).unwrap_or(0),
        version: EarlierVersion {
            content: content_of(content_type, &content, ""),
            replaced_at: DateTime::<Utc>::from_timestamp_millis(edited_ms),
        },
    })
}

/// The content fields of a `contentOld` object (camelCase or snake_case), so that an earlier
/// version is normalised exactly like a current one.
fn pb_content_from_json(v: &Value) -> pb::MsgContent {
    let s = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .unwrap_or_default()
            .to_string()
    };
    let n = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| v.get(*k).and_then(Value::as_i64))
            .unwrap_or_default()
    };
    pb::MsgContent {
        text: s(&["text"]),
        buttons: s(&["buttons"]),
        image_url: s(&["imageUrl", "image_url"]),
        file_name: s(&["fileName", "file_name"]),
        file_url: s(&["fileUrl", "file_url", "fileKey"]),
        form: s(&["form"]),
        file_size: n(&["fileSize", "file_size"]),
        width: n(&["width"]),
        height: n(&["height"]),
        ..Default::default()
    }
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

    #[test]
    fn an_edit_record_maps_like_the_current_content() {
        let row = json!({"id": 3, "msgId": "m", "contentType": 1,
            "contentOld": "{\"text\":\"旧的\"}", "createTime": 1, "msgTime": 1_700_000_000_000i64});
        let rec = edit_record(&row).unwrap();
        let current = content_of(
            1,
            &pb::MsgContent {
                text: "旧的".into(),
                ..Default::default()
            },
            "",
        );
        assert_eq!(rec.version.content, current);
        assert!(edit_record(&json!({"contentOld": "not json", "msgTime": 1})).is_err());
        assert!(edit_record(&json!({"msgTime": 1})).is_err());
    }
}
