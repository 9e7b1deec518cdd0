//! Fuzz target `segment`: opening a shared-memory segment file that a
//! hostile (or crashed) creator wrote, then reading from and writing to it.
//!
//! The input becomes the file `metabridge.fuzz` in a private directory, in
//! one of two ways (chosen by bit 0 of the first byte):
//! - raw: the rest of the input is the whole file (magic, version, length
//!   checks);
//! - structured: a valid header (taken from a segment that `Channel::create`
//!   really wrote) with fuzzed ring capacities, fuzzed ring control words
//!   (the positions a creator left behind), up to three fuzzed header words
//!   anywhere in the header page, optionally a truncated file, and the rest
//!   of the input as the two data areas. That gets the fuzzer past the
//!   header checks to the ring readers.
//!
//! Then `Channel::open`, and on success a few `try_recv` (ring 0, whose
//! frames the creator wrote), `recv_timeout(0)`, `arm_doorbell`, `try_send`
//! and `send_timeout(0)` (ring 1, whose head the creator wrote). Everything must
//! give a value or a typed error: no panic, no out-of-bounds access, no
//! SIGBUS (a file shorter than its header says), no hang, and a message
//! never longer than the configured maximum (or one frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metabridge_fuzz::{scratch_dir, Input};
use metabridge_shm::{
    layout, segment_path, Channel, ChannelConfig, WaitPolicy, FRAME_HEADER, HEADER_LEN,
};
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

const NAME: &str = "fuzz";
// Header fields (as in shm-transport/tests/corrupt.rs, which checks them
// against a real segment): capacities at 16 and 24, total length at 32.
const CAPACITY_AT: [usize; 2] = [16, 24];
const TOTAL_AT: usize = 32;

/// The header page of a segment freshly made by `Channel::create` (no side
/// attached but the creator).
fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let config = config(1 << 30);
        let name = format!("template-{}", std::process::id());
        let creator = Channel::create(&name, &config).expect("create a template segment");
        let bytes = std::fs::read(segment_path(&config.dir, &name)).expect("read it");
        drop(creator); // removes the file: nobody opened it
        bytes[..HEADER_LEN].to_vec()
    })
}

fn config(max_message: u64) -> ChannelConfig {
    ChannelConfig {
        capacity: 4096,
        // Never sleeps longer than a zero timeout allows; never busy-polls.
        wait: WaitPolicy::Sleep,
        liveness_interval: Duration::from_millis(20),
        max_message,
        dir: scratch_dir().to_path_buf(),
        // Named segments: no payload pool.
        pool: 0,
        keep_buffer: metabridge_shm::CHANNEL_BUDGET,
    }
}

fn put(file: &mut [u8], at: usize, bytes: &[u8]) {
    file[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The structured form: a segment file around fuzzed fields.
fn structured(input: &mut Input<'_>, mode: u8) -> Vec<u8> {
    let cap = [
        64usize << ((mode >> 1) & 7), // 64 B to 8 KiB
        64usize << ((mode >> 4) & 7),
    ];
    let total = HEADER_LEN + cap[0] + cap[1];
    let mut file = template().to_vec();
    file.resize(total, 0);
    put(&mut file, CAPACITY_AT[0], &(cap[0] as u64).to_le_bytes());
    put(&mut file, CAPACITY_AT[1], &(cap[1] as u64).to_le_bytes());
    put(&mut file, TOTAL_AT, &(total as u64).to_le_bytes());

    // The four ring words. Bit i of `small` keeps word i small, so that
    // consistent positions (tail a little past head) are easy to reach.
    let small = input.u8();
    let words = [
        layout::CONTROL_OFFSET[0],
        layout::CONTROL_OFFSET[0] + layout::HEAD_OFFSET,
        layout::CONTROL_OFFSET[1],
        layout::CONTROL_OFFSET[1] + layout::HEAD_OFFSET,
    ];
    for (i, at) in words.into_iter().enumerate() {
        let raw = input.u64();
        let w = if small & (1 << i) != 0 {
            raw & 0xffff
        } else {
            raw
        };
        put(&mut file, at, &w.to_le_bytes());
    }
    // Arbitrary header words (magic, version, claims, pids, ...).
    for _ in 0..input.u8() % 4 {
        let at = input.u16() as usize % (HEADER_LEN - 7);
        let value = input.u64();
        put(&mut file, at, &value.to_le_bytes());
    }
    let cut = input.u16() as usize;
    let data = input.rest();
    let n = data.len().min(cap[0] + cap[1]);
    put(&mut file, HEADER_LEN, &data[..n]);
    if small & 0x10 != 0 {
        // A file shorter than its header says: mapping it whole would let a
        // read of the data areas fault (SIGBUS). Open must refuse it.
        file.truncate(total.saturating_sub(cut.max(1)));
    }
    file
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let bytes = if mode & 1 == 0 {
        input.rest().to_vec()
    } else {
        structured(&mut input, mode)
    };
    let max_message = if mode & 0x80 != 0 { 256 } else { 1 << 20 };
    let config = config(max_message);
    let path = segment_path(&config.dir, NAME);
    {
        let mut f = std::fs::File::create(&path).expect("create the segment file");
        f.write_all(&bytes).expect("write the segment file");
    }
    // `open` unlinks the name once it has attached; on an error we do.
    let opened = Channel::open(NAME, &config);
    let _ = std::fs::remove_file(&path);
    let Ok(mut ch) = opened else {
        return;
    };
    // A message is at most `max_message` long, except that one frame read
    // in place is checked neither against it nor against the largest frame
    // a sender makes (a quarter of the ring): only against the published
    // data and the ring (found by this target and reported, see
    // fuzz/artifacts-found/segment/). So the bound is ring 0's capacity
    // (validated by open) less a frame header.
    let cap0 = u64::from_le_bytes(
        bytes[CAPACITY_AT[0]..CAPACITY_AT[0] + 8]
            .try_into()
            .unwrap(),
    );
    let longest = max_message.max(cap0 - FRAME_HEADER as u64);
    for _ in 0..6 {
        match ch.try_recv() {
            Ok(Some(m)) => {
                assert!(m.len() as u64 <= longest, "message over the maximum");
                // Touch every byte: it must be inside the mapping.
                std::hint::black_box(m.iter().fold(0u8, |a, &b| a ^ b));
            }
            Ok(None) => break,
            // Errors must stay errors, not turn into panics later.
            Err(_) => {}
        }
    }
    if let Ok(m) = ch.recv_timeout(Duration::ZERO) {
        assert!(m.len() as u64 <= longest);
    }
    let _ = ch.halves().1.arm_doorbell();
    let _ = ch.halves().0.try_send(b"pong");
    // (Not `send` nor `send_with`: they wait for room as long as it takes,
    // by design, and a creator that never reads never makes room.)
    let _ = ch.halves().0.send_timeout(&[7u8; 40], Duration::ZERO);
    let big = vec![1u8; ch.halves().0.max_frame()];
    let _ = ch.halves().0.try_send(&big);
    let _ = ch.halves().0.send_timeout(&big, Duration::ZERO);
});
