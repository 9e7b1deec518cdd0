//! The TCP transport's client side: a pool of sockets to one service
//! (`metabridge_tcp::Pool`), the original library's framing.

use super::{interrupted_wait, CallTransport, Limits, INTERRUPT_SLICE};
use crate::envelope;
use crate::error::{Error, PeerGone, ProtocolError, Result, TimedOut};
use crate::resolve::ServiceAddress;
use metabridge_tcp::{Pool, PoolConfig, PoolError};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

/// Sockets to one service, and the largest request it may send.
pub(crate) struct TcpPool {
    pool: Arc<Pool>,
    max: usize,
}

impl CallTransport for TcpPool {
    fn open(address: &ServiceAddress, limits: &Limits, token: Option<&str>) -> Result<TcpPool> {
        let addr = address.tcp_address("tcp")?;
        let sock = addr.to_socket_addrs()?.next().ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "{addr} resolves to no address"
            )))
        })?;
        // On loopback an answer comes sooner than a blocked thread is woken:
        // poll a little before blocking.
        let spin = if sock.ip().is_loopback() {
            Duration::from_micros(50)
        } else {
            Duration::ZERO
        };
        // A service with a token lets a connection send large frames only
        // once it has authenticated: greet each new connection with a small
        // request carrying the token, so a first call may be of any size.
        let greeting = token.map(|t| {
            let mut hello = Vec::new();
            envelope::encode_list(
                &mut hello,
                &envelope::encode_ctor(&[0x90], &[0x80]),
                Some(t),
            );
            Arc::<[u8]>::from(hello)
        });
        let config = PoolConfig {
            max_connections: limits.channels,
            max_frame: limits.message,
            connect_timeout: limits.timeout.min(Duration::from_secs(5)),
            call_timeout: Some(limits.timeout),
            spin,
            greeting,
            #[cfg(feature = "tls")]
            tls: tls_connector(address, addr, limits)?,
        };
        #[cfg(not(feature = "tls"))]
        if address.tls_pin.is_some() {
            return Err(Error::Unreachable {
                name: address.name.clone(),
                transport: "tcp",
                why: "its TCP port serves TLS only, and this build has no TLS (build metabridge with its `tls` feature)",
            });
        }
        let pool = Pool::connect(sock, config).map_err(pool_error)?;
        Ok(TcpPool {
            pool: Arc::new(pool),
            max: limits.message,
        })
    }

    fn round_trip<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        timeout: Duration,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R> {
        let mut request = Vec::with_capacity(128);
        encode(&mut request)?;
        if request.len() > self.max {
            return Err(Error::MessageTooLarge {
                len: request.len() as u64,
                max: self.max as u64,
            });
        }
        let mut response = Vec::with_capacity(128);
        match interrupt {
            None => self
                .pool
                .call_within(&request, &mut response, Some(timeout))
                .map_err(pool_error)?,
            Some(interrupt) => {
                response = tcp_call_interruptibly(&self.pool, request, timeout, interrupt)?;
            }
        }
        decode(&response)
    }

    fn open_channels(&self) -> usize {
        self.pool.open_connections()
    }

    fn close(&self) {
        self.pool.close()
    }

    fn abort_calls(&self) -> usize {
        // Each call's socket is shut down under it: it fails as a lost
        // connection (`PeerGone`).
        self.pool.abort()
    }
}

/// How the pool speaks TLS to the service at `addr` (`host:port`): as the
/// client was told, else pinned to the fingerprint the service published
/// in this user's registry; `None`: plaintext.
#[cfg(feature = "tls")]
fn tls_connector(
    address: &ServiceAddress,
    addr: &str,
    limits: &Limits,
) -> Result<Option<metabridge_tcp::tls::TlsConnector>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls = match (&limits.tls, &address.tls_pin) {
        (Some(tls), _) => tls.clone(),
        (None, Some(pin)) => metabridge_tcp::tls::ClientTls::pinned(pin)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(tls.connector(host)?))
}

/// A TCP pool's error as the client's. A connection that ends or is reset
/// under a call (the service stopped or died) is `PeerGone`, as over
/// shared memory; a refused connect stays `Io` (the service is not there:
/// the client reports it not found).
pub(super) fn pool_error(e: PoolError) -> Error {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    match e {
        PoolError::Io(io)
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) =>
        {
            Error::PeerGone(PeerGone::TcpLost(io))
        }
        PoolError::Frame(metabridge_tcp::FrameError::Closed) => {
            Error::PeerGone(PeerGone::TcpClosed)
        }
        PoolError::Io(io) => Error::Io(io),
        PoolError::Timeout => Error::Timeout(TimedOut::TcpReply),
        PoolError::Closed => Error::PeerGone(PeerGone::ClientClosed),
        PoolError::Frame(metabridge_tcp::FrameError::TooLarge { declared, max }) => {
            Error::MessageTooLarge {
                len: declared,
                max: max as u64,
            }
        }
        PoolError::Frame(f) => Error::Protocol(ProtocolError::Frame(f)),
        #[cfg(feature = "tls")]
        PoolError::Tls(tls) => Error::Tls(tls),
    }
}

/// A TCP call on a helper thread, waited for in [`INTERRUPT_SLICE`]s so
/// that `interrupt` (a pending Ctrl+C in Python) can end the wait.
fn tcp_call_interruptibly(
    pool: &Arc<Pool>,
    request: Vec<u8>,
    timeout: Duration,
    interrupt: &dyn Fn() -> bool,
) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pool = Arc::clone(pool);
    std::thread::Builder::new()
        .name("metabridge-tcp-call".into())
        .spawn(move || {
            let mut response = Vec::with_capacity(128);
            let r = pool
                .call_within(&request, &mut response, Some(timeout))
                .map(|()| response);
            let _ = tx.send(r);
        })?;
    loop {
        match rx.recv_timeout(INTERRUPT_SLICE) {
            Ok(r) => return r.map_err(pool_error),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupt() {
                    return Err(interrupted_wait());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::PeerGone(PeerGone::TcpCallThread))
            }
        }
    }
}
