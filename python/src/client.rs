//! The client: a `metabridge::Client` whose calls release the GIL while
//! they wait, and whose waits on the main thread can be interrupted by a
//! signal (Ctrl+C) without replaying or misdelivering the call.

use crate::{to_pyerr, values};
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
#[pyo3(signature = (name, ctor_args, ctor_kwargs, timeout, transport=None, address=None, token=None, buffers=false, tls=None))]
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
    buffers: bool,
    tls: Option<TlsArgs>,
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
    // `tls=(ca, pin, cert, key, server_name)`, from the Python layer's dict.
    if let Some((ca, pin, cert, key, server_name)) = tls {
        let tls = client_tls(ca, pin, cert, key, server_name)
            .map_err(|e| to_pyerr(py, metabridge::Error::Tls(e)))?;
        c = c.tls(tls);
    }
    let client = py.detach(|| c.open()).map_err(|e| to_pyerr(py, e))?;
    Ok(NativeClient {
        inner: client,
        buffers,
    })
}

/// `connect(tls={...})` as the Python layer passes it: `(ca, pin, cert,
/// key, server_name)`.
pub(crate) type TlsArgs = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// What a client trusts, from `connect(tls={...})`: a CA bundle or a pin
/// (one of them), its own certificate and key for mutual TLS, the name to
/// check in place of the host's.
fn client_tls(
    ca: Option<String>,
    pin: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
) -> Result<metabridge::tls::ClientTls, metabridge::tls::TlsError> {
    use metabridge::tls::{ClientTls, TlsError};
    let mut tls = match (ca, pin) {
        (Some(ca), None) => ClientTls::ca_file(ca)?,
        (None, Some(pin)) => ClientTls::pinned(&pin)?,
        _ => {
            return Err(TlsError::Config(
                "tls= needs exactly one of \"ca\" (a CA bundle's path) and \"pin\" (a sha256 fingerprint)"
                    .into(),
            ))
        }
    };
    match (cert, key) {
        (Some(cert), Some(key)) => tls = tls.client_cert_files(cert, key)?,
        (None, None) => {}
        _ => {
            return Err(TlsError::Config(
                "tls= takes \"cert\" and \"key\" together (a client certificate and its key)"
                    .into(),
            ))
        }
    }
    if let Some(name) = server_name {
        tls = tls.server_name(&name);
    }
    Ok(tls)
}

/// A connection to one service for one set of constructor arguments;
/// shared by any number of threads.
#[pyclass(frozen, module = "metabridge._native")]
pub struct NativeClient {
    inner: metabridge::Client,
    /// Bytes results as `metabridge.Buffer`s (see `buffer`).
    buffers: bool,
}

/// What a call's decode produced: the result still encoded (decoded
/// after the call, with the GIL), or already a Python object (a result
/// holding out-of-line byte strings, decoded while their pool was lent).
enum Decoded {
    Raw(Vec<u8>),
    Object(Py<PyAny>),
}

/// Whether `obj` is a byte string large enough to go out of line (a
/// `bytes`, `bytearray` or contiguous buffer of `OUT_OF_LINE_THRESHOLD`
/// bytes or more). Values of the common scalar and container types are
/// answered without asking for a buffer.
fn is_large_bytes(obj: &Bound<'_, PyAny>) -> bool {
    use pyo3::types::{PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyString};
    let threshold = metabridge::__private::OUT_OF_LINE_THRESHOLD;
    if let Ok(b) = obj.cast::<PyBytes>() {
        return b.as_bytes().len() >= threshold;
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return b.len() >= threshold;
    }
    if obj.is_none()
        || obj.is_instance_of::<PyString>()
        || obj.is_instance_of::<PyInt>()
        || obj.is_instance_of::<PyFloat>()
        || obj.is_instance_of::<PyList>()
        || obj.is_instance_of::<PyTuple>()
        || obj.is_instance_of::<PyDict>()
    {
        return false;
    }
    crate::platform::with_contiguous_bytes(obj, |b| b.len() >= threshold).unwrap_or(false)
}

impl NativeClient {
    /// Calls `endpoint(*args, **kwargs)`. Arguments are encoded before the
    /// GIL is released, except when one is a large byte string: then they
    /// are written inside the call, straight into the request, where a
    /// shared-memory channel places the bytes in its pool (one copy). A
    /// result holding out-of-line bytes is decoded inside the call too,
    /// straight from the service's pool into the `bytes` object.
    fn call_py(
        &self,
        py: Python<'_>,
        endpoint: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let mut k = Vec::with_capacity(8);
        values::encode_kwargs(kwargs, &mut k)?;
        let pre = if args.iter().any(|a| is_large_bytes(&a)) {
            None
        } else {
            let mut a = Vec::with_capacity(32);
            values::encode_args(args, &mut a)?;
            Some(a)
        };
        // The arguments, for writing them inside the call (large ones only).
        let owned: Option<Py<PyTuple>> = pre.is_none().then(|| args.clone().unbind());
        let client = &self.inner;
        let buffers = self.buffers;
        let (result, pending, failed) = py.detach(|| {
            // A Python error raised while encoding or decoding inside the
            // call; the call then fails with a placeholder, replaced by it.
            let failed: RefCell<Option<PyErr>> = RefCell::new(None);
            let keep = |e: PyErr| {
                *failed.borrow_mut() = Some(e);
                metabridge::Error::Io(std::io::Error::other("a Python error inside the call"))
            };
            let write = |b: &mut Vec<u8>| -> metabridge::Result<()> {
                match (&pre, &owned) {
                    (Some(a), _) => {
                        b.extend_from_slice(a);
                        Ok(())
                    }
                    (None, Some(args)) => {
                        Python::attach(|py| values::encode_args(args.bind(py), b)).map_err(keep)
                    }
                    (None, None) => unreachable!("arguments are either encoded or kept"),
                }
            };
            let decode = |buf: &[u8]| -> metabridge::Result<Decoded> {
                let raw = metabridge::envelope::result_bytes(buf)?;
                if metabridge::__private::holds_out_of_line(raw) {
                    Python::attach(|py| {
                        values::decode_buffers(py, raw, buffers).map(|o| o.unbind())
                    })
                    .map(Decoded::Object)
                    .map_err(keep)
                } else {
                    Ok(Decoded::Raw(raw.to_vec()))
                }
            };
            let (r, pending) = if MAIN_THREAD.with(|m| *m) {
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
                let r = client.call_writing(endpoint, write, &k, decode, Some(&check));
                (r, pending.into_inner())
            } else {
                (client.call_writing(endpoint, write, &k, decode, None), None)
            };
            (r, pending, failed.into_inner())
        });
        if let Some(e) = pending.or(failed) {
            return Err(e);
        }
        match result {
            Ok(Decoded::Raw(bytes)) => Ok(values::decode_buffers(py, &bytes, buffers)?.unbind()),
            Ok(Decoded::Object(obj)) => Ok(obj),
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
        self.call_py(py, endpoint, args, kwargs)
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
        self.client.get().call_py(py, &self.name, args, kwargs)
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
