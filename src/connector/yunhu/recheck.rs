//! The read-only re-read behind `chatvault verify --upstream`: `list-message` pages anchored
//! at a message id (`/v1/msg/list-message`, the messages before the anchor, newest first),
//! the same request and mapping as the `messages` feed. No cursor is read or written, and no
//! edit record is read: the comparison is with the current content, which the list carries.
//!
//! A sampled message is read in the page before the archived message just after it (the
//! newest page for the newest archived message); a page is a span from its oldest message
//! up to the anchor (down to the beginning when it is not full). Sampled messages a span
//! already covers are not asked for again, so one call makes at most `targets + 1`
//! requests. A page that comes back empty below an anchor proves nothing (upstream answers
//! so for an anchor it no longer shows) and is no span.

use std::collections::HashSet;

use prost::Message;

use super::{chat_of, pb, YunhuConnector, LIST_MESSAGE, PAGE_SIZE};
use crate::connector::{ConnectorError, Recheck, RecheckRequest, RecheckSpan};

impl YunhuConnector {
    pub(super) async fn recheck_chat(
        &self,
        request: RecheckRequest<'_>,
    ) -> Result<Recheck, ConnectorError> {
        let chat = chat_of(request.conversation, &self.source)?;
        // (anchor id, anchor seq): "" is the newest page
        let mut anchors: Vec<(String, i64, Option<i64>)> = Vec::new();
        if request.newest {
            anchors.push((String::new(), i64::MAX, None));
        }
        let mut targets: Vec<_> = request.targets.iter().collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.seq));
        for t in targets {
            match &t.next {
                Some((id, Some(seq))) => anchors.push((id.clone(), *seq, t.seq)),
                Some((_, None)) => {}
                None => anchors.push((String::new(), i64::MAX, t.seq)),
            }
        }
        let mut recheck = Recheck {
            marks_shown: true,
            ..Recheck::default()
        };
        let mut seen = HashSet::new();
        let mut asked = HashSet::new();
        for (anchor, anchor_seq, wanted) in anchors {
            let covered = |seq: i64, spans: &[RecheckSpan]| {
                spans.iter().any(
                    |s| matches!(s, RecheckSpan::Seqs { from, to } if (*from..=*to).contains(&seq)),
                )
            };
            if wanted.is_some_and(|seq| covered(seq, &recheck.spans))
                || !asked.insert(anchor.clone())
            {
                continue;
            }
            let list = pb::ListMsgRequest {
                msg_count: PAGE_SIZE,
                msg_id: anchor.clone(),
                chat_type: chat.chat_type,
                chat_id: chat.id.clone(),
            };
            let page = self
                .list_page(&chat, LIST_MESSAGE, list.encode_to_vec())
                .await?;
            recheck.unmapped += page.quarantine.len();
            let oldest = page.messages.iter().map(|m| m.seq).min();
            let full = page.messages.len() + page.quarantine.len() >= PAGE_SIZE as usize;
            if let Some(oldest) = oldest {
                let from = if full { oldest } else { 0 };
                recheck.spans.push(RecheckSpan::Seqs {
                    from,
                    to: anchor_seq.saturating_sub(1),
                });
            }
            for m in page.messages {
                if seen.insert(m.observation.message_id.clone()) {
                    recheck.messages.push(m.observation);
                }
            }
        }
        Ok(recheck)
    }
}
