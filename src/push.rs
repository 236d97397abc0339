//! Push channels: what a platform tells chatvault as it happens (Yunhu's WebSocket,
//! Yunxin's message copies posted to the daemon, TangSengDaoDao through WuKongIM). A push is
//! only a *signal*: "conversation C changed (a new message, an edit, a recall, a
//! reaction)". The engine answers it by reading that conversation now through the same
//! fetch, diff, event and index path as a scheduled run, so a push never writes anything
//! the polling path would not, and a lost push loses nothing: polling stays the safety net.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

/// What a push says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    NewMessage,
    Edit,
    Recall,
    Delete,
    Reaction,
    /// Something else changed in the conversation (a command the connector does not read).
    Other,
}

/// One push: which conversation to read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSignal {
    /// As the connector's `ConversationObservation::conversation_id`.
    pub conversation_id: String,
    pub kind: PushKind,
    pub message_id: Option<String>,
    /// When upstream says the change happened (for the push lag).
    pub upstream_at: Option<DateTime<Utc>>,
}

/// A push channel's health, as `status`, `/api/status`, the status page and `/metrics`
/// show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushState {
    /// Whether the channel is up now (logged in, heartbeats answered).
    pub connected: bool,
    /// Since when it has been up or down.
    pub since: Option<DateTime<Utc>>,
    /// Connections made after the first.
    pub reconnects: u64,
    pub pushes: u64,
    pub last_push_at: Option<DateTime<Utc>>,
    /// Why the channel last went down, without secrets.
    pub last_error: Option<String>,
}

/// Where a connector's push channel sends its signals and reports its health. Cheap to
/// clone; sending never blocks the channel for long (a full queue drops the signal: the
/// next scheduled run reads the conversation anyway).
#[derive(Clone, Debug)]
pub struct PushSink {
    signals: mpsc::Sender<PushSignal>,
    state: Arc<Mutex<PushState>>,
}

impl PushSink {
    pub fn new(signals: mpsc::Sender<PushSignal>, state: Arc<Mutex<PushState>>) -> Self {
        PushSink { signals, state }
    }

    /// A push arrived: count it and pass it on.
    pub fn signal(&self, signal: PushSignal) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.pushes += 1;
            state.last_push_at = Some(Utc::now());
        }
        let _ = self.signals.try_send(signal);
    }

    /// The channel is up (after login).
    pub fn connected(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.connected {
            state.connected = true;
            state.since = Some(Utc::now());
        }
    }

    /// A channel fed by upstream's requests last pushed at `at`, as the archive recorded it
    /// before this process started: it counts as set up (connected since then) unless this
    /// process saw something newer already.
    pub fn pushed_before(&self, at: DateTime<Utc>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.last_push_at.is_none() {
            state.connected = true;
            state.since = Some(state.since.map_or(at, |s| s.min(at)));
            state.last_push_at = Some(at);
        }
    }

    /// The channel went down, saying why.
    pub fn disconnected(&self, why: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.connected {
            state.reconnects += 1;
        }
        state.connected = false;
        state.since = Some(Utc::now());
        state.last_error = Some(why.to_string());
    }

    pub fn state(&self) -> PushState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A push channel's state as `/api/status` and the status page show it.
#[derive(Clone, Debug, Serialize)]
pub struct PushStatus {
    #[serde(flatten)]
    pub state: PushState,
    /// Connected and recently heard from: polling is reduced.
    pub healthy: bool,
    /// Seconds from the last pushed change upstream to the end of the run that archived it.
    pub lag_seconds: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_counted_and_a_full_queue_never_blocks() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = PushSink::new(tx, Arc::default());
        sink.connected();
        let signal = PushSignal {
            conversation_id: "c".into(),
            kind: PushKind::NewMessage,
            message_id: None,
            upstream_at: None,
        };
        sink.signal(signal.clone());
        sink.signal(signal.clone());
        assert_eq!(sink.state().pushes, 2);
        assert_eq!(rx.try_recv().unwrap(), signal);
        assert!(rx.try_recv().is_err());
        sink.disconnected("closed");
        let state = sink.state();
        assert!(!state.connected);
        assert_eq!(state.reconnects, 1);
    }
}
