//! The shared-memory workers under faults from outside, with real
//! processes: user code that panics where no call can report it, clients
//! that give up on calls or die in the middle of them, and clients that
//! stop reading their replies. In each case the service keeps serving
//! everyone else, and every call gets its own result or a clear error.
//!
//! Each test has its own `METABRIDGE_HOME`; `TestEnv` kills and reaps
//! every process it started and removes the home, even when the test
//! fails. Deadlines here only bound how long a failure (a hang) takes.

mod common;

use common::{entry, sigkill, TestEnv};
use metabridge::{Error, TransportKind};
use metabridge_shm::{Channel, ChannelConfig};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Waits (at most 30 s) until the service's live counters show `n` calls
/// in flight; false if they never did.
fn wait_in_flight(env: &TestEnv, name: &str, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let snap = metabridge::stats::fetch(&entry(env, name), Duration::from_secs(5)).unwrap();
        if snap.in_flight() == n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// With a cache of 2 and instances whose `Drop` panics, every call that
/// evicts an instance used to kill its worker (the call got `Closed`, both
/// workers died, later calls timed out forever while `list` showed the
/// service live). The instance's release now runs under `catch_unwind`.
#[test]
fn a_panic_in_an_instances_drop_does_not_kill_the_service() {
    let mut env = TestEnv::new("drop-panic");
    env.start_service(
        "svc",
        &[("FIXTURE_PANIC_ON_DROP", "1"), ("FIXTURE_CACHE", "2")],
    );
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        for round in 0..3 {
            for prefix in ["a", "b", "c", "d", "e", "f"] {
                let client = env
                    .connect("svc")
                    .timeout(Duration::from_secs(10))
                    .transport(kind)
                    .arg(prefix)
                    .arg(1)
                    .open()
                    .unwrap_or_else(|e| panic!("{kind:?} round {round} {prefix}: connect: {e}"));
                let echoed: String = client
                    .call("echo", ("!",))
                    .unwrap_or_else(|e| panic!("{kind:?} round {round} {prefix}: {e}"));
                assert_eq!(echoed, format!("{prefix}!"));
            }
        }
    }
    // Still live, and listed as such.
    let client = env.client("svc", TransportKind::Shm, "z");
    assert_eq!(client.call::<String>("echo", ("?",)).unwrap(), "z?");
    assert!(metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("svc")
        .is_ok());
}

/// A client that gives up on calls of an `async` endpoint that never
/// completes (timeouts) used to leave the channels mapped in the service
/// with their calls running: 63 segments kept, and every new client
/// `Refused` once `max_channels` was reached. Closing the channel is the
/// cancel signal: the service drops the call's future and the channel.
#[test]
fn calls_given_up_by_their_client_are_cancelled_and_their_channels_reclaimed() {
    let mut env = TestEnv::new("give-up");
    env.start_service("svc", &[("FIXTURE_MAX_CHANNELS", "4")]);
    {
        let quitter = env
            .connect("svc")
            .timeout(Duration::from_millis(200))
            .transport(TransportKind::Shm)
            .arg("q")
            .arg(1)
            .open()
            .unwrap();
        for _ in 0..3 {
            // Each timed-out call's channel is retired and closed; the
            // next call opens another.
            match quitter.call::<bool>("forever", ()) {
                Err(Error::Timeout(_)) => {}
                other => panic!("expected a timeout, got {other:?}"),
            }
        }
    }
    assert!(
        wait_in_flight(&env, "svc", 0),
        "the abandoned calls kept running"
    );
    // Room for new channels again: four clients at once, over shm.
    let clients: Vec<_> = (0..4)
        .map(|k| env.client("svc", TransportKind::Shm, &format!("c{k}:")))
        .collect();
    for (k, c) in clients.iter().enumerate() {
        assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), format!("c{k}:x"));
    }
}

/// A client process SIGKILLed while its calls of a never-completing
/// `async` endpoint run: its channels are reclaimed and the calls
/// cancelled, whatever they were doing (they used to run forever).
#[test]
fn calls_of_a_killed_client_are_cancelled_and_its_channels_reclaimed() {
    let mut env = TestEnv::new("killed-client");
    env.start_service("svc", &[]);
    let mut child = env.command(common::TEST_SERVICE);
    child
        .args(["call", "svc", "forever"])
        .env("METABRIDGE_TRANSPORT", "shm")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = env.spawn(&mut child);
    assert!(
        wait_in_flight(&env, "svc", 1),
        "the client's call never started"
    );
    sigkill(pid);
    assert!(
        wait_in_flight(&env, "svc", 0),
        "the dead client's call kept running"
    );
    let client = env.client("svc", TransportKind::Shm, "after:");
    assert_eq!(client.call::<String>("echo", ("x",)).unwrap(), "after:x");
}

/// The control handshake written by hand (see src/control.rs): hands the
/// service our segment; the answer's status byte.
fn open_raw_channel(socket: &str, fd: std::os::fd::BorrowedFd<'_>) -> u8 {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let bytes = [2u8, 1];
    let raw = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .unwrap();
    // (The doorbell descriptor that comes with the answer is not taken:
    // the kernel closes it.)
    let mut head = [0u8; 3];
    (&stream).read_exact(&mut head).unwrap();
    head[0]
}

/// A client that stops reading in the middle of a large reply used to
/// hold its worker: the other clients of that worker waited ~2 s each,
/// and the stopped client then found its channel dropped (`PeerGone`)
/// from a live service. The reply now waits in its channel while the
/// worker serves the others, and the slow client gets all of it.
#[test]
fn a_client_that_stops_reading_stalls_nobody_and_still_gets_its_reply() {
    const LEN: usize = 8 << 20; // eight 1 MiB rings' worth
    let mut env = TestEnv::new("slow-reader");
    env.start_service("svc", &[("METABRIDGE_WORKERS", "1")]);
    let e = entry(&env, "svc");
    // The slow reader: a channel opened by hand, whose reply ring nobody
    // reads until the end of the test.
    let (mut slow, fd) = Channel::create_memfd(&ChannelConfig::default()).unwrap();
    assert_eq!(open_raw_channel(&e.control_socket, fd.as_fd()), 0);
    let ctor =
        metabridge::envelope::encode_ctor(&metabridge::to_msgpack(&("slow:", 1)).unwrap(), &[0x80]);
    let mut request = Vec::new();
    metabridge::envelope::encode_call(
        &mut request,
        "zeros",
        &metabridge::to_msgpack(&(LEN as u64,)).unwrap(),
        &[0x80],
        &ctor,
        e.token.as_deref(),
    );
    slow.send(&request).unwrap();
    // Wait until the worker has filled the ring (the rest of the reply
    // cannot go out), so the others are served while it is stuck.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metabridge::stats::fetch(&e, Duration::from_secs(5))
        .unwrap()
        .calls()
        < 1
    {
        assert!(Instant::now() < deadline, "the large call never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Two other clients, on the same (only) worker, are served.
    let others: Vec<_> = (0..2)
        .map(|k| env.client("svc", TransportKind::Shm, &format!("o{k}:")))
        .collect();
    for round in 0..20 {
        for (k, c) in others.iter().enumerate() {
            assert_eq!(
                c.call::<String>("echo", (round.to_string(),)).unwrap(),
                format!("o{k}:{round}")
            );
        }
    }
    // The slow client reads at last, and gets its whole reply.
    let reply = slow
        .recv_timeout(Duration::from_secs(30))
        .expect("the slow client's reply")
        .to_vec();
    let result: serde_bytes::ByteBuf = metabridge::envelope::decode_result(&reply).unwrap();
    assert_eq!(result.len(), LEN);
    assert!(result.iter().all(|&b| b == 0));
    drop(slow);
    // A process of the slow client's kind, stopped mid-reply for real:
    // SIGSTOP, the others are served, SIGCONT, it gets its reply.
    let mut child = env.command(common::TEST_SERVICE);
    child
        .args(["zeros", "svc", "4194304"])
        .env("METABRIDGE_TRANSPORT", "shm")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = child.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(50));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for (k, c) in others.iter().enumerate() {
        assert_eq!(
            c.call::<String>("echo", ("while stopped",)).unwrap(),
            format!("o{k}:while stopped")
        );
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let mut err = String::new();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline + Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the stopped client never finished");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "the stopped client failed: {err}");
}
