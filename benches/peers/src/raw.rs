//! The floor: the same strings as length-prefixed frames (4-byte
//! little-endian length, UTF-8 bytes) over a blocking std socket, one
//! write and (usually) one read per direction.

use crate::common::{
    announce_ready, answer, measure, progress, Measurement, Peer, Settings, REQUEST,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

fn write_frame(w: &mut impl Write, buf: &mut Vec<u8>, s: &str) -> std::io::Result<()> {
    buf.clear();
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    w.write_all(buf)
}

/// Reads one frame; None at a clean end of stream.
fn read_frame(r: &mut impl BufRead, body: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut len = [0u8; 4];
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    r.read_exact(&mut len)?;
    body.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(body)?;
    String::from_utf8(std::mem::take(body))
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The peer's loop: answer every frame until the client hangs up.
fn serve<S>(stream: S) -> std::io::Result<()>
where
    for<'a> &'a S: Read + Write,
{
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let (mut body, mut out) = (Vec::new(), Vec::new());
    while let Some(request) = read_frame(&mut reader, &mut body)? {
        write_frame(&mut writer, &mut out, &answer(&request))?;
    }
    Ok(())
}

fn client<S>(system: &'static str, s: &Settings, stream: S) -> Measurement
where
    for<'a> &'a S: Read + Write,
{
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let (mut body, mut out) = (Vec::new(), Vec::new());
    measure(system, s, || {
        write_frame(&mut writer, &mut out, REQUEST).expect("send");
        read_frame(&mut reader, &mut body)
            .expect("receive")
            .expect("peer hung up")
    })
}

pub fn peer_uds(path: &str) -> std::io::Result<()> {
    let listener = UnixListener::bind(path)?;
    announce_ready(path);
    let (stream, _) = listener.accept()?;
    drop(listener);
    let _ = std::fs::remove_file(path);
    serve(stream)
}

pub fn peer_tcp() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    announce_ready(&listener.local_addr()?.to_string());
    let (stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    serve(stream)
}

pub fn bench_uds(s: &Settings, dir: &Path) -> Result<Measurement, String> {
    progress(s, "raw Unix socket");
    let path = dir.join("raw.sock");
    let mut peer = Peer::spawn("raw-uds", &path.to_string_lossy())?;
    peer.ready()?;
    let stream = UnixStream::connect(&path).map_err(|e| format!("connect: {e}"))?;
    s.placement.apply(peer.pid());
    let m = client("raw-uds", s, stream);
    peer.finish();
    Ok(m)
}

pub fn bench_tcp(s: &Settings) -> Result<Measurement, String> {
    progress(s, "raw TCP loopback");
    let mut peer = Peer::spawn("raw-tcp", "")?;
    let addr = peer.ready()?;
    let stream = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    s.placement.apply(peer.pid());
    let m = client("raw-tcp", s, stream);
    peer.finish();
    Ok(m)
}

/// The same frames served by a tokio multi-thread runtime (as MetaBridge's
/// TCP server is) and sent by a tokio client: the "raw tokio TCP
/// ping-pong" MetaBridge's TCP transport is held against.
pub fn peer_tokio_tcp() -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        announce_ready(&listener.local_addr()?.to_string());
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (mut body, mut out) = (Vec::new(), Vec::new());
        loop {
            let mut len = [0u8; 4];
            if stream.read_exact(&mut len).await.is_err() {
                return Ok(());
            }
            body.resize(u32::from_le_bytes(len) as usize, 0);
            stream.read_exact(&mut body).await?;
            let request = String::from_utf8_lossy(&body).into_owned();
            let reply = answer(&request);
            out.clear();
            out.extend_from_slice(&(reply.len() as u32).to_le_bytes());
            out.extend_from_slice(reply.as_bytes());
            stream.write_all(&out).await?;
        }
    })
}

pub fn bench_tokio_tcp(s: &Settings) -> Result<Measurement, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    progress(s, "raw tokio TCP loopback");
    let mut peer = Peer::spawn("raw-tokio-tcp", "")?;
    let addr = peer.ready()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut stream = rt
        .block_on(tokio::net::TcpStream::connect(&addr))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    s.placement.apply(peer.pid());
    let (mut body, mut out) = (Vec::new(), Vec::new());
    let m = measure("raw-tokio-tcp", s, || {
        rt.block_on(async {
            out.clear();
            out.extend_from_slice(&(REQUEST.len() as u32).to_le_bytes());
            out.extend_from_slice(REQUEST.as_bytes());
            stream.write_all(&out).await.expect("send");
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).await.expect("receive");
            body.resize(u32::from_le_bytes(len) as usize, 0);
            stream.read_exact(&mut body).await.expect("receive");
            String::from_utf8(std::mem::take(&mut body)).expect("UTF-8")
        })
    });
    drop(stream);
    peer.finish();
    Ok(m)
}
