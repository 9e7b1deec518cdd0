//! Shared helpers of the integration tests: a private registry directory
//! per test, real service processes, and cleanup that runs even when a
//! test fails (every process killed and reaped, the directory removed).
#![allow(dead_code)]

use metabridge::registry::Registry;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The fixture service (tests/fixtures/test_service.rs): endpoints for
/// every behaviour the tests need, `FIXTURE_*` variables to configure it.
pub const TEST_SERVICE: &str = env!("CARGO_BIN_EXE_mb-fixture-test-service");
/// The service of the values and errors tests (tests/fixtures/values_service.rs).
pub const VALUES_SERVICE: &str = env!("CARGO_BIN_EXE_mb-fixture-values-service");
/// A client used across `fork()` (tests/fixtures/fork_client.rs).
pub const FORK_CLIENT: &str = env!("CARGO_BIN_EXE_mb-fixture-fork-client");
/// `metabridge::run` from programs of every shape (tests/fixtures/shapes.rs).
pub const SHAPES: &str = env!("CARGO_BIN_EXE_mb-fixture-shapes");

/// A user-facing example that a test runs as a user would
/// (`cargo run --example <name>`). Cargo names no example's path in the
/// environment, so it is found beside the test binary, where `cargo test`
/// builds the examples; fixtures are `mb-fixture-*` binaries instead.
pub fn demo_example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// One test's world: its own `METABRIDGE_HOME` and its processes.
pub struct TestEnv {
    pub home: PathBuf,
    children: Vec<Child>,
}

impl TestEnv {
    pub fn new(tag: &str) -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let home = PathBuf::from(format!("/dev/shm/mbt-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&home)
            .unwrap();
        TestEnv {
            home,
            children: Vec::new(),
        }
    }

    /// A command running `program` (one of the fixture paths above, or a
    /// [`demo_example`]) in this test's home, with no transport or token
    /// inherited from the environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("METABRIDGE_HOME", &self.home)
            .env_remove("METABRIDGE_TRANSPORT")
            .env_remove("METABRIDGE_TOKEN");
        cmd
    }

    /// Starts the fixture service `name` and waits until it is registered.
    pub fn start_service(&mut self, name: &str, envs: &[(&str, &str)]) -> u32 {
        let mut cmd = self.command(TEST_SERVICE);
        cmd.args(["serve", name]).stdout(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn the test_service fixture");
        let pid = child.id();
        self.children.push(child);
        self.wait_registered(name, pid);
        pid
    }

    /// Takes charge of a child started elsewhere (killed and reaped on drop).
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    pub fn spawn(&mut self, cmd: &mut Command) -> u32 {
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    pub fn wait_registered(&mut self, name: &str, pid: u32) {
        let reg = Registry::open(&self.home).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(e) = reg.lookup(name) {
                if e.pid == pid {
                    return;
                }
            }
            if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("service {name} exited during startup: {status}");
                }
            }
            assert!(Instant::now() < deadline, "service {name} did not register");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A client of the fixture service `name` over `kind`, with the
    /// fixture's constructor arguments `(prefix, 1)`.
    pub fn client(
        &self,
        name: &str,
        kind: metabridge::TransportKind,
        prefix: &str,
    ) -> metabridge::Client {
        self.connect(name)
            .transport(kind)
            .arg(prefix)
            .arg(1)
            .open()
            .unwrap()
    }

    pub fn connect(&self, name: &str) -> metabridge::Connect {
        metabridge::connect(name)
            .home(&self.home)
            .timeout(Duration::from_secs(20))
    }

    /// Waits for child `pid` to exit; its exit code.
    pub fn wait_exit(&mut self, pid: u32, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Files in the home directory other than the registry.
    pub fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.home)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "registry")
            .collect();
        names.sort();
        names
    }
}

/// A process's resident set size, in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The TCP address service `name` registered in `env`'s home.
pub fn tcp_addr(env: &TestEnv, name: &str) -> String {
    Registry::open(&env.home).unwrap().lookup(name).unwrap().tcp
}

pub fn sigterm(pid: u32) {
    unsafe_kill(pid, libc_sig::TERM);
}

pub fn sigkill(pid: u32) {
    unsafe_kill(pid, libc_sig::KILL);
}

mod libc_sig {
    pub const TERM: i32 = 15;
    pub const KILL: i32 = 9;
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove(&self.home);
    }
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

/// The control handshake written by hand (see ARCHITECTURE.md, "Services
/// at run time", and src/control.rs), so a test
/// can send what a hostile or buggy client would.
pub fn handshake(
    socket: &str,
    version: u8,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> (u8, String) {
    // The socket file exists from bind(), a moment before listen().
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("cannot connect to {socket}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let bytes = [version, 1];
    let iov = [std::io::IoSlice::new(&bytes)];
    let raw;
    let cmsg: Vec<nix::sys::socket::ControlMessage<'_>> = match fd {
        Some(fd) => {
            raw = [std::os::fd::AsRawFd::as_raw_fd(&fd)];
            vec![nix::sys::socket::ControlMessage::ScmRights(&raw)]
        }
        None => Vec::new(),
    };
    // A service that refuses before reading may have closed already
    // (EPIPE here); its answer is still there to read.
    let _ = nix::sys::socket::sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&stream),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    );
    let mut head = [0u8; 3];
    std::io::Read::read_exact(&mut &stream, &mut head).unwrap();
    let mut why = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
    if head[0] != 0 {
        std::io::Read::read_exact(&mut &stream, &mut why).unwrap();
    }
    (head[0], String::from_utf8_lossy(&why).into_owned())
}

/// The registry entry of the live service `name` in `env`.
pub fn entry(env: &TestEnv, name: &str) -> metabridge::registry::Entry {
    metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup(name)
        .unwrap()
}
