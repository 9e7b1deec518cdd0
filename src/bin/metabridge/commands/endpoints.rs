//! `metabridge endpoints`: the endpoints of a service, with parameter
//! names where the service publishes them.

use crate::fail::Fail;
use crate::services::{lookup, STATS_TIMEOUT};

#[derive(clap::Args)]
pub struct Args {
    /// Service name.
    service: String,
    /// One JSON array instead of lines.
    #[arg(long)]
    json: bool,
}

/// Prints the endpoints: from the service's counters when it answers,
/// else the names its registry entry lists.
pub fn run(a: Args) -> Result<(), Fail> {
    let entry = lookup(&a.service)?;
    let listed: Vec<(String, Option<Vec<String>>)> =
        match metabridge::stats::fetch(&entry, STATS_TIMEOUT) {
            Ok(snap) => snap
                .endpoints
                .into_iter()
                .map(|e| (e.name, e.params))
                .collect(),
            Err(_) => entry.endpoints.iter().map(|n| (n.clone(), None)).collect(),
        };
    if a.json {
        let v: Vec<serde_json::Value> = listed
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "params": p}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    for (name, params) in listed {
        match params {
            Some(p) => println!("{name}({})", p.join(", ")),
            None => println!("{name}"),
        }
    }
    Ok(())
}
