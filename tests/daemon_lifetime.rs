//! How long a daemon started by `metabridge::run` lives: it ends with its
//! parent unless detached, and in a multi-threaded program `run` re-executes
//! the binary rather than forking it. Real processes; deadlines only bound
//! how long a failure takes to show.

mod common;

use common::{sigkill, sigterm, TestEnv};
use metabridge::Error;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    metabridge_shm::ProcessIdentity::of_pid(pid).is_some_and(|p| p.is_alive())
}

#[test]
fn a_daemon_ends_with_its_parent_unless_detached() {
    let env = TestEnv::new("detach");
    // Not detached: the parent exits, the kernel sends the daemon SIGTERM,
    // it stops gracefully and unregisters.
    let orphan = fixture_daemon(&env, "orphan", "orphan");
    assert!(wait_dead(orphan), "the daemon outlived its parent");
    assert!(matches!(
        env.connect("orphan").open(),
        Err(Error::ServiceNotFound { .. })
    ));

    // Detached: it outlives its parent and keeps serving.
    let free = fixture_daemon(&env, "detach", "free");
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            sigkill(self.0);
        }
    }
    let _reap = Reap(free);
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(free));
    let c = env.connect("free").arg("d:").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "d:x");
    assert_eq!(c.call::<u32>("pid", ()).unwrap(), free);
    drop(c);
    sigterm(free);
    assert!(wait_dead(free), "SIGTERM stops a detached daemon");
}

/// Runs `test_service <mode> <name>`, which starts a daemon and exits;
/// returns the daemon's pid, which it printed.
fn fixture_daemon(env: &TestEnv, mode: &str, name: &str) -> u32 {
    let out = env
        .command(common::TEST_SERVICE)
        .args([mode, name])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "test_service {mode} failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Waits up to 10 s for `pid` to end; true if it did.
fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

#[test]
fn run_in_a_multithreaded_program_re_executes_the_binary() {
    let env = TestEnv::new("reexec");
    let out = env
        .command(common::TEST_SERVICE)
        .args(["reexec", "rx"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{text}");
    let (parent, daemon, served_by) = (pids[0], pids[1], pids[2]);
    assert_ne!(parent, daemon);
    assert_eq!(
        daemon, served_by,
        "the call was served by the re-executed daemon"
    );
    assert!(!alive(daemon), "stop() ended it");
    assert_eq!(env.leftovers(), Vec::<String>::new());
}
