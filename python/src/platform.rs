//! Every raw OS and interpreter call of the extension module, each behind
//! a safe function: the rest of the crate is `deny(unsafe_code)`.

use std::os::fd::{FromRawFd, OwnedFd};

/// True on the process's main thread (the one Python runs signal
/// handlers on): its thread id is the pid.
pub(crate) fn is_main_thread() -> bool {
    // SAFETY: getpid and gettid take no arguments and cannot fail.
    unsafe { libc::gettid() == libc::getpid() }
}

/// Takes ownership of descriptor `fd`, handed over for good by the
/// Python layer (`metabridge/__init__.py` creates a pipe for a forked
/// daemon's report and passes one end to `serve_forked` or `wait_forked`,
/// never using or closing it again). `None` if `fd` is not an open
/// descriptor, so a wrong number is an error rather than a descriptor
/// owned twice.
pub(crate) fn adopt_handed_over_fd(fd: i32) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with
    // EBADF for a number that is not an open descriptor.
    if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: `fd` is open (checked above) and the Python layer gave up
    // its only other reference to it (see above): nothing else closes it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends signal `sig` to process `pid` (best effort: it may have ended).
pub(crate) fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill takes a pid and a signal number, and touches no memory
    // of ours.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Gives the current thread (a runtime thread, not holding the GIL) a
/// Python thread state that lives as long as the thread, and releases
/// the GIL taken to create it. Call once per thread.
pub(crate) fn keep_thread_state() {
    // SAFETY: called on a runtime thread that does not hold the GIL (the
    // endpoint closures call `attach` before `Python::attach`). The
    // GILState count stays at 1, so the thread state is never freed;
    // SaveThread releases the GIL it took.
    unsafe {
        let _ = pyo3::ffi::PyGILState_Ensure();
        let _ = pyo3::ffi::PyEval_SaveThread();
    }
}

/// Calls `f` with the bytes of `obj` if it exports a C-contiguous buffer
/// (the buffer protocol: `memoryview`, `array.array`, numpy arrays, `mmap`),
/// `None` if it does not (the error it raised is cleared). One borrow of
/// the buffer, released before returning; no copy.
pub(crate) fn with_contiguous_bytes<R>(
    obj: &pyo3::Bound<'_, pyo3::PyAny>,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    use pyo3::ffi;
    let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
    // SAFETY: `obj` is a live object (the Bound holds a reference and the
    // GIL); PyObject_GetBuffer fills `view` or fails, and PyBUF_SIMPLE asks
    // for a C-contiguous run of bytes (refused by exporters that cannot).
    let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) };
    if rc != 0 {
        // SAFETY: the GIL is held; this clears the error GetBuffer raised.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    // SAFETY: GetBuffer succeeded, so `view` is initialised.
    let mut view = unsafe { view.assume_init() };
    let len = usize::try_from(view.len).unwrap_or(0);
    let bytes = if len == 0 || view.buf.is_null() {
        &[][..]
    } else {
        // SAFETY: a successful PyBUF_SIMPLE request gives `len` contiguous
        // readable bytes at `buf`, valid until PyBuffer_Release; we hold
        // the GIL and run no Python code meanwhile, so nothing resizes or
        // frees the exporter's memory while the slice lives.
        unsafe { std::slice::from_raw_parts(view.buf as *const u8, len) }
    };
    let out = f(bytes);
    // SAFETY: releases the buffer GetBuffer gave us, once.
    unsafe { ffi::PyBuffer_Release(&mut view) };
    Some(out)
}

/// Fills `view` with the read-only bytes `bytes`, exported by `obj` (the
/// buffer protocol's `bf_getbuffer` of a `metabridge.Buffer`): the view
/// takes a reference to `obj`, so the exporter outlives every view.
///
/// # Safety
/// `view` is the pointer Python handed to `bf_getbuffer`; `bytes` stays
/// valid and unchanged until `obj`'s `bf_releasebuffer` is called for
/// this view.
pub(crate) unsafe fn export_read_only(
    view: *mut pyo3::ffi::Py_buffer,
    obj: &pyo3::Bound<'_, pyo3::PyAny>,
    bytes: &[u8],
    flags: std::os::raw::c_int,
) -> pyo3::PyResult<()> {
    use pyo3::ffi;
    let len = isize::try_from(bytes.len())
        .map_err(|_| pyo3::exceptions::PyBufferError::new_err("a buffer too long to export"))?;
    // SAFETY: `view` is Python's (the caller's contract); `obj` is live
    // (the Bound holds it and the GIL); PyBuffer_FillInfo stores the
    // pointer, length and `readonly = 1`, takes a new reference to `obj`,
    // and fails (with an exception set) if `flags` ask for writing. The
    // bytes stay valid for the view's life (the caller's contract).
    let rc = unsafe {
        ffi::PyBuffer_FillInfo(
            view,
            obj.as_ptr(),
            bytes.as_ptr() as *mut std::os::raw::c_void,
            len,
            1,
            flags,
        )
    };
    if rc != 0 {
        return Err(pyo3::PyErr::fetch(obj.py()));
    }
    Ok(())
}
