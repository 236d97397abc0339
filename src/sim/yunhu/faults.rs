//! Fault injection for the fake Yunhu server, the same families as the other fakes: queued
//! failures played back instead of (or around) normal answers. [`Faults`] is a cheap
//! clonable handle, usable while the server runs.

use std::time::Duration;

use crate::sim::faults::{FaultQueue, Stage};

/// What goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// HTTP 429 with `Retry-After: <secs>` (a proxy's rate limit).
    RateLimited { retry_after_secs: u64 },
    /// An HTTP 5xx with a short proxy page.
    Status(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Send the headers and half of the body, then abort the connection.
    DropMidBody,
    /// The next message-list page with at least three messages has one broken record.
    Malformed(Malformed),
    /// Every message list of this chat answers `Status.code = -1`.
    ChatFailure { chat_id: String },
}

/// How a malformed record is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// `msg_id` (field 1) sent as a varint: the record does not decode.
    WrongWireType,
    /// `msg_seq` left out: the record decodes but cannot be placed.
    MissingSeq,
}

/// One queued fault.
pub type Fault = crate::sim::faults::Fault<FaultKind>;

fn stage_of(kind: &FaultKind) -> Option<Stage> {
    match kind {
        FaultKind::RateLimited { .. }
        | FaultKind::Status(_)
        | FaultKind::Slow(_)
        | FaultKind::DropMidBody => Some(Stage::Transport),
        FaultKind::Malformed(_) => Some(Stage::Malformed),
        FaultKind::ChatFailure { .. } => None,
    }
}

/// Shared queue of faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    queue: FaultQueue<FaultKind>,
    /// The push channel's switches and what it saw.
    pub push: super::push::PushControl,
}

impl Faults {
    pub fn add(&self, fault: Fault) {
        self.queue.add(fault);
    }

    /// `times` answers of 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit(&self, path: Option<&str>, times: usize, retry_after_secs: u64) {
        self.add(Fault::scoped(
            FaultKind::RateLimited { retry_after_secs },
            path,
            times,
        ));
    }

    /// `times` answers with HTTP `status`.
    pub fn status(&self, path: Option<&str>, times: usize, status: u16) {
        self.add(Fault::scoped(FaultKind::Status(status), path, times));
    }

    /// `times` answers delayed by `delay`.
    pub fn slow(&self, path: Option<&str>, times: usize, delay: Duration) {
        self.add(Fault::scoped(FaultKind::Slow(delay), path, times));
    }

    /// `times` answers cut off mid-body.
    pub fn drop_mid_body(&self, path: Option<&str>, times: usize) {
        self.add(Fault::scoped(FaultKind::DropMidBody, path, times));
    }

    /// The next `times` message pages (of three or more) carry one broken record.
    pub fn malformed(&self, times: usize, how: Malformed) {
        self.add(Fault::scoped(FaultKind::Malformed(how), None, times));
    }

    /// Message lists of `chat_id` fail from now on.
    pub fn fail_chat(&self, chat_id: &str) {
        self.add(
            Fault::new(FaultKind::ChatFailure {
                chat_id: chat_id.to_string(),
            })
            .forever(),
        );
    }

    pub fn clear(&self) {
        self.queue.clear();
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn take(&self, stage: Stage, path: &str) -> Option<FaultKind> {
        self.queue
            .take(|f| stage_of(&f.kind) == Some(stage) && f.applies_to(path))
    }

    /// Whether message lists of `chat_id` are set to fail (the fault stays queued).
    pub(super) fn chat_fails(&self, chat_id: &str) -> bool {
        self.queue
            .any(|f| matches!(&f.kind, FaultKind::ChatFailure { chat_id: c } if c == chat_id))
    }
}
