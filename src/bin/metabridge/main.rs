//! `metabridge`: look inside the running services of this user and call
//! them by hand.
//!
//! ```text
//! metabridge list [--json]                     live services, their transports and counters
//! metabridge list --mesh [SETTING]             every service and replica of a mesh (metabridge-mesh)
//! metabridge call SERVICE ENDPOINT [ARGS]      one call; the result as JSON (--mesh: by name across a mesh)
//! metabridge endpoints SERVICE                 endpoints and their parameters
//! metabridge stats SERVICE [--watch]           calls, errors, in flight, latency per endpoint
//! metabridge gc                                remove what dead services left
//! metabridge bench SERVICE ENDPOINT [ARGS]     latency percentiles and throughput
//! metabridge completions SHELL                 shell completions
//! ```
//!
//! Exit status: 0 on success, 1 when the call or command failed (a remote
//! error, an unknown service), 2 for a bad command line (invalid JSON
//! included).
//!
//! This file parses the command line and dispatches: each command is one
//! module under `commands/`, over the shared pieces beside this file
//! (`flags`, `connect`, `services`, `table`, `json`, `fail`) and the
//! measurement helpers of `metabridge::measure`.

mod commands;
mod connect;
mod fail;
mod flags;
mod json;
mod services;
mod table;

use clap::{CommandFactory, Parser, Subcommand};
use commands::{bench, call, completions, endpoints, gc, list, stats};
use fail::Fail;
use std::io::Write;
use std::process::ExitCode;

/// Look inside the MetaBridge services of this user, and call them.
#[derive(Parser)]
#[command(name = "metabridge", version, about, long_about = None)]
struct Cli {
    /// The registry directory (default: $METABRIDGE_HOME, or
    /// /dev/shm/metabridge-<uid>).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The live services of this user: name, pid, uptime, transports,
    /// endpoints, calls served, errors (stale entries shown as such).
    List(list::Args),
    /// Calls an endpoint and prints its result as JSON on one line.
    Call(call::Args),
    /// The endpoints of a service, with parameter names where it knows
    /// them.
    Endpoints(endpoints::Args),
    /// Per endpoint: calls, errors, calls in flight, latency percentiles
    /// (from the histogram the service keeps; one call in 16 is timed);
    /// and the requests refused before any endpoint (unknown endpoint, bad
    /// token).
    Stats(stats::Args),
    /// Removes stale registry entries, sockets, segments and doorbell files
    /// of dead services; says what it removed and what it left.
    Gc(gc::Args),
    /// Calls an endpoint from N clients for a while: latency percentiles
    /// and throughput.
    Bench(bench::Args),
    /// Prints shell completions (bash, zsh, fish, elvish, powershell).
    Completions(completions::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(home) = &cli.home {
        std::env::set_var("METABRIDGE_HOME", home);
    }
    let result = match cli.command {
        Command::List(a) => list::run(a),
        Command::Call(a) => call::run(a),
        Command::Endpoints(a) => endpoints::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Completions(a) => completions::run(a, &mut Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            let _ = std::io::stdout().flush();
            eprintln!("metabridge: {msg}");
            ExitCode::from(code)
        }
    }
}
