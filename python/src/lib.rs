//! `metabridge._native`: the Rust runtime seen from Python.
//!
//! The pure-Python layer (`python/metabridge/__init__.py`) gives the
//! original's API (decorators, `create`, `run`, `connect`); this module
//! gives it a client ([`NativeClient`]), a way to serve a Python class in
//! a forked child ([`serve_forked`]) and the handle of such a child
//! ([`NativeDaemon`]). Values are converted between Python objects and
//! MessagePack here, in Rust ([`values`]).

#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

// The buffer protocol's two slots, `unsafe fn`s by PyO3's definition;
// their raw call is in `platform`.
#[allow(unsafe_code)]
mod buffer;
mod client;
mod mesh;
// The only module allowed raw unsafe calls: raw OS and interpreter calls, each
// behind a safe function with its `// SAFETY:` reasoning.
#[allow(unsafe_code)]
mod platform;
mod service;
mod values;

/// The exception classes of the Python layer, registered at import.
static ERRORS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

fn error_class<'py>(py: Python<'py>, name: &str) -> Option<Bound<'py, PyAny>> {
    let errors = ERRORS.get(py)?.bind(py);
    errors.get_item(name).ok().flatten()
}

/// Raises exception `name` of the Python layer (or RuntimeError before
/// it registered them) with `message`; extra attributes set on it.
fn raise(py: Python<'_>, name: &str, message: String, attrs: &[(&str, &str)]) -> PyErr {
    let Some(class) = error_class(py, name) else {
        return PyRuntimeError::new_err(message);
    };
    match class.call1((message,)) {
        Ok(exc) => {
            for (k, v) in attrs {
                let _ = exc.setattr(*k, *v);
            }
            PyErr::from_value(exc)
        }
        Err(e) => e,
    }
}

/// A runtime error as the Python exception the original raises.
pub(crate) fn to_pyerr(py: Python<'_>, e: metabridge::Error) -> PyErr {
    use metabridge::Error as E;
    match e {
        E::ServiceNotFound { .. } => raise(py, "ServiceNotFound", e.to_string(), &[]),
        E::ServiceAlreadyExists { .. } => raise(py, "ServiceAlreadyExists", e.to_string(), &[]),
        E::Remote { kind, message } => raise(
            py,
            "RemoteExecutionError",
            format!("{kind}: {message}"),
            &[
                ("type", &kind),
                ("remote_type", &kind),
                ("remote_message", &message),
            ],
        ),
        E::Timeout(_) => raise(py, "CallTimeout", e.to_string(), &[]),
        E::PeerGone(_) => raise(py, "ServiceGone", e.to_string(), &[]),
        other => raise(py, "MetaBridgeError", other.to_string(), &[]),
    }
}

/// Registers the exception classes (a dict name -> class).
#[pyfunction]
fn _register_errors(py: Python<'_>, errors: Bound<'_, PyDict>) -> PyResult<()> {
    let _ = ERRORS.set(py, errors.unbind());
    Ok(())
}

/// Removes what killed services left in the registry (stale entries,
/// sockets, segments); returns what it removed and what it kept, one line
/// each: `(removed, kept)`.
#[pyfunction]
fn gc(py: Python<'_>) -> PyResult<(Vec<String>, Vec<String>)> {
    py.detach(metabridge::gc)
        .map(|r| (r.removed, r.kept))
        .map_err(|e| to_pyerr(py, e))
}

/// What is wrong with `name` as a service name (the runtime's rule), or
/// `None` if it is valid.
#[pyfunction]
fn service_name_problem(name: &str) -> Option<String> {
    match metabridge::validate_service_name(name) {
        Err(metabridge::Error::InvalidServiceName { problem, .. }) => Some(problem),
        Err(other) => Some(other.to_string()),
        Ok(()) => None,
    }
}

/// Encodes one value as the package does (for tests and tools).
#[pyfunction]
fn packb(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let mut buf = Vec::new();
    values::encode(obj, &mut buf)?;
    Ok(pyo3::types::PyBytes::new(py, &buf).into_any().unbind())
}

/// Decodes one value as the package does (for tests and tools).
#[pyfunction]
fn unpackb<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    values::decode(py, data)
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_register_errors, m)?)?;
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(service_name_problem, m)?)?;
    m.add_function(wrap_pyfunction!(packb, m)?)?;
    m.add_function(wrap_pyfunction!(unpackb, m)?)?;
    m.add_function(wrap_pyfunction!(client::connect, m)?)?;
    m.add_function(wrap_pyfunction!(service::serve_forked, m)?)?;
    m.add_function(wrap_pyfunction!(service::wait_forked, m)?)?;
    m.add_function(wrap_pyfunction!(mesh::connect_mesh, m)?)?;
    m.add_class::<mesh::NativeMeshClient>()?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<client::Endpoint>()?;
    m.add_class::<service::NativeDaemon>()?;
    m.add_class::<service::AsyncDone>()?;
    Ok(())
}
