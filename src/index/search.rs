//! Search: [`SearchRequest`] → [`SearchPage`], the one implementation behind
//! `chatvault search`, `GET /api/search` and the web page.
//!
//! Newest-first is a total order, `(sent_at, key hash)` descending, and its cursor is the
//! last hit's place in it, so paging never repeats or skips a hit while the index grows.
//! Relevance pages by offset, at most [`MAX_RELEVANCE_DEPTH`] hits deep (ranking deeper
//! costs memory in proportion to the depth). A cursor is tied to its query and filters:
//! reusing it for another search is an error. Cursors are opaque to clients and signed
//! (HMAC-SHA256 with a key kept in the index directory, see [`SearchIndex::cursor_key`]): a
//! cursor this server did not give is refused before anything in it is used.

use std::ops::Bound;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{DocAddress, DocId, SegmentReader, TantivyDocument, Term};

use super::query::{self, ParsedQuery, QueryError};
use super::{key_hash, tokenizer, SearchIndex};

/// A hit before its document is read: where it is, its score, its place in newest-first.
type Ranked = (DocAddress, Option<f32>, (i64, u64));

/// At most this many hits per page.
pub const MAX_LIMIT: usize = 1000;

/// How deep relevance-sorted results page: offset plus page size. Newest-first pages by
/// position, without a bound.
pub const MAX_RELEVANCE_DEPTH: usize = 10_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    #[default]
    Newest,
    Relevance,
}

impl std::str::FromStr for Sort {
    type Err = SearchError;
    fn from_str(s: &str) -> Result<Sort, SearchError> {
        match s {
            "newest" => Ok(Sort::Newest),
            "relevance" => Ok(Sort::Relevance),
            other => Err(SearchError::BadRequest(format!(
                "sort must be newest or relevance, not {other:?}"
            ))),
        }
    }
}

/// Which recalled or deleted messages a search returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recalled {
    /// Recalled and deleted messages are left out (the default).
    #[default]
    Exclude,
    Include,
    Only,
}

/// One search.
#[derive(Clone, Debug, Default)]
pub struct SearchRequest {
    pub query: String,
    pub source: Option<String>,
    pub conversation: Option<String>,
    /// Sender id or display name (either, exactly, ignoring case).
    pub sender: Option<String>,
    /// Inclusive.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive.
    pub until: Option<DateTime<Utc>>,
    pub kind: Option<String>,
    /// Recalled and deleted messages.
    pub recalled: Recalled,
    /// Also match what messages said before they were edited.
    pub history: bool,
    pub sort: Sort,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// A search as a person or a client writes it: the parameters of `GET /api/search`, which
/// the flags of `chatvault search` and the web page's search form become too.
/// [`SearchParams::to_request`] is the one way to build a [`SearchRequest`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    pub q: Option<String>,
    pub source: Option<String>,
    pub conversation: Option<String>,
    pub sender: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub kind: Option<String>,
    /// `exclude` (default), `include` or `only`.
    pub recalled: Option<String>,
    pub history: Option<bool>,
    /// `newest` (default) or `relevance`.
    pub sort: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl SearchParams {
    /// The access-log record of this search and the page it returned (what the CLI, the
    /// API and the web page record before they show the hits).
    pub fn access_record(
        &self,
        who: &str,
        via: crate::store::Via,
        page: &SearchPage,
    ) -> crate::store::AccessRecord {
        let ids = page
            .hits
            .iter()
            .map(|h| crate::store::AccessedId {
                source: h.source.clone(),
                conversation_id: h.conversation_id.clone(),
                message_id: Some(h.message_id.clone()),
            })
            .collect();
        crate::store::AccessRecord::new(who, via, "search")
            .query(self.q.clone().unwrap_or_default())
            .filter("source", &self.source)
            .filter("conversation", &self.conversation)
            .filter("sender", &self.sender)
            .filter("since", &self.since)
            .filter("until", &self.until)
            .filter("kind", &self.kind)
            .filter("recalled", &self.recalled)
            .filter("history", self.history.filter(|h| *h))
            .filter("sort", &self.sort)
            .filter("limit", self.limit)
            .filter("next_page", self.cursor.as_ref().map(|_| true))
            .filter("total", page.total)
            .ids(ids)
            .results(page.hits.len() as i64)
    }

    pub fn to_request(&self) -> Result<SearchRequest, SearchError> {
        let query = self.q.clone().unwrap_or_default();
        let recalled = match self.recalled.as_deref() {
            None | Some("exclude") => Recalled::Exclude,
            Some("include") => Recalled::Include,
            Some("only") => Recalled::Only,
            Some(other) => {
                return Err(SearchError::BadRequest(format!(
                    "recalled must be exclude, include or only, not {other:?}"
                )))
            }
        };
        Ok(SearchRequest {
            query,
            source: self.source.clone(),
            conversation: self.conversation.clone(),
            sender: self.sender.clone(),
            since: self
                .since
                .as_deref()
                .map(|s| parse_time(s, false))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|s| parse_time(s, true))
                .transpose()?,
            kind: self.kind.clone(),
            recalled,
            history: self.history.unwrap_or(false),
            sort: self.sort.as_deref().unwrap_or("newest").parse()?,
            limit: self.limit.unwrap_or(20),
            cursor: self.cursor.clone(),
        })
    }
}

/// Why a search could not run.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    // Not `#[from]`/`#[source]`: the message already includes the cause, and a source
    // would make error chains print it twice.
    #[error("invalid query: {0}")]
    Query(QueryError),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid cursor: {0}")]
    BadCursor(&'static str),
    #[error("no search index yet: run `chatvault sync` or `chatvault reindex`")]
    NoIndex,
    #[error("search failed: {0:#}")]
    Internal(anyhow::Error),
}

impl From<QueryError> for SearchError {
    fn from(e: QueryError) -> Self {
        SearchError::Query(e)
    }
}

impl From<anyhow::Error> for SearchError {
    fn from(e: anyhow::Error) -> Self {
        SearchError::Internal(e)
    }
}

impl SearchError {
    /// Whether the request (not the server) is at fault.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            SearchError::Query(_) | SearchError::BadRequest(_) | SearchError::BadCursor(_)
        )
    }
}

/// Flags of a hit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flags {
    pub edited: bool,
    pub recalled: bool,
    pub deleted: bool,
}

/// One message found.
#[derive(Clone, Debug, Serialize)]
pub struct SearchHit {
    pub source: String,
    pub conversation_id: String,
    /// The conversation's current name, where known.
    pub conversation_name: Option<String>,
    pub conversation_type: String,
    pub message_id: String,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub kind: String,
    /// The current text.
    pub text: String,
    /// Ranges of `text` that matched, as `[start, end)` offsets in characters (Unicode
    /// scalar values), sorted and disjoint.
    pub highlights: Vec<[usize; 2]>,
    pub flags: Flags,
    /// Relevance score (only with `sort = relevance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

/// One page of hits.
#[derive(Clone, Debug, Serialize)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Pass it back as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    /// How many messages match in all.
    pub total: usize,
}

#[derive(Serialize, Deserialize)]
/// Where the next page of a search starts: what `next_cursor` carries, signed.
struct PagePosition {
    v: u32,
    /// Hash of the query and filters the cursor belongs to.
    q: u64,
    /// Newest: the last hit's sent_at and key hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<(i64, u64)>,
    /// Relevance: hits already returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<usize>,
}

fn request_hash(r: &SearchRequest) -> u64 {
    let s = format!(
        "{}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{}\u{0}{:?}",
        r.query,
        r.source,
        r.conversation,
        r.sender,
        r.since,
        r.until,
        r.kind,
        r.recalled,
        r.history,
        r.sort
    );
    key_hash(&s)
}

type CursorMac = hmac::Hmac<sha2::Sha256>;

/// `<payload>.<mac>`, both base64url: the payload is the cursor's JSON, the mac its
/// HMAC-SHA256 under the index's cursor key.
fn encode_cursor(c: &PagePosition, key: &[u8; 32]) -> String {
    use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
    use hmac::Mac;
    let payload = serde_json::to_vec(c).unwrap_or_default();
    let mut mac = CursorMac::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn decode_cursor(s: &str, r: &SearchRequest, key: &[u8; 32]) -> Result<PagePosition, SearchError> {
    use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
    use hmac::Mac;
    let foreign = || SearchError::BadCursor("not a cursor this server gave");
    // a cursor is a few dozen bytes; anything long is not one
    if s.len() > 512 {
        return Err(foreign());
    }
    let (payload, tag) = s.split_once('.').ok_or_else(foreign)?;
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| foreign())?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| foreign())?;
    let mut mac = CursorMac::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&payload);
    mac.verify_slice(&tag).map_err(|_| foreign())?;
    let c: PagePosition = serde_json::from_slice(&payload).map_err(|_| foreign())?;
    if c.v != 1 {
        return Err(SearchError::BadCursor("from another version"));
    }
    if c.q != request_hash(r) {
        return Err(SearchError::BadCursor(
            "it belongs to another query, filters or sort",
        ));
    }
    Ok(c)
}

/// Parse a `since`/`until` bound: RFC 3339, or a date (`2026-01-31`, UTC). A date as
/// `until` means the end of that day. The one reader of a time bound: `chatvault search`,
/// `chatvault export`, `GET /api/search` and the web page.
pub fn parse_time(s: &str, until: bool) -> Result<DateTime<Utc>, SearchError> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if until { d.succ_opt().unwrap_or(d) } else { d };
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    Err(SearchError::BadRequest(format!(
        "{s:?} is not a time: give RFC 3339 (2026-01-31T08:00:00Z) or a date (2026-01-31)"
    )))
}

/// An "as of" time: RFC 3339, or a UTC date meaning the last moment of that day (the
/// archive's times have microseconds). For `export --as-of` and the web page's `as_of`.
pub fn parse_as_of(s: &str) -> Result<DateTime<Utc>, SearchError> {
    let t = parse_time(s, true)?;
    let is_date = DateTime::parse_from_rfc3339(s.trim()).is_err();
    Ok(if is_date {
        t - chrono::Duration::microseconds(1)
    } else {
        t
    })
}

fn term_filter(field: tantivy::schema::Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(
        Term::from_field_text(field, value),
        IndexRecordOption::Basic,
    ))
}

impl SearchIndex {
    /// Run a search on the index alone (conversation names are left empty; see
    /// [`search`] for the names).
    pub fn search(&self, request: &SearchRequest) -> Result<SearchPage, SearchError> {
        let parsed = query::parse(&request.query)?;
        check_request(request)?;
        let key = self.cursor_key()?;
        let cursor = match &request.cursor {
            Some(c) => Some(decode_cursor(c, request, &key)?),
            None => None,
        };
        let generation = self.generation()?;
        let f = generation.fields;
        let full_query = full_query(request, &parsed, &f);
        let searcher = generation.reader.searcher();
        let (ranked, total) = match request.sort {
            Sort::Newest => {
                let after = match &cursor {
                    Some(c) => {
                        Some(c.t.ok_or(SearchError::BadCursor("it belongs to another sort"))?)
                    }
                    None => None,
                };
                newest_first(&searcher, &full_query, request.limit + 1, after)?
            }
            Sort::Relevance => {
                let offset = match &cursor {
                    Some(c) => {
                        c.o.ok_or(SearchError::BadCursor("it belongs to another sort"))?
                    }
                    None => 0,
                };
                by_relevance(&searcher, &full_query, request.limit, offset)?
            }
        };

        let more = ranked.len() > request.limit;
        let mut hits = Vec::new();
        let mut last_place = None;
        for (address, score, place) in ranked.into_iter().take(request.limit) {
            let doc: TantivyDocument = searcher.doc(address).map_err(anyhow::Error::from)?;
            hits.push(hit(&doc, &f, &parsed, score));
            last_place = Some(place);
        }
        let next_cursor = more.then(|| {
            let position = match request.sort {
                Sort::Newest => PagePosition {
                    v: 1,
                    q: request_hash(request),
                    t: last_place,
                    o: None,
                },
                Sort::Relevance => PagePosition {
                    v: 1,
                    q: request_hash(request),
                    t: None,
                    o: Some(cursor.and_then(|c| c.o).unwrap_or(0) + hits.len()),
                },
            };
            encode_cursor(&position, &key)
        });
        Ok(SearchPage {
            hits,
            next_cursor,
            total,
        })
    }
}

/// A request's bounds that do not depend on the index.
fn check_request(request: &SearchRequest) -> Result<(), SearchError> {
    if request.limit == 0 || request.limit > MAX_LIMIT {
        return Err(SearchError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if let (Some(s), Some(u)) = (request.since, request.until) {
        if s >= u {
            return Err(SearchError::BadRequest(
                "since must be earlier than until".to_string(),
            ));
        }
    }
    Ok(())
}

/// The query's words, plus one required clause per filter of the request.
fn full_query(request: &SearchRequest, parsed: &ParsedQuery, f: &super::Fields) -> BooleanQuery {
    let history = request.history.then(|| f.history());
    let with_boosts = request.sort == Sort::Relevance;
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
        Occur::Must,
        query::build(parsed, f.current(), history, with_boosts),
    )];
    let mut filter = |q: Box<dyn Query>| clauses.push((Occur::Must, q));
    if let Some(s) = &request.source {
        filter(term_filter(f.source, s));
    }
    if let Some(c) = &request.conversation {
        filter(term_filter(f.conversation_id, c));
    }
    if let Some(s) = &request.sender {
        filter(term_filter(f.sender, &s.to_lowercase()));
    }
    if let Some(k) = &request.kind {
        filter(term_filter(f.kind, k));
    }
    match request.recalled {
        Recalled::Include => {}
        Recalled::Exclude | Recalled::Only => {
            let v = u64::from(request.recalled == Recalled::Only);
            filter(Box::new(TermQuery::new(
                Term::from_field_u64(f.recalled_or_deleted, v),
                IndexRecordOption::Basic,
            )));
        }
    }
    if request.since.is_some() || request.until.is_some() {
        let lower = request.since.map_or(Bound::Unbounded, |t| {
            Bound::Included(Term::from_field_i64(f.sent_at, t.timestamp_micros()))
        });
        let upper = request.until.map_or(Bound::Unbounded, |t| {
            Bound::Excluded(Term::from_field_i64(f.sent_at, t.timestamp_micros()))
        });
        filter(Box::new(RangeQuery::new(lower, upper)));
    }
    BooleanQuery::new(clauses)
}

/// The `want` newest hits after the place `after` in newest-first order, sorted by fast
/// fields alone (no relevance score is computed), and how many hits there are in all.
fn newest_first(
    searcher: &tantivy::Searcher,
    query: &BooleanQuery,
    want: usize,
    after: Option<(i64, u64)>,
) -> Result<(Vec<Ranked>, usize), SearchError> {
    let collector = TopDocs::with_limit(want).order_by(move |segment: &SegmentReader| {
        let sent = segment.fast_fields().i64("sent_at").ok();
        let hash = segment.fast_fields().u64("key_hash").ok();
        move |doc: DocId| {
            let t = sent.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
            let h = hash.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
            let before_cursor = after.is_none_or(|a| (t, h) < a);
            (before_cursor, t, h)
        }
    });
    let (top, total) = searcher
        .search(query, &(collector, Count))
        .map_err(anyhow::Error::from)?;
    let hits = top
        .into_iter()
        .filter(|((valid, _, _), _)| *valid)
        .map(|((_, t, h), a)| (a, None, (t, h)))
        .collect();
    Ok((hits, total))
}

/// The `limit + 1` best hits from `offset` on, within [`MAX_RELEVANCE_DEPTH`], and how
/// many hits there are in all.
fn by_relevance(
    searcher: &tantivy::Searcher,
    query: &BooleanQuery,
    limit: usize,
    offset: usize,
) -> Result<(Vec<Ranked>, usize), SearchError> {
    if offset.saturating_add(limit) > MAX_RELEVANCE_DEPTH {
        return Err(SearchError::BadRequest(format!(
            "results sorted by relevance go {MAX_RELEVANCE_DEPTH} hits deep; narrow the \
             search (source, conversation, sender, dates) or sort by newest, which \
             pages through every hit"
        )));
    }
    let collector = TopDocs::with_limit(limit + 1)
        .and_offset(offset)
        .order_by_score();
    let (top, total) = searcher
        .search(query, &(collector, Count))
        .map_err(anyhow::Error::from)?;
    let hits = top
        .into_iter()
        .map(|(score, a)| (a, Some(score), (0, 0)))
        .collect();
    Ok((hits, total))
}

/// A hit as the index stored it, with its highlights.
fn hit(
    doc: &TantivyDocument,
    f: &super::Fields,
    parsed: &ParsedQuery,
    score: Option<f32>,
) -> SearchHit {
    let text_of = |field| {
        doc.get_first(field)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let flag = |field| doc.get_first(field).and_then(|v| v.as_u64()) == Some(1);
    let sent_micros = doc
        .get_first(f.sent_at)
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let text = text_of(f.text).unwrap_or_default();
    let highlights = highlight(&text, parsed);
    SearchHit {
        source: text_of(f.source).unwrap_or_default(),
        conversation_id: text_of(f.conversation_id).unwrap_or_default(),
        conversation_name: None,
        conversation_type: text_of(f.conversation_type).unwrap_or_default(),
        message_id: text_of(f.message_id).unwrap_or_default(),
        sender_id: text_of(f.sender_id),
        sender_name: text_of(f.sender_name),
        sent_at: DateTime::from_timestamp_micros(sent_micros).unwrap_or_default(),
        kind: text_of(f.kind).unwrap_or_default(),
        text,
        highlights,
        flags: Flags {
            edited: flag(f.edited),
            recalled: flag(f.recalled),
            deleted: flag(f.deleted),
        },
        score,
    }
}

/// Search on a blocking thread, then fill in the conversations' current names from
/// PostgreSQL.
pub async fn search(
    index: &SearchIndex,
    store: &crate::store::Store,
    request: SearchRequest,
) -> Result<SearchPage, SearchError> {
    let index = index.clone();
    let mut page = tokio::task::spawn_blocking(move || index.search(&request))
        .await
        .map_err(|e| SearchError::Internal(anyhow::anyhow!("the search thread failed: {e}")))??;
    if page.hits.is_empty() {
        return Ok(page);
    }
    let keys: Vec<(String, String)> = page
        .hits
        .iter()
        .map(|h| (h.source.clone(), h.conversation_id.clone()))
        .collect();
    let names = store.conversation_names(&keys).await.map_err(|e| {
        SearchError::Internal(anyhow::Error::new(e).context("reading conversation names"))
    })?;
    for hit in &mut page.hits {
        hit.conversation_name = names
            .get(&(hit.source.clone(), hit.conversation_id.clone()))
            .cloned()
            .flatten();
    }
    Ok(page)
}

/// The ranges of `text` (in characters) that the query's positive terms match.
pub fn highlight(text: &str, parsed: &ParsedQuery) -> Vec<[usize; 2]> {
    let chars: Vec<char> = text.chars().collect();
    let folded: Vec<char> = chars
        .iter()
        .map(|c| {
            tokenizer::fold_width(*c)
                .to_lowercase()
                .next()
                .unwrap_or(*c)
        })
        .collect();
    let byte_to_char: std::collections::HashMap<usize, usize> = text
        .char_indices()
        .enumerate()
        .map(|(ci, (bi, _))| (bi, ci))
        .chain(std::iter::once((text.len(), chars.len())))
        .collect();
    let text_grams = tokenizer::grams(text);
    let mut ranges: Vec<[usize; 2]> = Vec::new();
    for term in parsed.positive_terms() {
        let term_grams = tokenizer::grams(&term.text);
        let single_word = !term.phrase
            && term_grams.len() == 1
            && !term_grams[0]
                .text
                .chars()
                .any(|c| tokenizer::is_cjk(c) || tokenizer::is_emoji(c));
        if single_word {
            let stem = tokenizer::words(&term.text);
            for g in &text_grams {
                if g.text.chars().any(tokenizer::is_cjk) {
                    continue;
                }
                if tokenizer::words(&g.text) == stem {
                    if let (Some(a), Some(b)) = (byte_to_char.get(&g.from), byte_to_char.get(&g.to))
                    {
                        ranges.push([*a, *b]);
                    }
                }
            }
            continue;
        }
        let needle: Vec<char> = term
            .text
            .chars()
            .map(|c| tokenizer::fold_width(c).to_lowercase().next().unwrap_or(c))
            .collect();
        let mut found = false;
        if !needle.is_empty() && needle.len() <= folded.len() {
            for start in 0..=folded.len() - needle.len() {
                if folded[start..start + needle.len()] == needle[..] {
                    ranges.push([start, start + needle.len()]);
                    found = true;
                }
            }
        }
        if !found {
            let wanted: std::collections::HashSet<&str> = term_grams
                .iter()
                .filter(|g| !g.shadowed)
                .map(|g| g.text.as_str())
                .collect();
            for g in text_grams
                .iter()
                .filter(|g| wanted.contains(g.text.as_str()))
            {
                if let (Some(a), Some(b)) = (byte_to_char.get(&g.from), byte_to_char.get(&g.to)) {
                    ranges.push([*a, *b]);
                }
            }
        }
    }
    ranges.sort();
    let mut merged: Vec<[usize; 2]> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
            _ => merged.push(r),
        }
    }
    merged
}

/// `text` cut to about `width` characters around the first of its `highlights` (a hit's
/// [`SearchHit::highlights`]), as fragments: `true` for a matched one. An elided start or
/// end is a fragment `…`. Each caller renders them: the CLI in colour or between 【】, the
/// web page in `<mark>`.
pub fn fragments(text: &str, highlights: &[[usize; 2]], width: usize) -> Vec<(String, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let first = highlights.first().map_or(0, |h| h[0]);
    let start = if chars.len() <= width {
        0
    } else {
        first.saturating_sub(width / 4).min(chars.len() - width)
    };
    let end = (start + width).min(chars.len());
    let mut out: Vec<(String, bool)> = Vec::new();
    if start > 0 {
        out.push(("…".to_string(), false));
    }
    let mut i = start;
    for h in highlights.iter().filter(|h| h[1] > start && h[0] < end) {
        let (from, to) = (h[0].max(start), h[1].min(end));
        if from > i {
            out.push((chars[i..from].iter().collect(), false));
        }
        if to > from.max(i) {
            out.push((chars[from.max(i)..to].iter().collect(), true));
        }
        i = i.max(to);
    }
    if i < end {
        out.push((chars[i..end].iter().collect(), false));
    }
    if end < chars.len() {
        out.push(("…".to_string(), false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highlights_chinese_runs_and_stemmed_english_words() {
        let q = query::parse("会议 meeting").unwrap();
        assert_eq!(
            highlight("明天的会议改到Meetings室", &q),
            vec![[3, 5], [7, 15]]
        );
    }

    #[test]
    fn fragments_mark_matches_and_cut_long_text_around_the_first() {
        let f = fragments("明天开会讨论 budget", &[[2, 4], [7, 13]], 200);
        assert_eq!(
            f,
            vec![
                ("明天".to_string(), false),
                ("开会".to_string(), true),
                ("讨论 ".to_string(), false),
                ("budget".to_string(), true),
            ]
        );
        let long = format!("{}会议{}", "前".repeat(300), "后".repeat(300));
        let f = fragments(&long, &[[300, 302]], 40);
        assert_eq!(f.first().unwrap().0, "…");
        assert_eq!(f.last().unwrap().0, "…");
        assert!(f.contains(&("会议".to_string(), true)));
        let shown: usize = f.iter().map(|(s, _)| s.chars().count()).sum();
        assert_eq!(shown, 42);
    }

    #[test]
    fn dates_as_until_mean_the_end_of_the_day() {
        let since = parse_time("2026-01-31", false).unwrap();
        let until = parse_time("2026-01-31", true).unwrap();
        assert_eq!(since.to_rfc3339(), "2026-01-31T00:00:00+00:00");
        assert_eq!(until.to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert!(parse_time("yesterday", false).is_err());
        assert_eq!(
            parse_time("2026-01-31T08:00:00+08:00", false)
                .unwrap()
                .to_rfc3339(),
            "2026-01-31T00:00:00+00:00"
        );
    }

    #[test]
    fn cursors_are_tied_to_their_search() {
        let r = SearchRequest {
            query: "会议".into(),
            limit: 10,
            ..Default::default()
        };
        let key = [7u8; 32];
        let c = encode_cursor(
            &PagePosition {
                v: 1,
                q: request_hash(&r),
                t: Some((5, 6)),
                o: None,
            },
            &key,
        );
        assert!(decode_cursor(&c, &r, &key).is_ok());
        let other = SearchRequest {
            query: "预算".into(),
            ..r.clone()
        };
        assert!(matches!(
            decode_cursor(&c, &other, &key),
            Err(SearchError::BadCursor(_))
        ));
        assert!(matches!(
            decode_cursor("zz", &r, &key),
            Err(SearchError::BadCursor(_))
        ));
    }

    #[test]
    fn a_cursor_forged_or_signed_with_another_key_is_refused() {
        use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
        let r = SearchRequest {
            query: "会议".into(),
            limit: 10,
            sort: Sort::Relevance,
            ..Default::default()
        };
        let key = [7u8; 32];
        let genuine = encode_cursor(
            &PagePosition {
                v: 1,
                q: request_hash(&r),
                t: None,
                o: Some(20),
            },
            &key,
        );
        assert_eq!(decode_cursor(&genuine, &r, &key).unwrap().o, Some(20));
        // the same payload with a huge offset, keeping the old signature
        let (_, tag) = genuine.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"v":1,"q":{},"o":1125899906842624}}"#,
            request_hash(&r)
        ));
        for forged in [
            format!("{forged_payload}.{tag}"),
            format!("{forged_payload}."),
            forged_payload.clone(),
            hex::encode(format!(
                r#"{{"v":1,"q":{},"o":1125899906842624}}"#,
                request_hash(&r)
            )),
        ] {
            assert!(
                matches!(
                    decode_cursor(&forged, &r, &key),
                    Err(SearchError::BadCursor(_))
                ),
                "{forged}"
            );
        }
        assert!(
            decode_cursor(&genuine, &r, &[8u8; 32]).is_err(),
            "another key"
        );
    }
}
