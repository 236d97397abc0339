//! Fault injection: queued failures the server plays back instead of (or around) normal
//! answers. [`Faults`] is a cheap clonable handle, usable while the server runs.
//!
//! Each [`Fault`] is optionally scoped to one path and fires a given number of times
//! (or forever). The first matching fault in insertion order fires; faults of different
//! kinds are looked up independently, so a slow response and a malformed page can be
//! queued together.

use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Every channel sync of this `channel_id` (as requested) answers 400.
    ChannelFailure { channel_id: String },
}

/// How a malformed message is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// `message_seq` is a JSON string.
    SeqAsString,
    /// `payload` is a JSON string instead of an object.
    PayloadNotObject,
}

/// One queued fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    /// Only requests to this exact path (e.g. `/v1/message/channel/sync`); `None` = any.
    pub path: Option<String>,
    /// How many more times it fires; `None` = forever.
    pub remaining: Option<usize>,
}

impl Fault {
    /// A fault firing once on any path.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            path: None,
            remaining: Some(1),
        }
    }

    /// Restrict to one path.
    pub fn on(mut self, path: &str) -> Self {
        self.path = Some(path.to_string());
        self
    }

    /// Fire `n` times.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Fire on every matching request.
    pub fn forever(mut self) -> Self {
        self.remaining = None;
        self
    }
}

/// Which fault family a lookup is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Answered before the handler runs (429, 5xx), or around it (slow, dropped).
    Transport,
    /// Applied by the channel-sync handler (malformed record).
    Malformed,
}

fn stage_of(kind: &FaultKind) -> Option<Stage> {
    match kind {
        FaultKind::RateLimited { .. }
        | FaultKind::Status(_)
        | FaultKind::Slow(_)
        | FaultKind::DropMidBody => Some(Stage::Transport),
        FaultKind::Malformed(_) => Some(Stage::Malformed),
        FaultKind::ChannelFailure { .. } => None,
    }
}

/// Shared queue of faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    queue: Arc<Mutex<Vec<Fault>>>,
}

impl Faults {
    pub fn add(&self, fault: Fault) {
        if fault.remaining == Some(0) {
            return;
        }
        self.lock().push(fault);
    }

    /// `times` answers of 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit(&self, path: Option<&str>, times: usize, retry_after_secs: u64) {
        self.add(scoped(
            FaultKind::RateLimited { retry_after_secs },
            path,
            times,
        ));
    }

    /// `times` answers with HTTP `status` (500, 502, 503, ...).
    pub fn status(&self, path: Option<&str>, times: usize, status: u16) {
        self.add(scoped(FaultKind::Status(status), path, times));
    }

    /// `times` answers delayed by `delay`.
    pub fn slow(&self, path: Option<&str>, times: usize, delay: Duration) {
        self.add(scoped(FaultKind::Slow(delay), path, times));
    }

    /// `times` answers cut off mid-body.
    pub fn drop_mid_body(&self, path: Option<&str>, times: usize) {
        self.add(scoped(FaultKind::DropMidBody, path, times));
    }

    /// The next `times` channel-sync pages with messages carry one broken message.
    pub fn malformed(&self, times: usize, how: Malformed) {
        self.add(scoped(FaultKind::Malformed(how), None, times));
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
        self.lock().clear();
    }

    /// Faults still queued (forever-faults included).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Take one firing of the first fault of `stage` matching `path`.
    pub(super) fn take(&self, stage: Stage, path: &str) -> Option<FaultKind> {
        let mut queue = self.lock();
        let index = queue.iter().position(|f| {
            stage_of(&f.kind) == Some(stage) && f.path.as_deref().is_none_or(|p| p == path)
        })?;
        Some(consume(&mut queue, index))
    }

    /// Whether channel sync of `channel_id` is set to fail.
    pub(super) fn channel_fails(&self, channel_id: &str) -> bool {
        let mut queue = self.lock();
        let Some(index) = queue.iter().position(
            |f| matches!(&f.kind, FaultKind::ChannelFailure { channel_id: c } if c == channel_id),
        ) else {
            return false;
        };
        consume(&mut queue, index);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn scoped(kind: FaultKind, path: Option<&str>, times: usize) -> Fault {
    let fault = Fault::new(kind).times(times);
    match path {
        Some(p) => fault.on(p),
        None => fault,
    }
}

fn consume(queue: &mut Vec<Fault>, index: usize) -> FaultKind {
    let kind = queue[index].kind.clone();
    if let Some(remaining) = &mut queue[index].remaining {
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            queue.remove(index);
        }
    }
    kind
}
