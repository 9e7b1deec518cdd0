//! A service's shutdown on SIGTERM, with real processes: graceful (it
//! unregisters and removes its segments), and bounded by a deadline even
//! with a call that never returns.
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure.

mod common;

use common::{sigterm, TestEnv};
use metabridge::{Error, TransportKind};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn sigterm_stops_gracefully_unregisters_and_removes_segments() {
    let mut env = TestEnv::new("term");
    let pid = env.start_service("svc", &[]);
    let c = env.connect("svc").arg("n").arg(1).open().unwrap();
    // An in-flight call is drained, not cut.
    let slow = std::thread::spawn(move || c.call::<u64>("sleep_ms", (300,)));
    std::thread::sleep(Duration::from_millis(100));
    sigterm(pid);
    assert_eq!(slow.join().unwrap().unwrap(), 300);
    assert_eq!(env.wait_exit(pid, Duration::from_secs(10)), Some(0));
    assert_eq!(env.leftovers(), Vec::<String>::new());
    assert!(matches!(
        env.connect("svc").open(),
        Err(Error::ServiceNotFound { .. })
    ));
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
