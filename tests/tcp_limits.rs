//! TCP resource limits of a real service process (the `test_service`
//! fixture), over real sockets: frames before authentication, a slow sync
//! endpoint, shutdown with a call that never returns, idle connections.

mod common;

use common::{rss_kib, sigterm, tcp_addr, TestEnv};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Resident memory of `pid`, in KiB.
/// Whether one of `pid`'s threads is sleeping in `nanosleep` (the
/// fixture's `sleep_ms` endpoint; nothing else in a service sleeps so).
fn sleeping_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("wchan"))
                        .is_ok_and(|w| w.contains("nanosleep"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_error(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    metabridge_tcp::read_frame_blocking(s, 1 << 20, &mut buf).expect("an error response");
    match metabridge::envelope::decode_result::<metabridge::rmpv::Value>(&buf) {
        Err(metabridge::Error::Remote { kind, message }) => (kind, message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Issue 4: 12 connections without the token pushed a service from 4 MB to
/// 790 MB, since frames of up to 64 MiB were buffered before the check.
#[test]
fn connections_without_the_token_cannot_make_the_service_buffer_large_frames() {
    let mut env = TestEnv::new("tcp-auth");
    let pid = env.start_service("guarded", &[("METABRIDGE_TOKEN", "s3cret")]);
    let addr = tcp_addr(&env, "guarded");
    let before = rss_kib(pid);
    let body = vec![0u8; 1 << 20];
    for _ in 0..12 {
        let mut s = raw(&addr);
        s.write_all(&(60u32 << 20).to_be_bytes()).unwrap();
        // Refused from the prefix alone, naming the limit ...
        let (kind, message) = read_error(&mut s);
        assert_eq!(kind, "ProtocolError");
        assert!(message.contains("65536"), "{message}");
        // ... and the body, whatever of it the server still reads, is
        // discarded, then the connection is closed.
        let _ = s.write_all(&body);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        assert!(rest.is_empty(), "nothing follows the error response");
    }
    // 720 MiB declared and 12 MiB sent: none of it was kept.
    let grown_kib = rss_kib(pid).saturating_sub(before);
    assert!(grown_kib < 6 * 1024, "the service grew by {grown_kib} KiB");
}

#[test]
fn a_client_with_the_token_sends_large_arguments_after_its_first_call() {
    let mut env = TestEnv::new("tcp-auth-ok");
    env.start_service("guarded", &[("METABRIDGE_TOKEN", "s3cret")]);
    let c = env
        .connect("guarded")
        .arg("p:")
        .arg(1)
        .token("s3cret")
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "p:x");
    let big = serde_bytes::ByteBuf::from(vec![7u8; 4 << 20]);
    assert_eq!(c.call::<usize>("blob", (big,)).unwrap(), 4 << 20);
}

/// Compatibility: a service without a token trusts every connection (the
/// original Python client cannot send one), so a large first frame is fine.
#[test]
fn without_a_token_a_first_call_may_be_large() {
    let mut env = TestEnv::new("tcp-open");
    env.start_service("open", &[]);
    let c = env
        .connect("open")
        .arg("p:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    let big = serde_bytes::ByteBuf::from(vec![7u8; 4 << 20]);
    assert_eq!(c.call::<usize>("blob", (big,)).unwrap(), 4 << 20);
}

/// Issue 8: a sync endpoint ran on a runtime thread, so one slow call
/// stopped every other TCP call and new connections. With one runtime
/// thread, the slow call hands its work over at once; with two, the first
/// slow call keeps its thread and the second hands over.
#[test]
fn slow_sync_endpoints_do_not_stop_other_tcp_calls() {
    for workers in [1usize, 2] {
        let mut env = TestEnv::new("tcp-slow");
        let pid = env.start_service("slow", &[("METABRIDGE_WORKERS", &workers.to_string())]);
        assert_eq!(sleeping_threads(pid), 0);
        for n in 1..=workers {
            let slow = env
                .connect("slow")
                .arg("s:")
                .arg(1)
                .transport(metabridge::TransportKind::Tcp)
                .open()
                .unwrap();
            // Ends when the service is killed at the end of the test.
            std::thread::spawn(move || slow.call::<u64>("sleep_ms", (1u64 << 40,)));
            wait_for("a slow call to start", || sleeping_threads(pid) == n);
        }

        // A new connection, while every runtime thread would be asleep.
        let other = env
            .connect("slow")
            .arg("o:")
            .arg(1)
            .transport(metabridge::TransportKind::Tcp)
            .timeout(Duration::from_secs(10))
            .open()
            .unwrap();
        for i in 0..10 {
            assert_eq!(
                other.call::<String>("echo", (i.to_string(),)).unwrap(),
                format!("o:{i}")
            );
        }
        assert_eq!(other.call::<String>("later", (1,)).unwrap(), "o:after 1 ms");
    }
}

/// Issue 19: the pool of TCP call threads is bounded by
/// `METABRIDGE_TCP_CALL_THREADS`: with one thread held by a call that never
/// returns, the next sync call waits its turn (and times out, for it cannot
/// run), while `async` endpoints of built instances are still served.
#[test]
fn tcp_call_threads_are_bounded_and_async_calls_go_on() {
    let mut env = TestEnv::new("tcp-bound");
    let pid = env.start_service("bound", &[("METABRIDGE_TCP_CALL_THREADS", "1")]);
    let held = env
        .connect("bound")
        .arg("h:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    // Ends when the service is killed at the end of the test.
    std::thread::spawn(move || held.call::<u64>("sleep_ms", (1u64 << 40,)));
    wait_for("the held call to start", || sleeping_threads(pid) == 1);

    // A new instance: its constructor is sync code, so even an async
    // endpoint of it waits for the thread, and times out.
    let fresh = env
        .connect("bound")
        .arg("f:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .timeout(Duration::from_millis(500))
        .open()
        .unwrap();
    match fresh.call::<String>("later", (1,)) {
        Err(metabridge::Error::Timeout(_)) => {}
        other => panic!("a constructor ran beside the held call: {other:?}"),
    }
    // The held call's instance (`h:`, 1) is built: a sync endpoint of it
    // waits for the thread too, while `later`, async, needs none.
    let built = env
        .connect("bound")
        .arg("h:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .timeout(Duration::from_millis(500))
        .open()
        .unwrap();
    match built.call::<String>("echo", ("x",)) {
        Err(metabridge::Error::Timeout(_)) => {}
        other => panic!("a second sync call ran beside the held one: {other:?}"),
    }
    assert_eq!(built.call::<String>("later", (1,)).unwrap(), "h:after 1 ms");
    assert_eq!(sleeping_threads(pid), 1, "a second call thread started");
}

/// Issue 8: shutdown waited forever for a sync call that never returns.
#[test]
fn sigterm_stops_the_service_even_while_a_call_never_returns() {
    let mut env = TestEnv::new("tcp-stuck");
    let pid = env.start_service(
        "stuck",
        &[
            ("METABRIDGE_WORKERS", "1"),
            ("METABRIDGE_TCP_SHUTDOWN_GRACE_MS", "200"),
        ],
    );
    let stuck = env
        .connect("stuck")
        .arg("s:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    let caller = std::thread::spawn(move || stuck.call::<u64>("sleep_ms", (1u64 << 62,)));
    wait_for("the stuck call to start", || sleeping_threads(pid) == 1);
    sigterm(pid);
    assert!(
        env.wait_exit(pid, Duration::from_secs(20)).is_some(),
        "the service did not exit"
    );
    assert!(caller.join().unwrap().is_err(), "the call cannot succeed");
}

/// Issue 10: 1024 idle connections locked every TCP client out for 60 s.
#[test]
fn idle_connections_do_not_lock_other_clients_out() {
    let mut env = TestEnv::new("tcp-idle");
    env.start_service("idle", &[]);
    let addr = tcp_addr(&env, "idle");
    let idle: Vec<TcpStream> = (0..1100).map(|_| raw(&addr)).collect();
    let c = env
        .connect("idle")
        .arg("i:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .timeout(Duration::from_secs(10))
        .open()
        .unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "i:x");
    drop(idle);
}

/// Issue 10, when the process runs out of file descriptors before the
/// connection limits are reached: an idle connection gives one back.
#[test]
fn out_of_file_descriptors_an_idle_connection_makes_room() {
    use std::os::unix::process::CommandExt;
    let mut env = TestEnv::new("tcp-nofile");
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", "nofile"])
        .stdout(std::process::Stdio::null())
        // Only the descriptor limit can stop the idle connections.
        .env("METABRIDGE_TCP_MAX_CONNECTIONS_PER_IP", "100000")
        .env("METABRIDGE_TCP_MAX_IDLE_PER_IP", "100000");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let pid = env.spawn(&mut cmd);
    env.wait_registered("nofile", pid);
    let addr = tcp_addr(&env, "nofile");
    // More than the service has descriptors for.
    let idle: Vec<TcpStream> = (0..200).map(|_| raw(&addr)).collect();
    let c = env
        .connect("nofile")
        .arg("n:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .timeout(Duration::from_secs(10))
        .open()
        .unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "n:x");
    drop(idle);
}

/// One socket of /proc/net/tcp.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sock {
    local: std::net::SocketAddrV4,
    remote: std::net::SocketAddrV4,
    state: u8,
    rx_queue: u64,
    inode: u64,
}

/// A TCP state, as /proc/net/tcp numbers it.
const LISTEN: u8 = 0x0A;
const ESTABLISHED: u8 = 0x01;

fn parse_addr(field: &str) -> std::net::SocketAddrV4 {
    let (ip, port) = field.split_once(':').unwrap();
    // The address is printed as the host-order value of its network-order
    // bytes.
    let ip = u32::from_str_radix(ip, 16).unwrap().to_be();
    std::net::SocketAddrV4::new(ip.into(), u16::from_str_radix(port, 16).unwrap())
}

/// Every IPv4 TCP socket of this network namespace.
fn tcp_sockets() -> Vec<Sock> {
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (_, rx) = f[4].split_once(':').unwrap();
            Sock {
                local: parse_addr(f[1]),
                remote: parse_addr(f[2]),
                state: u8::from_str_radix(f[3], 16).unwrap(),
                rx_queue: u64::from_str_radix(rx, 16).unwrap(),
                inode: f[9].parse().unwrap(),
            }
        })
        .collect()
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> std::collections::HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    link.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The connections the service `pid` listening on `addr` holds (the
/// listener aside).
fn served(pid: u32, addr: &str) -> Vec<Sock> {
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    let mine = socket_inodes(pid);
    tcp_sockets()
        .into_iter()
        .filter(|s| s.local == addr && s.state != LISTEN && mine.contains(&s.inode))
        .collect()
}

/// This process's connections to `addr`.
fn ours_to(addr: &str) -> Vec<Sock> {
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    let mine = socket_inodes(std::process::id());
    let mut ours: Vec<Sock> = tcp_sockets()
        .into_iter()
        .filter(|s| s.remote == addr && mine.contains(&s.inode))
        .collect();
    ours.sort_by_key(|s| s.inode);
    ours
}

/// This test binary again, running only the test `name` (a probe that
/// does nothing unless its environment says so).
fn probe(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"]);
    cmd
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Issue 15: another user holding half-sent frames (64 loopback
/// connections each holding one byte of a length prefix, reopened when
/// closed) made the owner's pooled TCP client lose 1662 of 2037 calls; from
/// 20 more source addresses the server-wide cap filled and 185 of 189
/// calls failed. Unauthenticated connections now have quotas of their own
/// and a deadline, and never displace an authenticated one.
#[test]
fn another_user_holding_half_sent_frames_cannot_lock_the_owner_out() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    const THREADS: u64 = 4;
    let mut env = TestEnv::new("tcp-halfsent");
    env.start_service("owned", &[("METABRIDGE_TCP_AUTH_TIMEOUT_MS", "300")]);
    let addr = tcp_addr(&env, "owned");
    let owner = env
        .connect("owned")
        .arg("o:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    // The owner's pool holds four connections before the attack begins.
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| assert!(owner.call::<bool>("gather", (THREADS,)).unwrap()));
        }
    });
    let before = ours_to(&addr);
    assert_eq!(before.len(), THREADS as usize, "{before:?}");

    for sources in [1, 21] {
        let mut attacker = probe("half_sent_attacker_probe")
            .env("MB_ATTACK_ADDR", &addr)
            .env("MB_ATTACK_SOURCES", sources.to_string())
            .uid(65534)
            .gid(65534)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stop = attacker.stdin.take().unwrap();
        let mut report = BufReader::new(attacker.stdout.take().unwrap());
        let attacker_pid = attacker.id();
        env.adopt(attacker);
        let mut line = String::new();
        while !line.contains("ATTACK ready") {
            line.clear();
            assert!(
                report.read_line(&mut line).unwrap() > 0,
                "the attacker ended before it was ready"
            );
        }

        // The owner calls from four threads while the attack goes on.
        let until = Instant::now() + Duration::from_secs(2);
        let (calls, failures) = std::thread::scope(|s| {
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let owner = &owner;
                    s.spawn(move || {
                        let (mut calls, mut failures) = (0u64, Vec::new());
                        while Instant::now() < until {
                            let text = format!("{t}-{calls}");
                            match owner.call::<String>("echo", (text.as_str(),)) {
                                Ok(echoed) => assert_eq!(echoed, format!("o:{text}")),
                                Err(e) => failures.push(e.to_string()),
                            }
                            calls += 1;
                        }
                        (calls, failures)
                    })
                })
                .collect();
            // And new clients of the owner, whose connections must
            // authenticate in the middle of the attack.
            let fresh = s.spawn(|| {
                let (mut calls, mut failures) = (0u64, Vec::new());
                while Instant::now() < until {
                    let opened = env
                        .connect("owned")
                        .arg("f:")
                        .arg(1)
                        .transport(metabridge::TransportKind::Tcp)
                        .open();
                    match opened.and_then(|c| c.call::<String>("echo", ("x",))) {
                        Ok(echoed) => assert_eq!(echoed, "f:x"),
                        Err(e) => failures.push(format!("a new client: {e}")),
                    }
                    calls += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                (calls, failures)
            });
            threads
                .into_iter()
                .chain([fresh])
                .map(|t| t.join().unwrap())
                .fold((0, Vec::new()), |(n, mut f), (c, more)| {
                    f.extend(more);
                    (n + c, f)
                })
        });

        drop(stop); // the attacker stops at the end of its input
        let mut tail = String::new();
        let _ = std::io::Read::read_to_string(&mut report, &mut tail);
        env.wait_exit(attacker_pid, Duration::from_secs(20));
        assert!(
            failures.is_empty(),
            "from {sources} address(es): {} of {calls} calls failed, e.g. {:?} ({tail})",
            failures.len(),
            failures.first()
        );
        // Not one of the owner's connections was closed (the pool would
        // have replaced it by one of another inode).
        let now = ours_to(&addr);
        assert_eq!(now, before, "the owner's connections changed ({tail})");
        assert!(now.iter().all(|s| s.state == ESTABLISHED));
        println!("from {sources} address(es): {calls} calls of the owner, none failed; {tail}");
        // The attack did run: the server closed the attacker's connections
        // (at their deadline, or to make room for others) and it reopened.
        assert!(tail.contains("reopened="), "{tail}");
    }
}

/// Opens a connection from `source` to `target` and sends one byte of a
/// length prefix; then non-blocking, to see when the server closes it.
fn half_sent_from(
    rt: &tokio::runtime::Runtime,
    source: std::net::Ipv4Addr,
    target: std::net::SocketAddrV4,
) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    let stream = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(5), socket.connect(target.into())).await
        })
        .ok()?
        .ok()?;
    let mut s = stream.into_std().ok()?;
    s.set_nonblocking(false).ok()?;
    s.write_all(&[0]).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// The other user's side of the test above (it does nothing unless that
/// test started this binary with `MB_ATTACK_ADDR`, as uid 65534): holds 64
/// half-sent frames from each of `MB_ATTACK_SOURCES` addresses (127.0.0.1
/// and up), reopening each one the server closes, until its input ends.
#[test]
fn half_sent_attacker_probe() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Ok(addr) = std::env::var("MB_ATTACK_ADDR") else {
        return;
    };
    assert_eq!(nix::unistd::geteuid().as_raw(), 65534);
    let target: std::net::SocketAddrV4 = addr.parse().unwrap();
    let sources: u8 = std::env::var("MB_ATTACK_SOURCES").unwrap().parse().unwrap();
    const PER_ADDRESS: usize = 64;
    let stop = AtomicBool::new(false);
    let opened = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for n in 1..=sources {
            let source = std::net::Ipv4Addr::new(127, 0, 0, n);
            let (stop, opened) = (&stop, &opened);
            s.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut held: Vec<Option<TcpStream>> = (0..PER_ADDRESS).map(|_| None).collect();
                while !stop.load(Ordering::Relaxed) {
                    for slot in &mut held {
                        let alive = slot.as_mut().is_some_and(|s| {
                            let mut byte = [0u8; 1];
                            matches!(std::io::Read::read(s, &mut byte),
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                        });
                        if !alive {
                            *slot = half_sent_from(&rt, source, target);
                            if slot.is_some() {
                                opened.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while opened.load(Ordering::Relaxed) < PER_ADDRESS * sources as usize {
            assert!(Instant::now() < deadline, "could not open the connections");
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready = opened.load(Ordering::Relaxed);
        println!("ATTACK ready");
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        stop.store(true, Ordering::Relaxed);
        println!(
            "ATTACK reopened={}",
            opened.load(Ordering::Relaxed).saturating_sub(ready)
        );
    });
}

/// Issue 15: 70 calls of an async endpoint that never finishes, each with
/// a 200 ms timeout, from a client that then exits, left 64 connections in
/// CLOSE_WAIT forever and the per-address quota full: every later loopback
/// client failed. A call whose client closes its connection is dropped
/// (the endpoint's future with it) and the connection closed.
#[test]
fn calls_left_pending_by_a_client_that_exits_give_their_connections_back() {
    let mut env = TestEnv::new("tcp-gone");
    let pid = env.start_service("gone", &[]);
    let addr = tcp_addr(&env, "gone");
    let caller = probe("pending_caller_probe")
        .env("MB_PENDING_HOME", &env.home)
        .env("MB_PENDING_NAME", "gone")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&caller.stdout);
    assert!(caller.status.success(), "{said}");
    assert!(said.contains("PENDING timeouts=70"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = served(pid, &addr);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service still holds {} connections of the gone client, {} in CLOSE_WAIT",
            left.len(),
            left.iter().filter(|s| s.state == 0x08).count()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = env
        .connect("gone")
        .arg("n:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .timeout(Duration::from_secs(10))
        .open()
        .unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "n:x");
    assert_eq!(
        c.call::<u64>("forever_live", ()).unwrap(),
        0,
        "an endpoint's future outlived its call"
    );
    c.close();
    wait_for("the service to close the last connection", || {
        served(pid, &addr).is_empty()
    });
}

/// The gone client of the test above (it does nothing unless that test
/// started this binary with `MB_PENDING_NAME`): 70 calls that never
/// complete, each timing out after 200 ms, then an exit.
#[test]
fn pending_caller_probe() {
    let (Ok(home), Ok(name)) = (
        std::env::var("MB_PENDING_HOME"),
        std::env::var("MB_PENDING_NAME"),
    ) else {
        return;
    };
    let c = metabridge::connect(&name)
        .home(home)
        .arg("p:")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .timeout(Duration::from_millis(200))
        .open()
        .unwrap();
    let mut timeouts = 0;
    for _ in 0..70 {
        match c.call::<bool>("forever_counted", ()) {
            Err(metabridge::Error::Timeout(_)) => timeouts += 1,
            other => println!("PENDING other: {other:?}"),
        }
    }
    println!("PENDING timeouts={timeouts}");
    std::process::exit(0);
}

/// Issue 15: the death of a service over TCP reached its clients as
/// `Protocol("connection closed")`, `Io(ECONNRESET)` or `Io(EPIPE)`; over
/// shared memory it is `PeerGone`. Same cause, same error.
#[test]
fn a_service_killed_mid_call_is_peer_gone_over_tcp() {
    let mut env = TestEnv::new("tcp-killed");
    // Killed while it runs the call: the connection ends cleanly.
    let pid = env.start_service("killed", &[]);
    let c = env.client("killed", metabridge::TransportKind::Tcp, "k:");
    let caller = std::thread::spawn(move || c.call::<u64>("sleep_ms", (1u64 << 40,)));
    wait_for("the call to start", || sleeping_threads(pid) == 1);
    common::sigkill(pid);
    let e = caller.join().unwrap().unwrap_err();
    assert!(matches!(e, metabridge::Error::PeerGone(_)), "{e:?}");

    // Killed while the request is still being sent: the connection is
    // reset under the writer.
    let pid = env.start_service("stopped", &[]);
    let addr = tcp_addr(&env, "stopped");
    let c = env.client("stopped", metabridge::TransportKind::Tcp, "s:");
    signal(pid, "STOP");
    let big = serde_bytes::ByteBuf::from(vec![1u8; 32 << 20]);
    let caller = std::thread::spawn(move || c.call::<usize>("blob", (big,)));
    wait_for("the request to fill the service's socket", || {
        served(pid, &addr).iter().any(|s| s.rx_queue > 0)
    });
    common::sigkill(pid);
    let e = caller.join().unwrap().unwrap_err();
    assert!(matches!(e, metabridge::Error::PeerGone(_)), "{e:?}");
}

/// Issue 15: a fixed 10 s frame timeout capped a message by link speed (a
/// 60 MiB request at 4 MB/s failed after 10.2 s). The service's deadline
/// follows progress: here a 300 ms stall timeout and a 2 MiB request sent
/// in 100 pieces, 10 ms apart.
#[test]
fn a_slow_but_steady_request_is_not_cut_short() {
    let mut env = TestEnv::new("tcp-slowlink");
    env.start_service(
        "slowlink",
        &[
            ("FIXTURE_EXPOSE", "1"),
            ("METABRIDGE_TCP_STALL_TIMEOUT_MS", "300"),
        ],
    );
    let addr = tcp_addr(&env, "slowlink");
    let ctor = metabridge::envelope::encode_ctor(&[0x92, 0xa2, b'p', b':', 1], &[0x80]);
    let mut args = Vec::new();
    metabridge::rmpv::encode::write_value(
        &mut args,
        &metabridge::rmpv::Value::Array(vec![metabridge::rmpv::Value::Binary(vec![3u8; 2 << 20])]),
    )
    .unwrap();
    let mut call = Vec::new();
    metabridge::envelope::encode_call(&mut call, "blob", &args, &[0x80], &ctor, None);
    let mut frame = (call.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&call);

    let mut s = raw(&addr);
    let t0 = Instant::now();
    for piece in frame.chunks(frame.len().div_ceil(100)) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut buf = Vec::new();
    metabridge_tcp::read_frame_blocking(&mut s, 1 << 20, &mut buf).unwrap();
    let len: usize = metabridge::envelope::decode_result(&buf).unwrap();
    assert_eq!(len, 2 << 20);
    assert!(
        t0.elapsed() > Duration::from_millis(300),
        "not slow enough to mean anything"
    );

    // A request that stops half-way is still closed.
    let mut s = raw(&addr);
    s.write_all(&frame[..frame.len() / 2]).unwrap();
    let mut rest = Vec::new();
    let closed = std::io::Read::read_to_end(&mut s, &mut rest);
    assert!(closed.is_ok() && rest.is_empty(), "{closed:?}");
}
