//! Helpers shared by the integration tests: per-test directories, unique
//! segment names, child processes that re-execute the test binary, and
//! deterministic payloads.
//!
//! Every resource here cleans up in `Drop`, so a failing (panicking) test
//! still kills and reaps its children and removes its segment files.
#![allow(dead_code)]

use metabridge_shm::{segment_path, ChannelConfig, WaitPolicy};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call: `<tag>-<pid>-<counter>`.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory of its own for one test, removed (with whatever segment files
/// are left in it) when dropped. On tmpfs (`/dev/shm`) when there is one.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!("mb-test-{}", unique(tag)));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A channel configuration in this directory with rings of `capacity`.
    pub fn config(&self, capacity: usize) -> ChannelConfig {
        ChannelConfig {
            capacity,
            dir: self.path.clone(),
            ..Default::default()
        }
    }

    /// Path of the segment file `name` in this directory.
    pub fn segment(&self, name: &str) -> PathBuf {
        segment_path(&self.path, name)
    }

    /// Names of the files in the directory.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process running one role of this test binary. Dropping it kills
/// (SIGKILL) and reaps the child.
pub struct ChildProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Lines the child printed that were not asked for (for diagnostics).
    pub log: Vec<String>,
    pub pid: u32,
}

impl ChildProc {
    /// Spawns `current_exe --exact child_entry` with `MB_CHILD_ROLE=role`.
    pub fn spawn(role: &str, envs: &[(&str, String)]) -> ChildProc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env("MB_CHILD_ROLE", role)
            .env("MB_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child process");
        let pid = child.id();
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, lines) = mpsc::channel();
        // Ends when the child's stdout closes, i.e. when the child is gone.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProc {
            child,
            lines,
            log: Vec::new(),
            pid,
        }
    }

    /// Waits for a line starting with `prefix` and returns the rest of it.
    /// Panics if the child exits or stays silent past `timeout`.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // libtest may have printed "test child_entry ... " on
                    // the same line before the child's own output.
                    if let Some(at) = line.find(prefix) {
                        return line[at + prefix.len()..].trim().to_owned();
                    }
                    self.log.push(line);
                }
                Err(e) => {
                    let status = self.child.try_wait();
                    panic!(
                        "child {} never printed {prefix:?} ({e:?}); status {status:?}; output so far: {:?}",
                        self.pid, self.log
                    );
                }
            }
        }
    }

    /// Sends SIGKILL without reaping: the child stays a zombie until drop
    /// (or `wait_timeout`).
    pub fn kill_no_reap(&self) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet, so
        // it cannot name another process.
        let r = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(
            r,
            0,
            "kill({}): {}",
            self.pid,
            std::io::Error::last_os_error()
        );
    }

    /// SIGKILL and reap.
    pub fn kill_and_reap(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait for killed child")
    }

    /// The child's exit status, if it exits within `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a child process does: Ok to exit 0, Err (printed) to exit 1.
pub type Role = fn() -> Result<(), String>;

/// The body of each test binary's `child_entry` test: returns at once
/// unless `MB_CHILD_ROLE` is set; otherwise runs that role and exits the
/// process with 0 (role returned Ok) or 1.
pub fn child_main(roles: &[(&str, Role)]) {
    let Ok(role) = std::env::var("MB_CHILD_ROLE") else {
        return;
    };
    // Die with the parent (even one killed by SIGKILL): no orphans.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if let Some(parent) = std::env::var("MB_PARENT_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            std::process::exit(3); // the parent died before prctl took effect
        }
    }
    println!(); // end libtest's "test child_entry ... " line
    let Some((_, run)) = roles.iter().find(|(r, _)| *r == role) else {
        eprintln!("child: unknown role {role:?}");
        std::process::exit(2);
    };
    let code = match std::panic::catch_unwind(run) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("child role {role} failed: {e}");
            1
        }
        Err(_) => 1,
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// An environment variable a child role needs.
pub fn env(key: &str) -> Result<String, String> {
    std::env::var(key).map_err(|_| format!("{key} not set"))
}

/// The wait policy named by `MB_WAIT` (busy, sleep, default).
pub fn wait_policy_from_env() -> WaitPolicy {
    match std::env::var("MB_WAIT").as_deref() {
        Ok("busy") => WaitPolicy::BusyPoll,
        Ok("sleep") => WaitPolicy::Sleep,
        _ => WaitPolicy::default(),
    }
}

/// Runs `f` on a thread and returns its result, or panics if it does not
/// finish within `timeout` (a hang becomes a test failure; the stuck thread
/// is left behind and dies with the test process).
pub fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: did not finish within {timeout:?} (hang)")
        }
    }
}

/// splitmix64: a good 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xorshift64* generator.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(mix(seed) | 1)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Writes the payload of message `seq` of stream `seed` into `out` (cleared
/// first): the sequence number (little-endian, truncated to the length)
/// followed by pseudo-random bytes derived from (seed, seq).
pub fn fill_payload(seed: u64, seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(len, 0);
    let mut rng = XorShift::new(seed ^ seq.wrapping_mul(0xd6e8_feb8_6659_fd93));
    for chunk in out.chunks_mut(8) {
        let w = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    let n = len.min(8);
    out[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// The payload of message `seq` of stream `seed`, freshly allocated.
pub fn payload(seed: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    fill_payload(seed, seq, len, &mut v);
    v
}

/// The sequence number a payload carries (its first 8 bytes), if it has them.
pub fn seq_of(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// A cheap 64-bit checksum of a byte slice (FNV-style over 8-byte words).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
