//! `metabridge-mesh`: the mesh for operators (the `metabridge` tool runs
//! it for `metabridge list --mesh`).
//!
//! ```text
//! metabridge-mesh list [--json] [SETTING]   every service and replica of the mesh
//! ```
//!
//! `SETTING` is a mesh setting (seed endpoints, `listen=`, `lease=`) or a
//! zenoh configuration file; default `$METABRIDGE_MESH`.

use metabridge_mesh::{survey, MeshConfig};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    eprintln!("usage: metabridge-mesh list [--json] [SETTING]");
    std::process::exit(2)
}

fn fail(why: &str) -> ! {
    eprintln!("metabridge-mesh: {why}");
    std::process::exit(1)
}
