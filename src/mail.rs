//! Chat messages as Internet mail, for e-discovery tools (`chatvault export --format eml`
//! and `--format mbox`): RFC 5322 messages with MIME (RFC 2045) bodies, pure functions over
//! the rows `chatvault export` writes as JSONL.
//!
//! - Headers are ASCII: a value with anything else (Chinese, emoji, control characters), or
//!   too long for one line, is written as RFC 2047 encoded-words (`=?UTF-8?B?...?=`), each
//!   at most 75 characters, folded onto continuation lines.
//! - Bodies are `text/plain; charset=utf-8`, quoted-printable (RFC 2045 §6.7), lines of at
//!   most 76 characters, CRLF line ends.
//! - Addresses are made up and cannot be delivered: senders are
//!   `<sender@users.SOURCE.chatvault.invalid>`, conversations
//!   `<conversation@conversations.SOURCE.chatvault.invalid>` (`.invalid` is reserved by
//!   RFC 2606), their local parts with every byte but letters, digits, `-` and `_` written
//!   `=XX`, so distinct ids stay distinct. The exact ids are in `X-Chatvault-*` headers.
//! - Threads: `Message-ID` is made from source, conversation and message id; a reply gets
//!   `In-Reply-To` its parent and `References` its ancestors (as far as [`Threads`] has
//!   seen them, at most [`MAX_REFERENCES`]).
//! - Attachments are referenced, never fetched: each upstream reference (`*url` fields of
//!   the content) is an `X-Chatvault-Attachment` header and a line of the body.
//! - mbox (`mboxrd`): each message after a `From ` line, LF line ends, and every body line
//!   that matches `^>*From ` gets one more `>`.

use std::collections::HashMap;

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

/// Ancestors named in `References` at most.
pub const MAX_REFERENCES: usize = 20;

/// The longest encoded-word RFC 2047 allows.
const MAX_ENCODED_WORD: usize = 75;

fn str_of<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

fn time_of(m: &Value, key: &str) -> Option<DateTime<Utc>> {
    str_of(m, key)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// The send time of an exported row.
pub fn sent_at(m: &Value) -> Option<DateTime<Utc>> {
    time_of(m, "sent_at")
}

/// A local part or domain label: letters, digits, `-`, `_` as they are, every other byte
/// as `=XX` (all of it is `atext`).
fn atom(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("=00");
    }
    out
}

/// A DNS-like label for a source name (letters, digits and `-`; the exact name is in
/// `X-Chatvault-Source`).
fn label(source: &str) -> String {
    let l: String = source
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if l.is_empty() {
        "source".into()
    } else {
        l
    }
}

fn user_address(source: &str, sender: &str) -> String {
    format!("{}@users.{}.chatvault.invalid", atom(sender), label(source))
}

fn conversation_address(source: &str, conversation: &str) -> String {
    format!(
        "{}@conversations.{}.chatvault.invalid",
        atom(conversation),
        label(source)
    )
}

/// The `Message-ID` of a chat message (with its angle brackets).
pub fn message_id(source: &str, conversation: &str, message: &str) -> String {
    format!(
        "<{}.{}@{}.chatvault.invalid>",
        atom(message),
        atom(conversation),
        label(source)
    )
}

/// RFC 5322 date.
fn date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// `text` as encoded-words, each at most 75 characters, joined by folding whitespace; the
/// first fits in a line of 78 characters after `used` characters (a header's name).
fn encoded_words(text: &str, used: usize) -> String {
    // "=?UTF-8?B?" + "?=" is 12 characters; 3 bytes are 4 characters of base64.
    let bytes_for = |room: usize| (room.min(MAX_ENCODED_WORD).saturating_sub(12) / 4 * 3).max(6);
    let mut max_bytes = bytes_for(78usize.saturating_sub(used));
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > max_bytes {
            words.push(std::mem::take(&mut chunk));
            max_bytes = bytes_for(77);
        }
        chunk.push(c);
    }
    if !chunk.is_empty() || words.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w.as_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Whether an unstructured value can be written as it is on one line after `name: `.
fn plain(name: &str, value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.contains("=?")
        && name.len() + 2 + value.len() <= 78
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

/// An unstructured header (`Subject`, `X-...`).
fn header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    if plain(name, value) {
        out.push_str(value);
    } else {
        out.push_str(&encoded_words(value, name.len() + 2));
    }
    out.push_str("\r\n");
}

/// A display name and address (`"Ann" <a@b>`, or encoded-words for the name).
fn mailbox(name: Option<&str>, address: &str) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) if n.bytes().all(|b| (0x20..0x7f).contains(&b)) && !n.contains("=?") => {
            let quoted = n.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{quoted}\" <{address}>")
        }
        Some(n) => format!("{} <{address}>", encoded_words(n, "From: ".len())),
        None => format!("<{address}>"),
    }
}

/// A structured header whose value is a list of items (message ids), folded between items.
fn list_header(out: &mut String, name: &str, items: &[String]) {
    out.push_str(name);
    out.push(':');
    let mut line = name.len() + 1;
    for item in items {
        if line + 1 + item.len() > 78 && line > name.len() + 1 {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(item);
        line += 1 + item.len();
    }
    out.push_str("\r\n");
}

/// `text` quoted-printable: CRLF line ends, lines of at most 76 characters, `=`, non-ASCII
/// bytes, control characters and whitespace at a line's end written as `=XX`.
pub fn quoted_printable(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len() * 2);
    for (i, line) in normalized.split('\n').enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut width = 0;
        for (j, &b) in bytes.iter().enumerate() {
            let last = j + 1 == bytes.len();
            let literal =
                (b'!'..=b'~').contains(&b) && b != b'=' || ((b == b' ' || b == b'\t') && !last);
            let token = if literal {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            // leave room for the soft break's `=`
            if width + token.len() > 75 {
                out.push_str("=\r\n");
                width = 0;
            }
            out.push_str(&token);
            width += token.len();
        }
    }
    out
}

/// Upstream references of attachments in a message's normalised content: every non-empty
/// string under a key ending in `url`/`Url` or named `src`, with the file's name.
pub fn attachments(content: &Value) -> Vec<String> {
    let Some(obj) = content.as_object() else {
        return Vec::new();
    };
    let name = obj.get("name").and_then(Value::as_str);
    obj.iter()
        .filter(|(k, _)| k.ends_with("url") || k.ends_with("Url") || k.as_str() == "src")
        .filter_map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
        .map(|v| match name {
            Some(n) => format!("{v} ({n})"),
            None => v.to_string(),
        })
        .collect()
}

/// Who replied to whom, per conversation, for `References`. Rows come conversation by
/// conversation, so it forgets a conversation when the next one starts.
#[derive(Default)]
pub struct Threads {
    conversation: Option<(String, String)>,
    parents: HashMap<String, Option<String>>,
}

impl Threads {
    /// Note `m` and return its ancestors' message ids, oldest first (its parent last).
    pub fn references(&mut self, m: &Value) -> Vec<String> {
        let source = str_of(m, "source").unwrap_or_default();
        let conversation = str_of(m, "conversation_id").unwrap_or_default();
        let key = (source.to_string(), conversation.to_string());
        if self.conversation.as_ref() != Some(&key) {
            self.conversation = Some(key);
            self.parents.clear();
        }
        let id = str_of(m, "message_id").unwrap_or_default().to_string();
        let parent = str_of(m, "reply_to").map(str::to_string);
        let mut chain = Vec::new();
        let mut next = parent.clone();
        while let Some(p) = next {
            if chain.len() >= MAX_REFERENCES || chain.contains(&p) || p == id {
                break;
            }
            next = self.parents.get(&p).cloned().flatten();
            chain.push(p);
        }
        self.parents.insert(id, parent);
        chain.reverse();
        chain
    }
}

fn sender_mailbox(m: &Value) -> String {
    let source = str_of(m, "source").unwrap_or_default();
    match str_of(m, "sender_id") {
        Some(id) => mailbox(str_of(m, "sender_name"), &user_address(source, id)),
        None => mailbox(Some("system"), &user_address(source, "system")),
    }
}

fn conversation_mailbox(m: &Value) -> String {
    let source = str_of(m, "source").unwrap_or_default();
    let conversation = str_of(m, "conversation_id").unwrap_or_default();
    mailbox(
        str_of(m, "conversation_name"),
        &conversation_address(source, conversation),
    )
}

fn conversation_label(m: &Value) -> String {
    str_of(m, "conversation_name")
        .filter(|n| !n.is_empty())
        .or_else(|| str_of(m, "conversation_id"))
        .unwrap_or_default()
        .to_string()
}

fn mime_headers(out: &mut String) {
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Transfer-Encoding: quoted-printable\r\n");
}

fn common_headers(out: &mut String, m: &Value) {
    let text = |k: &str| str_of(m, k).unwrap_or_default();
    header(out, "X-Chatvault-Source", text("source"));
    header(out, "X-Chatvault-Platform", text("platform"));
    header(out, "X-Chatvault-Conversation", text("conversation_id"));
    header(
        out,
        "X-Chatvault-Conversation-Type",
        text("conversation_type"),
    );
}

/// One chat message (an exported row) as an RFC 5322 message; `references` are the
/// message ids of its ancestors, oldest first ([`Threads::references`]).
pub fn message_eml(m: &Value, references: &[String]) -> Vec<u8> {
    let source = str_of(m, "source").unwrap_or_default();
    let conversation = str_of(m, "conversation_id").unwrap_or_default();
    let id = str_of(m, "message_id").unwrap_or_default();
    let text = str_of(m, "text").unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", sender_mailbox(m)));
    out.push_str(&format!("To: {}\r\n", conversation_mailbox(m)));
    if let Some(t) = sent_at(m) {
        out.push_str(&format!("Date: {}\r\n", date(&t)));
    }
    let first_line: String = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    let kind = str_of(m, "kind").unwrap_or("other");
    let subject = if first_line.is_empty() {
        format!("[{}] ({kind})", conversation_label(m))
    } else {
        format!("[{}] {first_line}", conversation_label(m))
    };
    header(&mut out, "Subject", &subject);
    out.push_str(&format!(
        "Message-ID: {}\r\n",
        message_id(source, conversation, id)
    ));
    let ref_ids: Vec<String> = references
        .iter()
        .map(|r| message_id(source, conversation, r))
        .collect();
    if let Some(parent) = ref_ids.last() {
        out.push_str(&format!("In-Reply-To: {parent}\r\n"));
        list_header(&mut out, "References", &ref_ids);
    }
    mime_headers(&mut out);
    common_headers(&mut out, m);
    header(&mut out, "X-Chatvault-Message-Id", id);
    if let Some(seq) = m.get("seq").and_then(Value::as_i64) {
        header(&mut out, "X-Chatvault-Seq", &seq.to_string());
    }
    header(&mut out, "X-Chatvault-Kind", kind);
    let edits = m.get("edit_count").and_then(Value::as_i64).unwrap_or(0);
    header(&mut out, "X-Chatvault-Version", &(edits + 1).to_string());
    if let Some(t) = time_of(m, "edited_at") {
        header(&mut out, "X-Chatvault-Edited", &t.to_rfc3339());
    }
    if let Some(t) = time_of(m, "recalled_at") {
        let by = str_of(m, "recalled_by")
            .map(|b| format!(" by {b}"))
            .unwrap_or_default();
        header(
            &mut out,
            "X-Chatvault-Recalled",
            &format!("{}{by}", t.to_rfc3339()),
        );
    }
    if let Some(t) = time_of(m, "deleted_at") {
        header(&mut out, "X-Chatvault-Deleted", &t.to_rfc3339());
    }
    let content = m.get("content").cloned().unwrap_or(Value::Null);
    let attached = attachments(&content);
    for a in &attached {
        header(&mut out, "X-Chatvault-Attachment", a);
    }
    if let Some(t) = time_of(m, "archived_at") {
        header(&mut out, "X-Chatvault-Archived-At", &t.to_rfc3339());
    }
    out.push_str("\r\n");
    out.push_str(&quoted_printable(&message_body(m, &attached)));
    out.push_str("\r\n");
    out.into_bytes()
}

/// The body of one message: its current text, then what a reviewer needs besides.
fn message_body(m: &Value, attached: &[String]) -> String {
    let mut body = str_of(m, "text").unwrap_or_default().to_string();
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            body.push_str(&format!("\n\n----- {title} -----\n"));
            body.push_str(&lines.join("\n"));
        }
    };
    section(
        "Attachments (referenced upstream, not included)",
        attached.to_vec(),
    );
    let versions = m.get("versions").and_then(Value::as_array);
    if let Some(versions) = versions.filter(|v| v.len() > 1) {
        let lines = versions
            .iter()
            .map(|v| {
                let n = v.get("version").and_then(Value::as_i64).unwrap_or(0);
                let when = time_of(v, "edited_at")
                    .map(|t| format!("edited {}", t.to_rfc3339()))
                    .unwrap_or_else(|| "original".to_string());
                format!("Version {n} ({when}):\n{}", str_of(v, "text").unwrap_or(""))
            })
            .collect();
        section("Every version", lines);
    }
    if let Some(reactions) = m.get("reactions").and_then(Value::as_array) {
        let lines = reactions
            .iter()
            .map(|r| {
                let who = str_of(r, "user_name")
                    .or_else(|| str_of(r, "user_id"))
                    .unwrap_or("");
                let emoji = str_of(r, "emoji").unwrap_or("");
                let when = time_of(r, "reacted_at")
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default();
                let removed = time_of(r, "removed_at")
                    .map(|t| format!(", removed {}", t.to_rfc3339()))
                    .unwrap_or_default();
                format!("{emoji} {who} ({when}{removed})")
            })
            .collect();
        section("Reactions", lines);
    }
    body
}

/// The messages of one conversation on one UTC day as one RFC 5322 message: a transcript.
pub fn day_eml(rows: &[Value], day: NaiveDate) -> Vec<u8> {
    let Some(first) = rows.first() else {
        return Vec::new();
    };
    let source = str_of(first, "source").unwrap_or_default();
    let conversation = str_of(first, "conversation_id").unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!("From: {}\r\n", conversation_mailbox(first)));
    out.push_str(&format!("To: {}\r\n", conversation_mailbox(first)));
    if let Some(t) = sent_at(first) {
        out.push_str(&format!("Date: {}\r\n", date(&t)));
    }
    header(
        &mut out,
        "Subject",
        &format!(
            "[{}] {day}: {} message{}",
            conversation_label(first),
            rows.len(),
            if rows.len() == 1 { "" } else { "s" }
        ),
    );
    out.push_str(&format!(
        "Message-ID: {}\r\n",
        message_id(source, conversation, &format!("day-{day}"))
    ));
    mime_headers(&mut out);
    common_headers(&mut out, first);
    header(&mut out, "X-Chatvault-Day", &day.to_string());
    header(&mut out, "X-Chatvault-Messages", &rows.len().to_string());
    out.push_str("\r\n");
    let mut body = String::new();
    for (i, m) in rows.iter().enumerate() {
        if i > 0 {
            body.push_str("\n\n");
        }
        let time = sent_at(m)
            .map(|t| t.format("%H:%M:%S").to_string())
            .unwrap_or_default();
        let who = match (str_of(m, "sender_name"), str_of(m, "sender_id")) {
            (Some(n), Some(id)) => format!("{n} ({id})"),
            (None, Some(id)) => id.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => "system".to_string(),
        };
        let mut marks = vec![format!("message {}", str_of(m, "message_id").unwrap_or(""))];
        if let Some(r) = str_of(m, "reply_to") {
            marks.push(format!("reply to {r}"));
        }
        let edits = m.get("edit_count").and_then(Value::as_i64).unwrap_or(0);
        if edits > 0 {
            marks.push(format!("version {}", edits + 1));
        }
        if let Some(t) = time_of(m, "recalled_at") {
            marks.push(format!("recalled {}", t.to_rfc3339()));
        }
        if let Some(t) = time_of(m, "deleted_at") {
            marks.push(format!("deleted {}", t.to_rfc3339()));
        }
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        let attached = attachments(&content);
        body.push_str(&format!("{time}  {who}  [{}]\n", marks.join(", ")));
        body.push_str(&message_body(m, &attached));
    }
    out.push_str(&quoted_printable(&body));
    out.push_str("\r\n");
    out.into_bytes()
}

/// One message of an mboxrd file: the `From ` line, the message with LF line ends, every
/// line matching `^>*From ` quoted with one more `>`, and an empty line after it.
pub fn mbox_entry(eml: &[u8], sender: &str, at: Option<DateTime<Utc>>) -> Vec<u8> {
    let when = at
        .map(|t| t.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".to_string());
    let sender = if sender.is_empty() || sender.contains([' ', '\n', '\r']) {
        "MAILER-DAEMON"
    } else {
        sender
    };
    let mut out = format!("From {sender} {when}\n").into_bytes();
    let text = String::from_utf8_lossy(eml).replace("\r\n", "\n");
    for line in text.split_inclusive('\n') {
        if line.trim_start_matches('>').starts_with("From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line.as_bytes());
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// The address an mbox `From ` line names for an exported row.
pub fn envelope_sender(m: &Value) -> String {
    let source = str_of(m, "source").unwrap_or_default();
    user_address(source, str_of(m, "sender_id").unwrap_or("system"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quoted_printable_keeps_lines_short_and_encodes_what_it_must() {
        let qp = quoted_printable("a=b 中\nend \n\u{1b}x");
        assert_eq!(qp, "a=3Db =E4=B8=AD\r\nend=20\r\n=1Bx");
        let long = quoted_printable(&"会".repeat(40));
        assert!(long.split("\r\n").all(|l| l.len() <= 76), "{long}");
        // every byte is a whole `=XX`: no token is cut by a soft break
        assert!(
            long.split("\r\n")
                .all(|l| l.trim_end_matches('=').len() % 3 == 0),
            "{long}"
        );
    }

    #[test]
    fn headers_are_ascii_with_encoded_words() {
        let mut out = String::new();
        header(
            &mut out,
            "Subject",
            &format!("[项目组] {}", "会议🎉".repeat(20)),
        );
        assert!(out.is_ascii());
        assert!(out.lines().all(|l| l.len() <= 78), "{out}");
        let mut plain_out = String::new();
        header(&mut plain_out, "X-Chatvault-Kind", "text");
        assert_eq!(plain_out, "X-Chatvault-Kind: text\r\n");
    }

    #[test]
    fn addresses_keep_ids_apart() {
        assert_ne!(atom("a.b"), atom("a=2Eb"));
        assert_eq!(atom("u_1-x"), "u_1-x");
        assert_eq!(
            message_id("acme", "g/1", "9"),
            "<9.g=2F1@acme.chatvault.invalid>"
        );
    }

    #[test]
    fn threads_name_every_ancestor() {
        let mut t = Threads::default();
        let m = |id: &str, reply: Option<&str>| json!({"source": "s", "conversation_id": "c", "message_id": id, "reply_to": reply});
        assert!(t.references(&m("1", None)).is_empty());
        assert_eq!(t.references(&m("2", Some("1"))), ["1"]);
        assert_eq!(t.references(&m("3", Some("2"))), ["1", "2"]);
        // a parent the export does not hold is still named
        assert_eq!(t.references(&m("4", Some("0"))), ["0"]);
    }

    #[test]
    fn mboxrd_quotes_from_lines() {
        let entry = mbox_entry(
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nok\r\n",
            "a@b",
            None,
        );
        let text = String::from_utf8(entry).unwrap();
        assert!(
            text.contains("\n>From here\n>>From there\nok\n\n"),
            "{text}"
        );
    }
}
