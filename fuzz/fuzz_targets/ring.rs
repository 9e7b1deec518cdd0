//! Fuzz target `ring`: a live channel (a real creator and a real opener in
//! this process) driven by a script of sends and receives on both sides,
//! interleaved with writes of a hostile peer into the shared segment: any
//! word of the header, the ring control words (positions and signal bits)
//! or the frame headers and payloads, the way shm-transport/tests/corrupt.rs
//! corrupts a live segment.
//!
//! The input is a ring capacity (64 B to 8 KiB), then up to 64 operations.
//! Every operation must give a value or a typed error: no panic, no access
//! outside the mapping, no hang (only `try_*` calls and zero timeouts). While
//! the hostile peer has not written anything and no message was cut short
//! by a timeout, the channel must also be a FIFO: each side receives exactly
//! the messages the other sent, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memmap2::MmapMut;
use metabridge_fuzz::{scratch_dir, Input};
use metabridge_shm::{layout, segment_path, Channel, ChannelConfig, WaitPolicy, HEADER_LEN};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const NAME: &str = "ring";

/// One direction's model: what was sent and not yet received, and whether
/// the model still holds.
#[derive(Default)]
struct Direction {
    queue: VecDeque<Vec<u8>>,
    sent: u32,
}

struct Pair {
    sides: [Channel; 2],
    map: MmapMut,
    /// The peer wrote into the segment, or a message was cut: stop checking
    /// contents (still check for crashes).
    dirty: bool,
    /// Direction 0: creator to opener (ring 0); 1: opener to creator.
    dirs: [Direction; 2],
}

impl Pair {
    fn word(&self, index: usize) -> &AtomicU64 {
        let at = (index * 8) % self.map.len();
        // SAFETY: `at` is 8-aligned and `at + 8 <= len` (the length is a
        // multiple of 8: 4096 plus two powers of two >= 64); the mapping is
        // page-aligned shared memory that the channel also only accesses
        // through atomics or under the ring protocol, as a peer process
        // would write it.
        unsafe { &*(self.map.as_ptr().add(at) as *const AtomicU64) }
    }
}

/// A message of `len` bytes that tells apart who sent it and when.
fn message(len: usize, from: usize, seq: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31) as u8 ^ seq as u8 ^ (from as u8 * 0x80))
        .collect()
}

fn send(p: &mut Pair, from: usize, len: usize, timeout: bool) {
    let seq = p.dirs[from].sent;
    let m = message(len, from, seq);
    let r = if timeout {
        p.sides[from].halves().0.send_timeout(&m, Duration::ZERO)
    } else {
        p.sides[from].halves().0.try_send(&m)
    };
    match r {
        Ok(()) => {
            p.dirs[from].sent += 1;
            p.dirs[from].queue.push_back(m);
        }
        // A multi-frame message may have gone out in part: the receiver
        // will see a cut message, as documented.
        Err(_) if timeout => p.dirty = true,
        Err(_) => {}
    }
}

fn recv(p: &mut Pair, to: usize, timeout: bool) {
    let from = 1 - to;
    let dirty = p.dirty;
    let got = if timeout {
        p.sides[to]
            .recv_timeout(Duration::ZERO)
            .map(|m| Some(m.to_vec()))
    } else {
        p.sides[to].try_recv().map(|m| m.map(|m| m.to_vec()))
    };
    match got {
        Ok(Some(m)) => {
            let want = p.dirs[from].queue.pop_front();
            if !dirty {
                assert_eq!(
                    Some(&m),
                    want.as_ref(),
                    "ring {from} delivered another message"
                );
            }
        }
        Ok(None) | Err(metabridge_shm::Error::Timeout) => {
            // A single-frame message sent in full is visible at once.
            if !dirty {
                assert!(p.dirs[from].queue.is_empty(), "ring {from} lost a message");
            }
        }
        Err(e) => assert!(dirty, "error on a clean ring: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let capacity = 64usize << (input.u8() & 7);
    let config = ChannelConfig {
        capacity,
        wait: WaitPolicy::Sleep,
        liveness_interval: Duration::from_millis(20),
        max_message: 1 << 20,
        dir: scratch_dir().to_path_buf(),
        // Named segments: no payload pool.
        pool: 0,
        keep_buffer: metabridge_shm::CHANNEL_BUDGET,
    };
    let creator = Channel::create(NAME, &config).expect("create");
    // Our hostile view, opened before `Channel::open` unlinks the name.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment_path(&config.dir, NAME))
        .expect("open the segment file");
    // SAFETY: a shared mapping of the segment; we only access it through
    // aligned atomics (`Pair::word`).
    let map = unsafe { MmapMut::map_mut(&file) }.expect("map the segment");
    let opener = Channel::open(NAME, &config).expect("open");
    let max_frame = metabridge_shm::max_frame_payload(capacity);
    let mut p = Pair {
        sides: [creator, opener],
        map,
        dirty: false,
        dirs: Default::default(),
    };
    let words = [
        layout::CONTROL_OFFSET[0] / 8,
        (layout::CONTROL_OFFSET[0] + layout::HEAD_OFFSET) / 8,
        layout::CONTROL_OFFSET[1] / 8,
        (layout::CONTROL_OFFSET[1] + layout::HEAD_OFFSET) / 8,
    ];
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let side = (op >> 7) as usize;
        match op & 0x7f {
            0..=19 => {
                let len = input.u16() as usize % (max_frame + 1);
                send(&mut p, side, len, false);
            }
            20..=27 => {
                let len = input.u16() as usize % (3 * capacity);
                send(&mut p, side, len, true);
            }
            28..=59 => recv(&mut p, side, false),
            60..=65 => recv(&mut p, side, true),
            66..=69 => {
                let _ = p.sides[side].halves().1.arm_doorbell();
            }
            70..=89 => {
                // A ring control word moved by a small step, or given
                // signal bits: the likely lies.
                let w = words[input.u8() as usize % 4];
                let delta = input.u16() as i16 as i64;
                let word = p.word(w);
                let old = word.load(Ordering::SeqCst);
                word.store(old.wrapping_add(delta as u64), Ordering::SeqCst);
                p.dirty = true;
            }
            90..=109 => {
                // A word of a data area: frame headers and payloads.
                let at = HEADER_LEN / 8 + input.u16() as usize;
                let value = input.u64();
                p.word(at).store(value, Ordering::SeqCst);
                p.dirty = true;
            }
            _ => {
                // Any word of the header page, any value.
                let at = input.u16() as usize % (HEADER_LEN / 8);
                let value = input.u64();
                p.word(at).store(value, Ordering::SeqCst);
                p.dirty = true;
            }
        }
    }
});
