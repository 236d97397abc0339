//! The query language: words, `"phrases"`, `-exclude`, `OR`; parsed by hand so that every
//! malformed query is a clear [`QueryError`], never a panic and never a silent reading.
//!
//! Terms next to each other must all match; `a OR b` matches either; `-a` excludes. A word
//! made of one English word matches stemmed (`meeting` finds `meetings`); any other word
//! (Chinese, mixed, emoji) and every phrase matches as a run of adjacent n-grams, i.e. the
//! text contains it.

use tantivy::query::{
    BooleanQuery, BoostQuery, EnableScoring, Explanation, Occur, PhraseQuery, Query, Scorer,
    TermQuery, Weight,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Score, SegmentReader, Term};

use super::tokenizer::{self, Gram};

/// Why a query cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("the query is empty: give a word or a \"phrase\" to search for")]
    Empty,
    #[error("unclosed quote: the phrase starting at character {0} has no closing \"")]
    UnclosedQuote(usize),
    #[error("`OR` needs a term on both sides")]
    DanglingOr,
    #[error("a lone `-`: write `-word` to exclude a word")]
    LoneMinus,
    #[error("an excluded term cannot be part of `OR` (in {0:?})")]
    ExcludedInOr(String),
    #[error("the query only excludes: give at least one word or phrase to find")]
    OnlyExclusions,
    #[error("{0:?} has nothing searchable in it (letters, digits, CJK characters or emoji)")]
    NothingSearchable(String),
    #[error("the query is too long ({0} terms; at most {MAX_TERMS})")]
    TooLong(usize),
    #[error("the query is too long ({0} characters; at most {MAX_CHARS})")]
    TooManyChars(usize),
}

pub const MAX_TERMS: usize = 64;
pub const MAX_CHARS: usize = 1000;

/// One searched unit: a bare word or a quoted phrase, as typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryTerm {
    pub text: String,
    pub phrase: bool,
}

/// A parsed query: every group must match (a group matches if any of its terms does), no
/// excluded term may.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedQuery {
    pub groups: Vec<Vec<QueryTerm>>,
    pub excluded: Vec<QueryTerm>,
}

impl ParsedQuery {
    /// The positive terms, for highlighting.
    pub fn positive_terms(&self) -> impl Iterator<Item = &QueryTerm> {
        self.groups.iter().flatten()
    }
}

#[derive(Debug)]
enum Lexeme {
    Term { term: QueryTerm, negated: bool },
    Or,
}

fn lex(input: &str) -> Result<Vec<Lexeme>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let negated = c == '-';
        let start = if negated { i + 1 } else { i };
        if negated && (start >= chars.len() || chars[start].is_whitespace()) {
            return Err(QueryError::LoneMinus);
        }
        if chars.get(start) == Some(&'"') {
            let Some(len) = chars[start + 1..].iter().position(|&c| c == '"') else {
                return Err(QueryError::UnclosedQuote(start + 1));
            };
            let text: String = chars[start + 1..start + 1 + len].iter().collect();
            out.push(Lexeme::Term {
                term: QueryTerm { text, phrase: true },
                negated,
            });
            i = start + len + 2;
            continue;
        }
        let mut j = start;
        while j < chars.len() && !chars[j].is_whitespace() && chars[j] != '"' {
            j += 1;
        }
        let text: String = chars[start..j].iter().collect();
        if text == "OR" && !negated {
            out.push(Lexeme::Or);
        } else {
            out.push(Lexeme::Term {
                term: QueryTerm {
                    text,
                    phrase: false,
                },
                negated,
            });
        }
        i = j;
    }
    Ok(out)
}

/// Parse a query string (see the module doc).
pub fn parse(input: &str) -> Result<ParsedQuery, QueryError> {
    let chars = input.chars().count();
    if chars > MAX_CHARS {
        return Err(QueryError::TooManyChars(chars));
    }
    let lexemes = lex(input)?;
    if lexemes.is_empty() {
        return Err(QueryError::Empty);
    }
    if lexemes.len() > MAX_TERMS {
        return Err(QueryError::TooLong(lexemes.len()));
    }
    let mut parsed = ParsedQuery::default();
    let mut pending_or = false;
    for (i, lexeme) in lexemes.iter().enumerate() {
        match lexeme {
            Lexeme::Or => {
                let after_term = i > 0 && matches!(lexemes[i - 1], Lexeme::Term { .. });
                let before_term = matches!(lexemes.get(i + 1), Some(Lexeme::Term { .. }));
                if !after_term || !before_term {
                    return Err(QueryError::DanglingOr);
                }
                pending_or = true;
            }
            Lexeme::Term { term, negated } => {
                if grams(term).is_empty() {
                    return Err(QueryError::NothingSearchable(term.text.clone()));
                }
                let next_is_or = matches!(lexemes.get(i + 1), Some(Lexeme::Or));
                if *negated {
                    if pending_or || next_is_or {
                        return Err(QueryError::ExcludedInOr(term.text.clone()));
                    }
                    parsed.excluded.push(term.clone());
                    continue;
                }
                if pending_or {
                    match parsed.groups.last_mut() {
                        Some(group) => group.push(term.clone()),
                        None => return Err(QueryError::DanglingOr),
                    }
                    pending_or = false;
                } else {
                    parsed.groups.push(vec![term.clone()]);
                }
            }
        }
    }
    if parsed.groups.is_empty() {
        return Err(QueryError::OnlyExclusions);
    }
    Ok(parsed)
}

fn grams(term: &QueryTerm) -> Vec<Gram> {
    tokenizer::grams(&term.text)
}

/// The fields one pair of analysers fills (current text, or earlier versions).
#[derive(Clone, Copy, Debug)]
pub struct TextFields {
    pub grams: Field,
    pub words: Field,
}

/// Whether a term is one English-like word that matches stemmed in the words field.
fn is_single_word(term: &QueryTerm) -> bool {
    if term.phrase {
        return false;
    }
    let g = grams(term);
    g.len() == 1
        && !g[0]
            .text
            .chars()
            .any(|c| tokenizer::is_cjk(c) || tokenizer::is_emoji(c))
}

/// The query that decides whether `term` matches in `fields`.
fn match_query(term: &QueryTerm, fields: TextFields) -> Box<dyn Query> {
    if is_single_word(term) {
        let words = tokenizer::words(&term.text);
        if let [word] = words.as_slice() {
            return Box::new(TermQuery::new(
                Term::from_field_text(fields.words, word),
                IndexRecordOption::WithFreqs,
            ));
        }
    }
    let kept: Vec<(usize, Term)> = grams(term)
        .into_iter()
        .filter(|g| !g.shadowed)
        .map(|g| (g.position, Term::from_field_text(fields.grams, &g.text)))
        .collect();
    if kept.len() == 1 {
        let (_, t) = kept.into_iter().next().expect("one term");
        return Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs));
    }
    Box::new(SafeSeek(Box::new(PhraseQuery::new_with_offset(kept))))
}

/// A query whose scorers ignore a seek to a document they are already at or past.
///
/// tantivy 0.26's phrase scorer asserts (in debug builds) that a seek never goes backwards,
/// which an exclusion (`-"a phrase"`) can do after the scorer ran out; wrapped, the seek is
/// answered with the current document, as `seek`'s contract gives for a target not ahead.
#[derive(Debug)]
struct SafeSeek(Box<dyn Query>);

impl Clone for SafeSeek {
    fn clone(&self) -> SafeSeek {
        SafeSeek(self.0.box_clone())
    }
}

impl Query for SafeSeek {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(SafeSeekWeight(self.0.weight(scoring)?)))
    }
    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.0.query_terms(visitor)
    }
}

struct SafeSeekWeight(Box<dyn Weight>);

impl Weight for SafeSeekWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        Ok(Box::new(SafeSeekScorer(self.0.scorer(reader, boost)?)))
    }
    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }
}

struct SafeSeekScorer(Box<dyn Scorer>);

impl DocSet for SafeSeekScorer {
    fn advance(&mut self) -> DocId {
        self.0.advance()
    }
    fn seek(&mut self, target: DocId) -> DocId {
        let doc = self.0.doc();
        if doc >= target {
            return doc;
        }
        self.0.seek(target)
    }
    fn doc(&self) -> DocId {
        self.0.doc()
    }
    fn size_hint(&self) -> u32 {
        self.0.size_hint()
    }
    fn cost(&self) -> u64 {
        self.0.cost()
    }
}

impl Scorer for SafeSeekScorer {
    fn score(&mut self) -> Score {
        self.0.score()
    }
}

/// Jieba words of a CJK term, to rank whole-word hits first (never decides a match).
fn boost_query(term: &QueryTerm, fields: TextFields) -> Option<Box<dyn Query>> {
    if is_single_word(term) {
        return None;
    }
    let clauses: Vec<(Occur, Box<dyn Query>)> = tokenizer::words(&term.text)
        .into_iter()
        .map(|w| {
            let q: Box<dyn Query> = Box::new(TermQuery::new(
                Term::from_field_text(fields.words, &w),
                IndexRecordOption::WithFreqs,
            ));
            (Occur::Should, q)
        })
        .collect();
    if clauses.is_empty() {
        return None;
    }
    Some(Box::new(BoostQuery::new(
        Box::new(BooleanQuery::new(clauses)),
        0.5,
    )))
}

fn term_query(
    term: &QueryTerm,
    current: TextFields,
    history: Option<TextFields>,
) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> =
        vec![(Occur::Should, match_query(term, current))];
    if let Some(history) = history {
        clauses.push((Occur::Should, match_query(term, history)));
    }
    if clauses.len() == 1 {
        return clauses.pop().expect("one clause").1;
    }
    Box::new(BooleanQuery::new(clauses))
}

/// The tantivy query for a parsed query over the current text, and over earlier versions
/// too when `history` is given. Relevance boosts are only added for `with_boosts`.
pub fn build(
    parsed: &ParsedQuery,
    current: TextFields,
    history: Option<TextFields>,
    with_boosts: bool,
) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    for group in &parsed.groups {
        let alternatives: Vec<(Occur, Box<dyn Query>)> = group
            .iter()
            .map(|t| (Occur::Should, term_query(t, current, history)))
            .collect();
        let q: Box<dyn Query> = if alternatives.len() == 1 {
            alternatives.into_iter().next().expect("one").1
        } else {
            Box::new(BooleanQuery::new(alternatives))
        };
        clauses.push((Occur::Must, q));
        if with_boosts {
            for t in group {
                if let Some(b) = boost_query(t, current) {
                    clauses.push((Occur::Should, b));
                }
            }
        }
    }
    for t in &parsed.excluded {
        clauses.push((Occur::MustNot, term_query(t, current, history)));
    }
    Box::new(BooleanQuery::new(clauses))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(t: &str) -> QueryTerm {
        QueryTerm {
            text: t.into(),
            phrase: false,
        }
    }

    #[test]
    fn words_phrases_exclusions_and_or() {
        let q = parse(r#"会议 "quarterly report" -draft budget OR 预算"#).unwrap();
        assert_eq!(
            q.groups,
            vec![
                vec![word("会议")],
                vec![QueryTerm {
                    text: "quarterly report".into(),
                    phrase: true
                }],
                vec![word("budget"), word("预算")],
            ]
        );
        assert_eq!(q.excluded, vec![word("draft")]);
    }

    #[test]
    fn malformed_queries_are_clear_errors() {
        assert_eq!(parse(""), Err(QueryError::Empty));
        assert_eq!(parse("   "), Err(QueryError::Empty));
        assert_eq!(parse("\"会议"), Err(QueryError::UnclosedQuote(1)));
        assert_eq!(parse("OR 会议"), Err(QueryError::DanglingOr));
        assert_eq!(parse("会议 OR"), Err(QueryError::DanglingOr));
        assert_eq!(parse("a OR OR b"), Err(QueryError::DanglingOr));
        assert_eq!(parse("- a"), Err(QueryError::LoneMinus));
        assert_eq!(parse("-a"), Err(QueryError::OnlyExclusions));
        assert_eq!(parse("a OR -b"), Err(QueryError::ExcludedInOr("b".into())));
        assert_eq!(
            parse("，。"),
            Err(QueryError::NothingSearchable("，。".into()))
        );
        assert_eq!(parse("\"\""), Err(QueryError::NothingSearchable("".into())));
        let long = vec!["a"; MAX_TERMS + 1].join(" ");
        assert_eq!(parse(&long), Err(QueryError::TooLong(MAX_TERMS + 1)));
        let huge = "会".repeat(MAX_CHARS + 1);
        assert_eq!(parse(&huge), Err(QueryError::TooManyChars(MAX_CHARS + 1)));
    }

    #[test]
    fn or_is_only_an_operator_in_capitals() {
        let q = parse("cats or dogs").unwrap();
        assert_eq!(q.groups.len(), 3);
    }

    #[test]
    fn single_english_words_are_stemmed_and_the_rest_is_grams() {
        assert!(is_single_word(&word("Meetings")));
        assert!(!is_single_word(&word("会议")));
        assert!(!is_single_word(&word("e-mail")));
        assert!(!is_single_word(&word("👍")));
    }
}
