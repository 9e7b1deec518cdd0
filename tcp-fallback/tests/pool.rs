//! Client pool behaviour over real sockets on 127.0.0.1 (port 0).

mod common;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{too_large_body, TestServer};
use metabridge_tcp::{FrameError, Handler, Pool, PoolConfig, PoolError, ServerConfig};

/// An address with nothing listening on it.
fn dead_addr() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// A listener that accepts connections, keeps them open, and never answers.
/// Returns its address; the listener thread lives until the process ends,
/// holding at most a handful of sockets.
fn hung_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(8) {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        thread::sleep(Duration::from_secs(5));
    });
    addr
}

#[test]
fn new_is_lazy_and_connect_is_eager() {
    let server = TestServer::echo(ServerConfig::default());
    let lazy = Pool::new(server.addr, PoolConfig::default());
    assert_eq!(lazy.open_connections(), 0);
    let eager = Pool::connect(server.addr, PoolConfig::default()).unwrap();
    assert_eq!(eager.open_connections(), 1);
    let mut response = Vec::new();
    eager.call(b"x", &mut response).unwrap();
    assert_eq!(
        eager.open_connections(),
        1,
        "the eager connection is reused"
    );

    // `new` to a dead address succeeds; the call then fails.
    let pool = Pool::new(dead_addr(), PoolConfig::default());
    assert!(matches!(
        pool.call(b"x", &mut response),
        Err(PoolError::Io(_))
    ));
    assert_eq!(pool.open_connections(), 0);
}

#[test]
fn connect_to_nothing_fails_fast() {
    let err = Pool::connect(dead_addr(), PoolConfig::default()).unwrap_err();
    assert!(
        matches!(err, PoolError::Io(ref e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err:?}"
    );
}

#[test]
fn large_payloads_round_trip() {
    let server = TestServer::echo(ServerConfig::default());
    let pool = Pool::new(server.addr, PoolConfig::default());
    let mut response = Vec::new();
    for size in [0usize, 1, 4091, 4092, 4093, 65_536, 1 << 20] {
        let request: Vec<u8> = (0..size).map(|i| (i % 249) as u8).collect();
        pool.call(&request, &mut response).unwrap();
        assert_eq!(response, request, "size {size}");
    }
    assert_eq!(pool.open_connections(), 1);
}

#[test]
fn calls_after_server_death_fail_instead_of_hanging() {
    let server = TestServer::echo(ServerConfig::default());
    let addr = server.addr;
    let pool = Pool::new(
        addr,
        PoolConfig {
            call_timeout: Some(Duration::from_millis(500)),
            ..PoolConfig::default()
        },
    );
    let mut response = Vec::new();
    pool.call(b"alive", &mut response).unwrap();

    server.kill();

    let first = pool.call(b"dead?", &mut response);
    assert!(first.is_err(), "call to a dead server succeeded");
    let second = pool.call(b"dead?", &mut response);
    assert!(matches!(second, Err(PoolError::Io(_))), "{second:?}");
    assert_eq!(pool.open_connections(), 0);
}

#[test]
fn unresponsive_server_times_out() {
    let addr = hung_server();
    let timeout = Duration::from_millis(200);
    let pool = Pool::new(
        addr,
        PoolConfig {
            call_timeout: Some(timeout),
            ..PoolConfig::default()
        },
    );
    let mut response = Vec::new();
    let t0 = Instant::now();
    let result = pool.call(b"hello?", &mut response);
    let took = t0.elapsed();
    assert!(matches!(result, Err(PoolError::Timeout)), "{result:?}");
    assert!(
        took >= timeout - Duration::from_millis(10),
        "gave up after {took:?}"
    );
    assert_eq!(pool.open_connections(), 0, "timed-out connection was kept");
}

#[test]
fn waiting_for_a_busy_pool_respects_call_timeout() {
    let addr = hung_server();
    let pool = Arc::new(Pool::new(
        addr,
        PoolConfig {
            max_connections: 1,
            call_timeout: Some(Duration::from_millis(300)),
            ..PoolConfig::default()
        },
    ));
    let busy = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || pool.call(b"occupy", &mut Vec::new()))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.open_connections() == 0 {
        assert!(Instant::now() < deadline, "first call never started");
        thread::sleep(Duration::from_millis(1));
    }
    // Timeout (the hung server never answers): the wait obeyed the call
    // timeout; how promptly is a benchmark's business, not a test's.
    let waited = pool.call(b"wait", &mut Vec::new());
    assert!(matches!(waited, Err(PoolError::Timeout)), "{waited:?}");
    assert!(matches!(busy.join().unwrap(), Err(PoolError::Timeout)));
}

#[test]
fn close_fails_later_calls_and_wakes_waiters() {
    let handler = common::Slow::new(Duration::from_millis(200));
    let server = TestServer::start(ServerConfig::default(), handler.clone());
    let pool = Arc::new(Pool::new(
        server.addr,
        PoolConfig {
            max_connections: 1,
            ..PoolConfig::default()
        },
    ));
    let busy = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            let mut response = Vec::new();
            pool.call(b"busy", &mut response).map(|()| response)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while handler.started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "busy call never reached the server"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let waiter = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || pool.call(b"waiting", &mut Vec::new()))
    };
    thread::sleep(Duration::from_millis(20));
    pool.close();
    assert!(matches!(waiter.join().unwrap(), Err(PoolError::Closed)));
    // The call in progress still completes; its connection is then closed.
    assert_eq!(busy.join().unwrap().unwrap(), b"busy");
    assert_eq!(pool.open_connections(), 0);
    assert!(matches!(
        pool.call(b"x", &mut Vec::new()),
        Err(PoolError::Closed)
    ));
}

#[test]
fn oversized_response_is_rejected_and_connection_dropped() {
    struct Big;
    impl Handler for Big {
        fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
            Box::pin(async move {
                if request == b"big" {
                    vec![1; 2048]
                } else {
                    request
                }
            })
        }
        fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
            too_large_body(declared, max)
        }
    }
    let server = TestServer::start(ServerConfig::default(), Arc::new(Big));
    let pool = Pool::new(
        server.addr,
        PoolConfig {
            max_frame: 1024,
            ..PoolConfig::default()
        },
    );
    let mut response = Vec::new();
    let err = pool.call(b"big", &mut response).unwrap_err();
    assert!(
        matches!(
            err,
            PoolError::Frame(FrameError::TooLarge {
                declared: 2048,
                max: 1024
            })
        ),
        "{err:?}"
    );
    assert_eq!(pool.open_connections(), 0);
    pool.call(b"small", &mut response).unwrap();
    assert_eq!(response, b"small");
}

#[test]
fn oversized_request_gets_the_handlers_error_body() {
    let max = 1000;
    let server = TestServer::echo(ServerConfig {
        max_frame: max,
        ..ServerConfig::default()
    });
    let pool = Pool::new(server.addr, PoolConfig::default());
    let mut response = Vec::new();
    pool.call(&[0; 1001], &mut response).unwrap();
    assert_eq!(response, too_large_body(1001, max));
    // The server closes that connection right after the response; once the
    // close has arrived, the pool discards it and the next call uses a fresh
    // connection. (A call racing with the close itself may fail; the pool
    // does not retry, so give the close a moment to arrive.)
    thread::sleep(Duration::from_millis(50));
    pool.call(&[0; 1000], &mut response).unwrap();
    assert_eq!(response, [0; 1000]);
}

#[test]
fn abort_ends_a_call_in_flight_and_leaves_the_pool_open() {
    // The hung server never answers: without the abort the call would wait
    // for its timeout (a minute here).
    let addr = hung_server();
    let pool = Arc::new(Pool::new(
        addr,
        PoolConfig {
            call_timeout: Some(Duration::from_secs(60)),
            ..PoolConfig::default()
        },
    ));
    assert_eq!(pool.abort(), 0, "nothing in flight yet");
    let call = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || pool.call(b"never answered", &mut Vec::new()))
    };
    // The call holds its connection from checkout until it returns: abort
    // until it was the call's (a count of 1), however the threads run.
    while pool.abort() == 0 {
        assert!(!call.is_finished(), "the call ended before it was aborted");
        thread::sleep(Duration::from_millis(1));
    }
    let result = call.join().unwrap();
    assert!(
        matches!(
            result,
            Err(PoolError::Io(_)) | Err(PoolError::Frame(FrameError::Closed))
        ),
        "the aborted call failed as a lost connection, not a timeout: {result:?}"
    );
    assert_eq!(pool.open_connections(), 0, "its connection was dropped");
    // Not closed: the next call opens a connection and waits for its
    // answer (which this server never gives) until its own timeout.
    let later = pool.call_within(b"later", &mut Vec::new(), Some(Duration::from_millis(50)));
    assert!(matches!(later, Err(PoolError::Timeout)), "{later:?}");
}
