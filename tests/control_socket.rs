//! The control socket (src/control.rs) with real processes: who may open a
//! channel (the service's own uid, or a uid it allows), how many channels a
//! service grants, descriptors pushed at it, and its handshake slots held
//! by silent connections, all from a same-user or hostile peer.
//!
//! Each test has its own `METABRIDGE_HOME` and services (killed, reaped
//! and removed by its `TestEnv`, even on failure). Deadlines here only
//! bound how long a failure takes to show.

mod common;

use common::{entry, handshake, sigkill, TestEnv};
use metabridge::{Error, TransportKind};
use metabridge_shm::{Channel, ChannelConfig};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixCredentials};
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// The socket is 0600, and a connection that says nothing no longer holds
/// the accept loop: many silent connections (each used to stall every new
/// channel for 2 s) do not keep a client from connecting within its
/// timeout.
#[test]
fn silent_connections_do_not_stall_channel_setup() {
    let mut env = TestEnv::new("silent");
    env.start_service("svc", &[]);
    let e = entry(&env, "svc");
    let mode = std::fs::metadata(&e.control_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&e.control_socket).unwrap())
        .collect();
    // 20 silent connections held the old accept loop for 40 s; the client
    // below gives up after 10.
    let c = metabridge::connect("svc")
        .home(&env.home)
        .timeout(Duration::from_secs(10))
        .transport(TransportKind::Shm)
        .arg("a")
        .arg(1)
        .open()
        .unwrap();
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
    drop(silent);
}

/// `SO_PEERCRED`: a service admits only its own uid. Here the service runs
/// as uid 65534 in a home of that user, and root (whom file modes do not
/// stop) connects to its socket: refused before anything is read.
#[test]
fn the_control_socket_admits_only_the_services_own_uid() {
    let (status, why) = handshake_with_a_service_of_another_user("peercred", None);
    assert_eq!(status, 1);
    assert!(why.contains("uid 0 may not open channels"), "{why}");
}

/// `ServiceConfig::allow_uids` admits the uids it lists: the same service
/// of uid 65534, allowing uid 0, takes root's channel.
#[test]
fn an_allowed_uid_may_open_channels() {
    let (status, why) = handshake_with_a_service_of_another_user("allowed", Some("0"));
    assert_eq!(status, 0, "{why}");
}

/// Starts a service as uid 65534 in a home of that user (allowing
/// `allow` uids), hands its control socket a good segment as root, and
/// returns the answer.
fn handshake_with_a_service_of_another_user(tag: &str, allow: Option<&str>) -> (u8, String) {
    let mut env = TestEnv::new(tag);
    // The service's home belongs to its user.
    let home = env.home.join("other-user");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    std::fs::set_permissions(&env.home, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut cmd = Command::new(common::TEST_SERVICE);
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    cmd.args(["serve", "theirs"])
        .env("METABRIDGE_HOME", &home)
        .stdout(Stdio::null());
    if let Some(uids) = allow {
        cmd.env("FIXTURE_ALLOW_UIDS", uids);
    }
    let pid = env.spawn(&mut cmd);
    // Root may read their registry (it refuses to *use* a home that is not
    // root's, which is the point of the home checks): find the socket.
    let deadline = Instant::now() + Duration::from_secs(20);
    let socket = loop {
        let found = std::fs::read_dir(&home).ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "sock"))
        });
        if let Some(s) = found {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the service never bound its socket"
        );
        assert!(alive(pid), "the service died");
        std::thread::sleep(Duration::from_millis(5));
    };
    let (_, fd) = Channel::create_memfd(&ChannelConfig::default()).unwrap();
    let answer = handshake(socket.to_str().unwrap(), 2, Some(fd.as_fd()));
    // And our client refuses their home outright.
    let refused = metabridge::connect("theirs").home(&home).open().err();
    assert!(
        matches!(refused, Some(Error::InsecurePath { .. })),
        "{refused:?}"
    );
    sigkill(pid);
    let _ = env.wait_exit(pid, Duration::from_secs(20));
    std::fs::set_permissions(&env.home, std::fs::Permissions::from_mode(0o700)).unwrap();
    answer
}

/// A service has a cap on its shared-memory channels: past it, a client
/// asking for shared memory gets an error naming the limit, and one that
/// does not care falls back to TCP.
#[test]
fn channels_per_service_are_capped_with_a_clear_error() {
    let mut env = TestEnv::new("cap");
    env.start_service("svc", &[("FIXTURE_MAX_CHANNELS", "2")]);
    let a = env.connect("svc").arg("a").arg(1).open().unwrap();
    let b = env.connect("svc").arg("b").arg(1).open().unwrap();
    assert_eq!((a.transport_name(), b.transport_name()), ("shm", "shm"));
    match env
        .connect("svc")
        .transport(TransportKind::Shm)
        .arg("c")
        .arg(1)
        .open()
    {
        Err(Error::Refused(why)) => {
            assert!(why.contains("limit of 2"), "{why}");
            assert!(why.contains("max_channels"), "{why}");
        }
        Err(e) => panic!("expected Refused, got {e}"),
        Ok(_) => panic!("a third channel was opened past the cap of 2"),
    }
    let c = env.connect("svc").arg("c").arg(1).open().unwrap();
    assert_eq!(c.transport_name(), "tcp");
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "cx");
    // Closing a client gives its channel back.
    a.close();
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match env
            .connect("svc")
            .transport(TransportKind::Shm)
            .arg("d")
            .arg(1)
            .open()
        {
            Ok(d) => {
                assert_eq!(d.call::<String>("echo", ("x",)).unwrap(), "dx");
                break;
            }
            Err(Error::Refused(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the freed channel never came back: {e}"),
        }
    }
}
