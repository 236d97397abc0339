//! `chatvault search`: the archive's search index from the command line. The flags become
//! the parameters of `GET /api/search` and the request is built from them as the API builds
//! it ([`SearchParams::to_request`]); hits are printed a message to two lines, the matches
//! marked, or as one JSON object per line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::common::{load_config, with_store};
use crate::index::search::{fragments, SearchParams};
use crate::index::{self, SearchIndex, SearchRequest};
use crate::store::access_log::os_user;
use crate::store::{Store, Via};

#[derive(Debug, Args)]
#[command(
    after_help = "Query syntax: words must all match; \"a phrase\" matches as written; \
-word excludes; a OR b matches either. Chinese matches wherever the characters appear \
(one character is enough); an English word also finds its other forms (meeting, meetings).\n\n\
Examples:\n  chatvault search 会议\n  chatvault search '预算 OR budget' --since 2026-01-01 --sort relevance\n  \
chatvault search '\"quarterly report\" -draft' --conversation g-42 --json\n  \
chatvault search 撤回 --only-recalled --history"
)]
pub struct SearchArgs {
    /// Words, "phrases", -exclude, OR.
    pub query: String,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this conversation (its id).
    #[arg(long)]
    pub conversation: Option<String>,
    /// Only messages from this sender (id or display name).
    #[arg(long)]
    pub sender: Option<String>,
    /// Sent at or after: RFC 3339 time or date (UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Sent before: RFC 3339 time, or a date (up to the end of that day, UTC).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this kind of message (text, image, file, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Also return recalled and deleted messages.
    #[arg(long, conflicts_with = "only_recalled")]
    pub include_recalled: bool,
    /// Only recalled and deleted messages.
    #[arg(long)]
    pub only_recalled: bool,
    /// Also match what edited messages said before.
    #[arg(long)]
    pub history: bool,
    /// Order of the hits.
    #[arg(long, value_parser = ["newest", "relevance"], default_value = "newest")]
    pub sort: String,
    /// Hits to print.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

impl SearchArgs {
    /// The flags as the search API's parameters.
    fn params(&self) -> SearchParams {
        let recalled = if self.only_recalled {
            Some("only")
        } else if self.include_recalled {
            Some("include")
        } else {
            None
        };
        SearchParams {
            q: Some(self.query.clone()),
            source: self.source.clone(),
            conversation: self.conversation.clone(),
            sender: self.sender.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            kind: self.kind.clone(),
            recalled: recalled.map(str::to_string),
            history: Some(self.history),
            sort: Some(self.sort.clone()),
            limit: Some(self.limit as usize),
            cursor: None,
        }
    }
}

pub async fn run(args: SearchArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let params = args.params();
    let request = params.to_request()?;
    // A malformed query is reported before anything is opened.
    index::query::parse(&request.query).map_err(index::SearchError::from)?;
    let config = load_config(config_path, true)?;
    let index_dir = index::index_dir(&config.storage.data_dir);
    // No index: say so before starting a database for nothing.
    if SearchIndex::open(&index_dir)?.is_none() {
        bail!(index::SearchError::NoIndex);
    }
    with_store(&config, true, move |store| {
        search(store, index_dir, params, request, args.json)
    })
    .await
}

/// Run the search, record it in the access log (no record, no hits), print the hits on
/// stdout.
async fn search(
    store: Store,
    index_dir: PathBuf,
    params: SearchParams,
    request: SearchRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(search_index) = SearchIndex::open(&index_dir)? else {
        bail!(index::SearchError::NoIndex);
    };
    let page = index::search::search(&search_index, &store, request).await?;
    store
        .record_access(params.access_record(&os_user(), Via::Cli, &page))
        .await?;
    let mut out = std::io::stdout().lock();
    if json {
        for hit in &page.hits {
            writeln!(out, "{}", serde_json::to_string(hit)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let colour = std::io::stdout().is_terminal();
    for hit in &page.hits {
        let conversation = match &hit.conversation_name {
            Some(name) => format!("{name} ({})", hit.conversation_id),
            None => hit.conversation_id.clone(),
        };
        let sender = hit
            .sender_name
            .as_deref()
            .or(hit.sender_id.as_deref())
            .unwrap_or("system");
        let mut flags = Vec::new();
        if hit.flags.edited {
            flags.push("edited");
        }
        if hit.flags.recalled {
            flags.push("recalled");
        }
        if hit.flags.deleted {
            flags.push("deleted");
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", flags.join(", "))
        };
        writeln!(
            out,
            "{}  {} › {}  {}{}",
            hit.sent_at.format("%Y-%m-%d %H:%M"),
            hit.source,
            crate::terminal::escape_line(&conversation),
            crate::terminal::escape_line(sender),
            flags
        )?;
        writeln!(
            out,
            "  {}",
            render_highlighted(&hit.text, &hit.highlights, colour)
        )?;
    }
    let shown = page.hits.len();
    writeln!(
        out,
        "{shown} of {} matching message{}",
        page.total,
        if page.total == 1 { "" } else { "s" }
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The text on one line, at most about 200 characters around the first highlight, the
/// highlights in bold yellow on a terminal and between 【】 elsewhere.
fn render_highlighted(text: &str, highlights: &[[usize; 2]], colour: bool) -> String {
    const WIDTH: usize = 200;
    let (open, close) = if colour {
        ("\x1b[1;33m", "\x1b[0m")
    } else {
        ("【", "】")
    };
    let mut out = String::new();
    for (fragment, matched) in fragments(text, highlights, WIDTH) {
        if matched {
            out.push_str(open);
        }
        // one character for one: the highlights are character offsets
        out.extend(fragment.chars().map(|c| match c {
            '\n' | '\r' => ' ',
            c => crate::terminal::visible(c),
        }));
        if matched {
            out.push_str(close);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message can hold escape sequences (OSC 52 writes the reader's clipboard): shown,
    /// never sent to the terminal, and the highlights stay on the matched characters.
    #[test]
    fn search_output_shows_control_characters_instead_of_obeying_them() {
        let text = "a\u{1b}]52;c;ZXZpbA==\u{7}会议b";
        let chars: Vec<char> = text.chars().collect();
        let at = chars.iter().position(|c| *c == '会').unwrap();
        let shown = render_highlighted(text, &[[at, at + 2]], false);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert_eq!(shown, "a␛]52;c;ZXZpbA==␇【会议】b");
        let coloured = render_highlighted(text, &[[at, at + 2]], true);
        // the only escapes are the highlight's own
        assert_eq!(coloured.matches('\u{1b}').count(), 2, "{coloured:?}");
    }
}
