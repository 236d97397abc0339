//! Text from the archive on its way to a terminal or a log line: message texts, names and
//! upstream errors are written by other people, and a control character in them (an
//! escape sequence) could otherwise move the cursor, rewrite what the reader sees or, with
//! OSC 52, write the reader's clipboard.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character but newline shown as an escape (`\u{1b}`), and
/// newlines kept. Printable text, Chinese included, is unchanged.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

/// [`escape`] for a single line: newlines are escaped too.
pub fn escape_line(text: &str) -> Cow<'_, str> {
    escape_with(text, false)
}

fn escape_with(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| is_unsafe(c) && !(keep_newlines && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One visible character in place of `c` when `c` is unsafe (a control picture such as
/// `␛` for ESC, `�` for the rest): for text whose character offsets must not move.
pub fn visible(c: char) -> char {
    match c {
        '\0'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        '\u{7f}' => '\u{2421}',
        c if is_unsafe(c) => '\u{fffd}',
        c => c,
    }
}

/// C0 and C1 controls, DEL, and the characters that reorder text invisibly (bidi
/// overrides and isolates), which can disguise what a line says.
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        let osc52 = "hi \u{1b}]52;c;ZXZpbA==\u{7}there";
        assert_eq!(escape(osc52), "hi \\u{1b}]52;c;ZXZpbA==\\u{7}there");
        assert_eq!(escape("csi \u{9b}31m"), "csi \\u{9b}31m");
        assert_eq!(escape("a\r\nb\tc"), "a\\u{d}\nb\\u{9}c");
        assert_eq!(escape_line("a\nb"), "a\\u{a}b");
        assert_eq!(escape("rtl \u{202e}gnp.exe"), "rtl \\u{202e}gnp.exe");
        assert!(matches!(escape("会议 meeting 👍"), Cow::Borrowed(_)));
        assert_eq!(visible('\u{1b}'), '␛');
        assert_eq!(visible('\u{9b}'), '\u{fffd}');
        assert_eq!(visible('会'), '会');
    }
}
