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
    let mut cmd = env.command("test_service");
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
