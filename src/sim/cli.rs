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

/// A fake server that is up: what to print about it, and how to change and stop its world.
struct Served<A, S> {
    /// The first lines: where it listens, what its world holds, and whatever else the
    /// configuration needs.
    summary: String,
    /// The `[[source]]` table that archives it, the secret in an environment variable.
    source: String,
    /// The last line.
    closing: &'static str,
    activity: A,
    stop: S,
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
    let started = Instant::now();
    let world = World::generate(&spec);
    let server = SimServer::start_on(world, options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let base_url = server.base_url();
    let served = Served {
        summary: format!(
            "fake TangSengDaoDao server on {base_url} ({} messages, {conversations} conversations, generated in {:.1}s)",
            options.messages,
            started.elapsed().as_secs_f64()
        ),
        source: format!(
            "[[source]]\nname = \"sim-tsdd\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{base_url}\"\nusername = \"{}\"\npassword_env = \"SIM_TSDD_PASSWORD\"   # export SIM_TSDD_PASSWORD={}\nrequests_per_second = 200\n",
            spec.me_username, spec.me_password
        ),
        closing: "Ctrl-C stops the server.",
        activity: super::activity(server.world_handle(), 5),
        stop: server.shutdown(),
    };
    serve(options, served).await
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
    let started = Instant::now();
    let world = World::generate(&spec);
    let accounts = world.accounts.clone();
    let server = SimServer::start_on(world, options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let base_url = server.base_url();
    let conversations = server.world().conversations.len();
    let served = Served {
        summary: format!(
            "fake Yunxin server on {base_url} ({} messages, {conversations} conversations, generated in {:.1}s)\n\
             app_key    = {}\napp_secret = {}\naccounts   = {}",
            options.messages,
            started.elapsed().as_secs_f64(),
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
        activity: super::activity(server.world_handle(), 5),
        stop: server.shutdown(),
    };
    serve(options, served).await
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
    let started = Instant::now();
    let world = World::generate(&spec);
    let server = SimServer::start_on(world, options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let base_url = server.base_url();
    let served = Served {
        summary: format!(
            "fake Yunhu server on {base_url} ({} messages, {} chats, generated in {:.1}s)",
            options.messages,
            direct_chats + groups + bots,
            started.elapsed().as_secs_f64()
        ),
        source: format!(
            "[[source]]\nname = \"sim-yunhu\"\nplatform = \"yunhu\"\nbase_url = \"{base_url}\"\ntoken_env = \"SIM_YUNHU_TOKEN\"   # export SIM_YUNHU_TOKEN={}\nrequests_per_second = 200\n",
            spec.token
        ),
        closing: "Ctrl-C stops the server.",
        activity: super::activity(server.world_handle(), 5),
        stop: server.shutdown(),
    };
    serve(options, served).await
}

/// Print what the operator needs, then until Ctrl-C add activity to the world every
/// `activity_every` seconds; then stop the server.
async fn serve<A, S>(options: &Options, served: Served<A, S>) -> anyhow::Result<()>
where
    A: FnMut(&mut StdRng) -> usize + Send + 'static,
    S: Future<Output = ()>,
{
    let Served {
        summary,
        source,
        closing,
        mut activity,
        stop,
    } = served;
    println!("{summary}");
    println!("archive it with this configuration (then `chatvault --config sim.toml sync`):\n");
    println!("{source}");
    println!("{closing}");
    let task = (options.activity_every > 0).then(|| {
        let every = Duration::from_secs(options.activity_every);
        let seed = options.seed;
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
    stop.await;
    Ok(())
}
