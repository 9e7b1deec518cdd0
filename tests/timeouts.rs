//! A call's timeout, step by step (lookup, channel set-up, the call
//! itself), against real services that stall at each step.
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure.

mod common;

use common::TestEnv;
use metabridge::{Error, TransportKind};
use std::time::Duration;

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

/// A call with no reply in time says which endpoint, of which service,
/// over which transport, after how long: on both transports.
#[test]
fn a_call_timeout_names_the_endpoint_the_service_and_the_limit() {
    let mut env = TestEnv::new("timeout-text");
    env.start_service("svc", &[]);
    for (kind, transport) in [(TransportKind::Shm, "shm"), (TransportKind::Tcp, "tcp")] {
        let client = metabridge::connect("svc")
            .home(&env.home)
            .timeout(Duration::from_millis(300))
            .transport(kind)
            .arg("a")
            .arg(1)
            .open()
            .unwrap();
        match client.call::<u64>("sleep_ms", (5_000,)) {
            Err(Error::Timeout(metabridge::TimedOut::Call {
                service,
                endpoint,
                transport: t,
                after,
            })) => {
                assert_eq!(
                    (service.as_str(), endpoint.as_str(), t),
                    ("svc", "sleep_ms", transport)
                );
                assert_eq!(after, Duration::from_millis(300));
            }
            other => panic!("expected a call timeout over {transport}, got {other:?}"),
        }
        let text = client
            .call::<u64>("sleep_ms", (5_000,))
            .unwrap_err()
            .to_string();
        assert_eq!(
            text,
            format!("timed out: sleep_ms() of service \"svc\" had no reply within 300ms over {transport} (raise it with Connect::timeout)")
        );
    }
}
