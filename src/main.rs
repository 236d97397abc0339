//! The `chatvault` binary: parse the command line, set up logging, run the command, and turn
//! the outcome into an exit code. An error is one line on stderr.

use clap::Parser;

use chatvault::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let level = match cli.command {
        Command::Run | Command::Sync(_) | Command::Demo(_) | Command::Sim(_) => "info",
        _ => "warn",
    };
    chatvault::telemetry::init(cli.log_format, level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(chatvault::app::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
