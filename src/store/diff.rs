//! Observation diffing: pure logic that compares what the archive holds with what upstream
//! shows now, and derives versions, marks and events (invariants 1 and 3).
//!
//! Rules:
//! - A message's first observation creates it with version 1 (or with the earlier versions
//!   upstream reports, oldest first, then the current one).
//! - Content that differs from the current version adds a version; the same content again
//!   changes nothing. Earlier versions reported later are appended if not yet held; one
//!   upstream reported only in part (`EarlierVersion::known_fields`) is held when a held
//!   version equals it on those parts.
//! - Once a message is recalled or deleted (or in the observation that says so), new
//!   content is ignored: an upstream that blanks a recalled message never blanks ours.
//! - Marks are set once and never cleared.
//! - The content of a full observation whose raw payload is the one stored last is not
//!   compared again (it was derived from that payload).
//! - A reaction is an episode: added, then removed; re-adding opens a new episode.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::canonical::{canonical_time, content_hash, content_hash_as, value_hash, Hash, Numbers};
use crate::model::{
    Content, ConversationObservation, EarlierVersion, Mark, MessageHeader, MessageObservation,
    ReactionObservation, ReactionState,
};

/// What the store holds about a message, as far as diffing needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageState {
    pub header: MessageHeader,
    pub current_version: i32,
    pub version_hashes: Vec<Hash>,
    pub edited_at: Option<DateTime<Utc>>,
    pub raw: Value,
    pub raw_hash: Hash,
    pub recalled: Option<Mark>,
    pub deleted: Option<Mark>,
    /// The content of every held version, oldest first, where the store loaded it (only for
    /// observations carrying earlier versions known in part); `None`: not loaded.
    pub versions: Option<Vec<Content>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewVersion {
    pub version: i32,
    pub content: Content,
    pub edited_at: Option<DateTime<Utc>>,
    pub hash: Hash,
}

/// An event before it gets its place in the chain.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    pub kind: &'static str,
    pub conversation_id: String,
    pub message_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub detail: Value,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageOutcome {
    pub created: bool,
    /// Anything about an existing message changed (version, mark).
    pub changed: bool,
    /// The stored row must be written (new, changed, or a new raw payload).
    pub dirty: bool,
    pub versions: Vec<NewVersion>,
    pub events: Vec<EventDraft>,
}

/// Why an observation cannot be applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DiffError {
    #[error("change for message {message_id} in conversation {conversation_id}, which is not archived (yet)")]
    UnknownMessage {
        conversation_id: String,
        message_id: String,
    },
    #[error("message {message_id} in conversation {conversation_id} has no content in its first observation")]
    NoContent {
        conversation_id: String,
        message_id: String,
    },
}

fn hex(h: &Hash) -> String {
    hex::encode(h)
}

/// Whether an earlier version reported by upstream is one the message already holds: the
/// same content, or, when upstream reported it only in part, a held version equal to it on
/// those parts.
fn already_held(st: &MessageState, earlier: &EarlierVersion) -> bool {
    // A digest recorded before numbers were spelled as PostgreSQL stores them matches in
    // the legacy spelling (see `canonical`): the same content, not an edit.
    let held = |hash: &Hash| st.version_hashes.contains(hash);
    if held(&content_hash(&earlier.content))
        || held(&content_hash_as(&earlier.content, Numbers::Legacy))
    {
        return true;
    }
    match (&earlier.known_fields, &st.versions) {
        (Some(parts), Some(held)) => held.iter().any(|h| {
            parts
                .iter()
                .all(|p| h.content.pointer(p) == earlier.content.content.pointer(p))
        }),
        _ => false,
    }
}

/// Apply one observation to the held state (`None`: not archived yet), returning what
/// changed. `state` is updated in place so that a sequence of observations can be folded.
pub fn apply_message(
    state: &mut Option<MessageState>,
    obs: &MessageObservation,
    observed_at: DateTime<Utc>,
) -> Result<MessageOutcome, DiffError> {
    let mut out = MessageOutcome::default();
    let conversation_id = obs.conversation_id.clone();
    let message_id = Some(obs.message_id.clone());
    let raw_hash = value_hash(&obs.raw);

    let st = match state {
        Some(st) => st,
        None => {
            let (Some(header), Some(content)) = (&obs.header, &obs.content) else {
                if obs.header.is_some() {
                    return Err(DiffError::NoContent {
                        conversation_id,
                        message_id: obs.message_id.clone(),
                    });
                }
                return Err(DiffError::UnknownMessage {
                    conversation_id,
                    message_id: obs.message_id.clone(),
                });
            };
            // Versions: what upstream kept of the history, then the current content.
            let mut contents: Vec<(Content, Option<DateTime<Utc>>)> = Vec::new();
            let mut prev_replaced: Option<DateTime<Utc>> = None;
            for (i, earlier) in obs.earlier_versions.iter().enumerate() {
                let edited_at = if i == 0 {
                    None
                } else {
                    prev_replaced.or(Some(observed_at))
                };
                contents.push((earlier.content.clone(), edited_at));
                prev_replaced = earlier.replaced_at;
            }
            let current_edited = if contents.is_empty() {
                None
            } else {
                obs.edited_at.or(prev_replaced).or(Some(observed_at))
            };
            contents.push((content.clone(), current_edited));
            // Consecutive equal contents are one version.
            let mut hashes: Vec<Hash> = Vec::new();
            for (content, edited_at) in contents {
                let hash = content_hash(&content);
                if hashes.last() == Some(&hash) {
                    continue;
                }
                hashes.push(hash);
                let version = hashes.len() as i32;
                let (kind, occurred_at) = if version == 1 {
                    ("message_created", Some(header.sent_at))
                } else {
                    ("message_edited", edited_at)
                };
                let mut detail = json!({
                    "version": version,
                    "sha256": hex(&hash),
                });
                if version == 1 {
                    detail["seq"] = json!(header.seq);
                    detail["sender_id"] = json!(header.sender_id);
                    detail["sent_at"] = json!(canonical_time(&header.sent_at));
                }
                out.events.push(EventDraft {
                    kind,
                    conversation_id: conversation_id.clone(),
                    message_id: message_id.clone(),
                    occurred_at,
                    detail,
                });
                out.versions.push(NewVersion {
                    version,
                    content,
                    edited_at: if version == 1 { None } else { edited_at },
                    hash,
                });
            }
            let edited_at = out.versions.last().and_then(|v| v.edited_at);
            *state = Some(MessageState {
                header: header.clone(),
                current_version: hashes.len() as i32,
                version_hashes: hashes,
                edited_at,
                raw: obs.raw.clone(),
                raw_hash,
                recalled: None,
                deleted: None,
                versions: Some(out.versions.iter().map(|v| v.content.clone()).collect()),
            });
            out.created = true;
            out.dirty = true;
            let st = state.as_mut().expect("just set");
            apply_marks(st, obs, observed_at, &mut out);
            return Ok(out);
        }
    };

    // An existing message. Content that arrives with a recall is not news, and neither is the
    // content of the very payload stored last (content is derived from it).
    let same_payload = obs.header.is_some() && st.raw_hash == raw_hash;
    let frozen = same_payload
        || st.recalled.is_some()
        || st.deleted.is_some()
        || obs.recalled.is_some()
        || obs.deleted.is_some();
    if !frozen {
        let mut candidates: Vec<(Content, Option<DateTime<Utc>>)> = Vec::new();
        // A version was written when the one before it was replaced, where upstream says.
        let mut prev_replaced: Option<DateTime<Utc>> = None;
        for earlier in &obs.earlier_versions {
            if !already_held(st, earlier) {
                candidates.push((earlier.content.clone(), prev_replaced));
            }
            prev_replaced = earlier.replaced_at;
        }
        if let Some(content) = &obs.content {
            candidates.push((content.clone(), obs.edited_at));
        }
        for (content, edited_at) in candidates {
            let hash = content_hash(&content);
            let unchanged = st.version_hashes.last().is_some_and(|last| {
                *last == hash || *last == content_hash_as(&content, Numbers::Legacy)
            });
            if unchanged {
                continue;
            }
            let version = st.current_version + 1;
            let edited_at = edited_at.unwrap_or(observed_at);
            st.current_version = version;
            st.version_hashes.push(hash);
            if let Some(held) = &mut st.versions {
                held.push(content.clone());
            }
            st.edited_at = Some(edited_at);
            out.events.push(EventDraft {
                kind: "message_edited",
                conversation_id: conversation_id.clone(),
                message_id: message_id.clone(),
                occurred_at: Some(edited_at),
                detail: json!({"version": version, "sha256": hex(&hash)}),
            });
            out.versions.push(NewVersion {
                version,
                content,
                edited_at: Some(edited_at),
                hash,
            });
            out.changed = true;
            out.dirty = true;
        }
    }
    apply_marks(st, obs, observed_at, &mut out);
    // Only a full observation (a history page) replaces the raw payload.
    if obs.header.is_some() && st.raw_hash != raw_hash {
        st.raw = obs.raw.clone();
        st.raw_hash = raw_hash;
        out.dirty = true;
    }
    Ok(out)
}

fn apply_marks(
    st: &mut MessageState,
    obs: &MessageObservation,
    observed_at: DateTime<Utc>,
    out: &mut MessageOutcome,
) {
    let marks = [
        (&obs.recalled, &mut st.recalled, "message_recalled"),
        (&obs.deleted, &mut st.deleted, "message_deleted"),
    ];
    for (seen, held, kind) in marks {
        let Some(mark) = seen else { continue };
        if held.is_some() {
            continue;
        }
        let at = mark.at.unwrap_or(observed_at);
        *held = Some(Mark {
            at: Some(at),
            by: mark.by.clone(),
            reason: mark.reason.clone(),
        });
        let mut detail = json!({"by": mark.by});
        if let Some(reason) = &mark.reason {
            detail["reason"] = json!(reason);
        }
        out.events.push(EventDraft {
            kind,
            conversation_id: obs.conversation_id.clone(),
            message_id: Some(obs.message_id.clone()),
            occurred_at: mark.at,
            detail,
        });
        if !out.created {
            out.changed = true;
        }
        out.dirty = true;
    }
}

/// A reaction episode as held or as created in this page.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// `None` until the episode is stored.
    pub reaction_id: Option<i64>,
    pub conversation_id: String,
    pub message_id: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub emoji: String,
    pub reacted_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
    /// `removed_at` was set in this page.
    pub newly_removed: bool,
}

impl Episode {
    fn new(
        conversation_id: &str,
        message_id: &str,
        reaction: &ReactionState,
        reacted_at: DateTime<Utc>,
    ) -> Episode {
        Episode {
            reaction_id: None,
            conversation_id: conversation_id.to_string(),
            message_id: message_id.to_string(),
            user_id: reaction.user_id.clone(),
            user_name: reaction.user_name.clone(),
            emoji: reaction.emoji.clone(),
            reacted_at,
            removed_at: None,
            newly_removed: false,
        }
    }
}

/// The reaction episodes of one message, with the changes of this page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReactionBook {
    pub episodes: Vec<Episode>,
}

impl ReactionBook {
    fn open_index(&self, user_id: &str, emoji: &str) -> Option<usize> {
        self.episodes
            .iter()
            .position(|e| e.removed_at.is_none() && e.user_id == user_id && e.emoji == emoji)
    }

    /// Open `episode` unless the same user already has this emoji standing.
    fn add(
        &mut self,
        episode: Episode,
        occurred_at: Option<DateTime<Utc>>,
        events: &mut Vec<EventDraft>,
    ) {
        if self.open_index(&episode.user_id, &episode.emoji).is_some() {
            return;
        }
        events.push(EventDraft {
            kind: "reaction_added",
            conversation_id: episode.conversation_id.clone(),
            message_id: Some(episode.message_id.clone()),
            occurred_at,
            detail: json!({"user_id": episode.user_id, "emoji": episode.emoji}),
        });
        self.episodes.push(episode);
    }

    fn remove(
        &mut self,
        index: usize,
        at: DateTime<Utc>,
        occurred_at: Option<DateTime<Utc>>,
        events: &mut Vec<EventDraft>,
    ) {
        let e = &mut self.episodes[index];
        e.removed_at = Some(at);
        e.newly_removed = true;
        events.push(EventDraft {
            kind: "reaction_removed",
            conversation_id: e.conversation_id.clone(),
            message_id: Some(e.message_id.clone()),
            occurred_at,
            detail: json!({"user_id": e.user_id, "emoji": e.emoji}),
        });
    }

    /// A message's complete set of standing reactions.
    pub fn apply_set(
        &mut self,
        conversation_id: &str,
        message_id: &str,
        set: &[ReactionState],
        observed_at: DateTime<Utc>,
        events: &mut Vec<EventDraft>,
    ) {
        let mut set: Vec<&ReactionState> = set.iter().collect();
        set.sort();
        set.dedup_by(|a, b| a.user_id == b.user_id && a.emoji == b.emoji);
        let stale: Vec<usize> = self
            .episodes
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.removed_at.is_none()
                    && !set
                        .iter()
                        .any(|r| r.user_id == e.user_id && r.emoji == e.emoji)
            })
            .map(|(i, _)| i)
            .collect();
        for i in stale {
            self.remove(i, observed_at, None, events);
        }
        for r in set {
            let episode = Episode::new(conversation_id, message_id, r, observed_at);
            self.add(episode, None, events);
        }
    }

    /// One change from a reaction feed.
    pub fn apply_change(
        &mut self,
        obs: &ReactionObservation,
        observed_at: DateTime<Utc>,
        events: &mut Vec<EventDraft>,
    ) {
        let at = obs.at.unwrap_or(observed_at);
        if obs.present {
            if obs.one_per_user {
                let others: Vec<usize> = self
                    .episodes
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        e.removed_at.is_none() && e.user_id == obs.user_id && e.emoji != obs.emoji
                    })
                    .map(|(i, _)| i)
                    .collect();
                for i in others {
                    self.remove(i, at, obs.at, events);
                }
            }
            let state = ReactionState {
                user_id: obs.user_id.clone(),
                user_name: obs.user_name.clone(),
                emoji: obs.emoji.clone(),
            };
            let episode = Episode::new(&obs.conversation_id, &obs.message_id, &state, at);
            self.add(episode, obs.at, events);
        } else if let Some(i) = self.open_index(&obs.user_id, &obs.emoji) {
            self.remove(i, at, obs.at, events);
        }
    }
}

/// What the store holds about a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationState {
    pub conversation: ConversationObservation,
}

/// Compare a conversation observation with the held state; `None` held means new.
/// Returns the event, if anything changed, and updates `held`.
pub fn apply_conversation(
    held: &mut Option<ConversationObservation>,
    obs: &ConversationObservation,
) -> Option<EventDraft> {
    match held {
        None => {
            *held = Some(obs.clone());
            Some(EventDraft {
                kind: "conversation_created",
                conversation_id: obs.conversation_id.clone(),
                message_id: None,
                occurred_at: None,
                detail: json!({
                    "conversation_type": obs.conversation_type.as_str(),
                    "name": obs.name,
                    "metadata": obs.metadata,
                }),
            })
        }
        Some(h) => {
            let mut changed = serde_json::Map::new();
            if h.conversation_type != obs.conversation_type {
                changed.insert(
                    "conversation_type".into(),
                    json!({"from": h.conversation_type.as_str(), "to": obs.conversation_type.as_str()}),
                );
            }
            // A name upstream no longer sends is kept, not erased.
            if obs.name.is_some() && h.name != obs.name {
                changed.insert("name".into(), json!({"from": h.name, "to": obs.name}));
            }
            if !obs.metadata.is_null() && h.metadata != obs.metadata {
                changed.insert(
                    "metadata".into(),
                    json!({"from": h.metadata, "to": obs.metadata}),
                );
            }
            if changed.is_empty() {
                return None;
            }
            h.conversation_type = obs.conversation_type;
            if obs.name.is_some() {
                h.name = obs.name.clone();
            }
            if !obs.metadata.is_null() {
                h.metadata = obs.metadata.clone();
            }
            Some(EventDraft {
                kind: "conversation_changed",
                conversation_id: obs.conversation_id.clone(),
                message_id: None,
                occurred_at: None,
                detail: Value::Object(changed),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageKind;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn content(text: &str) -> Content {
        Content {
            kind: MessageKind::Text,
            text: text.to_string(),
            content: json!({}),
        }
    }

    fn obs(text: &str) -> MessageObservation {
        MessageObservation {
            conversation_id: "c".into(),
            message_id: "m".into(),
            header: Some(MessageHeader {
                seq: Some(1),
                sender_id: Some("u".into()),
                sender_name: None,
                sent_at: t(0),
                reply_to: None,
            }),
            content: Some(content(text)),
            edited_at: None,
            earlier_versions: vec![],
            recalled: None,
            deleted: None,
            reactions: None,
            raw: json!({"text": text}),
        }
    }

    #[test]
    fn same_content_again_changes_nothing() {
        let mut st = None;
        let first = apply_message(&mut st, &obs("hi"), t(1)).unwrap();
        assert!(first.created);
        assert_eq!(first.events.len(), 1);
        let again = apply_message(&mut st, &obs("hi"), t(2)).unwrap();
        assert_eq!(again, MessageOutcome::default());
    }

    #[test]
    fn a_version_digested_in_the_earlier_number_spelling_is_not_an_edit() {
        let mut st = None;
        let mut o = obs("hi");
        o.content.as_mut().unwrap().content = serde_json::from_str(r#"{"ratio": 1.5e-7}"#).unwrap();
        apply_message(&mut st, &o, t(1)).unwrap();
        // as a store written before numbers followed PostgreSQL holds it
        let mut held = st.clone().unwrap();
        let legacy = content_hash_as(o.content.as_ref().unwrap(), Numbers::Legacy);
        assert_ne!(held.version_hashes[0], legacy);
        held.version_hashes = vec![legacy];
        o.raw = json!({"text": "hi", "seen": 2});
        let out = apply_message(&mut Some(held), &o, t(2)).unwrap();
        assert!(out.versions.is_empty(), "{out:?}");
        assert!(!out.changed);
    }

    #[test]
    fn an_edit_adds_a_version_and_keeps_the_original() {
        let mut st = None;
        apply_message(&mut st, &obs("hi"), t(1)).unwrap();
        let mut edited = obs("hello");
        edited.edited_at = Some(t(5));
        let out = apply_message(&mut st, &edited, t(6)).unwrap();
        assert!(out.changed);
        assert_eq!(out.versions.len(), 1);
        assert_eq!(out.versions[0].version, 2);
        assert_eq!(out.versions[0].edited_at, Some(t(5)));
        assert_eq!(out.events[0].kind, "message_edited");
        let st = st.unwrap();
        assert_eq!(st.current_version, 2);
        assert_eq!(st.version_hashes[0], content_hash(&content("hi")));
    }

    #[test]
    fn recall_with_blanked_content_keeps_the_original() {
        let mut st = None;
        apply_message(&mut st, &obs("secret plan"), t(1)).unwrap();
        let mut recalled = obs("");
        recalled.recalled = Some(Mark {
            at: Some(t(9)),
            by: Some("u".into()),
            reason: None,
        });
        let out = apply_message(&mut st, &recalled, t(10)).unwrap();
        assert!(out.versions.is_empty());
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].kind, "message_recalled");
        let st = st.unwrap();
        assert_eq!(st.current_version, 1);
        assert_eq!(st.recalled.as_ref().unwrap().at, Some(t(9)));
        // and later blank observations do not add versions either
        let out = apply_message(&mut Some(st), &obs(""), t(11)).unwrap();
        assert!(out.versions.is_empty());
    }

    #[test]
    fn first_sight_after_edits_records_the_reported_history() {
        let mut o = obs("v3");
        o.earlier_versions = vec![
            EarlierVersion {
                content: content("v1"),
                replaced_at: Some(t(2)),
                known_fields: None,
            },
            EarlierVersion {
                content: content("v2"),
                replaced_at: Some(t(3)),
                known_fields: None,
            },
        ];
        let mut st = None;
        let out = apply_message(&mut st, &o, t(4)).unwrap();
        let texts: Vec<_> = out
            .versions
            .iter()
            .map(|v| v.content.text.as_str())
            .collect();
        assert_eq!(texts, ["v1", "v2", "v3"]);
        assert_eq!(out.versions[0].edited_at, None);
        assert_eq!(out.versions[1].edited_at, Some(t(2)));
        assert_eq!(out.versions[2].edited_at, Some(t(3)));
        let kinds: Vec<_> = out.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["message_created", "message_edited", "message_edited"]
        );
        // the same observation again is a no-op
        let again = apply_message(&mut st, &o, t(5)).unwrap();
        assert!(again.versions.is_empty() && again.events.is_empty());
    }

    /// A text message with a mention, as a connector normalises it.
    fn mentioning(text: &str, buttons: Option<Value>) -> Content {
        let mut c = json!({"text": text, "mentions": ["u2"]});
        if let Some(b) = buttons {
            c["buttons"] = b;
        }
        Content {
            kind: MessageKind::Text,
            text: text.to_string(),
            content: c,
        }
    }

    #[test]
    fn an_earlier_version_known_in_part_is_the_held_version_it_matches_there() {
        // held: version 1 with a mention and buttons, as first archived
        let mut st = None;
        let mut first = obs("hi");
        first.content = Some(mentioning("hi", Some(json!([[{"text": "ok"}]]))));
        apply_message(&mut st, &first, t(1)).unwrap();
        if let Some(st) = &mut st {
            // what the store loads for an observation with partial earlier versions
            st.versions = Some(vec![mentioning("hi", Some(json!([[{"text": "ok"}]])))]);
        }
        // edited: new text, and the edit also dropped the buttons. The edit record says
        // only the old text; the connector filled in the rest from the current version,
        // which has no buttons, so in full it equals no held version.
        let reported = EarlierVersion {
            content: mentioning("hi", None),
            replaced_at: Some(t(5)),
            known_fields: Some(vec!["/text".into()]),
        };
        let mut edited = obs("hello");
        edited.content = Some(mentioning("hello", None));
        edited.edited_at = Some(t(5));
        edited.earlier_versions = vec![reported.clone()];
        edited.raw = json!({"text": "hello"});
        let out = apply_message(&mut st, &edited, t(6)).unwrap();
        let texts: Vec<_> = out
            .versions
            .iter()
            .map(|v| v.content.text.as_str())
            .collect();
        assert_eq!(texts, ["hello"], "no second copy of version 1");
        assert_eq!(st.as_ref().unwrap().current_version, 2);

        // the same report known in full is a version of its own (it differs from v1)
        let mut st2 = None;
        apply_message(&mut st2, &first, t(1)).unwrap();
        let mut full = edited.clone();
        full.earlier_versions[0].known_fields = None;
        let out = apply_message(&mut st2, &full, t(6)).unwrap();
        assert_eq!(out.versions.len(), 2);

        // and a part that differs (another old text) is a version that was not held
        let mut st3 = st.clone();
        let mut other = edited.clone();
        other.earlier_versions = vec![EarlierVersion {
            content: mentioning("something else", None),
            ..reported
        }];
        other.content = Some(mentioning("third", None));
        other.raw = json!({"text": "third"});
        let out = apply_message(&mut st3, &other, t(7)).unwrap();
        let texts: Vec<_> = out
            .versions
            .iter()
            .map(|v| v.content.text.as_str())
            .collect();
        assert_eq!(texts, ["something else", "third"]);
    }

    #[test]
    fn an_unseen_version_reported_later_takes_its_time_from_the_version_before_it() {
        let mut st = None;
        apply_message(&mut st, &obs("v1"), t(1)).unwrap();
        let mut o = obs("v3");
        o.edited_at = Some(t(30));
        o.earlier_versions = vec![
            EarlierVersion {
                content: content("v1"),
                replaced_at: Some(t(20)),
                known_fields: None,
            },
            EarlierVersion {
                content: content("v2"),
                replaced_at: Some(t(30)),
                known_fields: None,
            },
        ];
        let out = apply_message(&mut st, &o, t(99)).unwrap();
        let got: Vec<_> = out
            .versions
            .iter()
            .map(|v| (v.content.text.as_str(), v.edited_at))
            .collect();
        assert_eq!(got, [("v2", Some(t(20))), ("v3", Some(t(30)))]);
    }

    #[test]
    fn a_change_for_an_unknown_message_is_refused() {
        let mut o = obs("x");
        o.header = None;
        let err = apply_message(&mut None, &o, t(1)).unwrap_err();
        assert!(matches!(err, DiffError::UnknownMessage { .. }));
    }

    #[test]
    fn reactions_are_episodes() {
        let mut book = ReactionBook::default();
        let mut events = vec![];
        let change = |present| ReactionObservation {
            conversation_id: "c".into(),
            message_id: "m".into(),
            user_id: "u".into(),
            user_name: None,
            emoji: "👍".into(),
            present,
            one_per_user: false,
            at: None,
        };
        book.apply_change(&change(true), t(1), &mut events);
        book.apply_change(&change(true), t(2), &mut events); // already stands
        book.apply_change(&change(false), t(3), &mut events);
        book.apply_change(&change(false), t(4), &mut events); // already removed
        book.apply_change(&change(true), t(5), &mut events);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["reaction_added", "reaction_removed", "reaction_added"]
        );
        assert_eq!(book.episodes.len(), 2);
        assert_eq!(book.episodes[0].removed_at, Some(t(3)));
        assert_eq!(book.episodes[1].removed_at, None);
    }

    #[test]
    fn one_reaction_per_user_replaces_the_previous_emoji() {
        let mut book = ReactionBook::default();
        let mut events = vec![];
        let mut o = ReactionObservation {
            conversation_id: "c".into(),
            message_id: "m".into(),
            user_id: "u".into(),
            user_name: None,
            emoji: "👍".into(),
            present: true,
            one_per_user: true,
            at: None,
        };
        book.apply_change(&o, t(1), &mut events);
        o.emoji = "❤".into();
        book.apply_change(&o, t(2), &mut events);
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["reaction_added", "reaction_removed", "reaction_added"]
        );
    }

    #[test]
    fn a_reaction_set_closes_what_is_gone() {
        let mut book = ReactionBook::default();
        let mut events = vec![];
        let r = |u: &str, e: &str| ReactionState {
            user_id: u.into(),
            user_name: None,
            emoji: e.into(),
        };
        book.apply_set("c", "m", &[r("a", "x"), r("b", "y")], t(1), &mut events);
        book.apply_set("c", "m", &[r("b", "y"), r("a", "x")], t(2), &mut events);
        assert_eq!(events.len(), 2);
        book.apply_set("c", "m", &[r("b", "y")], t(3), &mut events);
        assert_eq!(events.last().unwrap().kind, "reaction_removed");
        assert_eq!(events.len(), 3);
    }

    proptest! {
        /// Any sequence of observations of one message yields one version per run of equal
        /// contents, in order, and an event per version; marks freeze the content.
        #[test]
        fn versions_follow_the_distinct_contents_seen(
            steps in proptest::collection::vec((0u8..4, proptest::bool::weighted(0.1)), 1..30)
        ) {
            let mut st = None;
            let mut expected: Vec<String> = Vec::new();
            let mut frozen = false;
            let mut all_events = 0usize;
            let mut all_versions = Vec::new();
            for (i, (text_id, recall)) in steps.iter().enumerate() {
                let text = format!("text {text_id}");
                let mut o = obs(&text);
                if *recall {
                    o.recalled = Some(Mark::default());
                }
                let out = apply_message(&mut st, &o, t(i as i64)).unwrap();
                let will_freeze = frozen || *recall;
                if expected.is_empty() || (!will_freeze && expected.last() != Some(&text)) {
                    expected.push(text.clone());
                }
                frozen = will_freeze;
                all_events += out.events.len();
                all_versions.extend(out.versions);
            }
            let got: Vec<String> = all_versions.iter().map(|v| v.content.text.clone()).collect();
            prop_assert_eq!(&got, &expected);
            let numbers: Vec<i32> = all_versions.iter().map(|v| v.version).collect();
            let want: Vec<i32> = (1..=expected.len() as i32).collect();
            prop_assert_eq!(numbers, want);
            let recalls = usize::from(frozen);
            prop_assert_eq!(all_events, expected.len() + recalls);
            prop_assert_eq!(st.unwrap().current_version as usize, expected.len());
        }
    }
}
