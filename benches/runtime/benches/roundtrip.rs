//! Round trips and streaming between two real processes: a MetaBridge
//! channel (busy-poll and default wait policy) against a Unix domain socket,
//! with both processes on different vCPUs, on the same vCPU, and unpinned;
//! and the floor of any shared-memory round trip on this machine: two
//! processes busy-polling a one-slot mailbox (one word each way), across
//! vCPUs, with the ratio of the busy-poll ring's p50 to it.
//!
//! The bench process re-executes itself as the echo peer (`MB_BENCH_ROLE`
//! set in the environment, checked before criterion sees the arguments).
//! Besides criterion's report it prints a table of p50/p99 round-trip times
//! from individually timed samples, the 1 MiB streaming rate, and the ratio
//! UDS p50 / MetaBridge p50 per placement.
//!
//! `MB_BENCH_QUICK=1` shrinks sample counts and criterion's times.

use criterion::{Criterion, SamplingMode, Throughput};
use metabridge_shm::{Channel, ChannelConfig, Error, WaitPolicy};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ROLE_VAR: &str = "MB_BENCH_ROLE";
const SMALL: usize = 64;
const BIG: usize = 1 << 20;
/// The streaming sender waits for an acknowledgement every this many
/// messages (and at the end of a batch).
const ACK_EVERY: u64 = 16;

fn main() {
    // A peer process: never let criterion parse anything.
    if let Ok(role) = std::env::var(ROLE_VAR) {
        let code = match peer_main(&role) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench peer {role}: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    bench_main();
}

// ---------------------------------------------------------------- peer side

fn peer_main(role: &str) -> Result<(), String> {
    // Die with the bench process, however it ends.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let parent: i32 = var("MB_BENCH_PARENT")?
        .parse()
        .map_err(|e| format!("{e}"))?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err("the bench process is gone".into());
    }
    let cpu = var("MB_BENCH_CPU")?;
    pin(cpu.parse().ok())?;
    match role {
        "shm" => shm_peer(),
        "uds-lat" => uds_latency_peer(),
        "uds-stream" => uds_stream_peer(),
        "floor" => floor_peer(),
        _ => Err(format!("unknown role {role}")),
    }
}

fn var(key: &str) -> Result<String, String> {
    std::env::var(key).map_err(|_| format!("{key} not set"))
}

/// Echoes small messages; acknowledges big ones that ask for it (first
/// byte 1) with one byte. Ends when the bench closes the channel.
fn shm_peer() -> Result<(), String> {
    let config = ChannelConfig {
        dir: var("MB_BENCH_DIR")?.into(),
        wait: policy(&var("MB_BENCH_WAIT")?),
        ..Default::default()
    };
    let mut ch = Channel::open(&var("MB_BENCH_NAME")?, &config).map_err(|e| e.to_string())?;
    println!("READY");
    let (tx, rx) = ch.halves();
    loop {
        let m = match rx.recv() {
            Ok(m) => m,
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let r = if m.len() < 1024 {
            tx.send(&m)
        } else if m[0] == 1 {
            drop(m);
            tx.send(&[1])
        } else {
            Ok(())
        };
        r.map_err(|e| e.to_string())?;
    }
}

/// The mailbox of the one-slot floor: a page of a file both processes map,
/// one word each way on its own cache line.
struct Mailbox {
    map: memmap2::MmapMut,
}

impl Mailbox {
    const PING: usize = 0;
    const PONG: usize = 128;
    /// Written to PING when the bench is done.
    const DONE: u64 = u64::MAX;

    fn open(path: &Path) -> Result<Mailbox, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| e.to_string())?;
        file.set_len(4096).map_err(|e| e.to_string())?;
        // SAFETY: a shared mapping of a bench-private file that nobody
        // truncates while both processes map it; accessed only through
        // the atomics below.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| e.to_string())?;
        Ok(Mailbox { map })
    }

    fn word(&self, at: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= self.map.len());
        // SAFETY: in bounds and aligned (asserted; the mapping is page
        // aligned); shared memory reached only atomically.
        unsafe { &*(self.map.as_ptr().add(at) as *const std::sync::atomic::AtomicU64) }
    }
}

/// Answers each new PING with the same PONG, busy-polling, until DONE.
fn floor_peer() -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let mailbox = Mailbox::open(Path::new(&var("MB_BENCH_FLOOR")?))?;
    let (ping, pong) = (mailbox.word(Mailbox::PING), mailbox.word(Mailbox::PONG));
    println!("READY");
    let mut last = ping.load(Ordering::Acquire);
    loop {
        // Acquire/Release: a message in a real mailbox would be published
        // with the word; the floor pays for the same orderings.
        let v = ping.load(Ordering::Acquire);
        if v == last {
            std::hint::spin_loop();
            continue;
        }
        if v == Mailbox::DONE {
            return Ok(());
        }
        pong.store(v, Ordering::Release);
        last = v;
    }
}

fn uds_latency_peer() -> Result<(), String> {
    let mut s = UnixStream::connect(var("MB_BENCH_SOCK")?).map_err(|e| e.to_string())?;
    let mut buf = [0u8; SMALL];
    loop {
        if s.read_exact(&mut buf).is_err() {
            return Ok(()); // the bench closed the socket
        }
        s.write_all(&buf).map_err(|e| e.to_string())?;
    }
}

fn uds_stream_peer() -> Result<(), String> {
    let mut s = UnixStream::connect(var("MB_BENCH_SOCK")?).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; BIG];
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let len = u32::from_le_bytes(len) as usize;
        buf.resize(len, 0);
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if buf.first() == Some(&1) {
            s.write_all(&[1]).map_err(|e| e.to_string())?;
        }
    }
}

fn policy(name: &str) -> WaitPolicy {
    match name {
        "busy" => WaitPolicy::BusyPoll,
        _ => WaitPolicy::default(),
    }
}

/// Pins the calling thread to `cpu`, or lets it run on every CPU this
/// process may use.
fn pin(cpu: Option<usize>) -> Result<(), String> {
    let mut set = CpuSet::new();
    match cpu {
        Some(c) => set.set(c).map_err(|e| e.to_string())?,
        None => {
            for c in allowed_cpus() {
                set.set(c).map_err(|e| e.to_string())?;
            }
        }
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity({cpu:?}): {e}"))
}

/// CPUs the process may run on, as it started (read once).
fn allowed_cpus() -> Vec<usize> {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| {
        let set = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
        (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect()
    })
    .clone()
}

// ---------------------------------------------------------------- bench side

/// A peer process; killed and reaped on drop (also when a panic unwinds).
struct Peer {
    child: Child,
}

impl Peer {
    fn spawn(role: &str, cpu: Option<usize>, envs: &[(&str, String)]) -> Peer {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.env(ROLE_VAR, role)
            .env("MB_BENCH_PARENT", std::process::id().to_string())
            .env(
                "MB_BENCH_CPU",
                cpu.map_or("none".to_string(), |c| c.to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Peer {
            child: cmd.spawn().expect("spawn the peer process"),
        }
    }

    /// Waits for the peer's READY line.
    fn wait_ready(&mut self) {
        let out = self.child.stdout.take().expect("peer stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.trim() == "READY" => {}
            other => panic!(
                "peer not ready: {other:?}; status {:?}",
                self.child.try_wait()
            ),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Give a peer whose channel just closed a moment to exit by itself.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's directory for segments and sockets, removed on drop.
struct BenchDir(PathBuf);

impl BenchDir {
    fn new() -> BenchDir {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("mb-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("bench dir");
        BenchDir(dir)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    ShmBusy,
    ShmDefault,
    Uds,
    /// The one-slot mailbox: the floor of a shared-memory round trip.
    Floor,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::ShmBusy => "metabridge busy-poll",
            System::ShmDefault => "metabridge default",
            System::Uds => "unix socket",
            System::Floor => "one-slot floor",
        }
    }

    fn id(self) -> &'static str {
        match self {
            System::ShmBusy => "mb-busy",
            System::ShmDefault => "mb-default",
            System::Uds => "uds",
            System::Floor => "floor",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placement {
    /// Bench on vCPU 0, peer on vCPU 1.
    Cross,
    /// Both on vCPU 0.
    Same,
    Unpinned,
}

impl Placement {
    fn cpus(self) -> (Option<usize>, Option<usize>) {
        match self {
            Placement::Cross => (Some(0), Some(1)),
            Placement::Same => (Some(0), Some(0)),
            Placement::Unpinned => (None, None),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Placement::Cross => "cpu0 / cpu1",
            Placement::Same => "both cpu0",
            Placement::Unpinned => "unpinned",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Placement::Cross => "cpu0-cpu1",
            Placement::Same => "cpu0-cpu0",
            Placement::Unpinned => "unpinned",
        }
    }
}

/// What a benchmark needs of a connection to an echo peer.
trait Transport {
    /// One 64-byte message there and back.
    fn round_trip(&mut self);
    /// One 1 MiB message; if `ack`, wait for the peer's acknowledgement.
    fn stream(&mut self, ack: bool);
}

struct Shm {
    ch: Channel,
    _peer: Peer, // after `ch`: the channel closes first, then the peer exits
    small: [u8; SMALL],
    big: [Vec<u8>; 2],
}

impl Shm {
    fn connect(dir: &Path, system: System, cpu: Option<usize>) -> Shm {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let wait = if system == System::ShmBusy {
            "busy"
        } else {
            "default"
        };
        let config = ChannelConfig {
            dir: dir.to_path_buf(),
            wait: policy(wait),
            ..Default::default()
        };
        let ch = Channel::create(&name, &config).expect("create channel");
        let mut peer = Peer::spawn(
            "shm",
            cpu,
            &[
                ("MB_BENCH_DIR", dir.display().to_string()),
                ("MB_BENCH_NAME", name),
                ("MB_BENCH_WAIT", wait.into()),
            ],
        );
        peer.wait_ready();
        let mut big = [vec![0x5a; BIG], vec![0x5a; BIG]];
        big[1][0] = 1;
        big[0][0] = 0;
        Shm {
            ch,
            _peer: peer,
            small: [7; SMALL],
            big,
        }
    }
}

impl Transport for Shm {
    #[inline]
    fn round_trip(&mut self) {
        self.ch.send(&self.small).expect("send");
        let m = self.ch.recv().expect("recv");
        debug_assert_eq!(m.len(), SMALL);
        black_box(&*m);
    }

    fn stream(&mut self, ack: bool) {
        self.ch.send(&self.big[ack as usize]).expect("send 1 MiB");
        if ack {
            let m = self.ch.recv().expect("recv ack");
            assert_eq!(&*m, &[1]);
        }
    }
}

/// The bench's end of the one-slot mailbox.
struct Floor {
    mailbox: Mailbox,
    _peer: Peer,
    seq: u64,
}

impl Floor {
    fn connect(dir: &Path, cpu: Option<usize>) -> Floor {
        let path = dir.join("floor");
        let mailbox = Mailbox::open(&path).expect("mailbox");
        let mut peer = Peer::spawn(
            "floor",
            cpu,
            &[("MB_BENCH_FLOOR", path.display().to_string())],
        );
        peer.wait_ready();
        Floor {
            mailbox,
            _peer: peer,
            seq: 0,
        }
    }
}

impl Transport for Floor {
    #[inline]
    fn round_trip(&mut self) {
        use std::sync::atomic::Ordering;
        self.seq += 1;
        let (ping, pong) = (
            self.mailbox.word(Mailbox::PING),
            self.mailbox.word(Mailbox::PONG),
        );
        ping.store(self.seq, Ordering::Release);
        while pong.load(Ordering::Acquire) != self.seq {
            std::hint::spin_loop();
        }
    }

    fn stream(&mut self, _ack: bool) {
        unreachable!("the floor has no stream")
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.mailbox
            .word(Mailbox::PING)
            .store(Mailbox::DONE, std::sync::atomic::Ordering::Release);
    }
}

struct Uds {
    lat: UnixStream,
    stream: UnixStream,
    _peers: [Peer; 2],
    small: [u8; SMALL],
    big: [Vec<u8>; 2],
}

fn accept(listener: &UnixListener) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("the peer did not connect: {e}"),
        }
    }
}

impl Uds {
    fn connect(dir: &Path, cpu: Option<usize>) -> Uds {
        let conn = |role: &str, file: &str| {
            let path = dir.join(file);
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind");
            let peer = Peer::spawn(role, cpu, &[("MB_BENCH_SOCK", path.display().to_string())]);
            let s = accept(&listener);
            let _ = std::fs::remove_file(&path);
            (s, peer)
        };
        let (lat, p1) = conn("uds-lat", "lat.sock");
        let (stream, p2) = conn("uds-stream", "stream.sock");
        let mut big = [vec![0x5a; 4 + BIG], vec![0x5a; 4 + BIG]];
        for (i, b) in big.iter_mut().enumerate() {
            b[..4].copy_from_slice(&(BIG as u32).to_le_bytes());
            b[4] = i as u8;
        }
        Uds {
            lat,
            stream,
            _peers: [p1, p2],
            small: [7; SMALL],
            big,
        }
    }
}

impl Transport for Uds {
    #[inline]
    fn round_trip(&mut self) {
        self.lat.write_all(&self.small).expect("write");
        let mut buf = [0u8; SMALL];
        self.lat.read_exact(&mut buf).expect("read");
        black_box(&buf);
    }

    fn stream(&mut self, ack: bool) {
        self.stream
            .write_all(&self.big[ack as usize])
            .expect("write 1 MiB");
        if ack {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b).expect("read ack");
            assert_eq!(b, [1]);
        }
    }
}

/// Streams `iters` messages of 1 MiB with an acknowledgement every
/// [`ACK_EVERY`] and at the end; returns the time taken.
fn stream_batch(t: &mut dyn Transport, iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        let ack = (i + 1) % ACK_EVERY == 0 || i + 1 == iters;
        t.stream(ack);
    }
    start.elapsed()
}

struct Settings {
    quick: bool,
    samples: usize,
    sample_budget: Duration,
    stream_bytes: u64,
    stream_budget: Duration,
}

/// One line of the summary table.
struct Row {
    system: System,
    placement: Placement,
    samples: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    stream_mib_s: f64,
}

/// Times round trips one by one: up to `samples`, or as many as fit in
/// the budget (a busy-polling pair on one vCPU makes each take a time slice).
fn latency_samples(t: &mut dyn Transport, s: &Settings) -> Vec<Duration> {
    let warm = Instant::now();
    let mut n = 0;
    while n < 2000 && warm.elapsed() < s.sample_budget / 10 {
        t.round_trip();
        n += 1;
    }
    let mut v = Vec::with_capacity(s.samples);
    let start = Instant::now();
    while v.len() < s.samples {
        let t0 = Instant::now();
        t.round_trip();
        v.push(t0.elapsed());
        if v.len() % 64 == 0 && v.len() >= 200 && start.elapsed() > s.sample_budget {
            break;
        }
    }
    v.sort_unstable();
    v
}

fn stream_rate(t: &mut dyn Transport, s: &Settings) -> f64 {
    stream_batch(t, ACK_EVERY); // warm up
    let start = Instant::now();
    let mut bytes = 0u64;
    while bytes < s.stream_bytes && (bytes == 0 || start.elapsed() < s.stream_budget) {
        stream_batch(t, ACK_EVERY);
        bytes += ACK_EVERY * BIG as u64;
    }
    bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn run_one(
    c: &mut Criterion,
    dir: &Path,
    system: System,
    placement: Placement,
    s: &Settings,
) -> Row {
    let (mine, peer) = placement.cpus();
    pin(mine).expect("pin the bench process");
    let mut t: Box<dyn Transport> = match system {
        System::Uds => Box::new(Uds::connect(dir, peer)),
        System::Floor => Box::new(Floor::connect(dir, peer)),
        _ => Box::new(Shm::connect(dir, system, peer)),
    };
    let id = format!("{}/{}", system.id(), placement.id());
    // A busy-polling pair on one vCPU waits a scheduler slice per hop.
    let slow = system == System::ShmBusy && placement == Placement::Same;

    let samples = latency_samples(&mut *t, s);
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let stream_mib_s = if system == System::Floor {
        0.0
    } else {
        stream_rate(&mut *t, s)
    };
    let row = Row {
        system,
        placement,
        samples: samples.len(),
        p50: percentile(&samples, 50),
        p99: percentile(&samples, 99),
        mean,
        stream_mib_s,
    };
    println!(
        "[summary] {id}: {} samples, p50 {:.2} us, p99 {:.2} us, 1 MiB stream {:.0} MiB/s",
        row.samples,
        us(row.p50),
        us(row.p99),
        row.stream_mib_s
    );

    let mut g = c.benchmark_group("roundtrip_64B");
    if slow || s.quick {
        g.sampling_mode(SamplingMode::Flat);
    }
    if slow {
        g.sample_size(10);
    }
    g.bench_function(&id, |b| b.iter(|| t.round_trip()));
    g.finish();
    if system == System::Floor {
        drop(t);
        pin(None).expect("unpin");
        return row;
    }

    let mut g = c.benchmark_group("stream_1MiB");
    g.throughput(Throughput::Bytes(BIG as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.bench_function(&id, |b| b.iter_custom(|iters| stream_batch(&mut *t, iters)));
    g.finish();

    drop(t); // closes the channel or sockets; the peers exit
    pin(None).expect("unpin");
    row
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn bench_main() {
    let quick = std::env::var("MB_BENCH_QUICK").is_ok_and(|v| v == "1");
    let settings = if quick {
        Settings {
            quick,
            samples: 5_000,
            sample_budget: Duration::from_millis(500),
            stream_bytes: 64 << 20,
            stream_budget: Duration::from_millis(300),
        }
    } else {
        Settings {
            quick,
            samples: 50_000,
            sample_budget: Duration::from_secs(3),
            stream_bytes: 1 << 30,
            stream_budget: Duration::from_secs(2),
        }
    };
    let mut c = if quick {
        Criterion::default()
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500))
            .sample_size(10)
    } else {
        Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(30)
    }
    .configure_from_args();

    let cpus = allowed_cpus();
    let can_cross = cpus.contains(&0) && cpus.contains(&1);
    let can_same = cpus.contains(&0);
    let mut runs = Vec::new();
    for system in [
        System::Floor,
        System::ShmBusy,
        System::ShmDefault,
        System::Uds,
    ] {
        for placement in [Placement::Cross, Placement::Same, Placement::Unpinned] {
            // The floor busy-polls: only across vCPUs does it mean anything.
            if system == System::Floor && placement != Placement::Cross {
                continue;
            }
            let possible = match placement {
                Placement::Cross => can_cross,
                Placement::Same => can_same,
                Placement::Unpinned => true,
            };
            // Busy-polling unpinned is the cross placement at the mercy of
            // the scheduler; not measured.
            if system == System::ShmBusy && placement == Placement::Unpinned {
                continue;
            }
            if possible {
                runs.push((system, placement));
            } else {
                println!(
                    "[summary] skipping {} {}: CPUs {cpus:?} only",
                    system.label(),
                    placement.label()
                );
            }
        }
    }

    let dir = BenchDir::new();
    let rows: Vec<Row> = runs
        .iter()
        .map(|&(system, placement)| run_one(&mut c, &dir.0, system, placement, &settings))
        .collect();
    c.final_summary();
    print_table(&rows, &settings);
}

fn print_table(rows: &[Row], s: &Settings) {
    println!();
    println!(
        "Round trip of {SMALL} bytes between two processes (individually timed, up to {} samples each){}",
        s.samples,
        if s.quick { " [MB_BENCH_QUICK]" } else { "" }
    );
    println!(
        "{:<22} {:<12} {:>8} {:>10} {:>10} {:>10} {:>16}",
        "system", "placement", "samples", "p50 us", "p99 us", "mean us", "1MiB stream MiB/s"
    );
    println!("{}", "-".repeat(94));
    for r in rows {
        println!(
            "{:<22} {:<12} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>16.0}",
            r.system.label(),
            r.placement.label(),
            r.samples,
            us(r.p50),
            us(r.p99),
            us(r.mean),
            r.stream_mib_s
        );
    }
    let at = |system: System| {
        rows.iter()
            .find(|r| r.system == system && r.placement == Placement::Cross)
    };
    if let (Some(floor), Some(busy)) = (at(System::Floor), at(System::ShmBusy)) {
        println!();
        println!(
            "busy-poll ring p50 / one-slot floor p50 (cpu0 / cpu1): {:.1}x ({:.3} us / {:.3} us)",
            us(busy.p50) / us(floor.p50),
            us(busy.p50),
            us(floor.p50)
        );
    }
    println!();
    println!("UDS p50 / MetaBridge p50 (higher: MetaBridge faster)");
    for placement in [Placement::Cross, Placement::Same, Placement::Unpinned] {
        let Some(uds) = rows
            .iter()
            .find(|r| r.system == System::Uds && r.placement == placement)
        else {
            continue;
        };
        for mb in rows.iter().filter(|r| {
            !matches!(r.system, System::Uds | System::Floor) && r.placement == placement
        }) {
            println!(
                "  {:<12} {:<22} {:>9.3}x   (stream: {:.2}x UDS)",
                placement.label(),
                mb.system.label(),
                us(uds.p50) / us(mb.p50),
                mb.stream_mib_s / uds.stream_mib_s
            );
        }
    }
}
