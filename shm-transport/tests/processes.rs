//! Two real processes over one channel: a stress test through an echoing
//! child, SIGKILL of either side (PeerGone, never a hang), and a clean
//! close across processes.
//!
//! Children are this test binary re-executed (`child_entry` with
//! `MB_CHILD_ROLE`); each is killed and reaped by a guard when its test
//! ends, passes or fails.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

mod common;

use common::{
    child_main, fill_payload, mix, seq_of, unique, with_timeout, ChildProc, TestDir, XorShift,
};
use metabridge_shm::{Channel, ChannelConfig, Error};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main(&[
        ("echo", role_echo),
        ("open_and_sleep", role_open_and_sleep),
        ("create_and_stall", role_create_and_stall),
        ("send_and_exit", role_send_and_exit),
    ]);
}

const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

fn child_config() -> Result<ChannelConfig, String> {
    Ok(ChannelConfig {
        dir: common::env("MB_DIR")?.into(),
        wait: common::wait_policy_from_env(),
        ..Default::default()
    })
}

fn open_from_env() -> Result<Channel, String> {
    let name = common::env("MB_NAME")?;
    Channel::open(&name, &child_config()?).map_err(|e| format!("open {name}: {e}"))
}

/// Opens `MB_NAME` and sends back every message until the parent closes.
fn role_echo() -> Result<(), String> {
    let mut ch = open_from_env()?;
    println!("MB:READY");
    let (tx, rx) = ch.halves();
    let mut n = 0u64;
    loop {
        match rx.recv() {
            Ok(m) => tx.send(&m).map_err(|e| format!("echo send {n}: {e}"))?,
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(format!("echo recv {n}: {e}")),
        }
        n += 1;
    }
}

/// Opens `MB_NAME`, then sleeps until killed.
fn role_open_and_sleep() -> Result<(), String> {
    let ch = open_from_env()?;
    println!("MB:READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = &ch;
    }
}

/// Creates a channel of its own choosing, prints its name, and never reads.
fn role_create_and_stall() -> Result<(), String> {
    let name = unique("child-made");
    let config = ChannelConfig {
        capacity: 4096,
        ..child_config()?
    };
    let ch = Channel::create(&name, &config).map_err(|e| e.to_string())?;
    println!("MB:NAME {name}");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = &ch;
    }
}

/// Opens `MB_NAME`, sends `MB_COUNT` numbered messages, drops the channel
/// and exits normally.
fn role_send_and_exit() -> Result<(), String> {
    let mut ch = open_from_env()?;
    let count: u64 = common::env("MB_COUNT")?
        .parse()
        .map_err(|e| format!("MB_COUNT: {e}"))?;
    let seed: u64 = common::env("MB_SEED")?
        .parse()
        .map_err(|e| format!("MB_SEED: {e}"))?;
    let mut buf = Vec::new();
    for seq in 0..count {
        fill_payload(seed, seq, size_of_message(seed, seq), &mut buf);
        ch.send(&buf).map_err(|e| format!("send {seq}: {e}"))?;
    }
    drop(ch);
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The length of message `seq` of stream `seed`: mostly 0..512 bytes, 1%
/// up to 8 KiB, 1 in 5000 between 64 KiB and 200 KiB (several rings).
fn size_of_message(seed: u64, seq: u64) -> usize {
    let r = mix(seed ^ mix(seq));
    let pick = r % 5000;
    let x = r >> 20;
    if pick == 0 {
        (64 << 10) + (x % ((200 << 10) - (64 << 10) + 1)) as usize
    } else if pick % 100 == 1 {
        (x % ((8 << 10) + 1)) as usize
    } else {
        (x % 512) as usize
    }
}

struct Pair {
    parent: Channel,
    child: ChildProc,
    _dir: TestDir,
}

/// The parent creates a channel; a child with `role` opens it.
fn spawn_child_opener(role: &str, capacity: usize, extra: &[(&str, String)]) -> Pair {
    let dir = TestDir::new("proc");
    let name = unique("proc");
    let parent = Channel::create(&name, &dir.config(capacity)).expect("create");
    let mut envs = vec![
        ("MB_DIR", dir.path().display().to_string()),
        ("MB_NAME", name),
    ];
    envs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let child = ChildProc::spawn(role, &envs);
    Pair {
        parent,
        child,
        _dir: dir,
    }
}

/// Verdict of a receiver that checks a stream of numbered messages.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    lost: u64,
    reordered: u64,
    corrupted: u64,
    first_problem: Option<String>,
}

impl Tally {
    /// Checks `got` against message `seq`; false (and counted) if it differs.
    fn check(&mut self, seed: u64, seq: u64, got: &[u8], want: &mut Vec<u8>) -> bool {
        fill_payload(seed, seq, size_of_message(seed, seq), want);
        if got == &want[..] {
            self.received += 1;
            return true;
        }
        let problem = match seq_of(got) {
            Some(s) if s > seq => {
                self.lost += 1;
                "lost (a later message came first)"
            }
            Some(s) if s < seq => {
                self.reordered += 1;
                "reordered or duplicated"
            }
            _ => {
                self.corrupted += 1;
                "corrupted"
            }
        };
        self.first_problem.get_or_insert_with(|| {
            format!(
                "message {seq}: {problem}: got {} bytes carrying seq {:?}, want {} bytes",
                got.len(),
                seq_of(got),
                want.len()
            )
        });
        false
    }

    fn assert_clean(&self, expected: u64) {
        assert_eq!(
            (self.lost, self.reordered, self.corrupted),
            (0, 0, 0),
            "{:?}",
            self.first_problem
        );
        assert_eq!(self.received, expected, "{:?}", self.first_problem);
    }
}

fn stress_messages() -> u64 {
    std::env::var("MB_STRESS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

#[test]
fn stress_echo_through_a_child_process() {
    let n = stress_messages();
    let seed = 0x5eed_0000_u64 ^ n;
    let sizes = (0..n).map(|seq| size_of_message(seed, seq));
    let (over_ring, over_frame) = sizes.fold((0u64, 0u64), |(r, f), len| {
        (
            r + (len > 64 << 10) as u64,
            f + (len > (16 << 10) - 8) as u64,
        )
    });
    let Pair {
        parent,
        mut child,
        _dir,
    } = spawn_child_opener("echo", 64 << 10, &[]);
    child.expect_line("MB:READY", CHILD_TIMEOUT);
    let (mut tx, mut rx) = parent.split();
    let start = Instant::now();
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let sender = {
        let sent_bytes = sent_bytes.clone();
        std::thread::spawn(move || -> Result<u64, String> {
            let mut buf = Vec::new();
            for seq in 0..n {
                let len = size_of_message(seed, seq);
                if seq % 3 == 0 {
                    // Encoded in place (or spilled, for the big ones).
                    tx.send_with(|w| {
                        fill_payload(seed, seq, len, &mut buf);
                        let (a, b) = buf.split_at(len / 2);
                        w.write_all(a).unwrap();
                        w.write_all(b).unwrap();
                    })
                    .map_err(|e| format!("send_with {seq}: {e}"))?;
                } else {
                    fill_payload(seed, seq, len, &mut buf);
                    tx.send_timeout(&buf, Duration::from_secs(30))
                        .map_err(|e| format!("send {seq}: {e}"))?;
                }
                sent_bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Ok(n)
            // `tx` drops here: the child sees Closed after the last message.
        })
    };
    let mut tally = Tally::default();
    let mut want = Vec::new();
    let mut end = None;
    for seq in 0..n {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(m) => {
                if !tally.check(seed, seq, &m, &mut want) {
                    break;
                }
            }
            Err(e) => {
                end = Some(format!("recv of echo {seq}: {e}"));
                break;
            }
        }
    }
    let after = rx.recv_timeout(Duration::from_secs(30)).map(|m| m.len());
    let elapsed = start.elapsed();
    let sent = sender.join().expect("sender thread");
    let status = child.wait_timeout(CHILD_TIMEOUT);
    let bytes = sent_bytes.load(Ordering::Relaxed);
    println!(
        "stress: {} messages ({} MiB each way; {over_frame} of several frames, {over_ring} larger than the ring) \
         echoed in {elapsed:?}: {:.0} msg/s; {tally:?}",
        tally.received,
        bytes >> 20,
        tally.received as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(end, None);
    if n >= 100_000 {
        assert!(
            over_ring > 0 && over_frame >= over_ring,
            "the size mix lacks big messages"
        );
    }
    tally.assert_clean(n);
    assert_eq!(sent, Ok(n));
    assert!(
        matches!(after, Err(Error::Closed)),
        "after the last echo: {after:?}"
    );
    let status = status.expect("the echo child exits once the parent closes");
    assert!(status.success(), "echo child: {status:?}");
}

#[test]
fn kill_9_of_the_opener_wakes_a_blocked_recv_with_peer_gone() {
    let Pair {
        mut parent,
        mut child,
        _dir,
    } = spawn_child_opener("open_and_sleep", 4096, &[]);
    child.expect_line("MB:READY", CHILD_TIMEOUT);
    assert_eq!(parent.peer().map(|p| p.pid), Some(child.pid));
    let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let receiver = {
        let killed_at = killed_at.clone();
        std::thread::spawn(move || {
            let r = parent.recv().map(|m| m.len());
            let at = Instant::now();
            (
                r,
                at,
                killed_at
                    .lock()
                    .unwrap()
                    .expect("recv returned before the kill"),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    {
        let mut k = killed_at.lock().unwrap();
        child.kill_no_reap(); // a zombie until the guard reaps it: dead all the same
        *k = Some(Instant::now());
    }
    let (r, at, killed) = with_timeout(Duration::from_secs(10), "recv after kill -9", move || {
        receiver.join().unwrap()
    });
    let elapsed = at.duration_since(killed);
    println!("kill -9 of the opener -> recv error {r:?} after {elapsed:?}");
    assert!(
        matches!(r, Err(Error::PeerGone { pid }) if pid == child.pid),
        "got {r:?}"
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "PeerGone took {elapsed:?}"
    );
}

#[test]
fn kill_9_of_the_creator_wakes_a_blocked_send_with_peer_gone() {
    let dir = TestDir::new("proc");
    let mut child = ChildProc::spawn(
        "create_and_stall",
        &[("MB_DIR", dir.path().display().to_string())],
    );
    let name = child.expect_line("MB:NAME", CHILD_TIMEOUT);
    let mut parent = Channel::open(&name, &dir.config(1 << 20)).expect("open the child's channel");
    assert_eq!(parent.peer().map(|p| p.pid), Some(child.pid));
    // Fill the ring (the child never reads), then block in send.
    let mut queued = 0;
    while parent.halves().0.try_send(&[0xab; 200]).is_ok() {
        queued += 1;
    }
    assert!(matches!(
        parent.halves().0.try_send(&[0xab; 200]),
        Err(Error::Full)
    ));
    assert_eq!(queued, 4096 / 208);
    let sender = std::thread::spawn(move || {
        let t = Instant::now();
        let r = parent.send(&[0xcd; 200]);
        (r, Instant::now(), t)
    });
    std::thread::sleep(Duration::from_millis(50));
    let status = child.kill_and_reap();
    let killed = Instant::now();
    let (r, at, started) = with_timeout(Duration::from_secs(10), "send after kill -9", move || {
        sender.join().unwrap()
    });
    println!(
        "kill -9 of the creator -> send error {r:?} after {:?} (blocked {:?}); child {status:?}",
        at.saturating_duration_since(killed),
        at.duration_since(started)
    );
    assert!(
        matches!(r, Err(Error::PeerGone { pid }) if pid == child.pid),
        "got {r:?}"
    );
    assert!(
        at.duration_since(started) >= Duration::from_millis(40),
        "send did not block"
    );
    assert!(at.saturating_duration_since(killed) < Duration::from_secs(1));
}

#[test]
fn kill_9_mid_stream_gives_valid_echoes_then_peer_gone() {
    let base: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    for round in 0..4u64 {
        let seed = mix(base ^ round);
        let delay = Duration::from_millis(10 + XorShift::new(seed).below(200));
        let Pair {
            parent,
            mut child,
            _dir,
        } = spawn_child_opener("echo", 64 << 10, &[]);
        child.expect_line("MB:READY", CHILD_TIMEOUT);
        let (mut tx, mut rx) = parent.split();
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut seq = 0u64;
                loop {
                    fill_payload(seed, seq, size_of_message(seed, seq), &mut buf);
                    if let Err(e) = tx.send_timeout(&buf, Duration::from_secs(10)) {
                        return (seq, e);
                    }
                    seq += 1;
                    if stop.load(Ordering::Relaxed) {
                        return (seq, Error::Closed);
                    }
                }
            })
        };
        let receiver = std::thread::spawn(move || {
            let mut tally = Tally::default();
            let mut want = Vec::new();
            let mut seq = 0u64;
            loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(m) => {
                        if !tally.check(seed, seq, &m, &mut want) {
                            return (tally, None);
                        }
                        seq += 1;
                    }
                    Err(e) => return (tally, Some(e)),
                }
            }
        });
        std::thread::sleep(delay);
        child.kill_no_reap();
        let (tally, err) =
            with_timeout(Duration::from_secs(30), "receiver after kill", move || {
                receiver.join().unwrap()
            });
        stop.store(true, Ordering::Relaxed);
        let (sent, send_err) =
            with_timeout(Duration::from_secs(30), "sender after kill", move || {
                sender.join().unwrap()
            });
        println!(
            "round {round} (seed {seed:#x}): killed after {delay:?}; {} valid echoes of {sent} sent; recv -> {err:?}; send -> {send_err:?}",
            tally.received
        );
        assert_eq!(
            (tally.lost, tally.reordered, tally.corrupted),
            (0, 0, 0),
            "{:?}",
            tally.first_problem
        );
        assert!(
            matches!(err, Some(Error::PeerGone { .. }) | Some(Error::Closed)),
            "the receiver ended with {err:?}"
        );
        assert!(
            matches!(send_err, Error::PeerGone { .. } | Error::Closed),
            "the sender ended with {send_err:?}"
        );
        assert!(tally.received <= sent);
    }
}

#[test]
fn clean_close_across_processes() {
    let seed = 42;
    let Pair {
        mut parent,
        mut child,
        _dir,
    } = spawn_child_opener(
        "send_and_exit",
        64 << 10,
        &[("MB_COUNT", "1000".into()), ("MB_SEED", seed.to_string())],
    );
    let mut tally = Tally::default();
    let mut want = Vec::new();
    for seq in 0..1000 {
        let m = parent
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("message {seq}: {e}"));
        assert!(
            tally.check(seed, seq, &m, &mut want),
            "{:?}",
            tally.first_problem
        );
    }
    tally.assert_clean(1000);
    let end = parent
        .recv_timeout(Duration::from_secs(30))
        .map(|m| m.len());
    assert!(
        matches!(end, Err(Error::Closed)),
        "after the last message: {end:?}"
    );
    let status = child.wait_timeout(CHILD_TIMEOUT).expect("child exits");
    assert!(status.success(), "child: {status:?}");
    // Still Closed (not PeerGone) now that the process is gone for good.
    assert!(matches!(
        parent.recv_timeout(Duration::from_millis(100)),
        Err(Error::Closed)
    ));
    assert!(matches!(parent.try_recv(), Err(Error::Closed)));
}
