//! `metabridge-mesh agent`: the helper that keeps a service in the mesh
//! for a program that does not link zenoh (the runtime's
//! [`metabridge::MeshAgent`] starts it).
//!
//! Its standard input carries the service's [`AgentReport`]s: the first
//! says what to announce, each later one is a heartbeat with the live call
//! count. The helper joins for the service's process (the instance id
//! names the service's pid), withdraws the token when no report has come
//! for a lease (the service is stopped or hung) and declares it again when
//! reports resume, and leaves at end-of-file, on a report it cannot read,
//! or when its parent is no longer the service (the service died and this
//! helper was adopted).

use crate::announce::{membership, Serving, Tick};
use crate::MeshConfig;
use metabridge::AgentReport;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// What the report reader tells the membership loop.
enum Heard {
    /// A report came.
    Report,
    /// The input ended or broke: leave.
    Gone,
}

/// `metabridge-mesh agent --check <service> <setting>`: whether the helper
/// could announce `service` into `setting`'s mesh (the setting reads, the
/// name is one zenoh holds); the reason it could not.
pub fn check(service: &str, setting: &str) -> Result<(), String> {
    MeshConfig::from_setting(setting).map_err(|e| e.to_string())?;
    crate::service_key(service).map_err(|e| e.to_string())?;
    Ok(())
}

/// `metabridge-mesh agent <setting>`: serves the reports on `input` until
/// the service ends (see the module docs).
pub fn run(setting: &str, mut input: impl Read + Send + 'static) -> Result<(), String> {
    let config = MeshConfig::from_setting(setting).map_err(|e| e.to_string())?;
    let first = AgentReport::read_from(&mut input)
        .map_err(|e| format!("the service's first report: {e}"))?
        .ok_or("the service ended before its first report")?;
    crate::service_key(&first.service).map_err(|e| e.to_string())?;
    let calls = Arc::new(AtomicU64::new(first.calls.map_or(u64::MAX, |c| c)));
    let (heard, hear) = mpsc::channel::<Heard>();
    {
        let calls = calls.clone();
        std::thread::Builder::new()
            .name("metabridge-mesh-agent-reports".into())
            .spawn(move || loop {
                match AgentReport::read_from(&mut input) {
                    Ok(Some(report)) => {
                        // Release pairs with the advert's Acquire load.
                        calls.store(report.calls.map_or(u64::MAX, |c| c), Ordering::Release);
                        if heard.send(Heard::Report).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = heard.send(Heard::Gone);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(target: "metabridge::mesh", "the service's report cannot be read ({e}): leaving the mesh");
                        let _ = heard.send(Heard::Gone);
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
    }
    let silence = config.lease;
    let parent = first.pid;
    // Acquire pairs with the reader's Release store.
    let live = move || Some(calls.load(Ordering::Acquire)).filter(|c| *c != u64::MAX);
    let serving = Serving::from_report(first, Box::new(live));
    let mut last = Instant::now();
    let mut silent = false;
    membership(config, serving, move |wait| {
        let deadline = Instant::now() + wait;
        loop {
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Tick::Stop;
            }
            let now = Instant::now();
            let silent_at = last + silence;
            if !silent && now >= silent_at {
                silent = true;
                return Tick::Silent;
            }
            if now >= deadline {
                return if silent { Tick::Silent } else { Tick::Alive };
            }
            let until = if silent {
                deadline
            } else {
                deadline.min(silent_at)
            };
            match hear.recv_timeout(until.saturating_duration_since(now)) {
                Ok(Heard::Report) => {
                    last = Instant::now();
                    if silent {
                        silent = false;
                        return Tick::Alive;
                    }
                }
                Ok(Heard::Gone) | Err(mpsc::RecvTimeoutError::Disconnected) => return Tick::Stop,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    });
    Ok(())
}
