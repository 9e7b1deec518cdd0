//! A serving process's lifecycle: whether it should stop (SIGTERM, SIGINT,
//! [`request_stop`]), whether to reload its files (SIGHUP), whether it was detached from the program that
//! started it (SIGUSR1, sent by `DaemonHandle::detach`), and whether that
//! program is gone. The daemon's parent watch (daemon.rs) reports the
//! last; the service's accept loop (server.rs) asks [`Watch::should_stop`].
//! Signal handlers only store atomics (async-signal-safe).

use crate::error::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set by SIGTERM / SIGINT (or [`request_stop`]): finish and leave.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: std::ffi::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// The thread that serves a service in this process, while it does: a
/// stop requested from this process wakes it at once (a signal's is seen
/// at its next look, the handler may only store an atomic).
static SERVING: Mutex<Option<std::thread::Thread>> = Mutex::new(None);

/// Asks a service running in this process (`serve`) to stop gracefully.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
    if let Some(t) = SERVING.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        t.unpark();
    }
}

/// SIGTERM and SIGINT request a stop; SIGUSR1 detaches.
pub(crate) fn install_signal_handlers() -> Result<()> {
    use crate::platform::Signal;
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        crate::platform::on_signal(sig, on_stop_signal)?;
    }
    crate::platform::on_signal(Signal::SIGUSR1, on_detach_signal)?;
    crate::platform::on_signal(Signal::SIGHUP, on_reload_signal)?;
    Ok(())
}

/// Set by SIGHUP: read renewed files (a TLS certificate) again.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_reload_signal(_: std::ffi::c_int) {
    // Only an atomic store: async-signal-safe.
    RELOAD.store(true, Ordering::SeqCst);
}

/// Whether SIGHUP came since the last look (the serving loop's, which
/// reloads within its wait).
pub(crate) fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// Set by SIGUSR1, which `DaemonHandle::detach` sends: outlive the parent.
static DETACHED: AtomicBool = AtomicBool::new(false);
/// Set when the process that started this daemon with `run` has exited
/// (the daemon's parent watch, in daemon.rs, calls [`notice_parent_gone`]).
static PARENT_GONE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_detach_signal(_: std::ffi::c_int) {
    DETACHED.store(true, Ordering::SeqCst);
}

/// The parent process of this daemon has exited: stop, unless detached.
pub(crate) fn notice_parent_gone() {
    PARENT_GONE.store(true, Ordering::SeqCst);
}

/// How long an orphaned daemon waits for a detach it may have been sent
/// just before its parent exited (the parent watch and the SIGUSR1
/// handler run on two threads, and the first to start may finish second).
const ORPHAN_GRACE: Duration = Duration::from_millis(100);

/// The serving thread's view of the lifecycle: it remembers since when
/// the parent has been gone, for the orphan grace.
pub(crate) struct Watch {
    orphaned_at: Option<Instant>,
}

impl Watch {
    /// Watches from the current thread, which [`request_stop`] wakes.
    pub(crate) fn from_this_thread() -> Watch {
        *SERVING.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
        Watch { orphaned_at: None }
    }

    /// Waits up to `wait`, or until [`request_stop`] is called.
    pub(crate) fn wait(&self, wait: Duration) {
        if !STOP.load(Ordering::SeqCst) {
            std::thread::park_timeout(wait);
        }
    }

    /// True once a stop was requested, or the parent has been gone for
    /// [`ORPHAN_GRACE`] without a detach: a daemon ends with its parent
    /// unless it was detached.
    pub(crate) fn should_stop(&mut self) -> bool {
        if STOP.load(Ordering::SeqCst) {
            return true;
        }
        if PARENT_GONE.load(Ordering::SeqCst) && !DETACHED.load(Ordering::SeqCst) {
            let since = *self.orphaned_at.get_or_insert_with(Instant::now);
            return since.elapsed() >= ORPHAN_GRACE;
        }
        false
    }

    /// The parent is gone (and no detach was seen yet): loops wait in
    /// shorter steps, to notice a stop or a detach soon.
    pub(crate) fn orphaned(&self) -> bool {
        self.orphaned_at.is_some()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        *SERVING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
