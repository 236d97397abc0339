//! A faithful fake Yunhu user-API server, quirks included, following what
//! `docs/upstreams/yunhu.md` writes down: real protobuf bodies, newest-first `list-message`
//! pages of at most 30 that know no anchor the account cannot see, `list-message-by-seq`
//! with its ~30-message window read each way the community's sources read it ([`BySeq`]),
//! edit records whose `contentOld` is a JSON string carrying only the text, buttons and
//! quoted text, recalls that keep or blank content (a [`WorldSpec`] switch), the md5
//! shortcut of the conversation list, the JSON `-101` body for a bad token, seq gaps
//! (messages deleted for the account, groups joined late, auto-delete), and fault injection
//! ([`Faults`]).
//!
//! Media: every file a message references is served by the fake too, with the media
//! hosts' `Referer` rule, signed URLs that expire and a deleted file ([`media`]); the
//! truth lists each message's files with the sha256 of their bytes.
//!
//! Push: `/ws` speaks Yunhu's WebSocket (JSON login and heartbeats in, protobuf frames
//! out) and pushes each post, edit and recall of the world as it happens ([`push`]).
//!
//! [`SimServer::start`] serves a [`World`] on `127.0.0.1:<random port>`; clients append
//! `/v1/...` to [`SimServer::base_url`]. The world stays mutable while serving.

pub mod faults;
pub mod generate;
pub mod media;
pub mod push;
mod server;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use super::serve::{self, RequestCounts};

pub use faults::{Fault, FaultKind, Faults, Malformed};
pub use server::{BY_SEQ_WINDOW, EDIT_RECORD_PAGE_CAP, MAX_PAGE};
pub use world::{
    Activity, AttachmentTruth, BySeq, Change, Chat, ChatTruth, EditRecord, MediaState, Msg,
    MsgTruth, Person, World, WorldSpec, BOT, GROUP, USER,
};

/// A running fake server (the shared handle in [`crate::sim::serve`]).
pub type SimServer = serve::SimServer<World, Faults>;

impl SimServer {
    /// Serve `world` on a free local port.
    ///
    /// Panics if no local port can be bound (a test environment problem).
    pub async fn start(world: World) -> SimServer {
        SimServer::start_on(world, SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a local port for the fake server")
    }

    /// Serve `world` on `addr` (for `chatvault sim`).
    ///
    /// Every request counts, by path (e.g. `/v1/msg/list-message`), faulted ones included;
    /// clients append `/v1/...` to [`SimServer::base_url`].
    pub async fn start_on(world: World, addr: SocketAddr) -> std::io::Result<SimServer> {
        let state = server::AppState {
            world: Arc::new(Mutex::new(world)),
            faults: Faults::default(),
            counts: Arc::new(RequestCounts::default()),
            media_base: Arc::new(OnceLock::new()),
        };
        let app = server::router(state.clone());
        let server = SimServer::serve(addr, app, state.world, state.faults, state.counts).await?;
        // Media URLs point at the fake itself, known once it listens (before any client
        // can ask).
        let _ = state.media_base.set(server.media_base());
        Ok(server)
    }

    /// The push channel's WebSocket: `ws://127.0.0.1:PORT/ws` ([`push`]).
    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.base_url().replacen("http://", "ws://", 1))
    }

    /// Where the fake serves media: `<base_url>/media`.
    pub fn media_base(&self) -> String {
        format!("{}/media", self.base_url())
    }

    /// Every message's files with the URLs this server serves them under, and the sha256
    /// of their bytes ([`World::attachments_truth`]).
    pub fn attachments_truth(&self) -> BTreeMap<String, Vec<AttachmentTruth>> {
        self.world().attachments_truth(&self.media_base())
    }
}
