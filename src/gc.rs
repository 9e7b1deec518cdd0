//! Removing what dead services left behind: registry entries, control
//! sockets, and segment or doorbell files of older versions.
//!
//! A service killed with SIGKILL cannot clean up. Its registry entry is
//! reclaimed by the next lookup that finds its process gone; its control
//! socket (`<name>-<pid>.sock`) stays until something removes it. Every
//! starting service runs [`gc`] on its home, and so can an operator.
//! Nothing that belongs to a live process is touched: a file is removed
//! only when the process named in it is known to be gone.

use crate::error::Result;
use crate::registry::{self, Registry};
use std::collections::HashSet;
use std::path::PathBuf;

/// What [`gc`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// What was removed, one line each.
    pub removed: Vec<String>,
    /// What was left because its process lives, one line each.
    pub kept: Vec<String>,
}

/// Cleans the home of this user (`$METABRIDGE_HOME`): stale registry
/// entries, control sockets of dead services, stale segment files.
///
/// ```
/// # let home = std::env::temp_dir().join(format!("mb-doc-gc-{}", std::process::id()));
/// # std::env::set_var("METABRIDGE_HOME", &home);
/// let report = metabridge::gc().unwrap();
/// assert!(report.removed.is_empty());
/// # std::fs::remove_dir_all(&home).unwrap();
/// ```
pub fn gc() -> Result<GcReport> {
    collect(&Registry::open(&registry::home_dir())?)
}

pub(crate) fn collect(registry: &Registry) -> Result<GcReport> {
    let mut report = GcReport::default();
    for e in registry.reclaim_stale()? {
        report.removed.push(format!(
            "registry entry {:?} of dead process {}",
            e.name, e.pid
        ));
    }
    let live: HashSet<PathBuf> = registry
        .list()
        .into_iter()
        .map(|e| {
            report
                .kept
                .push(format!("service {:?} (pid {}): running", e.name, e.pid));
            PathBuf::from(e.control_socket)
        })
        .collect();
    let dir = registry.dir();
    for item in std::fs::read_dir(dir)?.flatten() {
        let path = item.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = file.strip_suffix(".sock") else {
            continue;
        };
        if live.contains(&path) {
            continue;
        }
        // `<name>-<pid>.sock`: the pid is after the last dash.
        let Some(pid) = stem.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // Gone only if the kernel says so (ESRCH), never on a read error.
        let owner_gone =
            pid == 0 || pid > i32::MAX as u32 || crate::platform::no_such_process(pid as i32);
        if !owner_gone {
            report.kept.push(format!(
                "{}: its process {pid} lives (not registered yet, or starting)",
                path.display()
            ));
        } else if std::fs::remove_file(&path).is_ok() {
            report
                .removed
                .push(format!("{} of dead process {pid}", path.display()));
        }
    }
    // Named segments and doorbell files (older versions made them here).
    let segments = metabridge_shm::gc(dir)?;
    if segments > 0 {
        report.removed.push(format!(
            "{segments} segment or doorbell file(s) of dead processes in {}",
            dir.display()
        ));
    }
    Ok(report)
}
