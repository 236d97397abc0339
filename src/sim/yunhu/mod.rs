//! A faithful fake Yunhu user-API server, following `specs/yunhu.md`, quirks included: real
//! protobuf bodies, newest-first `list-message` pages of at most 30, the ~30-message window
//! of `list-message-by-seq`, edit records whose `contentOld` is a JSON string, recalls that
//! keep or blank content (a [`WorldSpec`] switch), the md5 shortcut of the conversation list,
//! the JSON `-101` body for a bad token, seq gaps (messages deleted for the account, groups
//! joined late), and fault injection ([`Faults`]).
//!
//! [`SimServer::start`] serves a [`World`] on `127.0.0.1:<random port>`; clients append
//! `/v1/...` to [`SimServer::base_url`]. The world stays mutable while serving.

pub mod faults;
pub mod generate;
mod server;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::serve::{self, RequestCounts, Serving};

pub use faults::{Fault, FaultKind, Faults, Malformed};
pub use server::{BY_SEQ_WINDOW, MAX_PAGE};
pub use world::{
    Activity, Chat, ChatTruth, EditRecord, Msg, MsgTruth, Person, World, WorldSpec, BOT, GROUP,
    USER,
};

/// A running fake server.
pub struct SimServer {
    serving: Serving,
    world: Arc<Mutex<World>>,
    faults: Faults,
}

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
    pub async fn start_on(world: World, addr: SocketAddr) -> std::io::Result<SimServer> {
        let state = server::AppState {
            world: Arc::new(Mutex::new(world)),
            faults: Faults::default(),
            counts: Arc::new(RequestCounts::default()),
        };
        let app = server::router(state.clone());
        Ok(SimServer {
            serving: Serving::start(addr, app, state.counts).await?,
            world: state.world,
            faults: state.faults,
        })
    }

    /// The API root, e.g. `http://127.0.0.1:40123`; clients append `/v1/...`.
    pub fn base_url(&self) -> String {
        self.serving.base_url()
    }

    /// Lock the world to read or mutate it. Do not hold the guard across an `.await`.
    pub fn world(&self) -> MutexGuard<'_, World> {
        serve::lock(&self.world)
    }

    /// A shared handle on the world, e.g. for a background activity task.
    pub fn world_handle(&self) -> Arc<Mutex<World>> {
        self.world.clone()
    }

    /// The fault queue (a cheap clone sharing the server's queue).
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// Requests received so far, over all paths.
    pub fn request_count(&self) -> u64 {
        self.serving.request_count()
    }

    /// Requests received so far on one path, e.g. `/v1/msg/list-message`.
    pub fn request_count_for(&self, path: &str) -> u64 {
        self.serving.request_count_for(path)
    }

    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.serving.request_counts()
    }

    /// Stop serving: graceful for up to a second, then the server task is aborted.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}
