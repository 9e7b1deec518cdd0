//! Fuzz target `mesh_helpers`: the frames a program and its mesh helper
//! (`metabridge-mesh agent` and `relay`) read from each other's pipes.
//! The helper is a process of the same user, possibly buggy: whatever it
//! writes must give a typed error, never a panic or an allocation sized by
//! a length it announced but did not send.
//!
//! Input: one byte choosing which reader (relay setup, call, answer, or
//! the agent's report), then the stream. Frames are read until the first
//! error or the end; each one read must encode again to a frame that reads
//! back to the same encoding. While reading, the largest single allocation
//! stays within a constant of the stream's length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metabridge::{
    read_relay_frame, write_relay_frame, AgentReport, RelayAnswer, RelayCall, RelaySetup,
};
use metabridge_fuzz::{Input, PeakAlloc};
use serde::{de::DeserializeOwned, Serialize};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// What reading may allocate beyond the stream's own length, whatever
/// length a frame or a sequence inside it declares: the body's first chunk
/// (64 KiB) and serde's cautious preallocation of a sequence (at most
/// 1 MiB), with room for the decoder's own small allocations.
const SLACK: usize = 2 * 1024 * 1024;

/// Reads frames of `T` from `stream` until it fails or ends; each read
/// frame round-trips.
fn frames<T: Serialize + DeserializeOwned>(stream: &[u8]) {
    let mut r = stream;
    loop {
        PeakAlloc::arm();
        let got = read_relay_frame::<T>(&mut r);
        let peak = PeakAlloc::disarm();
        assert!(
            peak <= stream.len() * 2 + SLACK,
            "a read allocated {peak} bytes for a {}-byte stream",
            stream.len()
        );
        let Ok(Some(frame)) = got else { return };
        round_trip(&frame, |b| read_relay_frame::<T>(&mut &b[..]).ok().flatten(), |w, v| {
            write_relay_frame(w, v)
        });
    }
}

/// `frame` written, read back and written again gives the same bytes.
fn round_trip<T>(
    frame: &T,
    read: impl Fn(&[u8]) -> Option<T>,
    write: impl Fn(&mut Vec<u8>, &T) -> std::io::Result<()>,
) {
    let mut once = Vec::new();
    write(&mut once, frame).expect("a frame read writes again");
    let back = read(&once).expect("a written frame reads back");
    let mut twice = Vec::new();
    write(&mut twice, &back).expect("and writes again");
    assert_eq!(once, twice, "a frame changed on its way back");
}

fn reports(stream: &[u8]) {
    let mut r = stream;
    loop {
        PeakAlloc::arm();
        let got = AgentReport::read_from(&mut r);
        let peak = PeakAlloc::disarm();
        assert!(peak <= stream.len() * 2 + SLACK, "a report read allocated {peak} bytes");
        let Ok(Some(report)) = got else { return };
        round_trip(&report, |b| AgentReport::read_from(&mut &b[..]).ok().flatten(), |w, v| {
            v.write_to(w)
        });
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8();
    let stream = input.rest();
    match which % 4 {
        0 => frames::<RelaySetup>(stream),
        1 => frames::<RelayCall>(stream),
        2 => frames::<RelayAnswer>(stream),
        _ => reports(stream),
    }
});
