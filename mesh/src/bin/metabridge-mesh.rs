//! `metabridge-mesh`: the mesh for operators (the `metabridge` tool runs
//! it for `metabridge list --mesh`).
//!
//! ```text
//! metabridge-mesh list [--json] [SETTING]         every service and replica of the mesh
//! metabridge-mesh agent SETTING                   keeps a service in the mesh (run by metabridge::MeshAgent)
//! metabridge-mesh agent --check SERVICE SETTING   whether it could
//! metabridge-mesh relay                           calls by name for a program (run by metabridge::MeshRelay)
//! ```
//!
//! `SETTING` is a mesh setting (seed endpoints, `listen=`, `lease=`) or a
//! zenoh configuration file; default `$METABRIDGE_MESH`.

use metabridge_mesh::{survey, MeshConfig};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("agent") | Some("relay") => helper(&args),
        _ => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap_or_else(|e| fail(&e.to_string()));
            runtime.block_on(list(args));
        }
    }
}

/// The helpers the runtime starts: their log on standard error (the
/// service's or client's own), `$METABRIDGE_LOG`'s level for MetaBridge's
/// targets (default info).
fn helper(args: &[String]) {
    use tracing_subscriber::prelude::*;
    let level = std::env::var("METABRIDGE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let targets = tracing_subscriber::filter::Targets::new().with_target("metabridge", level);
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(targets),
        )
        .try_init();
    let result = match (args[0].as_str(), &args[1..]) {
        ("agent", [check, service, setting]) if check == "--check" => {
            metabridge_mesh::agent::check(service, setting)
        }
        ("agent", [setting]) => metabridge_mesh::agent::run(setting, std::io::stdin()),
        ("relay", []) => metabridge_mesh::relay::run(std::io::stdin(), std::io::stdout()),
        _ => usage(),
    };
    if let Err(why) = result {
        fail(&why);
    }
}

async fn list(args: Vec<String>) {
    let json = args.iter().any(|a| a == "--json");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--json").collect();
    let (Some(cmd), setting) = (rest.first(), rest.get(1)) else {
        usage()
    };
    if cmd.as_str() != "list" {
        usage()
    }
    let config = match setting {
        Some(s) => MeshConfig::from_setting(s),
        None => match MeshConfig::from_env() {
            Ok(Some(c)) => Ok(c),
            Ok(None) => fail("no mesh given: pass a setting or set METABRIDGE_MESH"),
            Err(e) => Err(e),
        },
    }
    .unwrap_or_else(|e| fail(&e.to_string()));
    let replicas = survey(&config, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| fail(&e.to_string()));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if json {
        let v: Vec<serde_json::Value> = replicas
            .iter()
            .map(|(service, r)| {
                serde_json::json!({
                    "service": service,
                    "instance": r.instance,
                    "host": r.advert.host,
                    "addresses": r.advert.addresses,
                    "age_secs": now.saturating_sub(r.advert.started),
                    "calls": r.advert.calls,
                    "idempotent": r.advert.idempotent,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    println!(
        "{:<24} {:<16} {:<32} {:<24} {:>8} {:>10}",
        "SERVICE", "HOST", "INSTANCE", "ADDRESS", "AGE", "CALLS"
    );
    for (service, r) in &replicas {
        println!(
            "{:<24} {:<16} {:<32} {:<24} {:>7}s {:>10}",
            service,
            r.advert.host,
            r.instance,
            r.advert.addresses.join(","),
            now.saturating_sub(r.advert.started),
            r.advert.calls.map_or("-".to_string(), |c| c.to_string())
        );
    }
    if replicas.is_empty() {
        eprintln!("no replica in {}", config.describe());
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: metabridge-mesh list [--json] [SETTING]\n       metabridge-mesh agent [--check SERVICE] SETTING\n       metabridge-mesh relay"
    );
    std::process::exit(2)
}

fn fail(why: &str) -> ! {
    eprintln!("metabridge-mesh: {why}");
    std::process::exit(1)
}
