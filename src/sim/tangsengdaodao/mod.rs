//! A faithful fake TangSengDaoDao business server, following
//! `specs/tangsengdaodao.md`, quirks included (it is never more lenient than the spec).
//!
//! - [`world`]: the ground truth (users, groups, channels, messages, extras, reactions,
//!   offsets); `mutate` holds the changes tests drive, `sessions` the login tokens and
//!   the extra-sync cursor cache;
//! - [`generate`]: deterministic, scalable world generation from a [`WorldSpec`]
//!   (message bodies in `payloads`, sentences from [`crate::sim::text`]);
//! - [`truth`]: an owned snapshot of everything, to compare an archive against;
//! - `server`, `sync_api` and `render`: the HTTP endpoints and their JSON;
//! - [`faults`]: queued failures (429, 5xx, slow, dropped, malformed, per-channel 400).
//!
//! [`SimServer::start`] serves a [`World`] on `127.0.0.1:<random port>`; clients append
//! `/v1/...` to [`SimServer::base_url`]. The world stays mutable while serving.

pub mod faults;
pub mod generate;
mod mutate;
mod payloads;
mod render;
mod server;
mod sessions;
mod sync_api;
pub mod truth;
pub mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::serve::{self, RequestCounts, Serving};

pub use faults::{Fault, FaultKind, Faults, Malformed};
pub use generate::WorldSpec;
pub use mutate::Activity;
pub use sessions::LoginError;
pub use truth::{ChannelTruth, MessageTruth, ReactionTruth};
pub use world::{
    Channel, ChannelKey, Group, Message, MessageExtra, MessageRef, Reaction, User, World, GROUP,
    PERSON, SYSTEM_UID, TSDD_SYSTEM_UID,
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
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        SimServer::start_on(world, addr)
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

    /// Lock the world to read or mutate it. Do not hold the guard across an `.await`
    /// that waits for the server: requests would block on it.
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

    /// Requests received so far, over all paths (404s and faulted ones included).
    pub fn request_count(&self) -> u64 {
        self.serving.request_count()
    }

    /// Requests received so far on one path, e.g. `/v1/message/channel/sync`.
    pub fn request_count_for(&self, path: &str) -> u64 {
        self.serving.request_count_for(path)
    }

    /// Requests received so far, per path.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.serving.request_counts()
    }

    /// Stop serving: graceful for up to a second, then the server task is aborted.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}
