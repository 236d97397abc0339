//! The fault queue shared by the TangSengDaoDao and Yunhu fakes: queued failures a server
//! plays back instead of (or around) normal answers. Each fake names its own kinds (its
//! `FaultKind`) and decides how they are played back; the queueing is the same.
//!
//! Each [`Fault`] is optionally scoped to one path and fires a given number of times (or
//! forever). A lookup takes the first matching fault in insertion order, so faults of
//! different families are looked up independently.

use std::sync::{Arc, Mutex};

use super::serve;

/// One queued fault of kind `K`.
#[derive(Clone, Debug)]
pub struct Fault<K> {
    pub kind: K,
    /// Only requests to this exact path; `None` = any.
    pub path: Option<String>,
    /// How many more times it fires; `None` = forever.
    pub remaining: Option<usize>,
}

impl<K> Fault<K> {
    /// A fault firing once on any path.
    pub fn new(kind: K) -> Self {
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

    /// A fault firing `times` times on `path` (or any path).
    pub(crate) fn scoped(kind: K, path: Option<&str>, times: usize) -> Self {
        Fault {
            kind,
            path: path.map(str::to_string),
            remaining: Some(times),
        }
    }

    /// Whether it applies to a request on `path`.
    pub(crate) fn applies_to(&self, path: &str) -> bool {
        self.path.as_deref().is_none_or(|p| p == path)
    }
}

/// Which fault family a lookup is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Answered before the handler runs (429, 5xx), or around it (slow, dropped).
    Transport,
    /// Applied by a handler to the page it answers (a malformed record).
    Malformed,
}

/// A queue of faults shared between the test and the running server (clones share it).
#[derive(Debug)]
pub(crate) struct FaultQueue<K> {
    queue: Arc<Mutex<Vec<Fault<K>>>>,
}

impl<K> Clone for FaultQueue<K> {
    fn clone(&self) -> Self {
        FaultQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<K> Default for FaultQueue<K> {
    fn default() -> Self {
        FaultQueue {
            queue: Arc::default(),
        }
    }
}

impl<K: Clone> FaultQueue<K> {
    /// Queue `fault`; one that would fire zero times is dropped.
    pub(crate) fn add(&self, fault: Fault<K>) {
        if fault.remaining == Some(0) {
            return;
        }
        serve::lock(&self.queue).push(fault);
    }

    pub(crate) fn clear(&self) {
        serve::lock(&self.queue).clear();
    }

    /// Faults still queued (forever-faults included).
    pub(crate) fn len(&self) -> usize {
        serve::lock(&self.queue).len()
    }

    /// Take one firing of the first fault `matches` accepts: its kind, and the fault is
    /// gone once it has no firing left.
    pub(crate) fn take(&self, matches: impl Fn(&Fault<K>) -> bool) -> Option<K> {
        let mut queue = serve::lock(&self.queue);
        let index = queue.iter().position(matches)?;
        let kind = queue[index].kind.clone();
        if let Some(remaining) = &mut queue[index].remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                queue.remove(index);
            }
        }
        Some(kind)
    }

    /// Whether any queued fault is accepted by `matches` (nothing is taken).
    pub(crate) fn any(&self, matches: impl Fn(&Fault<K>) -> bool) -> bool {
        serve::lock(&self.queue).iter().any(matches)
    }
}
