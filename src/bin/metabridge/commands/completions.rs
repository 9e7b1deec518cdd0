//! `metabridge completions`: the shell completion script of the tool's
//! command line.

use crate::fail::Fail;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the completions of `cli` (the whole command line) for the shell.
pub fn run(a: Args, cli: &mut clap::Command) -> Result<(), Fail> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, cli, "metabridge", &mut script);
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(&script);
    Ok(())
}
