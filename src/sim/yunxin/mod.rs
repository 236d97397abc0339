//! A faithful fake NetEase Yunxin (网易云信) IM server, following what
//! `docs/upstreams/yunxin.md` records of the real one, quirks included (where the sources
//! leave a behaviour open, it takes the harsher reading):
//!
//! - CheckSum over `AppSecret ‖ Nonce ‖ CurTime` with a ±300 s window; a wrong or stale
//!   signature answers code 414;
//! - the `{code, msg, data}` envelope with HTTP 200 for business errors; 414 for bad
//!   parameters (`limit` outside 1–100, `begin_time ≥ end_time`), 416 when an API goes over
//!   its per-second limit (100 by default, then blocked for 10 s), queued 416/5xx/HTTP 502
//!   faults;
//! - `message_server_id`s above 2^53 as bare JSON integers;
//! - history pages with an opaque `next_token` bound to the query, short pages while
//!   `has_more` is still true, runs of messages at the same `create_time`, and the two
//!   readings of `descending` ([`Descending`]);
//! - edits via `modify_time`/`modify_account_id`; one-way recalls as no-sense messages
//!   (only with `include_no_sense_msg=true`); two-way recalls and deletes removing the
//!   message; a recalled last message sets `message_state = 1` and `revoke_notification`;
//! - quick comments through the batch query with `success_list`/`failed_list`; a query
//!   holding a message without `message_client_id` (required by the API reference) is
//!   refused as a whole with 414 ([`Behaviour::quick_comment_needs_client_id`]); the query
//!   can be failed (queued codes, HTTP errors, an answer without `success_list`);
//! - messages sent with `sender_no_sense`/`receiver_no_sense`, returned like one-way
//!   recalled ones: only with `include_no_sense_msg=true`;
//! - conversation lists only for accounts with cloud conversations (403 otherwise);
//!   advanced-team history for a non-member with `check_team_valid` left true answers
//!   108403;
//! - both `last_message` shapes (v2 nested, v2.1 flat);
//! - NOS for the files of image, audio, video and file messages, at
//!   `/nos/<bucket>/<key>` of the fake itself ([`media`]): deterministic bytes (valid PNGs
//!   for images) whose md5 the messages declare; a deleted object answers 404, a signed URL
//!   past its `Expires` 403, one message declares a wrong md5 and one sends its attachment
//!   as a JSON string ([`WorldSpec::media_quirks`]). NOS requests count and can be failed
//!   like the API's, under [`NOS_PATH`], and need no CheckSum.
//!
//! [`SimServer::start`] serves a [`World`] on `127.0.0.1:<random port>`; clients append
//! `/im/v2.1/...` to [`SimServer::base_url`]. The world stays mutable while serving.

mod copies;
pub mod media;
mod server;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::serve::{self, RequestCounts};

pub use copies::{copy_headers, send_copies, CopySigning};
pub use media::{MediaFile, MediaOutcome, NOS_PATH};
pub use server::{
    checksum, BATCH_PATH, BATCH_V2_PATH, HISTORY_PATH, LIST_PATH, QUICK_COMMENT_PATH, UPDATE_PATH,
};
pub use world::{
    now_ms, Activity, AttachmentTruth, Behaviour, Comment, Conversation, ConversationTruth,
    Descending, Message, MessageTruth, Removal, Stream, Team, TokenLoop, World, WorldSpec,
    FIRST_SERVER_ID,
};

/// What a queued fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer `{"code": N, ...}` with HTTP 200 (416 rate limit, 500/503/514 transient, ...).
    Code(i64),
    /// Answer this HTTP status with an HTML body (a proxy's 502).
    Http(u16),
    /// The next history page holding messages has one whose `message_server_id` is garbage.
    MalformedMessage,
    /// The quick-comment query answers `code: 200` with a `data` that has no
    /// `success_list` (the API reference marks it optional), only an empty `failed_list`.
    NoSuccessList,
}

impl FaultKind {
    /// Kinds a handler plays back (the others are answered before any handler runs).
    fn in_handler(&self) -> bool {
        matches!(self, FaultKind::MalformedMessage | FaultKind::NoSuccessList)
    }
}

#[derive(Clone, Debug)]
struct Fault {
    kind: FaultKind,
    /// Route template (e.g. [`HISTORY_PATH`]); `None` = any.
    path: Option<String>,
    /// Matching requests to let through before firing.
    skip: usize,
    remaining: usize,
}

/// Queued faults, shared with the running server.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    queue: Arc<Mutex<Vec<Fault>>>,
}

impl Faults {
    /// Answer `code` on the next `times` requests to `path` (a route template, or any).
    pub fn code(&self, path: Option<&str>, times: usize, code: i64) {
        self.push(FaultKind::Code(code), path, times);
    }

    /// Answer HTTP `status` on the next `times` requests to `path`.
    pub fn http(&self, path: Option<&str>, times: usize, status: u16) {
        self.push(FaultKind::Http(status), path, times);
    }

    /// Break one message of the next `times` history pages.
    pub fn malformed(&self, times: usize) {
        self.push(FaultKind::MalformedMessage, Some(HISTORY_PATH), times);
    }

    /// Answer the next `times` quick-comment queries without a `success_list`.
    pub fn no_success_list(&self, times: usize) {
        self.push(FaultKind::NoSuccessList, Some(QUICK_COMMENT_PATH), times);
    }

    /// Answer `code` on `times` requests to `path` after letting `skip` of them through
    /// (e.g. to break a read in its middle).
    pub fn code_after(&self, path: Option<&str>, skip: usize, times: usize, code: i64) {
        self.lock().push(Fault {
            kind: FaultKind::Code(code),
            path: path.map(str::to_string),
            skip,
            remaining: times,
        });
    }

    fn push(&self, kind: FaultKind, path: Option<&str>, times: usize) {
        self.lock().push(Fault {
            kind,
            path: path.map(str::to_string),
            skip: 0,
            remaining: times,
        });
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Faults still queued (sum of remaining firings).
    pub fn pending(&self) -> usize {
        self.lock().iter().map(|f| f.remaining).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Fault>> {
        serve::lock(&self.queue)
    }

    /// Take one firing of the first fault matching `path` and `kind`: the transport-level
    /// kinds (`None`) or one handler-level kind.
    fn take(&self, path: &str, kind: Option<FaultKind>) -> Option<FaultKind> {
        let mut q = self.lock();
        let i = q.iter().position(|f| {
            f.remaining > 0
                && f.path.as_deref().is_none_or(|p| p == path)
                && match &kind {
                    None => !f.kind.in_handler(),
                    Some(k) => f.kind == *k,
                }
        })?;
        if q[i].skip > 0 {
            q[i].skip -= 1;
            return None;
        }
        q[i].remaining -= 1;
        let kind = q[i].kind.clone();
        if q[i].remaining == 0 {
            q.remove(i);
        }
        Some(kind)
    }
}

/// A running fake server (the shared handle in [`crate::sim::serve`]).
pub type SimServer = serve::SimServer<World, Faults>;

impl SimServer {
    /// Serve `world` on a free local port.
    ///
    /// Panics if no local port can be bound (a test environment problem).
    pub async fn start(world: World) -> SimServer {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        SimServer::start_on(world, addr)
            .await
            .expect("bind a local port for the fake server")
    }

    /// Serve `world` on `addr` (for `chatvault sim`).
    ///
    /// Routed requests count, by API route template (e.g. [`HISTORY_PATH`]), faulted and
    /// refused ones included; clients append `/im/v2.1/...` to [`SimServer::base_url`].
    pub async fn start_on(world: World, addr: SocketAddr) -> std::io::Result<SimServer> {
        let state = server::AppState {
            world: Arc::new(Mutex::new(world)),
            faults: Faults::default(),
            counts: Arc::new(RequestCounts::default()),
            limits: Arc::new(server::Limits::default()),
        };
        let app = server::router(state.clone());
        let server = SimServer::serve(addr, app, state.world, state.faults, state.counts).await?;
        let origin = server.base_url();
        server.world().set_media_origin(&origin);
        Ok(server)
    }

    /// The ground truth now (see [`World::truth`]).
    pub fn truth(&self) -> Vec<ConversationTruth> {
        self.world().truth()
    }
}
