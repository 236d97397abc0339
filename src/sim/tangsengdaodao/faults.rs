//! Fault injection: queued failures the server plays back instead of (or around) normal
//! answers. [`Faults`] is a cheap clonable handle, usable while the server runs.
//!
//! Each [`Fault`] is optionally scoped to one path and fires a given number of times
//! (or forever). The first matching fault in insertion order fires; faults of different
//! kinds are looked up independently, so a slow response and a malformed page can be
//! queued together.

use std::time::Duration;

use crate::sim::faults::{FaultQueue, Stage};

/// What goes wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// HTTP 429 with a `Retry-After: <secs>` header (a proxy's rate limit).
    RateLimited { retry_after_secs: u64 },
    /// An HTTP 5xx: 500 has an empty body (a handler panic), others a short proxy page.
    Status(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Send the headers and part of the body, then abort the connection.
    DropMidBody,
    /// The next channel-sync page holding messages has one message with wrong types.
    Malformed(Malformed),
    /// Every channel sync of this `channel_id` (as requested) answers 400
    /// `同步频道内的消息失败！` (WuKongIM failed for it).
    ChannelFailure { channel_id: String },
    /// HTTP 400 `{"msg": <msg>, "status": 400}`: the handler's answer when the server's own
    /// MySQL, Redis or WuKongIM call fails (e.g. `同步离线后的最近会话失败！`).
    ServerFailure(String),
}

/// How a malformed message is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// `message_seq` is a JSON string.
    SeqAsString,
    /// `payload` is a JSON string instead of an object.
    PayloadNotObject,
}

/// One queued fault (paths such as `/v1/message/channel/sync`).
pub type Fault = crate::sim::faults::Fault<FaultKind>;

fn stage_of(kind: &FaultKind) -> Option<Stage> {
    match kind {
        FaultKind::RateLimited { .. }
        | FaultKind::Status(_)
        | FaultKind::Slow(_)
        | FaultKind::DropMidBody
        | FaultKind::ServerFailure(_) => Some(Stage::Transport),
        FaultKind::Malformed(_) => Some(Stage::Malformed),
        FaultKind::ChannelFailure { .. } => None,
    }
}

/// Shared queue of faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    queue: FaultQueue<FaultKind>,
    /// The fake WuKongIM gateway's switches (drop connections, mute PONGs).
    im: std::sync::Arc<super::im::ImSwitches>,
}

impl Faults {
    /// The push gateway's switches and counters.
    pub fn im(&self) -> &super::im::ImSwitches {
        &self.im
    }

    pub(super) fn im_handle(&self) -> std::sync::Arc<super::im::ImSwitches> {
        self.im.clone()
    }

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

    /// `times` answers with HTTP `status` (500, 502, 503, ...).
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

    /// `times` answers of HTTP 400 with the server-failure body `msg`.
    pub fn server_failure(&self, path: Option<&str>, times: usize, msg: &str) {
        self.add(Fault::scoped(
            FaultKind::ServerFailure(msg.to_string()),
            path,
            times,
        ));
    }

    /// The next `times` channel-sync pages with messages carry one broken message.
    pub fn malformed(&self, times: usize, how: Malformed) {
        self.add(Fault::scoped(FaultKind::Malformed(how), None, times));
    }

    /// Channel sync of `channel_id` fails with 400 from now on.
    pub fn fail_channel(&self, channel_id: &str) {
        self.add(
            Fault::new(FaultKind::ChannelFailure {
                channel_id: channel_id.to_string(),
            })
            .forever(),
        );
    }

    /// Drop every queued fault.
    pub fn clear(&self) {
        self.queue.clear();
    }

    /// Faults still queued (forever-faults included).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    /// Take one firing of the first fault of `stage` matching `path`.
    pub(super) fn take(&self, stage: Stage, path: &str) -> Option<FaultKind> {
        self.queue
            .take(|f| stage_of(&f.kind) == Some(stage) && f.applies_to(path))
    }

    /// Whether channel sync of `channel_id` is set to fail (one firing is taken).
    pub(super) fn channel_fails(&self, channel_id: &str) -> bool {
        self.queue
            .take(|f| {
                matches!(&f.kind, FaultKind::ChannelFailure { channel_id: c } if c == channel_id)
            })
            .is_some()
    }
}
