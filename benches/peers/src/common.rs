//! What every comparison shares: the request and its reply, settings,
//! the measuring loop, CPU placement, and the peer process and its guard.

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The argument of every call.
pub const REQUEST: &str = "mundo!";
/// What every server holds, as the demo service's constructor argument.
pub const GREETING: &str = "Olá,";
/// The reply every call must return.
pub const EXPECTED: &str = "Olá, mundo!";

/// The work every server does for one call: the demo service's `get`.
pub fn answer(outro_argumento: &str) -> String {
    format!("{GREETING} {outro_argumento}")
}

/// Environment variable naming the role of a re-executed peer process.
pub const ROLE_ENV: &str = "METABRIDGE_PEERS_ROLE";
/// Environment variable carrying the peer's argument (a path, a name).
pub const ARG_ENV: &str = "METABRIDGE_PEERS_ARG";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The kernel chooses.
    Unpinned,
    /// This process on vCPU 0, the peer on vCPU 1.
    Split,
    /// Both on vCPU 0.
    Same,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Unpinned => "unpinned",
            Placement::Split => "split",
            Placement::Same => "same",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Placement::Unpinned => "unpinned (the kernel chooses)",
            Placement::Split => "split (this process on vCPU 0, the peer on vCPU 1)",
            Placement::Same => "same (both processes on vCPU 0)",
        }
    }

    /// (this process, the peer) CPUs.
    pub fn cpus(self) -> Option<(usize, usize)> {
        match self {
            Placement::Unpinned => None,
            Placement::Split => Some((0, 1)),
            Placement::Same => Some((0, 0)),
        }
    }

    /// Pins this process and the peer `pid`, all their threads.
    pub fn apply(self, peer_pid: u32) {
        if let Some((mine, theirs)) = self.cpus() {
            pin_process(std::process::id(), mine);
            pin_process(peer_pid, theirs);
        }
    }
}

/// Pins every thread of `pid` to `cpu` (each tid in /proc/<pid>/task).
pub fn pin_process(pid: u32, cpu: usize) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set) {
                eprintln!("warning: cannot pin tid {tid} of pid {pid} to cpu {cpu}: {e}");
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub warmup: usize,
    pub iterations: usize,
    /// No system measures for longer than this (a busy-polling pair that
    /// shares one vCPU makes one round trip per scheduler slice).
    pub cap: Duration,
    pub placement: Placement,
    pub json: bool,
}

/// The result of one system.
pub struct Measurement {
    pub system: &'static str,
    /// Per-call round-trip times, sorted.
    pub samples: Vec<u64>,
    pub total: Duration,
    /// The time cap stopped the run before `iterations` calls.
    pub capped: bool,
}

impl Measurement {
    pub fn percentile(&self, p: f64) -> u64 {
        if self.samples.is_empty() {
            return 0;
        }
        self.samples[((self.samples.len() - 1) as f64 * p).round() as usize]
    }

    pub fn calls_per_s(&self) -> f64 {
        self.samples.len() as f64 / self.total.as_secs_f64()
    }
}

/// Keeps the loops identical for every system: one checked call, warm-up,
/// then `iterations` timed calls. Used by [`measure`] and, for async
/// clients, step by step.
pub struct Sampler {
    system: &'static str,
    s: Settings,
    phase_end: Instant,
    warm_left: usize,
    samples: Vec<u64>,
    start: Option<Instant>,
    capped: bool,
}

impl Sampler {
    pub fn new(system: &'static str, s: &Settings) -> Sampler {
        Sampler {
            system,
            s: *s,
            phase_end: Instant::now() + s.cap / 3,
            warm_left: s.warmup,
            samples: Vec::with_capacity(s.iterations),
            start: None,
            capped: false,
        }
    }

    /// Checks the first reply.
    pub fn check(&self, reply: &str) {
        assert_eq!(reply, EXPECTED, "{}: wrong reply", self.system);
    }

    /// True while warm-up calls remain (bounded by a third of the cap).
    pub fn warming(&mut self) -> bool {
        if self.warm_left == 0 || Instant::now() > self.phase_end {
            return false;
        }
        self.warm_left -= 1;
        true
    }

    /// Starts a timed call, or None when the run is complete.
    pub fn next(&mut self) -> Option<Instant> {
        let now = Instant::now();
        match self.start {
            None => {
                self.start = Some(now);
                self.phase_end = now + self.s.cap;
            }
            Some(_) if self.samples.len() >= self.s.iterations => return None,
            Some(_) if now > self.phase_end => {
                self.capped = true;
                return None;
            }
            Some(_) => {}
        }
        Some(now)
    }

    pub fn record(&mut self, started: Instant) {
        self.samples.push(started.elapsed().as_nanos() as u64);
    }

    pub fn finish(mut self) -> Measurement {
        let total = self.start.map(|s| s.elapsed()).unwrap_or_default();
        self.samples.sort_unstable();
        Measurement {
            system: self.system,
            samples: self.samples,
            total,
            capped: self.capped,
        }
    }
}

/// Measures a blocking call that returns the reply.
pub fn measure(
    system: &'static str,
    s: &Settings,
    mut call: impl FnMut() -> String,
) -> Measurement {
    let mut sampler = Sampler::new(system, s);
    sampler.check(&call());
    while sampler.warming() {
        black_box(call());
    }
    while let Some(t) = sampler.next() {
        let reply = call();
        sampler.record(t);
        black_box(reply);
    }
    sampler.finish()
}

pub fn progress(s: &Settings, msg: &str) {
    if !s.json {
        eprintln!("  .. {msg}");
    }
}

/// A peer process: this binary executed again in a role. Dropping it
/// reaps it: after a grace period for a clean exit (the client closed its
/// end, or sent a stop), SIGKILL; at once while panicking.
pub struct Peer {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
    role: &'static str,
}

impl Peer {
    pub fn spawn(role: &'static str, arg: &str) -> Result<Peer, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, role)
            .env(ARG_ENV, arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the {role} peer: {e}"))?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Peer {
            child: Some(child),
            stdout,
            role,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the peer's `READY <detail>` line; returns the detail.
    pub fn ready(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(format!("the {} peer exited before it was ready", self.role)),
            Ok(_) => match line.trim_end().strip_prefix("READY") {
                Some(rest) => Ok(rest.trim().to_string()),
                None => Err(format!("the {} peer said {line:?}", self.role)),
            },
            Err(e) => Err(format!("reading the {} peer: {e}", self.role)),
        }
    }

    /// Reaps the peer after the client closed its side.
    pub fn finish(mut self) {
        self.reap(Duration::from_secs(2));
    }

    fn reap(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let grace = if std::thread::panicking() {
            Duration::ZERO
        } else {
            Duration::from_secs(2)
        };
        self.reap(grace);
    }
}

/// In a peer: announces readiness to the benchmark process.
pub fn announce_ready(detail: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY {detail}");
    let _ = out.flush();
}
