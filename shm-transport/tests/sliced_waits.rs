//! A side that waits in many short waits (slices no longer than the
//! liveness interval, as an interruptible caller does) still learns that
//! its peer was killed: `PeerGone`, never a run of timeouts until its own
//! deadline. Both directions: waiting for a frame, and waiting for room.
//!
//! The peer is this test binary re-executed (`child_entry`); each is
//! killed and reaped by its guard when its test ends, passes or fails.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

mod common;

use common::{child_main, unique, ChildProc, TestDir};
use metabridge_shm::{Channel, ChannelConfig, Error};
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    child_main(&[("open_and_sleep", role_open_and_sleep)]);
}

/// Opens `MB_NAME`, then sleeps until killed (never reads, never sends).
fn role_open_and_sleep() -> Result<(), String> {
    let name = common::env("MB_NAME")?;
    let config = ChannelConfig {
        dir: common::env("MB_DIR")?.into(),
        ..Default::default()
    };
    let ch = Channel::open(&name, &config).map_err(|e| format!("open {name}: {e}"))?;
    println!("MB:READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = &ch;
    }
}

/// A channel whose other side is a child that opened it and sleeps.
fn pair(tag: &str) -> (Channel, ChildProc, TestDir) {
    let dir = TestDir::new(tag);
    let name = unique(tag);
    let ours = Channel::create(&name, &dir.config(4096)).expect("create");
    let mut child = ChildProc::spawn(
        "open_and_sleep",
        &[
            ("MB_DIR", dir.path().display().to_string()),
            ("MB_NAME", name),
        ],
    );
    child.expect_line("MB:READY", Duration::from_secs(30));
    (ours, child, dir)
}

/// Waits in slices of `slice` (`wait` is one slice) until something other
/// than a timeout comes, at most 30 s: that outcome, and how many slices
/// timed out after the kill.
fn wait_in_slices(
    slice: Duration,
    mut wait: impl FnMut(Instant) -> Result<(), Error>,
) -> (Result<(), Error>, u32) {
    let give_up = Instant::now() + Duration::from_secs(30);
    let mut timeouts = 0;
    loop {
        match wait(Instant::now() + slice) {
            Err(Error::Timeout) if Instant::now() < give_up => timeouts += 1,
            other => return (other, timeouts),
        }
    }
}

/// Receiving in slices of 5 ms and of the liveness interval itself (the
/// 20 ms that made the check never come due: each slice's deadline came
/// first).
#[test]
fn a_receiver_waiting_in_short_slices_sees_its_peer_killed() {
    for slice in [Duration::from_millis(5), Duration::from_millis(20)] {
        let (mut ours, mut child, _dir) = pair("sliced-recv");
        let pid = child.pid;
        child.kill_and_reap();
        let (r, timeouts) =
            wait_in_slices(slice, |until| ours.halves().1.recv_until(until).map(|_| ()));
        println!("recv in {slice:?} slices: {r:?} after {timeouts} timed-out slices");
        assert!(
            matches!(r, Err(Error::PeerGone { pid: p }) if p == pid),
            "{r:?}"
        );
    }
}

/// Waiting for room in a full ring, in slices of the liveness interval.
#[test]
fn a_sender_waiting_in_short_slices_sees_its_peer_killed() {
    let (mut ours, mut child, _dir) = pair("sliced-send");
    while ours.halves().0.try_send(&[0xab; 200]).is_ok() {}
    let pid = child.pid;
    child.kill_and_reap();
    let (r, timeouts) = wait_in_slices(Duration::from_millis(20), |until| {
        ours.halves().0.send_until(&[0xcd; 200], until)
    });
    println!("send in 20 ms slices: {r:?} after {timeouts} timed-out slices");
    assert!(
        matches!(r, Err(Error::PeerGone { pid: p }) if p == pid),
        "{r:?}"
    );
}
