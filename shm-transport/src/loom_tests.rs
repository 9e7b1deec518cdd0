//! Loom models of the ring, of its wake protocol, and of the hold table.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p metabridge-shm --release --lib loom`.
//! The ring is tiny (64 bytes: frames of 8 payload bytes, a wrap every
//! four frames) so that the model checker can explore every interleaving,
//! as tokio shrinks its queues under loom. Data bytes are loom atomics read
//! and written Relaxed (see `memory`), so a missing Release/Acquire pair
//! shows up as a stale byte; a lost wakeup shows up as a deadlock, because
//! the modelled futex has no timeout.

use crate::error::{Error, Result};
use crate::memory::Region;
use crate::ring::{Consumer, Peek, Producer, Reserve, RingControl, WAITING};
use crate::wait::{block, Limit, LivenessClock, Peer, Step, WaitPolicy, WaitSettings};
use loom::sync::Arc;
use std::time::Duration;

const CAP: usize = 64;

struct NoPeer;
impl Peer for NoPeer {
    fn publish_cpu(&self, _: u32) {}
    fn peer_cpu(&self) -> Option<u32> {
        None
    }
    fn check_alive(&self) -> Result<()> {
        Ok(())
    }
}

const SETTINGS: WaitSettings = WaitSettings {
    policy: WaitPolicy::Sleep,
    liveness_interval: Duration::from_secs(3600),
};

fn ring() -> (Producer, Consumer) {
    ring_at(0)
}

/// A ring whose counters start at `start`, so that a test reaches the
/// wrap in few steps.
fn ring_at(start: u64) -> (Producer, Consumer) {
    let ctrl = Arc::new(RingControl::new());
    ctrl.tail.store(start, crate::sync::Ordering::Relaxed);
    ctrl.head.store(start, crate::sync::Ordering::Relaxed);
    let mem = Region::new_model(CAP);
    let keep: crate::ring::KeepAlive = std::sync::Arc::new(ctrl.clone());
    let p = Arc::as_ptr(&ctrl);
    // SAFETY: one producer and one consumer over one control block and one
    // data area, kept alive by `keep` (which holds the Arc).
    unsafe {
        (
            Producer::new(p, mem.clone(), CAP, keep.clone()),
            Consumer::new(p, mem, CAP, keep),
        )
    }
}

fn send(p: &mut Producer, bytes: &[u8]) -> Result<()> {
    // SAFETY: the control block outlives the call (the producer keeps it
    // alive), and the reference is used only for atomic loads.
    let word =
        unsafe { &*(&p.ctrl().head as &crate::sync::AtomicU64 as *const crate::sync::AtomicU64) };
    let r = block(
        &SETTINGS,
        &NoPeer,
        &mut LivenessClock::default(),
        Limit::Never,
        WAITING,
        || {
            Ok(match p.try_reserve(bytes.len())? {
                Reserve::Ready(r) => Step::Done(r),
                Reserve::Full { observed } => Step::Pending { word, observed },
            })
        },
    )?;
    p.mem.write(r.offset + 8, bytes);
    p.commit(&r, bytes.len(), 0);
    Ok(())
}

fn recv(c: &mut Consumer) -> Result<Vec<u8>> {
    // SAFETY: as in `send`: kept alive by the consumer, atomics only.
    let word =
        unsafe { &*(&c.ctrl().tail as &crate::sync::AtomicU64 as *const crate::sync::AtomicU64) };
    let f = block(
        &SETTINGS,
        &NoPeer,
        &mut LivenessClock::default(),
        Limit::Never,
        WAITING,
        || {
            Ok(match c.try_peek()? {
                Peek::Frame(f) => Step::Done(f),
                Peek::Empty { observed } => Step::Pending { word, observed },
            })
        },
    )?;
    let mut out = vec![0; f.len];
    c.mem.read(f.offset, &mut out);
    c.release(f.end);
    Ok(out)
}

fn message(i: u8) -> Vec<u8> {
    (0..8).map(|k| i.wrapping_mul(31).wrapping_add(k)).collect()
}

/// Explores every interleaving with at most this many preemptions (the
/// bound keeps the run in minutes; bugs of ordering need few).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn loom_frames_arrive_whole_and_in_order_across_the_wrap() {
    model(|| {
        // Starting 8 bytes before the end: the first frame needs a pad
        // frame and wraps to offset 0. The consumer sleeps until woken.
        let (mut p, mut c) = ring_at(56);
        let t = loom::thread::spawn(move || {
            for i in 0..2 {
                send(&mut p, &message(i)).unwrap();
            }
        });
        for i in 0..2 {
            assert_eq!(recv(&mut c).unwrap(), message(i));
        }
        t.join().unwrap();
    });
}

#[test]
fn loom_a_full_ring_blocks_the_producer_until_space_is_released() {
    model(|| {
        // 5 frames of 16 bytes through 64 bytes: the fifth waits for the
        // consumer to release the first, and must be woken.
        let (mut p, mut c) = ring();
        let t = loom::thread::spawn(move || {
            for i in 0..5 {
                send(&mut p, &message(i)).unwrap();
            }
        });
        for i in 0..5 {
            assert_eq!(recv(&mut c).unwrap(), message(i));
        }
        t.join().unwrap();
    });
}

#[test]
fn loom_close_wakes_a_sleeping_consumer() {
    model(|| {
        let (mut p, mut c) = ring();
        let t = loom::thread::spawn(move || {
            send(&mut p, &message(1)).unwrap();
            p.close();
        });
        assert_eq!(recv(&mut c).unwrap(), message(1));
        assert!(matches!(recv(&mut c), Err(Error::Closed)));
        t.join().unwrap();
    });
}

#[test]
fn loom_consumer_close_wakes_a_blocked_producer() {
    model(|| {
        let (mut p, c) = ring();
        let t = loom::thread::spawn(move || {
            // 4 frames fill the ring; the fifth blocks until the close.
            for i in 0..4 {
                send(&mut p, &message(i)).unwrap();
            }
            assert!(matches!(send(&mut p, &message(9)), Err(Error::Closed)));
        });
        c.close();
        t.join().unwrap();
    });
}

/// A producer serving many rings (a service worker) never blocks on one:
/// when this ring is full it arms `head` with DOORBELL and sleeps on a
/// doorbell word shared by its rings; the consumer's release returns the
/// bit and rings. A lost wakeup would deadlock (the futex has no timeout).
#[test]
fn loom_a_release_rings_the_doorbell_of_a_producer_waiting_for_room() {
    use crate::ring::DOORBELL;
    use crate::sync::{AtomicU64, Ordering};
    model(|| {
        let (mut p, mut c) = ring();
        let bell = Arc::new(AtomicU64::new(0));
        let producer_bell = bell.clone();
        let t = loom::thread::spawn(move || {
            for i in 0..5 {
                loop {
                    // Read the doorbell before looking at the ring, as the
                    // worker does: a ring after this changes the count.
                    let seen = producer_bell.load(Ordering::Acquire);
                    match p.try_reserve(8).unwrap() {
                        Reserve::Ready(r) => {
                            let bytes = message(i);
                            p.mem.write(r.offset + 8, &bytes);
                            p.commit(&r, bytes.len(), 0);
                            break;
                        }
                        Reserve::Full { observed } => {
                            if p.announce_sleep(observed, DOORBELL) {
                                crate::futex::wait(&producer_bell, seen, None);
                            }
                        }
                    }
                }
            }
        });
        for i in 0..5 {
            let f = loop {
                match c.try_peek().unwrap() {
                    Peek::Frame(f) => break f,
                    Peek::Empty { .. } => loom::thread::yield_now(),
                }
            };
            let mut out = vec![0; f.len];
            c.mem.read(f.offset, &mut out);
            assert_eq!(out, message(i));
            if c.release(f.end) & DOORBELL != 0 {
                bell.fetch_add(1, Ordering::Release);
                crate::futex::wake(&bell);
            }
        }
        t.join().unwrap();
    });
}

/// The hold table (`hold_table`) against a writer reusing its pool: the
/// receiver enters a block in the table before it answers, reads it after,
/// and clears its slot; the writer, once it has the answer, writes only
/// pages the table shows free. Pool pages are loom cells, so a write that
/// can overlap the receiver's read (a Relaxed clear or load, the entry made
/// after the answer) fails the model as a data race.
#[test]
fn loom_a_held_page_is_never_written_under_its_reader() {
    use crate::hold_table::{clear, enter, entry, held};
    use crate::sync::{AtomicU64, Ordering};
    use loom::cell::UnsafeCell;
    const PAGE: usize = 1;
    model(|| {
        // Two pages of the writer's pool, the receiver's two-slot table,
        // and the ring as two flags (request, answer).
        let pages = Arc::new([UnsafeCell::new(0u8), UnsafeCell::new(0u8)]);
        let table = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let request = Arc::new(AtomicU64::new(0));
        let answer = Arc::new(AtomicU64::new(0));
        let (r_pages, r_table, r_request, r_answer) = (
            pages.clone(),
            table.clone(),
            request.clone(),
            answer.clone(),
        );
        let receiver = loom::thread::spawn(move || {
            while r_request.load(Ordering::Acquire) == 0 {
                loom::thread::yield_now();
            }
            let slot = enter(&r_table[..], entry(0, 1)).expect("a free slot");
            r_answer.store(1, Ordering::Release);
            // Read in place, after answering: the writer is free to place
            // its next message now, around this page.
            // SAFETY: a loom cell, whose every access loom checks for races.
            let seen = r_pages[0].with(|p| unsafe { *p });
            assert_eq!(seen, 1, "the bytes of the message, unchanged");
            clear(&r_table[..], slot);
        });
        // SAFETY: a loom cell, whose every access loom checks for races.
        pages[0].with_mut(|p| unsafe { *p = 1 });
        request.store(1, Ordering::Release);
        while answer.load(Ordering::Acquire) == 0 {
            loom::thread::yield_now();
        }
        // The next message: to the first page the table leaves free.
        let mut out = [(0, 0); 2];
        let n = held(&table[..], 2 * PAGE, PAGE, &mut out);
        let free = (0..2).find(|&p| !out[..n].iter().any(|&(s, e)| s <= p && p < e));
        let page = free.expect("one page at most is held");
        // SAFETY: a loom cell, as above.
        pages[page].with_mut(|p| unsafe { *p = 2 });
        receiver.join().unwrap();
    });
}

/// Slots are taken by one block each while blocks are dropped on other
/// threads: two entries made while a third block's slot is cleared
/// concurrently all land, in distinct slots, and a full table refuses.
#[test]
fn loom_hold_slots_are_taken_once_while_others_are_cleared() {
    use crate::hold_table::{clear, enter, entry, held};
    use crate::sync::AtomicU64;
    model(|| {
        let table = Arc::new([AtomicU64::new(entry(7, 1)), AtomicU64::new(0)]);
        let dropper = {
            let table = table.clone();
            loom::thread::spawn(move || clear(&table[..], 0))
        };
        let first = enter(&table[..], entry(1, 1));
        let second = enter(&table[..], entry(2, 1));
        dropper.join().unwrap();
        // The dropper has cleared slot 0: room for both, whatever the order.
        let (a, b) = match (first, second) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => (a, enter(&table[..], entry(2, 1)).expect("slot 0, cleared")),
            other => panic!("an entry lost: {other:?}"),
        };
        assert_ne!(a, b);
        let mut out = [(0, 0); 2];
        assert_eq!(held(&table[..], 16, 1, &mut out), 2);
        let mut got = out.to_vec();
        got.sort();
        assert_eq!(got, [(1, 2), (2, 3)]);
        assert_eq!(enter(&table[..], entry(3, 1)), None, "a full table");
    });
}
