//! Pure mapping of TangSengDaoDao JSON to observations: conversations, messages, extra rows,
//! reaction rows and payloads, as docs/upstreams/tangsengdaodao.md describes them.
//!
//! Every record is decoded on its own from a [`serde_json::Value`], so one malformed record
//! becomes a [`QuarantineRecord`] while the rest of its page still maps (invariant 6). Ids
//! are read as strings (`message_idstr`, `message_id_str`) or as exact integers, never
//! through `f64`: snowflake ids exceed 2^53.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::model::{
    Content, ConversationObservation, ConversationType, EarlierVersion, Mark, MessageHeader,
    MessageKind, MessageObservation, QuarantineRecord, ReactionObservation, ReactionState,
};

/// An id as exact text: a non-empty string, or an integer JSON number (never a float).
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => n
            .as_u64()
            .map(|u| u.to_string())
            .or_else(|| n.as_i64().map(|i| i.to_string())),
        _ => None,
    }
}

/// An integer field; absent, `null` or non-integer gives `None`.
fn int(value: &Value, key: &str) -> Option<i64> {
    let v = value.get(key)?;
    v.as_i64().or_else(|| v.as_u64().map(|u| u as i64))
}

/// An `omitempty` flag: absent means 0.
fn flag(value: &Value, key: &str) -> bool {
    int(value, key) == Some(1)
}

/// A non-empty string field.
fn text_field<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key)?.as_str().filter(|s| !s.is_empty())
}

fn unix_seconds(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// Copy the listed keys that are present (and not `null`) from `from` into `to`, renaming
/// each `(upstream, ours)`.
fn pick(to: &mut Map<String, Value>, from: &Value, keys: &[(&str, &str)]) {
    for (upstream, ours) in keys {
        if let Some(v) = from.get(*upstream).filter(|v| !v.is_null()) {
            to.insert((*ours).to_string(), v.clone());
        }
    }
}

/// The normalised `reply`: who and what is quoted, without the quoted `payload`, which TSDD
/// rewrites when the quoted message is edited (docs/upstreams/tangsengdaodao.md, "Channel
/// sync") and would look like an edit of ours.
fn normalised_reply(reply: &Value) -> Value {
    let mut out = Map::new();
    if let Some(id) = reply.get("message_id").and_then(id_text) {
        out.insert("message_id".into(), Value::String(id));
    }
    pick(
        &mut out,
        reply,
        &[("message_seq", "message_seq"), ("from_uid", "from_uid")],
    );
    Value::Object(out)
}

fn normalised_mention(mention: &Value) -> Option<Value> {
    let all = flag(mention, "all");
    let uids: Vec<Value> = mention
        .get("uids")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|u| u.is_string()).cloned().collect())
        .unwrap_or_default();
    (all || !uids.is_empty()).then(|| json!({"all": all, "uids": uids}))
}

fn duration_label(label: &str, seconds: Option<i64>) -> String {
    match seconds {
        Some(s) if s > 0 => format!("[{label} {s}s]"),
        _ => format!("[{label}]"),
    }
}

/// How much longer than its template and names a filled system template may get.
const MAX_TEMPLATE_GROWTH: usize = 4;
/// How deep merged forwards inside merged forwards are followed for text.
const MAX_FORWARD_DEPTH: usize = 4;

/// Fill `{0}`, `{1}`… of a system template from `extra[i].name` (or `extra[i].uid`), in
/// one pass over the template: a name that itself contains `{1}` is copied as it is, never
/// expanded again, so names cannot make the text grow geometrically. The result is cut at
/// [`MAX_TEMPLATE_GROWTH`] times the length of the template and names together (the
/// template and `extra` are kept whole in the content).
pub fn render_template(template: &str, extra: Option<&Value>) -> String {
    let names: Vec<Option<&str>> = extra
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| text_field(item, "name").or_else(|| text_field(item, "uid")))
                .collect()
        })
        .unwrap_or_default();
    let names_len: usize = names.iter().flatten().map(|n| n.len()).sum();
    let limit = MAX_TEMPLATE_GROWTH.saturating_mul(template.len() + names_len);
    let mut out = String::with_capacity(template.len().min(limit));
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if out.len() > limit {
            break;
        }
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let name = (digits > 0 && digits <= 6 && after.as_bytes().get(digits) == Some(&b'}'))
            .then(|| after[..digits].parse::<usize>().ok())
            .flatten()
            .and_then(|i| names.get(i).copied().flatten());
        match name {
            Some(name) => {
                out.push_str(name);
                rest = &after[digits + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    if out.len() <= limit {
        out.push_str(rest);
    }
    if out.len() > limit {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// TangSengDaoDao's payload `type` codes: the server's `ContentType` (`common/msg.go` of
/// TangSengDaoDaoServerLib), plus rich text, which the clients send
/// (docs/upstreams/tangsengdaodao.md, "Payloads").
pub(super) mod content_type {
    /// Plain text in `content`.
    pub const TEXT: i64 = 1;
    /// A picture: `url`, `width`, `height`.
    pub const IMAGE: i64 = 2;
    /// A GIF sticker.
    pub const GIF: i64 = 3;
    /// A voice clip: `url` and its length in `timeTrad` seconds.
    pub const VOICE: i64 = 4;
    /// A video: `url`, `cover`, `size`, dimensions and its length in `second`.
    pub const VIDEO: i64 = 5;
    /// A place: `lng`, `lat`, `title`, `address`, a map image.
    pub const LOCATION: i64 = 6;
    /// A contact card: `uid`, `name`, `avatar`.
    pub const CARD: i64 = 7;
    /// A file: `url`, `name`, `size`, `ext`.
    pub const FILE: i64 = 8;
    /// A merged forward: the forwarded messages in `msgs`, their senders in `users`.
    pub const MULTIPLE_FORWARD: i64 = 11;
    /// A vector (Lottie) sticker.
    pub const VECTOR_STICKER: i64 = 12;
    /// A vector emoji sticker.
    pub const EMOJI_STICKER: i64 = 13;
    /// Rich text: `content` with formatting `entities`.
    pub const RICH_TEXT: i64 = 14;
    /// The server could not decode the message's content.
    pub const CONTENT_ERROR: i64 = 97;
    /// An end-to-end encrypted message the server cannot read.
    pub const SIGNAL_ERROR: i64 = 98;
    /// A command to the clients: `cmd` and `param`.
    pub const CMD: i64 = 99;
    /// The first of the system notices (friend requests, group changes, recalls, tips).
    pub const SYSTEM_FIRST: i64 = 1000;
    /// The last of the system notices.
    pub const SYSTEM_LAST: i64 = 2000;
    /// The outcome of an audio or video call.
    pub const VIDEO_CALL_RESULT: i64 = 9989;
}

/// Fields kept per payload type, `(upstream, ours)`.
const IMAGE_FIELDS: &[(&str, &str)] = &[("url", "url"), ("width", "width"), ("height", "height")];
const STICKER_FIELDS: &[(&str, &str)] = &[
    ("url", "url"),
    ("width", "width"),
    ("height", "height"),
    ("category", "category"),
    ("title", "title"),
    ("format", "format"),
];
const VOICE_FIELDS: &[(&str, &str)] = &[("url", "url"), ("timeTrad", "duration")];
const VIDEO_FIELDS: &[(&str, &str)] = &[
    ("url", "url"),
    ("cover", "cover"),
    ("size", "size"),
    ("width", "width"),
    ("height", "height"),
    ("second", "duration"),
];
const LOCATION_FIELDS: &[(&str, &str)] = &[
    ("lng", "lng"),
    ("lat", "lat"),
    ("title", "title"),
    ("address", "address"),
    ("img", "img"),
];
const CARD_FIELDS: &[(&str, &str)] = &[("uid", "uid"), ("name", "name"), ("avatar", "avatar")];
const FILE_FIELDS: &[(&str, &str)] = &[
    ("url", "url"),
    ("name", "name"),
    ("size", "size"),
    ("ext", "ext"),
];
const RICH_TEXT_FIELDS: &[(&str, &str)] = &[("entities", "entities")];
const CMD_FIELDS: &[(&str, &str)] = &[("cmd", "cmd"), ("param", "param")];
/// A system notice keeps its template and what fills it.
const SYSTEM_FIELDS: &[(&str, &str)] = &[
    ("content", "template"),
    ("extra", "extra"),
    ("creator", "creator"),
    ("from_uid", "from_uid"),
];

/// How a payload is archived.
enum Layout {
    /// A documented type: its kind, the fields kept and the text.
    Fields(MessageKind, &'static [(&'static str, &'static str)], String),
    /// A merged forward: the texts of its messages ([`map_forward`]).
    Forward,
    /// A type whose shape is not documented: the payload as is ([`verbatim`]).
    Verbatim(MessageKind, String),
}

/// Map one payload (docs/upstreams/tangsengdaodao.md, "Payloads") to a [`Content`]: kind,
/// plain text and normalised content.
pub fn map_payload(payload: &Value) -> Content {
    map_payload_at(payload, 0)
}

/// [`map_payload`] of a payload `depth` merged forwards deep.
fn map_payload_at(payload: &Value, depth: usize) -> Content {
    let content_type = int(payload, "type").unwrap_or(0);
    let mut out = Map::new();
    out.insert("type".into(), json!(content_type));
    let (kind, text) = match layout(content_type, payload, depth) {
        Layout::Fields(kind, fields, text) => {
            pick(&mut out, payload, fields);
            (kind, text)
        }
        Layout::Forward => map_forward(payload, &mut out, depth),
        Layout::Verbatim(kind, text) => return verbatim(payload, kind, text),
    };
    add_common(payload, &mut out);
    Content {
        kind,
        text,
        content: Value::Object(out),
    }
}

/// What a payload of `content_type` is archived as, and its text.
fn layout(content_type: i64, payload: &Value, depth: usize) -> Layout {
    use content_type::*;
    let field = |key| text_field(payload, key);
    let content = field("content");
    match content_type {
        TEXT => Layout::Fields(MessageKind::Text, &[], content.unwrap_or("").to_string()),
        IMAGE => Layout::Fields(MessageKind::Image, IMAGE_FIELDS, "[image]".to_string()),
        GIF | VECTOR_STICKER | EMOJI_STICKER => Layout::Fields(
            MessageKind::Sticker,
            STICKER_FIELDS,
            labelled("sticker", field("title")),
        ),
        VOICE => Layout::Fields(
            MessageKind::Voice,
            VOICE_FIELDS,
            duration_label("voice", int(payload, "timeTrad")),
        ),
        VIDEO => Layout::Fields(
            MessageKind::Video,
            VIDEO_FIELDS,
            duration_label("video", int(payload, "second")),
        ),
        LOCATION => Layout::Fields(
            MessageKind::Location,
            LOCATION_FIELDS,
            location_text(field("title"), field("address")),
        ),
        CARD => Layout::Fields(
            MessageKind::Card,
            CARD_FIELDS,
            labelled("card", field("name")),
        ),
        FILE => Layout::Fields(
            MessageKind::File,
            FILE_FIELDS,
            labelled("file", field("name")),
        ),
        MULTIPLE_FORWARD if depth >= MAX_FORWARD_DEPTH => {
            Layout::Verbatim(MessageKind::Forward, "[forward]".to_string())
        }
        MULTIPLE_FORWARD => Layout::Forward,
        RICH_TEXT => match content {
            Some(text) => Layout::Fields(MessageKind::Text, RICH_TEXT_FIELDS, text.to_string()),
            None => Layout::Verbatim(MessageKind::Other, String::new()),
        },
        CONTENT_ERROR => Layout::Verbatim(MessageKind::Other, "[content not decodable]".into()),
        SIGNAL_ERROR => Layout::Verbatim(MessageKind::Other, "[encrypted]".to_string()),
        CMD => {
            let text = match field("cmd") {
                Some(cmd) => format!("[cmd {cmd}]"),
                None => "[cmd]".to_string(),
            };
            Layout::Fields(MessageKind::System, CMD_FIELDS, text)
        }
        SYSTEM_FIRST..=SYSTEM_LAST => Layout::Fields(
            MessageKind::System,
            SYSTEM_FIELDS,
            render_template(content.unwrap_or(""), payload.get("extra")),
        ),
        VIDEO_CALL_RESULT => {
            Layout::Verbatim(MessageKind::Call, content.unwrap_or("[call]").into())
        }
        _ => Layout::Verbatim(MessageKind::Other, content.unwrap_or("").to_string()),
    }
}

/// `[label] what`, or `[label]` when there is nothing to name.
fn labelled(label: &str, what: Option<&str>) -> String {
    match what {
        Some(what) => format!("[{label}] {what}"),
        None => format!("[{label}]"),
    }
}

/// `[location] title address`, with what of the two there is.
fn location_text(title: Option<&str>, address: Option<&str>) -> String {
    let place: Vec<&str> = [title, address].into_iter().flatten().collect();
    labelled(
        "location",
        (!place.is_empty()).then(|| place.join(" ")).as_deref(),
    )
}

/// Mention and reply, kept on every type.
fn add_common(payload: &Value, out: &mut Map<String, Value>) {
    if let Some(mention) = payload.get("mention").and_then(normalised_mention) {
        out.insert("mention".into(), mention);
    }
    if let Some(reply) = payload.get("reply").filter(|r| r.is_object()) {
        out.insert("reply".into(), normalised_reply(reply));
    }
}

/// Types whose shape is not documented upstream ("Payloads"): the payload as is, with
/// the volatile `reply.payload` removed.
fn verbatim(payload: &Value, kind: MessageKind, text: String) -> Content {
    let mut content = payload.clone();
    if let Some(obj) = content.as_object_mut() {
        if let Some(reply) = obj.get("reply").filter(|r| r.is_object()) {
            let reply = normalised_reply(reply);
            obj.insert("reply".into(), reply);
        }
    }
    Content {
        kind,
        text,
        content,
    }
}

/// A merged forward (type 11): the texts of its messages, one per line.
fn map_forward(
    payload: &Value,
    out: &mut Map<String, Value>,
    depth: usize,
) -> (MessageKind, String) {
    let mut lines = Vec::new();
    let mut msgs = Vec::new();
    for msg in payload
        .get("msgs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let inner = msg.get("payload").map(|p| map_payload_at(p, depth + 1));
        if let Some(inner) = &inner {
            if !inner.text.is_empty() {
                lines.push(inner.text.clone());
            }
        }
        let mut entry = Map::new();
        if let Some(id) = msg.get("message_id").and_then(id_text) {
            entry.insert("message_id".into(), Value::String(id));
        }
        pick(
            &mut entry,
            msg,
            &[("from_uid", "from_uid"), ("timestamp", "timestamp")],
        );
        if let Some(inner) = inner {
            entry.insert("kind".into(), json!(inner.kind.as_str()));
            if let Some(media) = forwarded_media(&inner) {
                entry.insert("media".into(), media);
            }
            entry.insert("text".into(), Value::String(inner.text));
        }
        msgs.push(Value::Object(entry));
    }
    let users: Vec<Value> = payload
        .get("users")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|u| {
            let mut entry = Map::new();
            pick(&mut entry, u, &[("uid", "uid"), ("name", "name")]);
            Value::Object(entry)
        })
        .collect();
    pick(out, payload, &[("channel_type", "channel_type")]);
    out.insert("users".into(), Value::Array(users));
    out.insert("msgs".into(), Value::Array(msgs));
    (MessageKind::Forward, lines.join("\n"))
}

/// Payload types whose content references files: what a forwarded message keeps of them.
const MEDIA_TYPES: &[i64] = &[
    content_type::IMAGE,
    content_type::GIF,
    content_type::VOICE,
    content_type::VIDEO,
    content_type::FILE,
    content_type::VECTOR_STICKER,
    content_type::EMOJI_STICKER,
];

/// At most this many files are kept from one forwarded merged forward.
pub const MAX_FORWARDED_MEDIA: usize = 100;

/// The files of a forwarded message, so that they can be archived too: for a picture,
/// sticker, voice clip, video or file its mapped content (the fields kept for its type,
/// without mention and reply); for a merged forward inside the forward, the files of its
/// messages, flattened, in order, at most [`MAX_FORWARDED_MEDIA`]. `None` when there are
/// none, so a forward of text keeps exactly the entries it always had.
fn forwarded_media(inner: &Content) -> Option<Value> {
    let content_type = int(&inner.content, "type")?;
    if MEDIA_TYPES.contains(&content_type) {
        let mut media = inner.content.as_object()?.clone();
        media.remove("mention");
        media.remove("reply");
        return Some(Value::Object(media));
    }
    if content_type != content_type::MULTIPLE_FORWARD {
        return None;
    }
    let mut files = Vec::new();
    for entry in inner
        .content
        .get("msgs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match entry.get("media") {
            Some(Value::Array(nested)) => files.extend(nested.iter().cloned()),
            Some(media @ Value::Object(_)) => files.push(media.clone()),
            _ => {}
        }
    }
    files.truncate(MAX_FORWARDED_MEDIA);
    (!files.is_empty()).then_some(Value::Array(files))
}

/// A `content_edit` is an object, or (defensively) the JSON text of one ("Extra sync").
fn content_edit(extra: &Value) -> Option<Value> {
    match extra.get("content_edit")? {
        v @ Value::Object(_) => Some(v.clone()),
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object),
        _ => None,
    }
}

/// Recall mark from `revoke`/`revoker` on any of the given objects.
fn recall_mark(objects: &[&Value]) -> Option<Mark> {
    if !objects.iter().any(|o| flag(o, "revoke")) {
        return None;
    }
    let by = objects
        .iter()
        .find_map(|o| text_field(o, "revoker"))
        .map(str::to_string);
    Some(Mark {
        at: None,
        by,
        reason: None,
    })
}

/// Why a message deleted for everyone is marked.
pub const MUTUAL_DELETE_REASON: &str = "deleted for everyone (is_mutual_deleted)";

fn mutual_delete_mark(extra: &Value) -> Option<Mark> {
    flag(extra, "is_mutual_deleted").then(|| Mark {
        reason: Some(MUTUAL_DELETE_REASON.to_string()),
        ..Mark::default()
    })
}

/// The deletion mark of a channel-sync record. `is_deleted` is computed by the server for
/// the account that asks: 1 when the message was deleted for everyone, deleted by this
/// account for itself, has expired, is visible only to other members, or lies at or below
/// the channel's cleared history (docs/upstreams/tangsengdaodao.md, "is_deleted"). The
/// content is kept; the reason names what the record itself shows.
fn deletion_mark(record: &Value, extra: &Value, payload: &Value) -> Option<Mark> {
    if let Some(mark) = mutual_delete_mark(extra) {
        return Some(mark);
    }
    if !flag(record, "is_deleted") {
        return None;
    }
    let mut reason = String::from(
        "is_deleted=1 for this account upstream (deleted for this account, expired, \
         not visible to it, or in cleared history)",
    );
    if let Some(expire) = int(record, "expire").filter(|e| *e > 0) {
        reason.push_str(&format!(
            "; the message expires {expire} s after it was sent"
        ));
    }
    if payload
        .get("visibles")
        .and_then(Value::as_array)
        .is_some_and(|v| !v.is_empty())
    {
        reason.push_str("; the message is visible only to the members in its visibles");
    }
    Some(Mark {
        reason: Some(reason),
        ..Mark::default()
    })
}

/// A message mapped from a channel-sync record, with any sub-records set aside.
#[derive(Debug)]
pub struct MappedMessage {
    pub observation: MessageObservation,
    pub seq: u64,
    /// Reaction rows that could not be read (the reaction set is then left unknown).
    pub quarantine: Vec<QuarantineRecord>,
}

/// Map one channel-sync message record of the channel `conversation_id` that was requested.
///
/// `Err` is the quarantine reason. `names` are user names learned elsewhere (discovery,
/// login), used for `sender_name`.
pub fn map_message(
    conversation_id: &str,
    record: &Value,
    names: &HashMap<String, String>,
) -> Result<MappedMessage, String> {
    if !record.is_object() {
        return Err("message is not a JSON object".into());
    }
    let message_id = record
        .get("message_idstr")
        .and_then(id_text)
        .or_else(|| record.get("message_id").and_then(id_text))
        .ok_or("message has neither message_idstr nor an integer message_id")?;
    let seq = record
        .get("message_seq")
        .and_then(Value::as_u64)
        .ok_or("message_seq is missing or not an unsigned integer")?;
    let sent_at = int(record, "timestamp")
        .and_then(unix_seconds)
        .ok_or("timestamp is missing or not unix seconds")?;
    let sender_id = sender_of(record)?;
    let payload = record
        .get("payload")
        .filter(|p| p.is_object())
        .ok_or("payload is missing or not a JSON object")?;
    let extra = match record.get("message_extra") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err("message_extra is not a JSON object".into()),
    };

    let reply_to = payload
        .get("reply")
        .and_then(|r| r.get("message_id"))
        .and_then(id_text);
    let sender_name = sender_id.as_ref().and_then(|uid| names.get(uid)).cloned();

    let (content, earlier_versions, edited_at) = versions(payload, &extra);
    let (reactions, quarantine) = standing_reactions(record, &message_id)?;

    let observation = MessageObservation {
        conversation_id: conversation_id.to_string(),
        message_id,
        header: Some(MessageHeader {
            seq: Some(seq as i64),
            sender_id,
            sender_name,
            sent_at,
            reply_to,
        }),
        content: Some(content),
        edited_at,
        earlier_versions,
        recalled: recall_mark(&[record, &extra]),
        deleted: deletion_mark(record, &extra, payload),
        reactions,
        raw: record.clone(),
    };
    Ok(MappedMessage {
        observation,
        seq,
        quarantine,
    })
}

/// The sender of a channel-sync record: `from_uid`, when there is one.
fn sender_of(record: &Value) -> Result<Option<String>, String> {
    match record.get("from_uid") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err("from_uid is not a string".into()),
    }
}

/// The current content of a message, the original as its earlier version when the
/// `message_extra` carries an edit, and when it was edited.
fn versions(
    payload: &Value,
    extra: &Value,
) -> (Content, Vec<EarlierVersion>, Option<DateTime<Utc>>) {
    let original = map_payload(payload);
    match content_edit(extra) {
        Some(edit) => (
            map_payload(&edit),
            vec![EarlierVersion {
                content: original,
                replaced_at: None,
                known_fields: None,
            }],
            int(extra, "edited_at").and_then(unix_seconds),
        ),
        None => (original, Vec::new(), None),
    }
}

/// The reactions standing on a message, sorted, and a quarantine record for each row that
/// cannot be read. One unreadable row leaves the set unknown (`None`), so that no reaction
/// is taken away for it.
fn standing_reactions(
    record: &Value,
    message_id: &str,
) -> Result<(Option<Vec<ReactionState>>, Vec<QuarantineRecord>), String> {
    let rows = match record.get("reactions") {
        None | Some(Value::Null) => return Ok((Some(Vec::new()), Vec::new())),
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err("reactions is not an array".into()),
    };
    let mut standing = Vec::new();
    let mut quarantine = Vec::new();
    for row in rows {
        match reaction_state(row) {
            Ok(Some(state)) => standing.push(state),
            Ok(None) => {}
            Err(reason) => quarantine.push(QuarantineRecord {
                reason: format!("message {message_id}: {reason}"),
                raw: row.clone(),
            }),
        }
    }
    standing.sort();
    standing.dedup();
    Ok((quarantine.is_empty().then_some(standing), quarantine))
}

/// A standing reaction from a message's `reactions` row; `None` for a removed one.
fn reaction_state(row: &Value) -> Result<Option<ReactionState>, String> {
    let user_id = text_field(row, "uid").ok_or("reaction row has no uid")?;
    let emoji = text_field(row, "emoji").ok_or("reaction row has no emoji")?;
    if flag(row, "is_deleted") {
        return Ok(None);
    }
    Ok(Some(ReactionState {
        user_id: user_id.to_string(),
        user_name: text_field(row, "name").map(str::to_string),
        emoji: emoji.to_string(),
    }))
}

/// A best-effort seq of a record that could not be mapped, so that a quarantined message
/// is not also reported as missing.
pub fn lenient_seq(record: &Value) -> Option<u64> {
    match record.get("message_seq")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Map one message-extra row ("Extra sync") to a change-only observation. Returns the observation
/// and the row's `extra_version`; `Err` is the quarantine reason.
pub fn map_extra(conversation_id: &str, row: &Value) -> Result<(MessageObservation, i64), String> {
    if !row.is_object() {
        return Err("message extra row is not a JSON object".into());
    }
    let message_id = row
        .get("message_id_str")
        .and_then(id_text)
        .or_else(|| row.get("message_id").and_then(id_text))
        .ok_or("message extra row has neither message_id_str nor an integer message_id")?;
    let version =
        int(row, "extra_version").ok_or("message extra row has no integer extra_version")?;
    let (content, edited_at) = match content_edit(row) {
        Some(edit) => (
            Some(map_payload(&edit)),
            int(row, "edited_at").and_then(unix_seconds),
        ),
        None => (None, None),
    };
    let observation = MessageObservation {
        conversation_id: conversation_id.to_string(),
        message_id,
        header: None,
        content,
        edited_at,
        earlier_versions: Vec::new(),
        recalled: recall_mark(&[row]),
        deleted: mutual_delete_mark(row),
        reactions: None,
        raw: row.clone(),
    };
    Ok((observation, version))
}

/// Map one reaction-sync row ("Reaction sync"). Returns the observation and the row's `seq`; `Err` is
/// the quarantine reason.
pub fn map_reaction(
    conversation_id: &str,
    row: &Value,
) -> Result<(ReactionObservation, i64), String> {
    if !row.is_object() {
        return Err("reaction row is not a JSON object".into());
    }
    let message_id = row
        .get("message_id")
        .and_then(id_text)
        .ok_or("reaction row has no message_id")?;
    let seq = int(row, "seq").ok_or("reaction row has no integer seq")?;
    let user_id = text_field(row, "uid").ok_or("reaction row has no uid")?;
    let emoji = text_field(row, "emoji").ok_or("reaction row has no emoji")?;
    let observation = ReactionObservation {
        conversation_id: conversation_id.to_string(),
        message_id,
        user_id: user_id.to_string(),
        user_name: text_field(row, "name").map(str::to_string),
        emoji: emoji.to_string(),
        present: !flag(row, "is_deleted"),
        one_per_user: true,
        at: None,
    };
    Ok((observation, seq))
}

/// A conversation from `conversation/sync` ("Conversation sync"), with what paging needs.
#[derive(Debug)]
pub struct DiscoveredChannel {
    pub observation: ConversationObservation,
    pub channel_type: u8,
    /// The newest seq upstream reports: the target of message paging.
    pub last_msg_seq: Option<u64>,
}

/// What `conversation/sync` yields.
#[derive(Debug, Default)]
pub struct DiscoveredPage {
    pub channels: Vec<DiscoveredChannel>,
    /// `uid -> name` from the `users` array.
    pub user_names: Vec<(String, String)>,
    pub quarantine: Vec<QuarantineRecord>,
}

/// The conversation type a channel type maps to (1 person, 2 group).
pub fn conversation_type(channel_type: u8) -> ConversationType {
    match channel_type {
        1 => ConversationType::Direct,
        2 => ConversationType::Group,
        _ => ConversationType::Other,
    }
}

/// Stable facts of a group (not counts, versions or the caller's own settings, which change
/// without the conversation changing).
const GROUP_FACTS: &[(&str, &str)] = &[
    ("group_type", "group_type"),
    ("category", "category"),
    ("created_at", "created_at"),
];

/// Stable facts of a person channel's peer.
const USER_FACTS: &[(&str, &str)] = &[("category", "category"), ("robot", "robot")];

/// Map a `conversation/sync` response. `known` supplies the name and metadata of a known
/// conversation when the response lacks the user or group details, so that a missing detail
/// never reads as a conversation change.
pub fn map_conversations(
    response: &Value,
    known: &HashMap<String, &ConversationObservation>,
) -> Result<DiscoveredPage, String> {
    if !response.is_object() {
        return Err("conversation sync response is not a JSON object".into());
    }
    let mut page = DiscoveredPage::default();
    let mut users: HashMap<&str, &Value> = HashMap::new();
    for user in array(response, "users") {
        if let Some(uid) = text_field(user, "uid") {
            users.insert(uid, user);
            if let Some(name) = text_field(user, "name") {
                page.user_names.push((uid.to_string(), name.to_string()));
            }
        }
    }
    let mut groups: HashMap<&str, &Value> = HashMap::new();
    for group in array(response, "groups") {
        if let Some(no) = text_field(group, "group_no") {
            groups.insert(no, group);
        }
    }

    for conversation in array(response, "conversations") {
        let Some(channel_id) = text_field(conversation, "channel_id") else {
            page.quarantine.push(QuarantineRecord {
                reason: "conversation has no channel_id".into(),
                raw: conversation.clone(),
            });
            continue;
        };
        let Some(channel_type) = conversation
            .get("channel_type")
            .and_then(Value::as_u64)
            .and_then(|t| u8::try_from(t).ok())
        else {
            page.quarantine.push(QuarantineRecord {
                reason: format!("conversation {channel_id}: channel_type is not a small integer"),
                raw: conversation.clone(),
            });
            continue;
        };
        let details = match channel_type {
            1 => users.get(channel_id).map(|u| (*u, USER_FACTS)),
            2 => groups.get(channel_id).map(|g| (*g, GROUP_FACTS)),
            _ => None,
        };
        let previous = known.get(channel_id).copied();
        let (name, metadata) = match (details, previous) {
            (Some((details, facts)), _) => {
                let mut metadata = Map::new();
                metadata.insert("channel_type".into(), json!(channel_type));
                pick(&mut metadata, details, facts);
                (
                    text_field(details, "name").map(str::to_string),
                    Value::Object(metadata),
                )
            }
            (None, Some(previous)) => (previous.name.clone(), previous.metadata.clone()),
            (None, None) => (None, json!({"channel_type": channel_type})),
        };
        let last_msg_seq = conversation.get("last_msg_seq").and_then(Value::as_u64);
        page.channels.push(DiscoveredChannel {
            observation: ConversationObservation {
                conversation_id: channel_id.to_string(),
                conversation_type: conversation_type(channel_type),
                name,
                metadata,
            },
            channel_type,
            last_msg_seq,
        });
    }
    Ok(page)
}

fn array<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_names() -> HashMap<String, String> {
        HashMap::new()
    }

    fn message(seq: u64, payload: Value) -> Value {
        json!({
            "header": {"no_persist": 0, "red_dot": 1, "sync_once": 0},
            "setting": 0,
            "message_id": 1824334157854015488u64 + seq,
            "message_idstr": (1824334157854015488u64 + seq).to_string(),
            "message_seq": seq,
            "client_msg_no": format!("c{seq}"),
            "from_uid": "u2",
            "channel_id": "u1",
            "channel_type": 1,
            "timestamp": 1723790132,
            "payload": payload,
            "signal_payload": "",
            "is_deleted": 0,
            "readed": 0,
            "extra_version": 0
        })
    }

    #[test]
    fn text_maps_to_text_with_mentions_kept() {
        let c = map_payload(&json!({
            "type": 1, "content": "@Ann hello",
            "mention": {"all": 0, "uids": ["u3"]}
        }));
        assert_eq!(c.kind, MessageKind::Text);
        assert_eq!(c.text, "@Ann hello");
        assert_eq!(c.content["mention"], json!({"all": false, "uids": ["u3"]}));
        // an empty mention is not content
        let c = map_payload(&json!({"type": 1, "content": "x", "mention": {}}));
        assert!(c.content.get("mention").is_none());
    }

    #[test]
    fn reply_keeps_the_reference_but_not_the_rewritable_quoted_payload() {
        let record = message(
            9,
            json!({
                "type": 1, "content": "yes",
                "reply": {"message_id": "1824334157854015400", "message_seq": 3,
                          "from_uid": "u1", "from_name": "Bob",
                          "payload": {"type": 1, "content": "edited later"}}
            }),
        );
        let m = map_message("u2", &record, &no_names()).unwrap().observation;
        assert_eq!(
            m.header.as_ref().unwrap().reply_to.as_deref(),
            Some("1824334157854015400")
        );
        let content = m.content.unwrap().content;
        assert_eq!(
            content["reply"],
            json!({"message_id": "1824334157854015400", "message_seq": 3, "from_uid": "u1"})
        );
        assert!(!content.to_string().contains("edited later"));
    }

    #[test]
    fn media_types_map_to_their_kinds() {
        let image = map_payload(
            &json!({"type": 2, "url": "file/preview/a.png", "width": 640, "height": 480}),
        );
        assert_eq!(image.kind, MessageKind::Image);
        assert_eq!(image.text, "[image]");
        assert_eq!(
            image.content,
            json!({"type": 2, "url": "file/preview/a.png", "width": 640, "height": 480})
        );

        let voice =
            map_payload(&json!({"type": 4, "url": "v.mp3", "timeTrad": 5, "waveform": "AAEC"}));
        assert_eq!(voice.kind, MessageKind::Voice);
        assert_eq!(voice.text, "[voice 5s]");
        assert_eq!(
            voice.content,
            json!({"type": 4, "url": "v.mp3", "duration": 5})
        );

        let video = map_payload(
            &json!({"type": 5, "url": "v.mp4", "cover": "c.jpg", "size": 1024,
                                        "width": 1280, "height": 720, "second": 12}),
        );
        assert_eq!(video.kind, MessageKind::Video);
        assert_eq!(video.text, "[video 12s]");
        assert_eq!(video.content["duration"], 12);
        assert_eq!(video.content["cover"], "c.jpg");
        assert_eq!(video.content["size"], 1024);

        let location = map_payload(&json!({"type": 6, "lng": 116.39, "lat": 39.9,
                                           "title": "Tiananmen", "address": "Beijing", "img": "m.png"}));
        assert_eq!(location.kind, MessageKind::Location);
        assert_eq!(location.text, "[location] Tiananmen Beijing");
        assert_eq!(location.content["lat"], 39.9);

        let card = map_payload(
            &json!({"type": 7, "uid": "u9", "name": "Carol", "avatar": "a.png", "vercode": "x"}),
        );
        assert_eq!(card.kind, MessageKind::Card);
        assert_eq!(card.text, "[card] Carol");
        assert_eq!(
            card.content,
            json!({"type": 7, "uid": "u9", "name": "Carol", "avatar": "a.png"})
        );

        let file =
            map_payload(&json!({"type": 8, "url": "f.pdf", "name": "report.pdf", "size": 2048}));
        assert_eq!(file.kind, MessageKind::File);
        assert_eq!(file.text, "[file] report.pdf");
        assert_eq!(file.content["name"], "report.pdf");

        let gif = map_payload(&json!({"type": 3, "url": "g.gif", "width": 1, "height": 1}));
        assert_eq!(gif.kind, MessageKind::Sticker);
        let lottie = map_payload(&json!({"type": 12, "url": "s.json"}));
        assert_eq!(lottie.kind, MessageKind::Sticker);

        let call = map_payload(&json!({"type": 9989, "content": "call ended 01:02"}));
        assert_eq!(call.kind, MessageKind::Call);
        assert_eq!(call.text, "call ended 01:02");
    }

    #[test]
    fn merged_forward_concatenates_the_forwarded_texts() {
        let c = map_payload(&json!({
            "type": 11, "channel_type": 2,
            "users": [{"uid": "u1", "name": "Bob", "avatar": "a"}],
            "msgs": [
                {"message_id": 1824334157854015001u64, "from_uid": "u1", "timestamp": 1,
                 "payload": {"type": 1, "content": "first"}},
                {"message_id": "1824334157854015002", "from_uid": "u1", "timestamp": 2,
                 "payload": {"type": 2, "url": "x.png"}}
            ]
        }));
        assert_eq!(c.kind, MessageKind::Forward);
        assert_eq!(c.text, "first\n[image]");
        assert_eq!(c.content["msgs"][0]["message_id"], "1824334157854015001");
        assert_eq!(c.content["users"], json!([{"uid": "u1", "name": "Bob"}]));
    }

    #[test]
    fn system_template_is_filled_from_extra_names() {
        let c = map_payload(&json!({
            "type": 1002,
            "content": "{0}邀请{1}、{2}加入群聊",
            "extra": [{"uid": "u1", "name": "Bob"}, {"uid": "u2", "name": "Ann"}, {"uid": "u3"}],
            "from_uid": "u1"
        }));
        assert_eq!(c.kind, MessageKind::System);
        assert_eq!(c.text, "Bob邀请Ann、u3加入群聊");
        assert_eq!(c.content["template"], "{0}邀请{1}、{2}加入群聊");
        let cmd = map_payload(&json!({"type": 99, "cmd": "groupMemberUpdate", "param": {}}));
        assert_eq!(cmd.kind, MessageKind::System);
    }

    #[test]
    fn unknown_and_unspecified_types_are_kept_verbatim_as_other() {
        let c = map_payload(&json!({"type": 4242, "foo": [1, 2], "content": "hm"}));
        assert_eq!(c.kind, MessageKind::Other);
        assert_eq!(c.text, "hm");
        assert_eq!(
            c.content,
            json!({"type": 4242, "foo": [1, 2], "content": "hm"})
        );
        assert_eq!(map_payload(&json!({"type": 98})).kind, MessageKind::Other);
        assert_eq!(map_payload(&json!({"type": 97})).kind, MessageKind::Other);
        let rich = map_payload(&json!({"type": 14, "content": "bold", "entities": []}));
        assert_eq!((rich.kind, rich.text.as_str()), (MessageKind::Text, "bold"));
        assert_eq!(map_payload(&json!({"type": 14})).kind, MessageKind::Other);
    }

    #[test]
    fn message_header_uses_the_requested_channel_and_learned_names() {
        let mut names = HashMap::new();
        names.insert("u2".to_string(), "Ann".to_string());
        let record = message(5, json!({"type": 1, "content": "hi"}));
        let m = map_message("u2", &record, &names).unwrap();
        assert_eq!(m.seq, 5);
        let o = m.observation;
        assert_eq!(
            o.conversation_id, "u2",
            "not the alternating message.channel_id"
        );
        let h = o.header.unwrap();
        assert_eq!(h.seq, Some(5));
        assert_eq!(h.sender_id.as_deref(), Some("u2"));
        assert_eq!(h.sender_name.as_deref(), Some("Ann"));
        assert_eq!(h.sent_at.timestamp(), 1723790132);
        assert_eq!(o.reactions, Some(vec![]));
        assert_eq!(o.raw, record);
        assert!(o.recalled.is_none() && o.deleted.is_none());

        let mut system = message(
            6,
            json!({"type": 1001, "content": "{0}创建了群聊", "extra": [{"uid": "u1", "name": "Bob"}]}),
        );
        system["from_uid"] = json!("");
        let h = map_message("g_9", &system, &names)
            .unwrap()
            .observation
            .header
            .unwrap();
        assert_eq!(h.sender_id, None);
    }

    #[test]
    fn edited_message_keeps_the_original_as_an_earlier_version() {
        let mut record = message(7, json!({"type": 1, "content": "tpyo"}));
        record["message_extra"] = json!({
            "message_id": 1824334157854015495u64, "message_id_str": "1824334157854015495",
            "content_edit": {"type": 1, "content": "typo"}, "edited_at": 1723790200,
            "extra_version": 1723790201123456u64
        });
        let o = map_message("u2", &record, &no_names()).unwrap().observation;
        assert_eq!(o.content.unwrap().text, "typo");
        assert_eq!(o.earlier_versions.len(), 1);
        assert_eq!(o.earlier_versions[0].content.text, "tpyo");
        assert_eq!(o.edited_at.unwrap().timestamp(), 1723790200);
    }

    #[test]
    fn revoke_mutual_delete_and_per_viewer_is_deleted_are_marks() {
        let mut record = message(8, json!({"type": 1, "content": "oops"}));
        record["message_extra"] = json!({"revoke": 1, "revoker": "u1", "extra_version": 5});
        let o = map_message("u2", &record, &no_names()).unwrap().observation;
        assert_eq!(
            o.recalled,
            Some(Mark {
                at: None,
                by: Some("u1".into()),
                reason: None,
            })
        );
        assert_eq!(
            o.content.unwrap().text,
            "oops",
            "the payload of a recall is kept"
        );

        let mut legacy = message(9, json!({"type": 1, "content": "x"}));
        legacy["revoke"] = json!(1);
        assert!(map_message("u2", &legacy, &no_names())
            .unwrap()
            .observation
            .recalled
            .is_some());

        // deleted for this account (or expired, hidden, cleared): a deletion with its reason,
        // the content kept
        let mut per_viewer = message(10, json!({"type": 1, "content": "x"}));
        per_viewer["is_deleted"] = json!(1);
        let o = map_message("u2", &per_viewer, &no_names())
            .unwrap()
            .observation;
        let mark = o.deleted.expect("is_deleted=1 is a deletion");
        assert!(
            mark.reason.as_deref().unwrap().contains("for this account"),
            "{mark:?}"
        );
        assert_eq!(o.content.unwrap().text, "x");

        let mut expiring = message(11, json!({"type": 1, "content": "x", "visibles": ["u9"]}));
        expiring["is_deleted"] = json!(1);
        expiring["expire"] = json!(60);
        let reason = map_message("u2", &expiring, &no_names())
            .unwrap()
            .observation
            .deleted
            .unwrap()
            .reason
            .unwrap();
        assert!(reason.contains("expires 60 s"), "{reason}");
        assert!(reason.contains("visibles"), "{reason}");

        let mut mutual = message(12, json!({"type": 1, "content": "x"}));
        mutual["is_deleted"] = json!(1);
        mutual["message_extra"] = json!({"is_mutual_deleted": 1, "extra_version": 6});
        let mark = map_message("u2", &mutual, &no_names())
            .unwrap()
            .observation
            .deleted
            .unwrap();
        assert_eq!(mark.reason.as_deref(), Some(MUTUAL_DELETE_REASON));

        let live = message(13, json!({"type": 1, "content": "x"}));
        assert!(map_message("u2", &live, &no_names())
            .unwrap()
            .observation
            .deleted
            .is_none());
    }

    #[test]
    fn templates_expand_in_one_pass_and_stay_bounded() {
        // names that hold placeholders are copied, never expanded again
        let c = map_payload(&json!({
            "type": 1002,
            "content": "{0}邀请{1}加入群聊",
            "extra": [{"name": "{1}{1}"}, {"name": "{0}{0}"}]
        }));
        assert_eq!(c.text, "{1}{1}邀请{0}{0}加入群聊");
        // a small payload whose names refer to each other cannot blow up
        let names: Vec<Value> = (0..10)
            .map(|_| json!({"name": "{0}{1}{2}{3}{4}{5}{6}{7}{8}{9}"}))
            .collect();
        let template = "{0}{1}{2}{3}{4}{5}{6}{7}{8}{9}".repeat(3);
        let payload = json!({"type": 1001, "content": template, "extra": names});
        let input = payload.to_string().len();
        let c = map_payload(&payload);
        assert!(c.text.len() <= 4 * input, "{} > 4 x {input}", c.text.len());
        assert!(c.text.len() > 100);
        // a huge number of placeholders with long names is cut, not built
        let long = "名".repeat(2000);
        let payload =
            json!({"type": 1001, "content": "{0}".repeat(3000), "extra": [{"name": long}]});
        let input = payload.to_string().len();
        let c = map_payload(&payload);
        assert!(c.text.len() <= 4 * input + 3, "{}", c.text.len());
        assert!(c.text.ends_with('…'));
        // unknown indexes and stray braces are left alone
        let c = render_template("{9} {x} {", Some(&json!([{"name": "A"}])));
        assert_eq!(c, "{9} {x} {");
    }

    #[test]
    fn deeply_nested_forwards_stop_descending() {
        let mut payload = json!({"type": 1, "content": "leaf"});
        for _ in 0..40 {
            payload = json!({"type": 11, "msgs": [{"payload": payload}]});
        }
        let c = map_payload(&payload);
        assert_eq!(c.kind, MessageKind::Forward);
        assert_eq!(
            c.text, "[forward]",
            "followed {MAX_FORWARD_DEPTH} levels deep only"
        );
        assert!(c.content.to_string().len() < 4 * payload.to_string().len());
    }

    #[test]
    fn message_reactions_are_the_standing_rows() {
        let mut record = message(12, json!({"type": 1, "content": "x"}));
        record["reactions"] = json!([
            {"seq": 1000002, "uid": "u3", "name": "Ann", "emoji": "👍", "is_deleted": 0, "created_at": "2024-08-16 14:35:33"},
            {"seq": 1000003, "uid": "u4", "name": "Dan", "emoji": "❤", "is_deleted": 1, "created_at": "2024-08-16 14:35:34"}
        ]);
        let o = map_message("g_9", &record, &no_names())
            .unwrap()
            .observation;
        assert_eq!(
            o.reactions,
            Some(vec![ReactionState {
                user_id: "u3".into(),
                user_name: Some("Ann".into()),
                emoji: "👍".into()
            }])
        );
    }

    #[test]
    fn malformed_records_give_a_reason() {
        let names = no_names();
        let mut seq_string = message(1, json!({"type": 1, "content": "x"}));
        seq_string["message_seq"] = json!("1");
        assert!(map_message("u2", &seq_string, &names)
            .unwrap_err()
            .contains("message_seq"));
        assert_eq!(lenient_seq(&seq_string), Some(1));

        let mut bad_payload = message(2, json!("aGVsbG8="));
        bad_payload["payload"] = json!("aGVsbG8=");
        assert!(map_message("u2", &bad_payload, &names)
            .unwrap_err()
            .contains("payload"));

        let mut no_id = message(3, json!({"type": 1}));
        no_id.as_object_mut().unwrap().remove("message_idstr");
        no_id["message_id"] = json!(1.8243341578540155e18);
        assert!(map_message("u2", &no_id, &names)
            .unwrap_err()
            .contains("message_id"));

        assert!(map_message("u2", &json!([1]), &names).is_err());
    }

    #[test]
    fn ids_above_2_pow_53_stay_exact() {
        let big = 9_007_199_254_740_993u64; // 2^53 + 1: not representable as f64
        let mut record = message(1, json!({"type": 1, "content": "x"}));
        record.as_object_mut().unwrap().remove("message_idstr");
        record["message_id"] = json!(big);
        let raw_text = record.to_string();
        let parsed: Value = serde_json::from_str(&raw_text).unwrap();
        let o = map_message("u2", &parsed, &no_names()).unwrap().observation;
        assert_eq!(o.message_id, "9007199254740993");

        let mut with_str = message(1, json!({"type": 1}));
        with_str["message_id"] = json!(1824334157854015500u64); // a rounded copy
        with_str["message_idstr"] = json!("1824334157854015488");
        let o = map_message("u2", &with_str, &no_names())
            .unwrap()
            .observation;
        assert_eq!(o.message_id, "1824334157854015488", "message_idstr wins");

        let row: Value = serde_json::from_str(
            r#"{"message_id":9007199254740993,"extra_version":1723790201123456,"revoke":1}"#,
        )
        .unwrap();
        assert_eq!(
            map_extra("g_9", &row).unwrap().0.message_id,
            "9007199254740993"
        );
    }

    #[test]
    fn extra_rows_are_change_only_observations() {
        let row = json!({"message_id": 1824334157854015488u64, "message_id_str": "1824334157854015488",
                         "revoke": 1, "revoker": "u2", "readed_count": 4,
                         "content_edit": {"type": 1, "content": "fixed"}, "edited_at": 1723790200,
                         "extra_version": 1723790201123456u64});
        let (o, version) = map_extra("g_9", &row).unwrap();
        assert_eq!(version, 1723790201123456);
        assert_eq!(o.conversation_id, "g_9");
        assert!(o.header.is_none());
        assert_eq!(o.content.unwrap().text, "fixed");
        assert_eq!(o.edited_at.unwrap().timestamp(), 1723790200);
        assert_eq!(o.recalled.unwrap().by.as_deref(), Some("u2"));
        assert!(o.deleted.is_none());
        assert!(o.reactions.is_none());
        // omitempty: an unpin or a plain read-count row carries no content and no marks
        let (o, _) = map_extra("g_9", &json!({"message_id_str": "1", "extra_version": 2})).unwrap();
        assert!(o.content.is_none() && o.recalled.is_none() && o.deleted.is_none());
        assert!(map_extra("g_9", &json!({"message_id_str": "1"})).is_err());
    }

    #[test]
    fn reaction_removal_row_is_not_present() {
        let row = json!({"message_id": "1824334157854015488", "channel_id": "g_9", "channel_type": 2,
                         "seq": 1000007, "uid": "u3", "name": "Ann", "emoji": "👍", "is_deleted": 1,
                         "created_at": "2024-08-16 14:35:33"});
        let (r, seq) = map_reaction("g_9", &row).unwrap();
        assert_eq!(seq, 1000007);
        assert!(!r.present);
        assert!(r.one_per_user);
        assert_eq!(r.user_name.as_deref(), Some("Ann"));
        assert_eq!(r.at, None);
        let mut added = row.clone();
        added.as_object_mut().unwrap().remove("is_deleted");
        assert!(
            map_reaction("g_9", &added).unwrap().0.present,
            "absent is_deleted is 0"
        );
    }

    #[test]
    fn conversations_keep_only_stable_metadata() {
        let response = json!({
            "uid": "me",
            "conversations": [
                {"channel_id": "g_9", "channel_type": 2, "unread": 3, "timestamp": 1723790132,
                 "last_msg_seq": 1688, "last_client_msg_no": "ba3e", "offset_msg_seq": 0,
                 "version": 1723790132000000000u64, "recents": []},
                {"channel_id": "u2", "channel_type": 1, "last_msg_seq": 12, "timestamp": 1},
                {"channel_id": "cs1", "channel_type": 3, "last_msg_seq": 2},
                {"channel_type": 1}
            ],
            "users": [{"uid": "u2", "name": "Ann", "category": "", "robot": 0, "online": 1}],
            "groups": [{"group_no": "g_9", "name": "team", "group_type": 0, "category": "",
                        "member_count": 7, "online_count": 2, "version": 99, "mute": 1}],
            "channel_status": []
        });
        let page = map_conversations(&response, &HashMap::new()).unwrap();
        assert_eq!(page.channels.len(), 3);
        assert_eq!(page.quarantine.len(), 1);
        let group = &page.channels[0];
        assert_eq!(group.observation.conversation_type, ConversationType::Group);
        assert_eq!(group.observation.name.as_deref(), Some("team"));
        assert_eq!(
            group.observation.metadata,
            json!({"channel_type": 2, "group_type": 0, "category": ""})
        );
        assert_eq!(group.last_msg_seq, Some(1688));
        let person = &page.channels[1];
        assert_eq!(
            person.observation.conversation_type,
            ConversationType::Direct
        );
        assert_eq!(person.observation.name.as_deref(), Some("Ann"));
        assert_eq!(
            person.observation.metadata,
            json!({"channel_type": 1, "category": "", "robot": 0})
        );
        assert_eq!(
            page.channels[2].observation.conversation_type,
            ConversationType::Other
        );
        assert_eq!(page.user_names, vec![("u2".to_string(), "Ann".to_string())]);

        // without the details, a known conversation keeps what the archive holds
        let held = group.observation.clone();
        let known: HashMap<String, &ConversationObservation> =
            [("g_9".to_string(), &held)].into_iter().collect();
        let bare = json!({"conversations": [{"channel_id": "g_9", "channel_type": 2, "last_msg_seq": 1700}]});
        let page = map_conversations(&bare, &known).unwrap();
        assert_eq!(page.channels[0].observation, held);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "type",
                    "content",
                    "extra",
                    "name",
                    "uid",
                    "reply",
                    "message_id",
                    "msgs",
                    "payload",
                    "message_seq",
                    "message_idstr",
                    "message_id_str",
                    "timestamp",
                    "from_uid",
                    "message_extra",
                    "content_edit",
                    "edited_at",
                    "reactions",
                    "emoji",
                    "is_deleted",
                    "seq",
                    "extra_version",
                    "revoke",
                    "revoker",
                    "is_mutual_deleted",
                    "visibles",
                    "expire",
                    "mention",
                    "uids",
                    "all",
                    "users",
                    "title",
                    "address",
                    "second",
                    "timeTrad",
                    "cmd",
                    "conversations",
                    "channel_id",
                    "channel_type",
                    "last_msg_seq",
                    "groups",
                    "group_no",
                    "entities",
                ])
                .prop_map(String::from),
                "[a-z_]{0,8}",
            ]
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                prop::sample::select(vec![
                    0i64, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 97, 98, 99, 1001, 1020, 9989
                ])
                .prop_map(|n| json!(n)),
                any::<i64>().prop_map(|n| json!(n)),
                any::<u64>().prop_map(|n| json!(n)),
                (-1.0e9f64..1.0e9).prop_map(|f| json!(f)),
                "[{}0-9a-z名 ]{0,16}".prop_map(Value::String),
            ]
        }

        /// Any JSON, biased towards the keys and values TangSengDaoDao records use.
        fn any_json() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(6, 96, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A message record whose required fields are mostly well-formed, so mapping gets
        /// past them and into payloads, templates, forwards, extras and reactions.
        fn object() -> impl Strategy<Value = Value> {
            prop::collection::btree_map(key(), any_json(), 0..10)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        }

        fn record() -> impl Strategy<Value = Value> {
            (
                any::<u32>(),
                prop_oneof![
                    Just(json!(1_723_790_132i64)),
                    any::<i64>().prop_map(|n| json!(n))
                ],
                object(),
                prop_oneof![Just(Value::Null), object()],
                prop::collection::vec(any_json(), 0..4),
                any_json(),
            )
                .prop_map(|(seq, timestamp, payload, extra, reactions, noise)| {
                    let mut record = json!({
                        "message_idstr": format!("18243341578540{seq}"),
                        "message_seq": seq,
                        "timestamp": timestamp,
                        "from_uid": "u2",
                        "payload": payload,
                        "message_extra": extra,
                        "reactions": reactions,
                        "is_deleted": seq % 2,
                    });
                    if let (Some(r), Some(n)) = (record.as_object_mut(), noise.as_object()) {
                        for (k, v) in n {
                            if !r.contains_key(k) {
                                r.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    record
                })
        }

        fn size(v: &Value) -> usize {
            v.to_string().len()
        }

        fn bounded(content: &Content, input: usize) {
            assert!(
                content.text.len() <= 8 * input + 64,
                "text of {} bytes from {input} bytes",
                content.text.len()
            );
            assert!(
                size(&content.content) <= 8 * input + 64,
                "content of {} bytes from {input} bytes",
                size(&content.content)
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn payloads_map_without_panicking_and_stay_bounded(payload in any_json()) {
                let input = size(&payload);
                bounded(&map_payload(&payload), input);
            }

            #[test]
            fn a_system_template_stays_bounded(
                template in "([{}0-9a-z名]|\\{[0-9]\\}){0,60}",
                names in prop::collection::vec("([{}0-9a-z]|\\{[0-9]\\}){0,40}", 0..10),
            ) {
                let extra: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
                let payload = json!({"type": 1001, "content": template, "extra": extra});
                let input = size(&payload);
                let content = map_payload(&payload);
                prop_assert!(content.text.len() <= 4 * input + 3);
            }

            /// Every record yields an observation or a quarantine reason, never a panic, and
            /// what it yields is bounded by what came in.
            #[test]
            fn records_map_or_give_a_reason(record in prop_oneof![record(), any_json()]) {
                let input = size(&record);
                match map_message("g_9", &record, &HashMap::new()) {
                    Ok(mapped) => {
                        let o = mapped.observation;
                        prop_assert_eq!(&o.conversation_id, "g_9");
                        bounded(o.content.as_ref().unwrap(), input);
                        for earlier in &o.earlier_versions {
                            bounded(&earlier.content, input);
                        }
                        prop_assert!(o.header.is_some());
                        // a deletion says why
                        if let Some(mark) = &o.deleted {
                            prop_assert!(mark.reason.is_some());
                        }
                        for q in &mapped.quarantine {
                            prop_assert!(!q.reason.is_empty());
                        }
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            #[test]
            fn change_rows_map_or_give_a_reason(row in any_json()) {
                let input = size(&row);
                match map_extra("g_9", &row) {
                    Ok((o, _)) => {
                        if let Some(content) = &o.content {
                            bounded(content, input);
                        }
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
                match map_reaction("g_9", &row) {
                    Ok((r, _)) => prop_assert!(!r.user_id.is_empty() && !r.emoji.is_empty()),
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }

            /// Every conversation entry becomes a channel or a quarantine record.
            #[test]
            fn conversation_lists_account_for_every_entry(
                entries in prop::collection::vec(any_json(), 0..8),
                users in any_json(),
                groups in any_json(),
                last in any::<u64>(),
            ) {
                let mut entries = entries;
                entries.push(json!({"channel_id": "g_1", "channel_type": 2, "last_msg_seq": last}));
                let response = json!({"conversations": entries, "users": users, "groups": groups});
                let page = map_conversations(&response, &HashMap::new()).unwrap();
                prop_assert_eq!(page.channels.len() + page.quarantine.len(), entries.len());
                prop_assert_eq!(page.channels.last().unwrap().last_msg_seq, Some(last));
                prop_assert!(map_conversations(&json!([1]), &HashMap::new()).is_err());
            }
        }
    }
}
