//! Real-time benchmark: how long a change upstream takes to become a row in the archive,
//! with push on and off, and what an idle account costs in upstream requests, per platform.
//!
//! Each platform's fake runs with its push channel (Yunhu's WebSocket, TangSengDaoDao's
//! WuKongIM gateway, Yunxin's message copies posted to the daemon's hook) and the daemon's
//! own machinery runs in this process, wired as `chatvault run` wires it: the scheduler,
//! `realtime::start` (a listener and an applier per source, the connectors' own `listen`),
//! and the HTTP server with `/hooks/yunxin/SOURCE`. PostgreSQL is a throwaway cluster with
//! a fresh database per platform. Every account has 200 conversations, first backfilled.
//!
//! - **Latency**: the time from a change made in the fake (new message, edit, recall,
//!   reaction) to its row being visible in `archive.messages` / `archive.message_versions`
//!   / `archive.reactions`, polled every 20 ms. Push on: the default schedule (every 5 min,
//!   so the push path alone brings changes in). Push off (`push = false`): the schedule is
//!   compressed to every `RT_POLL_SECS` seconds (default 5) so the bench ends; those figures
//!   are printed as measured and then as what they mean at the default schedule.
//! - **Idle cost**: upstream HTTP requests of one idle scheduled run (after the backfill),
//!   then the daemon with push on and a compressed schedule (every `RT_IDLE_TICK_SECS`,
//!   default 2) for `RT_IDLE_SECS` (default 60): scheduled ticks, the polls they made, the
//!   requests, and the push channel's keepalive frames; then per-hour figures at the
//!   default schedule.
//!
//! Run: `cargo bench --bench realtime`. Environment: `RT_SAMPLES` (push-on samples per
//! change kind, default 20), `RT_SAMPLES_OFF` (push-off rounds, default 8),
//! `RT_POLL_SECS`, `RT_IDLE_SECS`, `RT_IDLE_TICK_SECS`, `RT_CONVERSATIONS` (default 200).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatvault::config::{
    PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig, YunhuConfig, YunxinConfig,
};
use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::SourceName;
use chatvault::realtime::{self, PushHub};
use chatvault::scheduler::{Scheduler, SchedulerOptions};
use chatvault::sim::{tangsengdaodao as tsdd, yunhu, yunxin};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::env_usize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The default schedule (`0 */5 * * * *`): ticks per hour.
const DEFAULT_TICKS_PER_HOUR: f64 = 12.0;
const DEFAULT_PERIOD_SECS: f64 = 300.0;
/// `[sync] push_poll_factor`'s default.
const DEFAULT_POLL_FACTOR: u32 = 24;
/// Yunhu's `rescan_every_minutes` default.
const YUNHU_RESCAN_MINUTES: f64 = 60.0;
/// How often the archive is looked at while waiting for a row.
const POLL_DB: Duration = Duration::from_millis(20);
/// A push-on sample not archived within this is counted as missed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// After this many misses in a row a kind's push-on samples stop.
const MISSES_TO_GIVE_UP: usize = 2;
const TOKEN: &str = "rt-bench-token-4b1d";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    New,
    Edit,
    Recall,
    Reaction,
}

const KINDS: [Kind; 4] = [Kind::New, Kind::Edit, Kind::Recall, Kind::Reaction];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::New => "new message",
            Kind::Edit => "edit",
            Kind::Recall => "recall",
            Kind::Reaction => "reaction",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Tsdd,
    Yunxin,
    Yunhu,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Tsdd => "TangSengDaoDao",
            Which::Yunxin => "Yunxin",
            Which::Yunhu => "Yunhu",
        }
    }
    fn source(self) -> &'static str {
        match self {
            Which::Tsdd => "tsdd",
            Which::Yunxin => "yx",
            Which::Yunhu => "yh",
        }
    }
    fn has(self, kind: Kind) -> bool {
        !(self == Which::Yunhu && kind == Kind::Reaction)
    }
    /// The push channel signals this kind of change (else it waits for a poll).
    fn pushes(self, kind: Kind) -> bool {
        match self {
            // message copies: new messages and recalls only
            Which::Yunxin => matches!(kind, Kind::New | Kind::Recall),
            _ => self.has(kind),
        }
    }
    fn keepalive(self) -> &'static str {
        match self {
            Which::Tsdd => "WuKongIM PING",
            Which::Yunxin => "none",
            Which::Yunhu => "WebSocket heartbeat",
        }
    }
}

/// A fake upstream with its push channel, and how to change it.
enum Fake {
    Tsdd {
        server: tsdd::SimServer,
        /// (channel, a sender other than the account)
        convs: Vec<(tsdd::ChannelKey, String)>,
        me: String,
    },
    Yunxin {
        server: yunxin::SimServer,
        /// (conversation id, its owner: the archived account)
        convs: Vec<(String, String)>,
        copier: tokio::task::JoinHandle<()>,
    },
    Yunhu {
        server: yunhu::SimServer,
        /// (chat id, a member other than the account)
        convs: Vec<(String, String)>,
    },
}

/// A change made upstream: the archive's ids of the message it concerns.
#[derive(Clone, Debug)]
struct Target {
    conversation: String,
    message: String,
    /// The fake's own id, for later changes.
    raw: String,
    /// The sender, for Yunxin's edits and recalls.
    by: String,
}

impl Fake {
    async fn start(which: Which, conversations: usize) -> Fake {
        match which {
            Which::Tsdd => {
                let groups = conversations / 3;
                let world = tsdd::World::generate(&tsdd::WorldSpec {
                    seed: 42,
                    users: conversations,
                    groups,
                    direct_chats: conversations - groups,
                    messages: conversations * 5,
                    ..tsdd::WorldSpec::default()
                });
                let server = tsdd::SimServer::start(world).await;
                let (convs, me) = {
                    let w = server.world();
                    let me = w.me().uid.clone();
                    let mut convs = Vec::new();
                    for c in w.channels() {
                        let k = c.key().clone();
                        if !w.is_member(&k, &me) {
                            continue;
                        }
                        let other = if k.channel_type == tsdd::PERSON {
                            let peer = k.id_for(&me);
                            (peer != tsdd::TSDD_SYSTEM_UID && w.user(&peer).is_some())
                                .then_some(peer)
                        } else {
                            w.group(&k.fake_id)
                                .and_then(|g| g.members.iter().find(|m| **m != me).cloned())
                        };
                        if let Some(other) = other {
                            convs.push((k, other));
                        }
                    }
                    (convs, me)
                };
                Fake::Tsdd { server, convs, me }
            }
            Which::Yunxin => {
                let teams = conversations / 4;
                let mut world = yunxin::World::generate(&yunxin::WorldSpec {
                    seed: 42,
                    accounts: 1,
                    users: conversations,
                    teams,
                    super_teams: 0,
                    direct_chats: conversations - teams,
                    messages: conversations * 5,
                    end_ms: yunxin::now_ms() - 3_600_000,
                    days: 3,
                    media_quirks: false,
                    ..yunxin::WorldSpec::default()
                });
                world.behaviour.rate_limit = None;
                let server = yunxin::SimServer::start(world).await;
                let convs = {
                    let w = server.world();
                    let owner = w.accounts[0].clone();
                    w.conversations
                        .iter()
                        .filter(|(_, c)| c.owner == owner)
                        .map(|(id, c)| (id.clone(), c.owner.clone()))
                        .collect()
                };
                Fake::Yunxin {
                    server,
                    convs,
                    copier: tokio::spawn(async {}),
                }
            }
            Which::Yunhu => {
                let groups = conversations / 3;
                let world = yunhu::World::generate(&yunhu::WorldSpec {
                    seed: 42,
                    users: conversations,
                    groups,
                    bots: 0,
                    direct_chats: conversations - groups,
                    messages: conversations * 5,
                    unlisted_chats: 0,
                    late_joined_groups: 0,
                    hidden_per_mille: 0,
                    ..yunhu::WorldSpec::default()
                });
                let server = yunhu::SimServer::start(world).await;
                let convs = {
                    let w = server.world();
                    w.chats
                        .iter()
                        .filter(|c| c.chat_type == yunhu::GROUP || c.chat_type == yunhu::USER)
                        .filter_map(|c| {
                            c.members
                                .iter()
                                .find(|p| p.id != w.me.id)
                                .map(|p| (c.chat_id.clone(), p.id.clone()))
                        })
                        .collect()
                };
                Fake::Yunhu { server, convs }
            }
        }
    }

    fn which(&self) -> Which {
        match self {
            Fake::Tsdd { .. } => Which::Tsdd,
            Fake::Yunxin { .. } => Which::Yunxin,
            Fake::Yunhu { .. } => Which::Yunhu,
        }
    }

    fn conversations(&self) -> usize {
        match self {
            Fake::Tsdd { convs, .. } => convs.len(),
            Fake::Yunxin { convs, .. } => convs.len(),
            Fake::Yunhu { convs, .. } => convs.len(),
        }
    }

    fn source(&self, schedule: &str, push: bool, rescan_every_minutes: u32) -> SourceConfig {
        let platform = match self {
            Fake::Tsdd { server, .. } => {
                let spec = tsdd::WorldSpec::default();
                PlatformConfig::Tangsengdaodao(TsddConfig {
                    base_url: server.base_url(),
                    auth: TsddAuth::Password {
                        username: spec.me_username,
                        password: Secret::new(spec.me_password),
                    },
                    device_flag: 1,
                    page_size: 2000,
                })
            }
            Fake::Yunxin { server, .. } => {
                let w = server.world();
                PlatformConfig::Yunxin(YunxinConfig {
                    base_url: server.base_url(),
                    app_key: w.app_key.clone(),
                    app_secret: Secret::new(&w.app_secret),
                    accounts: w.accounts.clone(),
                    history_start: None,
                    rescan_days: 7,
                })
            }
            Fake::Yunhu { server, .. } => PlatformConfig::Yunhu(YunhuConfig {
                base_url: server.base_url(),
                token: Secret::new(yunhu::WorldSpec::default().token),
                rescan_messages: 200,
                rescan_days: 7,
                rescan_every_minutes,
                ws_url: server.ws_url(),
            }),
        };
        SourceConfig {
            name: SourceName::new(self.which().source()),
            schedule: schedule.into(),
            requests_per_second: 0.0,
            request_timeout: Duration::from_secs(30),
            enabled: true,
            push,
            platform,
        }
    }

    fn requests(&self) -> u64 {
        match self {
            Fake::Tsdd { server, .. } => server.request_count(),
            Fake::Yunxin { server, .. } => server.request_count(),
            Fake::Yunhu { server, .. } => server.request_count(),
        }
    }

    fn request_counts(&self) -> BTreeMap<String, u64> {
        match self {
            Fake::Tsdd { server, .. } => server.request_counts(),
            Fake::Yunxin { server, .. } => server.request_counts(),
            Fake::Yunhu { server, .. } => server.request_counts(),
        }
    }

    /// Keepalive frames the push channel's client sent so far.
    fn keepalives(&self) -> u64 {
        match self {
            Fake::Tsdd { server, .. } => server.faults().im().pings(),
            Fake::Yunxin { .. } => 0,
            Fake::Yunhu { server, .. } => server.faults().push.heartbeats(),
        }
    }

    /// Post a new text message in the `i`-th conversation.
    fn post(&self, i: usize, text: &str) -> Target {
        match self {
            Fake::Tsdd { server, convs, .. } => {
                let (key, from) = &convs[i % convs.len()];
                let me = match self {
                    Fake::Tsdd { me, .. } => me.clone(),
                    _ => unreachable!(),
                };
                let m = server
                    .world()
                    .post_message(key, from, json!({"type": 1, "content": text}));
                Target {
                    conversation: key.id_for(&me),
                    message: m.message_id.to_string(),
                    raw: m.message_id.to_string(),
                    by: from.clone(),
                }
            }
            Fake::Yunxin { server, convs, .. } => {
                let (id, owner) = &convs[i % convs.len()];
                let m = server
                    .world()
                    .post_text(id, owner, text)
                    .expect("the fake accepts the post");
                Target {
                    conversation: id.clone(),
                    message: m.to_string(),
                    raw: m.to_string(),
                    by: owner.clone(),
                }
            }
            Fake::Yunhu { server, convs } => {
                let (id, from) = &convs[i % convs.len()];
                let m = server
                    .world()
                    .post_text(id, from, text)
                    .expect("the fake accepts the post");
                Target {
                    conversation: id.clone(),
                    message: m.clone(),
                    raw: m,
                    by: from.clone(),
                }
            }
        }
    }

    /// Make a change of `kind` to `t` (posted before).
    fn change(&self, kind: Kind, t: &Target, text: &str) {
        let ok = match (self, kind) {
            (Fake::Tsdd { server, .. }, Kind::Edit) => server.world().edit(
                t.raw.parse().expect("a TangSengDaoDao id"),
                &json!({"type": 1, "content": text}),
            ),
            (Fake::Tsdd { server, .. }, Kind::Recall) => {
                server
                    .world()
                    .revoke(t.raw.parse().expect("a TangSengDaoDao id"), &t.by);
                true
            }
            (Fake::Tsdd { server, me, .. }, Kind::Reaction) => {
                server.world().toggle_reaction(
                    t.raw.parse().expect("a TangSengDaoDao id"),
                    me,
                    "👍",
                );
                true
            }
            (Fake::Yunxin { server, .. }, Kind::Edit) => {
                server
                    .world()
                    .edit(t.raw.parse().expect("a Yunxin id"), &t.by, text)
            }
            (Fake::Yunxin { server, .. }, Kind::Recall) => server
                .world()
                .recall_two_way(t.raw.parse().expect("a Yunxin id"), &t.by),
            (Fake::Yunxin { server, .. }, Kind::Reaction) => {
                server
                    .world()
                    .add_comment(t.raw.parse().expect("a Yunxin id"), &t.by, 1)
            }
            (Fake::Yunhu { server, .. }, Kind::Edit) => server.world().edit_text(&t.raw, text),
            (Fake::Yunhu { server, .. }, Kind::Recall) => server.world().recall(&t.raw),
            (_, kind) => panic!("{kind:?} is not a change of a posted message here"),
        };
        assert!(ok, "the fake refused the {kind:?} of {t:?}");
    }
}

/// What "the change is in the archive" means per kind: a number that grows with it.
fn kind_sql(kind: Kind) -> &'static str {
    match kind {
        Kind::New => {
            "SELECT count(*) FROM archive.messages WHERE source = $1 AND conversation_id = $2 AND message_id = $3"
        }
        Kind::Edit => {
            "SELECT coalesce(max(version), 0)::bigint FROM archive.message_versions WHERE source = $1 AND conversation_id = $2 AND message_id = $3"
        }
        Kind::Recall => {
            "SELECT count(*) FROM archive.messages WHERE source = $1 AND conversation_id = $2 AND message_id = $3 AND (recalled_at IS NOT NULL OR deleted_at IS NOT NULL)"
        }
        Kind::Reaction => {
            "SELECT count(*) FROM archive.reactions WHERE source = $1 AND conversation_id = $2 AND message_id = $3"
        }
    }
}

async fn kind_count(store: &Store, source: &str, kind: Kind, t: &Target) -> i64 {
    let (n,): (i64,) = sqlx::query_as(kind_sql(kind))
        .bind(source)
        .bind(&t.conversation)
        .bind(&t.message)
        .fetch_one(store.pool())
        .await
        .expect("the archive answers");
    n
}

/// Whether the change is in the archive: its number grew past `before`.
async fn visible(store: &Store, source: &str, kind: Kind, t: &Target, before: i64) -> bool {
    kind_count(store, source, kind, t).await > before
}

/// The number before the change (new messages and recalls start from none).
async fn baseline(store: &Store, source: &str, kind: Kind, t: &Target) -> i64 {
    match kind {
        Kind::New | Kind::Recall => 0,
        Kind::Edit | Kind::Reaction => kind_count(store, source, kind, t).await,
    }
}

/// Wait for one row; the time from `started`, or `None` past `within`.
async fn wait_row(
    store: &Store,
    source: &str,
    kind: Kind,
    t: &Target,
    before: i64,
    started: Instant,
    within: Duration,
) -> Option<Duration> {
    loop {
        if visible(store, source, kind, t, before).await {
            return Some(started.elapsed());
        }
        if started.elapsed() > within {
            return None;
        }
        tokio::time::sleep(POLL_DB).await;
    }
}

/// The daemon's parts for one source, wired as `chatvault run` wires them.
struct Daemon {
    stop: watch::Sender<bool>,
    hub: PushHub,
    base: String,
    scheduler: tokio::task::JoinHandle<()>,
    push: tokio::task::JoinSet<()>,
}

fn sync_options(data: &Path) -> SyncOptions {
    SyncOptions {
        session_dir: Some(data.join("sessions")),
        ..SyncOptions::default()
    }
}

async fn start_daemon(store: &Store, src: &SourceConfig, data: &Path, factor: u32) -> Daemon {
    let (stop, shutdown) = watch::channel(false);
    let metrics = Metrics::new();
    let sync = sync_options(data);
    let sources = std::slice::from_ref(src);
    let options = SchedulerOptions {
        max_concurrent_sources: 4,
        // the bench's schedules are compressed; the default jitter (0-5 s) is added below
        jitter: Duration::ZERO,
        backoff_base: Duration::from_secs(30),
        backoff_cap: Duration::from_secs(30 * 60),
        sync: sync.clone(),
        attachments: None,
    };
    let scheduler =
        Scheduler::new(store.clone(), metrics.clone(), sources, options).expect("a valid schedule");
    let (hub, push) = realtime::start(
        store,
        sources,
        &sync,
        Some(metrics.clone()),
        realtime::connector_factory(Some(data.join("sessions"))),
        shutdown.clone(),
    );
    let scheduler = scheduler.with_push(hub.clone(), factor);
    let state = ApiState::new(store, metrics)
        .with_token(Some(Secret::new(TOKEN)))
        .with_sources(vec![src.clone()])
        .with_scheduler(scheduler.state())
        .with_push(hub.clone());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    let scheduler = tokio::spawn(scheduler.run(shutdown));
    Daemon {
        stop,
        hub,
        base,
        scheduler,
        push,
    }
}

impl Daemon {
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.scheduler).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.push.join_next().await.is_some() {}
        })
        .await;
        self.push.abort_all();
    }
}

/// One platform: its fake, its archive, its data directory.
struct Platform {
    fake: Fake,
    store: Store,
    data: PathBuf,
    _dir: tempfile::TempDir,
    /// Upstream requests of one idle scheduled run after the backfill, and of the backfill.
    idle_run_requests: u64,
    idle_run_counts: BTreeMap<String, u64>,
    backfill_requests: u64,
    backfill_seconds: f64,
    messages: u64,
}

async fn fresh_store() -> Store {
    let (options, _) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options, 4)
        .await
        .expect("the test cluster answers");
    store.migrate().await.expect("migrations apply");
    store
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

impl Platform {
    async fn setup(which: Which, conversations: usize) -> Platform {
        let fake = Fake::start(which, conversations).await;
        let store = fresh_store().await;
        let dir = tempfile::tempdir().expect("a temporary directory");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod");
        }
        let data = dir.path().to_path_buf();
        let src = fake.source("0 */5 * * * *", true, 60);
        let before = fake.requests();
        let t = Instant::now();
        let r = sync_source(&store, &src, &sync_options(&data), None).await;
        assert!(r.ok(), "{} backfill failed: {:?}", which.name(), r.error);
        let backfill_seconds = t.elapsed().as_secs_f64();
        let backfill_requests = fake.requests() - before;
        if which == Which::Yunxin {
            // the connector reads up to a second before now
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        // one idle scheduled run: nothing changed upstream
        let counts = fake.request_counts();
        let before = fake.requests();
        let r = sync_source(&store, &src, &sync_options(&data), None).await;
        assert!(r.ok(), "{} idle run failed: {:?}", which.name(), r.error);
        let idle_run_requests = fake.requests() - before;
        let idle_run_counts = diff(&fake.request_counts(), &counts);
        let (messages,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM archive.messages WHERE source = $1")
                .bind(which.source())
                .fetch_one(store.pool())
                .await
                .expect("the archive answers");
        Platform {
            fake,
            store,
            data,
            _dir: dir,
            idle_run_requests,
            idle_run_counts,
            backfill_requests,
            backfill_seconds,
            messages: messages as u64,
        }
    }

    fn which(&self) -> Which {
        self.fake.which()
    }

    /// For Yunxin: the fake posts its message copies to the daemon's hook, signed.
    fn start_copies(&mut self, daemon: &Daemon) {
        if let Fake::Yunxin { server, copier, .. } = &mut self.fake {
            copier.abort();
            server.world().enable_copies();
            *copier = yunxin::send_copies(
                server.world_handle(),
                format!("{}/hooks/yunxin/{}", daemon.base, Which::Yunxin.source()),
                Arc::new(Mutex::new(yunxin::CopySigning::Right)),
                Duration::from_millis(20),
                Arc::new(Mutex::new(Vec::new())),
            );
        }
    }

    fn stop_copies(&mut self) {
        if let Fake::Yunxin { server, copier, .. } = &mut self.fake {
            copier.abort();
            let _ = server.world().take_copies();
        }
    }

    /// Wait until the push channel is healthy (Yunxin's once a copy came in).
    async fn until_healthy(&self, daemon: &Daemon, tag: &str) {
        let source = self.which().source();
        let started = Instant::now();
        if self.which() == Which::Yunxin && !daemon.hub.healthy(source) {
            let t = self.fake.post(0, &format!("{tag} warm-up"));
            wait_row(
                &self.store,
                source,
                Kind::New,
                &t,
                0,
                Instant::now(),
                Duration::from_secs(30),
            )
            .await
            .expect("the warm-up message arrives");
        }
        while !daemon.hub.healthy(source) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}'s push channel never came up: {:?}",
                self.which().name(),
                daemon.hub.status(source)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Make a change of `kind` to `target` (a new message in conversation `conv` when there
    /// is none): the target, the archive's count for it before, and when it was made.
    async fn make(
        &self,
        kind: Kind,
        target: Option<Target>,
        conv: usize,
        text: &str,
    ) -> (Target, i64, Instant) {
        let source = self.which().source();
        let before = match &target {
            Some(t) => baseline(&self.store, source, kind, t).await,
            None => 0,
        };
        let started = Instant::now();
        let t = match target {
            Some(t) => {
                self.fake.change(kind, &t, text);
                t
            }
            None => self.fake.post(conv, text),
        };
        (t, before, started)
    }

    /// Push on, default schedule: each change alone, one after the other.
    async fn push_on(&mut self, samples: usize) -> BTreeMap<Kind, Series> {
        let which = self.which();
        let source = which.source();
        let src = self.fake.source("0 */5 * * * *", true, 60);
        let daemon = start_daemon(&self.store, &src, &self.data, DEFAULT_POLL_FACTOR).await;
        self.start_copies(&daemon);
        self.until_healthy(&daemon, "push").await;
        let mut out: BTreeMap<Kind, Series> = BTreeMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..samples {
            let conv = 1 + i * 7 % (self.fake.conversations() - 1);
            let mut target: Option<Target> = None;
            for kind in KINDS {
                if !which.has(kind) {
                    continue;
                }
                let series = out.entry(kind).or_default();
                if !which.pushes(kind) || series.given_up {
                    continue;
                }
                let text = format!("push {i} {}", kind.name());
                let t = match (kind, &target) {
                    (Kind::New, _) => None,
                    (_, Some(t)) => Some(t.clone()),
                    (_, None) => break,
                };
                let (t, before, started) = self.make(kind, t, conv, &text).await;
                let took =
                    wait_row(&self.store, source, kind, &t, before, started, PUSH_TIMEOUT).await;
                series.record(took);
                if kind == Kind::New {
                    target = took.map(|_| t);
                }
                // the next change comes a little later, as people type
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..250))).await;
            }
        }
        self.stop_copies();
        daemon.stop().await;
        out
    }

    /// Push off, the schedule compressed to every `period` seconds: in each round one change
    /// of each kind, made together at a random moment of the period, on messages archived
    /// before the round.
    async fn push_off(&mut self, rounds: usize, period: u64) -> (BTreeMap<Kind, Series>, f64) {
        let which = self.which();
        let source = which.source();
        // targets to change, archived first by a plain run
        let setup_src = self.fake.source("0 */5 * * * *", false, 0);
        let mut targets: Vec<Target> = (0..rounds * 3)
            .map(|i| {
                self.fake
                    .post(1 + (i * 11) % (self.fake.conversations() - 1), "target")
            })
            .collect();
        if which == Which::Yunxin {
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let r = sync_source(&self.store, &setup_src, &sync_options(&self.data), None).await;
        assert!(r.ok(), "{}: {:?}", which.name(), r.error);
        for t in &targets {
            assert!(
                visible(&self.store, source, Kind::New, t, 0).await,
                "{t:?} archived"
            );
        }
        // Yunhu re-reads its trailing window on every run here (`rescan_every_minutes = 0`)
        let src = self.fake.source(&format!("*/{period} * * * * *"), false, 0);
        let first_run = last_run_id(&self.store, source).await;
        let pushed_before = push_runs(&self.store, source).await;
        let daemon = start_daemon(&self.store, &src, &self.data, DEFAULT_POLL_FACTOR).await;
        let mut out: BTreeMap<Kind, Series> = BTreeMap::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for round in 0..rounds {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..period * 1000))).await;
            let mut pending = Vec::new();
            for kind in KINDS {
                if !which.has(kind) {
                    continue;
                }
                let text = format!("poll {round} {}", kind.name());
                let t = match kind {
                    Kind::New => None,
                    _ => Some(targets.pop().expect("enough targets")),
                };
                let conv = 2 + round * 13 % (self.fake.conversations() - 2);
                let (t, before, started) = self.make(kind, t, conv, &text).await;
                pending.push((kind, t, before, started));
            }
            let within = Duration::from_secs(period * 3 + 30);
            for (kind, t, before, started) in pending {
                let took = wait_row(&self.store, source, kind, &t, before, started, within).await;
                out.entry(kind).or_default().record(took);
            }
        }
        daemon.stop().await;
        let pushed = push_runs(&self.store, source).await;
        assert_eq!(pushed, pushed_before, "no targeted run with push = false");
        (out, mean_poll_seconds(&self.store, source, first_run).await)
    }

    /// Push on, idle, a compressed schedule: ticks, polls, requests and keepalives.
    async fn idle(&mut self, seconds: u64, tick: u64) -> Idle {
        let which = self.which();
        let source = which.source();
        let src = self.fake.source(&format!("*/{tick} * * * * *"), true, 60);
        let daemon = start_daemon(&self.store, &src, &self.data, DEFAULT_POLL_FACTOR).await;
        self.start_copies(&daemon);
        self.until_healthy(&daemon, "idle").await;
        // the warm-up copy's targeted run (and its repeats) end before the window opens
        tokio::time::sleep(Duration::from_secs(3)).await;
        let polls_before = poll_runs(&self.store, source).await;
        let pushed_before = push_runs(&self.store, source).await;
        let requests_before = self.fake.requests();
        let counts_before = self.fake.request_counts();
        let keepalives_before = self.fake.keepalives();
        let started = Instant::now();
        let mut healthy_throughout = true;
        while started.elapsed() < Duration::from_secs(seconds) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            healthy_throughout &= daemon.hub.healthy(source);
        }
        let window = started.elapsed().as_secs_f64();
        let idle = Idle {
            window,
            ticks: (window / tick as f64).floor() as u64,
            polls: poll_runs(&self.store, source).await - polls_before,
            push_runs: push_runs(&self.store, source).await - pushed_before,
            requests: self.fake.requests() - requests_before,
            by_path: diff(&self.fake.request_counts(), &counts_before),
            keepalives: self.fake.keepalives() - keepalives_before,
            healthy_throughout,
        };
        self.stop_copies();
        daemon.stop().await;
        idle
    }
}

async fn count_runs(store: &Store, source: &str, trigger: &str) -> u64 {
    let (n,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM archive.sync_runs WHERE source = $1 AND trigger = $2")
            .bind(source)
            .bind(trigger)
            .fetch_one(store.pool())
            .await
            .expect("the archive answers");
    n as u64
}

async fn last_run_id(store: &Store, source: &str) -> i64 {
    let (n,): (Option<i64>,) =
        sqlx::query_as("SELECT max(run_id) FROM archive.sync_runs WHERE source = $1")
            .bind(source)
            .fetch_one(store.pool())
            .await
            .expect("the archive answers");
    n.unwrap_or(0)
}

/// The mean duration of the scheduled runs after run `after`, in seconds.
async fn mean_poll_seconds(store: &Store, source: &str, after: i64) -> f64 {
    let (s,): (Option<f64>,) = sqlx::query_as(
        "SELECT avg(extract(epoch FROM finished_at - started_at))::float8 FROM archive.sync_runs \
         WHERE source = $1 AND trigger = 'poll' AND run_id > $2 AND finished_at IS NOT NULL",
    )
    .bind(source)
    .bind(after)
    .fetch_one(store.pool())
    .await
    .expect("the archive answers");
    s.unwrap_or(0.0)
}

async fn poll_runs(store: &Store, source: &str) -> u64 {
    count_runs(store, source, "poll").await
}

async fn push_runs(store: &Store, source: &str) -> u64 {
    count_runs(store, source, "push").await
}

#[derive(Debug, Default)]
struct Series {
    ms: Vec<f64>,
    missed: usize,
    misses_in_a_row: usize,
    given_up: bool,
}

impl Series {
    fn record(&mut self, took: Option<Duration>) {
        match took {
            Some(d) => {
                self.ms.push(d.as_secs_f64() * 1000.0);
                self.misses_in_a_row = 0;
            }
            None => {
                self.missed += 1;
                self.misses_in_a_row += 1;
                self.given_up = self.misses_in_a_row >= MISSES_TO_GIVE_UP;
            }
        }
    }

    /// Nearest-rank percentile.
    fn pct(&self, p: f64) -> Option<f64> {
        if self.ms.is_empty() {
            return None;
        }
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }
}

#[derive(Debug)]
struct Idle {
    window: f64,
    ticks: u64,
    polls: u64,
    push_runs: u64,
    requests: u64,
    by_path: BTreeMap<String, u64>,
    keepalives: u64,
    healthy_throughout: bool,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let samples = env_usize("RT_SAMPLES", 20).max(1);
    let rounds = env_usize("RT_SAMPLES_OFF", 8).max(1);
    let period = env_usize("RT_POLL_SECS", 5).clamp(1, 59) as u64;
    let idle_secs = env_usize("RT_IDLE_SECS", 60).max(5) as u64;
    let idle_tick = env_usize("RT_IDLE_TICK_SECS", 2).clamp(1, 59) as u64;
    let conversations = env_usize("RT_CONVERSATIONS", 200).max(3);
    println!(
        "real-time benchmark: {conversations} conversations per account; push on: {samples} samples per change kind; push off: {rounds} rounds, schedule every {period} s; idle: {idle_secs} s at a tick every {idle_tick} s; load average {}",
        load_average()
    );

    let mut platforms = Vec::new();
    for which in [Which::Tsdd, Which::Yunxin, Which::Yunhu] {
        let p = Platform::setup(which, conversations).await;
        println!(
            "{}: {} conversations, {} messages backfilled in {:.1} s ({} requests); one idle scheduled run: {} requests {:?}",
            which.name(),
            p.fake.conversations(),
            p.messages,
            p.backfill_seconds,
            p.backfill_requests,
            p.idle_run_requests,
            p.idle_run_counts,
        );
        platforms.push(p);
    }

    // Latency, push on then off.
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut run_secs = Vec::new();
    for p in platforms.iter_mut() {
        let t = Instant::now();
        on.push(p.push_on(samples).await);
        println!(
            "{} push on measured in {:.0} s",
            p.which().name(),
            t.elapsed().as_secs_f64()
        );
    }
    for p in platforms.iter_mut() {
        let t = Instant::now();
        let (series, run) = p.push_off(rounds, period).await;
        off.push(series);
        run_secs.push(run);
        println!(
            "{} push off measured in {:.0} s",
            p.which().name(),
            t.elapsed().as_secs_f64()
        );
    }
    // Idle: the three daemons side by side (nothing happens in any of them).
    let idle = {
        let mut it = platforms.iter_mut();
        let (a, b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let (x, y, z) = tokio::join!(
            a.idle(idle_secs, idle_tick),
            b.idle(idle_secs, idle_tick),
            c.idle(idle_secs, idle_tick)
        );
        [x, y, z]
    };

    println!();
    println!("Latency: change in the fake -> row visible in the archive (ms; archive polled every 20 ms)");
    println!(
        "{:<15} {:<12} {:<5} {:>4} {:>7} {:>7} {:>7}  note",
        "platform", "change", "push", "n", "p50", "p99", "max"
    );
    for (i, p) in platforms.iter().enumerate() {
        let which = p.which();
        for kind in KINDS {
            if !which.has(kind) {
                println!(
                    "{:<15} {:<12} {:<5} {:>4} {:>7} {:>7} {:>7}  the platform has no reactions",
                    which.name(),
                    kind.name(),
                    "on",
                    "n/a",
                    "n/a",
                    "n/a",
                    "n/a"
                );
                println!(
                    "{:<15} {:<12} {:<5} {:>4} {:>7} {:>7} {:>7}",
                    which.name(),
                    kind.name(),
                    "off",
                    "n/a",
                    "n/a",
                    "n/a",
                    "n/a"
                );
                continue;
            }
            let s = &on[i][&kind];
            let note = if !which.pushes(kind) {
                format!(
                    "no push signal for it: arrives with the next poll (with push healthy at the default schedule, every {} min: p50 ~{} min)",
                    DEFAULT_POLL_FACTOR * 5,
                    DEFAULT_POLL_FACTOR * 5 / 2
                )
            } else {
                let mut n = String::new();
                if s.missed > 0 {
                    n += &format!(
                        "{} not archived within {} s",
                        s.missed,
                        PUSH_TIMEOUT.as_secs()
                    );
                    if s.given_up {
                        n += " (gave up)";
                    }
                    n += "; ";
                }
                match s.pct(99.0) {
                    Some(p99) if s.missed == 0 => {
                        n += if p99 < 2000.0 {
                            "goal p99 < 2 s: met"
                        } else {
                            "goal p99 < 2 s: MISSED"
                        }
                    }
                    _ => n += "goal p99 < 2 s: MISSED",
                }
                n
            };
            let n = if which.pushes(kind) {
                format!("{}", s.ms.len())
            } else {
                "-".into()
            };
            println!(
                "{:<15} {:<12} {:<5} {:>4} {:>7} {:>7} {:>7}  {note}",
                which.name(),
                kind.name(),
                "on",
                n,
                fmt_ms(s.pct(50.0)),
                fmt_ms(s.pct(99.0)),
                fmt_ms(s.pct(100.0)),
            );
            let s = &off[i][&kind];
            let mut note = format!("SCALED: schedule every {period} s");
            if which == Which::Yunhu && kind != Kind::New {
                note += ", window re-read every run (rescan_every_minutes = 0)";
            }
            if s.missed > 0 {
                note += &format!("; {} not archived within {} s", s.missed, period * 3 + 30);
            }
            note += &format!(
                "; samples {:?}",
                s.ms.iter().map(|v| v.round() as u64).collect::<Vec<_>>()
            );
            println!(
                "{:<15} {:<12} {:<5} {:>4} {:>7} {:>7} {:>7}  {note}",
                which.name(),
                kind.name(),
                "off",
                s.ms.len(),
                fmt_ms(s.pct(50.0)),
                fmt_ms(s.pct(99.0)),
                fmt_ms(s.pct(100.0)),
            );
        }
    }
    println!();
    println!("Push off at the default schedule (every 300 s, jitter 0-5 s): latency = wait for the next tick + jitter + the run.");
    for (i, p) in platforms.iter().enumerate() {
        let which = p.which();
        // the scheduled runs' own mean duration in the push-off phase
        let run = run_secs[i];
        let p50 = DEFAULT_PERIOD_SECS / 2.0 + 2.5 + run;
        let p99 = DEFAULT_PERIOD_SECS * 0.99 + 5.0 * 0.99 + run;
        let mut line = format!(
            "  {:<15} new message{}: p50 ~{p50:.0} s, p99 ~{p99:.0} s (mean scheduled run {run:.2} s)",
            which.name(),
            if which == Which::Yunhu { "" } else { ", edit, recall, reaction" }
        );
        if which == Which::Yunhu {
            line += &format!(
                "; edit, recall: when the trailing window is re-read (rescan_every_minutes = {YUNHU_RESCAN_MINUTES:.0}): p50 ~{:.0} min, p99 ~{:.0} min",
                YUNHU_RESCAN_MINUTES / 2.0 + DEFAULT_PERIOD_SECS / 60.0 / 2.0,
                YUNHU_RESCAN_MINUTES * 0.99 + DEFAULT_PERIOD_SECS / 60.0
            );
        }
        println!("{line}");
    }

    println!();
    println!("Idle cost: an account of {conversations} conversations with no changes");
    println!(
        "  measured: push on, schedule every {idle_tick} s (push_poll_factor {DEFAULT_POLL_FACTOR}), {idle_secs} s window"
    );
    println!(
        "  {:<15} {:>9} {:>6} {:>6} {:>10} {:>10} {:>9} {:>11}  keepalive",
        "platform", "req/run", "ticks", "polls", "push runs", "requests", "healthy", "keepalives"
    );
    for (p, i) in platforms.iter().zip(&idle) {
        println!(
            "  {:<15} {:>9} {:>6} {:>6} {:>10} {:>10} {:>9} {:>11}  {} ({:.1} s window)",
            p.which().name(),
            p.idle_run_requests,
            i.ticks,
            i.polls,
            i.push_runs,
            i.requests,
            if i.healthy_throughout { "yes" } else { "no" },
            i.keepalives,
            p.which().keepalive(),
            i.window
        );
    }
    for (p, i) in platforms.iter().zip(&idle) {
        println!(
            "  {:<15} requests in the window by path: {:?}",
            p.which().name(),
            i.by_path
        );
    }
    println!(
        "  per hour at the default schedule (12 ticks): polling = 12 x req/run; push = (12 / {DEFAULT_POLL_FACTOR}) x req/run + keepalives/hour"
    );
    println!(
        "  {:<15} {:>12} {:>15} {:>14} {:>12} {:>8}  goal >= 10x",
        "platform", "polling/h", "push polls/h", "keepalives/h", "push req/h", "ratio"
    );
    for (p, i) in platforms.iter().zip(&idle) {
        let which = p.which();
        let per_run = p.idle_run_requests as f64;
        let polling = DEFAULT_TICKS_PER_HOUR * per_run;
        // one tick in `push_poll_factor` polls while the channel is healthy (the measured
        // window shows it: `polls` of `ticks`)
        let poll_share = 1.0 / f64::from(DEFAULT_POLL_FACTOR);
        let keepalives_h = i.keepalives as f64 / i.window * 3600.0;
        // (a Yunxin copy channel counts as healthy once a poll found nothing the copies had
        // not brought, so a quiet app is polled as seldom as the others)
        let (polls_h, why) = (DEFAULT_TICKS_PER_HOUR * poll_share, "");
        let push = polls_h * per_run + keepalives_h;
        let ratio = if push > 0.0 {
            polling / push
        } else {
            f64::INFINITY
        };
        println!(
            "  {:<15} {:>12.0} {:>15.2} {:>14.0} {:>12.0} {:>7.1}x  {}{why}",
            which.name(),
            polling,
            polls_h,
            keepalives_h,
            push,
            ratio,
            if ratio >= 10.0 { "met" } else { "MISSED" }
        );
    }
    println!("load average after: {}", load_average());
    Ok(())
}
