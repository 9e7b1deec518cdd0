//! The frames on the pipes between a program and its mesh helpers
//! (`mesh_agent`, `mesh_relay`): a `u32` little-endian length, then one
//! MessagePack value with named fields. The reader refuses a length past
//! its bound before it allocates, and grows the body's buffer only with
//! the bytes that arrive (a helper is a process of the same user: buggy
//! perhaps, but it must not make us allocate what it never sent).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};

/// Writes one frame of `value`, at most `max` bytes long.
pub(crate) fn write(w: &mut impl Write, value: &impl Serialize, max: usize) -> std::io::Result<()> {
    let body = rmp_serde::to_vec_named(value).map_err(std::io::Error::other)?;
    if body.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a frame of {} bytes (at most {max})", body.len()),
        ));
    }
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one frame of at most `max` bytes; `None` at end-of-file between
/// frames.
pub(crate) fn read<T: DeserializeOwned>(
    r: &mut impl Read,
    max: usize,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (at most {max})"),
        ));
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("a frame cut short: {} of {len} bytes", body.len()),
        ));
    }
    rmp_serde::from_slice(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
