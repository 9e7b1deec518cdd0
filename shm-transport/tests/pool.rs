//! Payload pools: bytes placed by one side are read back by the other,
//! flagged on the message that refers to them; every location a peer can
//! send outside the pool's rules is `Error::Corrupt`, never an access.

// The channel API is not built under `--cfg loom` (only the ring is).
#![cfg(not(loom))]

use metabridge_shm::{Channel, ChannelConfig, Error, POOL_ALIGN};
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

#[test]
fn placed_bytes_come_back_with_the_message_that_refers_to_them() {
    let (mut a, mut b) = pair(8 << 20);
    let first: Vec<u8> = (0..3 << 20).map(|i| (i * 7) as u8).collect();
    let second: Vec<u8> = (0..100_000).map(|i| (i * 13) as u8).collect();
    let (tx, _) = a.halves();
    let mut w = tx.pool_writer().expect("a pool");
    let at1 = w.place(&first).unwrap();
    let at2 = w.place(&second).unwrap();
    assert!(w.placed());
    assert_eq!(at1, (0, first.len() as u64));
    assert_eq!(at2.0 % POOL_ALIGN as u64, 0);
    assert!(at2.0 >= at1.1);
    tx.refer_to_pool();
    tx.send(b"where: at1, at2").unwrap();
    a.send(b"a plain one").unwrap();

    let (_, rx) = b.halves();
    let mut buf = metabridge_shm::ReusedBuffer::new();
    assert!(rx.try_recv_into(&mut buf).unwrap());
    assert_eq!(&buf[..], b"where: at1, at2");
    assert!(rx.refers_to_pool());
    let r = rx.pool_reader().expect("the peer has a pool");
    assert_eq!(r.read(at1.0, at1.1).unwrap(), first);
    let mut into = vec![0u8; second.len()];
    r.read_into(at2.0, &mut into).unwrap();
    assert_eq!(into, second);
    // The flag is for one message only.
    assert!(rx.try_recv_into(&mut buf).unwrap());
    assert_eq!(&buf[..], b"a plain one");
    assert!(!rx.refers_to_pool());
}

#[test]
fn every_location_outside_the_rules_is_corrupt() {
    let (a, b) = pair(1 << 20);
    drop(a);
    let r = b.pool_reader().unwrap();
    let pool = 1u64 << 20;
    for (what, offset, len) in [
        ("misaligned", 4, 16),
        ("past the end", pool - 8, 16),
        ("starting past the end", pool + 8, 0),
        ("overflowing", u64::MAX - 7, 16),
        ("longer than the pool", 0, pool + 1),
    ] {
        match r.read(offset, len) {
            Err(Error::Corrupt(msg)) => println!("{what}: {msg}"),
            other => panic!("{what}: expected Corrupt, got {:?}", other.map(|v| v.len())),
        }
    }
    // A location inside the pool that nobody wrote reads as zeros.
    assert_eq!(r.read(4096, 8).unwrap(), [0; 8]);
}

#[test]
fn a_message_over_the_limit_is_corrupt_before_any_copy() {
    let config = ChannelConfig {
        capacity: 64 * 1024,
        pool: 1 << 20,
        max_message: 1000,
        ..Default::default()
    };
    let (_a, fd) = Channel::create_memfd(&config).unwrap();
    let b = Channel::from_fd(fd.as_fd(), &config).unwrap();
    let r = b.pool_reader().unwrap();
    assert!(matches!(r.read(0, 1001), Err(Error::Corrupt(_))));
    assert_eq!(r.read(0, 1000).unwrap().len(), 1000);
}

#[test]
fn a_full_pool_says_so_and_bytes_stay_in_line() {
    let (a, _b) = pair(1 << 20);
    let mut w = a.pool_writer().unwrap();
    assert!(w.place(&vec![1u8; (1 << 20) + 1]).is_none());
    assert!(!w.placed());
    assert!(w.place(&vec![1u8; (1 << 19) + 1]).is_some());
    // The next placement starts on the next page.
    assert!(
        w.place(&vec![1u8; (1 << 19) - 1]).is_none(),
        "aligned past the end"
    );
    assert!(w.place(&vec![1u8; (1 << 19) - POOL_ALIGN]).is_some());
}

#[test]
fn given_back_pages_are_reserved_again_on_the_next_use() {
    let (mut a, mut b) = pair(4 << 20);
    for round in 0..3u8 {
        let data = vec![round; 2 << 20];
        let (tx, _) = a.halves();
        let mut w = tx.pool_writer().unwrap();
        let at = w.place(&data).unwrap();
        tx.refer_to_pool();
        tx.send(b"x").unwrap();
        let (_, rx) = b.halves();
        let mut buf = metabridge_shm::ReusedBuffer::new();
        assert!(rx.try_recv_into(&mut buf).unwrap());
        assert_eq!(rx.pool_reader().unwrap().read(at.0, at.1).unwrap(), data);
        a.halves().0.give_back_pool();
    }
}

#[test]
fn channels_without_a_pool_have_no_writer_or_reader() {
    let (a, b) = pair(0);
    assert!(a.pool_writer().is_none());
    assert!(b.pool_reader().is_none());
}

/// This process's resident shared memory, in KiB.
fn rss_shmem_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A location far into the pool maps its own pages, not everything below
/// it: a peer's small read at the end of a 256 MiB pool must not make us
/// allocate the pool.
#[test]
fn a_far_location_maps_only_its_own_pages() {
    let (_a, b) = pair(256 << 20);
    let r = b.pool_reader().unwrap();
    let before = rss_shmem_kib();
    assert_eq!(r.read((256 << 20) - 4096, 64).unwrap(), [0; 64]);
    let grown = rss_shmem_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "one small read mapped {grown} KiB");
}
