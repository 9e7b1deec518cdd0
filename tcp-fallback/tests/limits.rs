//! Resource limits over real sockets on 127.0.0.1 (port 0): frames before
//! authentication, connections and idle connections per peer, shedding
//! idle connections when full, and a shutdown that returns even when a
//! handler never does.

mod common;

use std::future::Future;
use std::io::Write;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{raw_client, too_large_body, wait_closed, wait_until, TestServer};
use metabridge_tcp::frame::{read_frame_blocking, write_frame_blocking, DEFAULT_MAX_FRAME};
use metabridge_tcp::{Handler, ServerConfig};

/// Echoes requests; a request starting with `hold` waits until the test
/// opens the gate (so that its connection stays busy, not idle).
struct Gate {
    open: tokio::sync::Semaphore,
    held: AtomicUsize,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: tokio::sync::Semaphore::new(0),
            held: AtomicUsize::new(0),
        })
    }

    /// Waits (bounded) until `n` requests are held at the gate.
    fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.held.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "requests never reached the gate");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn release_all(&self) {
        self.open.close();
    }
}

impl Handler for Gate {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            if request.starts_with(b"hold") {
                self.held.fetch_add(1, Ordering::SeqCst);
                // Closed by `release_all`: the error is the signal to go on.
                let _ = self.open.acquire().await;
            }
            request
        })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
}

/// A connection whose request is held at the gate.
fn busy_connection(server: &TestServer) -> TcpStream {
    let mut s = raw_client(server.addr);
    write_frame_blocking(&mut s, b"hold").unwrap();
    s
}

fn echo_once(s: &mut TcpStream, payload: &[u8]) -> bool {
    let mut buf = Vec::new();
    write_frame_blocking(s, payload).is_ok()
        && read_frame_blocking(s, DEFAULT_MAX_FRAME, &mut buf).is_ok()
        && buf == payload
}

#[test]
fn a_full_server_of_busy_connections_refuses_a_new_one_then_serves_it_once_one_ends() {
    let gate = Gate::new();
    let server = TestServer::start(
        ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        },
        gate.clone(),
    );
    let mut busy = [busy_connection(&server), busy_connection(&server)];
    gate.wait_held(2);

    // Nothing is idle: nothing can make room.
    let mut third = raw_client(server.addr);
    let _ = write_frame_blocking(&mut third, b"x");
    assert!(wait_closed(&mut third), "a third connection was served");

    gate.release_all();
    let mut buf = Vec::new();
    for s in &mut busy {
        read_frame_blocking(s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, b"hold");
    }
    // Now both are idle: a new connection takes the place of one of them.
    let mut fourth = raw_client(server.addr);
    assert!(echo_once(&mut fourth, b"fourth"));
}

/// Issue 10: 1024 idle connections locked every client out for 60 s.
#[test]
fn idle_connections_filling_the_server_make_room_for_a_new_client() {
    let server = TestServer::echo(ServerConfig {
        max_connections: 8,
        ..ServerConfig::default()
    });
    // Idle connections that never send anything, from "another client".
    let mut idle: Vec<TcpStream> = (0..8).map(|_| raw_client(server.addr)).collect();
    // They fill the server; a new client is still served ...
    let mut s = raw_client(server.addr);
    assert!(
        echo_once(&mut s, b"a new client is served"),
        "a new client was locked out"
    );
    // ... in the place of one of them, which was closed.
    let served = idle
        .iter_mut()
        .map(|s| echo_once(s, b"hi"))
        .filter(|&ok| ok)
        .count();
    assert_eq!(served, 7, "exactly one idle connection made room");
}

#[test]
fn connections_per_ip_are_capped_when_none_is_idle() {
    let gate = Gate::new();
    let server = TestServer::start(
        ServerConfig {
            max_connections_per_ip: 2,
            ..ServerConfig::default()
        },
        gate.clone(),
    );
    let _busy = [busy_connection(&server), busy_connection(&server)];
    gate.wait_held(2);
    let mut third = raw_client(server.addr);
    let _ = write_frame_blocking(&mut third, b"x");
    assert!(
        wait_closed(&mut third),
        "a third connection from one IP was served"
    );
    gate.release_all();
}

#[test]
fn idle_connections_per_ip_are_capped() {
    let server = TestServer::echo(ServerConfig {
        max_idle_per_ip: 2,
        ..ServerConfig::default()
    });
    let mut conns: Vec<TcpStream> = (0..3).map(|_| raw_client(server.addr)).collect();
    // Each has been served once, so each has been accepted and is idle.
    for (i, s) in conns.iter_mut().enumerate() {
        let _ = echo_once(s, format!("{i}").as_bytes());
    }
    // Three idle, two allowed: one was closed; the other two still work.
    let served = conns
        .iter_mut()
        .map(|s| echo_once(s, b"again"))
        .filter(|&ok| ok)
        .count();
    assert_eq!(served, 2);
}

/// Accepts a request as authenticating if it starts with `token:`.
struct Guarded;

const TOKEN: &[u8] = b"token:";

impl Handler for Guarded {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move { request })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
    fn requires_authentication(&self) -> bool {
        true
    }
    fn authenticates(&self, request: &[u8]) -> bool {
        request.starts_with(TOKEN)
    }
    fn unauthenticated_frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        format!("unauthenticated: {declared} > {max}").into_bytes()
    }
}

/// Issue 4: frames up to the full maximum were buffered before the token
/// was checked.
#[test]
fn an_unauthenticated_connection_may_only_send_small_frames() {
    let server = TestServer::start(ServerConfig::default(), Arc::new(Guarded));
    let limit = ServerConfig::default().max_unauthenticated_frame;
    assert_eq!(limit, 64 * 1024);

    // Small requests are served even without the token ...
    let mut s = raw_client(server.addr);
    assert!(echo_once(&mut s, b"hello"));
    // ... but a large one is refused from its prefix, naming the limit.
    let declared = 32u32 << 20;
    s.write_all(&declared.to_be_bytes()).unwrap();
    let _ = s.write_all(&vec![0u8; 256 * 1024]);
    let mut buf = Vec::new();
    read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(
        buf,
        format!("unauthenticated: {declared} > {limit}").into_bytes()
    );
    assert!(wait_closed(&mut s), "connection was not closed");

    // The limit is on the frame: exactly the limit is fine.
    let mut s = raw_client(server.addr);
    assert!(echo_once(&mut s, &vec![1u8; limit]));

    // After one authenticating request, the full maximum applies.
    let mut s = raw_client(server.addr);
    assert!(echo_once(&mut s, b"token: me"));
    assert!(echo_once(&mut s, &vec![2u8; 1 << 20]));
}

#[test]
fn an_unauthenticated_oversized_frame_is_refused_on_a_polling_server_too() {
    let server = TestServer::start(
        ServerConfig {
            spin: Duration::from_micros(50),
            ..ServerConfig::default()
        },
        Arc::new(Guarded),
    );
    let mut s = raw_client(server.addr);
    assert!(echo_once(&mut s, b"warm"));
    let declared = (64 * 1024 + 1) as u32;
    s.write_all(&declared.to_be_bytes()).unwrap();
    let mut buf = Vec::new();
    read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(
        buf,
        format!("unauthenticated: {declared} > {}", 64 * 1024).into_bytes()
    );
    assert!(wait_closed(&mut s));
}

#[test]
fn a_handler_requiring_no_authentication_accepts_large_frames_at_once() {
    let server = TestServer::echo(ServerConfig::default());
    let mut s = raw_client(server.addr);
    assert!(echo_once(&mut s, &vec![3u8; 1 << 20]));
}

/// Blocks its runtime thread (as a sync endpoint does) until released.
struct Stuck {
    release: Mutex<mpsc::Receiver<()>>,
    entered: AtomicUsize,
}

impl Handler for Stuck {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            tokio::task::block_in_place(|| {
                let release = self.release.lock().unwrap();
                // Bounded, so the thread ends with the test process at worst.
                let _ = release.recv_timeout(Duration::from_secs(60));
            });
            request
        })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
}

/// Issue 8: `run` waited for a handler that never returned.
#[test]
fn shutdown_returns_within_its_grace_when_a_handler_never_does() {
    let (release, wait) = mpsc::channel();
    let handler = Arc::new(Stuck {
        release: Mutex::new(wait),
        entered: AtomicUsize::new(0),
    });
    let grace = Duration::from_millis(200);
    let mut server = TestServer::start(
        ServerConfig {
            shutdown_grace: grace,
            ..ServerConfig::default()
        },
        handler.clone(),
    );
    let mut s = raw_client(server.addr);
    write_frame_blocking(&mut s, b"never answered").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while handler.entered.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "request never reached the handler"
        );
        thread::sleep(Duration::from_millis(1));
    }
    let stopped = server.shutdown_report();
    assert_eq!(stopped.abandoned, 1);
    let _ = release.send(());
}

/// Echoes, except that `capacity?` is answered with the capacity of the
/// buffer the request arrived in.
struct CapacityProbe;

impl Handler for CapacityProbe {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            if request == b"capacity?" {
                request.capacity().to_string().into_bytes()
            } else {
                request
            }
        })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
}

/// Issue 10: a connection must not keep a large read buffer after a large
/// request (whether its response was large or small).
#[test]
fn a_connection_does_not_keep_a_large_buffer_after_a_large_request() {
    for spin in [false, true] {
        let server = if spin {
            TestServer::start(
                ServerConfig {
                    spin: Duration::from_micros(50),
                    ..ServerConfig::default()
                },
                Arc::new(CapacityProbe),
            )
        } else {
            TestServer::start(ServerConfig::default(), Arc::new(CapacityProbe))
        };
        let mut s = raw_client(server.addr);
        let mut buf = Vec::new();
        // A large request with a large response, then one with a small one.
        for request in [vec![5u8; 8 << 20], b"capacity?".to_vec()] {
            write_frame_blocking(&mut s, &request).unwrap();
            read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        }
        for _ in 0..2 {
            write_frame_blocking(&mut s, b"capacity?").unwrap();
            read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
            let capacity: usize = String::from_utf8(buf.clone()).unwrap().parse().unwrap();
            assert!(capacity <= 64 * 1024, "kept a buffer of {capacity} bytes");
        }
    }
}

/// A pool whose server requires authentication can make any first call on
/// a new connection if it greets each connection with its credentials.
#[test]
fn a_pool_greeting_authenticates_each_new_connection() {
    use metabridge_tcp::{Pool, PoolConfig, PoolError};
    let server = TestServer::start(ServerConfig::default(), Arc::new(Guarded));
    let big = vec![4u8; 1 << 20];
    let mut response = Vec::new();

    let plain = Pool::connect(server.addr, PoolConfig::default()).unwrap();
    // Refused: the refusal is the response, unless the close it is followed
    // by cut the request short first.
    match plain.call(&big, &mut response) {
        Ok(()) => assert!(response.starts_with(b"unauthenticated: "), "served"),
        Err(e) => assert!(matches!(e, PoolError::Io(_) | PoolError::Frame(_)), "{e}"),
    }

    let greeting: Arc<[u8]> = Arc::from(&b"token: pool"[..]);
    let greeted = Pool::connect(
        server.addr,
        PoolConfig {
            greeting: Some(greeting),
            ..PoolConfig::default()
        },
    )
    .unwrap();
    greeted.call(&big, &mut response).unwrap();
    assert_eq!(response, big);
}

/// A raw connection holding one byte of a length prefix (a half-sent
/// frame), as another user of the machine can open by the dozen.
fn half_sent(server: &TestServer) -> TcpStream {
    let mut s = raw_client(server.addr);
    s.write_all(&[0]).unwrap();
    s
}

/// Issue 15: connections holding one byte of a length prefix filled the
/// per-address quota, and the owner's authenticated idle connections were
/// closed to make room for them.
#[test]
fn half_sent_unauthenticated_frames_never_close_authenticated_connections() {
    let server = TestServer::start(ServerConfig::default(), Arc::new(Guarded));
    let mut owners: Vec<TcpStream> = (0..4).map(|_| raw_client(server.addr)).collect();
    for s in &mut owners {
        assert!(echo_once(s, b"token: owner"));
    }
    // Three times the per-address quota of unauthenticated connections.
    let attack: Vec<TcpStream> = (0..192).map(|_| half_sent(&server)).collect();
    let big = vec![9u8; 1 << 20];
    let served = owners
        .iter_mut()
        .map(|s| echo_once(s, &big))
        .filter(|&ok| ok)
        .count();
    assert_eq!(served, 4, "authenticated connections were closed");
    // A new client still gets in (in the place of the oldest
    // unauthenticated connection) and authenticates.
    let mut late = raw_client(server.addr);
    assert!(echo_once(&mut late, b"token: late"));
    assert!(echo_once(&mut late, &big));
    drop(attack);
}

/// Issue 15: a connection that never authenticates is closed after the
/// authentication deadline, even if it keeps sending small requests.
#[test]
fn an_unauthenticated_connection_is_closed_at_its_deadline() {
    let server = TestServer::start(
        ServerConfig {
            auth_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        },
        Arc::new(Guarded),
    );
    let mut silent = raw_client(server.addr);
    let mut chatty = raw_client(server.addr);
    let mut owner = raw_client(server.addr);
    assert!(echo_once(&mut owner, b"token: owner"));
    assert!(wait_closed(&mut silent), "a silent connection was kept");
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo_once(&mut chatty, b"no token") {
        assert!(
            Instant::now() < deadline,
            "a chatty unauthenticated connection was kept"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Past the deadline, the authenticated connection still serves.
    assert!(echo_once(&mut owner, b"still here"));
}

/// Issue 15: when the unauthenticated quota of an address is full, the
/// oldest unauthenticated connection makes room, never an authenticated one.
#[test]
fn the_oldest_unauthenticated_connection_makes_room() {
    let server = TestServer::start(
        ServerConfig {
            max_unauthenticated_per_ip: 2,
            ..ServerConfig::default()
        },
        Arc::new(Guarded),
    );
    let mut owner = raw_client(server.addr);
    assert!(echo_once(&mut owner, b"token: owner"));
    let mut first = raw_client(server.addr);
    assert!(echo_once(&mut first, b"first"));
    let mut second = raw_client(server.addr);
    assert!(echo_once(&mut second, b"second"));
    let mut third = raw_client(server.addr);
    assert!(echo_once(&mut third, b"third"));
    assert!(wait_closed(&mut first), "the oldest was kept");
    assert!(echo_once(&mut second, b"token: second"));
    assert!(echo_once(&mut third, b"token: third"));
    assert!(echo_once(&mut owner, b"owner"));
}

/// Waits forever unless the client goes; counts the calls in progress
/// (a call's future dropped counts as ended).
#[derive(Default)]
struct Forever {
    live: AtomicUsize,
}

struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for Forever {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            if request == b"forever" {
                self.live.fetch_add(1, Ordering::SeqCst);
                let _live = Live(&self.live);
                std::future::pending::<()>().await;
            }
            request
        })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
}

/// Issue 15: a call that never completes, from a client that went away,
/// kept its connection (CLOSE_WAIT) and its place in the per-address quota
/// forever. Its future is dropped when the peer closes.
#[test]
fn a_client_gone_mid_call_ends_the_call_and_frees_its_connection() {
    let handler = Arc::new(Forever::default());
    let server = TestServer::start(
        ServerConfig {
            max_connections_per_ip: 4,
            ..ServerConfig::default()
        },
        handler.clone(),
    );
    for _ in 0..12 {
        let mut s = raw_client(server.addr);
        write_frame_blocking(&mut s, b"forever").unwrap();
        wait_until("the call to start", || {
            handler.live.load(Ordering::SeqCst) == 1
        });
        drop(s);
        wait_until("the call to end with its client", || {
            handler.live.load(Ordering::SeqCst) == 0
        });
    }
    wait_until("every connection to close", || {
        server.monitor.connections().authenticated == 0
    });
    let mut s = raw_client(server.addr);
    assert!(echo_once(&mut s, b"served"));
}

/// Issue 15: on a server that requires no authentication every connection
/// counts as authenticated; there, a connection whose request frame has
/// been half-sent for longer than the deadline is closed to make room
/// before any idle one.
#[test]
fn a_frame_half_sent_too_long_makes_room_before_an_idle_connection() {
    let server = TestServer::echo(ServerConfig {
        max_connections_per_ip: 2,
        // Any frame still being read counts as half-sent for too long.
        auth_timeout: Duration::ZERO,
        stall_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    });
    let mut idle = raw_client(server.addr);
    assert!(echo_once(&mut idle, b"idle from now on"));
    let mut stalled = half_sent(&server);
    wait_until("the half-sent frame to be read", || {
        server.monitor.connections().reading == 1
    });
    let mut new = raw_client(server.addr);
    assert!(echo_once(&mut new, b"new"));
    assert!(wait_closed(&mut stalled), "the half-sent frame was kept");
    assert!(echo_once(&mut idle, b"still served"));
}

/// The stall timeout applies to unauthenticated connections too, and an
/// authenticated connection's half-sent frame is closed by it.
#[test]
fn a_stalled_frame_is_closed_by_the_stall_timeout() {
    let server = TestServer::start(
        ServerConfig {
            stall_timeout: Duration::from_millis(100),
            auth_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        },
        Arc::new(Guarded),
    );
    let mut owner = raw_client(server.addr);
    assert!(echo_once(&mut owner, b"token: owner"));
    owner.write_all(&[0, 0]).unwrap();
    let mut stranger = half_sent(&server);
    assert!(
        wait_closed(&mut owner),
        "a stalled authenticated frame was kept"
    );
    assert!(
        wait_closed(&mut stranger),
        "a stalled unauthenticated frame was kept"
    );
    wait_until("every connection to close", || {
        server.monitor.connections() == metabridge_tcp::Connections::default()
    });
}
