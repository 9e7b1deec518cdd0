//! Starting a service in a background process, and controlling it.
//!
//! [`run`] must give the service a process of its own, soundly, whatever
//! the calling program already does:
//!
//! - **A single-threaded caller** (a `main` that has not started threads,
//!   the common case): `fork`. The child is an exact copy, holding no lock
//!   another thread could have held, so it may build its runtime and serve.
//! - **A multi-threaded caller** (threads or a tokio runtime already run):
//!   forking would copy locks held by other threads, so the current binary
//!   is executed again with `METABRIDGE_DAEMON=<name>` in its environment;
//!   when that process reaches the same `run` call, `run` serves instead of
//!   returning. As with Python's `spawn` start method, code before `run`
//!   then runs twice, so keep it free of side effects.
//!
//! Either way the child reports through a pipe once it is registered and
//! accepting (or why it failed), and `run` waits for that, up to the
//! startup timeout. The child asks the kernel for SIGUSR2 when its parent
//! dies (`PR_SET_PDEATHSIG`) and then stops gracefully, unless it was
//! detached (SIGUSR1 from [`DaemonHandle::detach`]; it waits 100 ms for a
//! detach sent just before the parent's exit). A [`DaemonHandle`] that is
//! dropped stops it, unless detached.

use crate::error::{Error, Result};
use crate::registry::Entry;
use crate::server::serve_with;
use crate::service::Service;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Environment variable naming the service a re-executed child serves.
pub const DAEMON_ENV: &str = "METABRIDGE_DAEMON";
const READY_FD_ENV: &str = "METABRIDGE_DAEMON_READY_FD";
/// How long `run` waits for the daemon to be ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `stop` waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `service` in the current process until SIGTERM or SIGINT: for a
/// dedicated daemon binary. It installs handlers for SIGTERM and SIGINT
/// (stop gracefully) and SIGUSR1 (used by [`DaemonHandle::detach`]).
///
/// ```no_run
/// use metabridge::{Service, Reply, Args};
/// let service = Service::<()>::new("pinger")
///     .constructor(|_a: &mut Args<'_>| Ok(()))
///     .endpoint("ping", |_: &(), _a: &mut Args<'_>, out: &mut Reply<'_>| out.ok("pong"));
/// metabridge::serve(service).unwrap();
/// ```
pub fn serve<S: Send + Sync + 'static>(service: Service<S>) -> Result<()> {
    serve_with(service, |_| {})
}

/// Starts `service` in a background daemon process and returns once it is
/// registered and accepting.
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
    if let Ok(target) = std::env::var(DAEMON_ENV) {
        if target == service.name {
            serve_as_reexecuted_child(service);
        }
        return Err(Error::Protocol(format!(
            "this process is the daemon of {target:?}; it does not start {:?}",
            service.name
        )));
    }
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let pid = if single_threaded() {
        fork_child(service, read_end.as_raw_fd(), write_end)?
    } else {
        let pid = reexec_child(&service.name, &write_end)?;
        // Our copy of the write end must go, or the report never ends.
        drop(write_end);
        pid
    };
    wait_ready(pid, read_end)
}

fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count() == 1)
        .unwrap_or(false)
}

/// A daemon reads nothing from the terminal and writes nothing on the
/// parent's standard output (whoever reads that pipe would otherwise wait
/// for the daemon too); standard error stays, for warnings and panics.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // SAFETY: dup2 onto the standard descriptors of this (child)
        // process; `null` stays open for the duration of the calls.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

fn set_parent_death_signal() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no
    // memory of ours.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2) };
}

fn report(fd: &mut std::fs::File, result: &Result<()>, entry: Option<&Entry>) {
    let mut msg = Vec::new();
    match (result, entry) {
        (Ok(()), Some(e)) => {
            msg.push(0);
            msg.extend_from_slice(&rmp_serde::to_vec(e).unwrap_or_default());
        }
        (Err(e), _) => {
            msg.push(1);
            msg.extend_from_slice(&rmp_serde::to_vec(&error_wire(e)).unwrap_or_default());
        }
        _ => return,
    }
    let _ = fd.write_all(&msg);
}

fn error_wire(e: &Error) -> (u8, String, u32) {
    match e {
        Error::ServiceAlreadyExists { name, pid } => (1, name.clone(), *pid),
        other => (0, other.to_string(), 0),
    }
}

/// Exit status of a daemon that stopped at its shutdown deadline with
/// calls still running (see `ServiceConfig::shutdown_timeout`).
pub const SHUTDOWN_TIMEOUT_EXIT: i32 = 3;

/// Serves, then exits: never returns to the caller's `main`.
fn child_main<S: Send + Sync + 'static>(service: Service<S>, ready: std::fs::File) -> ! {
    let ready = std::cell::RefCell::new(ready);
    let result = serve_with(service, |entry| {
        let mut f = ready.borrow_mut();
        report(&mut f, &Ok(()), Some(entry));
        // Closing tells the parent the report is complete.
        let devnull = std::fs::File::open("/dev/null");
        if let Ok(d) = devnull {
            *f = d;
        }
    });
    if let Err(e) = &result {
        report(&mut ready.borrow_mut(), &result, None);
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
    // SAFETY: _exit ends the process at once, skipping atexit handlers and
    // destructors the parent's code may have registered before the fork.
    unsafe { libc::_exit(code) }
}

fn serve_as_reexecuted_child<S: Send + Sync + 'static>(service: Service<S>) -> ! {
    let fd: i32 = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let ready = if fd >= 0 {
        // SAFETY: the parent passed this fd, open and ours alone, to us; we
        // take ownership of it exactly once.
        unsafe { std::fs::File::from_raw_fd(fd) }
    } else {
        match std::fs::OpenOptions::new().write(true).open("/dev/null") {
            Ok(f) => f,
            Err(_) => std::process::exit(1),
        }
    };
    child_main(service, ready)
}

fn fork_child<S: Send + Sync + 'static>(
    service: Service<S>,
    read_fd: i32,
    write_end: OwnedFd,
) -> Result<Pid> {
    let parent = nix::unistd::getpid();
    // SAFETY: we checked the process is single-threaded, so the child is a
    // complete copy with no lock held by a thread that does not exist in
    // it; it may allocate and start threads of its own.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            // SAFETY: the read end is an fd we own in this copy; close it
            // so the parent sees EOF if we die.
            unsafe { libc::close(read_fd) };
            set_parent_death_signal();
            detach_stdio();
            if nix::unistd::getppid() != parent {
                // SAFETY: as in child_main.
                unsafe { libc::_exit(0) };
            }
            child_main(service, std::fs::File::from(write_end))
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            Ok(child)
        }
    }
}

fn reexec_child(name: &str, write_end: &OwnedFd) -> Result<Pid> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let fd = write_end.as_raw_fd();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(DAEMON_ENV, name)
        .env(READY_FD_ENV, fd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (fcntl, prctl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR2);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(Pid::from_raw(child.id() as i32))
}

fn wait_ready(pid: Pid, read_end: OwnedFd) -> Result<DaemonHandle> {
    let mut file = std::fs::File::from(read_end);
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                1,
                left.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n == 0 {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(Error::Timeout(format!(
                "the daemon did not start within {STARTUP_TIMEOUT:?}"
            )));
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    match buf.split_first() {
        Some((0, rest)) => {
            let entry: Entry =
                rmp_serde::from_slice(rest).map_err(|e| Error::Protocol(e.to_string()))?;
            Ok(DaemonHandle {
                pid,
                status: Mutex::new(None),
                detached: false,
                entry,
            })
        }
        Some((1, rest)) => {
            let _ = waitpid(pid, None);
            let (kind, text, who): (u8, String, u32) =
                rmp_serde::from_slice(rest).unwrap_or((0, "daemon failed".into(), 0));
            Err(if kind == 1 {
                Error::ServiceAlreadyExists {
                    name: text,
                    pid: who,
                }
            } else {
                Error::Io(std::io::Error::other(format!(
                    "the daemon failed to start: {text}"
                )))
            })
        }
        _ => {
            let status = waitpid(pid, None);
            Err(Error::Io(std::io::Error::other(format!(
                "the daemon exited during startup: {status:?}"
            ))))
        }
    }
}

/// A daemon started by [`run`]: its pid, and ways to wait for it or stop it.
/// Dropping the handle stops the daemon, unless it was detached.
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

    fn reap(&self, flags: Option<WaitPidFlag>) -> Result<Option<i32>> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(code) = *status {
            return Ok(Some(code));
        }
        let code = match waitpid(self.pid, flags).map_err(std::io::Error::from)? {
            WaitStatus::Exited(_, code) => code,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => return Ok(None),
        };
        *status = Some(code);
        Ok(Some(code))
    }

    /// True while the daemon runs.
    pub fn is_running(&self) -> bool {
        matches!(self.reap(Some(WaitPidFlag::WNOHANG)), Ok(None))
    }

    /// Waits for the daemon to end; returns its exit code (128 + signal
    /// number if a signal ended it).
    pub fn join(&self) -> Result<i32> {
        loop {
            if let Some(code) = self.reap(None)? {
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
    /// sends it SIGUSR1, after which the parent-death signal (SIGUSR2, see
    /// the module docs) no longer stops it; it serves until it is sent
    /// SIGTERM itself. Returns its pid.
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
    let bit = 1u64 << (libc::SIGUSR1 - 1);
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
