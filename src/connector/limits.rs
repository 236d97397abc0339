//! What each platform lets an archive know, for `chatvault coverage` and the /coverage page:
//! the rescan window a source's configuration puts in force, and the fixed list of what the
//! archive cannot know on that platform (from `docs/upstreams/<platform>.md` and the
//! connectors' own limits).

use crate::config::{PlatformConfig, SourceConfig};
use crate::model::Platform;

/// The rescan window in force for `source`, in words; `None` when the source is not in the
/// configuration (only the platform's fixed facts are known then).
pub fn rescan_window(source: Option<&SourceConfig>) -> Option<String> {
    let source = source?;
    Some(match &source.platform {
        PlatformConfig::Tangsengdaodao(_) => {
            "none needed: edits, recalls, deletions for everyone and reactions arrive through \
             the server's change feeds (message extras, reactions) at any age"
                .to_string()
        }
        PlatformConfig::Yunxin(c) if c.rescan_days == 0 => {
            "off (rescan_days = 0): only new messages are read".to_string()
        }
        PlatformConfig::Yunxin(c) => format!(
            "the last {} days of each active conversation, every run (rescan_days)",
            c.rescan_days
        ),
        PlatformConfig::Yunhu(c) => format!(
            "the newest {} messages and those of the last {} days of each active chat, at most \
             every {} minutes, and of every chat in the daily sweep \
             (rescan_messages, rescan_days, rescan_every_minutes)",
            c.rescan_messages, c.rescan_days, c.rescan_every_minutes
        ),
    })
}

/// What the archive cannot know on `platform`, one fact a line.
pub fn cannot_know(platform: Platform) -> &'static [&'static str] {
    match platform {
        Platform::Tangsengdaodao => &[
            "Intermediate edits: the change feed carries only a message's latest edit, so an \
             edit replaced by another before the next run is not seen.",
            "Messages deleted for this account alone (deleted for me, expired, hidden) after \
             they were archived: the change feed does not carry them; a sync --full re-read \
             marks them.",
            "Messages cleared or deleted before the first read, and seqs the server does not \
             return (device filters): recorded as gaps, their content is not archivable.",
            "History of groups the account has left, beyond what the server still returns.",
        ],
        Platform::Yunxin => &[
            "Edits and recalls older than the rescan window (rescan_days): there are no \
             sequence numbers and no change feed.",
            "Recall and deletion cannot be told apart (both are marked; a two-way one is \
             marked deleted, \"absent upstream\").",
            "Messages removed before chatvault first read them, and conversations from before \
             cloud conversations (云端会话) were enabled for the app.",
            "A message one-way recalled before chatvault first read it looks like one sent \
             without notice (no-sense) and is archived unmarked.",
            "Gaps cannot be counted: without sequence numbers a missing message leaves no hole.",
        ],
        Platform::Yunhu => &[
            "Edits and recalls of messages older than the rescan window: there is no change \
             feed; sync --full finds them.",
            "Seqs Yunhu does not return (deleted for this account, history a late-joined group \
             hides): recorded as gaps, their content is not archivable.",
            "Reactions: Yunhu has none on chat messages.",
        ],
    }
}

/// Fill in a coverage report's platform facts from the configured sources.
pub fn describe(report: &mut [crate::store::coverage::SourceCoverage], sources: &[SourceConfig]) {
    for s in report {
        let config = sources.iter().find(|c| c.name.as_str() == s.source);
        s.rescan_window = rescan_window(config);
        s.cannot_know = Platform::from_key(&s.platform)
            .map(|p| cannot_know(p).iter().map(|f| f.to_string()).collect())
            .unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_says_what_it_cannot_know() {
        for p in Platform::ALL {
            assert!(!cannot_know(p).is_empty(), "{p:?}");
        }
        assert_eq!(rescan_window(None), None);
    }
}
