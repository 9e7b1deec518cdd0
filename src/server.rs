//! The service side at run time: [`serve_with`] runs a service in this
//! process, in named steps, over every registered transport.
//!
//! ```text
//! client ── shared memory (shm_side.rs: control socket, workers) ──► the dispatcher
//! client ── TCP frames (tcp_side.rs, tcp_handler.rs: tokio server) ──► the same dispatcher
//! ```
//!
//! The transport seam on this side: each transport's service side is a
//! module of its own implementing [`Listening`], started from the same
//! [`Serving`] context; the one line that registers them is
//! [`TRANSPORTS`]. The workers, and how slow calls are kept from stalling
//! others, are in `worker.rs`; the control-socket handshake in
//! `control.rs`; stop requests and the parent watch in `lifecycle.rs`.

mod call_threads;
mod shm_side;
mod tcp_handler;
mod tcp_side;

use crate::dispatch::{Dispatch, Dispatcher};
use crate::error::{Error, Result};
use crate::registry::{self, Entry, Registry};
use crate::service::Service;
use metabridge_shm::ProcessIdentity;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How often a running service checks that it is still registered.
const REGISTRATION_CHECK: Duration = Duration::from_secs(1);

/// How long the serving thread sleeps between looks at the lifecycle
/// (shorter once the parent is gone, to notice a late detach or a stop).
const LIFECYCLE_WAIT: Duration = Duration::from_millis(200);
const ORPHANED_WAIT: Duration = Duration::from_millis(10);

/// What every transport's service side starts from.
pub(crate) struct Serving<'a> {
    name: &'a str,
    home: &'a Path,
    /// `<name>-<pid>`: the stem of files this service creates.
    stem: &'a str,
    config: &'a crate::config::ServiceConfig,
    dispatch: &'a Arc<dyn Dispatch>,
    counters: &'a Option<Arc<crate::stats::Counters>>,
    runtime: &'a tokio::runtime::Runtime,
}

/// One transport's service side, started.
pub(crate) trait Listening: Send {
    /// Writes where clients reach it into the registry entry.
    fn publish(&self, entry: &mut Entry);
    /// Reads again what it serves from files (on SIGHUP: a renewed TLS
    /// certificate); by default nothing.
    fn reload(&self) {}
    /// Stops taking new connections and calls; returns at once.
    fn begin_stop(&self);
    /// Waits until `deadline` for the calls in flight; describes what it
    /// abandoned, if anything.
    fn finish_stop(self: Box<Self>, deadline: Instant) -> Option<String>;
}

/// How a transport's service side starts.
type Start = fn(&Serving<'_>) -> Result<Box<dyn Listening>>;

/// The registration: a new transport is a module above and a line here.
const TRANSPORTS: &[Start] = &[shm_side::start, tcp_side::start];

/// Name usable in file names: the service name with other bytes replaced.
pub(crate) fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// A random token, 128 bits as hex, from the kernel's generator.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves `service` in this process until SIGTERM, SIGINT or
/// [`request_stop`](crate::request_stop). `ready` is told once the
/// service is registered and accepting.
///
/// Each step is a function below, in the order they run; a step that
/// fails undoes what it started (its parts release on drop) and the error
/// is returned as is.
pub(crate) fn serve_with<S: Send + Sync + 'static>(
    mut service: Service<S>,
    ready: impl FnOnce(&Entry),
) -> Result<()> {
    let name = service.name.clone();
    // Before anything starts: a service its mesh refuses never serves.
    let announcers = crate::announce::announcers_of(&name, &service.announcers, &service.config)?;
    crate::lifecycle::install_signal_handlers()?;
    let home = registry::home_dir();
    let me = ProcessIdentity::current();
    let registry = open_registry_and_collect(&home, &name, &me)?;
    let idempotent = service.idempotent_endpoints();
    let published_token = guard_default_tcp(&mut service.config)?;
    let config = service.config.clone();
    let counters = instrument(&mut service, &config);
    let dispatch: Arc<dyn Dispatch> = Arc::new(Dispatcher::new(service));
    let stem = format!("{}-{}", file_safe(&name), me.pid);
    let runtime = build_runtime(&config)?;
    let serving = Serving {
        name: &name,
        home: &home,
        stem: &stem,
        config: &config,
        dispatch: &dispatch,
        counters: &counters,
        runtime: &runtime,
    };
    let sides = start_transports(&serving)?;
    let entry = registry_entry(&name, &me, &sides, &dispatch, published_token);
    let workers = shm_side::worker_count(&config);
    let announce = |entry: &Entry| {
        let announcement = crate::Announcement {
            service: entry.name.clone(),
            tcp: entry.tcp.clone(),
            tls_fingerprint: entry.tls_fingerprint.clone(),
            endpoints: entry.endpoints.clone(),
            idempotent: idempotent.clone(),
            started: SystemTime::now(),
            counters: counters.clone(),
        };
        announcers
            .iter()
            .map(|a| a.announce(announcement.clone()))
            .collect::<Vec<_>>()
    };
    let registered = register_and_serve(&registry, &entry, &sides, workers, announce, ready);
    let abandoned = stop_gracefully(&config, sides);
    runtime.shutdown_timeout(Duration::from_millis(100));
    registered?;
    tracing::info!(target: "metabridge::service", service = %name, "stopped");
    match abandoned.is_empty() {
        true => Ok(()),
        false => {
            let e = Error::ShutdownTimeout {
                name,
                timeout: config.shutdown_timeout,
                abandoned: abandoned.join(" and "),
            };
            tracing::warn!("{e}");
            Err(e)
        }
    }
}

/// Opens this user's registry, refuses a name another live process holds,
/// and clears leftovers of services of this user that were killed.
fn open_registry_and_collect(
    home: &std::path::Path,
    name: &str,
    me: &ProcessIdentity,
) -> Result<Registry> {
    let registry = Registry::open(home)?;
    if let Ok(e) = registry.lookup(name) {
        if e.pid != me.pid {
            return Err(Error::ServiceAlreadyExists {
                name: name.to_string(),
                pid: e.pid,
            });
        }
    }
    let _ = crate::gc::collect(&registry);
    Ok(registry)
}

/// Loopback TCP is reachable by every user of the machine: unless the
/// operator chose the address (and then the token, or none), guard it
/// with a token of our own, published to this user's clients only.
/// Returns the token to publish, if one was made.
fn guard_default_tcp(config: &mut crate::config::ServiceConfig) -> Result<Option<String>> {
    if config.token.is_none() && config.tcp_is_default() {
        let token = random_token()?;
        config.token = Some(token.clone());
        Ok(Some(token))
    } else {
        Ok(None) // an operator's token is theirs to hand out
    }
}

/// Wraps the endpoints in the live counters and the call log
/// (instrument.rs); returns the counters, if they could be created.
/// METABRIDGE_STATS=0 turns them off (to measure what they cost).
fn instrument<S: Send + Sync + 'static>(
    service: &mut Service<S>,
    config: &crate::config::ServiceConfig,
) -> Option<Arc<crate::stats::Counters>> {
    let counters = if !crate::config::stats_enabled() {
        None
    } else {
        let names = service.endpoint_names();
        let described: Vec<(String, Option<Vec<String>>)> = names
            .into_iter()
            .map(|n| {
                let p = service.params.get(&n).cloned();
                (n, p)
            })
            .collect();
        let threads = 2 * config.workers.max(1) + config.max_extra_workers + 16;
        match crate::stats::Counters::create(&described, threads) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                let name = &service.name;
                tracing::warn!("service {name:?} runs without live counters: {e}");
                None
            }
        }
    };
    let log_calls =
        config.logger || tracing::enabled!(target: "metabridge::call", tracing::Level::INFO);
    crate::instrument::instrument(service, counters.clone(), log_calls);
    counters
}

/// The tokio runtime that runs the TCP server and async endpoints.
fn build_runtime(config: &crate::config::ServiceConfig) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers.max(1))
        .thread_name("metabridge-rt")
        .enable_all()
        .build()?)
}

/// Starts every registered transport's service side; one that fails
/// stops those already started (they release on drop).
fn start_transports(serving: &Serving<'_>) -> Result<Vec<Box<dyn Listening>>> {
    TRANSPORTS.iter().map(|start| start(serving)).collect()
}

/// What the registry publishes about this service.
fn registry_entry(
    name: &str,
    me: &ProcessIdentity,
    sides: &[Box<dyn Listening>],
    dispatch: &Arc<dyn Dispatch>,
    published_token: Option<String>,
) -> Entry {
    let mut entry = Entry {
        name: name.to_string(),
        pid: me.pid,
        start_time: me.start_time,
        registered_at: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        control_socket: String::new(),
        tcp: String::new(),
        endpoints: dispatch.endpoint_names().to_vec(),
        token_required: dispatch.requires_token(),
        token: published_token,
        tls_fingerprint: None,
    };
    for side in sides {
        side.publish(&mut entry);
    }
    entry
}

/// Registers the service; once registered, announces it beyond this
/// machine (if asked) and tells `ready`, serves until the lifecycle says
/// stop (keeping the entry registered), withdraws the announcements and
/// unregisters. Returns how registering went.
fn register_and_serve(
    registry: &Registry,
    entry: &Entry,
    sides: &[Box<dyn Listening>],
    workers: usize,
    announce: impl FnOnce(&Entry) -> Vec<Box<dyn Send>>,
    ready: impl FnOnce(&Entry),
) -> Result<()> {
    let registered = registry.register(entry);
    if registered.is_ok() {
        tracing::info!(
            target: "metabridge::service",
            service = %entry.name,
            "started: pid {}, tcp {}, control socket {}, {workers} worker(s), endpoints {:?}",
            entry.pid,
            entry.tcp,
            entry.control_socket,
            entry.endpoints
        );
        let announced = announce(entry);
        ready(entry);
        let mut lifecycle = crate::lifecycle::Watch::from_this_thread();
        let mut checked = Instant::now();
        while !lifecycle.should_stop() {
            if checked.elapsed() >= REGISTRATION_CHECK {
                checked = Instant::now();
                keep_registered(registry, entry);
            }
            if crate::lifecycle::take_reload() {
                sides.iter().for_each(|side| side.reload());
            }
            let wait = match lifecycle.orphaned() {
                true => ORPHANED_WAIT,
                false => LIFECYCLE_WAIT,
            };
            lifecycle.wait(wait);
        }
        drop(announced);
        let _ = registry.unregister(&entry.name, entry.pid);
        tracing::info!(target: "metabridge::service", service = %entry.name, "stopping");
    }
    registered
}

/// Graceful stop: every transport stops taking work, then each finishes
/// what is in flight, all within the shutdown deadline (an endpoint that
/// never returns must not keep the process alive). Returns what was
/// abandoned, described.
fn stop_gracefully(
    config: &crate::config::ServiceConfig,
    sides: Vec<Box<dyn Listening>>,
) -> Vec<String> {
    let deadline = Instant::now() + config.shutdown_timeout;
    for side in &sides {
        side.begin_stop();
    }
    sides
        .into_iter()
        .filter_map(|side| side.finish_stop(deadline))
        .collect()
}

/// Registers `entry` again if it vanished from the registry (someone
/// truncated the file, or a client wrongly reclaimed it).
fn keep_registered(registry: &Registry, entry: &Entry) {
    match registry.holds(&entry.name, entry.pid) {
        Ok(true) => {}
        Ok(false) => match registry.register(entry) {
            Ok(()) => tracing::warn!(
                "the registry entry of {:?} had vanished; registered again",
                entry.name
            ),
            Err(e) => tracing::warn!("cannot register {:?} again: {e}", entry.name),
        },
        Err(e) => tracing::debug!("cannot read the registry: {e}"),
    }
}

#[cfg(test)]
mod tests;
