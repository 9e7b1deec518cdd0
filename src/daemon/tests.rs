//! The daemon's startup report, end to end over a real pipe, with a real
//! child process standing in for the daemon (it is reaped, or stopped,
//! as a daemon would be): a ready report gives a handle with the entry, a
//! failure report gives the typed error back, and silence past the
//! startup timeout kills the child.

use super::*;
use std::process::{Child, Command};

fn entry(pid: u32) -> Entry {
    Entry {
        name: "svc".into(),
        pid,
        start_time: 1,
        registered_at: 2,
        control_socket: "/dev/shm/mbu-daemon/svc.sock".into(),
        tcp: "127.0.0.1:4000".into(),
        endpoints: vec!["echo".into()],
        token_required: true,
        token: Some("abc".into()),
        tls_fingerprint: None,
    }
}

/// A child that stays until it is signalled (the stand-in daemon).
fn stand_in() -> (Child, Pid) {
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    (child, pid)
}

/// `report` written into a pipe and read back by `wait_ready`.
fn reported(result: &Result<()>, entry: Option<&Entry>, pid: Pid) -> Result<DaemonHandle> {
    let (read_end, write_end) = platform::pipe_cloexec().unwrap();
    let mut writer = std::fs::File::from(write_end);
    report(&mut writer, result, entry);
    drop(writer);
    wait_ready(pid, read_end, None, Duration::from_secs(10))
}

fn gone(pid: Pid) -> bool {
    platform::no_such_process(pid.as_raw())
}

#[test]
fn a_ready_report_gives_a_handle_with_the_entry_and_stop_ends_the_daemon() {
    let (_child, pid) = stand_in();
    let handle = reported(&Ok(()), Some(&entry(pid.as_raw() as u32)), pid).unwrap();
    assert_eq!(handle.pid(), pid.as_raw() as u32);
    assert_eq!(handle.entry().name, "svc");
    assert_eq!(handle.entry().endpoints, vec!["echo".to_string()]);
    assert_eq!(handle.tcp_addr(), "127.0.0.1:4000");
    assert!(handle.is_running());
    handle.stop().unwrap();
    assert!(!handle.is_running());
    assert!(gone(pid), "stopped and reaped");
}

#[test]
fn a_service_already_exists_failure_comes_back_typed() {
    let (_child, pid) = stand_in();
    let failed = Err(Error::ServiceAlreadyExists {
        name: "svc".into(),
        pid: 4242,
    });
    let (read_end, write_end) = platform::pipe_cloexec().unwrap();
    let mut writer = std::fs::File::from(write_end);
    report(&mut writer, &failed, None);
    drop(writer);
    // The stand-in ends, as a daemon that failed does, so it is reaped.
    platform::send_signal(pid, Signal::SIGTERM).unwrap();
    match wait_ready(pid, read_end, None, Duration::from_secs(10)) {
        Err(Error::ServiceAlreadyExists { name, pid: who }) => {
            assert_eq!((name.as_str(), who), ("svc", 4242))
        }
        other => panic!("expected service already exists, got {other:?}"),
    }
    assert!(gone(pid));
}

#[test]
fn an_insecure_path_failure_comes_back_with_its_path_and_problem() {
    let (_child, pid) = stand_in();
    platform::send_signal(pid, Signal::SIGTERM).unwrap();
    let failed = Err(Error::InsecurePath {
        path: "/dev/shm/x.log".into(),
        problem: "is a symbolic link".into(),
    });
    match reported(&failed, None, pid) {
        Err(Error::InsecurePath { path, problem }) => {
            assert_eq!(path, std::path::Path::new("/dev/shm/x.log"));
            assert_eq!(problem, "is a symbolic link");
        }
        other => panic!("expected an insecure path, got {other:?}"),
    }
}

#[test]
fn other_failures_come_back_as_their_text() {
    let (_child, pid) = stand_in();
    platform::send_signal(pid, Signal::SIGTERM).unwrap();
    let failed = Err(Error::Protocol(crate::error::ProtocolError::Counters(
        "the constructor panicked".into(),
    )));
    match reported(&failed, None, pid) {
        Err(Error::Io(e)) => {
            let text = e.to_string();
            assert!(text.contains("failed to start"), "{text}");
            assert!(text.contains("the constructor panicked"), "{text}");
        }
        other => panic!("expected an i/o error with the text, got {other:?}"),
    }
}

#[test]
fn a_daemon_that_exits_without_a_report_is_an_error_naming_how() {
    // Reaped by `wait_ready` (waitpid on its pid), not through `Child`.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("true").spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let (read_end, write_end) = platform::pipe_cloexec().unwrap();
    drop(write_end);
    match wait_ready(pid, read_end, None, Duration::from_secs(10)) {
        Err(Error::Io(e)) => assert!(e.to_string().contains("exited during startup"), "{e}"),
        other => panic!("expected an exit during startup, got {other:?}"),
    }
}

#[test]
fn a_silent_daemon_is_killed_at_the_startup_timeout() {
    let (_child, pid) = stand_in();
    let (read_end, write_end) = platform::pipe_cloexec().unwrap();
    let start = Instant::now();
    let result = wait_ready(pid, read_end, None, Duration::from_millis(300));
    drop(write_end);
    match result {
        Err(Error::Timeout(what)) => {
            assert!(what.to_string().contains("did not start"), "{what}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Not before the timeout (give or take the poll's millisecond steps).
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );
    assert!(gone(pid), "killed and reaped");
}

#[test]
fn a_reexecuted_copy_that_never_reaches_run_is_explained() {
    // Reaped by `wait_ready` (waitpid on its pid), not through `Child`.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("true").spawn().unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let (read_end, write_end) = platform::pipe_cloexec().unwrap();
    drop(write_end);
    match wait_ready(pid, read_end, Some("svc"), Duration::from_secs(10)) {
        Err(Error::Io(e)) => {
            let text = e.to_string();
            assert!(text.contains("did not reach run()"), "{text}");
            assert!(text.contains("\"svc\""), "{text}");
        }
        other => panic!("expected the re-exec explanation, got {other:?}"),
    }
}

#[test]
fn error_wire_keeps_the_typed_fields() {
    assert_eq!(
        error_wire(&Error::ServiceAlreadyExists {
            name: "a".into(),
            pid: 7
        }),
        (1, "a".to_string(), 7, String::new())
    );
    assert_eq!(
        error_wire(&Error::InsecurePath {
            path: "/p".into(),
            problem: "open to all".into()
        }),
        (2, "/p".to_string(), 0, "open to all".to_string())
    );
    let (kind, text, _, _) = error_wire(&Error::Timeout(crate::error::TimedOut::DaemonStart {
        timeout: Duration::from_secs(5),
    }));
    assert_eq!(kind, 0);
    assert!(text.contains("did not start"), "{text}");
}
