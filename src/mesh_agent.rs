//! A mesh membership kept by a helper process: the [`Announcer`] of a
//! program that does not link zenoh (a Python service, or a Rust one that
//! sets `$METABRIDGE_MESH` without `metabridge_mesh::install()`).
//!
//! The helper is the `metabridge-mesh agent` tool ([`mesh_tool`] finds it).
//! The service writes it one [`AgentReport`] when it serves, then one every
//! [`HEARTBEAT`]: the helper joins the mesh for the service, answers
//! clients' queries from the latest report, and withdraws the service's
//! liveliness token while the reports stop (a stopped or hung service
//! falls out of the mesh after its lease, as one that holds the token
//! itself does). Its standard input is the only link: when the service
//! ends (even by SIGKILL) the helper reads end-of-file and leaves at once.
//! A helper that dies is started again.
//!
//! Frames (`helper_frame`) are at most [`MAX_REPORT`] bytes.

use crate::announce::{require_secure_exposure, Announcement, Announcer};
use crate::config::ServiceConfig;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// How often a service tells its helper it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// The largest report frame a reader accepts.
pub const MAX_REPORT: usize = 64 * 1024;
/// How long a helper that died waits before it is started again.
const RESTART: Duration = Duration::from_secs(2);
/// How long a stopping service waits for its helper to leave the mesh.
const LEAVE: Duration = Duration::from_secs(2);
/// The variable naming the `metabridge-mesh` tool.
pub const MESH_TOOL_ENV: &str = "METABRIDGE_MESH_TOOL";

/// What a service tells its helper: who it is and how to reach it, and
/// (each time) how many calls it has answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// The service's name.
    pub service: String,
    /// The serving process (the helper's replica instance names it).
    pub pid: u32,
    /// The address its TCP port is bound to.
    pub tcp: String,
    /// The fingerprint of the certificate it serves.
    pub tls_fingerprint: Option<String>,
    /// Its endpoints marked idempotent.
    pub idempotent: Vec<String>,
    /// When it started serving (seconds since the epoch).
    pub started: u64,
    /// Calls answered so far, if it counts them.
    pub calls: Option<u64>,
}

impl AgentReport {
    /// What `a` says, from this (the serving) process.
    pub fn of(a: &Announcement) -> AgentReport {
        AgentReport {
            service: a.service.clone(),
            pid: std::process::id(),
            tcp: a.tcp.clone(),
            tls_fingerprint: a.tls_fingerprint.clone(),
            idempotent: a.idempotent.clone(),
            started: a
                .started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            calls: a.calls(),
        }
    }

    /// Writes one frame.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        crate::helper_frame::write(w, self, MAX_REPORT)
    }

    /// Reads one frame; `None` at end-of-file between frames. A frame
    /// longer than [`MAX_REPORT`] or that does not decode is an error.
    pub fn read_from(r: &mut impl Read) -> std::io::Result<Option<AgentReport>> {
        crate::helper_frame::read(r, MAX_REPORT)
    }
}

/// The `metabridge-mesh` tool: `$METABRIDGE_MESH_TOOL`, else the one
/// beside this program, else the one on `PATH`.
pub fn mesh_tool() -> PathBuf {
    if let Some(tool) = std::env::var_os(MESH_TOOL_ENV).filter(|v| !v.is_empty()) {
        return tool.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("metabridge-mesh")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "metabridge-mesh".into())
}

/// Joins a mesh through the `metabridge-mesh agent` helper (see the module
/// docs).
///
/// ```
/// use metabridge::MeshAgent;
/// let service = metabridge::Service::<()>::new("echo-agent")
///     .host("0.0.0.0")
///     .announce(MeshAgent::new("tcp/10.0.0.2:7447,tcp/10.0.0.3:7447"));
/// # let _ = service;
/// ```
pub struct MeshAgent {
    setting: String,
    tool: PathBuf,
}

impl MeshAgent {
    /// An announcer into the mesh `setting` names (seed endpoints and
    /// options, or a zenoh configuration file: the mesh crate's
    /// `MeshConfig::from_setting`), through [`mesh_tool`].
    pub fn new(setting: &str) -> MeshAgent {
        MeshAgent {
            setting: setting.to_string(),
            tool: mesh_tool(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.tool);
        cmd.arg("agent");
        cmd
    }
}

impl Announcer for MeshAgent {
    fn check(&self, service: &str, config: &ServiceConfig) -> Result<()> {
        require_secure_exposure(service, config)?;
        let refuse = |why: String| Error::Announce {
            service: service.to_string(),
            why,
        };
        // The helper reads the setting and the name as it would to join.
        let out = self
            .command()
            .args(["--check", service, &self.setting])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                refuse(format!(
                    "cannot run the mesh helper {} ({e}): install it (`cargo install --path mesh` \
                     in MetaBridge's repository) or name it in {MESH_TOOL_ENV}; or link the \
                     metabridge-mesh crate and call metabridge_mesh::install() in main",
                    self.tool.display()
                ))
            })?;
        if out.status.success() {
            return Ok(());
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(refuse(if why.is_empty() {
            format!("the mesh helper refused it ({})", out.status)
        } else {
            why
        }))
    }

    fn announce(&self, serving: Announcement) -> Box<dyn Send> {
        let (stop, stopped) = mpsc::channel::<()>();
        let mut cmd = self.command();
        cmd.arg(&self.setting)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let service = serving.service.clone();
        let thread = std::thread::Builder::new()
            .name("metabridge-mesh-agent".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| keep_agent(cmd, serving, stopped));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(target: "metabridge::mesh", "the mesh helper of {service:?} panicked: it is no longer announced");
                }
            });
        match thread {
            Ok(thread) => Box::new(AgentGuard {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::error!(target: "metabridge::mesh", "cannot start the mesh helper's thread: {e}");
                Box::new(())
            }
        }
    }
}

/// Keeps the service announced: dropped, it stops the helper.
struct AgentGuard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The heartbeat thread: starts the helper, reports every [`HEARTBEAT`],
/// starts it again if it dies, and ends it when told.
fn keep_agent(mut cmd: Command, serving: Announcement, stop: mpsc::Receiver<()>) {
    let stopped = |wait: Duration| {
        !matches!(
            stop.recv_timeout(wait),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    };
    loop {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "metabridge::mesh", "service {:?} serves locally; cannot start the mesh helper ({e}), trying again", serving.service);
                if stopped(RESTART) {
                    return;
                }
                continue;
            }
        };
        let mut input = child.stdin.take();
        loop {
            let sent = input
                .as_mut()
                .map(|w| AgentReport::of(&serving).write_to(w));
            if let Some(Err(e)) = sent {
                tracing::warn!(target: "metabridge::mesh", "the mesh helper of {:?} is gone ({e}); starting it again", serving.service);
                break;
            }
            if stopped(HEARTBEAT) {
                leave(child, input);
                return;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        if stopped(RESTART) {
            return;
        }
    }
}

/// Ends the helper: end-of-file on its input makes it leave the mesh;
/// one that takes longer than [`LEAVE`] is killed.
fn leave(mut child: Child, input: Option<ChildStdin>) {
    drop(input);
    let deadline = Instant::now() + LEAVE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_bad_frames_are_errors() {
        let report = AgentReport {
            service: "s".into(),
            pid: 7,
            tcp: "10.0.0.2:4000".into(),
            tls_fingerprint: Some("sha256:ab".into()),
            idempotent: vec!["get".into()],
            started: 1,
            calls: Some(3),
        };
        let mut frames = Vec::new();
        report.write_to(&mut frames).unwrap();
        report.write_to(&mut frames).unwrap();
        let mut r = &frames[..];
        assert_eq!(
            AgentReport::read_from(&mut r).unwrap(),
            Some(report.clone())
        );
        assert_eq!(AgentReport::read_from(&mut r).unwrap(), Some(report));
        assert_eq!(AgentReport::read_from(&mut r).unwrap(), None);
        let huge = (MAX_REPORT as u32 + 1).to_le_bytes();
        assert!(AgentReport::read_from(&mut &huge[..]).is_err());
        let junk = [3, 0, 0, 0, 0xc1, 0xc1, 0xc1];
        assert!(AgentReport::read_from(&mut &junk[..]).is_err());
        let cut = [9, 0, 0, 0, 0x80];
        assert!(AgentReport::read_from(&mut &cut[..]).is_err());
    }
}
