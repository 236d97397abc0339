//! The coverage page (`GET /coverage`, linked from the status page): per source and
//! conversation, what the archive holds, every known gap with its reason, the last complete
//! read, the rescan window in force and what the platform does not let the archive know.
//! The same report as `chatvault coverage`.

use maud::{html, Markup};

use super::pages::{conversation_href, encode, layout, opt_time, time};
use crate::store::coverage::SourceCoverage;

pub fn coverage(report: &[SourceCoverage], source: Option<&str>, sign_out: bool) -> Markup {
    layout(
        "Coverage",
        "status",
        sign_out,
        html! {
            h1 { "Coverage" }
            p.muted {
                "What the archive holds of each conversation, every gap it knows of and why, and what it cannot know. "
                @if source.is_some() { a href="/coverage" { "All sources" } }
            }
            @if report.is_empty() { p.muted { "No source archived yet." } }
            @for s in report {
                section.card id={ "source-" (encode(&s.source)) } {
                    h2 { a href={ "/coverage?source=" (encode(&s.source)) } { (s.source) } " " span.muted { (s.platform) } }
                    dl {
                        dt { "Last ok run" } dd { (opt_time(&s.last_ok_run_at)) }
                        dt { "Rescan window" } dd { (s.rescan_window.as_deref().unwrap_or("unknown (the source is not in this configuration)")) }
                        dt { "Quarantined" } dd class=[(s.quarantined > 0).then_some("problem")] { (s.quarantined) " records" }
                    }
                    h3 { "What the archive cannot know on this platform" }
                    ul.cannot-know { @for fact in &s.cannot_know { li { (fact) } } }
                    table.list.coverage {
                        thead { tr {
                            th { "Conversation" } th.num { "Messages" } th { "Seqs" } th { "First – last sent" }
                            th { "Last read completely" } th { "Gaps" }
                        } }
                        tbody {
                            @for c in &s.conversations {
                                @let cov = &c.coverage;
                                tr {
                                    td { a href=(conversation_href(&cov.source, &cov.conversation_id)) {
                                        (cov.name.as_deref().filter(|n| !n.trim().is_empty()).unwrap_or(&cov.conversation_id))
                                    } " " span.muted { (cov.conversation_type) } }
                                    td.num { (cov.message_count) }
                                    td { @if let (Some(a), Some(b)) = (cov.first_seq, cov.last_seq) { (a) "–" (b) } @else { span.muted { "—" } } }
                                    td { (opt_time(&cov.first_message_at)) " – " (opt_time(&cov.last_message_at)) }
                                    td { (opt_time(&cov.read_complete_at)) }
                                    td {
                                        @if c.gap_list.is_empty() { span.muted { "none known" } } @else {
                                            ul.gaps {
                                                @for g in &c.gap_list {
                                                    li class={ "gap " (g.kind) } {
                                                        "seq " (g.from_seq) "–" (g.to_seq) " " b { (g.kind) } ": " (g.reason)
                                                        " (found " (time(&g.observed_at)) ")"
                                                        @if g.archived_since > 0 { " · " (g.archived_since) " archived since" }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
