//! `metabridge.Buffer`: a read-only bytes-like result, read in place from
//! the service's payload pool (no copy) when it arrived out of line
//! through shared memory.
//!
//! A client connected with `buffers=True` gets its bytes results as
//! `Buffer`s: `memoryview(b)`, `numpy.frombuffer(b, dtype)`, `bytes(b)`
//! and anything else speaking the buffer protocol read it. A `Buffer` that
//! holds a pool block keeps it lent (see `metabridge::Blob`) until the
//! `Buffer` is released or collected; every view of it (a memoryview, a
//! numpy array) keeps the `Buffer` alive. Past the process's cap on lent
//! bytes (`metabridge_shm::LENT_CAP`), results are copies, still
//! `Buffer`s.

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A read-only bytes-like value; see the module docs.
#[pyclass(frozen, module = "metabridge._native", name = "Buffer")]
pub struct Buffer {
    blob: Mutex<Option<metabridge::Blob>>,
    /// Views exported and not yet released: the blob must outlive them.
    exports: AtomicUsize,
}

impl Buffer {
    pub(crate) fn new(blob: metabridge::Blob) -> Buffer {
        Buffer {
            blob: Mutex::new(Some(blob)),
            exports: AtomicUsize::new(0),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&metabridge::Blob) -> R) -> PyResult<R> {
        let guard = self.blob.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(b) => Ok(f(b)),
            None => Err(PyValueError::new_err("operation on a released Buffer")),
        }
    }
}

#[pymethods]
impl Buffer {
    /// Bytes held (0 once released).
    fn __len__(&self) -> usize {
        self.with(|b| b.len()).unwrap_or(0)
    }

    /// A copy as `bytes`.
    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.with(|b| PyBytes::new(py, b))
    }

    /// Whether the bytes are read in place from the service's pool.
    #[getter]
    fn lent(&self) -> bool {
        self.with(|b| b.is_lent()).unwrap_or(false)
    }

    /// Gives the bytes (and a lent block) back now rather than when the
    /// Buffer is collected. A BufferError while a view of it (a
    /// memoryview, a numpy array) is still alive.
    fn release(&self) -> PyResult<()> {
        let mut guard = self.blob.lock().unwrap_or_else(|p| p.into_inner());
        if self.exports.load(Ordering::Acquire) > 0 {
            return Err(PyBufferError::new_err(
                "Buffer.release(): memoryviews or arrays of it are still alive",
            ));
        }
        guard.take();
        Ok(())
    }

    fn __repr__(&self) -> String {
        match self.with(|b| (b.len(), b.is_lent())) {
            Ok((n, true)) => format!("<metabridge.Buffer of {n} bytes, lent>"),
            Ok((n, false)) => format!("<metabridge.Buffer of {n} bytes>"),
            Err(_) => "<metabridge.Buffer, released>".to_string(),
        }
    }

    // The buffer protocol's slots are `unsafe fn`s by PyO3's definition
    // (Python hands them a raw view); the raw call is in `platform`.
    #[allow(unsafe_code)]
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let guard = this.blob.lock().unwrap_or_else(|p| p.into_inner());
        let Some(blob) = guard.as_ref() else {
            return Err(PyBufferError::new_err("a released Buffer exports no bytes"));
        };
        // SAFETY: `view` is Python's; the blob's bytes neither move nor
        // change while it is in `this.blob` (a lent block is read-only
        // everywhere while lent; an owned vector is never touched), and it
        // stays there until `release`, which refuses while `exports` > 0,
        // or until the Buffer is freed, which the view's reference to it
        // (taken by `export_read_only`) prevents.
        unsafe { crate::platform::export_read_only(view, slf.as_any(), blob.as_slice(), flags)? };
        this.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    #[allow(unsafe_code)]
    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
}
