//! Large byte strings over shared memory, out of line in the payload
//! pools: the right bytes whatever type decodes them, many at once past
//! the process cap, and their memory back once the calls are over.

mod common;

use common::{rss_kib, TestEnv};
use metabridge::{Bin, Blob, TransportKind};
use std::time::{Duration, Instant};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn bumped(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b.wrapping_add(1)).collect()
}

#[test]
fn large_bytes_come_back_whole_whatever_decodes_them() {
    let mut env = TestEnv::new("payloads");
    env.start_service("svc", &[]);
    let c = env.client("svc", TransportKind::Shm, "a");
    assert_eq!(c.transport_name(), "shm");
    for len in [64 << 10, (1 << 20) + 3, 8 << 20] {
        let data = pattern(len, len as u8);
        // Bin resolves the pool's bytes itself...
        let back: Bin<Vec<u8>> = c.call("bump", (Bin(&data[..]),)).unwrap();
        assert!(back.0 == bumped(&data), "{len} bytes through Bin");
        // ...a dynamic value gets them put back in line...
        let value: rmpv::Value = c.call("bump", (Bin(&data[..]),)).unwrap();
        assert!(
            value == rmpv::Value::Binary(bumped(&data)),
            "{len} bytes as rmpv::Value"
        );
        // ...and so does a caller that decodes the result itself later,
        // away from the channel (the Python package, the CLI).
        let args = metabridge::to_msgpack(&(Bin(&data[..]),)).unwrap();
        let raw = c
            .call_encoded("bump", &args, &[0x80], None)
            .unwrap_or_else(|e| panic!("{len}: {e}"));
        let later: Bin<Vec<u8>> = rmp_serde::from_slice(&raw).unwrap();
        assert!(later.0 == bumped(&data), "{len} bytes decoded later");
    }
    // Small calls on the same channel after large ones are unaffected.
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "ax");
}

/// One round: 32 clients, each two 8 MiB calls at once, then closed.
fn thirty_two_clients(env: &TestEnv) {
    let clients: Vec<_> = (0..32)
        .map(|_| env.client("svc", TransportKind::Shm, "a"))
        .collect();
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            s.spawn(move || {
                let data = pattern(8 << 20, i as u8);
                for _ in 0..2 {
                    let back: Bin<Vec<u8>> = c.call("bump", (Bin(&data[..]),)).unwrap();
                    assert!(back.0 == bumped(&data), "client {i}");
                }
            });
        }
    });
    for c in clients {
        c.close();
    }
}

/// 32 × 8 MiB each way is past the process cap on retained memory
/// (256 MiB): some strings go out of line, the rest stream through the
/// rings, and every call gets its own bytes back. Closed channels take
/// their pools and buffers with them, and the workers' idle tick gives
/// back the rest: twice over, the service comes back to its size. (The
/// service's allocator maps every block of 1 MiB or more on its own and
/// unmaps it when freed, so that its RSS is what the service holds, not
/// what the allocator keeps for later.)
#[test]
fn thirty_two_concurrent_8_mib_calls_all_come_back_and_their_memory_goes() {
    let mut env = TestEnv::new("pool-cap");
    let pid = env.start_service("svc", &[("MALLOC_MMAP_THRESHOLD_", "1048576")]);
    let warm = env.client("svc", TransportKind::Shm, "a");
    assert_eq!(warm.call::<String>("echo", ("w",)).unwrap(), "aw");
    let before = rss_kib(pid);
    for round in 1..=2 {
        thirty_two_clients(&env);
        wait_rss_below(
            pid,
            before + 48 * 1024,
            &format!("round {round}: 32 closed clients"),
        );
    }
    assert_eq!(warm.call::<String>("echo", ("z",)).unwrap(), "az");
}

/// A client SIGKILLed while its calls keep both payload pools in use: the
/// service notices the peer gone, drops the channel, and the pools' memory
/// (shared by both processes) goes with its last mapping.
#[test]
fn a_client_killed_with_its_pools_in_use_leaves_nothing_behind() {
    use std::io::BufRead;
    let mut env = TestEnv::new("pool-kill");
    let pid = env.start_service("svc", &[("MALLOC_MMAP_THRESHOLD_", "1048576")]);
    let warm = env.client("svc", TransportKind::Shm, "a");
    assert_eq!(warm.call::<String>("echo", ("w",)).unwrap(), "aw");
    let before = rss_kib(pid);
    let mut child = env
        .command(common::TEST_SERVICE)
        .args(["bump-forever", "svc", "32"])
        .env("METABRIDGE_TRANSPORT", "shm")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let client = child.id();
    env.adopt(child);
    // The service maps the client's pool and fills its own: it grows.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rss_kib(pid) < before + 48 * 1024 {
        assert!(
            Instant::now() < deadline,
            "the service never took in the client's 32 MiB calls"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    common::sigkill(client);
    wait_rss_below(pid, before + 24 * 1024, "a killed client's channel");
    assert_eq!(warm.call::<String>("echo", ("z",)).unwrap(), "az");
}

/// The fixture's `checksum`.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add((i as u64 + 1).wrapping_mul(b as u64))
    })
}

/// `Blob`s read in place on both sides: the service keeps blocks of the
/// client's pool across later calls, the client keeps blocks of the
/// service's; neither side's later messages ever write over a block the
/// other still holds, and released blocks come back.
#[test]
fn blobs_kept_lent_are_never_written_over() {
    let mut env = TestEnv::new("blobs");
    env.start_service("svc", &[]);
    let c = env.client("svc", TransportKind::Shm, "a");
    let kept: Vec<Vec<u8>> = (0..3).map(|i| pattern(3 << 20, 10 + i)).collect();
    for data in &kept {
        assert!(
            c.call::<bool>("keep", (Bin(&data[..]),)).unwrap(),
            "not lent"
        );
    }
    let mut mine = Vec::new();
    for round in 0..6u8 {
        let data = pattern((2 << 20) + round as usize * 4099, round);
        let back: Blob = c.call("bump_blob", (Bin(&data[..]),)).unwrap();
        assert!(back.is_lent(), "round {round}: the result was copied");
        assert!(back == bumped(&data), "round {round}: wrong bytes");
        mine.push((back, bumped(&data)));
        // Every block held so far, on either side, is still what it was.
        for (i, (b, want)) in mine.iter().enumerate() {
            assert!(
                *b == *want,
                "round {round}: kept result {i} was written over"
            );
        }
        let sums: Vec<u64> = c.call("kept_sums", ()).unwrap();
        let want: Vec<u64> = kept.iter().map(|d| checksum(d)).collect();
        assert_eq!(
            sums, want,
            "round {round}: the service's kept blocks changed"
        );
    }
    assert!(c.call::<u64>("lent_bytes", ()).unwrap() >= 9 << 20);
    assert_eq!(c.call::<usize>("release_kept", ()).unwrap(), 3);
    assert_eq!(c.call::<u64>("lent_bytes", ()).unwrap(), 0);
    assert!(metabridge_shm::lent_bytes() >= 12 << 20);
    drop(mine);
    // Released, the pools' starts serve again, with the same bytes out.
    let data = pattern(4 << 20, 99);
    let back: Blob = c.call("bump_blob", (Bin(&data[..]),)).unwrap();
    assert!(back == bumped(&data));
    // Over TCP the same endpoints own their bytes.
    let t = env.client("svc", TransportKind::Tcp, "a");
    let back: Blob = t.call("bump_blob", (Bin(&data[..]),)).unwrap();
    assert!(!back.is_lent() && back == bumped(&data));
}

/// A client SIGKILLed while it holds blocks of the service's pool lent:
/// the service's pool goes with the channel, as if nothing were lent.
#[test]
fn a_client_killed_holding_lent_blocks_leaves_nothing_behind() {
    use std::io::BufRead;
    let mut env = TestEnv::new("lent-kill");
    let pid = env.start_service("svc", &[("MALLOC_MMAP_THRESHOLD_", "1048576")]);
    let warm = env.client("svc", TransportKind::Shm, "a");
    assert_eq!(warm.call::<String>("echo", ("w",)).unwrap(), "aw");
    let before = rss_kib(pid);
    let mut child = env
        .command(common::TEST_SERVICE)
        .args(["hold-forever", "svc", "16"])
        .env("METABRIDGE_TRANSPORT", "shm")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let client = child.id();
    env.adopt(child);
    // 48 MiB of the service's pool are lent to the client: the idle tick
    // cannot give them back.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rss_kib(pid) > before + 40 * 1024,
        "the lent blocks were given back"
    );
    common::sigkill(client);
    wait_rss_below(pid, before + 24 * 1024, "a killed client's lent blocks");
    assert_eq!(warm.call::<String>("echo", ("z",)).unwrap(), "az");
}

/// Waits (at most 30 s: the service's idle tick and its noticing of dead
/// or closed peers, on a loaded machine) until process `pid` holds less
/// than `bound` KiB; fails naming `what` kept it larger.
fn wait_rss_below(pid: u32, bound: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = rss_kib(pid);
        if now < bound {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} left the service at {} MiB, over its bound of {} MiB",
            now / 1024,
            bound / 1024
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
