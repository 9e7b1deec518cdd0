//! A client made before `fork()`: every process gets its own replies, and
//! the children leave the parent's channels and sockets alone.
//!
//! The forking happens in the fixture tests/fixtures/fork_client.rs, a
//! single-threaded program (forking this multi-threaded test harness would
//! not be sound): it connects, calls, forks 4 children, and all five
//! processes then call at once, each checking every reply against its own
//! argument.

mod common;

use common::TestEnv;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to its end, killing it if it outlives `within` (a hang
/// bound, not a timing assertion).
fn run_bounded(mut cmd: Command, within: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fork_client (cargo test builds examples)");
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + within;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            kill_tree(pid);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap().unwrap()
}

/// SIGKILLs `pid` and its children (the fixture's forks).
fn kill_tree(pid: u32) {
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    common::sigkill(pid);
    for c in children {
        common::sigkill(c);
    }
}

fn summary(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    format!("exit {:?}\n{stdout}{stderr}", out.status.code())
}

fn parent_and_four_children(transport: &str) {
    let mut env = TestEnv::new(&format!("fork-{transport}"));
    let name = format!("fork-{transport}");
    env.start_service(&name, &[]);
    let mut cmd = env.command(common::FORK_CLIENT);
    cmd.env("METABRIDGE_TRANSPORT", transport)
        .args(["calls", &name, "4", "3000", "60"]);
    let out = run_bounded(cmd, Duration::from_secs(180));
    let text = summary(&out);
    println!("{transport}: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(
        line.contains(
            " wrong=0 errors=0 after_wrong=0 after_errors=0 reports=4/4 short=0 failed_children=0"
        ),
        "{text}"
    );
    assert!(
        !line.contains("channels_before_fork=0 "),
        "the parent held no channel at the fork: {text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    // The service still serves a client of its own.
    let kind = if transport == "tcp" {
        metabridge::TransportKind::Tcp
    } else {
        metabridge::TransportKind::Shm
    };
    let c = env.client(&name, kind, "new:");
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "new:x");
}

#[test]
fn fork_parent_and_four_children_each_get_their_own_replies_over_shm() {
    parent_and_four_children("shm");
}

#[test]
fn fork_parent_and_four_children_each_get_their_own_replies_over_tcp() {
    parent_and_four_children("tcp");
}

/// A forked child dropping its copy of a `DaemonHandle` (and of a client)
/// leaves the parent's daemon running and its client working.
#[test]
fn fork_child_dropping_a_daemon_handle_leaves_the_parents_daemon() {
    let env = TestEnv::new("fork-daemon");
    let mut cmd = env.command(common::FORK_CLIENT);
    cmd.args(["daemon", "fork-own-daemon"]);
    let out = run_bounded(cmd, Duration::from_secs(120));
    let text = summary(&out);
    println!("{text}");
    assert!(
        text.contains("running_after_child=true before_errors=0 after_wrong=0 after_errors=0"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
}
