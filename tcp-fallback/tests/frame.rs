//! Frame encoding round trips and length-bound checks, over real sockets.

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use metabridge_tcp::frame::{
    read_frame, read_frame_blocking, write_frame, write_frame_blocking, FrameError,
    DEFAULT_MAX_FRAME, READ_CHUNK,
};
use tokio::io::AsyncWriteExt;

fn payloads() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        b"x".to_vec(),
        (0..=255u8).collect(),
        vec![0xAB; 4092],
        vec![0xCD; 4093],
        (0..100_000u32).map(|i| (i % 251) as u8).collect(),
        (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect(),
        Vec::new(),
    ]
}

/// A connected pair of blocking sockets on 127.0.0.1.
fn std_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
    }
    (client, server)
}

/// A connected pair of tokio sockets on 127.0.0.1.
async fn tokio_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

#[test]
fn blocking_round_trip_over_tcp() {
    let (mut client, mut server) = std_pair();
    let sent = payloads();
    let expected = sent.clone();
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_frame_blocking(&mut server, DEFAULT_MAX_FRAME, &mut buf) {
                Ok(()) => got.push(buf.clone()),
                Err(FrameError::Closed) => return got,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    for p in &sent {
        write_frame_blocking(&mut client, p).unwrap();
    }
    drop(client);
    assert_eq!(reader.join().unwrap(), expected);
}

#[tokio::test]
async fn async_round_trip_over_tcp() {
    let (mut client, mut server) = tokio_pair().await;
    let sent = payloads();
    let expected = sent.clone();
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_frame(&mut server, DEFAULT_MAX_FRAME, &mut buf).await {
                Ok(()) => got.push(buf.clone()),
                Err(FrameError::Closed) => return got,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    for p in &sent {
        write_frame(&mut client, p).await.unwrap();
    }
    client.shutdown().await.unwrap();
    assert_eq!(reader.await.unwrap(), expected);
}

#[tokio::test]
async fn async_and_blocking_encodings_are_identical() {
    for p in payloads() {
        let mut a = Vec::new();
        write_frame(&mut a, &p).await.unwrap();
        let mut b = Vec::new();
        write_frame_blocking(&mut b, &p).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..4], &(p.len() as u32).to_be_bytes());
        assert_eq!(&a[4..], &p[..]);
    }
}

#[test]
fn blocking_declared_4_gib_is_too_large_without_allocating() {
    // In memory.
    let mut buf = Vec::new();
    let err = read_frame_blocking(&mut &[0xFF; 4][..], DEFAULT_MAX_FRAME, &mut buf).unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            declared: 0xFFFF_FFFF,
            max: DEFAULT_MAX_FRAME
        }
    ));
    assert_eq!(buf.capacity(), 0);

    // Over a socket, with more bytes following the prefix.
    let (mut client, mut server) = std_pair();
    client
        .write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3])
        .unwrap();
    let mut buf = Vec::new();
    let err = read_frame_blocking(&mut server, DEFAULT_MAX_FRAME, &mut buf).unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            declared: 0xFFFF_FFFF,
            ..
        }
    ));
    assert_eq!(buf.capacity(), 0);
}

#[tokio::test]
async fn async_declared_4_gib_is_too_large_without_allocating() {
    let mut buf = Vec::new();
    let err = read_frame(&mut &[0xFF; 4][..], DEFAULT_MAX_FRAME, &mut buf)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            declared: 0xFFFF_FFFF,
            max: DEFAULT_MAX_FRAME
        }
    ));
    assert_eq!(buf.capacity(), 0);

    let (mut client, mut server) = tokio_pair().await;
    client
        .write_all(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let err = read_frame(&mut server, DEFAULT_MAX_FRAME, &mut buf)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            declared: 0xFFFF_FFFF,
            ..
        }
    ));
    assert_eq!(buf.capacity(), 0);
}

#[test]
fn blocking_lying_length_within_max_does_not_preallocate() {
    // Declares 60 MiB (allowed), sends 100 bytes, then closes.
    let (mut client, mut server) = std_pair();
    client.write_all(&(60u32 << 20).to_be_bytes()).unwrap();
    client.write_all(&[9; 100]).unwrap();
    drop(client);
    let mut buf = Vec::new();
    let err = read_frame_blocking(&mut server, DEFAULT_MAX_FRAME, &mut buf).unwrap_err();
    match err {
        FrameError::Io(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        buf.capacity() <= 2 * READ_CHUNK,
        "capacity {}",
        buf.capacity()
    );
}

#[tokio::test]
async fn async_lying_length_within_max_does_not_preallocate() {
    let (mut client, mut server) = tokio_pair().await;
    client
        .write_all(&(60u32 << 20).to_be_bytes())
        .await
        .unwrap();
    client.write_all(&[9; 100]).await.unwrap();
    drop(client);
    let mut buf = Vec::new();
    let err = read_frame(&mut server, DEFAULT_MAX_FRAME, &mut buf)
        .await
        .unwrap_err();
    match err {
        FrameError::Io(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        buf.capacity() <= 2 * READ_CHUNK,
        "capacity {}",
        buf.capacity()
    );
}

#[test]
fn clean_eof_is_closed_and_partial_prefix_is_unexpected_eof() {
    let mut buf = vec![1, 2, 3];
    let err = read_frame_blocking(&mut &[][..], 16, &mut buf).unwrap_err();
    assert!(matches!(err, FrameError::Closed));
    assert!(buf.is_empty(), "buf is cleared even on error");

    let err = read_frame_blocking(&mut &[0, 0][..], 16, &mut buf).unwrap_err();
    assert!(matches!(err, FrameError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
}

#[tokio::test]
async fn async_clean_eof_is_closed_and_partial_prefix_is_unexpected_eof() {
    let mut buf = Vec::new();
    let err = read_frame(&mut &[][..], 16, &mut buf).await.unwrap_err();
    assert!(matches!(err, FrameError::Closed));
    let err = read_frame(&mut &[0, 0, 0][..], 16, &mut buf)
        .await
        .unwrap_err();
    assert!(matches!(err, FrameError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
    let err = read_frame(&mut &[0, 0, 0, 5, 1][..], 16, &mut buf)
        .await
        .unwrap_err();
    assert!(matches!(err, FrameError::Io(ref e) if e.kind() == io::ErrorKind::UnexpectedEof));
}

#[test]
fn exact_max_is_accepted_and_one_more_is_not() {
    let mut wire = Vec::new();
    write_frame_blocking(&mut wire, &[5; 10]).unwrap();
    let mut buf = Vec::new();
    read_frame_blocking(&mut &wire[..], 10, &mut buf).unwrap();
    assert_eq!(buf, [5; 10]);
    let err = read_frame_blocking(&mut &wire[..], 9, &mut buf).unwrap_err();
    assert!(matches!(
        err,
        FrameError::TooLarge {
            declared: 10,
            max: 9
        }
    ));
}

#[test]
fn reused_buffer_is_cleared_and_keeps_its_allocation() {
    let mut wire = Vec::new();
    write_frame_blocking(&mut wire, &[1; 5000]).unwrap();
    write_frame_blocking(&mut wire, b"ab").unwrap();
    let mut r = &wire[..];
    let mut buf = Vec::new();
    read_frame_blocking(&mut r, 1 << 20, &mut buf).unwrap();
    assert_eq!(buf.len(), 5000);
    let cap = buf.capacity();
    read_frame_blocking(&mut r, 1 << 20, &mut buf).unwrap();
    assert_eq!(buf, b"ab");
    assert_eq!(buf.capacity(), cap);
}
