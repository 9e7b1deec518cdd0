//! Starting a service in a background process, and controlling it.
//!
//! [`run`] must give the service a process of its own, soundly, whatever
//! the calling program already does:
//!
//! - **A single-threaded caller** (a `main` that has not started threads,
//!   a `#[tokio::main(flavor = "current_thread")]` program, a library
//!   called before its host starts threads): `fork`. The child is an
//!   exact copy, holding no lock another thread could have held, so it may
//!   start threads and serve. It never returns to the caller's code.
//! - **A multi-threaded caller** (threads or a multi-thread tokio runtime
//!   already run): forking would copy locks held by other threads, so the
//!   current binary is executed again with `METABRIDGE_DAEMON=<name>` in
//!   its environment; when that process reaches the same `run` call, `run`
//!   serves instead of returning. As with Python's `spawn` start method,
//!   code before `run` then runs twice, so keep it free of side effects.
//!   If the new copy does not reach `run` for that service (its `main`
//!   takes another path: a library whose host decides), `run` kills it
//!   and says so; see [`run`].
//!
//! Either way the daemon serves on a thread of its own, outside any tokio
//! runtime the caller's thread ran (a forked child copies the caller's
//! thread-local runtime context; a re-executed `#[tokio::main]` runs `run`
//! inside its runtime). The child reports through a pipe once it is
//! registered and accepting (or why it failed), and `run` waits for that,
//! up to the startup timeout.
//!
//! The daemon follows the parent *process*, not the thread that called
//! `run`: it opens a pidfd of its parent (and checks that `getppid` still
//! names it, so that a parent that died first is not missed), and a
//! thread of the daemon waits on it; once the whole parent process has
//! exited (confirmed by `getppid` changing) the daemon stops gracefully,
//! unless it was detached (SIGUSR1 from [`DaemonHandle::detach`]; it
//! waits 100 ms for a detach sent just before the parent's exit). Without
//! pidfds (Linux < 5.3) it checks `getppid` every 100 ms. A
//! [`DaemonHandle`] that is dropped stops it, unless detached.

use crate::error::{reexec_message, Error, ProtocolError, Result, TimedOut};
use crate::platform;
use crate::platform::{send_signal as kill, wait_child, Pid, Signal, WaitStatus};
use crate::registry::Entry;
use crate::server::serve_with;
use crate::service::Service;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable naming the service a re-executed child serves.
pub const DAEMON_ENV: &str = "METABRIDGE_DAEMON";
const READY_FD_ENV: &str = "METABRIDGE_DAEMON_READY_FD";
/// The pid of the process a re-executed child follows.
const PARENT_ENV: &str = "METABRIDGE_DAEMON_PARENT";
/// How long `run` waits for the daemon to be ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop` waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the parent watch checks `getppid` when it cannot wait on a
/// pidfd.
const PARENT_POLL: Duration = Duration::from_millis(100);

/// Report bytes on the ready pipe: the service is ready (an [`Entry`]
/// follows), it failed (an error follows), or (first, re-executed child
/// only) the new copy of the program reached `run` for its service.
const READY: u8 = 0;
const FAILED: u8 = 1;
const REACHED: u8 = 2;

/// Serves `service` in the current process until SIGTERM or SIGINT: for a
/// dedicated daemon binary. It installs handlers for SIGTERM and SIGINT
/// (stop gracefully) and SIGUSR1 (used by [`DaemonHandle::detach`]).
///
/// It works in any program shape: called inside a tokio runtime (say from
/// `#[tokio::main]`), it serves on a thread of its own (the service builds
/// its own runtime, which cannot nest in the caller's) and blocks the
/// calling thread until it is done.
///
/// This is also the alternative to [`run`] for programs that cannot let
/// `run` re-execute them (see there): a small binary whose `main` calls
/// `serve`, started and stopped however the program likes.
///
/// ```no_run
/// use metabridge::{Service, Reply, Args};
/// let service = Service::<()>::new("pinger")
///     .constructor(|_a: &mut Args<'_>| Ok(()))
///     .endpoint("ping", |_: &(), _a: &mut Args<'_>, out: &mut Reply<'_>| out.ok("pong"));
/// metabridge::serve(service).unwrap();
/// ```
pub fn serve<S: Send + Sync + 'static>(service: Service<S>) -> Result<()> {
    // The name becomes a file name and a registry key: refuse a bad one
    // before anything starts.
    service.validate_name()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return serve_with(service, |_| {});
    }
    std::thread::scope(|scope| {
        let serving = std::thread::Builder::new()
            .name("metabridge-serve".into())
            .spawn_scoped(scope, || serve_with(service, |_| {}))?;
        serving
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Starts `service` in a background daemon process and returns once it is
/// registered and accepting.
///
/// The daemon stops gracefully when the returned handle is dropped or
/// [stopped](DaemonHandle::stop), and when the process that called `run`
/// exits (all of its threads: the thread that called `run` may end
/// first), unless it was [detached](DaemonHandle::detach).
///
/// # Program shapes
///
/// - **Single-threaded** (a plain `main`, `#[tokio::main(flavor =
///   "current_thread")]`, a library called before its host starts
///   threads): the process is forked; nothing else is asked of it.
/// - **Multi-threaded** (`#[tokio::main]`, a program that started
///   threads, `run` called from a spawned thread): the program is executed
///   again with `METABRIDGE_DAEMON=<name>` set, and its `main` must reach
///   this same `run` call (for a service of the same name) in that new
///   copy, which then serves. Code before `run` runs twice; the copy's
///   standard input and output are `/dev/null`.
/// - **A library whose host's `main` does not reach `run` again** (it
///   depends on input, configuration, timing...) cannot be served by
///   re-execution, and nothing sound can start the service without
///   `main` (forking a multi-threaded process copies locks other threads
///   hold; a pre-`main` hook would run before Rust's runtime and the
///   host's own initialisation, and still could not rebuild a service
///   configured at run time). `run` detects it: if the copy exits, or does
///   not reach `run` within [`STARTUP_TIMEOUT`], `run` kills and reaps it
///   and returns an error saying so. The alternatives: call `run` before
///   the host starts threads (it then forks), or ship a small daemon
///   binary whose `main` calls [`serve`].
///
/// `run` blocks the calling thread until the daemon is ready (inside an
/// async task, prefer `tokio::task::spawn_blocking`).
///
/// ```
/// # let home = format!("/dev/shm/mb-doc-run-{}", std::process::id());
/// # std::env::set_var("METABRIDGE_HOME", &home);
/// # use metabridge::{Service, Reply, Args};
/// # let service = Service::<()>::new("doc-run-pinger")
/// #     .constructor(|_a: &mut Args<'_>| Ok(()))
/// #     .endpoint("ping", |_: &(), _a: &mut Args<'_>, out: &mut Reply<'_>| out.ok("pong"));
/// let daemon = metabridge::run(service)?;
/// println!("serving in pid {}", daemon.pid());
/// daemon.stop()?;
/// # std::fs::remove_dir_all(&home).ok();
/// # Ok::<(), metabridge::Error>(())
/// ```
pub fn run<S: Send + Sync + 'static>(service: Service<S>) -> Result<DaemonHandle> {
    service.validate_name()?;
    // Before the fork: a service that cannot join its mesh is refused
    // here, with its typed error.
    crate::announce::announcers_of(&service.name, &service.announcers, &service.config)?;
    if let Ok(target) = std::env::var(DAEMON_ENV) {
        if target == service.name {
            serve_as_reexecuted_child(service);
        }
        return Err(Error::WrongDaemon {
            serving: target,
            asked: service.name.clone(),
        });
    }
    let (read_end, write_end) = platform::pipe_cloexec()?;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if platform::single_threaded() {
        let (pid, read_end) = fork_child(service, read_end, write_end)?;
        wait_ready(pid, read_end, None, STARTUP_TIMEOUT)
    } else {
        let pid = reexec_child(&service.name, &write_end)?;
        // Our copy of the write end must go, or the report never ends.
        drop(write_end);
        wait_ready(pid, read_end, Some(&service.name), STARTUP_TIMEOUT)
    }
}

/// For a host that forks by itself (the Python package forks with
/// `os.fork()`, so that the interpreter is made whole in the child): serves
/// `service` in this freshly forked child and never returns, as the child
/// of [`run`] does. The report goes to `ready`, the write end of a pipe
/// whose read end the parent passes to [`wait_forked_child`]; with a
/// `parent` pid, the daemon stops when that process exits (see the module
/// documentation). Standard input and output are left as they are.
pub fn serve_forked_child<S: Send + Sync + 'static>(
    service: Service<S>,
    ready: OwnedFd,
    parent: Option<u32>,
) -> ! {
    child_main(
        service,
        std::fs::File::from(ready),
        parent.map(|p| Pid::from_raw(p as i32)),
    )
}

/// The parent's half of [`serve_forked_child`]: waits (up to `timeout`;
/// [`STARTUP_TIMEOUT`] is `run`'s) for child `pid`'s report on `ready` (the read end
/// of the pipe; the parent must have closed its copy of the write end)
/// and returns its handle, or the error it reported
/// ([`Error::ServiceAlreadyExists`], ...), reaping it then.
pub fn wait_forked_child(pid: u32, ready: OwnedFd, timeout: Duration) -> Result<DaemonHandle> {
    wait_ready(Pid::from_raw(pid as i32), ready, None, timeout)
}

/// Starts the thread that stops this daemon when `parent`, the process
/// that called `run`, has exited. `Ok(false)` if it already has.
fn watch_parent(parent: Pid) -> std::io::Result<bool> {
    let pidfd = platform::pidfd_open(parent).ok();
    // Opened after the parent died (and its pid was reused), the pidfd
    // would name another process: while `getppid` still names the parent,
    // it has not died, and the pidfd is of our parent.
    if platform::parent_pid() != parent {
        return Ok(false);
    }
    std::thread::Builder::new()
        .name("metabridge-parent-watch".into())
        .spawn(move || {
            if let Some(fd) = pidfd {
                platform::wait_readable_forever(&fd);
            }
            // The pidfd is readable once every thread of the parent has
            // exited; we are then a child of another process. Only that
            // is trusted (it is also the way without a pidfd).
            while platform::parent_pid() == parent {
                std::thread::sleep(PARENT_POLL);
            }
            crate::lifecycle::notice_parent_gone();
        })?;
    Ok(true)
}

fn report(fd: &mut std::fs::File, result: &Result<()>, entry: Option<&Entry>) {
    let mut msg = Vec::new();
    match (result, entry) {
        (Ok(()), Some(e)) => {
            msg.push(READY);
            msg.extend_from_slice(&rmp_serde::to_vec(e).unwrap_or_default());
        }
        (Err(e), _) => {
            msg.push(FAILED);
            msg.extend_from_slice(&rmp_serde::to_vec(&error_wire(e)).unwrap_or_default());
        }
        _ => return,
    }
    let _ = fd.write_all(&msg);
}

/// A startup error as the report carries it: (kind, text, pid, problem),
/// so that the parent gets the typed errors back.
fn error_wire(e: &Error) -> (u8, String, u32, String) {
    match e {
        Error::ServiceAlreadyExists { name, pid } => (1, name.clone(), *pid, String::new()),
        Error::InsecurePath { path, problem } => {
            (2, path.to_string_lossy().into_owned(), 0, problem.clone())
        }
        other => (0, other.to_string(), 0, String::new()),
    }
}

/// Exit status of a daemon that stopped at its shutdown deadline with
/// calls still running (see `ServiceConfig::shutdown_timeout`).
pub const SHUTDOWN_TIMEOUT_EXIT: i32 = 3;

/// Watches `parent` (if any), serves on a thread of its own, then exits:
/// never returns to the caller's `main`, and never unwinds into it.
fn child_main<S: Send + Sync + 'static>(
    service: Service<S>,
    ready: std::fs::File,
    parent: Option<Pid>,
) -> ! {
    let mut ready = Some(ready);
    let result = match parent.map(watch_parent) {
        Some(Ok(false)) => {
            // The parent is gone already: nobody to serve.
            platform::exit_now(0)
        }
        Some(Err(e)) => Err(e.into()),
        Some(Ok(true)) | None => {
            // A refused log file stops the daemon before it serves.
            crate::logger::init_daemon(&service.config)
                .and_then(|()| serve_on_own_thread(service, &mut ready))
        }
    };
    if let Err(e) = &result {
        if let Some(f) = ready.as_mut() {
            report(f, &result, None);
        }
        eprintln!("metabridge: {e}");
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let code = match result {
        Ok(()) => 0,
        // Calls were abandoned at the shutdown deadline.
        Err(Error::ShutdownTimeout { .. }) => SHUTDOWN_TIMEOUT_EXIT,
        Err(_) => 1,
    };
    // At once: no atexit handler or destructor of the program we were
    // copied from may run in the daemon.
    platform::exit_now(code)
}

/// Serves on a new thread, outside whatever tokio runtime context the
/// calling thread is in (or, forked, holds a copy of), and waits for it.
/// A panic becomes an error. `ready` is taken (and closed, which tells the
/// parent the report is complete) once the service is ready.
fn serve_on_own_thread<S: Send + Sync + 'static>(
    service: Service<S>,
    ready: &mut Option<std::fs::File>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let serving = std::thread::Builder::new()
            .name("metabridge-daemon".into())
            .spawn_scoped(scope, || {
                let serve = std::panic::AssertUnwindSafe(|| {
                    serve_with(service, |entry| {
                        if let Some(mut f) = ready.take() {
                            report(&mut f, &Ok(()), Some(entry));
                        }
                    })
                });
                std::panic::catch_unwind(serve).unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    Err(Error::Io(std::io::Error::other(format!(
                        "the daemon panicked: {what}"
                    ))))
                })
            })?;
        serving
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the daemon panicked").into()))
    })
}

fn serve_as_reexecuted_child<S: Send + Sync + 'static>(service: Service<S>) -> ! {
    let number = |var: &str| -> Option<i32> { std::env::var(var).ok()?.parse().ok() };
    // The pipe to report on, if the parent passed one (it is taken exactly
    // once: this function never returns).
    let ready = match number(READY_FD_ENV).and_then(platform::adopt_inherited_fd) {
        Some(fd) => std::fs::File::from(fd),
        None => match std::fs::OpenOptions::new().write(true).open("/dev/null") {
            Ok(f) => f,
            Err(_) => std::process::exit(1),
        },
    };
    let mut ready = ready;
    // Tells the parent that `main` reached `run` for this service.
    let _ = ready.write_all(&[REACHED]);
    // Without a parent to follow (METABRIDGE_DAEMON set by hand), it
    // serves until stopped, like `serve`.
    let parent = number(PARENT_ENV).filter(|p| *p > 0).map(Pid::from_raw);
    child_main(service, ready, parent)
}

fn fork_child<S: Send + Sync + 'static>(
    service: Service<S>,
    read_end: OwnedFd,
    write_end: OwnedFd,
) -> Result<(Pid, OwnedFd)> {
    let parent = platform::pid();
    // `run` checked the process is single-threaded; the fork checks again.
    match platform::fork_single_threaded()? {
        platform::Forked::Child => {
            // Our copy of the read end goes, so that the parent sees EOF
            // if we die.
            drop(read_end);
            // A daemon reads nothing from the terminal and writes nothing
            // on the parent's standard output (whoever reads that pipe
            // would otherwise wait for the daemon too); standard error
            // stays, for warnings and panics.
            platform::detach_stdio();
            child_main(service, std::fs::File::from(write_end), Some(parent))
        }
        platform::Forked::Parent(child) => {
            drop(write_end);
            Ok((child, read_end))
        }
    }
}

fn reexec_child(name: &str, write_end: &OwnedFd) -> Result<Pid> {
    use std::os::unix::process::CommandExt;
    let fd = write_end.as_raw_fd();
    // `/proc/self/exe` is this very binary even if its file was replaced
    // or removed since it started (an upgrade, a `cargo build`).
    let mut cmd = std::process::Command::new("/proc/self/exe");
    let mut args = std::env::args_os();
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args)
        .env(DAEMON_ENV, name)
        .env(READY_FD_ENV, fd.to_string())
        .env(PARENT_ENV, platform::pid().as_raw().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    platform::keep_across_exec_of(&mut cmd, fd);
    let child = cmd.spawn().map_err(|e| {
        std::io::Error::other(format!(
            "run() from a multi-threaded process re-executes the program, which failed: {e}; \
             call run() before the program starts threads, or serve the service from a \
             daemon binary with metabridge::serve"
        ))
    })?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// Waits for child `pid` to exit until `deadline`, then kills it; reaps
/// it either way.
fn reap_by(pid: Pid, deadline: Instant) -> String {
    loop {
        match wait_child(pid, false) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(WaitStatus::StillAlive) => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = wait_child(pid, true);
                return "killed".into();
            }
            Ok(WaitStatus::Exited(_, code)) => return format!("exit status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => return format!("killed by {sig}"),
            Ok(_) => continue,
            Err(e) => return format!("not waitable: {e}"),
        }
    }
}

/// Waits for the child's report. `reexecuted` names the service of a
/// re-executed child, which first reports that it reached `run`.
fn wait_ready(
    pid: Pid,
    read_end: OwnedFd,
    reexecuted: Option<&str>,
    timeout: Duration,
) -> Result<DaemonHandle> {
    let mut file = std::fs::File::from(read_end);
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = usize::from(platform::wait_readable(&file, left));
        if n == 0 {
            timed_out = true;
            break;
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                reap_by(pid, Instant::now());
                return Err(e.into());
            }
        }
    }
    let mut report = buf.as_slice();
    if let Some(name) = reexecuted {
        match report.split_first() {
            Some((&REACHED, rest)) => report = rest,
            _ => {
                // The new copy of the program never reached `run` for this
                // service: it exited, or does something else.
                let status = reap_by(pid, if timed_out { Instant::now() } else { deadline });
                return Err(if status == "killed" {
                    Error::Timeout(TimedOut::DaemonReexec {
                        service: name.to_string(),
                        pid: pid.as_raw() as u32,
                        timeout,
                    })
                } else {
                    let how = format!("exited ({status}) and did not reach run() for it");
                    Error::Io(std::io::Error::other(reexec_message(
                        name,
                        pid.as_raw() as u32,
                        &how,
                    )))
                });
            }
        }
    }
    if timed_out {
        reap_by(pid, Instant::now());
        return Err(Error::Timeout(TimedOut::DaemonStart { timeout }));
    }
    match report.split_first() {
        Some((&READY, rest)) => {
            let entry: Entry = match rmp_serde::from_slice(rest) {
                Ok(entry) => entry,
                Err(e) => {
                    reap_by(pid, Instant::now());
                    return Err(ProtocolError::StartupReport(e).into());
                }
            };
            Ok(DaemonHandle {
                pid,
                status: Mutex::new(None),
                detached: false,
                entry,
            })
        }
        Some((&FAILED, rest)) => {
            reap_by(pid, deadline);
            // The problem is absent from the three-element report the
            // Python layer writes for a failed `__init__`.
            let short = |(k, t, w): (u8, String, u32)| (k, t, w, String::new());
            let (kind, text, who, problem): (u8, String, u32, String) = rmp_serde::from_slice(rest)
                .or_else(|_| rmp_serde::from_slice(rest).map(short))
                .unwrap_or((0, "daemon failed".into(), 0, String::new()));
            Err(match kind {
                1 => Error::ServiceAlreadyExists {
                    name: text,
                    pid: who,
                },
                2 => Error::InsecurePath {
                    path: text.into(),
                    problem,
                },
                _ => Error::Io(std::io::Error::other(format!(
                    "the daemon failed to start: {text}"
                ))),
            })
        }
        _ => {
            let status = reap_by(pid, deadline);
            Err(Error::Io(std::io::Error::other(format!(
                "the daemon exited during startup ({status})"
            ))))
        }
    }
}

/// A daemon started by [`run`]: its pid, and ways to wait for it or stop it.
/// Dropping the handle stops the daemon, unless it was detached; so does
/// the exit of the process that called [`run`] (not merely of the thread
/// that did). The handle may move to, and be dropped on, any thread.
pub struct DaemonHandle {
    pid: Pid,
    /// The exit code once reaped.
    status: Mutex<Option<i32>>,
    detached: bool,
    entry: Entry,
}

impl DaemonHandle {
    /// Process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// The registry entry the daemon published (name, addresses,
    /// endpoints).
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The TCP address the service listens on.
    pub fn tcp_addr(&self) -> &str {
        &self.entry.tcp
    }

    fn reap(&self, block: bool) -> Result<Option<i32>> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(code) = *status {
            return Ok(Some(code));
        }
        let code = match wait_child(self.pid, block)? {
            WaitStatus::Exited(_, code) => code,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => return Ok(None),
        };
        *status = Some(code);
        Ok(Some(code))
    }

    /// True while the daemon runs.
    pub fn is_running(&self) -> bool {
        matches!(self.reap(false), Ok(None))
    }

    /// Waits for the daemon to end; returns its exit code (128 + signal
    /// number if a signal ended it).
    pub fn join(&self) -> Result<i32> {
        loop {
            if let Some(code) = self.reap(true)? {
                return Ok(code);
            }
        }
    }

    /// Stops the daemon gracefully: SIGTERM (it drains in-flight calls,
    /// unregisters and removes its segments), then SIGKILL if it has not
    /// ended after [`STOP_TIMEOUT`].
    pub fn stop(&self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let _ = kill(self.pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !self.is_running() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        self.join().map(|_| ())
    }

    /// Lets the daemon outlive this handle and this process: the handle
    /// sends it SIGUSR1, after which the exit of the process that called
    /// [`run`] no longer stops it; it serves until it is sent SIGTERM
    /// itself. Returns its pid.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        if kill(self.pid, Signal::SIGUSR1).is_ok() {
            // Wait until the daemon has taken the signal (it is no longer
            // pending), so that our own exit right after cannot beat it.
            let deadline = Instant::now() + Duration::from_secs(1);
            while sigusr1_pending(self.pid.as_raw()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            // The handler's one system call follows delivery at once.
            std::thread::sleep(Duration::from_millis(2));
        }
        self.pid()
    }
}

/// True if SIGUSR1 is pending for `pid` (or its threads), per /proc.
fn sigusr1_pending(pid: i32) -> bool {
    let bit = 1u64 << (Signal::SIGUSR1 as i32 - 1);
    let pending = |path: String| {
        std::fs::read_to_string(path).ok().is_some_and(|status| {
            status.lines().any(|l| {
                (l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
                    && u64::from_str_radix(l[7..].trim(), 16).is_ok_and(|m| m & bit != 0)
            })
        })
    };
    if pending(format!("/proc/{pid}/status")) {
        return true;
    }
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .any(|t| pending(format!("{}/status", t.path().display())))
        })
        .unwrap_or(false)
}

impl Drop for DaemonHandle {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.stop();
        }
    }
}

impl std::fmt::Debug for DaemonHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonHandle")
            .field("pid", &self.pid)
            .field("service", &self.entry.name)
            .finish()
    }
}

#[cfg(test)]
mod tests;
