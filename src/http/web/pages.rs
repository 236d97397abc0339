//! The HTML of every page. maud escapes every interpolated value; nothing here builds
//! markup from strings.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use super::attachments::{attachment_href, download_name, inline_type};
use super::search::Results;
use super::SearchForm;
use crate::index::search::fragments;
use crate::index::SearchHit;
use crate::store::browse::{
    AttachmentView, ConversationSummary, MessageSlice, MessageView, QuarantineView, ReactionView,
    RunView,
};
use crate::store::SourceStatus;

const STYLE: &str = include_str!("style.css");

/// A page around `body`; `sign_out`: show the sign-out button (a token is configured).
pub(super) fn layout(title: &str, active: &str, sign_out: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="zh-Hans" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · chatvault" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header.top {
                    a.brand href="/" { "chatvault" }
                    nav {
                        a href="/" class=[(active == "search").then_some("on")] { "Search" }
                        a href="/conversations" class=[(active == "conversations").then_some("on")] { "Conversations" }
                        a href="/status" class=[(active == "status").then_some("on")] { "Status" }
                    }
                    @if sign_out {
                        form.signout method="post" action="/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// `2026-11-23 16:05:03 UTC`, with the exact instant in the tooltip.
pub(super) fn time(t: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) {
            (t.format("%Y-%m-%d %H:%M:%S").to_string()) " UTC"
        }
    }
}

pub(super) fn opt_time(t: &Option<DateTime<Utc>>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// `/c/{source}/{conversation}`, with both parts percent-encoded.
pub fn conversation_href(source: &str, conversation: &str) -> String {
    format!("/c/{}/{}", encode(source), encode(conversation))
}

/// Percent-encode everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn error(title: &str, message: &str) -> Markup {
    layout(
        title,
        "",
        false,
        html! {
            h1 { (title) }
            p { (message) }
            p { a href="/" { "Back to search" } }
        },
    )
}

pub fn login(next: &str, problem: Option<&str>) -> Markup {
    layout(
        "Sign in",
        "",
        false,
        html! {
            h1 { "Sign in" }
            p { "This archive needs the server token (" code { "server.token" } ")." }
            @if let Some(p) = problem { p.problem { (p) } }
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label { "Token " input type="password" name="token" autocomplete="current-password" required; }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn search(
    form: &SearchForm,
    sources: &[String],
    results: Option<&Results>,
    sign_out: bool,
) -> Markup {
    let title = if form.q.trim().is_empty() {
        "Search".to_string()
    } else {
        format!("{} – Search", form.q.trim())
    };
    layout(
        &title,
        "search",
        sign_out,
        html! {
            form.search method="get" action="/" role="search" {
                div.q {
                    input type="search" name="q" value=(form.q) placeholder="words, \"a phrase\", -exclude, OR" autofocus aria-label="Search";
                    button type="submit" { "Search" }
                }
                details.filters open[has_filters(form)] {
                    summary { "Filters" }
                    div.grid {
                        label { "Source "
                            select name="source" {
                                option value="" { "all" }
                                @for s in sources {
                                    option value=(s) selected[form.source == *s] { (s) }
                                }
                            }
                        }
                        label { "Conversation " input name="conversation" value=(form.conversation) placeholder="id"; }
                        label { "Sender " input name="sender" value=(form.sender) placeholder="user id"; }
                        label { "Since " input type="date" name="since" value=(form.since); }
                        label { "Until " input type="date" name="until" value=(form.until); }
                        label { "Order "
                            select name="sort" {
                                option value="newest" selected[form.sort != "relevance"] { "newest first" }
                                option value="relevance" selected[form.sort == "relevance"] { "best match first" }
                            }
                        }
                        label.check { input type="checkbox" name="include_recalled" value="1" checked[form.include_recalled.is_some()]; " include recalled and deleted" }
                        label.check { input type="checkbox" name="history" value="1" checked[form.history.is_some()]; " also what edited messages used to say" }
                    }
                }
            }
            @match results {
                None => {
                    p.muted { "Search every archived message; Chinese works as typed (" code { "会议" } ", " code { "发票 OR invoice" } ")." }
                }
                Some(Err(problem)) => { p.problem { (problem) } }
                Some(Ok(page)) => {
                    @if page.hits.is_empty() {
                        p.muted { "No message matches." }
                    } @else {
                        p.muted { (page.total) " matching message" @if page.total != 1 { "s" } }
                        ol.hits {
                            @for hit in &page.hits { (search_hit(hit)) }
                        }
                    }
                    @if let Some(cursor) = &page.next_cursor {
                        p.pager { a rel="next" href=(next_search_href(form, cursor)) { "More results →" } }
                    }
                }
            }
        },
    )
}

fn has_filters(form: &SearchForm) -> bool {
    !(form.source.is_empty()
        && form.conversation.is_empty()
        && form.sender.is_empty()
        && form.since.is_empty()
        && form.until.is_empty()
        && form.include_recalled.is_none()
        && form.history.is_none()
        && (form.sort.is_empty() || form.sort == "newest"))
}

fn next_search_href(form: &SearchForm, cursor: &str) -> String {
    let mut pairs = vec![("q", form.q.as_str())];
    for (k, v) in [
        ("source", &form.source),
        ("conversation", &form.conversation),
        ("sender", &form.sender),
        ("since", &form.since),
        ("until", &form.until),
    ] {
        if !v.is_empty() {
            pairs.push((k, v.as_str()));
        }
    }
    if form.include_recalled.is_some() {
        pairs.push(("include_recalled", "1"));
    }
    if form.history.is_some() {
        pairs.push(("history", "1"));
    }
    if !form.sort.is_empty() {
        pairs.push(("sort", form.sort.as_str()));
    }
    pairs.push(("cursor", cursor));
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("/?{}", query.join("&"))
}

fn search_hit(hit: &SearchHit) -> Markup {
    let href = format!(
        "{}?around={}#m-{}",
        conversation_href(&hit.source, &hit.conversation_id),
        encode(&hit.message_id),
        anchor(&hit.message_id)
    );
    html! {
        li.hit {
            div.meta {
                a.conv href=(href) { (hit.conversation_name.as_deref().unwrap_or(&hit.conversation_id)) }
                " · " span.sender title=[hit.sender_id.as_deref()] {
                    (hit.sender_name.as_deref().or(hit.sender_id.as_deref()).unwrap_or("system"))
                }
                " · " (time(&hit.sent_at))
                " · " span.kind { (hit.kind) } " · " span.muted { (hit.source) }
                @if hit.flags.edited { " " span.mark.edited { "edited" } }
                @if hit.flags.recalled { " " span.mark.recalled { "recalled" } }
                @if hit.flags.deleted { " " span.mark.deleted { "deleted" } }
            }
            p.text {
                @for (fragment, matched) in fragments(&hit.text, &hit.highlights, 240) {
                    @if matched { mark { (fragment) } } @else { (fragment) }
                }
            }
        }
    }
}

/// An HTML id for a message: ids may hold any character.
fn anchor(message_id: &str) -> String {
    encode(message_id)
}

pub fn conversations(list: &[ConversationSummary], source: Option<&str>, sign_out: bool) -> Markup {
    layout(
        "Conversations",
        "conversations",
        sign_out,
        html! {
            h1 { "Conversations" @if let Some(s) = source { " of " (s) } }
            @if list.is_empty() {
                p.muted { "Nothing archived yet: run " code { "chatvault sync" } "." }
            } @else {
                table.list {
                    thead { tr { th { "Conversation" } th { "Type" } th { "Source" } th.num { "Messages" } th { "Last message" } } }
                    tbody {
                        @for c in list {
                            tr {
                                td { a href=(conversation_href(&c.source, &c.conversation_id)) { (c.title()) } }
                                td { (c.conversation_type) }
                                td { a href={ "/conversations?source=" (encode(&c.source)) } { (c.source) } }
                                td.num { (c.message_count) }
                                td { (opt_time(&c.last_message_at)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A conversation page; with `as_of`, as it stood then (every link keeps it).
pub fn conversation(
    summary: &ConversationSummary,
    window: &MessageSlice,
    highlight: Option<&str>,
    activity: Option<Markup>,
    as_of: Option<DateTime<Utc>>,
    sign_out: bool,
) -> Markup {
    let base = conversation_href(&summary.source, &summary.conversation_id);
    let as_of_text = as_of.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    let keep = as_of_text
        .as_deref()
        .map(|t| format!("&as_of={}", encode(t)))
        .unwrap_or_default();
    let newest = match &as_of_text {
        Some(t) => format!("{base}?as_of={}", encode(t)),
        None => base.clone(),
    };
    let pager = html! {
        nav.pager {
            @if window.has_older {
                @if let Some(first) = window.messages.first() {
                    a rel="prev" href={ (base) "?before=" (encode(&first.position.encode())) (keep) } { "← Older" }
                }
            }
            @if window.has_newer {
                @if let Some(last) = window.messages.last() {
                    a rel="next" href={ (base) "?after=" (encode(&last.position.encode())) (keep) } { "Newer →" }
                }
                a href=(newest) { "Newest" }
            }
        }
    };
    let as_of_form = html! {
        form.asof method="get" action=(base) {
            label {
                "As of "
                input type="text" name="as_of" value=[as_of_text.as_deref()]
                    placeholder="2026-11-01T12:00:00Z or 2026-11-01" size="24";
            }
            " " button type="submit" { "Show" }
            @if as_of.is_some() { " " a href=(base) { "Current state" } }
        }
        @if let Some(t) = &as_of {
            p.asof-note {
                "As it stood at " (time(t)) ": messages sent later are left out; each message shows the version current then, and recalls, deletions and reactions only as far as they had happened."
            }
        }
    };
    layout(
        summary.title(),
        "conversations",
        sign_out,
        html! {
            h1 { (summary.title()) }
            p.muted {
                (summary.conversation_type) " · " (summary.platform) " · source " (summary.source)
                " · id " code { (summary.conversation_id) }
                " · " (summary.message_count) " messages"
                @if let (Some(a), Some(b)) = (&summary.first_message_at, &summary.last_message_at) {
                    " · " (time(a)) " – " (time(b))
                }
            }
            @if let Some(chart) = activity {
                figure.chart { (chart) }
            }
            (as_of_form)
            (pager)
            @if window.messages.is_empty() {
                p.muted { "No messages archived in this conversation." }
            }
            ol.messages {
                @for m in &window.messages { (message(summary, m, highlight == Some(m.message_id.as_str()))) }
            }
            (pager)
        },
    )
}

fn message(summary: &ConversationSummary, m: &MessageView, highlighted: bool) -> Markup {
    let classes = [
        Some("msg"),
        highlighted.then_some("hl"),
        m.recalled_at.is_some().then_some("recalled"),
        m.deleted_at.is_some().then_some("deleted"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    html! {
        li class=(classes) id={ "m-" (anchor(&m.message_id)) } {
            div.meta {
                span.sender title=[m.sender_id.as_deref()] {
                    (m.sender_name.as_deref().or(m.sender_id.as_deref()).unwrap_or("system"))
                }
                " " (time(&m.sent_at))
                @if m.kind != "text" { " " span.kind { (m.kind) } }
                @if let Some(seq) = m.seq { " " span.muted title="seq" { "#" (seq) } }
                @if m.edit_count > 0 {
                    " " span.mark.edited title="edited" {
                        "edited " (m.edit_count) "×"
                        @if let Some(t) = &m.edited_at { ", last " (t.format("%Y-%m-%d %H:%M").to_string()) }
                    }
                }
                @if let Some(t) = &m.recalled_at {
                    " " span.mark.recalled {
                        "recalled " (t.format("%Y-%m-%d %H:%M").to_string())
                        @if let Some(by) = &m.recalled_by { " by " (by) }
                    }
                }
                @if let Some(t) = &m.deleted_at {
                    " " span.mark.deleted { "deleted " (t.format("%Y-%m-%d %H:%M").to_string()) }
                }
            }
            @if let Some(reply_to) = &m.reply_to {
                blockquote.reply {
                    a href={ "#m-" (anchor(reply_to)) } { "↪ reply to " }
                    @match &m.reply {
                        Some((sender, text)) => {
                            b { (sender.as_deref().unwrap_or("?")) } ": "
                            (truncate(text.as_deref().unwrap_or(""), 140))
                        }
                        None => { span.muted { "message " (reply_to) " (not archived)" } }
                    }
                }
            }
            @if let Some(text) = m.text.as_deref().filter(|t| !t.is_empty()) {
                p.text { (text) }
            }
            @if m.attachments.is_empty() {
                (attachments(&m.content))
            } @else {
                (archived_attachments(summary, &m.attachments))
            }
            @if !m.reactions.is_empty() { (reactions(&m.reactions)) }
            @if m.versions.len() > 1 {
                details.versions {
                    summary { "Version history (" (m.versions.len()) " versions)" }
                    ol {
                        @for v in &m.versions {
                            li {
                                div.meta {
                                    "v" (v.version) " · "
                                    @match &v.edited_at {
                                        Some(t) => { "edited " (time(t)) }
                                        None => { "original" }
                                    }
                                    " · archived " (time(&v.observed_at))
                                }
                                p.text { (v.text.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max_chars).collect();
    t.push('…');
    t
}

/// Links and file facts found in normalised content: every `*url` string (a link only when
/// it is http(s); anything else, `javascript:` included, is shown as text), with `name` and
/// `size` where present.
fn attachments(content: &Value) -> Markup {
    let Some(obj) = content.as_object() else {
        return html! {};
    };
    let urls: Vec<(&str, &str)> = obj
        .iter()
        .filter(|(k, _)| k.ends_with("url") || k.ends_with("Url") || k.as_str() == "src")
        .filter_map(|(k, v)| v.as_str().map(|s| (k.as_str(), s)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let name = obj.get("name").and_then(Value::as_str);
    let size = obj.get("size").and_then(Value::as_u64);
    if urls.is_empty() && name.is_none() {
        return html! {};
    }
    html! {
        div.attach {
            @if let Some(n) = name { span { "📎 " (n) } }
            @if let Some(s) = size { " " span.muted { (human_size(s)) } }
            @for (key, url) in &urls {
                " "
                @if is_web_url(url) {
                    a href=(url) rel="noopener noreferrer nofollow" target="_blank" { (key) }
                } @else {
                    span.muted { (key) ": " code { (url) } }
                }
            }
        }
    }
}

/// The attachments the archive records for a message: a stored image inline (served by
/// this server), another stored file as a download link with its name and size, and one
/// whose file is not stored as its status, with where upstream keeps it as text (never a
/// link: the page loads and links nothing outside this server for them).
fn archived_attachments(summary: &ConversationSummary, all: &[AttachmentView]) -> Markup {
    html! {
        div.files {
            @for a in all {
                @let href = attachment_href(&summary.source, &summary.conversation_id, &a.message_id, a.ordinal);
                @let name = download_name(a);
                @let size = a.size.filter(|s| *s >= 0).map(|s| human_size(s as u64));
                @let image = inline_type(a.mime.as_deref()).is_some_and(|t| t.starts_with("image/"));
                @if a.is_stored() && image {
                    figure.att {
                        a href=(href) {
                            img src=(href) alt=(a.name.as_deref().unwrap_or(&a.kind)) loading="lazy"
                                width=[a.width.filter(|w| *w > 0)] height=[a.height.filter(|h| *h > 0)];
                        }
                        figcaption.muted {
                            (a.name.as_deref().unwrap_or(&a.kind))
                            @if let Some(s) = &size { " · " (s) }
                        }
                    }
                } @else if a.is_stored() {
                    p.att {
                        a.download href=(href) download=(name) { "📎 " (name) }
                        @if let Some(s) = &size { " " span.muted { (s) } }
                        " " span.muted { (a.kind) }
                    }
                } @else {
                    p.att {
                        span class={ "att-status " (a.status) } title=(status_meaning(&a.status)) { (a.status) }
                        " " (a.kind)
                        @if let Some(n) = &a.name { " " (n) }
                        @if let Some(s) = &size { " " span.muted { (s) } }
                        " · " span.muted { "upstream " code { (a.upstream_url) } }
                        @if let Some(e) = a.error.as_deref().filter(|_| a.status != "stored") {
                            " " span.muted { "(" (truncate(e, 200)) ")" }
                        }
                    }
                }
            }
        }
    }
}

/// What an attachment's status means, for the tooltip.
fn status_meaning(status: &str) -> &'static str {
    match status {
        "pending" => "not downloaded yet",
        "failed" => "the download failed; it will be tried again",
        "too_large" => "larger than the configured size limit, so not kept",
        "gone" => "upstream no longer has it (not found or expired)",
        "skipped" => "attachments of this kind are not downloaded (attachments.kinds)",
        "stored" => "kept, but its file is not recorded",
        _ => "",
    }
}

fn is_web_url(s: &str) -> bool {
    let lower = s.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn reactions(all: &[ReactionView]) -> Markup {
    let mut standing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in all.iter().filter(|r| r.removed_at.is_none()) {
        standing
            .entry(r.emoji.as_str())
            .or_default()
            .push(r.user_name.as_deref().unwrap_or(&r.user_id));
    }
    let removed = all.iter().filter(|r| r.removed_at.is_some()).count();
    html! {
        div.reactions {
            @for (emoji, users) in &standing {
                span.reaction title=(users.join(", ")) { (emoji) " " (users.len()) }
            }
            @if removed > 0 {
                details.inline {
                    summary { (removed) " removed" }
                    ul {
                        @for r in all.iter().filter(|r| r.removed_at.is_some()) {
                            li {
                                (r.emoji) " " (r.user_name.as_deref().unwrap_or(&r.user_id))
                                " · " (time(&r.reacted_at)) " – " (opt_time(&r.removed_at))
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn status(
    sources: &[SourceStatus],
    runs: &[RunView],
    quarantine: &[QuarantineView],
    charts: &BTreeMap<String, Markup>,
    proofs: &std::collections::BTreeMap<String, crate::store::upstream::LastProof>,
    now: DateTime<Utc>,
    sign_out: bool,
) -> Markup {
    layout(
        "Status",
        "status",
        sign_out,
        html! {
            h1 { "Status" }
            p { a href="/coverage" { "Coverage" } ": what is archived of each conversation, every known gap with its reason, and what the archive cannot know." }
            @if sources.is_empty() {
                p.muted { "No source archived yet." }
            }
            div.cards {
                @for s in sources {
                    section.card {
                        h2 { a href={ "/conversations?source=" (encode(&s.source)) } { (s.source) } " " span.muted { (s.platform) } }
                        @let last = s.last_run.as_ref();
                        @let state = last.map(|r| r.status.as_str()).unwrap_or("never run");
                        p { span class={ "state " (state) } { (state) }
                            @if s.failures_in_a_row > 0 { " · " span.problem { (s.failures_in_a_row) " failures in a row" } }
                        }
                        dl {
                            dt { "Messages" } dd { (s.messages) " in " (s.conversations) " conversations" }
                            dt { "Versions / reactions" } dd { (s.versions) " / " (s.reactions) }
                            dt { "Events" } dd { (s.events) }
                            dt { "Last success" } dd { (opt_time(&s.last_success_at))
                                @if let Some(lag) = s.lag_seconds { " (" (human_duration(lag)) " ago)" } }
                            dt { "Newest message" } dd { (opt_time(&s.newest_message_at)) }
                            dt { "Next run" } dd { (opt_time(&s.next_run_at)) }
                            @if let Some(push) = &s.push {
                                dt { "Push channel" } dd class=[(!push.healthy).then_some("problem")] {
                                    (if push.state.connected { "connected" } else { "down" })
                                    " since " (opt_time(&push.state.since))
                                    " · " (push.state.pushes) " pushes, " (push.state.reconnects) " reconnects"
                                    @if let Some(lag) = push.lag_seconds { " · lag " (format!("{lag:.1}")) " s" }
                                    @if let Some(err) = push.state.last_error.as_deref() {
                                        @if !push.state.connected { " · " (err) }
                                    }
                                }
                            }
                            dt { "Quarantine" } dd class=[(s.quarantine > 0).then_some("problem")] { (s.quarantine) }
                            dt { "Seq gaps" } dd { (s.gaps) }
                            dt { "Chain head" } dd { code.wrap { (s.chain_head) } }
                            dt { "Proven against upstream" } dd {
                                @match proofs.get(&s.source) {
                                    Some(p) => {
                                        (time(&p.observed_at)) " (event " (p.event_seq) ": "
                                        (p.detail["checked"]) " checked, " (p.detail["drifted"]) " drifted)"
                                    }
                                    None => { span.muted { "never (" code { "verify --upstream" } ")" } }
                                }
                            }
                        }
                        @if let Some(err) = last.and_then(|r| r.error.as_deref()) {
                            p.problem { "Last error: " (err) }
                        }
                        @if let Some(chart) = charts.get(&s.source) {
                            figure.chart { (chart) }
                        }
                    }
                }
            }
            h2 { "Recent runs" }
            @if runs.is_empty() { p.muted { "No runs yet." } } @else {
                table.list {
                    thead { tr { th { "Source" } th { "Started" } th { "Took" } th { "Status" } th.num { "New" } th.num { "Changed" } th.num { "Requests" } th { "Error" } } }
                    tbody {
                        @for r in runs {
                            tr {
                                td { (r.source) }
                                td { (time(&r.started_at)) }
                                td { (took((r.finished_at.unwrap_or(now) - r.started_at).num_milliseconds())) }
                                td { span class={ "state " (r.status) } { (r.status) } }
                                td.num { (r.messages_new) }
                                td.num { (r.messages_changed) }
                                td.num { (r.requests) }
                                td { (r.error.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
            h2 { "Quarantine" }
            @if quarantine.is_empty() { p.muted { "Nothing quarantined." } } @else {
                table.list {
                    thead { tr { th { "Source" } th { "Observed" } th { "Reason" } th { "Raw" } } }
                    tbody {
                        @for q in quarantine {
                            tr {
                                td { (q.source) }
                                td { (time(&q.observed_at)) }
                                td { (q.reason) }
                                td { code.wrap { (truncate(&q.raw.as_ref().map(Value::to_string).unwrap_or_default(), 300)) } }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A run's duration: tenths of a second under a minute.
fn took(millis: i64) -> String {
    if millis < 60_000 {
        format!("{:.1} s", millis.max(0) as f64 / 1000.0)
    } else {
        human_duration(millis / 1000)
    }
}

fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_urls_become_links() {
        let m = attachments(&serde_json::json!({
            "url": "javascript:alert(1)",
            "cover_url": "https://cdn.example/c.jpg",
            "name": "<b>report</b>.pdf",
            "size": 2048
        }))
        .into_string();
        assert!(!m.contains("href=\"javascript"), "{m}");
        assert!(m.contains("href=\"https://cdn.example/c.jpg\""), "{m}");
        assert!(m.contains("&lt;b&gt;report&lt;/b&gt;.pdf"), "{m}");
        assert!(m.contains("2.0 KiB"), "{m}");
    }

    #[test]
    fn path_parts_are_percent_encoded() {
        assert_eq!(
            conversation_href("acme yx", "u1|2|群/9"),
            "/c/acme%20yx/u1%7C2%7C%E7%BE%A4%2F9"
        );
    }
}
