//! The client: a `metabridge::Client` whose calls release the GIL while
//! they wait, and whose waits on the main thread can be interrupted by a
//! signal (Ctrl+C) without replaying or misdelivering the call.

use crate::{encode_call_args, to_pyerr, values};
use metabridge::rmpv;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::cell::RefCell;
use std::time::Duration;

thread_local! {
    /// This is the process's main thread (the one Python runs signal
    /// handlers on): its tid is the pid.
    static MAIN_THREAD: bool = crate::platform::is_main_thread();
}

/// One Python value as the dynamic value the runtime's constructor
/// arguments take.
fn to_rmpv(obj: &Bound<'_, PyAny>) -> PyResult<rmpv::Value> {
    let mut buf = Vec::new();
    values::encode(obj, &mut buf)?;
    rmpv::decode::read_value(&mut buf.as_slice())
        .map_err(|e| PyTypeError::new_err(format!("constructor argument: {e}")))
}

/// Connects to service `name` with constructor arguments; `transport` is
/// None (shared memory, else TCP), "shm" or "tcp"; `address` ("host:port")
/// connects by TCP without the registry.
#[pyfunction]
#[pyo3(signature = (name, ctor_args, ctor_kwargs, timeout, transport=None, address=None, token=None))]
#[allow(clippy::too_many_arguments)]
pub fn connect(
    py: Python<'_>,
    name: &str,
    ctor_args: &Bound<'_, PyTuple>,
    ctor_kwargs: Option<&Bound<'_, PyDict>>,
    timeout: f64,
    transport: Option<&str>,
    address: Option<&str>,
    token: Option<&str>,
) -> PyResult<NativeClient> {
    let mut c = metabridge::connect(name);
    for a in ctor_args.iter() {
        c = c.arg(to_rmpv(&a)?);
    }
    if let Some(kw) = ctor_kwargs {
        for (k, v) in kw.iter() {
            let k: String = k.extract()?;
            c = c.kwarg(&k, to_rmpv(&v)?);
        }
    }
    if timeout.is_finite() && timeout > 0.0 {
        c = c.timeout(Duration::from_secs_f64(timeout));
    }
    match transport {
        Some("tcp") => c = c.transport(metabridge::TransportKind::Tcp),
        Some("shm") => c = c.transport(metabridge::TransportKind::Shm),
        _ => {}
    }
    if let Some(a) = address {
        c = c.at(a);
    }
    if let Some(t) = token {
        c = c.token(t);
    }
    let client = py.detach(|| c.open()).map_err(|e| to_pyerr(py, e))?;
    Ok(NativeClient { inner: client })
}

/// A connection to one service for one set of constructor arguments;
/// shared by any number of threads.
#[pyclass(frozen, module = "metabridge._native")]
pub struct NativeClient {
    inner: metabridge::Client,
}

impl NativeClient {
    fn call_encoded(
        &self,
        py: Python<'_>,
        endpoint: &str,
        a: &[u8],
        k: &[u8],
    ) -> PyResult<Py<PyAny>> {
        let client = &self.inner;
        let (result, pending) = py.detach(|| {
            if MAIN_THREAD.with(|m| *m) {
                // Ctrl+C: Python's handler only sets a flag; every 20 ms
                // of waiting, run the handlers. If one raises, the wait
                // ends (the call is not replayed; its channel is retired,
                // so its late reply reaches no other call).
                let pending: RefCell<Option<PyErr>> = RefCell::new(None);
                let check = || {
                    Python::attach(|py| match py.check_signals() {
                        Ok(()) => false,
                        Err(e) => {
                            *pending.borrow_mut() = Some(e);
                            true
                        }
                    })
                };
                let r = client.call_encoded(endpoint, a, k, Some(&check));
                (r, pending.into_inner())
            } else {
                (client.call_encoded(endpoint, a, k, None), None)
            }
        });
        if let Some(e) = pending {
            return Err(e);
        }
        match result {
            Ok(bytes) => Ok(values::decode(py, &bytes)?.unbind()),
            Err(e) => Err(to_pyerr(py, e)),
        }
    }
}

#[pymethods]
impl NativeClient {
    /// Calls `endpoint(*args, **kwargs)`; the GIL is released while the
    /// call is carried and waited for.
    #[pyo3(signature = (endpoint, args, kwargs=None))]
    fn call(
        &self,
        py: Python<'_>,
        endpoint: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let (a, k) = encode_call_args(args, kwargs)?;
        self.call_encoded(py, endpoint, &a, &k)
    }

    /// The service's endpoint names, sorted.
    fn endpoints(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let client = &self.inner;
        py.detach(|| client.endpoints())
            .map_err(|e| to_pyerr(py, e))
    }

    /// `"shm"` or `"tcp"`.
    #[getter]
    fn transport(&self) -> &'static str {
        self.inner.transport_name()
    }

    /// The service's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_owned()
    }

    /// Channels (or sockets) open now.
    fn open_channels(&self) -> usize {
        self.inner.open_channels()
    }

    /// Closes the channels; later calls fail.
    fn close(&self) {
        self.inner.close()
    }

    /// A callable for one endpoint (what `client.<name>` returns).
    fn endpoint(slf: Bound<'_, Self>, name: String) -> Endpoint {
        Endpoint {
            client: slf.unbind(),
            name,
        }
    }
}

/// One endpoint of a client, callable: `client.get("x")`.
#[pyclass(frozen, module = "metabridge._native")]
pub struct Endpoint {
    client: Py<NativeClient>,
    name: String,
}

#[pymethods]
impl Endpoint {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let (a, k) = encode_call_args(args, kwargs)?;
        self.client.get().call_encoded(py, &self.name, &a, &k)
    }

    fn __repr__(&self) -> String {
        format!(
            "<remote endpoint {:?} of service {:?}>",
            self.name,
            self.client.get().inner.name()
        )
    }

    #[getter]
    fn __name__(&self) -> String {
        self.name.clone()
    }
}
