//! Attacks and faults from outside, with real processes: what another
//! user, a buggy process of the same user, or the operating system can do
//! to a service, and what the service and its clients do about it.
//!
//! Each test starts its own services in its own `METABRIDGE_HOME`, and its
//! `TestEnv` kills and reaps every process it started and removes the home,
//! even when the test fails. No assertion depends on timing: a deadline in
//! these tests only bounds how long a *failure* takes to show.

mod common;

use common::{rss_kib, sigkill, sigterm, TestEnv};
use metabridge::{Error, TransportKind};
use metabridge_shm::{Channel, ChannelConfig};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn entry(env: &TestEnv, name: &str) -> metabridge::registry::Entry {
    metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup(name)
        .unwrap()
}

/// The control handshake written by hand (see ARCHITECTURE.md, "Services
/// at run time", and src/control.rs), so a test
/// can send what a hostile or buggy client would.
fn handshake(socket: &str, version: u8, fd: Option<std::os::fd::BorrowedFd<'_>>) -> (u8, String) {
    // The socket file exists from bind(), a moment before listen().
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("cannot connect to {socket}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let bytes = [version, 1];
    let iov = [IoSlice::new(&bytes)];
    let raw;
    let cmsg: Vec<ControlMessage<'_>> = match fd {
        Some(fd) => {
            raw = [fd.as_raw_fd()];
            vec![ControlMessage::ScmRights(&raw)]
        }
        None => Vec::new(),
    };
    // A service that refuses before reading may have closed already
    // (EPIPE here); its answer is still there to read.
    let _ = sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    let mut head = [0u8; 3];
    (&stream).read_exact(&mut head).unwrap();
    let mut why = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
    if head[0] != 0 {
        (&stream).read_exact(&mut why).unwrap();
    }
    (head[0], String::from_utf8_lossy(&why).into_owned())
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// A same-user client that truncates its segment after the handshake used
/// to kill the service with SIGBUS (exit 135). Segments are now sealed
/// memfds: the truncation fails, and the service serves on.
#[test]
fn a_client_cannot_truncate_its_segment_under_the_service() {
    let mut env = TestEnv::new("truncate");
    let pid = env.start_service("svc", &[]);
    let e = entry(&env, "svc");
    let (mut ours, fd) = Channel::create_memfd(&ChannelConfig::default()).unwrap();
    let (status, why) = handshake(&e.control_socket, 2, Some(fd.as_fd()));
    assert_eq!(status, 0, "{why}");
    let file = std::fs::File::from(fd);
    let err = file.set_len(4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // The service reads the whole ring: send a request that fills it.
    let mut request = Vec::new();
    let ctor = metabridge::envelope::encode_ctor(&[0x92, 0xa1, b'p', 1], &[0x80]);
    let text = "x".repeat(200_000);
    let mut args = vec![0x91];
    args.extend(metabridge::to_msgpack(&text).unwrap());
    metabridge::envelope::encode_call(
        &mut request,
        "echo",
        &args,
        &[0x80],
        &ctor,
        e.token.as_deref(),
    );
    ours.send(&request).unwrap();
    let reply = ours.recv_timeout(Duration::from_secs(20)).unwrap();
    let echoed: String = metabridge::envelope::decode_result(&reply).unwrap();
    assert_eq!(echoed.len(), 200_001);
    assert!(alive(pid));
    let c = env.connect("svc").arg("a").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
}

/// A client that skips the seals (so that it could truncate later) is
/// refused before the service maps anything; so is a wrong version, a
/// missing descriptor, or a plain file.
#[test]
fn the_service_refuses_segments_that_could_be_resized() {
    let mut env = TestEnv::new("unsealed");
    let pid = env.start_service("svc", &[]);
    let e = entry(&env, "svc");
    let memfd =
        nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .unwrap();
    std::fs::File::from(memfd.try_clone().unwrap())
        .set_len(1 << 21)
        .unwrap();
    let (status, why) = handshake(&e.control_socket, 2, Some(memfd.as_fd()));
    assert_eq!(status, 1);
    assert!(why.contains("not sealed"), "{why}");
    let (status, why) = handshake(&e.control_socket, 2, None);
    assert_eq!(status, 1);
    assert!(why.contains("no segment descriptor"), "{why}");
    let (_, fd) = Channel::create_memfd(&ChannelConfig::default()).unwrap();
    let (status, why) = handshake(&e.control_socket, 1, Some(fd.as_fd()));
    assert_eq!(status, 1);
    assert!(why.contains("version 1"), "{why}");
    let registry_file = std::fs::File::open(env.home.join("registry")).unwrap();
    let (status, _) = handshake(&e.control_socket, 2, Some(registry_file.as_fd()));
    assert_eq!(status, 1);
    assert!(alive(pid));
    let c = env.connect("svc").arg("a").arg(1).open().unwrap();
    assert_eq!(c.transport_name(), "shm");
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
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

/// A client out of file descriptors cannot read `/proc/<pid>/stat`: that
/// used to count as "the service died", and the client deleted a live
/// service's registry entry. The child process below looks the service up
/// with no descriptor to spare; the entry must survive.
#[test]
fn a_client_out_of_descriptors_never_calls_a_live_service_dead() {
    let mut env = TestEnv::new("emfile");
    let pid = env.start_service("svc", &[]);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "emfile_probe",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MB_EMFILE_HOME", &env.home)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("EMFILE-PROBE looked up"), "{text}");
    assert_eq!(entry(&env, "svc").pid, pid, "the live entry is still there");
}

/// The child side of the test above.
#[test]
fn emfile_probe() {
    let Some(home) = std::env::var_os("MB_EMFILE_HOME") else {
        return;
    };
    let reg = metabridge::registry::Registry::open(std::path::Path::new(&home)).unwrap();
    // Use up every descriptor.
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    let result = reg.lookup("svc");
    drop(hoard);
    // Either found, or an error that says the registry could not be read;
    // never "died".
    match result {
        Ok(e) => println!("EMFILE-PROBE looked up {}", e.pid),
        Err(e) => {
            assert!(!e.to_string().contains("died"), "{e}");
            println!("EMFILE-PROBE looked up with error {e}");
        }
    }
}

/// Someone truncates the registry while a service runs: the service
/// notices its entry is gone and registers again.
#[test]
fn a_live_service_whose_entry_vanished_registers_again() {
    let mut env = TestEnv::new("reregister");
    let pid = env.start_service("svc", &[]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(env.home.join("registry"))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(matches!(
        metabridge::registry::Registry::open(&env.home)
            .unwrap()
            .lookup("svc"),
        Err(Error::ServiceNotFound { .. })
    ));
    env.wait_registered("svc", pid);
    let c = env.connect("svc").arg("a").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
}

/// A SIGKILLed service leaves its control socket; the next service to
/// start (and `metabridge::gc`) removes it, and never a live one's.
#[test]
fn sockets_of_killed_services_are_collected() {
    let mut env = TestEnv::new("leaks");
    let mut killed = Vec::new();
    for i in 0..3 {
        let pid = env.start_service(&format!("victim{i}"), &[]);
        sigkill(pid);
        env.wait_exit(pid, Duration::from_secs(20));
        killed.push(pid);
    }
    let live = env.start_service("survivor", &[]);
    let names = env.leftovers();
    for pid in &killed {
        assert!(
            !names.iter().any(|n| n.contains(&format!("-{pid}.sock"))),
            "a dead service's socket is left: {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.contains(&format!("-{live}.sock"))),
        "{names:?}"
    );
    // gc() run by hand keeps the live one too.
    std::env::set_var("METABRIDGE_HOME", &env.home);
    let report = metabridge::gc().unwrap();
    std::env::remove_var("METABRIDGE_HOME");
    assert!(
        report.kept.iter().any(|k| k.contains("survivor")),
        "{report:?}"
    );
    assert!(env
        .leftovers()
        .iter()
        .any(|n| n.contains(&format!("-{live}.sock"))));
}

/// A shared-memory call larger than a quarter ring used to wait for room
/// with no deadline: forever against a service that never reads (here,
/// stopped with SIGSTOP). It now obeys the call's timeout, as does the
/// set-up of a channel (which surfaced as `Io(WouldBlock)`).
#[test]
fn every_step_of_a_call_obeys_its_timeout() {
    let mut env = TestEnv::new("deadline");
    let pid = env.start_service("svc", &[]);
    let client = metabridge::connect("svc")
        .home(&env.home)
        .timeout(Duration::from_millis(500))
        .transport(TransportKind::Shm)
        .arg("a")
        .arg(1)
        .open()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    struct Continue(u32);
    impl Drop for Continue {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }
    let _cont = Continue(pid);
    // A watchdog turns a hang into a failure instead of a stuck suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let big = "y".repeat(4 << 20);
        let r = client.call::<String>("echo", (big,));
        let _ = tx.send(r.map(|s| s.len()));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Err(Error::Timeout(_))) => {}
        Ok(other) => panic!("expected Timeout, got {other:?}"),
        Err(_) => panic!("a call to a stopped service hung past its 500 ms timeout"),
    }
    // Setting up a channel to a stopped service: Timeout too.
    let (tx, rx) = std::sync::mpsc::channel();
    let home = env.home.clone();
    std::thread::spawn(move || {
        let r = metabridge::connect("svc")
            .home(&home)
            .timeout(Duration::from_millis(500))
            .transport(TransportKind::Shm)
            .open()
            .map(|_| ());
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Err(Error::Timeout(_))) => {}
        Ok(other) => panic!("expected Timeout, got {other:?}"),
        Err(_) => panic!("channel set-up hung past its timeout"),
    }
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

/// An endpoint that never returns used to keep a SIGTERMed service alive
/// forever. Past its shutdown deadline the service stops anyway, says
/// which calls it abandoned, and exits non-zero.
#[test]
fn shutdown_has_a_deadline_even_with_a_call_that_never_returns() {
    use std::io::BufRead;
    let mut env = TestEnv::new("shutdown");
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", "svc"])
        .env("FIXTURE_SHUTDOWN_MS", "300")
        .env("FIXTURE_ANNOUNCE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let err_pipe = child.stderr.take().unwrap();
    env.adopt(child);
    env.wait_registered("svc", pid);
    // The service's stderr, line by line, on a thread of its own.
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err_pipe)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        let c = env.client("svc", kind, "a");
        std::thread::spawn(move || {
            let _ = c.call::<u64>("sleep_ms", (u64::MAX / 4,));
        });
    }
    // Both calls are running once the endpoint has announced them.
    let mut started = 0;
    while started < 2 {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the sleeping calls never started");
        started += line.contains("sleep_ms started") as usize;
    }
    sigterm(pid);
    let code = env.wait_exit(pid, Duration::from_secs(60));
    assert_eq!(code, Some(4), "test_service exits 4 on ShutdownTimeout");
    let rest: Vec<String> = lines.try_iter().collect();
    let text = rest.join("\n");
    assert!(text.contains("abandoning"), "{text}");
}

/// A worker used to keep its largest reply buffer until restart (300 MiB
/// after one big reply). It now frees buffers over 1 MiB after use.
#[test]
fn a_large_reply_does_not_pin_its_memory() {
    let mut env = TestEnv::new("shrink");
    let pid = env.start_service("svc", &[]);
    let c = env.client("svc", TransportKind::Shm, "a");
    assert_eq!(c.call::<String>("echo", ("warm",)).unwrap(), "awarm");
    let before = rss_kib(pid);
    let big = "z".repeat(96 << 20);
    assert_eq!(
        c.call::<String>("echo", (big,)).unwrap().len(),
        (96 << 20) + 1
    );
    assert_eq!(c.call::<String>("echo", ("small",)).unwrap(), "asmall");
    let after = rss_kib(pid);
    assert!(
        after < before + 48 * 1024,
        "a 96 MiB reply left the service {} MiB larger",
        (after.saturating_sub(before)) / 1024
    );
}

/// A home on a full filesystem: the service does not start, and says why
/// (the registry's size, its path, the space left), instead of dying of
/// SIGBUS at the first touch of a page that was never there.
#[test]
fn a_full_home_is_a_clear_error_not_a_crash() {
    let env = TestEnv::new("fullhome");
    let home = env.home.join("tiny");
    std::fs::create_dir(&home).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&home)
        .status()
        .expect("mount(8) runs");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(home.clone());
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", "svc"])
        .env("METABRIDGE_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "pid {pid}: {text}");
    assert!(text.contains("no space"), "{text}");
    assert!(
        text.contains(&home.join("registry").display().to_string()),
        "{text}"
    );
    assert!(text.contains("bytes left"), "{text}");
}
