//! `metabridge::run` from programs of every shape (tests/fixtures/shapes.rs):
//! a plain `main`, `#[tokio::main]` of both flavours, a thread that exits
//! after starting the daemon, and a library whose host's `main` does not
//! reach `run` again. Real processes; deadlines only bound how long a
//! failure takes to show.

mod common;

use common::{sigterm, TestEnv};
use metabridge::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

/// A running `shapes` fixture: its pid, its input and its output lines.
struct Fixture {
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Fixture {
    fn start(env: &mut TestEnv, mode: &str, name: &str) -> Fixture {
        let mut child = env
            .command(common::SHAPES)
            .args([mode, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shapes (cargo build --examples)");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        env.adopt(child);
        Fixture { pid, stdin, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("the fixture said nothing")
    }

    fn tell(&mut self, what: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{what}").unwrap();
        stdin.flush().unwrap();
    }

    /// Reads `daemon <pid>`; panics with the fixture's error otherwise.
    fn daemon(&self) -> u32 {
        let line = self.line();
        match line.strip_prefix("daemon ") {
            Some(pid) => pid.parse().unwrap(),
            None => panic!("run failed in the fixture: {line}"),
        }
    }
}

/// Kills a daemon that a failed test left behind (it is not a child of
/// the test, so `TestEnv` does not know it); only if it still runs the
/// fixture, so that a reused pid is never hit.
struct Reap(u32);
impl Drop for Reap {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("shapes") {
            common::sigkill(self.0);
        }
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

fn served_by(env: &TestEnv, name: &str) -> u32 {
    let client = env.connect(name).open().unwrap();
    client.call::<u32>("pid", ()).unwrap()
}

/// The whole life of a daemon started by `run` in a fixture of shape
/// `mode`: it serves from a process of its own, `stop` ends it, nothing is
/// left behind.
fn run_stop_cycle(mode: &str) {
    let mut env = TestEnv::new(mode);
    let name = format!("{mode}-svc");
    let mut fixture = Fixture::start(&mut env, mode, &name);
    let daemon = fixture.daemon();
    let _reap = Reap(daemon);
    assert_ne!(daemon, fixture.pid);
    assert_eq!(served_by(&env, &name), daemon);
    fixture.tell("stop");
    assert_eq!(fixture.line(), "stopped");
    assert_eq!(env.wait_exit(fixture.pid, PATIENCE), Some(0));
    assert!(!alive(daemon), "stop() ended the daemon");
    assert!(matches!(
        env.connect(&name).open(),
        Err(Error::ServiceNotFound { .. })
    ));
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

#[test]
fn run_from_a_plain_main() {
    run_stop_cycle("plain");
}

#[test]
fn run_from_tokio_main_multi_thread() {
    run_stop_cycle("tokio-multi");
}

#[test]
fn run_from_tokio_main_current_thread() {
    run_stop_cycle("tokio-current");
}

#[test]
fn serve_from_tokio_main() {
    let mut env = TestEnv::new("serve-tokio");
    let mut cmd = env.command(common::SHAPES);
    cmd.args(["serve-tokio", "st-svc"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let pid = env.spawn(&mut cmd);
    env.wait_registered("st-svc", pid);
    assert_eq!(served_by(&env, "st-svc"), pid);
    sigterm(pid);
    assert_eq!(env.wait_exit(pid, PATIENCE), Some(0));
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// The daemon follows the process that started it, not the thread: it
/// outlives the thread that called `run`, and ends (gracefully: it
/// unregisters and removes its socket) when the process exits.
#[test]
fn a_daemon_outlives_the_thread_that_started_it_and_ends_with_the_process() {
    let mut env = TestEnv::new("thread");
    let mut fixture = Fixture::start(&mut env, "thread", "th-svc");
    let daemon = fixture.daemon();
    let _reap = Reap(daemon);
    assert_eq!(fixture.line(), "thread-exited");
    // A daemon tied to the thread would be stopping now (within its
    // 100 ms orphan grace): leave it ample time to, then check it did not.
    // (On correct code this passes however long the pause.)
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(daemon), "the daemon died with the thread");
    assert_eq!(served_by(&env, "th-svc"), daemon);
    assert!(alive(daemon));

    fixture.tell("exit");
    assert_eq!(env.wait_exit(fixture.pid, PATIENCE), Some(0));
    assert!(wait_dead(daemon), "the daemon outlived its parent process");
    assert!(matches!(
        env.connect("th-svc").open(),
        Err(Error::ServiceNotFound { .. })
    ));
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// Detached from a thread (the daemon was re-executed), the daemon
/// outlives the thread and the process, and serves until SIGTERM.
#[test]
fn a_daemon_detached_from_a_thread_outlives_the_process() {
    let mut env = TestEnv::new("thread-detach");
    let mut fixture = Fixture::start(&mut env, "thread", "thd-svc");
    let daemon = fixture.daemon();
    let _reap = Reap(daemon);
    assert_eq!(fixture.line(), "thread-exited");
    fixture.tell("detach");
    assert_eq!(fixture.line(), "detached");
    assert_eq!(env.wait_exit(fixture.pid, PATIENCE), Some(0));
    // A daemon that took the parent's exit for a stop would be stopping
    // now (within its 100 ms orphan grace): leave it ample time to.
    std::thread::sleep(Duration::from_secs(1));
    assert!(alive(daemon), "the detached daemon ended with its parent");
    assert_eq!(served_by(&env, "thd-svc"), daemon);
    sigterm(daemon);
    assert!(wait_dead(daemon), "SIGTERM stops a detached daemon");
    assert_eq!(env.leftovers(), Vec::<String>::new());
}

/// A multi-threaded library host whose `main` does not reach `run` again
/// in the re-executed copy: `run` returns a clear error naming the
/// alternative, and no process is left.
fn library_is_refused_clearly(mode: &str) -> String {
    let mut env = TestEnv::new(mode);
    let name = format!("{mode}-svc");
    let mut fixture = Fixture::start(&mut env, mode, &name);
    fixture.tell("start");
    let line = fixture.line();
    let message = line
        .strip_prefix("error ")
        .unwrap_or_else(|| panic!("run should have failed: {line}"))
        .to_string();
    assert!(
        message.contains("did not reach") && message.contains("metabridge::serve"),
        "{message}"
    );
    // The re-executed copy was killed (if needed) and reaped by `run`.
    let copy: u32 = message
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {message}"));
    assert!(!alive(copy), "the re-executed copy {copy} still runs");
    assert!(
        std::fs::metadata(format!("/proc/{copy}")).is_err(),
        "the re-executed copy {copy} was not reaped"
    );
    assert!(matches!(
        env.connect(&name).open(),
        Err(Error::ServiceNotFound { .. })
    ));
    fixture.tell("exit");
    assert_eq!(env.wait_exit(fixture.pid, PATIENCE), Some(0));
    message
}

#[test]
fn run_from_a_library_whose_host_main_exits_is_a_clear_error() {
    let message = library_is_refused_clearly("library");
    assert!(message.contains("exited"), "{message}");
}

#[test]
fn run_from_a_library_whose_host_main_never_reaches_run_is_a_clear_error() {
    let message = library_is_refused_clearly("library-hang");
    assert!(message.contains("within"), "{message}");
}
