//! The shared-memory segments of a channel seen from a hostile or buggy
//! client, with real processes: sealed memfds that cannot be truncated or
//! resized under the service, and reply memory that is given back.
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure. No
//! assertion depends on timing.

mod common;

use common::{rss_kib, TestEnv};
use metabridge::TransportKind;
use metabridge_shm::{Channel, ChannelConfig};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn entry(env: &TestEnv, name: &str) -> metabridge::registry::Entry {
    metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup(name)
        .unwrap()
}

/// The control handshake written by hand (see ARCHITECTURE.md, "Services
/// at run time", and src/control.rs), so a test
/// can send what a hostile or buggy client would.
fn handshake(socket: &str, version: u8, fd: Option<std::os::fd::BorrowedFd<'_>>) -> (u8, String) {
    // The socket file exists from bind(), a moment before listen().
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("cannot connect to {socket}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let bytes = [version, 1];
    let iov = [IoSlice::new(&bytes)];
    let raw;
    let cmsg: Vec<ControlMessage<'_>> = match fd {
        Some(fd) => {
            raw = [fd.as_raw_fd()];
            vec![ControlMessage::ScmRights(&raw)]
        }
        None => Vec::new(),
    };
    // A service that refuses before reading may have closed already
    // (EPIPE here); its answer is still there to read.
    let _ = sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    );
    let mut head = [0u8; 3];
    (&stream).read_exact(&mut head).unwrap();
    let mut why = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
    if head[0] != 0 {
        (&stream).read_exact(&mut why).unwrap();
    }
    (head[0], String::from_utf8_lossy(&why).into_owned())
}

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
/// after one big reply). It now frees buffers over 1 MiB after use.
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
}
