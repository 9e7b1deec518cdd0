//! The client's transports against real peers: a shared-memory pool
//! whose channels are set up over a real control socket with sealed
//! memfds and answered by an echo thread on the service's end of each
//! channel; a TCP pool on a real loopback socket; and how the TCP pool's
//! errors read as the client's.

use super::shm::ShmPool;
use super::tcp::pool_error;
use super::*;
use crate::control;
use crate::error::Error;
use crate::registry::Entry;
use metabridge_shm::{ChannelConfig, DoorbellSet};
use metabridge_tcp::{FrameError, PoolError};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The shared-memory pool to the service of `entry`, as the client opens it.
fn shm_pool(entry: &Entry, limits: &Limits) -> Result<ShmPool> {
    let address = ServiceAddress {
        name: entry.name.clone(),
        local: Some(entry.clone()),
        tcp: None,
        token: None,
        tls_pin: None,
    };
    ShmPool::open(&address, limits, None)
}

/// The TCP transport to `addr`, as the client opens it.
fn tcp_transport(addr: &str, limits: &Limits, token: Option<&str>) -> Result<Transport> {
    let address = ServiceAddress {
        name: "svc".into(),
        local: None,
        tcp: Some(addr.to_string()),
        token: None,
        tls_pin: None,
    };
    Transport::open(TransportKind::Tcp, &address, limits, token)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A service's shared-memory side, in threads of this process: a control
/// socket in its own directory under /dev/shm, each channel answered by
/// `answer` on a thread of its own. Removed on drop.
struct EchoService {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl EchoService {
    /// Each request answered with its own bytes when `reply` is true, or
    /// never answered at all.
    fn start(tag: &str, reply: bool) -> EchoService {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!(
            "/dev/shm/mbu-transport-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("control")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            let bells = DoorbellSet::create_memfd(1).unwrap();
            while !stopping.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let _ = control::serve_request(
                    stream,
                    &ChannelConfig::default(),
                    &bells,
                    None,
                    |mut channel| {
                        std::thread::spawn(move || {
                            // Until the client's end goes away.
                            loop {
                                let bytes = match channel.recv() {
                                    Ok(request) => request.to_vec(),
                                    Err(_) => break,
                                };
                                if reply && channel.send(&bytes).is_err() {
                                    break;
                                }
                            }
                        });
                        Ok(0)
                    },
                );
            }
        });
        EchoService {
            dir,
            stop,
            accept: Some(accept),
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            name: "echo".into(),
            pid: std::process::id(),
            start_time: 0,
            registered_at: 0,
            control_socket: self.dir.join("control").to_string_lossy().into_owned(),
            tcp: String::new(),
            endpoints: Vec::new(),
            token_required: false,
            token: None,
            tls_fingerprint: None,
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn limits(channels: usize, timeout: Duration) -> Limits {
    Limits {
        channels,
        timeout,
        message: 1 << 20,
        #[cfg(feature = "tls")]
        tls: None,
    }
}

fn echo(transport: &Transport, bytes: &[u8]) -> Result<Vec<u8>> {
    echo_within(transport, bytes, Duration::from_secs(20))
}

fn echo_within(transport: &Transport, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    transport.round_trip(
        |buf| {
            buf.extend_from_slice(bytes);
            Ok(())
        },
        |reply| Ok(reply.to_vec()),
        timeout,
        None,
    )
}

#[test]
fn a_shared_memory_round_trip_carries_the_request_and_its_reply() {
    let service = EchoService::start("echo", true);
    let pool = shm_pool(&service.entry(), &limits(4, Duration::from_secs(10))).unwrap();
    let transport = Transport::Shm(pool);
    assert_eq!(transport.name(), "shm");
    assert_eq!(
        transport.open_channels(),
        1,
        "the first channel opens at once"
    );
    assert_eq!(echo(&transport, b"hello").unwrap(), b"hello");
    // Larger than a ring: streamed through in frames both ways.
    let big: Vec<u8> = (0..3 << 20).map(|i| i as u8).collect();
    let transport_big = {
        let pool = shm_pool(
            &service.entry(),
            &Limits {
                message: 8 << 20,
                ..limits(1, Duration::from_secs(20))
            },
        )
        .unwrap();
        Transport::Shm(pool)
    };
    assert_eq!(echo(&transport_big, &big).unwrap(), big);
    // One caller at a time reuses the one channel.
    assert_eq!(transport.open_channels(), 1);
    transport.close();
    transport_big.close();
}

#[test]
fn a_pool_of_one_channel_makes_a_second_caller_wait_until_its_timeout() {
    let service = EchoService::start("cap", true);
    let pool = shm_pool(&service.entry(), &limits(1, Duration::from_millis(200))).unwrap();
    let held = pool.acquire(Duration::from_millis(200)).unwrap();
    let start = Instant::now();
    match pool.acquire(Duration::from_millis(200)) {
        Err(Error::Timeout(what)) => assert!(what.to_string().contains("free channel"), "{what}"),
        Err(e) => panic!("expected a timeout, got {e}"),
        Ok(_) => panic!("a second channel past the pool's limit of one"),
    }
    // A lower bound only, which load cannot break: the caller waited for
    // the whole timeout before giving up.
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        pool.open.load(Ordering::SeqCst),
        1,
        "no channel opened past the cap"
    );
    // Released, the same channel serves the next caller at once.
    pool.release(held);
    let again = pool.acquire(Duration::from_millis(200)).unwrap();
    assert_eq!(pool.open.load(Ordering::SeqCst), 1);
    pool.release(again);
}

#[test]
fn a_waiting_caller_gets_the_channel_another_releases() {
    let service = EchoService::start("handoff", true);
    let pool = Arc::new(shm_pool(&service.entry(), &limits(1, Duration::from_secs(10))).unwrap());
    let held = pool.acquire(Duration::from_secs(10)).unwrap();
    let waiter = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            pool.acquire(Duration::from_secs(10))
                .map(|_c| ())
                .map_err(|e| e.to_string())
        })
    };
    // The waiter registers before the release or finds the channel in
    // `hot` after it: either way it gets the one channel.
    while pool.waiting.load(Ordering::SeqCst) == 0 && !waiter.is_finished() {
        std::thread::yield_now();
    }
    pool.release(held);
    waiter.join().unwrap().unwrap();
    assert_eq!(pool.open.load(Ordering::SeqCst), 1);
}

#[test]
fn overlapping_calls_open_channels_up_to_the_limit_only() {
    let service = EchoService::start("grow", true);
    let pool = shm_pool(&service.entry(), &limits(3, Duration::from_secs(10))).unwrap();
    let a = pool.acquire(Duration::from_secs(10)).unwrap();
    let b = pool.acquire(Duration::from_secs(10)).unwrap();
    let c = pool.acquire(Duration::from_secs(10)).unwrap();
    assert_eq!(pool.open.load(Ordering::SeqCst), 3);
    for conn in [a, b, c] {
        pool.release(conn);
    }
    let transport = Transport::Shm(pool);
    assert_eq!(echo(&transport, b"after").unwrap(), b"after");
    assert_eq!(transport.open_channels(), 3);
    transport.close();
    assert_eq!(
        transport.open_channels(),
        0,
        "close drops every idle channel"
    );
}

#[test]
fn a_closed_pool_refuses_calls_as_peer_gone() {
    let service = EchoService::start("closed", true);
    let pool = shm_pool(&service.entry(), &limits(1, Duration::from_secs(10))).unwrap();
    let transport = Transport::Shm(pool);
    transport.close();
    match echo(&transport, b"x") {
        Err(Error::PeerGone(why)) => assert!(why.to_string().contains("closed"), "{why}"),
        other => panic!("expected peer gone, got {other:?}"),
    }
}

#[test]
fn an_unanswered_call_times_out_and_its_channel_is_retired() {
    let service = EchoService::start("silent", false);
    let pool = shm_pool(&service.entry(), &limits(2, Duration::from_millis(200))).unwrap();
    let transport = Transport::Shm(pool);
    match echo_within(&transport, b"never answered", Duration::from_millis(200)) {
        Err(Error::Timeout(what)) => assert!(what.to_string().contains("no reply"), "{what}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        transport.open_channels(),
        0,
        "a channel whose reply may still come is never reused"
    );
}

#[test]
fn an_interrupted_wait_ends_the_call_without_replaying_it() {
    let service = EchoService::start("interrupt", false);
    let pool = shm_pool(&service.entry(), &limits(2, Duration::from_secs(20))).unwrap();
    let transport = Transport::Shm(pool);
    let asked = AtomicUsize::new(0);
    let interrupt = || asked.fetch_add(1, Ordering::SeqCst) >= 2;
    let start = Instant::now();
    let result = transport.round_trip(
        |buf| {
            buf.push(1);
            Ok(())
        },
        |reply| Ok(reply.to_vec()),
        Duration::from_secs(20),
        Some(&interrupt),
    );
    match result {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::Interrupted),
        other => panic!("expected an interrupted wait, got {other:?}"),
    }
    assert!(asked.load(Ordering::SeqCst) >= 3);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "ended by the interrupt, not the timeout"
    );
    assert_eq!(transport.open_channels(), 0);
}

#[test]
fn a_request_over_the_limit_is_refused_before_it_goes_out_over_tcp() {
    // A real listener: the kernel completes the pool's connect.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let transport = tcp_transport(
        &addr,
        &Limits {
            channels: 1,
            timeout: Duration::from_secs(5),
            message: 64,
            #[cfg(feature = "tls")]
            tls: None,
        },
        None,
    )
    .unwrap();
    assert_eq!(transport.name(), "tcp");
    match echo(&transport, &[0u8; 65]) {
        Err(Error::MessageTooLarge { len, max }) => assert_eq!((len, max), (65, 64)),
        other => panic!("expected message too large, got {other:?}"),
    }
    transport.close();
}

#[test]
fn a_tcp_connection_lost_under_a_call_is_peer_gone() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // The "service" reads the request and closes without answering.
    let service = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut s, &mut buf);
    });
    let transport = tcp_transport(&addr, &limits(1, Duration::from_secs(10)), None).unwrap();
    match echo(&transport, b"\x91\xa1x") {
        Err(Error::PeerGone(_)) => {}
        other => panic!("expected peer gone, got {other:?}"),
    }
    service.join().unwrap();
}

#[test]
fn pool_errors_read_as_the_clients_errors() {
    use std::io::ErrorKind;
    for kind in [
        ErrorKind::ConnectionReset,
        ErrorKind::ConnectionAborted,
        ErrorKind::BrokenPipe,
        ErrorKind::UnexpectedEof,
    ] {
        assert!(
            matches!(pool_error(PoolError::Io(kind.into())), Error::PeerGone(_)),
            "{kind:?}"
        );
    }
    // Refused: the service is not there (not found), not "gone".
    match pool_error(PoolError::Io(ErrorKind::ConnectionRefused.into())) {
        Error::Io(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused),
        other => panic!("{other:?}"),
    }
    assert!(matches!(pool_error(PoolError::Timeout), Error::Timeout(_)));
    assert!(matches!(pool_error(PoolError::Closed), Error::PeerGone(_)));
    assert!(matches!(
        pool_error(PoolError::Frame(FrameError::Closed)),
        Error::PeerGone(_)
    ));
    match pool_error(PoolError::Frame(FrameError::TooLarge {
        declared: 5000,
        max: 4096,
    })) {
        Error::MessageTooLarge { len, max } => assert_eq!((len, max), (5000, 4096)),
        other => panic!("{other:?}"),
    }
}
