//! `chatvault completions SHELL` and `chatvault man`: shell completion scripts
//! (clap_complete) and the manual page (clap_mangen), both generated from the command line's
//! own definition, so they always match it. Both print to stdout.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
chatvault completions bash > ~/.local/share/bash-completion/completions/chatvault\n  \
chatvault completions zsh > ~/.zfunc/_chatvault      # with fpath+=(~/.zfunc) before compinit\n  \
chatvault completions fish > ~/.config/fish/completions/chatvault.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chatvault man > /usr/local/share/man/man1/chatvault.1\n  \
chatvault man | man -l -"
)]
pub struct ManArgs {}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // into memory first: the generator panics on a write error (a closed pipe)
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "chatvault", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(_args: ManArgs) -> anyhow::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&page)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
