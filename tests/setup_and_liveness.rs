//! Channel set-up and waits under pressure from a same-user peer, with real
//! processes: descriptors pushed at the control socket, its handshake slots
//! held by silent connections, and a service killed while a caller waits
//! in interruptible slices.
//!
//! Each test has its own `METABRIDGE_HOME` and services (killed, reaped
//! and removed by its `TestEnv`, even on failure). Deadlines here only
//! bound how long a failure takes to show.

mod common;

use common::{sigkill, TestEnv};
use metabridge::{Error, TransportKind};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixCredentials};
use std::io::{BufRead, BufReader, IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn entry(env: &TestEnv, name: &str) -> metabridge::registry::Entry {
    metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup(name)
        .unwrap()
}

/// Descriptors open in process `pid` now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Waits (at most 20 s) until process `pid` holds `want` descriptors; the
/// count it last saw.
fn settle_fds(pid: u32, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = open_fds(pid);
        if now == want || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts the fixture service `name` with at most 1024 descriptors, as a
/// default soft limit would give it.
fn start_with_1024_fds(env: &mut TestEnv, name: &str) -> u32 {
    use std::os::unix::process::CommandExt;
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", name]).stdout(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the limit
    // struct on this closure's stack; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let pid = env.spawn(&mut cmd);
    env.wait_registered(name, pid);
    pid
}

/// One handshake written by hand that pushes descriptors in a shape the
/// service does not expect (shape `i % 4`): three in one `SCM_RIGHTS`;
/// two messages of two; credentials and three; the request bytes one at a
/// time with three descriptors on the second. Returns the status byte and
/// reason, or None if the service closed without answering.
fn push_descriptors(socket: &str, i: usize, fds: &[RawFd; 3]) -> Option<(u8, String)> {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = [2u8, 1];
    let creds = UnixCredentials::new();
    let send = |bytes: &[u8], cmsgs: &[ControlMessage<'_>]| {
        // The service may refuse and close before reading: EPIPE is fine.
        let _ = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
    };
    match i % 4 {
        0 => send(&request, &[ControlMessage::ScmRights(fds)]),
        1 => send(
            &request,
            &[
                ControlMessage::ScmRights(&fds[..2]),
                ControlMessage::ScmRights(&fds[1..]),
            ],
        ),
        2 => send(
            &request,
            &[
                ControlMessage::ScmCredentials(&creds),
                ControlMessage::ScmRights(fds),
            ],
        ),
        _ => {
            send(&request[..1], &[]);
            send(&request[1..], &[ControlMessage::ScmRights(fds)]);
        }
    }
    let mut head = [0u8; 3];
    (&stream).read_exact(&mut head).ok()?;
    let mut why = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
    if head[0] != 0 {
        (&stream).read_exact(&mut why).ok()?;
    }
    Some((head[0], String::from_utf8_lossy(&why).into_owned()))
}

/// A same-user client that sends more descriptors than a handshake takes
/// used to leak two of them in the service per try (the control messages
/// were parsed only when not truncated), until a 1024-descriptor service
/// could accept nothing. Now every descriptor received is closed, on
/// every path: after 600 tries the service holds what it held before, and
/// serves a new client.
#[test]
fn extra_descriptors_in_a_handshake_are_all_closed() {
    let mut env = TestEnv::new("fdleak");
    let pid = start_with_1024_fds(&mut env, "svc");
    let e = entry(&env, "svc");
    let start = open_fds(pid);
    let files: Vec<OwnedFd> = (0..3)
        .map(|_| std::fs::File::open("/dev/null").unwrap().into())
        .collect();
    let fds = [
        files[0].as_raw_fd(),
        files[1].as_raw_fd(),
        files[2].as_raw_fd(),
    ];
    let mut answers = [0usize; 3]; // refused with a reason, other status, closed
    for i in 0..600 {
        match push_descriptors(&e.control_socket, i, &fds) {
            Some((1, why)) => {
                if i % 4 != 3 {
                    assert!(why.contains("descriptor"), "try {i}: {why}");
                }
                answers[0] += 1;
            }
            Some(_) => answers[1] += 1,
            None => answers[2] += 1,
        }
    }
    let after = settle_fds(pid, start);
    println!(
        "service descriptors: {start} before, {after} after 600 tries \
         (refused {}, other {}, closed {})",
        answers[0], answers[1], answers[2]
    );
    assert_eq!(after, start, "descriptors leaked in the service");
    let c = env
        .connect("svc")
        .transport(TransportKind::Shm)
        .arg("a")
        .arg(1)
        .open()
        .unwrap();
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
}

/// Keeps `n` silent connections to `socket` open, each closed and opened
/// again every `every` (in turn, evenly spread), until `stop`.
fn hold_handshake_slots(
    socket: String,
    n: usize,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut held: Vec<Option<UnixStream>> =
            (0..n).map(|_| UnixStream::connect(&socket).ok()).collect();
        let step = every / n as u32;
        let mut renewed = 0;
        let mut k = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(step);
            held[k] = None;
            held[k] = UnixStream::connect(&socket).ok();
            renewed += 1;
            k = (k + 1) % n;
        }
        renewed
    })
}

/// Silent same-user connections that hold every handshake slot (70 of 64,
/// each renewed within the service's 2 s handshake timeout) used to make
/// most new clients fail at once with "too many channel set-ups in
/// progress; retry". A client now takes that answer for what it says and
/// retries, with a short backoff, until its own deadline.
#[test]
fn channel_setup_retries_while_the_handshake_slots_are_held() {
    let mut env = TestEnv::new("busy");
    env.start_service("svc", &[]);
    let e = entry(&env, "svc");
    let stop = Arc::new(AtomicBool::new(false));
    let holder = hold_handshake_slots(
        e.control_socket.clone(),
        70,
        Duration::from_millis(1500),
        stop.clone(),
    );
    // Until a probe is refused as busy: the slots are all held.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, fd) =
            metabridge_shm::Channel::create_memfd(&metabridge_shm::ChannelConfig::default())
                .unwrap();
        let stream = UnixStream::connect(&e.control_socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let raw = [fd.as_fd().as_raw_fd()];
        let _ = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&[2, 1])],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        let mut answer = Vec::new();
        let _ = (&stream).read_to_end(&mut answer);
        if answer.first() == Some(&1) && String::from_utf8_lossy(&answer).contains("retry") {
            break;
        }
        assert!(Instant::now() < deadline, "the slots never filled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let home = env.home.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let r = metabridge::connect("svc")
                    .home(&home)
                    .timeout(Duration::from_secs(60))
                    .transport(TransportKind::Shm)
                    .arg(format!("c{i}:"))
                    .arg(1)
                    .open()
                    .and_then(|c| c.call::<String>("echo", ("x",)));
                (r, t0.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let renewed = holder.join().unwrap();
    for (i, (r, took)) in results.iter().enumerate() {
        println!("client {i}: {r:?} after {took:?}");
    }
    println!("{renewed} silent connections renewed meanwhile");
    for (i, (r, _)) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), format!("c{i}:x"));
    }
}

/// Starts the fixture service `name` announcing each `sleep_ms` on its
/// standard error; returns its pid and a reader of that stream.
fn start_announcing(env: &mut TestEnv, name: &str) -> (u32, BufReader<std::process::ChildStderr>) {
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", name])
        .env("FIXTURE_ANNOUNCE", "1")
        .env("FIXTURE_EXPOSE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    env.adopt(child);
    env.wait_registered(name, pid);
    (pid, stderr)
}

/// Kills `pid` once its stderr says a `sleep_ms` call started.
fn kill_when_called(
    pid: u32,
    mut stderr: BufReader<std::process::ChildStderr>,
) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("sleep_ms started") {
                break;
            }
            line.clear();
        }
        sigkill(pid);
        Instant::now()
    })
}

/// The interruptible wait (what the Python package uses on its main
/// thread) waits in slices as short as the liveness interval, and each
/// slice's own deadline came before its liveness check: a service killed
/// mid-call was noticed only at the call's timeout. Every wait now checks
/// the peer once the liveness interval has passed since the last check,
/// whatever its slice: the call fails with `PeerGone`, not `Timeout`.
#[test]
fn an_interruptible_call_notices_a_killed_service() {
    let mut outcomes = Vec::new();
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        let mut env = TestEnv::new("interruptible");
        let (pid, stderr) = start_announcing(&mut env, "svc");
        let c = env
            .connect("svc")
            .timeout(Duration::from_secs(60))
            .transport(kind)
            .arg("a")
            .arg(1)
            .open()
            .unwrap();
        let killer = kill_when_called(pid, stderr);
        let args = metabridge::to_msgpack(&(30_000u64,)).unwrap();
        let never = || false;
        let r = c.call_encoded("sleep_ms", &args, &[0x80], Some(&never));
        let returned = Instant::now();
        let killed = killer.join().unwrap();
        println!(
            "{}: {:?} {:?} after SIGKILL",
            c.transport_name(),
            r.as_ref().map(|_| ()),
            returned.saturating_duration_since(killed)
        );
        outcomes.push((kind, r));
    }
    for (kind, r) in outcomes {
        match kind {
            TransportKind::Shm => assert!(matches!(r, Err(Error::PeerGone(_))), "{r:?}"),
            _ => assert!(r.is_err() && !matches!(r, Err(Error::Timeout(_))), "{r:?}"),
        }
    }
}
