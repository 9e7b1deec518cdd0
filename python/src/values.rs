//! Python values <-> MessagePack, directly (no `msgpack` package on the
//! hot path), mapped as the original maps them: `packb(use_bin_type=True)`
//! and `unpackb(raw=False)` — str, bytes, int, float, bool, None,
//! list/tuple (arrays, decoded as lists), dict (maps); and, as bin, any
//! object exporting a contiguous buffer (`bytearray`, `memoryview`, numpy
//! arrays).

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};

/// How deep values may nest (as msgpack's default recursion limit).
const MAX_DEPTH: u32 = 512;

/// Appends `obj` to `buf` as one MessagePack value.
pub fn encode(obj: &Bound<'_, PyAny>, buf: &mut Vec<u8>) -> PyResult<()> {
    encode_at(obj, buf, 0)
}

fn encode_at(obj: &Bound<'_, PyAny>, buf: &mut Vec<u8>, depth: u32) -> PyResult<()> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err("recursion limit exceeded"));
    }
    if obj.is_none() {
        buf.push(0xc0);
    } else if let Ok(s) = obj.cast_exact::<PyString>() {
        let _ = rmp::encode::write_str(buf, s.to_str()?);
    } else if let Ok(b) = obj.cast_exact::<PyBool>() {
        buf.push(if b.is_true() { 0xc3 } else { 0xc2 });
    } else if obj.is_exact_instance_of::<PyInt>() {
        encode_int(obj, buf)?;
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        let _ = rmp::encode::write_f64(buf, f.value());
    } else if let Ok(b) = obj.cast_exact::<PyBytes>() {
        write_bytes(buf, b.as_bytes());
    } else if let Ok(l) = obj.cast_exact::<PyList>() {
        let _ = rmp::encode::write_array_len(buf, len32(l.len())?);
        for item in l.iter() {
            encode_at(&item, buf, depth + 1)?;
        }
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        let _ = rmp::encode::write_array_len(buf, len32(t.len())?);
        for item in t.iter() {
            encode_at(&item, buf, depth + 1)?;
        }
    } else if let Ok(d) = obj.cast::<PyDict>() {
        let _ = rmp::encode::write_map_len(buf, len32(d.len())?);
        for (k, v) in d.iter() {
            encode_at(&k, buf, depth + 1)?;
            encode_at(&v, buf, depth + 1)?;
        }
    } else if let Ok(s) = obj.cast::<PyString>() {
        let _ = rmp::encode::write_str(buf, s.to_str()?);
    } else if obj.is_instance_of::<PyInt>() {
        encode_int(obj, buf)?;
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        let _ = rmp::encode::write_f64(buf, f.value());
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        write_bytes(buf, b.as_bytes());
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        write_bytes(buf, &b.to_vec());
    } else if let Ok(l) = obj.cast::<PyList>() {
        let _ = rmp::encode::write_array_len(buf, len32(l.len())?);
        for item in l.iter() {
            encode_at(&item, buf, depth + 1)?;
        }
    } else if crate::platform::with_contiguous_bytes(obj, |bytes| write_bytes(buf, bytes)).is_some()
    {
        // memoryview, array.array, a numpy array...: their bytes, borrowed
        // through the buffer protocol and copied once, as bin (or out of
        // line).
    } else {
        return Err(PyTypeError::new_err(format!(
            "can not serialize {:?} object",
            obj.get_type().name()?.to_str()?
        )));
    }
    Ok(())
}

/// Bytes as bin, or out of line (a `fixext 16` locating them in the
/// payload pool of the shared-memory reply being encoded) when large.
fn write_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    match metabridge::__private::place_out_of_line(bytes) {
        Some(location) => {
            buf.push(0xd8);
            buf.push(metabridge::__private::OUT_OF_LINE_EXT as u8);
            buf.extend_from_slice(&location);
        }
        None => {
            let _ = rmp::encode::write_bin(buf, bytes);
        }
    }
}

fn len32(n: usize) -> PyResult<u32> {
    u32::try_from(n).map_err(|_| PyValueError::new_err("too many items to serialize"))
}

fn encode_int(obj: &Bound<'_, PyAny>, buf: &mut Vec<u8>) -> PyResult<()> {
    if let Ok(v) = obj.extract::<i64>() {
        let _ = rmp::encode::write_sint(buf, v);
    } else if let Ok(v) = obj.extract::<u64>() {
        let _ = rmp::encode::write_uint(buf, v);
    } else {
        return Err(PyOverflowError::new_err("Integer value out of range"));
    }
    Ok(())
}

/// A cursor over MessagePack bytes, decoding into Python objects.
pub struct Decoder<'b> {
    buf: &'b [u8],
    pos: usize,
    /// Byte strings become `metabridge.Buffer`s (read in place when out
    /// of line and lendable), not `bytes`.
    buffers: bool,
}

fn truncated() -> PyErr {
    PyValueError::new_err("truncated MessagePack data")
}

impl<'b> Decoder<'b> {
    pub fn new(buf: &'b [u8]) -> Decoder<'b> {
        Decoder {
            buf,
            pos: 0,
            buffers: false,
        }
    }

    /// Byte strings as `metabridge.Buffer`s (see [`decode_buffers`]).
    pub fn buffers(mut self, on: bool) -> Decoder<'b> {
        self.buffers = on;
        self
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> PyResult<&'b [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let s = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> PyResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> PyResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len(&mut self, width: usize) -> PyResult<usize> {
        Ok(match width {
            1 => self.byte()? as usize,
            2 => u16::from_be_bytes(self.be()?) as usize,
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }

    /// Decodes the next value.
    pub fn value<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.value_at(py, 0)
    }

    fn value_at<'py>(&mut self, py: Python<'py>, depth: u32) -> PyResult<Bound<'py, PyAny>> {
        if depth > MAX_DEPTH {
            return Err(PyValueError::new_err("recursion limit exceeded"));
        }
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => (m as i64).into_pyobject(py)?.into_any(),
            0xe0..=0xff => (m as i8 as i64).into_pyobject(py)?.into_any(),
            0xa0..=0xbf => self.str(py, (m & 0x1f) as usize)?,
            0x90..=0x9f => self.array(py, (m & 0x0f) as usize, depth)?,
            0x80..=0x8f => self.map(py, (m & 0x0f) as usize, depth)?,
            0xc0 => py.None().into_bound(py),
            0xc2 => PyBool::new(py, false).to_owned().into_any(),
            0xc3 => PyBool::new(py, true).to_owned().into_any(),
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                let bytes = self.take(n)?;
                if self.buffers {
                    let blob = metabridge::Blob::from(bytes);
                    Bound::new(py, crate::buffer::Buffer::new(blob))?.into_any()
                } else {
                    PyBytes::new(py, bytes).into_any()
                }
            }
            0xca => (f32::from_be_bytes(self.be()?) as f64)
                .into_pyobject(py)?
                .into_any(),
            0xcb => f64::from_be_bytes(self.be()?).into_pyobject(py)?.into_any(),
            0xcc => (self.byte()? as i64).into_pyobject(py)?.into_any(),
            0xcd => (u16::from_be_bytes(self.be()?) as i64)
                .into_pyobject(py)?
                .into_any(),
            0xce => (u32::from_be_bytes(self.be()?) as i64)
                .into_pyobject(py)?
                .into_any(),
            0xcf => u64::from_be_bytes(self.be()?).into_pyobject(py)?.into_any(),
            0xd0 => (self.byte()? as i8 as i64).into_pyobject(py)?.into_any(),
            0xd1 => (i16::from_be_bytes(self.be()?) as i64)
                .into_pyobject(py)?
                .into_any(),
            0xd2 => (i32::from_be_bytes(self.be()?) as i64)
                .into_pyobject(py)?
                .into_any(),
            0xd3 => i64::from_be_bytes(self.be()?).into_pyobject(py)?.into_any(),
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                self.str(py, n)?
            }
            0xd8 => {
                // An out-of-line byte string of a shared-memory message:
                // copied once, from the pool into the new `bytes`.
                let ext = self.take(17)?;
                let (tag, location) = (ext[0] as i8, &ext[1..]);
                if self.buffers {
                    // Held lent in the pool and read in place (or copied
                    // past the process's cap).
                    let blob = metabridge::__private::lend_out_of_line(tag, location)
                        .map_err(PyValueError::new_err)?;
                    return Ok(Bound::new(py, crate::buffer::Buffer::new(blob))?.into_any());
                }
                let len = metabridge::__private::out_of_line_len(tag, location)
                    .map_err(PyValueError::new_err)?;
                let len = usize::try_from(len)
                    .map_err(|_| PyValueError::new_err("out-of-line bytes too long"))?;
                PyBytes::new_with(py, len, |dst| {
                    metabridge::__private::read_out_of_line(tag, location, dst)
                        .map_err(PyValueError::new_err)
                })?
                .into_any()
            }
            0xdc | 0xdd => {
                let n = self.len(if m == 0xdc { 2 } else { 4 })?;
                self.array(py, n, depth)?
            }
            0xde | 0xdf => {
                let n = self.len(if m == 0xde { 2 } else { 4 })?;
                self.map(py, n, depth)?
            }
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unsupported MessagePack type 0x{m:02x} (extension types are not supported)"
                )))
            }
        })
    }

    fn str<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyAny>> {
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw)
            .map_err(|e| PyValueError::new_err(format!("invalid UTF-8 in a string: {e}")))?;
        Ok(PyString::new(py, s).into_any())
    }

    fn array<'py>(&mut self, py: Python<'py>, n: usize, depth: u32) -> PyResult<Bound<'py, PyAny>> {
        // Every element takes at least one byte: a lying length fails here.
        if n > self.buf.len() - self.pos {
            return Err(truncated());
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value_at(py, depth + 1)?);
        }
        Ok(PyList::new(py, items)?.into_any())
    }

    fn map<'py>(&mut self, py: Python<'py>, n: usize, depth: u32) -> PyResult<Bound<'py, PyAny>> {
        if n > self.buf.len() - self.pos {
            return Err(truncated());
        }
        let d = PyDict::new(py);
        for _ in 0..n {
            let k = self.value_at(py, depth + 1)?;
            let v = self.value_at(py, depth + 1)?;
            d.set_item(k, v)?;
        }
        Ok(d.into_any())
    }

    /// `n` values as a tuple (positional arguments).
    pub fn tuple<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyTuple>> {
        if n > self.buf.len() - self.pos {
            return Err(truncated());
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(py)?);
        }
        PyTuple::new(py, items)
    }

    /// `n` key/value pairs as a dict (keyword arguments; keys must be str).
    pub fn kwargs<'py>(
        &mut self,
        py: Python<'py>,
        n: usize,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        if n == 0 {
            return Ok(None);
        }
        if n > self.buf.len() - self.pos {
            return Err(truncated());
        }
        let d = PyDict::new(py);
        for _ in 0..n {
            let k = self.value(py)?;
            if !k.is_instance_of::<PyString>() {
                return Err(PyTypeError::new_err("keywords must be strings"));
            }
            let v = self.value(py)?;
            d.set_item(k, v)?;
        }
        Ok(Some(d))
    }
}

/// Decodes exactly one value.
pub fn decode<'py>(py: Python<'py>, buf: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    decode_buffers(py, buf, false)
}

/// Decodes one value, its byte strings as `metabridge.Buffer`s if
/// `buffers` (see `buffer`).
pub fn decode_buffers<'py>(
    py: Python<'py>,
    buf: &[u8],
    buffers: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mut d = Decoder::new(buf).buffers(buffers);
    let v = d.value(py)?;
    if !d.at_end() {
        return Err(PyValueError::new_err(
            "extra data after a MessagePack value",
        ));
    }
    Ok(v)
}

/// Positional arguments as a MessagePack array.
pub fn encode_args(args: &Bound<'_, PyTuple>, buf: &mut Vec<u8>) -> PyResult<()> {
    let _ = rmp::encode::write_array_len(buf, len32(args.len())?);
    for a in args.iter() {
        encode(&a, buf)?;
    }
    Ok(())
}

/// Keyword arguments as a MessagePack map (none: an empty map).
pub fn encode_kwargs(kwargs: Option<&Bound<'_, PyDict>>, buf: &mut Vec<u8>) -> PyResult<()> {
    match kwargs {
        None => buf.push(0x80),
        Some(d) => {
            let _ = rmp::encode::write_map_len(buf, len32(d.len())?);
            for (k, v) in d.iter() {
                encode(&k, buf)?;
                encode(&v, buf)?;
            }
        }
    }
    Ok(())
}
