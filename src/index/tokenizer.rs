//! The two analysers of the index, and the character classes they share.
//!
//! - `cv_grams` (fields `text_grams`, `history_grams`): what decides whether a message
//!   matches. CJK characters (Han, kana, hangul) give a unigram *and* the bigram starting at
//!   the same position, so a query of one character is a term and a longer run is a phrase of
//!   its bigrams: exactly "the text contains this run", as `ILIKE '%…%'` would say, with no
//!   dictionary that could segment a word differently in the text and in the query. Other
//!   letters and digits make lowercased words (full-width forms folded to ASCII); each emoji
//!   is a token of its own; whitespace and punctuation (full-width included) separate tokens.
//!   Positions are ordinal, so phrases across scripts (`"iPhone 手机"`) work.
//! - `cv_words` (fields `text_words`, `history_words`): jieba segmentation (search mode),
//!   punctuation dropped, lowercased, English stemmed. Single English words match here
//!   (`meetings` finds `meeting`), and Chinese words are looked up here to rank whole-word
//!   hits above hits inside a longer word.

use tantivy::tokenizer::{
    Language, LowerCaser, Stemmer, TextAnalyzer, Token, TokenFilter, TokenStream, Tokenizer,
};

/// Name of the n-gram analyser in the index's tokenizer manager.
pub const GRAMS: &str = "cv_grams";
/// Name of the jieba word analyser in the index's tokenizer manager.
pub const WORDS: &str = "cv_words";

/// A character of a script written without spaces: Han (with extensions and compatibility
/// ideographs), hiragana, katakana, hangul syllables.
pub fn is_cjk(c: char) -> bool {
    matches!(c,
        '\u{3400}'..='\u{4DBF}'
        | '\u{4E00}'..='\u{9FFF}'
        | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{2FFFF}'
        | '\u{3040}'..='\u{30FF}'
        | '\u{AC00}'..='\u{D7AF}')
}

/// A pictograph searched as a token of its own (emoji and the older dingbats/symbols).
pub fn is_emoji(c: char) -> bool {
    matches!(c,
        '\u{1F000}'..='\u{1F3FA}'
        | '\u{1F400}'..='\u{1FAFF}'
        | '\u{2600}'..='\u{27BF}'
        | '\u{2B50}' | '\u{2B55}')
}

/// Full-width ASCII letters and digits (`Ａ`, `１`) folded to ASCII; other characters as
/// they are.
pub fn fold_width(c: char) -> char {
    match c {
        '\u{FF10}'..='\u{FF19}' | '\u{FF21}'..='\u{FF3A}' | '\u{FF41}'..='\u{FF5A}' => {
            char::from_u32(c as u32 - 0xFEE0).unwrap_or(c)
        }
        _ => c,
    }
}

/// `text` with full-width letters and digits folded (jieba splits them one by one).
pub fn fold_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(|c| fold_width(c) != c) {
        std::borrow::Cow::Owned(text.chars().map(fold_width).collect())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

fn is_word_char(c: char) -> bool {
    !is_cjk(c) && fold_width(c).is_alphanumeric()
}

/// One token of the n-gram analyser: its text, ordinal position and byte range in the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gram {
    pub text: String,
    pub position: usize,
    pub from: usize,
    pub to: usize,
    /// A CJK unigram emitted next to a bigram at the same position (queries skip it).
    pub shadowed: bool,
}

/// Every token of `text` under the n-gram analyser, in order.
pub fn grams(text: &str) -> Vec<Gram> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let end_of = |i: usize| chars.get(i + 1).map_or(text.len(), |(b, _)| *b);
    let mut position = 0;
    let mut i = 0;
    while i < chars.len() {
        let (from, c) = chars[i];
        if is_cjk(c) {
            let next_cjk = chars.get(i + 1).filter(|(_, n)| is_cjk(*n));
            out.push(Gram {
                text: c.to_string(),
                position,
                from,
                to: end_of(i),
                shadowed: next_cjk.is_some(),
            });
            if let Some((_, n)) = next_cjk {
                out.push(Gram {
                    text: format!("{c}{n}"),
                    position,
                    from,
                    to: end_of(i + 1),
                    shadowed: false,
                });
            }
            position += 1;
            i += 1;
        } else if is_word_char(c) {
            let mut word = String::new();
            let mut j = i;
            while j < chars.len() && is_word_char(chars[j].1) {
                word.extend(fold_width(chars[j].1).to_lowercase());
                j += 1;
            }
            out.push(Gram {
                text: word,
                position,
                from,
                to: end_of(j - 1),
                shadowed: false,
            });
            position += 1;
            i = j;
        } else if is_emoji(c) {
            out.push(Gram {
                text: c.to_string(),
                position,
                from,
                to: end_of(i),
                shadowed: false,
            });
            position += 1;
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The n-gram analyser as a tantivy tokenizer.
#[derive(Clone, Default)]
pub struct GramTokenizer;

pub struct GramStream {
    grams: std::vec::IntoIter<Gram>,
    token: Token,
}

impl Tokenizer for GramTokenizer {
    type TokenStream<'a> = GramStream;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> GramStream {
        GramStream {
            grams: grams(text).into_iter(),
            token: Token::default(),
        }
    }
}

impl TokenStream for GramStream {
    fn advance(&mut self) -> bool {
        let Some(g) = self.grams.next() else {
            return false;
        };
        self.token.text = g.text;
        self.token.position = g.position;
        self.token.offset_from = g.from;
        self.token.offset_to = g.to;
        self.token.position_length = 1;
        true
    }
    fn token(&self) -> &Token {
        &self.token
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.token
    }
}

/// Drops tokens without a letter, digit or CJK character (jieba returns spaces and
/// punctuation as tokens) and folds full-width letters and digits.
#[derive(Clone)]
pub struct WordsOnly;

impl TokenFilter for WordsOnly {
    type Tokenizer<T: Tokenizer> = WordsOnlyFilter<T>;
    fn transform<T: Tokenizer>(self, tokenizer: T) -> WordsOnlyFilter<T> {
        WordsOnlyFilter(tokenizer)
    }
}

#[derive(Clone)]
pub struct WordsOnlyFilter<T>(T);

pub struct WordsOnlyStream<S>(S);

impl<T: Tokenizer> Tokenizer for WordsOnlyFilter<T> {
    type TokenStream<'a> = WordsOnlyStream<T::TokenStream<'a>>;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        WordsOnlyStream(self.0.token_stream(text))
    }
}

impl<S: TokenStream> TokenStream for WordsOnlyStream<S> {
    fn advance(&mut self) -> bool {
        while self.0.advance() {
            let token = self.0.token_mut();
            if token
                .text
                .chars()
                .any(|c| is_cjk(c) || fold_width(c).is_alphanumeric())
            {
                if token.text.chars().any(|c| fold_width(c) != c) {
                    token.text = token.text.chars().map(fold_width).collect();
                }
                return true;
            }
        }
        false
    }
    fn token(&self) -> &Token {
        self.0.token()
    }
    fn token_mut(&mut self) -> &mut Token {
        self.0.token_mut()
    }
}

pub fn grams_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(GramTokenizer).build()
}

pub fn words_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(tantivy_jieba::JiebaTokenizer::with_search_mode(true))
        .filter(WordsOnly)
        .filter(LowerCaser)
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Every token text of `text` under the word analyser, in order.
pub fn words(text: &str) -> Vec<String> {
    let mut analyzer = words_analyzer();
    let text = fold_text(text);
    let mut stream = analyzer.token_stream(&text);
    let mut out = Vec::new();
    while let Some(t) = stream.next() {
        out.push(t.text.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<(String, usize)> {
        grams(text)
            .into_iter()
            .map(|g| (g.text, g.position))
            .collect()
    }

    fn owned(v: &[(&str, usize)]) -> Vec<(String, usize)> {
        v.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn chinese_runs_give_unigrams_and_bigrams_at_the_same_position() {
        assert_eq!(
            texts("开会了"),
            owned(&[("开", 0), ("开会", 0), ("会", 1), ("会了", 1), ("了", 2)])
        );
        assert_eq!(texts("好"), owned(&[("好", 0)]));
    }

    #[test]
    fn mixed_text_keeps_scripts_apart_and_lowercases_words() {
        assert_eq!(
            texts("用iPhone15拍照"),
            owned(&[
                ("用", 0),
                ("iphone15", 1),
                ("拍", 2),
                ("拍照", 2),
                ("照", 3)
            ])
        );
    }

    #[test]
    fn full_width_punctuation_separates_and_full_width_letters_fold() {
        assert_eq!(
            texts("你好，世界！ＡＢＣ１２３"),
            owned(&[
                ("你", 0),
                ("你好", 0),
                ("好", 1),
                ("世", 2),
                ("世界", 2),
                ("界", 3),
                ("abc123", 4)
            ])
        );
    }

    #[test]
    fn each_emoji_is_a_token_and_modifiers_are_dropped() {
        assert_eq!(
            texts("好👍🏽 ok🎉"),
            owned(&[("好", 0), ("👍", 1), ("ok", 2), ("🎉", 3)])
        );
    }

    #[test]
    fn offsets_cover_the_token_in_the_input() {
        let text = "a开会b";
        for g in grams(text) {
            let piece = &text[g.from..g.to];
            assert_eq!(piece.to_lowercase(), g.text, "{g:?}");
        }
    }

    #[test]
    fn jieba_words_are_segmented_stemmed_and_stripped_of_punctuation() {
        let w = words("我们明天开会，Meetings！");
        assert!(w.contains(&"我们".to_string()), "{w:?}");
        assert!(w.contains(&"明天".to_string()), "{w:?}");
        assert!(w.contains(&"meet".to_string()), "{w:?}");
        assert!(
            w.iter().all(|t| t != "，" && t != "！" && t != " "),
            "{w:?}"
        );
    }

    #[test]
    fn nothing_searchable_gives_no_tokens() {
        assert!(grams("，。！？  ...").is_empty());
        assert!(words("，。！？  ...").is_empty());
    }
}
