//! A faithful fake TangSengDaoDao business server, following what
//! docs/upstreams/tangsengdaodao.md says the real one does, quirks included: the welcome
//! message each login posts, the handler panics on a malformed `reply` (before the offset
//! filters) or `visibles`, 400 answers for the server's own failures, `is_deleted` computed
//! per viewer, the extra-sync checkpoint per `source` name. It is never more lenient than the
//! real server; it is simpler in that it has no device offsets and no
//! `messageSaveAcrossDevice=false` mode, and its welcome message lands at once rather than
//! two seconds after the login answer.
//!
//! - [`world`]: the ground truth (users, groups, channels, messages, extras, reactions,
//!   offsets); `mutate` holds the changes tests drive, `sessions` the login tokens and
//!   the extra-sync cursor cache;
//! - [`generate`]: deterministic, scalable world generation from a [`WorldSpec`]
//!   (message bodies in `payloads`, sentences from [`crate::sim::text`]);
//! - [`truth`]: an owned snapshot of everything, to compare an archive against;
//! - `server`, `sync_api` and `render`: the HTTP endpoints and their JSON;
//! - [`media`]: the files messages name: the public preview route's 302 to a storage
//!   listener on another port, the bytes, and what each message's files are;
//! - [`im`]: the WuKongIM gateway the push channel connects to (`GET /v1/users/:uid/im`
//!   names it), pushing new messages and the sync commands as the world changes;
//! - [`faults`]: queued failures (429, 5xx, slow, dropped, malformed, per-channel 400, 400
//!   server-failure bodies).
//!
//! [`SimServer::start`] serves a [`World`] on `127.0.0.1:<random port>`; clients append
//! `/v1/...` to [`SimServer::base_url`]. The world stays mutable while serving.

pub mod faults;
pub mod generate;
pub mod im;
pub mod media;
mod mutate;
mod payloads;
mod render;
mod server;
mod sessions;
mod sync_api;
pub mod truth;
pub mod world;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::serve::{self, RequestCounts};

pub use faults::{Fault, FaultKind, Faults, Malformed};
pub use generate::WorldSpec;
pub use media::{AttachmentTruth, MediaFate, MediaQuirks};
pub use mutate::Activity;
pub use sessions::LoginError;
pub use truth::{ChannelTruth, MessageTruth, ReactionTruth};
pub use world::{
    Channel, ChannelKey, Group, Message, MessageExtra, MessageRef, Reaction, User, World, GROUP,
    PERSON, SYSTEM_UID, TSDD_SYSTEM_UID,
};

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
    /// Every request counts, by path (e.g. `/v1/message/channel/sync`), 404s and faulted
    /// ones included, and so do the file storage's (another port of the same address, by
    /// object path); clients append `/v1/...` to [`SimServer::base_url`].
    pub async fn start_on(world: World, addr: SocketAddr) -> std::io::Result<SimServer> {
        let world = Arc::new(Mutex::new(world));
        let counts = Arc::new(RequestCounts::default());
        let storage = media::Storage::start(addr.ip(), world.clone(), counts.clone()).await?;
        let faults = Faults::default();
        let im = im::Gateway::start(addr.ip(), world.clone(), faults.im_handle()).await?;
        let state = server::AppState {
            world,
            faults,
            counts,
            storage: Arc::new(storage),
            im: Arc::new(im),
        };
        let app = server::router(state.clone());
        SimServer::serve(addr, app, state.world, state.faults, state.counts).await
    }
}
