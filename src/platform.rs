//! The operating-system calls of the runtime, in one place, each with the
//! argument for why it is sound: locking the registry file, signal
//! handlers, fork and noticing forks (an at-fork hook), leaving a process
//! at once, descriptors handed across exec, pidfds, waiting for a
//! descriptor, receiving descriptors over a socket. The rest of the
//! runtime calls these and holds no `unsafe` of its own for them. (The
//! shared-memory calls — memfds, seals, mappings, futexes — live in the
//! same kind of layer in `metabridge-shm`.)

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

// Process identities, signals and children. nix's wrappers are safe: each
// is one system call on plain values (no pointer of ours crosses).

pub(crate) use nix::errno::Errno;
pub(crate) use nix::sys::signal::Signal;
pub(crate) use nix::sys::wait::WaitStatus;
pub(crate) use nix::unistd::Pid;

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// This process's pid.
pub(crate) fn pid() -> Pid {
    nix::unistd::getpid()
}

/// The pid of this process's parent (a reaper's, once the parent died).
pub(crate) fn parent_pid() -> Pid {
    nix::unistd::getppid()
}

/// The calling thread's kernel id.
pub(crate) fn thread_id() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// True if this process runs one thread (per /proc; false if unknown).
pub(crate) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count() == 1)
        .unwrap_or(false)
}

/// Forks this process if it runs one thread ([`single_threaded`];
/// `Unsupported` otherwise), the safe form of [`fork`].
pub(crate) fn fork_single_threaded() -> std::io::Result<Forked> {
    if !single_threaded() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "fork from a multi-threaded process",
        ));
    }
    // SAFETY: one thread (checked just above, by that thread, which alone
    // could have started another since): fork's contract.
    unsafe { fork() }
}

/// Takes ownership of descriptor `fd`, which the parent handed this
/// re-executed daemon across exec (its number in the environment). Only
/// the first call of the process gets it; later ones get `None`, so it
/// is owned, and closed, exactly once.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // AcqRel: one swap decides the single winner; it pairs with itself.
    if fd < 0 || TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the parent passed this descriptor open, and nothing else
    // in this process knows its number (it came through the environment
    // for this one taker); the flag above makes this the only adoption.
    Some(unsafe { adopt_fd(fd) })
}

/// Sends `signal` to process `pid`.
pub(crate) fn send_signal(pid: Pid, signal: Signal) -> std::io::Result<()> {
    nix::sys::signal::kill(pid, signal).map_err(std::io::Error::from)
}

/// True only if the kernel says process `pid` does not exist (ESRCH);
/// any other answer (it exists, or it is another user's) is false.
pub(crate) fn no_such_process(pid: i32) -> bool {
    nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)
}

/// `waitpid(2)` on child `pid`: blocks until it changes state, or with
/// `block` false answers at once (`StillAlive` while it runs).
pub(crate) fn wait_child(pid: Pid, block: bool) -> std::io::Result<WaitStatus> {
    let flags = (!block).then_some(nix::sys::wait::WaitPidFlag::WNOHANG);
    nix::sys::wait::waitpid(pid, flags).map_err(std::io::Error::from)
}

/// A pipe whose two ends are close-on-exec: (read end, write end).
pub(crate) fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Makes `fd` survive the exec of `cmd`'s child (see
/// [`keep_across_exec`]), leaving every other descriptor as it is.
pub(crate) fn keep_across_exec_of(cmd: &mut std::process::Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes one system call
    // (fcntl) on a plain integer and allocates nothing.
    unsafe {
        cmd.pre_exec(move || keep_across_exec(fd));
    }
}

/// Waits without a timeout until `fd` is readable or hung up, or polling
/// it fails (then there is nothing left to wait for). Interrupted waits
/// wait again.
pub(crate) fn wait_readable_forever(fd: &impl AsFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Pins thread `tid` to `cpu`; false if that was refused (no such CPU,
/// thread gone).
pub(crate) fn pin_thread(tid: i32, cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok() && nix::sched::sched_setaffinity(Pid::from_raw(tid), &set).is_ok()
}

// Files.

/// Flags for opening a file that must not be a symbolic link (ELOOP if
/// it is) and must not leak into an exec'd child.
pub(crate) const OPEN_NOFOLLOW_CLOEXEC: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Extra flags for opening a log for appending: no controlling terminal,
/// and a FIFO fails the open (ENXIO) instead of blocking it.
pub(crate) const OPEN_NOCTTY_NONBLOCK: i32 = libc::O_NOCTTY | libc::O_NONBLOCK;

/// Which `flock` lock [`try_lock`] takes.
#[derive(Clone, Copy)]
pub(crate) enum LockKind {
    Shared,
    Exclusive,
}

/// Takes `kind` of `flock` lock on `file` without waiting; false if it
/// is held elsewhere (`errno` is then EWOULDBLOCK) or failed.
pub(crate) fn try_lock(file: &File, kind: LockKind) -> bool {
    let op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    };
    flock(file, op | libc::LOCK_NB)
}

/// Releases this open file's `flock` lock.
pub(crate) fn unlock(file: &File) {
    flock(file, libc::LOCK_UN);
}

/// Reserves the first `len` bytes of `file` on disk (`posix_fallocate`).
pub(crate) fn reserve_space(file: &File, len: u64) -> std::result::Result<(), Errno> {
    nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t)
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `path`, if it can be asked.
pub(crate) fn space_left(path: &std::path::Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

// Unix sockets.

pub(crate) use nix::sys::socket::UnixAddr;

/// A new non-blocking, close-on-exec Unix stream socket, not connected.
pub(crate) fn unix_stream_socket() -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)
}

/// `connect(2)` of socket `fd` to `addr`; the errno as is (a non-blocking
/// Unix socket answers EAGAIN while the listener's backlog is full).
pub(crate) fn connect(fd: &OwnedFd, addr: &UnixAddr) -> std::result::Result<(), Errno> {
    nix::sys::socket::connect(fd.as_raw_fd(), addr)
}

/// The uid of the process at the other end of `stream` (`SO_PEERCRED`).
pub(crate) fn peer_uid(stream: &impl AsFd) -> std::io::Result<u32> {
    use nix::sys::socket::{getsockopt, sockopt};
    Ok(getsockopt(stream, sockopt::PeerCredentials)?.uid())
}

/// `sendmsg(2)` of `bytes` on `stream` with descriptor `fd` attached
/// (`SCM_RIGHTS`, with the first byte), without SIGPIPE, retried on
/// EINTR. Returns how many bytes went (the caller writes the rest).
pub(crate) fn send_with_fd(
    stream: &impl AsFd,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(bytes)];
    loop {
        match sendmsg::<()>(
            stream.as_fd().as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Most descriptors [`recv_with_fds`] has room for in one message. The
/// kernel installs no more than fit and sets `MSG_CTRUNC`; it drops the
/// rest itself, so they never reach our descriptor table.
pub(crate) const RECV_FDS_MAX: usize = 4;

/// Bytes of control data one receive has room for: the descriptors, and
/// credentials beside them (which we never ask for, but which must not
/// truncate the descriptors if they come).
// SAFETY: CMSG_SPACE (both calls) is arithmetic on its argument only.
const CONTROL_SPACE: usize = unsafe {
    libc::CMSG_SPACE((RECV_FDS_MAX * std::mem::size_of::<RawFd>()) as u32)
        + libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32)
} as usize;

/// A control buffer, aligned as the `cmsghdr`s the kernel writes into it.
#[repr(C)]
struct ControlSpace {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; CONTROL_SPACE],
}

/// What one [`recv_with_fds`] received.
pub(crate) struct Received {
    /// Bytes read into the buffer (0: the peer closed its end).
    pub(crate) bytes: usize,
    /// Every descriptor the kernel installed in our table for this
    /// message, owned: dropping them closes them.
    pub(crate) fds: Vec<OwnedFd>,
    /// The control data did not fit (`MSG_CTRUNC`): the peer sent more
    /// descriptors than [`RECV_FDS_MAX`] (those beyond are not installed).
    pub(crate) truncated: bool,
}

/// `recvmsg(2)` on `socket` into `buf`, with room for [`RECV_FDS_MAX`]
/// descriptors (installed close-on-exec), retried on EINTR; the socket's
/// own timeout applies (`WouldBlock` when it passes).
///
/// Every descriptor the kernel installed comes back owned, whatever else
/// the message held: several `SCM_RIGHTS` messages, other control
/// messages, a truncated control buffer. The control messages are walked
/// here with `CMSG_FIRSTHDR`/`CMSG_NXTHDR` because a parser that refuses
/// to iterate a truncated buffer (nix's `cmsgs()` with `MSG_CTRUNC`)
/// leaves the descriptors the kernel did install open for good.
pub(crate) fn recv_with_fds(
    socket: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> std::io::Result<Received> {
    let mut space = ControlSpace {
        _align: [],
        bytes: [0; CONTROL_SPACE],
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: an all-zero msghdr is a valid one (no address, no
        // buffers, no flags); the fields we need are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.bytes.as_mut_ptr().cast();
        msg.msg_controllen = CONTROL_SPACE as _;
        // SAFETY: `msg` points at one iovec over `buf` (writable for its
        // length) and at `space` (writable for CONTROL_SPACE bytes), both
        // alive across the call; the kernel writes within those lengths.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Owned before anything else can fail.
        let fds = take_received_fds(&msg);
        return Ok(Received {
            bytes: n as usize,
            fds,
            truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
}

/// Every descriptor of the `SCM_RIGHTS` messages in the control data that
/// `recvmsg` just wrote through `msg`, owned.
fn take_received_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // (`msg_controllen` is a size_t with glibc, a socklen_t with musl.)
    #[allow(clippy::unnecessary_cast)]
    let end = msg.msg_control as usize + msg.msg_controllen as usize;
    // SAFETY: `msg` is the header recvmsg filled: `msg_control` points at
    // our aligned control buffer and `msg_controllen` is the length the
    // kernel wrote there (never more than the buffer). CMSG_FIRSTHDR and
    // CMSG_NXTHDR return only headers that lie inside that length (or
    // null), and read nothing outside it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: a whole, aligned header inside the written data (above).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA is pointer arithmetic past the header;
            // CMSG_LEN(0) is arithmetic.
            let (data, header_len) = unsafe { (libc::CMSG_DATA(cmsg), libc::CMSG_LEN(0)) };
            // The descriptors the header announces, and never more than the
            // written data holds.
            let len = (header.cmsg_len as usize)
                .saturating_sub(header_len as usize)
                .min(end.saturating_sub(data as usize));
            for i in 0..len / std::mem::size_of::<RawFd>() {
                // SAFETY: inside this message's data (bounded above); read
                // unaligned, as the data of a control message need not be
                // aligned for an int.
                let fd = unsafe { data.cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: the kernel installed this descriptor in our table
                // for this message (SCM_RIGHTS); nothing else in the process
                // knows it, so it is owned here and closed exactly once.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; `cmsg` is a header of `msg`.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    fds
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

/// How many forks lie between the process that started this program and
/// this one: 0 in the original process, one more in each child of a
/// `fork()` made after [`watch_forks`]. A client's connection records the
/// value it was opened under and is never used by a process whose value
/// differs (a child must not use, or close, its parent's channels).
static FORK_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The child handler of `pthread_atfork`: runs in the child, on its only
/// thread, before `fork()` returns there.
extern "C" fn count_fork_in_child() {
    // Relaxed: the child runs one thread now; every thread it starts
    // later is spawned after this store, and spawning orders it first.
    FORK_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Makes every later `fork()` of this process (libc's, which Rust's
/// `fork`, `nix::unistd::fork` and Python's `os.fork` all call) bump the
/// generation in the child. Registered once, when the first client is
/// made; a fork before that has no connection to protect.
pub(crate) fn watch_forks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: pthread_atfork only records the three handlers. The one
        // given is a function of this crate, which stays loaded for the
        // life of the process (a Python extension module is never
        // unloaded), and is async-signal-safe: one atomic add, no lock, no
        // allocation, as a handler run in the child of a multi-threaded
        // parent must be.
        let r = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        if r != 0 {
            // ENOMEM only; then forks go unnoticed, as before this hook.
            tracing::warn!("pthread_atfork failed ({r}): a forked child cannot tell its parent's connections from its own");
        }
    });
}

/// This process's fork generation (see [`FORK_GENERATION`]): one relaxed
/// load, on the hot path of every call.
#[inline]
pub(crate) fn fork_generation() -> u64 {
    // Relaxed: pairs with the Relaxed add in the child handler, which ran
    // before any thread of the child that reads it existed.
    FORK_GENERATION.load(std::sync::atomic::Ordering::Relaxed)
}
