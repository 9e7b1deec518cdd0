//! The operating-system calls of the runtime, in one place, each with the
//! argument for why it is sound: locking the registry file, signal
//! handlers, fork, leaving a process at once, descriptors handed across
//! exec, pidfds, waiting for a descriptor. The rest of the runtime calls
//! these and holds no `unsafe` of its own for them. (The shared-memory
//! calls — memfds, seals, mappings, futexes — live in the same kind of
//! layer in `metabridge-shm`.)

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `flock(2)` on `file` with `op` (`LOCK_SH`, `LOCK_EX`, `LOCK_UN`, maybe
/// `| LOCK_NB`), retried on EINTR; true on success (the error is in
/// `errno` otherwise).
pub(crate) fn flock(file: &File, op: libc::c_int) -> bool {
    loop {
        // SAFETY: a valid open fd (borrowed from `file` for the call) and a
        // plain operation code; flock touches no memory of ours.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return true;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// Installs `handler` for `signal`. The handler must be async-signal-safe:
/// the ones of this crate only store to an atomic.
pub(crate) fn on_signal(
    signal: nix::sys::signal::Signal,
    handler: extern "C" fn(libc::c_int),
) -> std::io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let action = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handlers passed here only store to atomics, which is
    // async-signal-safe; they replace no handler the runtime relies on.
    unsafe { sigaction(signal, &action) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// What [`fork`] returned, in this process.
pub(crate) enum Forked {
    Child,
    Parent(nix::unistd::Pid),
}

/// Forks this process.
///
/// # Safety
/// The caller must have checked that this process runs one thread: the
/// child is then a complete copy, holding no lock of a thread that does
/// not exist in it, and may allocate and start threads of its own.
pub(crate) unsafe fn fork() -> std::io::Result<Forked> {
    // SAFETY: the caller's contract above.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// Ends this process at once with `code`, skipping atexit handlers and
/// destructors (a forked daemon must not run those of the program it was
/// copied from).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes a status and never returns; it runs no user
    // code (no atexit handler, no destructor), which is the point.
    unsafe { libc::_exit(code) }
}

/// Points standard input and output at /dev/null (a daemon's stdio is not
/// its parent's terminal). Standard error stays, for its log.
pub(crate) fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in [0, 1] {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Takes ownership of descriptor `fd`, inherited across exec.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process (it was
/// handed to us by our parent, and is taken exactly once).
pub(crate) unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller's contract above.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Lets descriptor `fd` survive `exec` (clears FD_CLOEXEC). Safe to call
/// between fork and exec: one fcntl, no allocation.
pub(crate) fn keep_across_exec(fd: RawFd) -> std::io::Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map(|_| ())
    .map_err(std::io::Error::from)
}

/// A pidfd of process `pid` (Linux 5.3 and later).
pub(crate) fn pidfd_open(pid: nix::unistd::Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of
    // ours; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns
    // it. (A descriptor number always fits in an i32.)
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `fd` is readable (or hung up), at most `timeout`; true if it
/// is. Interrupted waits count as not yet.
pub(crate) fn wait_readable(fd: &impl AsFd, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(n) if n > 0)
}
