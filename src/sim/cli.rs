//! What `chatvault sim` serves: a fake upstream of one platform with a generated world, on
//! an address of the operator's choosing, with the `[[source]]` block that archives it
//! printed on stdout, and new activity in that world until Ctrl-C. One function per
//! platform; `commands/sim.rs` reads the command line and calls them.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::serve::SimServer;
use super::LiveWorld;

/// The world to generate and how to serve it.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// The same seed gives the same world (and the same activity).
    pub seed: u64,
    pub messages: u64,
    /// Conversations of every kind the platform has (at least 2).
    pub conversations: u64,
    /// New activity every this many seconds; 0 for none.
    pub activity_every: u64,
}

/// What the operator reads about a server that is up.
struct Printout {
    /// The first lines: where it listens, what its world holds, and whatever else the
    /// configuration needs.
    summary: String,
    /// The `[[source]]` table that archives it, the secret in an environment variable.
    source: String,
    /// The last line.
    closing: &'static str,
}

/// The fake TangSengDaoDao server; prints the `[[source]]` with the account's password.
pub async fn tangsengdaodao(options: &Options) -> anyhow::Result<()> {
    use super::tangsengdaodao::{SimServer, World, WorldSpec};
    let conversations = options.conversations as usize;
    let groups = (conversations / 3).max(1);
    let direct_chats = conversations - groups;
    let spec = WorldSpec {
        seed: options.seed,
        users: direct_chats.max(8) + 4,
        groups,
        direct_chats,
        messages: options.messages as usize,
        ..WorldSpec::default()
    };
    let (server, took) = start(options, || {
        SimServer::start_on(World::generate(&spec), options.listen)
    })
    .await?;
    let base_url = server.base_url();
    let printout = Printout {
        summary: format!(
            "fake TangSengDaoDao server on {base_url} ({} messages, {conversations} conversations, generated in {took:.1}s)",
            options.messages,
        ),
        source: format!(
            "[[source]]\nname = \"sim-tsdd\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{base_url}\"\nusername = \"{}\"\npassword_env = \"SIM_TSDD_PASSWORD\"   # export SIM_TSDD_PASSWORD={}\nrequests_per_second = 200\n",
            spec.me_username, spec.me_password
        ),
        closing: "Ctrl-C stops the server.",
    };
    serve(options, server, printout).await
}

/// A fake Yunxin app whose timeline ends now; prints the app key, secret and accounts.
pub async fn yunxin(options: &Options) -> anyhow::Result<()> {
    use super::yunxin::{now_ms, SimServer, World, WorldSpec};
    let conversations = options.conversations as usize;
    let spec = WorldSpec {
        seed: options.seed,
        accounts: 2,
        users: (conversations / 2).max(4) + 4,
        teams: (conversations / 4).max(1),
        super_teams: 1,
        direct_chats: (conversations / 3).max(1),
        messages: options.messages as usize,
        end_ms: now_ms() - 60_000,
        days: 60,
        ..WorldSpec::default()
    };
    let (server, took) = start(options, || {
        SimServer::start_on(World::generate(&spec), options.listen)
    })
    .await?;
    let base_url = server.base_url();
    let (accounts, conversations) = {
        let world = server.world();
        (world.accounts.clone(), world.conversations.len())
    };
    let printout = Printout {
        summary: format!(
            "fake Yunxin server on {base_url} ({} messages, {conversations} conversations, generated in {took:.1}s)\n\
             app_key    = {}\napp_secret = {}\naccounts   = {}",
            options.messages,
            spec.app_key,
            spec.app_secret,
            accounts.join(", ")
        ),
        source: format!(
            "[[source]]\nname = \"sim-yunxin\"\nplatform = \"yunxin\"\nbase_url = \"{base_url}\"\napp_key = \"{}\"\napp_secret_env = \"SIM_YUNXIN_SECRET\"   # export SIM_YUNXIN_SECRET={}\naccounts = [{}]\nrequests_per_second = 90\n",
            spec.app_key,
            spec.app_secret,
            accounts
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        closing: "The server allows 100 requests/s per API, as Yunxin's standard package does. Ctrl-C stops it.",
    };
    serve(options, server, printout).await
}

/// The fake Yunhu user API: direct chats, groups and bots; prints the `[[source]]` with the
/// token.
pub async fn yunhu(options: &Options) -> anyhow::Result<()> {
    use super::yunhu::{SimServer, World, WorldSpec};
    let conversations = options.conversations as usize;
    let groups = (conversations / 3).max(1);
    let bots = (conversations / 10).max(1);
    let direct_chats = conversations.saturating_sub(groups + bots).max(1);
    let spec = WorldSpec {
        seed: options.seed,
        users: direct_chats.max(8) + 4,
        groups,
        bots,
        direct_chats,
        messages: options.messages as usize,
        ..WorldSpec::default()
    };
    let (server, took) = start(options, || {
        SimServer::start_on(World::generate(&spec), options.listen)
    })
    .await?;
    let base_url = server.base_url();
    let printout = Printout {
        summary: format!(
            "fake Yunhu server on {base_url} ({} messages, {} chats, generated in {took:.1}s)",
            options.messages,
            direct_chats + groups + bots,
        ),
        source: format!(
            "[[source]]\nname = \"sim-yunhu\"\nplatform = \"yunhu\"\nbase_url = \"{base_url}\"\nws_url = \"{}\"\ntoken_env = \"SIM_YUNHU_TOKEN\"   # export SIM_YUNHU_TOKEN={}\nrequests_per_second = 200\n",
            server.ws_url(),
            spec.token
        ),
        closing: "Ctrl-C stops the server.",
    };
    serve(options, server, printout).await
}

/// Generate the world and start its server (`start` does both); with the seconds it took.
async fn start<S, Fut>(options: &Options, start: impl FnOnce() -> Fut) -> anyhow::Result<(S, f64)>
where
    Fut: Future<Output = std::io::Result<S>>,
{
    let started = Instant::now();
    let server = start()
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    Ok((server, started.elapsed().as_secs_f64()))
}

/// Print what the operator needs, then until Ctrl-C add activity to the world every
/// `activity_every` seconds; then stop the server.
async fn serve<W: LiveWorld, F: Clone>(
    options: &Options,
    server: SimServer<W, F>,
    printout: Printout,
) -> anyhow::Result<()> {
    let Printout {
        summary,
        source,
        closing,
    } = printout;
    println!("{summary}");
    println!("archive it with this configuration (then `chatvault --config sim.toml sync`):\n");
    println!("{source}");
    println!("{closing}");
    let task = (options.activity_every > 0).then(|| {
        let every = Duration::from_secs(options.activity_every);
        let seed = options.seed;
        let mut activity = super::activity(server.world_handle(), 5);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            loop {
                tokio::time::sleep(every).await;
                let changes = activity(&mut rng);
                tracing::info!(changes, "new activity in the fake world");
            }
        })
    });
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    if let Some(task) = task {
        task.abort();
    }
    server.shutdown().await;
    Ok(())
}
