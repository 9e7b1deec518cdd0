//! `metabridge list`: the services of this user, live and stale, with
//! their transports and counters, as a table or JSON.

use crate::fail::Fail;
use crate::services::{registry, STATS_TIMEOUT};
use crate::table::print_table;
use std::time::SystemTime;

#[derive(clap::Args)]
pub struct Args {
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Every service and replica of a mesh instead (seed endpoints, or a
    /// zenoh configuration file; default `$METABRIDGE_MESH`): runs the
    /// `metabridge-mesh` tool, which brings zenoh.
    #[arg(long, value_name = "SETTING", num_args = 0..=1, default_missing_value = "")]
    mesh: Option<String>,
}

/// `metabridge list --mesh`: the `metabridge-mesh` tool
/// ([`metabridge::mesh_tool`]).
fn list_mesh(setting: &str, json: bool) -> Result<(), Fail> {
    let tool = metabridge::mesh_tool();
    let mut cmd = std::process::Command::new(&tool);
    cmd.arg("list");
    if json {
        cmd.arg("--json");
    }
    if !setting.is_empty() {
        cmd.arg(setting);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(Fail(1, format!("metabridge-mesh list failed ({s})"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Fail(
            1,
            "`metabridge list --mesh` needs the metabridge-mesh tool (it brings zenoh): \
             `cargo install --path mesh` in MetaBridge's repository"
                .into(),
        )),
        Err(e) => Err(Fail(1, format!("cannot run {}: {e}", tool.display()))),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn fmt_uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Lists every entry of the registry, the live ones with their counters.
pub fn run(
    Args {
        json: as_json,
        mesh,
    }: Args,
) -> Result<(), Fail> {
    if let Some(setting) = mesh {
        return list_mesh(&setting, as_json);
    }
    let reg = registry()?;
    let mut rows = Vec::new();
    for (e, alive) in reg.list_all() {
        let snap = if alive {
            metabridge::stats::fetch(&e, STATS_TIMEOUT).ok()
        } else {
            None
        };
        rows.push((e, alive, snap));
    }
    rows.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let now = now_secs();
    if as_json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, alive, snap)| {
                serde_json::json!({
                    "name": e.name,
                    "pid": e.pid,
                    "state": if *alive { "live" } else { "stale" },
                    "registered_at": e.registered_at,
                    "uptime_secs": now.saturating_sub(e.registered_at),
                    "transports": {
                        "shm": e.control_socket,
                        "tcp": e.tcp,
                    },
                    "token_required": e.token_required,
                    "endpoints": e.endpoints,
                    "calls": snap.as_ref().map(|s| s.calls()),
                    "errors": snap.as_ref().map(|s| s.errors()),
                    "in_flight": snap.as_ref().map(|s| s.in_flight()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no services registered in {}",
            metabridge::registry::home_dir().display()
        );
        return Ok(());
    }
    let mut table = vec![vec![
        "NAME".to_string(),
        "PID".into(),
        "STATE".into(),
        "UPTIME".into(),
        "TRANSPORTS".into(),
        "CALLS".into(),
        "ERRORS".into(),
        "ENDPOINTS".into(),
    ]];
    for (e, alive, snap) in &rows {
        let num = |f: fn(&metabridge::stats::Snapshot) -> u64| {
            snap.as_ref().map_or("-".to_string(), |s| f(s).to_string())
        };
        table.push(vec![
            e.name.clone(),
            e.pid.to_string(),
            if *alive { "live" } else { "stale" }.into(),
            if *alive {
                fmt_uptime(now.saturating_sub(e.registered_at))
            } else {
                "-".into()
            },
            format!("shm+tcp {}", e.tcp),
            num(|s| s.calls()),
            num(|s| s.errors()),
            e.endpoints.join(","),
        ]);
    }
    print_table(&table);
    Ok(())
}
