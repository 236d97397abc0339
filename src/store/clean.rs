//! Making a page storable: the one place where what a connector observed is adapted to
//! what PostgreSQL can hold, before anything is compared, hashed or written.
//!
//! PostgreSQL cannot store NUL in `text` or `jsonb`, so every string of a page (ids, names,
//! emoji, texts, JSON keys and values, cursor keys and values, reasons) has each NUL
//! replaced by U+FFFD; everything else is kept as received. Times are truncated to the
//! microseconds PostgreSQL keeps, so a value read back hashes like the one written.
//!
//! What cleaning cannot make storable (a time before 4713 BC, a key too long for an index
//! row) is found by the database itself: [`super::apply`] then splits the page and
//! quarantines exactly the records PostgreSQL refuses.

use std::borrow::Cow;

use crate::model::to_micros;
use crate::model::{
    Content, ConversationObservation, Cursor, EarlierVersion, Mark, MessageHeader,
    MessageObservation, Page, QuarantineRecord, ReactionObservation, ReactionState, SeqGap,
    WindowObservation,
};

use super::canonical::{strip_nul, strip_nul_value};

/// `page` with every string storable and every time in microseconds.
pub(super) fn clean_page(page: &Page) -> Page {
    Page {
        cursor_key: text(&page.cursor_key),
        expected_cursor: page.expected_cursor.as_ref().map(cursor),
        next_cursor: cursor(&page.next_cursor),
        conversations: page.conversations.iter().map(conversation).collect(),
        messages: page.messages.iter().map(message).collect(),
        reactions: page.reactions.iter().map(reaction).collect(),
        gaps: page.gaps.iter().map(gap).collect(),
        quarantine: page.quarantine.iter().map(quarantine).collect(),
        windows: page.windows.iter().map(window).collect(),
    }
}

/// A message observation as it would be stored (what comparisons with the archive use).
pub(super) fn message_as_stored(m: &MessageObservation) -> MessageObservation {
    message(m)
}

/// A string as it is stored.
pub(crate) fn text(s: &str) -> String {
    strip_nul(s).into_owned()
}

fn opt_text(s: &Option<String>) -> Option<String> {
    s.as_deref().map(text)
}

fn json(v: &serde_json::Value) -> serde_json::Value {
    match strip_nul_value(v) {
        Cow::Borrowed(v) => v.clone(),
        Cow::Owned(v) => v,
    }
}

fn cursor(c: &Cursor) -> Cursor {
    Cursor(json(&c.0))
}

pub(super) fn conversation(c: &ConversationObservation) -> ConversationObservation {
    ConversationObservation {
        conversation_id: text(&c.conversation_id),
        conversation_type: c.conversation_type,
        name: opt_text(&c.name),
        metadata: json(&c.metadata),
    }
}

fn content(c: &Content) -> Content {
    Content {
        kind: c.kind,
        text: text(&c.text),
        content: json(&c.content),
    }
}

fn mark(m: &Option<Mark>) -> Option<Mark> {
    m.as_ref().map(|m| Mark {
        at: m.at.map(to_micros),
        by: opt_text(&m.by),
        reason: opt_text(&m.reason),
    })
}

fn message(m: &MessageObservation) -> MessageObservation {
    MessageObservation {
        conversation_id: text(&m.conversation_id),
        message_id: text(&m.message_id),
        header: m.header.as_ref().map(|h| MessageHeader {
            seq: h.seq,
            sender_id: opt_text(&h.sender_id),
            sender_name: opt_text(&h.sender_name),
            sent_at: to_micros(h.sent_at),
            reply_to: opt_text(&h.reply_to),
        }),
        content: m.content.as_ref().map(content),
        edited_at: m.edited_at.map(to_micros),
        earlier_versions: m
            .earlier_versions
            .iter()
            .map(|e| EarlierVersion {
                content: content(&e.content),
                replaced_at: e.replaced_at.map(to_micros),
                known_fields: e.known_fields.clone(),
            })
            .collect(),
        recalled: mark(&m.recalled),
        deleted: mark(&m.deleted),
        reactions: m.reactions.as_ref().map(|set| {
            set.iter()
                .map(|r| ReactionState {
                    user_id: text(&r.user_id),
                    user_name: opt_text(&r.user_name),
                    emoji: text(&r.emoji),
                })
                .collect()
        }),
        raw: json(&m.raw),
    }
}

fn reaction(r: &ReactionObservation) -> ReactionObservation {
    ReactionObservation {
        conversation_id: text(&r.conversation_id),
        message_id: text(&r.message_id),
        user_id: text(&r.user_id),
        user_name: opt_text(&r.user_name),
        emoji: text(&r.emoji),
        present: r.present,
        one_per_user: r.one_per_user,
        at: r.at.map(to_micros),
    }
}

fn gap(g: &SeqGap) -> SeqGap {
    SeqGap {
        conversation_id: text(&g.conversation_id),
        from_seq: g.from_seq,
        to_seq: g.to_seq,
        reason: text(&g.reason),
        kind: g.kind,
    }
}

pub(super) fn quarantine(q: &QuarantineRecord) -> QuarantineRecord {
    QuarantineRecord {
        reason: text(&q.reason),
        raw: json(&q.raw),
    }
}

fn window(w: &WindowObservation) -> WindowObservation {
    WindowObservation {
        conversation_id: text(&w.conversation_id),
        from: to_micros(w.from),
        to: to_micros(w.to),
        present: w.present.iter().map(|id| text(id)).collect(),
        detail: text(&w.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ConversationType, MessageKind};
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    fn has_nul(page: &Page) -> bool {
        // every string of a page is reachable through its Debug output
        format!("{page:?}").contains("\\0")
    }

    #[test]
    fn every_string_of_a_page_loses_its_nul() {
        let t = Utc.timestamp_opt(1_750_000_000, 123_456_789).unwrap();
        let n = |s: &str| format!("{s}\0x");
        let mut page = Page::new(
            n("messages/c"),
            Some(Cursor(json!({"k\0": n("v")}))),
            Cursor(json!({"v": [n("a")]})),
        );
        page.conversations.push(ConversationObservation {
            conversation_id: n("c"),
            conversation_type: ConversationType::Group,
            name: Some(n("name")),
            metadata: json!({n("key"): n("value")}),
        });
        let body = Content {
            kind: MessageKind::Text,
            text: n("text"),
            content: json!({"text": n("text")}),
        };
        page.messages.push(MessageObservation {
            conversation_id: n("c"),
            message_id: n("m"),
            header: Some(MessageHeader {
                seq: Some(1),
                sender_id: Some(n("u")),
                sender_name: Some(n("Ann")),
                sent_at: t,
                reply_to: Some(n("r")),
            }),
            content: Some(body.clone()),
            edited_at: Some(t),
            earlier_versions: vec![EarlierVersion {
                content: body,
                replaced_at: Some(t),
                known_fields: None,
            }],
            recalled: Some(Mark {
                at: Some(t),
                by: Some(n("u")),
                reason: None,
            }),
            deleted: Some(Mark {
                at: None,
                by: Some(n("u")),
                reason: Some(n("expired")),
            }),
            reactions: Some(vec![ReactionState {
                user_id: n("u"),
                user_name: Some(n("Ann")),
                emoji: n("👍"),
            }]),
            raw: json!([n("raw")]),
        });
        page.reactions.push(ReactionObservation {
            conversation_id: n("c"),
            message_id: n("m"),
            user_id: n("u"),
            user_name: Some(n("Ann")),
            emoji: n("👍"),
            present: true,
            one_per_user: false,
            at: Some(t),
        });
        page.gaps.push(SeqGap {
            conversation_id: n("c"),
            from_seq: 2,
            to_seq: 3,
            reason: n("why"),
            kind: Default::default(),
        });
        page.quarantine.push(QuarantineRecord {
            reason: n("why"),
            raw: json!({n("k"): n("v")}),
        });
        page.windows.push(WindowObservation {
            conversation_id: n("c"),
            from: t,
            to: t,
            present: vec![n("m")],
            detail: n("gone"),
        });
        assert!(has_nul(&page), "the fixture has NULs to remove");

        let clean = clean_page(&page);
        assert!(!has_nul(&clean), "{clean:#?}");
        assert_eq!(clean.cursor_key, "messages/c\u{FFFD}x");
        assert_eq!(clean.reactions[0].emoji, "👍\u{FFFD}x");
        assert_eq!(
            clean.messages[0]
                .header
                .as_ref()
                .unwrap()
                .sent_at
                .timestamp_subsec_nanos(),
            123_456_000,
            "times are kept to the microsecond"
        );
        // nothing is dropped or reordered
        assert_eq!(clean.messages.len(), 1);
        assert_eq!(clean.windows[0].present, vec!["m\u{FFFD}x".to_string()]);
        assert_eq!(clean_page(&clean), clean, "cleaning is idempotent");
    }
}
