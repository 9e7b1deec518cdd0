//! Property tests of framing and wraparound: any sequence of sends (of 0 to
//! 3 rings' worth of bytes) and receives on a small ring delivers exactly
//! the messages sent, in order, as a FIFO queue would.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

mod common;

use common::{payload, unique, TestDir};
use metabridge_shm::{
    frame_len, max_frame_payload, Channel, Error, Receiver, Sender, FRAME_HEADER,
};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Clone, Debug)]
enum Op {
    /// Send a message of this many bytes.
    Send(usize),
    /// Receive one message if there is one.
    Recv,
}

fn op(capacity: usize) -> impl Strategy<Value = Op> {
    let small = max_frame_payload(capacity);
    prop_oneof![
        4 => (0..=small).prop_map(Op::Send),
        1 => (0..3 * capacity).prop_map(Op::Send),
        4 => Just(Op::Recv),
    ]
}

fn case() -> impl Strategy<Value = (usize, Vec<Op>)> {
    prop_oneof![Just(256usize), Just(1024usize)]
        .prop_flat_map(|capacity| (Just(capacity), prop::collection::vec(op(capacity), 1..80)))
}

/// Receives one message now and checks it against the model's front.
fn recv_one(rx: &mut Receiver, model: &mut VecDeque<Vec<u8>>) -> Result<(), TestCaseError> {
    let want = model.pop_front();
    let got = rx
        .try_recv()
        .map_err(|e| TestCaseError::fail(format!("try_recv: {e}")))?;
    match (got, want) {
        (None, None) => Ok(()),
        (Some(m), Some(w)) => {
            prop_assert_eq!(m.len(), w.len());
            prop_assert!(*m == w[..], "message {:?} differs", common::seq_of(&w));
            Ok(())
        }
        (got, want) => Err(TestCaseError::fail(format!(
            "received {:?}, the model says {:?}",
            got.map(|m| m.len()),
            want.map(|w| w.len())
        ))),
    }
}

fn run(capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = TestDir::new("prop");
    let name = unique("prop");
    let a = Channel::create(&name, &dir.config(capacity)).unwrap();
    let b = Channel::open(&name, &dir.config(capacity)).unwrap();
    let (mut tx, _a_rx): (Sender, Receiver) = a.split();
    let (_b_tx, mut rx) = b.split();
    let max = tx.max_frame();
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut seq = 0u64;
    for op in ops {
        match *op {
            Op::Recv => recv_one(&mut rx, &mut model)?,
            Op::Send(len) if len <= max => {
                let msg = payload(capacity as u64, seq, len);
                seq += 1;
                // One frame: try_send, making room by receiving (in order)
                // while the ring is full.
                loop {
                    match tx.try_send(&msg) {
                        Ok(()) => break,
                        Err(Error::Full) => {
                            prop_assert!(!model.is_empty(), "Full with nothing in the ring");
                            recv_one(&mut rx, &mut model)?;
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("try_send: {e}"))),
                    }
                }
                model.push_back(msg);
            }
            Op::Send(len) => {
                // Several frames, maybe more than the ring: a helper thread
                // sends while this one drains everything up to it.
                let msg = payload(capacity as u64, seq, len);
                seq += 1;
                model.push_back(msg.clone());
                let result = std::thread::scope(|s| {
                    let sender = s.spawn(|| tx.send_timeout(&msg, Duration::from_secs(20)));
                    let mut outcome = Ok(());
                    while !model.is_empty() {
                        let want = model.pop_front().unwrap();
                        match rx.recv_timeout(Duration::from_secs(20)) {
                            Ok(m) if *m == want[..] => {}
                            Ok(m) => {
                                outcome =
                                    Err(format!("got {} bytes, want {}", m.len(), want.len()));
                                break;
                            }
                            Err(e) => {
                                outcome = Err(format!("recv: {e}"));
                                break;
                            }
                        }
                    }
                    let sent = sender.join().unwrap();
                    outcome.and(sent.map_err(|e| format!("send: {e}")))
                });
                result.map_err(TestCaseError::fail)?;
            }
        }
    }
    while !model.is_empty() {
        recv_one(&mut rx, &mut model)?;
    }
    prop_assert!(rx.try_recv().unwrap().is_none());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn messages_arrive_whole_and_in_order((capacity, ops) in case()) {
        run(capacity, &ops)?;
    }

    #[test]
    fn frame_len_is_aligned_and_tight(len in 0usize..(1 << 30)) {
        let f = frame_len(len);
        prop_assert_eq!(f % 8, 0);
        prop_assert!(f >= FRAME_HEADER + len);
        prop_assert!(f < 16 + len);
    }
}

#[test]
fn frame_len_small_values() {
    for len in 0..4096 {
        let f = frame_len(len);
        assert_eq!(f % 8, 0, "{len}");
        assert!(f >= 8 + len && f < 16 + len, "{len} -> {f}");
    }
    assert_eq!(frame_len(0), 8);
    assert_eq!(frame_len(1), 16);
    assert_eq!(frame_len(8), 16);
    assert_eq!(frame_len(9), 24);
    for cap in [64usize, 256, 1024, 1 << 20, 1 << 30] {
        assert_eq!(
            frame_len(max_frame_payload(cap)),
            cap / 4,
            "a full frame is a quarter of the ring"
        );
    }
}
