//! Calls by name across a mesh through a helper process: the mesh client
//! of a program that does not link zenoh (the Python package, the
//! `metabridge` tool).
//!
//! The helper is `metabridge-mesh relay` ([`mesh_tool`](crate::mesh_tool)):
//! it keeps the mesh client (the live view of the replicas, the choice of
//! one, at-most-once failover) and this side sends it calls over its
//! standard input and reads the answers on its standard output. What the
//! mesh client promises holds unchanged: the relay never sends a call
//! twice unless its endpoint is idempotent. A relay that ends with calls
//! in flight fails them with [`PeerGone::Relay`] (they may have run) and
//! is started again for the next call.
//!
//! Frames (`helper_frame`) are at most [`MAX_RELAY_FRAME`] bytes. The
//! first is a [`RelaySetup`]; then [`RelayCall`]s go one way and
//! [`RelayAnswer`]s (matched by id, in any order) the other.

use crate::error::{Error, PeerGone, Result, TimedOut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The largest relay frame either side accepts.
pub const MAX_RELAY_FRAME: usize = 1 << 30;
/// What a call waits for its answer beyond its own timeout (the relay
/// ends it at the timeout; this covers the relay's own delay).
const GRACE: Duration = Duration::from_secs(2);

/// What the relay is to call: the first frame.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RelaySetup {
    /// The service's name.
    pub service: String,
    /// The mesh (the mesh crate's `MeshConfig::from_setting`).
    pub setting: String,
    /// Each call's timeout, in milliseconds.
    pub timeout_ms: u64,
    /// The constructor's positional arguments, a MessagePack array (empty:
    /// none); the service keeps an instance per set of them.
    #[serde(default, with = "serde_bytes")]
    pub ctor_args: Vec<u8>,
    /// The constructor's keyword arguments, a MessagePack map (empty: none).
    #[serde(default, with = "serde_bytes")]
    pub ctor_kwargs: Vec<u8>,
    /// The token to present (default `$METABRIDGE_TOKEN`). This and the
    /// TLS fields reach the relay in its environment, never in a frame or
    /// on its command line.
    #[serde(skip)]
    pub token: Option<String>,
    /// PEM file of the CAs replicas are verified with (default
    /// `$METABRIDGE_TLS_CA`).
    #[serde(skip)]
    pub tls_ca: Option<String>,
    /// Or the one certificate fingerprint trusted (default
    /// `$METABRIDGE_TLS_PIN`).
    #[serde(skip)]
    pub tls_pin: Option<String>,
    /// A client certificate and key (PEM files), for mutual TLS.
    #[serde(skip)]
    pub tls_cert: Option<(String, String)>,
}

/// One call.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayCall {
    /// Matches its answer.
    pub id: u64,
    /// The endpoint.
    pub endpoint: String,
    /// Positional arguments, a MessagePack array.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Keyword arguments, a MessagePack map.
    #[serde(with = "serde_bytes")]
    pub kwargs: Vec<u8>,
}

/// One call's outcome.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayAnswer {
    /// The call's id.
    pub id: u64,
    /// The result (one MessagePack value), or the error.
    pub outcome: std::result::Result<serde_bytes::ByteBuf, RelayError>,
}

/// An error as the relay reports it: its kind and what the runtime needs
/// to give it back typed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayError {
    /// `ServiceNotFound`, `Remote`, `Timeout`, `PeerGone`, or `Other`.
    pub kind: String,
    /// For `Remote`, the endpoint's error type; for `PeerGone`, the
    /// replica's instance id.
    pub detail: String,
    /// The error's message.
    pub message: String,
}

impl RelayError {
    /// The relay's report of `e`.
    pub fn of(e: &Error) -> RelayError {
        let (kind, detail, message) = match e {
            Error::ServiceNotFound { reason, .. } => {
                ("ServiceNotFound", String::new(), reason.clone())
            }
            Error::Remote { kind, message } => ("Remote", kind.clone(), message.clone()),
            Error::Timeout(_) => ("Timeout", String::new(), e.to_string()),
            Error::PeerGone(PeerGone::Replica { replica, why, .. }) => {
                ("PeerGone", replica.clone(), why.clone())
            }
            Error::PeerGone(_) => ("PeerGone", String::new(), e.to_string()),
            _ => ("Other", String::new(), e.to_string()),
        };
        RelayError {
            kind: kind.into(),
            detail,
            message,
        }
    }

    /// The typed error of a call of `endpoint` on `service`.
    fn into_error(self, service: &str, endpoint: &str, after: Duration) -> Error {
        match self.kind.as_str() {
            "ServiceNotFound" => Error::ServiceNotFound {
                name: service.into(),
                reason: self.message,
            },
            "Remote" => Error::Remote {
                kind: self.detail,
                message: self.message,
            },
            "Timeout" => Error::Timeout(TimedOut::Call {
                service: service.into(),
                endpoint: endpoint.into(),
                transport: "mesh",
                after,
            }),
            "PeerGone" => Error::PeerGone(PeerGone::Replica {
                service: service.into(),
                replica: self.detail,
                why: self.message,
            }),
            _ => Error::Relay {
                service: service.into(),
                why: self.message,
            },
        }
    }
}

/// Writes one frame of `value`.
pub fn write_frame(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    crate::helper_frame::write(w, value, MAX_RELAY_FRAME)
}

/// Reads one frame; `None` at end-of-file between frames.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> std::io::Result<Option<T>> {
    crate::helper_frame::read(r, MAX_RELAY_FRAME)
}

/// A mesh client through the relay (see the module docs).
///
/// ```no_run
/// use metabridge::{MeshRelay, RelaySetup};
/// let relay = MeshRelay::new(RelaySetup {
///     service: "ledger".into(),
///     setting: "tcp/10.0.0.2:7447".into(),
///     timeout_ms: 5000,
///     tls_ca: Some("/etc/metabridge/ca.pem".into()),
///     ..Default::default()
/// });
/// let n: u32 = relay.call("record", ("id-1",))?;
/// # Ok::<(), metabridge::Error>(())
/// ```
pub struct MeshRelay {
    setup: RelaySetup,
    running: Mutex<Option<Running>>,
    next: AtomicU64,
}

/// A started relay process.
struct Running {
    /// The process that started it: a forked child must not write into
    /// its parent's relay (their frames would interleave) nor end it.
    owner: u32,
    child: Child,
    input: ChildStdin,
    pending: Arc<Mutex<Pending>>,
}

/// Calls waiting for their answer; `None` once the relay's output ended.
type Pending = Option<HashMap<u64, mpsc::SyncSender<RelayAnswer>>>;

impl MeshRelay {
    /// A relay for `setup`, started at the first call.
    pub fn new(setup: RelaySetup) -> MeshRelay {
        MeshRelay {
            setup,
            running: Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.setup.service
    }

    /// Calls `endpoint` with positional `args`.
    pub fn call<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: impl crate::IntoArgs,
    ) -> Result<R> {
        let mut encoded = Vec::new();
        args.encode_args(&mut encoded)?;
        self.call_raw(endpoint, &encoded, &[0x80])
    }

    /// Calls `endpoint` with positional and keyword arguments.
    pub fn call_with<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: &crate::CallArgs,
    ) -> Result<R> {
        self.call_raw(endpoint, &args.encoded_args(), &args.encoded_kwargs())
    }

    /// Calls `endpoint` with arguments already encoded (a MessagePack
    /// array and map).
    pub fn call_raw<R: DeserializeOwned>(
        &self,
        endpoint: &str,
        args: &[u8],
        kwargs: &[u8],
    ) -> Result<R> {
        let bytes = self.call_encoded(endpoint, args, kwargs)?;
        rmp_serde::from_slice(&bytes).map_err(|source| {
            Error::Protocol(crate::error::ProtocolError::ResultType {
                expected: crate::args::user_type_name::<R>(),
                source,
            })
        })
    }

    /// As [`call_raw`](Self::call_raw), the result left encoded (one
    /// MessagePack value).
    pub fn call_encoded(&self, endpoint: &str, args: &[u8], kwargs: &[u8]) -> Result<Vec<u8>> {
        let after = Duration::from_millis(self.setup.timeout_ms);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        let pending = {
            let mut running = lock(&self.running);
            if running.as_ref().map_or(true, |r| r.ended() || !r.ours()) {
                match running.take() {
                    Some(old) if old.ours() => old.end(),
                    // Inherited by fork: the parent's to end. Its pipes
                    // stay open in this process (closing them here would
                    // not end it, and its child is not ours to reap).
                    Some(inherited) => std::mem::forget(inherited),
                    None => {}
                }
                *running = Some(self.start()?);
            }
            let r = running.as_mut().expect("started above");
            match lock(&r.pending).as_mut() {
                Some(p) => p.insert(id, tx),
                None => return Err(self.relay_gone("its output ended")),
            };
            let call = RelayCall {
                id,
                endpoint: endpoint.into(),
                args: args.to_vec(),
                kwargs: kwargs.to_vec(),
            };
            if let Err(e) = write_frame(&mut r.input, &call) {
                lock(&r.pending).as_mut().map(|p| p.remove(&id));
                // Not written whole: the relay reads no call from it.
                return Err(Error::Relay {
                    service: self.setup.service.clone(),
                    why: format!("the call could not be handed to the relay: {e}"),
                });
            }
            r.pending.clone()
        };
        let answer = match rx.recv_timeout(after + GRACE) {
            Ok(a) => a,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&pending).as_mut().map(|p| p.remove(&id));
                return Err(Error::Timeout(TimedOut::Call {
                    service: self.setup.service.clone(),
                    endpoint: endpoint.into(),
                    transport: "mesh",
                    after,
                }));
            }
            // The relay's output ended with this call in flight.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(self.relay_gone("it ended with the call in flight"))
            }
        };
        match answer.outcome {
            Ok(bytes) => Ok(bytes.into_vec()),
            Err(e) => Err(e.into_error(&self.setup.service, endpoint, after)),
        }
    }

    fn relay_gone(&self, why: &str) -> Error {
        Error::PeerGone(PeerGone::Relay {
            service: self.setup.service.clone(),
            why: why.into(),
        })
    }

    /// Starts the relay and its reader thread.
    fn start(&self) -> Result<Running> {
        let tool = crate::mesh_tool();
        let mut cmd = Command::new(&tool);
        let s = &self.setup;
        let env = [
            ("METABRIDGE_TOKEN", s.token.as_deref()),
            ("METABRIDGE_TLS_CA", s.tls_ca.as_deref()),
            ("METABRIDGE_TLS_PIN", s.tls_pin.as_deref()),
            (
                "METABRIDGE_TLS_CLIENT_CERT",
                s.tls_cert.as_ref().map(|c| c.0.as_str()),
            ),
            (
                "METABRIDGE_TLS_CLIENT_KEY",
                s.tls_cert.as_ref().map(|c| c.1.as_str()),
            ),
        ];
        for (name, value) in env {
            if let Some(v) = value {
                cmd.env(name, v);
            }
        }
        if s.tls_ca.is_some() {
            cmd.env_remove("METABRIDGE_TLS_PIN");
        }
        if s.tls_pin.is_some() {
            cmd.env_remove("METABRIDGE_TLS_CA");
        }
        let mut child = cmd
            .arg("relay")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Relay {
                service: self.setup.service.clone(),
                why: format!(
                    "cannot run the mesh helper {} ({e}): install it (`cargo install --path mesh` \
                     in MetaBridge's repository) or name it in {}",
                    tool.display(),
                    crate::MESH_TOOL_ENV
                ),
            })?;
        let mut input = child.stdin.take().expect("piped");
        let mut output = child.stdout.take().expect("piped");
        write_frame(&mut input, &self.setup).map_err(|e| Error::Relay {
            service: self.setup.service.clone(),
            why: format!("the relay did not take its setup: {e}"),
        })?;
        let pending: Arc<Mutex<Pending>> = Arc::new(Mutex::new(Some(HashMap::new())));
        let answers = pending.clone();
        std::thread::Builder::new()
            .name("metabridge-mesh-relay".into())
            .spawn(move || {
                while let Ok(Some(answer)) = read_frame::<RelayAnswer>(&mut output) {
                    let waiter = lock(&answers).as_mut().and_then(|p| p.remove(&answer.id));
                    if let Some(w) = waiter {
                        let _ = w.try_send(answer);
                    }
                }
                // Dropping the senders fails every call in flight.
                lock(&answers).take();
            })
            .map_err(Error::Io)?;
        Ok(Running {
            owner: std::process::id(),
            child,
            input,
            pending,
        })
    }
}

impl Running {
    fn ours(&self) -> bool {
        self.owner == std::process::id()
    }

    fn ended(&self) -> bool {
        lock(&self.pending).is_none()
    }

    /// Closes its input (the relay leaves) and reaps it.
    fn end(mut self) {
        drop(self.input);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MeshRelay {
    fn drop(&mut self) {
        match lock(&self.running).take() {
            Some(r) if r.ours() => r.end(),
            Some(inherited) => std::mem::forget(inherited),
            None => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_bad_ones_are_errors() {
        let mut buf = Vec::new();
        let call = RelayCall {
            id: 9,
            endpoint: "e".into(),
            args: vec![0x90],
            kwargs: vec![0x80],
        };
        write_frame(&mut buf, &call).unwrap();
        let back: RelayCall = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(
            (back.id, back.endpoint, back.args, back.kwargs),
            (9, "e".into(), vec![0x90], vec![0x80])
        );
        assert!(read_frame::<RelayCall>(&mut &[][..]).unwrap().is_none());
        let huge = ((MAX_RELAY_FRAME + 1) as u32).to_le_bytes();
        assert!(read_frame::<RelayCall>(&mut &huge[..]).is_err());
        assert!(read_frame::<RelayCall>(&mut &[2u8, 0, 0, 0, 0xc1, 0xc1][..]).is_err());
    }

    #[test]
    fn relay_errors_come_back_typed() {
        let e = RelayError::of(&Error::Remote {
            kind: "ValueError".into(),
            message: "no".into(),
        });
        assert!(matches!(
            e.into_error("s", "e", Duration::from_secs(1)),
            Error::Remote { kind, message } if kind == "ValueError" && message == "no"
        ));
        let gone = RelayError::of(&Error::PeerGone(PeerGone::Replica {
            service: "s".into(),
            replica: "r1".into(),
            why: "killed".into(),
        }));
        assert!(matches!(
            gone.into_error("s", "e", Duration::from_secs(1)),
            Error::PeerGone(PeerGone::Replica { replica, .. }) if replica == "r1"
        ));
        let missing = RelayError::of(&Error::ServiceNotFound {
            name: "s".into(),
            reason: "no live replica".into(),
        });
        assert!(matches!(
            missing.into_error("s", "e", Duration::from_secs(1)),
            Error::ServiceNotFound { reason, .. } if reason == "no live replica"
        ));
    }
}
