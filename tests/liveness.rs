//! How a client tells a dead service from a live one, with real processes:
//! a service killed during a call (peer gone, never a hang), a caller
//! waiting in interruptible slices, and a client out of file descriptors
//! that must not call a live service dead.
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure.
//! Deadlines here only bound how long a failure takes to show.

mod common;

use common::{entry, sigkill, TestEnv};
use metabridge::{Error, TransportKind};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_service_killed_mid_call_gives_peer_gone_not_a_hang() {
    let mut env = TestEnv::new("midcall");
    let pid = env.start_service("svc", &[]);
    let c = env.connect("svc").arg("n").arg(1).open().unwrap();
    assert_eq!(c.call::<u64>("sleep_ms", (1,)).unwrap(), 1);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        sigkill(pid);
    });
    let r = c.call::<u64>("sleep_ms", (10_000,));
    killer.join().unwrap();
    // PeerGone (not the 20 s call timeout, nor the 10 s reply that never
    // comes) shows the death was noticed; how fast is measured elsewhere.
    assert!(matches!(r, Err(Error::PeerGone(_))), "{r:?}");
}

/// Starts the fixture service `name` announcing each `sleep_ms` on its
/// standard error; returns its pid and a reader of that stream.
fn start_announcing(env: &mut TestEnv, name: &str) -> (u32, BufReader<std::process::ChildStderr>) {
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", name])
        .env("FIXTURE_ANNOUNCE", "1")
        .env("FIXTURE_EXPOSE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    env.adopt(child);
    env.wait_registered(name, pid);
    (pid, stderr)
}

/// Kills `pid` once its stderr says a `sleep_ms` call started.
fn kill_when_called(
    pid: u32,
    mut stderr: BufReader<std::process::ChildStderr>,
) -> std::thread::JoinHandle<Instant> {
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("sleep_ms started") {
                break;
            }
            line.clear();
        }
        sigkill(pid);
        Instant::now()
    })
}

/// The interruptible wait (what the Python package uses on its main
/// thread) waits in slices as short as the liveness interval, and each
/// slice's own deadline came before its liveness check: a service killed
/// mid-call was noticed only at the call's timeout. Every wait now checks
/// the peer once the liveness interval has passed since the last check,
/// whatever its slice: the call fails with `PeerGone`, not `Timeout`.
#[test]
fn an_interruptible_call_notices_a_killed_service() {
    let mut outcomes = Vec::new();
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        let mut env = TestEnv::new("interruptible");
        let (pid, stderr) = start_announcing(&mut env, "svc");
        let c = env
            .connect("svc")
            .timeout(Duration::from_secs(60))
            .transport(kind)
            .arg("a")
            .arg(1)
            .open()
            .unwrap();
        let killer = kill_when_called(pid, stderr);
        let args = metabridge::to_msgpack(&(30_000u64,)).unwrap();
        let never = || false;
        let r = c.call_encoded("sleep_ms", &args, &[0x80], Some(&never));
        let returned = Instant::now();
        let killed = killer.join().unwrap();
        println!(
            "{}: {:?} {:?} after SIGKILL",
            c.transport_name(),
            r.as_ref().map(|_| ()),
            returned.saturating_duration_since(killed)
        );
        outcomes.push((kind, r));
    }
    for (kind, r) in outcomes {
        match kind {
            TransportKind::Shm => assert!(matches!(r, Err(Error::PeerGone(_))), "{r:?}"),
            _ => assert!(r.is_err() && !matches!(r, Err(Error::Timeout(_))), "{r:?}"),
        }
    }
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
