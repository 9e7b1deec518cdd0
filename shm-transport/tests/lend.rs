//! Lent blocks: a receiver that keeps a block of the peer's pool reads it
//! in place, the writer leaves it alone until it is dropped, and every
//! pool is unwritable outside a placement's copy.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

use metabridge_shm::{
    Channel, ChannelConfig, ReusedBuffer, WriteGuard, HOLD_SLOTS, POOL_ALIGN, POOL_GUARD_ENV,
};
use std::os::fd::AsFd;

fn pair(pool: usize) -> (Channel, Channel) {
    let config = ChannelConfig {
        capacity: 64 * 1024,
        pool,
        ..Default::default()
    };
    let (a, fd) = Channel::create_memfd(&config).unwrap();
    let b = Channel::from_fd(fd.as_fd(), &config).unwrap();
    (a, b)
}

/// `a` places `bytes` and sends a message referring to them; `b` receives
/// it. Returns where they lie.
fn send_placed(a: &mut Channel, b: &mut Channel, bytes: &[u8]) -> Option<(u64, u64)> {
    let (tx, _) = a.halves();
    let mut w = tx.pool_writer().unwrap();
    let at = w.place(bytes);
    if at.is_some() {
        tx.refer_to_pool();
    }
    tx.send(b"m").unwrap();
    let mut buf = ReusedBuffer::new();
    assert!(b.halves().1.try_recv_into(&mut buf).unwrap());
    at
}

#[test]
fn a_lent_block_is_left_alone_until_dropped() {
    let (mut a, mut b) = pair(4 << 20);
    let first = vec![1u8; 300_000];
    let at = send_placed(&mut a, &mut b, &first).unwrap();
    assert_eq!(at.0, 0);
    let kept = b.pool_reader().unwrap().lend(at.0, at.1).unwrap().unwrap();
    assert_eq!(kept.as_slice(), &first[..]);
    b.send(b"reply").unwrap();
    a.recv().unwrap();
    // Later messages go around it, as many as there are.
    for round in 2..6u8 {
        let next = vec![round; 300_000];
        let at2 = send_placed(&mut a, &mut b, &next).unwrap();
        assert!(
            at2.0 >= at.1,
            "placed at {} over a block lent up to {}",
            at2.0,
            at.1
        );
        assert_eq!(at2.0 % POOL_ALIGN as u64, 0);
        assert_eq!(b.pool_reader().unwrap().read(at2.0, at2.1).unwrap(), next);
        assert_eq!(
            kept.as_slice(),
            &first[..],
            "a lent block changed (round {round})"
        );
        b.send(b"reply").unwrap();
        a.recv().unwrap();
    }
    // Given back: the pool's start is used again, and idle pages can go.
    drop(kept);
    assert_eq!(send_placed(&mut a, &mut b, &first).unwrap().0, 0);
}

#[test]
fn pages_lent_are_not_given_back() {
    let (mut a, mut b) = pair(4 << 20);
    let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let at = send_placed(&mut a, &mut b, &data).unwrap();
    let kept = b.pool_reader().unwrap().lend(at.0, at.1).unwrap().unwrap();
    a.halves().0.give_back_pool();
    assert_eq!(
        kept.as_slice(),
        &data[..],
        "a lent block's pages were punched out"
    );
    drop(kept);
    a.halves().0.give_back_pool();
}

#[test]
fn a_block_that_does_not_fit_beside_the_lent_ones_goes_in_line() {
    let (mut a, mut b) = pair(1 << 20);
    let at = send_placed(&mut a, &mut b, &vec![7u8; 600 << 10]).unwrap();
    let kept = b.pool_reader().unwrap().lend(at.0, at.1).unwrap().unwrap();
    b.send(b"reply").unwrap();
    a.recv().unwrap();
    assert_eq!(send_placed(&mut a, &mut b, &vec![8u8; 600 << 10]), None);
    assert!(kept.as_slice().iter().all(|&x| x == 7));
}

#[test]
fn a_full_hold_table_refuses_more_lends() {
    let (mut a, mut b) = pair(1 << 20);
    let at = send_placed(&mut a, &mut b, &vec![3u8; 4096]).unwrap();
    let r = b.pool_reader().unwrap();
    let held: Vec<_> = (0..HOLD_SLOTS)
        .map(|_| r.lend(at.0, at.1).unwrap().expect("a free slot"))
        .collect();
    assert!(
        r.lend(at.0, at.1).unwrap().is_none(),
        "more lends than slots"
    );
    drop(held);
    assert!(r.lend(at.0, at.1).unwrap().is_some());
}

#[test]
fn lending_a_location_outside_the_rules_is_corrupt() {
    let (_a, b) = pair(1 << 20);
    let r = b.pool_reader().unwrap();
    for (offset, len) in [(100, 16), (1 << 20, 16), (0, (1 << 20) + 1)] {
        assert!(
            matches!(r.lend(offset, len), Err(metabridge_shm::Error::Corrupt(_))),
            "lent {len} bytes at {offset}"
        );
    }
}

/// A write into either pool of a channel outside a placement's copy
/// faults its writer (the peer's pool is read-only, our own guarded by a
/// protection key or read-only pages), and placements still work. Run
/// under both guards: this process uses a protection key where the CPU
/// has them; a child runs this whole binary again with `mprotect` forced.
#[test]
fn pools_cannot_be_written_outside_a_placement() {
    let forced = std::env::var(POOL_GUARD_ENV).is_ok();
    if forced {
        assert_eq!(WriteGuard::of_process(), WriteGuard::Protect);
    }
    // A pool size no other test of this binary uses, to find ours.
    let pool = (3 << 20) + 5 * 4096;
    let (mut a, mut b) = pair(pool);
    send_placed(&mut a, &mut b, &vec![1u8; 2 << 20]).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let starts: Vec<usize> = maps
        .lines()
        .filter(|l| l.contains("metabridge-channel"))
        .filter_map(|l| {
            let (lo, hi) = l.split_whitespace().next()?.split_once('-')?;
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            match hi - lo {
                len if len == pool => Some(vec![lo]),
                len if len == 2 * pool => Some(vec![lo, lo + pool]),
                _ => None,
            }
        })
        .flatten()
        .collect();
    // Two mappings (one a side) of two pools each.
    assert_eq!(
        starts.len(),
        4,
        "four pools in this process's maps:\n{maps}"
    );
    for at in starts {
        assert_eq!(
            write_in_a_child(at),
            Some(libc::SIGSEGV),
            "a write at {at:#x}"
        );
    }
    // The guard is put back after every placement: place again and check
    // one more write faults, then that the bytes arrived.
    let at = send_placed(&mut a, &mut b, &vec![2u8; 1 << 20]).unwrap();
    let reader = b.pool_reader().unwrap();
    assert_eq!(reader.read(at.0, at.1).unwrap(), vec![2u8; 1 << 20]);
    drop((a, b));
    if !forced {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env(POOL_GUARD_ENV, "mprotect")
            .args(["--test-threads", "2"])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "this binary's tests under mprotect: {status}"
        );
    }
}

/// Forks a child that writes one byte at address `at` of this process's
/// memory; returns the signal that killed it (`None`: it wrote and
/// exited).
fn write_in_a_child(at: usize) -> Option<i32> {
    // SAFETY: the child only writes one byte and exits with `_exit`
    // (no allocation, no lock, no destructor: safe after `fork` in a
    // threaded process); the parent waits for it.
    unsafe {
        match libc::fork() {
            0 => {
                std::ptr::write_volatile(at as *mut u8, 7);
                libc::_exit(0);
            }
            pid => {
                assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
                let mut status = 0;
                assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
            }
        }
    }
}
