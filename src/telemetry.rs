//! Logging: a `tracing` subscriber on stderr, pretty on a terminal and JSON otherwise.
//!
//! The level comes from `CHATVAULT_LOG` (or `RUST_LOG`). The default is chatvault's own
//! lines at `info` for the long-running commands (`warn` for the others) and only warnings
//! from the libraries it uses (tantivy, sqlx, hyper and others are chatty at `info`). Secrets never reach a log line: they are
//! [`crate::config::Secret`]s, and spans record names and ids only.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::commands::LogFormat;

/// `chatvault=<level>,warn`: chatvault's lines at `level`, other crates' warnings only.
pub fn default_filter(level: &str) -> String {
    format!("chatvault={level},warn")
}

pub fn init(format: Option<LogFormat>, default_level: &str) {
    let filter = std::env::var("CHATVAULT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter(default_level)));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_libraries_only_warn() {
        let filter = default_filter("info");
        assert_eq!(filter, "chatvault=info,warn");
        assert!(EnvFilter::try_new(&filter).is_ok());
    }
}
