//! The transport seam: shared memory and TCP (and the next transport)
//! carry request envelopes behind one small interface, [`CallTransport`].
//! This file only wires them: each transport's client side is a module of
//! its own (`shm.rs`, `tcp.rs`), and the one line that registers them,
//! in the order `TransportKind::Auto` tries them, is the `transports!`
//! call below. The service sides are in `server/`.
//!
//! The enum the macro makes is dispatched statically: a call costs one
//! `match`, never a virtual call or a boxed closure.

mod shm;
mod tcp;

use crate::config::TransportKind;
use crate::error::{Error, Result};
use crate::resolve::ServiceAddress;
use std::time::Duration;

/// One transport's client side: connections to one service that carry a
/// request envelope and bring its response back.
pub(crate) trait CallTransport: Sized {
    /// Opens it to the service at `address` (an error if the address
    /// gives it no way there), with the client's `limits` and the token it
    /// presents.
    fn open(address: &ServiceAddress, limits: &Limits, token: Option<&str>) -> Result<Self>;

    /// Encodes a request with `encode`, carries it, and decodes the
    /// response bytes with `decode` (in place, for shared memory), all
    /// within `timeout` (the client's, or the one a call was given):
    /// waiting for a connection, sending, and waiting for the reply.
    /// `interrupt`, if given, is asked every [`INTERRUPT_SLICE`] while a
    /// shared-memory call waits for its reply; when it answers true the
    /// wait ends with `io::ErrorKind::Interrupted` and the channel is
    /// retired like a timed-out one (the call is never replayed, and its
    /// late reply can never reach another call). A TCP call with an
    /// interrupt check runs on a helper thread while the caller waits in
    /// slices; interrupted, the caller returns and the helper finishes the
    /// exchange alone, its reply discarded (the connection stays in order).
    fn round_trip<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
        decode: impl FnOnce(&[u8]) -> Result<R>,
        timeout: Duration,
        interrupt: Option<&dyn Fn() -> bool>,
    ) -> Result<R>;

    /// Channels or sockets open now.
    fn open_channels(&self) -> usize;

    /// Closes every idle connection; calls in flight finish first.
    fn close(&self);

    /// Ends the calls in flight now, each with an error (they may have
    /// run); how many. A transport that cannot end a call it waits on
    /// returns 0 and its calls end as they would have.
    fn abort_calls(&self) -> usize;
}

/// Declares [`Transport`], one variant per transport, in the order
/// `TransportKind::Auto` tries them, with methods that forward to each.
/// Each line: the variant, its type, the [`TransportKind`] that asks for
/// it, and its name (as `Client::transport_name` reports it).
macro_rules! transports {
    ($($variant:ident($ty:ty) = $kind:expr, $name:literal;)+) => {
        /// A client's transport: one of the registered ones. (One per
        /// client connection, so a large variant inline is no concern.)
        #[allow(clippy::large_enum_variant)]
        pub(crate) enum Transport {
            $(
                #[doc = concat!("`", stringify!($ty), "`.")]
                $variant($ty),
            )+
        }

        impl Transport {
            /// Opens the transport `kind` asks for; for `Auto`, the first
            /// in registration order that opens (each failure is logged and
            /// the next tried; the last one's error is returned).
            pub(crate) fn open(
                kind: TransportKind,
                address: &ServiceAddress,
                limits: &Limits,
                token: Option<&str>,
            ) -> Result<Transport> {
                let mut last = None;
                $(
                    if kind == TransportKind::Auto || kind == $kind {
                        match <$ty>::open(address, limits, token) {
                            Ok(t) => return Ok(Transport::$variant(t)),
                            Err(e) => {
                                tracing::debug!(
                                    "{} to {:?} unavailable ({e})",
                                    $name,
                                    address.name
                                );
                                last = Some(e);
                            }
                        }
                    }
                )+
                Err(last.expect("every TransportKind names a registered transport"))
            }

            /// See [`CallTransport::round_trip`].
            #[inline]
            pub(crate) fn round_trip<R>(
                &self,
                encode: impl FnOnce(&mut Vec<u8>) -> Result<()>,
                decode: impl FnOnce(&[u8]) -> Result<R>,
                timeout: Duration,
                interrupt: Option<&dyn Fn() -> bool>,
            ) -> Result<R> {
                match self {
                    $(Transport::$variant(t) => t.round_trip(encode, decode, timeout, interrupt),)+
                }
            }

            /// The shared-memory pool, if this is one (for async calls,
            /// which it carries natively).
            pub(crate) fn shm(&self) -> Option<&shm::ShmPool> {
                #[allow(irrefutable_let_patterns, unreachable_patterns)]
                match self {
                    Transport::Shm(pool) => Some(pool),
                    _ => None,
                }
            }

            pub(crate) fn name(&self) -> &'static str {
                match self {
                    $(Transport::$variant(_) => $name,)+
                }
            }

            pub(crate) fn open_channels(&self) -> usize {
                match self {
                    $(Transport::$variant(t) => t.open_channels(),)+
                }
            }

            pub(crate) fn close(&self) {
                match self {
                    $(Transport::$variant(t) => t.close(),)+
                }
            }

            pub(crate) fn abort_calls(&self) -> usize {
                match self {
                    $(Transport::$variant(t) => t.abort_calls(),)+
                }
            }
        }
    };
}

// The registration: a new transport is a module above and a line here.
transports! {
    Shm(shm::ShmPool) = TransportKind::Shm, "shm";
    Tcp(tcp::TcpPool) = TransportKind::Tcp, "tcp";
}

/// What a client allows itself (channels, time, message size), and whom
/// it trusts over TLS.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) channels: usize,
    pub(crate) timeout: Duration,
    pub(crate) message: usize,
    /// How a TLS service is verified, when the code or the environment
    /// said (else a registry's published fingerprint, if any).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<metabridge_tcp::tls::ClientTls>,
}

/// How often a shared-memory call with an interrupt check asks it.
pub(crate) const INTERRUPT_SLICE: Duration = Duration::from_millis(20);

/// The error of a call whose wait for the reply was interrupted (the
/// request went out: it is never sent again).
fn interrupted_wait() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "the wait for the reply was interrupted; the call was not replayed",
    ))
}

#[cfg(test)]
mod tests;
