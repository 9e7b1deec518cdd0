//! Shared test helpers: handlers and a server running on its own runtime.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metabridge_tcp::{Handler, Monitor, Server, ServerConfig, ShutdownHandle, Stopped};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// The body `Echo` and friends answer an oversized frame with.
pub fn too_large_body(declared: u64, max: usize) -> Vec<u8> {
    format!("too large: {declared} > {max}").into_bytes()
}

/// Answers every request with its own bytes.
pub struct Echo;

impl Handler for Echo {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move { request })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
}

/// Echoes after a delay, counting calls started/finished and the largest
/// number of calls in progress at once.
#[derive(Default)]
pub struct Slow {
    pub delay: Duration,
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl Slow {
    pub fn new(delay: Duration) -> Arc<Slow> {
        Arc::new(Slow {
            delay,
            ..Slow::default()
        })
    }
}

impl Handler for Slow {
    fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.finished.fetch_add(1, Ordering::SeqCst);
            request
        })
    }
    fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
        too_large_body(declared, max)
    }
}

/// A server running `run()` on its own small multi-thread runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stop: ShutdownHandle,
    pub monitor: Monitor,
    rt: Option<Runtime>,
    running: Option<JoinHandle<io::Result<Stopped>>>,
}

impl TestServer {
    pub fn start(config: ServerConfig, handler: Arc<dyn Handler>) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(Server::bind("127.0.0.1:0", config, handler))
            .expect("bind");
        let addr = server.local_addr();
        let stop = server.shutdown_handle();
        let monitor = server.monitor();
        let running = rt.spawn(server.run());
        TestServer {
            addr,
            stop,
            monitor,
            rt: Some(rt),
            running: Some(running),
        }
    }

    pub fn echo(config: ServerConfig) -> TestServer {
        TestServer::start(config, Arc::new(Echo))
    }

    /// Requests shutdown and waits (bounded) for `run()` to return; returns
    /// how long that took.
    pub fn shutdown(&mut self) -> Duration {
        let t0 = Instant::now();
        self.shutdown_report();
        t0.elapsed()
    }

    /// Requests shutdown and waits (bounded) for `run()` to return; returns
    /// what it returned.
    pub fn shutdown_report(&mut self) -> Stopped {
        self.stop.shutdown();
        let rt = self.rt.as_ref().expect("runtime");
        let running = self.running.take().expect("still running");
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), running).await })
            .expect("run() returned within 10 s")
            .expect("run() did not panic")
            .expect("run() returned Ok")
    }

    /// Shuts down and drops the runtime, so every socket is closed.
    pub fn kill(mut self) {
        self.stop.shutdown();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// Waits (bounded, so that a bug fails the test rather than hanging it)
/// until `done` holds.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A raw blocking client socket with a safety read timeout.
pub fn raw_client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads until end of stream or error; returns true if the peer closed
/// (EOF or reset) and false if the safety timeout hit instead.
pub fn wait_closed(s: &mut TcpStream) -> bool {
    use std::io::Read;
    let mut scratch = [0u8; 1024];
    loop {
        match s.read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}
