//! `chatvault sim`: the command line of a fake upstream server; what it serves and prints is
//! [`crate::sim::cli`].

use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::sim::cli::{self, Options};

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  chatvault sim tangsengdaodao --listen 127.0.0.1:5800 --messages 20000\n  \
chatvault sim yunxin --listen 127.0.0.1:5801 --seed 3\n  chatvault sim yunhu --listen 127.0.0.1:5802 --seed 2\n\n\
It prints the base_url and the credentials of the account to archive, and serves until Ctrl-C."
)]
pub struct SimArgs {
    /// Which platform to imitate.
    #[arg(value_enum)]
    pub platform: SimPlatform,
    /// Address to listen on (loopback only unless you mean it).
    #[arg(long, default_value = "127.0.0.1:5800")]
    pub listen: std::net::SocketAddr,
    /// Seed of the generated world (the same seed gives the same world).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Messages in the generated world.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=5_000_000))]
    pub messages: u64,
    /// Conversations in the generated world (groups and direct chats).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    pub conversations: u64,
    /// New activity (messages, edits, recalls, and reactions where the platform has them)
    /// every this many seconds; 0 for none.
    #[arg(long, default_value_t = 0)]
    pub activity_every: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SimPlatform {
    Tangsengdaodao,
    Yunxin,
    Yunhu,
}

/// Serve the chosen fake upstream until Ctrl-C.
pub async fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let options = Options {
        listen: args.listen,
        seed: args.seed,
        messages: args.messages,
        conversations: args.conversations,
        activity_every: args.activity_every,
    };
    match args.platform {
        SimPlatform::Tangsengdaodao => cli::tangsengdaodao(&options).await?,
        SimPlatform::Yunxin => cli::yunxin(&options).await?,
        SimPlatform::Yunhu => cli::yunhu(&options).await?,
    }
    Ok(ExitCode::SUCCESS)
}
