//! The mesh from Python, without zenoh in this extension: a service joins
//! through the runtime's `MeshAgent` helper (`create(name, mesh=...)`, in
//! `service.rs`), and a client calls by name through its `MeshRelay`
//! helper (`connect(name, mesh=...)`, here).

use crate::{to_pyerr, values};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// A client of a service by name across a mesh: calls go through the
/// `metabridge-mesh relay` helper, which keeps the mesh client (replica
/// choice, at-most-once failover).
#[pyclass(frozen, module = "metabridge._native")]
pub struct NativeMeshClient {
    relay: metabridge::MeshRelay,
}

/// A mesh client of `name` in `setting`'s mesh, for the constructor
/// arguments `ctor_args` and `ctor_kwargs`; `tls` as `connect`'s
/// (`(ca, pin, cert, key, server_name)`), `token` the one to present.
#[pyfunction]
#[pyo3(signature = (name, setting, timeout, ctor_args, ctor_kwargs=None, tls=None, token=None))]
pub fn connect_mesh(
    name: &str,
    setting: &str,
    timeout: f64,
    ctor_args: &Bound<'_, PyTuple>,
    ctor_kwargs: Option<&Bound<'_, PyDict>>,
    tls: Option<crate::client::TlsArgs>,
    token: Option<String>,
) -> PyResult<NativeMeshClient> {
    let (mut args, mut kwargs) = (Vec::new(), Vec::new());
    if !ctor_args.is_empty() {
        values::encode_args(ctor_args, &mut args)?;
    }
    if ctor_kwargs.is_some_and(|k| !k.is_empty()) {
        values::encode_kwargs(ctor_kwargs, &mut kwargs)?;
    }
    let timeout_ms = if timeout.is_finite() && timeout > 0.0 {
        (timeout * 1000.0).ceil() as u64
    } else {
        5000
    };
    let mut setup = metabridge::RelaySetup {
        service: name.into(),
        setting: setting.into(),
        timeout_ms,
        ctor_args: args,
        ctor_kwargs: kwargs,
        token,
        ..Default::default()
    };
    if let Some((ca, pin, cert, key, server_name)) = tls {
        if server_name.is_some() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "tls['server_name'] is not taken with mesh=: replicas are checked by their advertised address",
            ));
        }
        setup.tls_ca = ca;
        setup.tls_pin = pin;
        setup.tls_cert =
            match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(pyo3::exceptions::PyTypeError::new_err(
                    "tls= takes \"cert\" and \"key\" together (a client certificate and its key)",
                )),
            };
    }
    Ok(NativeMeshClient {
        relay: metabridge::MeshRelay::new(setup),
    })
}

#[pymethods]
impl NativeMeshClient {
    /// Calls `endpoint(*args, **kwargs)` on one replica; the GIL is
    /// released while the call is carried and waited for.
    #[pyo3(signature = (endpoint, args, kwargs=None))]
    fn call(
        &self,
        py: Python<'_>,
        endpoint: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let mut a = Vec::with_capacity(32);
        values::encode_args(args, &mut a)?;
        let mut k = Vec::with_capacity(8);
        values::encode_kwargs(kwargs, &mut k)?;
        let relay = &self.relay;
        let result = py.detach(|| relay.call_encoded(endpoint, &a, &k));
        match result {
            Ok(bytes) => Ok(values::decode_buffers(py, &bytes, false)?.unbind()),
            Err(e) => Err(to_pyerr(py, e)),
        }
    }

    /// The service's name.
    #[getter]
    fn name(&self) -> String {
        self.relay.name().to_string()
    }
}
