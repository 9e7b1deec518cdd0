//! Segments with bad contents: a bad header gives a typed error at open,
//! and counters or frame headers written by a hostile peer give
//! `Error::Corrupt` at the next operation — never a panic, never a hang.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

mod common;

use common::{unique, TestDir};
use memmap2::MmapMut;
use metabridge_shm::{layout, max_frame_payload, Channel, Error, HEADER_LEN, LAYOUT_VERSION};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// Header layout (repr(C) SegmentHeader): magic u64 at 0, version u32 at 8,
// header_len u32 at 12, capacities [u64; 2] at 16, total length u64 at 32.
// `header_fields_are_where_the_tests_think` checks these against a real
// segment before other tests rely on them.
const VERSION_AT: u64 = 8;
const HEADER_LEN_AT: u64 = 12;
const CAPACITY_AT: [u64; 2] = [16, 24];
const TOTAL_AT: u64 = 32;

fn read_u32(file: &File, at: u64) -> u32 {
    let mut b = [0; 4];
    file.read_exact_at(&mut b, at).unwrap();
    u32::from_le_bytes(b)
}

fn read_u64(file: &File, at: u64) -> u64 {
    let mut b = [0; 8];
    file.read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

fn open_rw(path: &std::path::Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

#[test]
fn header_fields_are_where_the_tests_think() {
    let dir = TestDir::new("layout");
    let name = unique("layout");
    let _a = Channel::create(&name, &dir.config(4096)).unwrap();
    let f = open_rw(&dir.segment(&name));
    assert_eq!(&read_u64(&f, 0).to_le_bytes(), b"MBRIDGE1");
    assert_eq!(read_u32(&f, VERSION_AT), LAYOUT_VERSION);
    assert_eq!(read_u32(&f, HEADER_LEN_AT), HEADER_LEN as u32);
    assert_eq!(read_u64(&f, CAPACITY_AT[0]), 4096);
    assert_eq!(read_u64(&f, CAPACITY_AT[1]), 4096);
    assert_eq!(read_u64(&f, TOTAL_AT), (HEADER_LEN + 2 * 4096) as u64);
    assert_eq!(f.metadata().unwrap().len(), (HEADER_LEN + 2 * 4096) as u64);
}

#[test]
fn garbage_file_is_bad_magic() {
    let dir = TestDir::new("magic");
    let name = unique("magic");
    let garbage: Vec<u8> = (0..3 * 4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.segment(&name), &garbage).unwrap();
    let r = Channel::open(&name, &dir.config(4096));
    assert!(
        matches!(&r, Err(Error::BadMagic { name: n }) if *n == name),
        "got {:?}",
        r.err()
    );
    // A zero-filled file (a creator that has not written its header yet).
    let name = unique("zeros");
    std::fs::write(dir.segment(&name), vec![0; 3 * 4096]).unwrap();
    assert!(matches!(
        Channel::open(&name, &dir.config(4096)),
        Err(Error::BadMagic { .. })
    ));
}

#[test]
fn version_mismatch() {
    let dir = TestDir::new("version");
    let name = unique("version");
    let _a = Channel::create(&name, &dir.config(4096)).unwrap();
    let f = open_rw(&dir.segment(&name));
    f.write_all_at(&(LAYOUT_VERSION + 1).to_le_bytes(), VERSION_AT)
        .unwrap();
    match Channel::open(&name, &dir.config(4096)) {
        Err(Error::VersionMismatch {
            found, expected, ..
        }) => {
            assert_eq!(found, LAYOUT_VERSION + 1);
            assert_eq!(expected, LAYOUT_VERSION);
        }
        other => panic!("expected VersionMismatch, got {:?}", other.err()),
    }
}

#[test]
fn truncated_files() {
    let dir = TestDir::new("trunc");
    // Shorter than the header.
    let name = unique("short");
    std::fs::write(dir.segment(&name), b"MBRIDGE1 and not much more").unwrap();
    match Channel::open(&name, &dir.config(4096)) {
        Err(Error::Truncated { len, needed, .. }) => {
            assert_eq!(len, 26);
            assert_eq!(needed, HEADER_LEN as u64);
        }
        other => panic!("expected Truncated, got {:?}", other.err()),
    }
    // A valid header whose file lost the end of its data areas. (The
    // creator touches only the header page from now on, which is still
    // inside the file.)
    let name = unique("cut");
    let _a = Channel::create(&name, &dir.config(4096)).unwrap();
    let f = open_rw(&dir.segment(&name));
    f.set_len((HEADER_LEN + 4096 + 100) as u64).unwrap();
    match Channel::open(&name, &dir.config(4096)) {
        Err(Error::Truncated { len, needed, .. }) => {
            assert_eq!(len, (HEADER_LEN + 4096 + 100) as u64);
            assert_eq!(needed, (HEADER_LEN + 2 * 4096) as u64);
        }
        other => panic!("expected Truncated, got {:?}", other.err()),
    }
}

/// Creates a segment, pokes `value` at `at`, and returns what open says.
fn open_after_poke(at: u64, value: &[u8]) -> Result<(), Error> {
    let dir = TestDir::new("poke");
    let name = unique("poke");
    let _a = Channel::create(&name, &dir.config(4096)).unwrap();
    let f = open_rw(&dir.segment(&name));
    f.write_all_at(value, at).unwrap();
    Channel::open(&name, &dir.config(4096)).map(drop)
}

#[test]
fn bad_header_fields_are_corrupt() {
    for (what, at, value) in [
        (
            "capacity not a power of two",
            CAPACITY_AT[0],
            3000u64.to_le_bytes().to_vec(),
        ),
        (
            "second capacity not a power of two",
            CAPACITY_AT[1],
            4097u64.to_le_bytes().to_vec(),
        ),
        ("capacity zero", CAPACITY_AT[0], 0u64.to_le_bytes().to_vec()),
        (
            "capacity too small",
            CAPACITY_AT[0],
            32u64.to_le_bytes().to_vec(),
        ),
        (
            "capacity too large",
            CAPACITY_AT[1],
            (1u64 << 40).to_le_bytes().to_vec(),
        ),
        (
            "capacity disagrees with the total",
            CAPACITY_AT[0],
            2048u64.to_le_bytes().to_vec(),
        ),
        ("total length wrong", TOTAL_AT, 1u64.to_le_bytes().to_vec()),
        (
            "header length wrong",
            HEADER_LEN_AT,
            8192u32.to_le_bytes().to_vec(),
        ),
    ] {
        let r = open_after_poke(at, &value);
        assert!(matches!(r, Err(Error::Corrupt(_))), "{what}: got {r:?}");
    }
}

/// A creator, an opener, and a writable view of their segment that a
/// "hostile peer" uses to scribble on it (the file was opened before
/// `Channel::open` unlinked its name).
struct Hostile {
    a: Channel,
    b: Channel,
    map: MmapMut,
    capacity: usize,
    _dir: TestDir,
}

impl Hostile {
    fn new(capacity: usize) -> Hostile {
        let dir = TestDir::new("hostile");
        let name = unique("hostile");
        let config = dir.config(capacity);
        let a = Channel::create(&name, &config).unwrap();
        let file = open_rw(&dir.segment(&name));
        let b = Channel::open(&name, &config).unwrap();
        assert!(!dir.segment(&name).exists());
        // SAFETY: a shared mapping of the segment file; the test writes only
        // whole aligned words through atomics, as a peer process would.
        let map = unsafe { MmapMut::map_mut(&file) }.unwrap();
        Hostile {
            a,
            b,
            map,
            capacity,
            _dir: dir,
        }
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= self.map.len());
        // SAFETY: in bounds and aligned (asserted; the mapping is page
        // aligned); shared memory accessed atomically.
        unsafe { &*(self.map.as_ptr().add(at) as *const AtomicU64) }
    }

    /// Ring 0 (creator -> opener): the tail word.
    fn tail0(&self) -> &AtomicU64 {
        self.word(layout::CONTROL_OFFSET[0])
    }

    /// Ring 0: the head word.
    fn head0(&self) -> &AtomicU64 {
        self.word(layout::CONTROL_OFFSET[0] + layout::HEAD_OFFSET)
    }

    /// Ring 0: the data word at `offset` of its area.
    fn data0(&self, offset: usize) -> &AtomicU64 {
        assert!(offset < self.capacity);
        self.word(HEADER_LEN + offset)
    }
}

fn expect_corrupt<T: std::fmt::Debug>(what: &str, r: Result<T, Error>) {
    match r {
        Err(Error::Corrupt(msg)) => println!("{what}: Corrupt({msg})"),
        other => panic!("{what}: expected Error::Corrupt, got {other:?}"),
    }
}

#[test]
fn layout_offsets_match_a_real_ring() {
    let mut h = Hostile::new(4096);
    assert_eq!(h.tail0().load(Ordering::SeqCst), 0);
    h.a.send(b"hello").unwrap();
    assert_eq!(h.tail0().load(Ordering::SeqCst) & !7, 16);
    assert_eq!(
        h.data0(0).load(Ordering::SeqCst),
        5,
        "header: length 5, no flags"
    );
    assert_eq!(
        &h.data0(8).load(Ordering::SeqCst).to_le_bytes()[..5],
        b"hello"
    );
    assert_eq!(&*h.b.recv().unwrap(), b"hello");
    assert_eq!(h.head0().load(Ordering::SeqCst) & !7, 16);
}

#[test]
fn tail_beyond_head_plus_capacity_is_corrupt() {
    let mut h = Hostile::new(4096);
    h.tail0().store(4096 + 8, Ordering::SeqCst);
    expect_corrupt("try_recv", h.b.try_recv().map(|m| m.map(|m| m.len())));
    expect_corrupt(
        "recv_timeout",
        h.b.recv_timeout(Duration::from_secs(5)).map(|m| m.len()),
    );
    // Far beyond, and with signal bits set as well.
    h.tail0().store(u64::MAX, Ordering::SeqCst);
    expect_corrupt(
        "try_recv at u64::MAX",
        h.b.try_recv().map(|m| m.map(|m| m.len())),
    );
}

#[test]
fn tail_behind_head_is_corrupt() {
    let mut h = Hostile::new(4096);
    h.a.send(b"first").unwrap();
    h.a.send(b"second").unwrap();
    assert_eq!(&*h.b.recv().unwrap(), b"first");
    assert_eq!(&*h.b.recv().unwrap(), b"second");
    h.tail0().store(8, Ordering::SeqCst); // head is at 32 now
    expect_corrupt("try_recv", h.b.try_recv().map(|m| m.map(|m| m.len())));
}

#[test]
fn frame_length_beyond_the_data_is_corrupt() {
    for len in [1u64 << 20, u32::MAX as u64, 4096, 2000, 9] {
        let mut h = Hostile::new(4096);
        h.a.send(b"hello").unwrap(); // a frame of 16 bytes is published
        h.data0(0).store(len, Ordering::SeqCst);
        expect_corrupt(
            &format!("frame length {len}"),
            h.b.try_recv().map(|m| m.map(|m| m.len())),
        );
        expect_corrupt(
            "again, blocking",
            h.b.recv_timeout(Duration::from_secs(5)).map(|m| m.len()),
        );
    }
}

#[test]
fn unknown_frame_flags_are_corrupt() {
    for flags in [0x80u64, 0x8000_0000, 4, 3] {
        let mut h = Hostile::new(4096);
        h.a.send(b"hello").unwrap();
        h.data0(0).store(5 | flags << 32, Ordering::SeqCst);
        expect_corrupt(
            &format!("flags {flags:#x}"),
            h.b.try_recv().map(|m| m.map(|m| m.len())),
        );
    }
}

#[test]
fn a_pad_frame_of_the_wrong_length_is_corrupt() {
    let mut h = Hostile::new(4096);
    h.a.send(b"hello").unwrap();
    h.data0(0).store(5 | 2 << 32, Ordering::SeqCst); // FLAG_PAD, but not up to the end
    expect_corrupt("short pad", h.b.try_recv().map(|m| m.map(|m| m.len())));
    // A pad that covers the rest of the ring but is not all published.
    let mut h = Hostile::new(4096);
    h.a.send(b"hello").unwrap();
    h.data0(0).store((4096 - 8) | 2 << 32, Ordering::SeqCst);
    expect_corrupt(
        "unpublished pad",
        h.b.try_recv().map(|m| m.map(|m| m.len())),
    );
}

#[test]
fn a_corrupt_continuation_frame_is_corrupt() {
    // The second frame of a multi-frame message lies about its length.
    let mut h = Hostile::new(4096);
    let max = max_frame_payload(4096);
    h.a.send(&vec![1; max + 10]).unwrap();
    let second = metabridge_shm::frame_len(max);
    h.data0(second).store(1 << 16, Ordering::SeqCst);
    expect_corrupt(
        "continuation",
        h.b.recv_timeout(Duration::from_secs(5)).map(|m| m.len()),
    );
}

/// A way to corrupt a message in flight, given its length.
type Corruption = fn(&Hostile, usize);

/// The first frame of a message of several declares its length: a first
/// frame without it, a length the frames do not add up to (short or
/// long), or a second declaration inside a message is corrupt.
#[test]
fn a_declared_message_length_the_frames_break_is_corrupt() {
    let max = max_frame_payload(4096);
    const MORE: u64 = 1;
    const TOTAL: u64 = 8;
    // The first frame: header word at 0, declared length at 8.
    let message = vec![3u8; 8 * max + 100]; // more than the ring holds
    let cases: [(&str, Corruption); 4] = [
        ("declared shorter than sent", |h, len| {
            h.data0(8).store(len as u64 - 50, Ordering::SeqCst)
        }),
        ("declared longer than sent", |h, len| {
            h.data0(8).store(len as u64 + 8, Ordering::SeqCst)
        }),
        ("a first frame without its length", |h, _| {
            let max = max_frame_payload(4096) as u64;
            h.data0(0).store(max | MORE << 32, Ordering::SeqCst)
        }),
        ("a second frame flagged TOTAL", |h, _| {
            let max = max_frame_payload(4096);
            let second = metabridge_shm::frame_len(max);
            h.data0(second)
                .store(max as u64 | (MORE | TOTAL) << 32, Ordering::SeqCst)
        }),
    ];
    for (what, corrupt) in cases {
        let mut h = Hostile::new(4096);
        // Two frames fit the ring before the receiver reads: corrupt them
        // before it does (the third waits for room).
        let sender = {
            let (tx, _) = h.a.halves();
            let mut sent = 0;
            assert!(!tx.try_send_from(&message, &mut sent).unwrap());
            assert!(sent >= 2 * max - 8, "{what}: {sent}");
            sent
        };
        assert_eq!(
            h.data0(0).load(Ordering::SeqCst) >> 32,
            MORE | TOTAL,
            "{what}: the first frame is flagged MORE | TOTAL"
        );
        assert_eq!(h.data0(8).load(Ordering::SeqCst), message.len() as u64);
        corrupt(&h, message.len());
        let receiver = std::thread::scope(|s| {
            let rx = s.spawn(|| h.b.recv_timeout(Duration::from_secs(5)).map(|m| m.len()));
            let mut sent = sender;
            let tx = h.a.halves().0;
            // The rest goes out as the receiver frees room, until it stops
            // reading (at the corrupt frame).
            while let Ok(false) = tx.try_send_from(&message, &mut sent) {
                if rx.is_finished() {
                    break;
                }
                std::thread::yield_now();
            }
            rx.join().unwrap()
        });
        expect_corrupt(what, receiver);
    }
}

/// A message whose declared length is over the receiver's limit is
/// refused from its first frame and skipped as it streams by; the next
/// message arrives whole.
#[test]
fn a_message_declared_over_the_limit_is_skipped_not_buffered() {
    let dir = TestDir::new("declared");
    let name = unique("declared");
    let mut a = Channel::create(&name, &dir.config(4096)).unwrap();
    let small = metabridge_shm::ChannelConfig {
        max_message: 1000,
        ..dir.config(4096)
    };
    let mut b = Channel::open(&name, &small).unwrap();
    std::thread::scope(|s| {
        let tx = s.spawn(|| {
            a.send(&vec![9u8; 5000]).unwrap();
            a.send(b"next").unwrap();
        });
        match b.recv_timeout(Duration::from_secs(10)) {
            Err(Error::MessageTooLarge { len, max }) => assert_eq!((len, max), (5000, 1000)),
            other => panic!("expected MessageTooLarge, got {:?}", other.map(|m| m.len())),
        }
        assert_eq!(&*b.recv_timeout(Duration::from_secs(10)).unwrap(), b"next");
        tx.join().unwrap();
    });
}

#[test]
fn head_moved_past_the_tail_is_corrupt_for_the_producer() {
    let mut h = Hostile::new(4096);
    h.a.send(b"one").unwrap(); // tail 16
    h.head0().store(1 << 20, Ordering::SeqCst);
    // The producer trusts its cached head until the ring looks full.
    let mut sent = 0;
    let err = loop {
        match h
            .a
            .halves()
            .0
            .send_timeout(&[0; 100], Duration::from_secs(5))
        {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent <= 4096 / 112, "the producer never reloaded the head");
    };
    assert!(matches!(err, Error::Corrupt(_)), "got {err:?}");
    assert_eq!(sent, (4096 - 16) / 112);
    // try_send and send_with see it too.
    assert!(matches!(
        h.a.halves().0.try_send(&[0; 100]),
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(h.a.send_with(|_| ()), Err(Error::Corrupt(_))));
}

#[test]
fn head_moved_backwards_is_corrupt_for_the_producer() {
    let mut h = Hostile::new(4096);
    // Fill, drain (the producer learns head = 3 * 1024 on its next reload),
    // then move the head back.
    for _ in 0..3 {
        h.a.send(&[5; 1016]).unwrap();
    }
    for _ in 0..3 {
        assert_eq!(h.b.recv().unwrap().len(), 1016);
    }
    for _ in 0..2 {
        h.a.send(&[6; 1016]).unwrap(); // needs a reload: sees head = 3072
    }
    h.head0().store(1024, Ordering::SeqCst);
    let mut sent = 0;
    let err = loop {
        match h
            .a
            .halves()
            .0
            .send_timeout(&[0; 1016], Duration::from_secs(5))
        {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 8);
    };
    assert!(matches!(err, Error::Corrupt(_)), "got {err:?}");
}

/// A peer that keeps rewriting the capacity of ring 1 while we open the
/// segment: the opener must use the capacities it validated, not re-read
/// them afterwards (else it would map a ring over memory it does not have).
#[test]
fn capacities_are_read_once_at_open() {
    let dir = TestDir::new("toctou");
    let config = dir.config(4096);
    let mut opened = 0;
    let mut rejected = 0;
    for _ in 0..400 {
        let name = unique("toctou");
        let a = Channel::create(&name, &config).unwrap();
        let file = open_rw(&dir.segment(&name));
        // SAFETY: shared mapping of the segment, written atomically only.
        let map = Arc::new(unsafe { MmapMut::map_mut(&file) }.unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (map, stop, started) = (map.clone(), stop.clone(), started.clone());
            std::thread::spawn(move || {
                // SAFETY: in bounds, 8-aligned; atomic access to shared memory.
                let cap1 =
                    unsafe { &*(map.as_ptr().add(CAPACITY_AT[1] as usize) as *const AtomicU64) };
                while !stop.load(Ordering::Relaxed) {
                    cap1.store(1 << 20, Ordering::Relaxed);
                    started.store(true, Ordering::Relaxed);
                    cap1.store(4096, Ordering::Relaxed);
                }
            })
        };
        while !started.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        let r = Channel::open(&name, &config);
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap();
        match r {
            Ok(mut b) => {
                opened += 1;
                // The opener sends on ring 1.
                let max = b.halves().0.max_frame();
                assert_eq!(
                    max,
                    max_frame_payload(4096),
                    "the opener uses a capacity it did not validate"
                );
            }
            Err(Error::Corrupt(_)) => rejected += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
        drop(a);
        if opened >= 100 {
            break;
        }
    }
    // How the race falls (how many opens saw a flipped value) depends on
    // scheduling, so it is reported, not asserted: each open above either
    // succeeded with the validated capacity or failed as Corrupt. The
    // deterministic half of the property is the next test.
    println!("opened {opened}, rejected {rejected}");
}

/// After a successful open, the peer rewriting the capacities in the
/// header changes nothing: the opener never reads them again.
#[test]
fn capacities_rewritten_after_open_are_ignored() {
    let dir = TestDir::new("toctou-after");
    let config = dir.config(4096);
    let name = unique("toctou-after");
    let mut a = Channel::create(&name, &config).unwrap();
    let file = open_rw(&dir.segment(&name));
    // SAFETY: shared mapping of the segment, written atomically only.
    let map = unsafe { MmapMut::map_mut(&file) }.unwrap();
    let mut b = Channel::open(&name, &config).unwrap();
    for at in CAPACITY_AT {
        // SAFETY: in bounds, 8-aligned; atomic access to shared memory.
        let cap = unsafe { &*(map.as_ptr().add(at as usize) as *const AtomicU64) };
        cap.store(1 << 30, Ordering::Relaxed);
    }
    assert_eq!(b.halves().0.max_frame(), max_frame_payload(4096));
    assert_eq!(a.halves().0.max_frame(), max_frame_payload(4096));
    // And the rings still work within the real 4096 bytes.
    let message = vec![7u8; 3000];
    a.send(&message).unwrap();
    assert_eq!(&*b.recv().unwrap(), &message[..]);
}
