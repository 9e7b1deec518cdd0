//! Server behaviour over real sockets on 127.0.0.1 (port 0).

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{raw_client, too_large_body, wait_closed, Slow, TestServer};
use metabridge_tcp::frame::{read_frame_blocking, write_frame_blocking, DEFAULT_MAX_FRAME};
use metabridge_tcp::{Pool, PoolConfig, ServerConfig};

fn payload(thread: usize, i: usize) -> Vec<u8> {
    let mut p = format!("t{thread}-c{i}-").into_bytes();
    p.resize(p.len() + (i % 97), (i % 256) as u8);
    p
}

#[test]
fn many_sequential_requests_on_one_connection() {
    let server = TestServer::echo(ServerConfig::default());
    let mut s = raw_client(server.addr);
    let mut buf = Vec::new();
    for i in 0..500 {
        let p = payload(0, i * 37);
        write_frame_blocking(&mut s, &p).unwrap();
        read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, p);
    }
    // Large and empty frames on the same connection.
    for p in [vec![3u8; 1 << 20], Vec::new(), b"tail".to_vec()] {
        write_frame_blocking(&mut s, &p).unwrap();
        read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, p);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::echo(ServerConfig::default());
    let mut s = raw_client(server.addr);
    let mut wire = Vec::new();
    for i in 0..50 {
        write_frame_blocking(&mut wire, &payload(1, i)).unwrap();
    }
    s.write_all(&wire).unwrap();
    let mut buf = Vec::new();
    for i in 0..50 {
        read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, payload(1, i));
    }
}

/// Runs `threads` threads doing `calls` calls each through `pool`, checking
/// every response, while sampling `open_connections()`; returns the largest
/// sample.
fn hammer(pool: &Arc<Pool>, threads: usize, calls: usize) -> usize {
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let pool = Arc::clone(pool);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut max = 0;
            while !done.load(Ordering::Relaxed) {
                max = max.max(pool.open_connections());
                thread::sleep(Duration::from_millis(1));
            }
            max
        })
    };
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let pool = Arc::clone(pool);
            thread::spawn(move || {
                let mut response = Vec::new();
                for i in 0..calls {
                    let request = payload(t, i);
                    pool.call(&request, &mut response)
                        .unwrap_or_else(|e| panic!("thread {t} call {i}: {e}"));
                    assert_eq!(response, request, "thread {t} call {i}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    monitor.join().unwrap().max(pool.open_connections())
}

#[test]
fn sixteen_threads_share_one_pool() {
    // The server refuses a 17th connection, so a pool exceeding its limit
    // would make calls fail.
    let server = TestServer::echo(ServerConfig {
        max_connections: 16,
        ..ServerConfig::default()
    });
    let pool = Arc::new(Pool::new(server.addr, PoolConfig::default()));
    let max_open = hammer(&pool, 16, 1000);
    assert!(max_open <= 16, "pool opened {max_open} connections");
    assert!(pool.open_connections() >= 1);
}

#[test]
fn pool_waits_instead_of_exceeding_its_limit() {
    let handler = Slow::new(Duration::from_micros(200));
    let server = TestServer::start(ServerConfig::default(), handler.clone());
    let pool = Arc::new(Pool::new(
        server.addr,
        PoolConfig {
            max_connections: 3,
            ..PoolConfig::default()
        },
    ));
    let max_open = hammer(&pool, 8, 100);
    assert!(max_open <= 3, "pool opened {max_open} connections");
    let max_in_flight = handler.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max_in_flight <= 3,
        "server saw {max_in_flight} concurrent calls"
    );
    assert_eq!(handler.finished.load(Ordering::SeqCst), 800);
}

#[test]
fn oversized_frame_gets_error_response_and_close_while_others_are_served() {
    let max = 1 << 20;
    let server = TestServer::echo(ServerConfig {
        max_frame: max,
        ..ServerConfig::default()
    });

    // A well-behaved client calling throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let pool = Pool::connect(server.addr, PoolConfig::default()).unwrap();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut response = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) || n < 10 {
                let request = payload(2, n);
                pool.call(&request, &mut response).unwrap();
                assert_eq!(response, request);
                n += 1;
            }
            n
        })
    };

    let mut bad = raw_client(server.addr);
    bad.write_all(&0xFFFF_FFFFu32.to_be_bytes()).unwrap();
    bad.write_all(b"some garbage that follows").unwrap();
    let mut buf = Vec::new();
    read_frame_blocking(&mut bad, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(buf, too_large_body(0xFFFF_FFFF, max));
    assert!(wait_closed(&mut bad), "connection was not closed");

    stop.store(true, Ordering::Relaxed);
    let calls = good.join().unwrap();
    assert!(calls >= 10);
}

#[test]
fn a_silent_client_does_not_block_others() {
    // A read timeout far longer than any of the calls below may take: if
    // the silent connection blocked them, they would time out first.
    let server = TestServer::echo(ServerConfig {
        stall_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    });
    let mut silent = raw_client(server.addr);
    silent.write_all(&[0, 0]).unwrap(); // half a length prefix, then nothing
    let pool = Pool::connect(
        server.addr,
        PoolConfig {
            call_timeout: Some(Duration::from_secs(30)),
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let mut response = Vec::new();
    for i in 0..10 {
        pool.call(&payload(3, i), &mut response).unwrap();
        assert_eq!(response, payload(3, i));
    }
}

#[test]
fn a_silent_client_is_closed_after_its_read_timeout() {
    let read_timeout = Duration::from_millis(200);
    let server = TestServer::echo(ServerConfig {
        stall_timeout: read_timeout,
        idle_timeout: Duration::from_secs(30),
        ..ServerConfig::default()
    });
    let mut silent = raw_client(server.addr);
    silent.write_all(&[0, 0]).unwrap(); // half a length prefix, then nothing
    let t0 = Instant::now();
    assert!(wait_closed(&mut silent), "silent connection was not closed");
    // A lower bound only: load can make it later, never earlier.
    let waited = t0.elapsed();
    assert!(
        waited >= read_timeout - Duration::from_millis(20),
        "closed too early: {waited:?}"
    );
}

#[test]
fn idle_connection_is_closed_after_idle_timeout() {
    let server = TestServer::echo(ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    });
    let mut s = raw_client(server.addr);
    let mut buf = Vec::new();
    write_frame_blocking(&mut s, b"one").unwrap();
    read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    let t0 = Instant::now();
    assert!(wait_closed(&mut s));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "closed too late: {waited:?}"
    );
}

#[test]
fn max_connections_is_enforced() {
    let server = TestServer::echo(ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    });
    let mut buf = Vec::new();
    let mut open: Vec<_> = (0..2)
        .map(|i| {
            let mut s = raw_client(server.addr);
            write_frame_blocking(&mut s, &[i]).unwrap();
            read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
            assert_eq!(buf, [i]);
            s
        })
        .collect();

    // The two are idle: a third one takes the place of one of them (the
    // one idle the longest, which of the two that is depends on when each
    // task went back to waiting), which is closed.
    let mut third = raw_client(server.addr);
    write_frame_blocking(&mut third, b"third").unwrap();
    read_frame_blocking(&mut third, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(buf, b"third");
    drop(third);
    let served: Vec<bool> = open
        .iter_mut()
        .map(|s| {
            write_frame_blocking(s, b"still here").is_ok()
                && read_frame_blocking(s, DEFAULT_MAX_FRAME, &mut buf).is_ok()
        })
        .collect();
    assert_eq!(served.iter().filter(|&&ok| ok).count(), 1, "{served:?}");
    let survivor = served.iter().position(|&ok| ok).unwrap();
    let mut open = vec![open.swap_remove(survivor)];
    // Refusal when nothing is idle: see tests/limits.rs.

    // Once one closes, its slot is reused.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut s = raw_client(server.addr);
        let served = write_frame_blocking(&mut s, b"again").is_ok()
            && read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).is_ok();
        if served {
            assert_eq!(buf, b"again");
            break;
        }
        assert!(Instant::now() < deadline, "slot was never freed");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn shutdown_lets_in_flight_call_finish_then_run_returns() {
    let handler = Slow::new(Duration::from_millis(300));
    let mut server = TestServer::start(ServerConfig::default(), handler.clone());
    let pool = Arc::new(Pool::connect(server.addr, PoolConfig::default()).unwrap());

    let caller = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            let mut response = Vec::new();
            pool.call(b"in flight", &mut response).map(|()| response)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    while handler.started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "call never reached the handler");
        thread::sleep(Duration::from_millis(1));
    }

    let took = server.shutdown();
    assert_eq!(handler.finished.load(Ordering::SeqCst), 1);
    assert!(
        took < Duration::from_secs(2),
        "run() took {took:?} to return"
    );
    assert_eq!(caller.join().unwrap().unwrap(), b"in flight");

    // Nothing is accepted any more.
    let mut response = Vec::new();
    assert!(pool.call(b"late", &mut response).is_err());
}

#[test]
fn shutdown_closes_idle_connections_promptly() {
    let mut server = TestServer::echo(ServerConfig::default());
    let pool = Pool::connect(server.addr, PoolConfig::default()).unwrap();
    let mut raw = raw_client(server.addr);
    let mut response = Vec::new();
    pool.call(b"warm", &mut response).unwrap();

    let took = server.shutdown();
    assert!(
        took < Duration::from_secs(1),
        "run() took {took:?} to return"
    );
    assert!(wait_closed(&mut raw));
}

#[test]
fn panicking_handler_only_loses_its_own_connection() {
    use std::future::Future;
    use std::pin::Pin;

    struct Picky;
    impl metabridge_tcp::Handler for Picky {
        fn call(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
            Box::pin(async move {
                assert_ne!(request, b"panic", "handler asked to panic");
                request
            })
        }
        fn frame_too_large(&self, declared: u64, max: usize) -> Vec<u8> {
            too_large_body(declared, max)
        }
    }

    let server = TestServer::start(ServerConfig::default(), Arc::new(Picky));
    let mut other = raw_client(server.addr);
    let mut buf = Vec::new();
    write_frame_blocking(&mut other, b"before").unwrap();
    read_frame_blocking(&mut other, DEFAULT_MAX_FRAME, &mut buf).unwrap();

    let pool = Pool::new(server.addr, PoolConfig::default());
    let mut response = Vec::new();
    assert!(pool.call(b"panic", &mut response).is_err());
    assert_eq!(
        pool.open_connections(),
        0,
        "failed connection was not dropped"
    );

    write_frame_blocking(&mut other, b"after").unwrap();
    read_frame_blocking(&mut other, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(buf, b"after");
    pool.call(b"fine", &mut response).unwrap();
    assert_eq!(response, b"fine");
}

#[test]
fn pooled_connection_closed_by_server_is_replaced_transparently() {
    let server = TestServer::echo(ServerConfig {
        idle_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    });
    let pool = Pool::new(server.addr, PoolConfig::default());
    let mut response = Vec::new();
    pool.call(b"first", &mut response).unwrap();
    // Longer than the server's idle timeout: the server closes the pooled
    // connection, and the pool notices before reusing it.
    thread::sleep(Duration::from_millis(300));
    pool.call(b"second", &mut response).unwrap();
    assert_eq!(response, b"second");
    assert_eq!(pool.open_connections(), 1);
}

#[test]
fn connections_are_served_concurrently() {
    // Many connections each with a slow request are served concurrently.
    let handler = Slow::new(Duration::from_millis(100));
    let server = TestServer::start(ServerConfig::default(), handler.clone());
    let pool = Arc::new(Pool::new(server.addr, PoolConfig::default()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                let mut response = Vec::new();
                pool.call(&payload(t, 0), &mut response).unwrap();
                assert_eq!(response, payload(t, 0));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // All 8 were in the handler at once: concurrency shown by the count,
    // not by a wall-clock bound.
    assert_eq!(handler.max_in_flight.load(Ordering::SeqCst), 8);
}

/// The server polling its loopback clients (`ServerConfig::spin`): whole
/// frames, split frames, large and empty ones, pipelined ones and a lying
/// length all behave exactly as on the runtime path.
#[test]
fn a_polling_server_reads_every_kind_of_frame_correctly() {
    let polling = ServerConfig {
        spin: Duration::from_millis(2),
        max_frame: 4 << 20,
        ..ServerConfig::default()
    };
    let server = TestServer::echo(polling.clone());
    let mut s = raw_client(server.addr);
    let mut buf = Vec::new();
    for i in 0..300 {
        let p = payload(3, i * 53);
        write_frame_blocking(&mut s, &p).unwrap();
        read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, p);
    }
    // A frame whose prefix and body arrive in pieces, with pauses longer
    // and shorter than the polling window.
    let p = payload(4, 999);
    let mut wire = Vec::new();
    write_frame_blocking(&mut wire, &p).unwrap();
    for (k, piece) in wire.chunks(3).enumerate() {
        s.write_all(piece).unwrap();
        thread::sleep(Duration::from_micros(if k % 2 == 0 { 100 } else { 3000 }));
    }
    read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(buf, p);
    // Large (past the polled size), empty, pipelined.
    for p in [vec![5u8; 1 << 20], Vec::new()] {
        write_frame_blocking(&mut s, &p).unwrap();
        read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, p);
    }
    let mut wire = Vec::new();
    for i in 0..20 {
        write_frame_blocking(&mut wire, &payload(5, i)).unwrap();
    }
    s.write_all(&wire).unwrap();
    for i in 0..20 {
        read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
        assert_eq!(buf, payload(5, i));
    }
    // A lying length gets the error response and the close.
    s.write_all(&0xFFFF_FFFFu32.to_be_bytes()).unwrap();
    read_frame_blocking(&mut s, DEFAULT_MAX_FRAME, &mut buf).unwrap();
    assert_eq!(buf, too_large_body(0xFFFF_FFFF, polling.max_frame));
    assert!(wait_closed(&mut s), "connection was not closed");
}

/// Issue 15: a fixed deadline for a whole frame capped a message by link
/// speed. Bytes moving keep a frame going, in both directions.
#[test]
fn a_large_frame_over_a_slow_link_goes_through_while_bytes_keep_moving() {
    let stall = Duration::from_millis(500);
    let server = TestServer::echo(ServerConfig {
        stall_timeout: stall,
        ..ServerConfig::default()
    });
    let mut s = raw_client(server.addr);
    // 2 MiB in 100 pieces, 20 ms apart: 2 s in all, four times the stall
    // bound, with no gap near it.
    let body: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let t0 = Instant::now();
    for piece in frame.chunks(frame.len().div_ceil(100)) {
        s.write_all(piece).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    // Read back slowly too: 64 KiB every 20 ms.
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).unwrap();
    assert_eq!(u32::from_be_bytes(prefix) as usize, body.len());
    let mut back = vec![0u8; body.len()];
    for piece in back.chunks_mut(64 << 10) {
        s.read_exact(piece).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    assert!(back == body, "the echo differs");
    assert!(
        t0.elapsed() > stall,
        "the test was not slow enough to mean anything"
    );
}
