//! The shared-memory segments of a channel seen from a hostile or buggy
//! client, with real processes: sealed memfds that cannot be truncated or
//! resized under the service, and reply memory that is given back.
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure. No
//! assertion depends on timing.

mod common;

use common::{entry, handshake, rss_kib, TestEnv};
use metabridge::TransportKind;
use metabridge_shm::{Channel, ChannelConfig};

use std::os::fd::AsFd;
use std::time::Duration;

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// A same-user client that truncates its segment after the handshake used
/// to kill the service with SIGBUS (exit 135). Segments are now sealed
/// memfds: the truncation fails, and the service serves on.
#[test]
fn a_client_cannot_truncate_its_segment_under_the_service() {
    let mut env = TestEnv::new("truncate");
    let pid = env.start_service("svc", &[]);
    let e = entry(&env, "svc");
    let (mut ours, fd) = Channel::create_memfd(&ChannelConfig::default()).unwrap();
    let (status, why) = handshake(&e.control_socket, 2, Some(fd.as_fd()));
    assert_eq!(status, 0, "{why}");
    let file = std::fs::File::from(fd);
    let err = file.set_len(4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    // The service reads the whole ring: send a request that fills it.
    let mut request = Vec::new();
    let ctor = metabridge::envelope::encode_ctor(&[0x92, 0xa1, b'p', 1], &[0x80]);
    let text = "x".repeat(200_000);
    let mut args = vec![0x91];
    args.extend(metabridge::to_msgpack(&text).unwrap());
    metabridge::envelope::encode_call(
        &mut request,
        "echo",
        &args,
        &[0x80],
        &ctor,
        e.token.as_deref(),
    );
    ours.send(&request).unwrap();
    let reply = ours.recv_timeout(Duration::from_secs(20)).unwrap();
    let echoed: String = metabridge::envelope::decode_result(&reply).unwrap();
    assert_eq!(echoed.len(), 200_001);
    assert!(alive(pid));
    let c = env.connect("svc").arg("a").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
}

/// A client that skips the seals (so that it could truncate later) is
/// refused before the service maps anything; so is a wrong version, a
/// missing descriptor, or a plain file.
#[test]
fn the_service_refuses_segments_that_could_be_resized() {
    let mut env = TestEnv::new("unsealed");
    let pid = env.start_service("svc", &[]);
    let e = entry(&env, "svc");
    let memfd =
        nix::sys::memfd::memfd_create(c"unsealed", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .unwrap();
    std::fs::File::from(memfd.try_clone().unwrap())
        .set_len(1 << 21)
        .unwrap();
    let (status, why) = handshake(&e.control_socket, 2, Some(memfd.as_fd()));
    assert_eq!(status, 1);
    assert!(why.contains("not sealed"), "{why}");
    let (status, why) = handshake(&e.control_socket, 2, None);
    assert_eq!(status, 1);
    assert!(why.contains("no segment descriptor"), "{why}");
    let (_, fd) = Channel::create_memfd(&ChannelConfig::default()).unwrap();
    let (status, why) = handshake(&e.control_socket, 1, Some(fd.as_fd()));
    assert_eq!(status, 1);
    assert!(why.contains("version 1"), "{why}");
    let registry_file = std::fs::File::open(env.home.join("registry")).unwrap();
    let (status, _) = handshake(&e.control_socket, 2, Some(registry_file.as_fd()));
    assert_eq!(status, 1);
    assert!(alive(pid));
    let c = env.connect("svc").arg("a").arg(1).open().unwrap();
    assert_eq!(c.transport_name(), "shm");
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
}

/// A worker used to keep its largest reply buffer until restart (300 MiB
/// after one big reply). Now a message over the channel budget
/// (`metabridge_shm::CHANNEL_BUDGET`, 64 MiB) frees its buffers after its
/// call, and buffers within it, kept for the next call, are given back
/// once the worker has been idle for a tick.
#[test]
fn a_large_reply_does_not_pin_its_memory() {
    let mut env = TestEnv::new("shrink");
    let pid = env.start_service("svc", &[]);
    let c = env.client("svc", TransportKind::Shm, "a");
    assert_eq!(c.call::<String>("echo", ("warm",)).unwrap(), "awarm");
    let before = rss_kib(pid);
    let big = "z".repeat(96 << 20);
    assert_eq!(
        c.call::<String>("echo", (big,)).unwrap().len(),
        (96 << 20) + 1
    );
    assert_eq!(c.call::<String>("echo", ("small",)).unwrap(), "asmall");
    let after = rss_kib(pid);
    assert!(
        after < before + 48 * 1024,
        "a 96 MiB reply left the service {} MiB larger",
        (after.saturating_sub(before)) / 1024
    );
    // Within the budget: kept while calls come, given back when they stop.
    let within = "z".repeat(40 << 20);
    assert_eq!(
        c.call::<String>("echo", (within,)).unwrap().len(),
        (40 << 20) + 1
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let now = rss_kib(pid);
        if now < before + 24 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an idle service still holds {} MiB after a 40 MiB echo",
            (now.saturating_sub(before)) / 1024
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
