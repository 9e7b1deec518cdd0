//! Serving a Python class: a `metabridge::Service` whose constructor and
//! endpoints call Python, taking the GIL only while Python code runs; and
//! the daemon around it.
//!
//! The daemon process is made by Python's own `os.fork()` (in
//! `metabridge/__init__.py`), so that the interpreter is re-initialised in
//! the child (GIL, threading, import lock, at-fork hooks); the child then
//! calls [`serve_forked`], which releases the GIL for good and hands the
//! service to the runtime's daemon code (`metabridge::serve_forked_child`:
//! parent watch, workers, graceful stop, readiness report on a pipe). The
//! parent waits for the report with [`wait_forked`].

use crate::{to_pyerr, values};
use metabridge::{Args, CallError, EndpointFuture, Reply, Service};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// One instance of the service class, with its endpoint methods bound
/// once (no attribute lookup per call).
pub struct Instance {
    methods: Vec<Py<PyAny>>,
}

thread_local! {
    /// A Python thread state kept for this worker thread's whole life.
    /// Without it every `Python::attach` on a runtime thread would create
    /// and destroy one (`PyGILState_Ensure` on a thread without a thread
    /// state): microseconds per call. With it, taking the GIL is a plain
    /// `PyEval_RestoreThread`.
    static THREAD_STATE: () = crate::platform::keep_thread_state();
}

/// `Python::attach` for a runtime thread, keeping its thread state.
fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    THREAD_STATE.with(|_| ());
    Python::attach(f)
}

/// A Python exception as the error the wire carries: its class name and
/// its text, as the original sends them.
fn call_error(py: Python<'_>, e: PyErr) -> CallError {
    let kind = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let message = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    CallError::new(kind, message)
}

/// The raw arguments of a call as Python `args`, `kwargs`.
/// With `buffers`, byte strings arrive as `metabridge.Buffer`s (read in
/// place where they are out of line).
fn py_args<'py>(
    py: Python<'py>,
    a: &mut Args<'_>,
    buffers: bool,
) -> Result<(Bound<'py, PyTuple>, Option<Bound<'py, PyDict>>), CallError> {
    let (np, pos, nk, kw) = a.take_raw();
    let args = values::Decoder::new(pos)
        .buffers(buffers)
        .tuple(py, np as usize)
        .map_err(|e| call_error(py, e))?;
    let kwargs = values::Decoder::new(kw)
        .buffers(buffers)
        .kwargs(py, nk as usize)
        .map_err(|e| call_error(py, e))?;
    Ok((args, kwargs))
}

/// The answer of an endpoint's Python result, encoded.
fn encode_result(py: Python<'_>, v: &Bound<'_, PyAny>, buf: &mut Vec<u8>) -> Result<(), CallError> {
    values::encode(v, buf).map_err(|e| call_error(py, e))
}

/// Where an `async` endpoint's encoded answer goes.
type AnswerSender = oneshot::Sender<Result<Vec<u8>, CallError>>;

/// Called (on the service's event loop thread) when an `async`
/// endpoint's coroutine is done: `done(ok, value_or_exception)`.
#[pyclass(frozen, module = "metabridge._native")]
pub struct AsyncDone {
    tx: Mutex<Option<AnswerSender>>,
}

#[pymethods]
impl AsyncDone {
    fn __call__(&self, py: Python<'_>, ok: bool, value: Bound<'_, PyAny>) {
        let answer = if ok {
            Reply::encode_ok_with(|buf| encode_result(py, &value, buf))
        } else {
            Err(call_error(py, PyErr::from_value(value)))
        };
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(answer);
        }
    }
}

/// Builds the runtime's service from the Python description: `cls` is
/// called with the constructor arguments; `endpoints` lists
/// `(names, attribute, is_async, buffers)`; `submit(coroutine, done)` runs a
/// coroutine on the service's event loop; `prebuilt`, an instance made at
/// startup, serves the first client without constructor arguments.
#[allow(clippy::too_many_arguments)]
fn build(
    py: Python<'_>,
    name: &str,
    cls: Py<PyAny>,
    endpoints: Vec<(Vec<String>, String, bool, bool)>,
    submit: Py<PyAny>,
    host: Option<String>,
    port: Option<u16>,
    prebuilt: Option<Py<PyAny>>,
) -> Service<Instance> {
    let attrs: Arc<Vec<Py<pyo3::types::PyString>>> = Arc::new(
        endpoints
            .iter()
            .map(|(_, attr, _, _)| pyo3::types::PyString::new(py, attr).unbind())
            .collect(),
    );
    let ctor_attrs = attrs.clone();
    let prebuilt = Mutex::new(prebuilt);
    let mut service = Service::<Instance>::new(name).constructor(move |a: &mut Args<'_>| {
        attach(|py| {
            let (args, kwargs) = py_args(py, a, false)?;
            let ready = if args.is_empty() && kwargs.is_none() {
                prebuilt.lock().unwrap_or_else(|p| p.into_inner()).take()
            } else {
                None
            };
            let obj = match ready {
                Some(obj) => obj.into_bound(py),
                None => cls
                    .bind(py)
                    .call(args, kwargs.as_ref())
                    .map_err(|e| call_error(py, e))?,
            };
            let methods = ctor_attrs
                .iter()
                .map(|attr| obj.getattr(attr.bind(py)).map(Bound::unbind))
                .collect::<PyResult<Vec<_>>>()
                .map_err(|e| call_error(py, e))?;
            Ok(Instance { methods })
        })
    });
    let submit = Arc::new(submit);
    for (i, (names, _, is_async, buffers)) in endpoints.into_iter().enumerate() {
        for ep in &names {
            if is_async {
                let submit = submit.clone();
                service = service.endpoint_async(
                    ep,
                    move |inst: Arc<Instance>,
                          a: &mut Args<'_>|
                          -> Result<EndpointFuture, CallError> {
                        let (tx, rx) = oneshot::channel();
                        attach(|py| {
                            let (args, kwargs) = py_args(py, a, buffers)?;
                            let coro = inst.methods[i]
                                .bind(py)
                                .call(args, kwargs.as_ref())
                                .map_err(|e| call_error(py, e))?;
                            let done = AsyncDone {
                                tx: Mutex::new(Some(tx)),
                            };
                            submit
                                .bind(py)
                                .call1((coro, done))
                                .map_err(|e| call_error(py, e))?;
                            Ok::<(), CallError>(())
                        })?;
                        Ok(Box::pin(async move {
                            rx.await.unwrap_or_else(|_| {
                                Err(CallError::new(
                                    "RuntimeError",
                                    "the service's event loop dropped the call",
                                ))
                            })
                        }))
                    },
                );
            } else {
                service = service.endpoint(
                    ep,
                    move |inst: &Instance, a: &mut Args<'_>, out: &mut Reply<'_>| {
                        attach(|py| {
                            let (args, kwargs) = py_args(py, a, buffers)?;
                            let v = inst.methods[i]
                                .bind(py)
                                .call(args, kwargs.as_ref())
                                .map_err(|e| call_error(py, e))?;
                            out.ok_with(|buf| encode_result(py, &v, buf))
                        })
                    },
                );
            }
        }
    }
    if let Some(h) = host {
        service = service.host(&h);
    }
    if let Some(p) = port {
        service = service.port(p);
    }
    service
}

/// In a child made by `os.fork()`: serves the class until stopped, then
/// exits the process (never returns). The readiness report (or the
/// startup error) goes to `ready_fd`; the daemon follows `parent`.
#[pyfunction]
#[pyo3(signature = (name, cls, endpoints, submit, ready_fd, parent=None, host=None, port=None, prebuilt=None, logger=false, tls=None, mesh=None, idempotent=Vec::new()))]
#[allow(clippy::too_many_arguments)]
pub fn serve_forked(
    py: Python<'_>,
    name: &str,
    cls: Py<PyAny>,
    endpoints: Vec<(Vec<String>, String, bool, bool)>,
    submit: Py<PyAny>,
    ready_fd: i32,
    parent: Option<u32>,
    host: Option<String>,
    port: Option<u16>,
    prebuilt: Option<Py<PyAny>>,
    logger: bool,
    tls: Option<(String, String, Option<String>, Vec<String>)>,
    mesh: Option<String>,
    idempotent: Vec<String>,
) -> PyResult<()> {
    // `logger=True`: the runtime logs start, stop, connects and every call
    // (endpoint, arguments, result, duration) on the daemon's stderr.
    let mut service = build(py, name, cls, endpoints, submit, host, port, prebuilt).logger(logger);
    // `tls=(cert, key, client_ca, allow)`: TLS on its TCP port (the files
    // are checked, and a bad one reported by `run`, when it starts).
    if let Some((cert, key, client_ca, allow)) = tls {
        service = service.configure(|c| {
            c.tls = Some(metabridge::TlsFiles {
                cert: cert.into(),
                key: key.into(),
                client_ca: client_ca.map(Into::into),
            });
            c.tls_client_allow = allow;
        });
    }
    // `idempotent=`: the endpoints a mesh client may retry on another
    // replica; `mesh=`: joins that mesh through the helper process (this
    // extension links no zenoh), checked when the service starts.
    for endpoint in &idempotent {
        service = service.idempotent(endpoint);
    }
    if let Some(setting) = mesh {
        service = service.announce(metabridge::MeshAgent::new(&setting));
    }
    // The write end of a pipe the Python layer created for this and gave up.
    let ready = crate::platform::adopt_handed_over_fd(ready_fd).ok_or_else(|| bad_fd(ready_fd))?;
    py.detach(move || metabridge::serve_forked_child(service, ready, parent))
}

/// In the parent: waits for child `pid`'s report on `ready_fd` (the read
/// end of the pipe) and returns its handle, or raises its startup error.
#[pyfunction]
pub fn wait_forked(
    py: Python<'_>,
    pid: u32,
    ready_fd: i32,
    startup_timeout: f64,
) -> PyResult<NativeDaemon> {
    // The read end of the pipe, ours alone, handed over for good.
    let ready = crate::platform::adopt_handed_over_fd(ready_fd).ok_or_else(|| bad_fd(ready_fd))?;
    let timeout = std::time::Duration::try_from_secs_f64(startup_timeout.max(0.0))
        .unwrap_or(metabridge::STARTUP_TIMEOUT);
    let handle = py
        .detach(move || metabridge::wait_forked_child(pid, ready, timeout))
        .map_err(|e| to_pyerr(py, e))?;
    Ok(NativeDaemon {
        pid: handle.pid(),
        tcp: handle.tcp_addr().to_owned(),
        handle: Mutex::new(Some(handle)),
    })
}

/// The parent's handle of a daemon: waits and signals; the Python
/// `DaemonHandle` builds `stop(timeout)` and `join(timeout)` on it.
#[pyclass(frozen, module = "metabridge._native")]
pub struct NativeDaemon {
    pid: u32,
    tcp: String,
    handle: Mutex<Option<metabridge::DaemonHandle>>,
}

#[pymethods]
impl NativeDaemon {
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// The TCP address the service listens on.
    #[getter]
    fn tcp_address(&self) -> String {
        self.tcp.clone()
    }

    /// True while the daemon runs (reaps it once it has ended).
    fn is_running(&self) -> bool {
        self.handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|h| h.is_running())
    }

    /// Sends signal `sig` to the daemon if it still runs.
    fn signal(&self, sig: i32) {
        if self.is_running() {
            crate::platform::send_signal(self.pid, sig);
        }
    }

    /// Lets the daemon outlive this process.
    fn detach(&self) {
        if let Some(h) = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.detach();
        }
    }
}

/// The error for a descriptor number that is not an open descriptor.
fn bad_fd(fd: i32) -> PyErr {
    pyo3::exceptions::PyOSError::new_err(format!("descriptor {fd} is not open"))
}
