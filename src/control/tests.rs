//! Both sides of the control handshake over real Unix sockets, with real
//! sealed memfd segments: a channel granted, a peer of another uid
//! refused, an unsealed descriptor refused, a busy service retried, and a
//! silent peer given up on at its deadline.

use super::*;
use crate::test_support::TestHome;
use crate::trust::{describe, PeerPolicy};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// A private directory holding one control socket; removed on drop.
struct Home(TestHome);

impl Home {
    fn new(tag: &str) -> Home {
        Home(TestHome::new("control", tag))
    }
    fn socket(&self) -> PathBuf {
        self.0 .0.join("control")
    }
}

fn config() -> ChannelConfig {
    ChannelConfig {
        capacity: 64 * 1024,
        ..ChannelConfig::default()
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// A service thread answering one handshake on `listener` with `place`;
/// its result (what `serve_request` returned).
fn serve_one(
    listener: UnixListener,
    policy: PeerPolicy,
    place: impl FnOnce(Channel) -> std::result::Result<u16, String> + Send + 'static,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        if let Err(why) = policy.admit(&stream) {
            refuse(&stream, &why);
            return Err(Error::Refused(Refusal::new(why)));
        }
        let bells = DoorbellSet::create_memfd(2).unwrap();
        serve_request(stream, &config(), &bells, None, place)
    })
}

fn own_policy() -> PeerPolicy {
    PeerPolicy {
        uid: platform::euid(),
        also: Vec::new(),
    }
}

#[test]
fn a_sealed_segment_of_our_own_uid_is_granted_its_worker() {
    let home = Home::new("grant");
    let listener = UnixListener::bind(home.socket()).unwrap();
    let service = serve_one(listener, own_policy(), |_channel| Ok(3));
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    let granted = request_channel(&home.socket(), segment.as_fd(), soon()).unwrap();
    assert_eq!(granted.worker, 3);
    // The doorbells that came back are the service's: a real doorbell set.
    let bells = DoorbellSet::from_fd(granted.doorbells.as_fd()).unwrap();
    assert_eq!(bells.len(), 2);
    service.join().unwrap().unwrap();
}

#[test]
fn a_peer_of_a_uid_the_service_does_not_admit_is_refused_with_the_reason() {
    let home = Home::new("uid");
    let listener = UnixListener::bind(home.socket()).unwrap();
    // The service admits only some other uid: our own credentials, read
    // by the kernel (SO_PEERCRED), are not in its policy.
    let other = platform::euid().wrapping_add(4242);
    let policy = PeerPolicy {
        uid: other,
        also: vec![other + 1],
    };
    let service = serve_one(listener, policy, |_| {
        panic!("a refused peer is never placed")
    });
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    match request_channel(&home.socket(), segment.as_fd(), soon()) {
        Err(Error::Refused(why)) => {
            assert!(why.contains("may not open channels"), "{why}");
            assert!(why.contains(&platform::euid().to_string()), "{why}");
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("a peer of another uid was granted a channel"),
    }
    assert!(matches!(service.join().unwrap(), Err(Error::Refused(_))));
}

#[test]
fn an_allowed_uid_is_admitted_beside_the_services_own() {
    let home = Home::new("allow");
    let listener = UnixListener::bind(home.socket()).unwrap();
    let policy = PeerPolicy {
        uid: platform::euid().wrapping_add(1),
        also: vec![platform::euid()],
    };
    let service = serve_one(listener, policy, |_| Ok(0));
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    assert_eq!(
        request_channel(&home.socket(), segment.as_fd(), soon())
            .unwrap()
            .worker,
        0
    );
    service.join().unwrap().unwrap();
}

#[test]
fn an_unsealed_descriptor_is_refused_and_never_placed() {
    let home = Home::new("unsealed");
    let listener = UnixListener::bind(home.socket()).unwrap();
    let service = serve_one(listener, own_policy(), |_| {
        panic!("an unsealed segment must not reach a worker")
    });
    // A plain memfd of a segment's size, without the seals that make it
    // impossible to shrink under the service.
    let fd = nix::sys::memfd::memfd_create(
        c"mbu-unsealed",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .unwrap();
    let file = std::fs::File::from(fd);
    file.set_len(4 * 64 * 1024).unwrap();
    match request_channel(&home.socket(), file.as_fd(), soon()) {
        Err(Error::Refused(why)) => assert!(!why.reason.is_empty()),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("an unsealed segment was accepted"),
    }
    assert!(matches!(service.join().unwrap(), Err(Error::Refused(_))));
}

#[test]
fn another_handshake_version_is_refused_by_name() {
    let home = Home::new("version");
    let listener = UnixListener::bind(home.socket()).unwrap();
    let service = serve_one(listener, own_policy(), |_| panic!("never placed"));
    let stream = UnixStream::connect(home.socket()).unwrap();
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    send_with_fd(&stream, &[VERSION + 1, OP_OPEN_CHANNEL], segment.as_fd()).unwrap();
    let mut head = [0u8; 3];
    recv_with_fd(&stream, &mut head, Duration::from_secs(10)).unwrap();
    assert_eq!(head[0], STATUS_REFUSED);
    let mut why = vec![0u8; u16::from_le_bytes([head[1], head[2]]) as usize];
    (&stream).read_exact(&mut why).unwrap();
    let why = String::from_utf8(why).unwrap();
    assert!(why.contains("handshake version"), "{why}");
    assert!(service.join().unwrap().is_err());
}

#[test]
fn a_busy_answer_is_retried_until_a_slot_frees() {
    let home = Home::new("busy");
    let listener = UnixListener::bind(home.socket()).unwrap();
    let service = std::thread::spawn(move || {
        // Two set-ups find every slot taken; the third is served.
        for _ in 0..2 {
            let (stream, _) = listener.accept().unwrap();
            refuse_busy(&stream);
        }
        let (stream, _) = listener.accept().unwrap();
        let bells = DoorbellSet::create_memfd(1).unwrap();
        serve_request(stream, &config(), &bells, None, |_| Ok(7))
    });
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    let granted = request_channel(&home.socket(), segment.as_fd(), soon()).unwrap();
    assert_eq!(granted.worker, 7);
    service.join().unwrap().unwrap();
}

#[test]
fn a_service_that_stays_busy_is_a_timeout_at_the_deadline() {
    let home = Home::new("busyforever");
    let listener = UnixListener::bind(home.socket()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let service = std::thread::spawn(move || {
        while !stopping.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => refuse_busy(&stream),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    let deadline = Instant::now() + Duration::from_millis(300);
    let result = request_channel(&home.socket(), segment.as_fd(), deadline);
    stop.store(true, Ordering::SeqCst);
    service.join().unwrap();
    // Busy answers are retried up to the deadline, not past it: the
    // timeout is reported by whichever step finds the deadline gone.
    assert!(Instant::now() >= deadline);
    match result {
        Err(Error::Timeout(what)) => assert!(
            what.to_string().contains(BUSY)
                || what
                    .to_string()
                    .contains("setting up a shared-memory channel"),
            "{what}"
        ),
        Err(e) => panic!("expected a timeout, got {e}"),
        Ok(_) => panic!("a busy service granted a channel"),
    }
}

#[test]
fn a_silent_service_is_given_up_on_at_the_clients_deadline() {
    let home = Home::new("silentservice");
    // Bound and listening, but nobody ever accepts or answers.
    let _listener = UnixListener::bind(home.socket()).unwrap();
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    let start = Instant::now();
    let result = request_channel(
        &home.socket(),
        segment.as_fd(),
        start + Duration::from_millis(300),
    );
    assert!(
        matches!(result, Err(Error::Timeout(_))),
        "{:?}",
        result.err()
    );
    // The deadline is the behaviour: 300 ms asked, 10 s allowed, so a
    // loaded machine does not fail it while a wait that ignored the
    // deadline (the service never answers) still would.
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_silent_client_is_given_up_on_at_the_service_handshake_timeout() {
    let (service_end, _client_end) = UnixStream::pair().unwrap();
    let bells = DoorbellSet::create_memfd(1).unwrap();
    let start = Instant::now();
    let result = serve_request(service_end, &config(), &bells, None, |_| {
        panic!("nothing was sent, nothing is placed")
    });
    assert!(result.is_err());
    let took = start.elapsed();
    assert!(
        took >= SERVICE_HANDSHAKE_TIMEOUT - Duration::from_millis(50),
        "gave up after {took:?}, before the handshake timeout"
    );
    assert!(took < SERVICE_HANDSHAKE_TIMEOUT * 5, "took {took:?}");
}

#[test]
fn a_control_socket_that_is_not_a_socket_is_an_insecure_path() {
    let home = Home::new("notasocket");
    std::fs::write(home.socket(), b"").unwrap();
    let (_channel, segment) = Channel::create_memfd(&config()).unwrap();
    match request_channel(&home.socket(), segment.as_fd(), soon()) {
        Err(Error::InsecurePath { problem, .. }) => {
            assert!(problem.contains("regular file"), "{problem}")
        }
        Err(e) => panic!("expected an insecure path, got {e}"),
        Ok(_) => panic!("a regular file served as a control socket"),
    }
}

#[test]
fn a_service_without_counters_refuses_a_stats_request() {
    let home = Home::new("nostats");
    let listener = UnixListener::bind(home.socket()).unwrap();
    let service = serve_one(listener, own_policy(), |_| panic!("never placed"));
    match request_stats(&home.socket(), soon()) {
        Err(Error::Refused(why)) => assert!(why.contains("no live counters"), "{why}"),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("counters from a service that keeps none"),
    }
    assert!(service.join().unwrap().is_err());
}

#[test]
fn describe_names_each_kind_of_file() {
    let home = Home::new("describe");
    let file = home.0 .0.join("f");
    std::fs::write(&file, b"").unwrap();
    let link = home.0 .0.join("l");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let _listener = UnixListener::bind(home.socket()).unwrap();
    let kind = |p: &Path| describe(&std::fs::symlink_metadata(p).unwrap().file_type());
    assert_eq!(kind(&file), "regular file");
    assert_eq!(kind(&link), "symbolic link");
    assert_eq!(kind(&home.0 .0), "directory");
    assert_eq!(kind(&home.socket()), "socket");
    assert_eq!(kind(Path::new("/dev/null")), "special file");
}
