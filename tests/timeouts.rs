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
            format!("timed out: sleep_ms() of service \"svc\" had no reply within 300ms over {transport} (raise it with Connect::timeout, or for one call Client::with_timeout)")
        );
    }
}

/// A handle from `with_timeout` gives each of its calls its own limit, on
/// both transports, shorter or longer than the client's, and leaves the
/// client's own calls at the client's limit.
#[test]
fn a_call_can_have_its_own_timeout() {
    let mut env = TestEnv::new("per-call-timeout");
    env.start_service("svc", &[]);
    for (kind, transport) in [(TransportKind::Shm, "shm"), (TransportKind::Tcp, "tcp")] {
        let client = metabridge::connect("svc")
            .home(&env.home)
            .timeout(Duration::from_millis(400))
            .transport(kind)
            .arg("a")
            .arg(1)
            .open()
            .unwrap();
        // Shorter than the client's: this call ends at its own limit.
        let hasty = client.with_timeout(Duration::from_millis(100));
        assert_eq!(hasty.timeout(), Duration::from_millis(100));
        match hasty.call::<u64>("sleep_ms", (5_000,)) {
            Err(Error::Timeout(metabridge::TimedOut::Call { after, .. })) => {
                assert_eq!(after, Duration::from_millis(100), "over {transport}")
            }
            other => panic!("expected the call's own timeout over {transport}, got {other:?}"),
        }
        // Longer than the client's: a call the client's 400 ms would cut
        // off completes.
        let patient = client.with_timeout(Duration::from_secs(30));
        assert_eq!(
            patient.call::<u64>("sleep_ms", (900,)).unwrap(),
            900,
            "over {transport}"
        );
        // The client itself keeps its own limit.
        assert_eq!(client.timeout(), Duration::from_millis(400));
        match client.call::<u64>("sleep_ms", (5_000,)) {
            Err(Error::Timeout(metabridge::TimedOut::Call { after, .. })) => {
                assert_eq!(after, Duration::from_millis(400), "over {transport}")
            }
            other => panic!("expected the client's timeout over {transport}, got {other:?}"),
        }
        client.close();
    }
}

/// The async calls of a `with_timeout` handle obey its limit too.
#[test]
fn an_async_call_can_have_its_own_timeout() {
    let mut env = TestEnv::new("per-call-timeout-async");
    env.start_service("svc", &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        let client = metabridge::connect("svc")
            .home(&env.home)
            .timeout(Duration::from_secs(30))
            .transport(kind)
            .arg("a")
            .arg(1)
            .open()
            .unwrap();
        let hasty = client.with_timeout(Duration::from_millis(100));
        let r = rt.block_on(hasty.call_async::<u64, _>("sleep_ms", (5_000u64,)));
        match r {
            Err(Error::Timeout(metabridge::TimedOut::Call { after, .. })) => {
                assert_eq!(after, Duration::from_millis(100), "over {kind:?}")
            }
            other => panic!("expected the call's own timeout over {kind:?}, got {other:?}"),
        }
        client.close();
    }
}
