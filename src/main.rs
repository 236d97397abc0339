//! The `chatvault` binary: parse the command line, set up logging, run the command
//! ([`chatvault::commands`]), and turn the outcome into an exit code. An error is one line on
//! stderr.

use std::process::ExitCode;

use clap::Parser;

use chatvault::commands::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    chatvault::telemetry::init(cli.log_format, cli.command.log_level());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running (a Ctrl-C watcher, a blocking read) are not waited for.
    runtime.shutdown_background();
    code
}
