//! `chatvault completions` and `chatvault man`, the real binary: every subcommand is in each
//! script and in the manual page, and bash parses its script.

use std::io::Write;
use std::process::{Command, Stdio};

use chatvault::commands::Cli;
use clap::CommandFactory;

fn chatvault(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .args(args)
        .output()
        .expect("run chatvault");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every subcommand, as the command line defines it.
fn subcommands() -> Vec<String> {
    let names: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for expected in ["sync", "doctor", "completions", "man", "config"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    names
}

#[test]
fn each_shell_script_completes_every_subcommand() {
    let names = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = chatvault(&["completions", shell]);
        for name in &names {
            assert!(script.contains(name.as_str()), "{shell}: {name} missing");
        }
        // options of a subcommand too (fish names long options `-l NAME`)
        let login = if shell == "fish" {
            "-l login"
        } else {
            "--login"
        };
        assert!(script.contains(login), "{shell}: doctor's --login missing");
    }
    let fish = chatvault(&["completions", "fish"]);
    assert!(fish.contains("complete -c chatvault"), "{fish}");
    let zsh = chatvault(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef chatvault"), "{zsh}");
}

#[test]
fn bash_parses_its_completion_script() {
    let script = chatvault(&["completions", "bash"]);
    assert!(script.contains("complete -F"), "{script}");
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = bash.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // and a broken script would not parse: the check can fail
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    bash.stdin
        .take()
        .unwrap()
        .write_all(&script.as_bytes()[..script.len() / 2])
        .unwrap();
    assert!(!bash.wait_with_output().unwrap().status.success());
}

#[test]
fn the_manual_page_names_every_subcommand() {
    let page = chatvault(&["man"]);
    assert!(page.contains(".TH chatvault 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for name in subcommands() {
        // roff escapes hyphens in names
        let roff = name.replace('-', "\\-");
        assert!(page.contains(&roff), "{name} missing from the manual page");
    }
}
