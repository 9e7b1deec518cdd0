//! Channel behaviour with both sides in this process (on one thread or on
//! several), over real shared-memory segments. The segment garbage
//! collection tests use a child process to leave a segment behind.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

mod common;

use common::{child_main, fill_payload, payload, unique, ChildProc, TestDir};
use metabridge_shm::{
    gc, max_frame_payload, Channel, ChannelConfig, DoorbellSet, Error, ProcessIdentity, FILE_PREFIX,
};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main(&[("create_and_exit", role_create_and_exit)]);
}

/// Creates segment `MB_NAME` in `MB_DIR`, then exits at once without
/// running destructors, as a crashed creator would leave it.
fn role_create_and_exit() -> Result<(), String> {
    let dir = common::env("MB_DIR")?;
    let name = common::env("MB_NAME")?;
    let config = ChannelConfig {
        capacity: 4096,
        dir: dir.into(),
        ..Default::default()
    };
    let ch = Channel::create(&name, &config).map_err(|e| e.to_string())?;
    println!("MB:CREATED");
    std::mem::forget(ch);
    std::process::exit(0);
}

/// A directory and both sides of a fresh channel in it.
struct Pair {
    a: Channel,
    b: Channel,
    dir: TestDir,
}

fn pair(capacity: usize) -> Pair {
    let dir = TestDir::new("chan");
    let name = unique("pair");
    let config = dir.config(capacity);
    let a = Channel::create(&name, &config).expect("create");
    let b = Channel::open(&name, &config).expect("open");
    Pair { a, b, dir }
}

fn max_frame(ch: &mut Channel) -> usize {
    ch.halves().0.max_frame()
}

#[test]
fn small_messages_both_ways() {
    let Pair { mut a, mut b, .. } = pair(4096);
    a.send(b"hello").unwrap();
    assert_eq!(&*b.recv().unwrap(), b"hello");
    b.send(b"world!").unwrap();
    assert_eq!(&*a.recv().unwrap(), b"world!");
    for i in 0..10u8 {
        a.send(&[i; 3]).unwrap();
    }
    for i in 0..10u8 {
        assert_eq!(&*b.recv().unwrap(), &[i; 3]);
    }
    assert!(b.try_recv().unwrap().is_none());
    let me = ProcessIdentity::current();
    assert_eq!(a.peer(), Some(me));
    assert_eq!(b.peer(), Some(me));
    assert_eq!(a.name(), b.name());
}

#[test]
fn empty_message() {
    let Pair { mut a, mut b, .. } = pair(4096);
    a.send(b"").unwrap();
    a.send(b"x").unwrap();
    a.send(&[]).unwrap();
    assert_eq!(b.recv().unwrap().len(), 0);
    assert_eq!(&*b.recv().unwrap(), b"x");
    let m = b
        .try_recv()
        .unwrap()
        .expect("an empty message is a message");
    assert!(m.is_empty());
    drop(m);
    assert!(b.try_recv().unwrap().is_none());
}

#[test]
fn exactly_max_frame_and_one_more() {
    let Pair { mut a, mut b, .. } = pair(4096);
    let max = max_frame(&mut a);
    assert_eq!(max, max_frame_payload(4096));
    assert_eq!(max, 4096 / 4 - 8);
    for len in [max - 1, max, max + 1, 2 * max, 2 * max + 1, 3 * max - 7] {
        let msg = payload(1, len as u64, len);
        a.send(&msg).unwrap();
        let got = b.recv().unwrap();
        assert_eq!(got.len(), len);
        assert!(*got == msg[..], "message of {len} bytes differs");
    }
    // try_send takes one frame at most.
    assert!(matches!(
        a.halves().0.try_send(&vec![0; max + 1]),
        Err(Error::MessageTooLarge { .. })
    ));
    a.halves().0.try_send(&vec![7; max]).unwrap();
    assert_eq!(&*b.recv().unwrap(), &vec![7; max][..]);
}

#[test]
fn wraparound_lockstep_on_a_256_byte_ring() {
    let Pair { mut a, mut b, .. } = pair(256);
    let max = max_frame(&mut a);
    assert_eq!(max, 56);
    let mut rng = common::XorShift::new(7);
    let mut seq = 0u64;
    let mut batch = Vec::new();
    for _round in 0..6000 {
        // Up to three frames at once: with the pad before a wrap that is
        // still at most 3 * 64 + 56 < 256 bytes, so they all fit.
        let n = 1 + rng.below(3);
        batch.clear();
        for _ in 0..n {
            let len = rng.below(max as u64 + 1) as usize;
            let msg = payload(2, seq, len);
            seq += 1;
            match a.halves().0.try_send(&msg) {
                Ok(()) => {}
                Err(e) => panic!("try_send of {len} bytes into a drained ring: {e}"),
            }
            batch.push(msg);
        }
        for want in &batch {
            let got = b.try_recv().unwrap().expect("a sent message is there");
            assert!(
                *got == want[..],
                "message {:?} differs",
                common::seq_of(want)
            );
        }
        assert!(b.try_recv().unwrap().is_none());
    }
    assert!(seq > 10_000);
}

#[test]
fn wraparound_threaded_on_a_256_byte_ring_with_multi_frame_messages() {
    let Pair { a, mut b, .. } = pair(256);
    const N: u64 = 4000;
    let sender = std::thread::spawn(move || {
        let mut a = a;
        let mut rng = common::XorShift::new(11);
        for seq in 0..N {
            let len = if rng.below(4) == 0 {
                rng.below(1000)
            } else {
                rng.below(57)
            } as usize;
            a.send(&payload(3, seq, len)).unwrap();
        }
        a
    });
    let mut rng = common::XorShift::new(11);
    let mut want = Vec::new();
    for seq in 0..N {
        let len = if rng.below(4) == 0 {
            rng.below(1000)
        } else {
            rng.below(57)
        } as usize;
        fill_payload(3, seq, len, &mut want);
        let got = b.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(*got == want[..], "message {seq} ({len} bytes) differs");
    }
    let _a = sender.join().unwrap();
    assert!(b.try_recv().unwrap().is_none());
}

#[test]
fn a_message_ten_times_the_ring_is_chunked() {
    let Pair { a, mut b, .. } = pair(4096);
    let len = 10 * 4096 + 123;
    let msg = payload(4, 0, len);
    let expect = msg.clone();
    let sender = std::thread::spawn(move || {
        let mut a = a;
        a.send(&msg).unwrap();
        a.send(b"after").unwrap();
        a
    });
    {
        let got = b.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(got.len(), len);
        assert!(*got == expect[..]);
    }
    assert_eq!(&*b.recv_timeout(Duration::from_secs(20)).unwrap(), b"after");
    let _a = sender.join().unwrap();
}

#[test]
fn send_with_encodes_in_place() {
    let Pair { mut a, mut b, .. } = pair(4096);
    let r = a
        .send_with(|w| {
            w.write_all(b"abc").unwrap();
            write!(w, "-{}", 42).unwrap();
            17
        })
        .unwrap();
    assert_eq!(r, 17);
    assert_eq!(&*b.recv().unwrap(), b"abc-42");
    // An empty one, and exactly one frame's worth.
    a.send_with(|_| ()).unwrap();
    assert_eq!(b.recv().unwrap().len(), 0);
    let max = max_frame(&mut a);
    let msg = payload(5, 0, max);
    a.send_with(|w| w.write_all(&msg)).unwrap().unwrap();
    assert!(*b.recv().unwrap() == msg[..]);
}

#[test]
fn send_with_spills_when_the_message_outgrows_a_frame() {
    let Pair { mut a, mut b, .. } = pair(4096);
    let max = max_frame(&mut a);
    // In several writes, crossing the end of the frame part way.
    let msg = payload(6, 0, max + 100);
    a.send_with(|w| {
        for piece in msg.chunks(300) {
            w.write_all(piece).unwrap();
        }
    })
    .unwrap();
    assert!(*b.recv().unwrap() == msg[..]);
    // Larger than the ring: the spilled bytes stream while the peer reads.
    let big = payload(6, 1, 3 * 4096 + 5);
    let expect = big.clone();
    let sender = std::thread::spawn(move || {
        a.send_with(|w| w.write_all(&big)).unwrap().unwrap();
        a
    });
    assert!(*b.recv_timeout(Duration::from_secs(20)).unwrap() == expect[..]);
    let _a = sender.join().unwrap();
}

#[test]
fn send_with_spills_when_the_ring_is_full() {
    let Pair { mut a, mut b, .. } = pair(1024);
    let max = max_frame(&mut a); // 248: a frame of 256 bytes
                                 // Leave less room than a full frame but enough for a small one.
    let mut sent = Vec::new();
    for i in 0..3 {
        let m = payload(7, i, max);
        a.send(&m).unwrap();
        sent.push(m);
    }
    let m = payload(7, 3, 100); // 3 * 256 + 112 = 880: 144 bytes left
    a.send(&m).unwrap();
    sent.push(m);
    let small = payload(7, 4, 40); // a frame of 48 bytes fits, one of 256 does not
    a.send_with(|w| w.write_all(&small)).unwrap().unwrap();
    sent.push(small);
    for want in &sent {
        assert!(*b.try_recv().unwrap().expect("message") == want[..]);
    }
    assert!(b.try_recv().unwrap().is_none());

    // A ring with no room at all: send_with waits until the reader drains.
    while a.halves().0.try_send(&[9; 64]).is_ok() {}
    while a.halves().0.try_send(&[]).is_ok() {} // the last 8-byte gaps
    let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = released.clone();
    let sender = std::thread::spawn(move || {
        a.send_with(|w| w.write_all(b"spilled")).unwrap().unwrap();
        assert!(
            flag.load(std::sync::atomic::Ordering::SeqCst),
            "send_with returned before there was room"
        );
        a
    });
    std::thread::sleep(Duration::from_millis(50));
    released.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut fillers = 0;
    loop {
        let m = b.recv_timeout(Duration::from_secs(10)).unwrap();
        if *m == b"spilled"[..] {
            break;
        }
        assert!(*m == [9; 64][..] || m.is_empty());
        fillers += 1;
    }
    assert!(fillers >= 10);
    let _a = sender.join().unwrap();
}

#[test]
fn try_recv_on_an_empty_ring_is_none() {
    let Pair { mut a, mut b, .. } = pair(4096);
    assert!(b.try_recv().unwrap().is_none());
    assert!(a.try_recv().unwrap().is_none());
    a.send(b"1").unwrap();
    assert!(b.try_recv().unwrap().is_some());
    assert!(b.try_recv().unwrap().is_none());
}

#[test]
fn recv_timeout_times_out() {
    let Pair { mut b, a: _a, .. } = pair(4096);
    let t = Instant::now();
    let r = b.recv_timeout(Duration::from_millis(100));
    let took = t.elapsed();
    assert!(matches!(r, Err(Error::Timeout)), "got {r:?}");
    assert!(
        took >= Duration::from_millis(100),
        "returned early: {took:?}"
    );
}

#[test]
fn try_send_reports_full() {
    let Pair { mut a, mut b, .. } = pair(4096);
    let mut n = 0;
    let err = loop {
        match a.halves().0.try_send(&[n as u8; 100]) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "a 4 KiB ring never filled");
    };
    assert!(matches!(err, Error::Full), "got {err:?}");
    assert_eq!(n, 4096 / 112, "frames of 112 bytes in a 4 KiB ring");
    // Still full, still consistent.
    assert!(matches!(a.halves().0.try_send(&[0; 100]), Err(Error::Full)));
    for i in 0..n {
        assert_eq!(*b.try_recv().unwrap().unwrap(), [i as u8; 100][..]);
    }
    assert!(b.try_recv().unwrap().is_none());
    a.halves().0.try_send(b"room again").unwrap();
    assert_eq!(&*b.recv().unwrap(), b"room again");
}

#[test]
fn dropping_a_side_gives_closed_after_the_data() {
    let Pair { mut a, mut b, .. } = pair(4096);
    a.send(b"one").unwrap();
    a.send(&payload(8, 0, 3000)).unwrap(); // several frames
    a.send(b"three").unwrap();
    drop(a);
    assert_eq!(&*b.recv().unwrap(), b"one");
    assert!(*b.recv().unwrap() == payload(8, 0, 3000)[..]);
    assert_eq!(&*b.try_recv().unwrap().unwrap(), b"three");
    assert!(matches!(b.recv(), Err(Error::Closed)));
    assert!(matches!(b.try_recv(), Err(Error::Closed)));
    assert!(matches!(
        b.recv_timeout(Duration::from_secs(5)),
        Err(Error::Closed)
    ));
    // Sending to the closed side fails once the ring needs the reader.
    let mut sent = 0;
    let err = loop {
        match b.send(&[1; 200]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100, "sends to a closed peer never failed");
    };
    assert!(matches!(err, Error::Closed), "got {err:?}");
}

#[test]
fn a_blocked_receiver_wakes_up_closed() {
    let Pair { a, mut b, .. } = pair(4096);
    // A long timeout: Closed (not Timeout) shows the close woke it.
    let waiter =
        std::thread::spawn(move || b.recv_timeout(Duration::from_secs(120)).map(|m| m.len()));
    std::thread::sleep(Duration::from_millis(50));
    drop(a);
    let r = waiter.join().unwrap();
    assert!(matches!(r, Err(Error::Closed)), "got {r:?}");
}

/// Builds 256 MiB cheaply: 1 MiB of pseudo-random bytes repeated, each
/// 4 KiB block stamped with its index so that misplaced blocks show.
fn big_message(len: usize) -> Vec<u8> {
    let block = 1 << 20;
    let mut v = payload(9, 0, block.min(len));
    v.resize(len, 0);
    let mut filled = block.min(len);
    while filled < len {
        let n = filled.min(len - filled);
        v.copy_within(0..n, filled);
        filled += n;
    }
    for (i, chunk) in v.chunks_mut(4096).enumerate() {
        let n = chunk.len().min(8);
        chunk[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
    }
    v
}

#[test]
fn a_256_mib_message_round_trip() {
    let dir = TestDir::new("big");
    let name = unique("big");
    let config = dir.config(1 << 20);
    let a = Channel::create(&name, &config).unwrap();
    let mut b = Channel::open(&name, &config).unwrap();
    let t = Instant::now();
    let len = 256 << 20;
    let msg = big_message(len);
    let sum = common::checksum(&msg);
    let generated = t.elapsed();
    let (mut a_tx, mut a_rx) = a.split();
    let result = std::thread::scope(|s| {
        let sender = s.spawn(|| a_tx.send(&msg));
        let receiver = s.spawn(|| {
            let echo = a_rx.recv_timeout(Duration::from_secs(120))?;
            Ok::<_, Error>((echo.len(), common::checksum(&echo), *echo == msg[..]))
        });
        // The echo side: receive it all, send it back.
        let (tx, rx) = b.halves();
        let got = rx.recv_timeout(Duration::from_secs(120)).unwrap();
        assert_eq!(got.len(), len);
        tx.send(&got).unwrap();
        drop(got);
        sender.join().unwrap().unwrap();
        receiver.join().unwrap().unwrap()
    });
    let (echo_len, echo_sum, equal) = result;
    println!(
        "256 MiB round trip: generated in {generated:?}, total {:?}",
        t.elapsed()
    );
    assert_eq!(echo_len, len);
    assert_eq!(echo_sum, sum, "checksum of the echo differs");
    assert!(equal);
}

#[test]
fn doorbell_wakes_a_sleeping_receiver() {
    let Pair {
        mut a,
        mut b,
        dir: _dir,
    } = pair(4096);
    let bells = DoorbellSet::create_memfd(2).unwrap();
    let bell = bells.bell(1).unwrap();
    a.halves().0.set_doorbell(bell.clone());

    // Arm with a frame already there: do not sleep.
    a.send(b"early").unwrap();
    assert!(!b.halves().1.arm_doorbell().unwrap());
    assert_eq!(&*b.recv().unwrap(), b"early");

    for round in 0..3 {
        let seen = bell.count();
        assert!(b.halves().1.arm_doorbell().unwrap(), "an empty ring arms");
        let sleeper_bell = bell.clone();
        let sleeper = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while sleeper_bell.count() == seen && Instant::now() < deadline {
                sleeper_bell.wait(seen, Duration::from_secs(10));
            }
            (sleeper_bell.count(), Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50)); // let it fall asleep
        let sent_at = Instant::now();
        a.send(format!("ring {round}").as_bytes()).unwrap();
        let (count, woke_at) = sleeper.join().unwrap();
        assert_eq!(count, seen + 1, "the send rang the bell once");
        let latency = woke_at.duration_since(sent_at);
        assert!(
            latency < Duration::from_secs(2),
            "woken only after {latency:?}"
        );
        assert_eq!(
            b.try_recv().unwrap().as_deref(),
            Some(format!("ring {round}").as_bytes())
        );
        // Not armed now: the next send does not ring.
        a.send(b"quiet").unwrap();
        assert_eq!(bell.count(), seen + 1);
        assert_eq!(&*b.recv().unwrap(), b"quiet");
    }
    // A closed producer: arming reports it instead of letting us sleep.
    drop(a);
    assert!(matches!(b.halves().1.arm_doorbell(), Err(Error::Closed)));
}

fn spawn_creator_that_crashes(dir: &TestDir, name: &str) {
    let mut child = ChildProc::spawn(
        "create_and_exit",
        &[
            ("MB_DIR", dir.path().display().to_string()),
            ("MB_NAME", name.to_owned()),
        ],
    );
    child.expect_line("MB:CREATED", Duration::from_secs(20));
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("child exits");
    assert!(status.success(), "child: {status:?}");
    assert!(
        dir.segment(name).exists(),
        "a crashed creator leaves its segment behind"
    );
}

#[test]
fn gc_removes_a_dead_creators_segment_and_keeps_live_ones() {
    let dir = TestDir::new("gc");
    let dead = unique("dead");
    spawn_creator_that_crashes(&dir, &dead);
    let live_name = unique("live");
    let live = Channel::create(&live_name, &dir.config(4096)).unwrap();
    // Young garbage with our prefix (it may be a segment being created) and
    // a file that is not a segment at all: both left alone.
    let junk = dir.path().join(format!("{FILE_PREFIX}junk"));
    std::fs::write(&junk, b"not a segment").unwrap();
    let other = dir.path().join("unrelated.txt");
    std::fs::write(&other, b"hello").unwrap();

    assert_eq!(gc(dir.path()).unwrap(), 1, "files: {:?}", dir.files());
    assert!(!dir.segment(&dead).exists());
    assert!(dir.segment(&live_name).exists());
    assert!(junk.exists() && other.exists());
    assert_eq!(gc(dir.path()).unwrap(), 0);
    // The live segment still works.
    let mut opener = Channel::open(&live_name, &dir.config(4096)).unwrap();
    let mut live = live;
    live.send(b"still here").unwrap();
    assert_eq!(&*opener.recv().unwrap(), b"still here");
}

#[test]
fn create_over_a_stale_leftover_succeeds() {
    let dir = TestDir::new("stale");
    let name = unique("stale");
    spawn_creator_that_crashes(&dir, &name);
    let config = dir.config(4096);
    let mut a = Channel::create(&name, &config).expect("create over a dead creator's segment");
    let mut b = Channel::open(&name, &config).unwrap();
    assert_eq!(b.peer(), Some(ProcessIdentity::current()));
    a.send(b"fresh").unwrap();
    assert_eq!(&*b.recv().unwrap(), b"fresh");
    // A live segment is not replaced.
    let other = unique("taken");
    let _first = Channel::create(&other, &config).unwrap();
    assert!(Channel::create(&other, &config).is_err());
}

#[test]
fn segment_file_mode_is_0600() {
    let dir = TestDir::new("mode");
    let name = unique("mode");
    let _a = Channel::create(&name, &dir.config(4096)).unwrap();
    let meta = std::fs::metadata(dir.segment(&name)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn the_name_goes_once_both_sides_attached() {
    let dir = TestDir::new("unlink");
    let name = unique("unlink");
    let config = dir.config(4096);
    let mut a = Channel::create(&name, &config).unwrap();
    assert!(dir.segment(&name).exists());
    let mut b = Channel::open(&name, &config).unwrap();
    assert!(!dir.segment(&name).exists(), "files: {:?}", dir.files());
    // The channel lives on without its name.
    a.send(b"nameless").unwrap();
    assert_eq!(&*b.recv().unwrap(), b"nameless");
    assert!(matches!(Channel::open(&name, &config), Err(Error::Io(_))));
    drop((a, b));
    assert!(dir.files().is_empty(), "files: {:?}", dir.files());
}

#[test]
fn the_name_goes_when_the_creator_drops_alone() {
    let dir = TestDir::new("alone");
    let name = unique("alone");
    let a = Channel::create(&name, &dir.config(4096)).unwrap();
    assert!(dir.segment(&name).exists());
    drop(a);
    assert!(!dir.segment(&name).exists());
    assert!(dir.files().is_empty(), "files: {:?}", dir.files());
    // And the name can be used again.
    let _a = Channel::create(&name, &dir.config(4096)).unwrap();
}

#[test]
fn bad_configuration_is_an_error() {
    let dir = TestDir::new("config");
    for cap in [0, 100, 32, 3 << 10] {
        let r = Channel::create(&unique("cap"), &dir.config(cap));
        assert!(
            matches!(r, Err(Error::Config(_))),
            "capacity {cap}: {:?}",
            r.err()
        );
    }
    for name in ["", ".hidden", "a/b", "sp ace"] {
        assert!(
            matches!(
                Channel::create(name, &dir.config(4096)),
                Err(Error::Config(_))
            ),
            "name {name:?}"
        );
    }
    assert!(dir.files().is_empty(), "files: {:?}", dir.files());
}

#[test]
fn messages_over_max_message_are_refused() {
    let dir = TestDir::new("max");
    let name = unique("max");
    let config = ChannelConfig {
        max_message: 1000,
        ..dir.config(4096)
    };
    let mut a = Channel::create(&name, &config).unwrap();
    let mut b = Channel::open(
        &name,
        &ChannelConfig {
            max_message: 2000,
            ..dir.config(4096)
        },
    )
    .unwrap();
    assert!(matches!(
        a.send(&[0; 1001]),
        Err(Error::MessageTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    // The receiver skips a multi-frame message over its own limit, whole.
    b.send(&[1; 1500]).unwrap();
    b.send(b"next").unwrap();
    match a.recv() {
        Err(Error::MessageTooLarge { len, max: 1000 }) => {
            assert_eq!(
                len, 1500,
                "the error reports the length of the whole message"
            )
        }
        other => panic!("expected MessageTooLarge, got {:?}", other.map(|m| m.len())),
    }
    assert_eq!(&*a.recv().unwrap(), b"next");
}

#[test]
fn halves_and_channels_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send::<metabridge_shm::Channel>();
    assert_send::<metabridge_shm::Sender>();
    assert_send::<metabridge_shm::Receiver>();
    assert_send_sync::<metabridge_shm::Doorbell>();
    assert_send_sync::<metabridge_shm::DoorbellSet>();
}

#[test]
fn try_recv_never_waits_and_assembles_a_large_message_across_calls() {
    let dir = TestDir::new("tryrecv-large");
    let config = dir.config(4096);
    let name = unique("tryrecv-large");
    let mut a = metabridge_shm::Channel::create(&name, &config).unwrap();
    let mut b = metabridge_shm::Channel::open(&name, &config).unwrap();
    let message: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    let expected = message.clone();
    let sender = std::thread::spawn(move || {
        a.send(&message).unwrap();
        a
    });
    let mut empties = 0u64;
    let got = loop {
        // (That try_recv never waits is shown deterministically by
        // try_recv_returns_while_a_message_is_cut_short below.)
        let r = b.try_recv().unwrap().map(|m| m.to_vec());
        match r {
            Some(m) => break m,
            None => {
                empties += 1;
                std::thread::yield_now();
            }
        }
    };
    assert_eq!(got, expected);
    let _a = sender.join().unwrap();
    // The 40 KB message needs ~40 frames through a 4 KiB ring: the sender
    // had to wait for us between frames, so some calls found a gap.
    assert!(empties > 0);
}

/// A sender that stopped in the middle of a message of several frames
/// (its send timed out): `try_recv` takes in the frames that are there and
/// returns `None` instead of waiting for the rest, which never comes. (A
/// watchdog turns a wait into a failure rather than a stuck suite.)
#[test]
fn try_recv_returns_while_a_message_is_cut_short() {
    let dir = std::env::temp_dir();
    let config = metabridge_shm::ChannelConfig {
        capacity: 4096,
        dir: dir.clone(),
        ..Default::default()
    };
    let name = format!("cut-short-{}", std::process::id());
    let mut a = metabridge_shm::Channel::create(&name, &config).unwrap();
    let mut b = metabridge_shm::Channel::open(&name, &config).unwrap();
    // 40 KB through a 4 KiB ring nobody drains: a few frames go in, then
    // the send gives up part way.
    let cut = a
        .halves()
        .0
        .send_timeout(&vec![1u8; 40_000], std::time::Duration::from_millis(1));
    assert!(
        matches!(cut, Err(metabridge_shm::Error::Timeout)),
        "{cut:?}"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        let r = b.try_recv().map(|m| m.map(|m| m.len()));
        let _ = tx.send(r);
        b
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("try_recv waited for frames that never come");
    assert!(matches!(r, Ok(None)), "{r:?}");
    drop(receiver.join().unwrap());
    drop(a);
}

/// An owner that gives its buffers back while idle (a service worker
/// between ticks) must not lose a message half taken in: the rest of a
/// large request may still be on its way.
#[test]
fn giving_buffers_back_keeps_a_message_half_received() {
    use std::os::fd::AsFd;
    let config = ChannelConfig {
        capacity: 64 * 1024,
        ..Default::default()
    };
    let (mut a, fd) = Channel::create_memfd(&config).unwrap();
    let mut b = Channel::from_fd(fd.as_fd(), &config).unwrap();
    let message: Vec<u8> = (0..3 << 20).map(|i| (i * 7) as u8).collect();
    let mut sent = 0;
    let mut buf = metabridge_shm::ReusedBuffer::new();
    let mut rounds = 0;
    loop {
        let done = a.halves().0.try_send_from(&message, &mut sent).unwrap();
        let (_, rx) = b.halves();
        if rx.try_recv_into(&mut buf).unwrap() {
            assert!(done);
            break;
        }
        rx.give_back_buffer(); // idle between frames
        rounds += 1;
        assert!(rounds < 10_000, "the message never completed");
    }
    assert!(rounds > 1, "the message went through in parts");
    assert!(buf[..] == message[..], "the message came through whole");
}
