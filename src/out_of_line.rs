//! Out-of-line bytes: large byte strings of a shared-memory call travel in
//! the sender's payload pool (see `metabridge_shm::PoolWriter`), the
//! message carrying only where they lie.
//!
//! While the shared-memory transport encodes a message it lends this
//! thread its channel's [`PoolWriter`] ([`with_outbound`]); a [`Bin`]
//! (what the service macro wraps every bytes parameter and result in, and
//! what [`bytes`](crate::bytes) fields serialize through) of at least
//! [`THRESHOLD`] bytes is then copied once into the pool and written as a
//! MessagePack ext value of type [`EXT_TYPE`]: `fixext 16`, the pool
//! offset and the length as little-endian `u64`s (docs/PROTOCOL.md). TCP
//! never lends a writer, so it carries plain bin, as the original does.
//!
//! While it decodes a message that refers to the pool, the receiver lends
//! this thread the peer's [`PoolReader`] ([`with_inbound`]): a `Bin`
//! decoding such an ext value copies the bytes out of the pool straight
//! into its vector. Any other type meeting one (an `rmpv::Value`, a
//! `serde_bytes::ByteBuf`, a user's `Vec<u8>` without the attribute)
//! would misread it, so [`decode`] counts the ext values in the message
//! first, and unless every one of them was resolved by a `Bin`, decodes
//! again from a copy with them put back in line ([`inline`]): a type that
//! does not know the pool gets exactly the bytes it would have got over
//! TCP, at the cost of one more copy.
//!
//! [`Bin`]: crate::Bin

use metabridge_shm::{PoolReader, PoolWriter};
use serde::de::DeserializeOwned;
use std::cell::{Cell, RefCell};

/// MessagePack ext type of an out-of-line byte string ('M').
pub const EXT_TYPE: i8 = 77;
/// Byte strings at least this long go out of line when they can: below
/// it, streaming them through the ring costs no more than the pool's
/// bookkeeping.
pub const THRESHOLD: usize = 64 << 10;
/// Bytes of an out-of-line location: offset and length.
const LOCATION_LEN: usize = 16;

thread_local! {
    static OUTBOUND: RefCell<Option<PoolWriter>> = const { RefCell::new(None) };
    static INBOUND: RefCell<Option<PoolReader>> = const { RefCell::new(None) };
    /// Ext values a `Bin` resolved during the current [`decode`].
    static RESOLVED: Cell<usize> = const { Cell::new(0) };
}

/// Runs `encode` with `writer` lent to this thread (if any), and gives it
/// back with whether anything was placed in the pool.
pub(crate) fn with_outbound<R>(
    writer: &mut Option<PoolWriter>,
    encode: impl FnOnce() -> R,
) -> (R, bool) {
    if writer.is_none() {
        return (encode(), false);
    }
    OUTBOUND.with(|c| *c.borrow_mut() = writer.take());
    let out = encode();
    *writer = OUTBOUND.with(|c| c.borrow_mut().take());
    let placed = writer.as_mut().is_some_and(|w| w.finish_message());
    (out, placed)
}

/// Runs `decode` with `reader` lent to this thread (`None`: the message
/// refers to no pool).
pub(crate) fn with_inbound<R>(reader: Option<&PoolReader>, decode: impl FnOnce() -> R) -> R {
    let Some(reader) = reader else {
        return decode();
    };
    let before = INBOUND.with(|c| c.borrow_mut().replace(reader.clone()));
    let out = decode();
    INBOUND.with(|c| *c.borrow_mut() = before);
    out
}

/// Copies `bytes` into the lent pool if there is one and they are worth
/// it; returns the ext payload to write in their place.
pub(crate) fn place(bytes: &[u8]) -> Option<[u8; LOCATION_LEN]> {
    if bytes.len() < THRESHOLD {
        return None;
    }
    OUTBOUND.with(|c| {
        let mut w = c.borrow_mut();
        let (offset, len) = w.as_mut()?.place(bytes)?;
        let mut location = [0u8; LOCATION_LEN];
        location[..8].copy_from_slice(&offset.to_le_bytes());
        location[8..].copy_from_slice(&len.to_le_bytes());
        Some(location)
    })
}

/// The bytes an ext value of type `tag` with payload `data` stands for,
/// copied out of the lent pool.
pub(crate) fn resolve(tag: i8, data: &[u8]) -> Result<Vec<u8>, String> {
    let (offset, len) = location(tag, data)?;
    let bytes = with_lent(|reader| reader.read(offset, len))?;
    RESOLVED.with(|r| r.set(r.get() + 1));
    Ok(bytes)
}

/// The bytes an ext value of type `tag` with payload `data` stands for,
/// held lent in the peer's pool and read in place (see
/// `metabridge_shm::LentBlock`), or copied out when they cannot be lent.
pub(crate) fn resolve_lent(tag: i8, data: &[u8]) -> Result<crate::Blob, String> {
    let (offset, len) = location(tag, data)?;
    let blob = with_lent(|reader| match reader.lend(offset, len)? {
        Some(block) => Ok(crate::Blob::lent(block)),
        None => reader.read(offset, len).map(crate::Blob::from),
    })?;
    RESOLVED.with(|r| r.set(r.get() + 1));
    Ok(blob)
}

/// Runs `f` on the pool reader lent to this thread; an error if none is.
fn with_lent<R>(f: impl FnOnce(&PoolReader) -> metabridge_shm::Result<R>) -> Result<R, String> {
    INBOUND.with(|c| match c.borrow().as_ref() {
        Some(reader) => f(reader).map_err(|e| e.to_string()),
        None => Err(
            "an out-of-line byte string outside a shared-memory message that refers to a pool"
                .to_string(),
        ),
    })
}

/// The length of the bytes an ext value stands for, checked against the
/// lent pool (so that a caller may allocate that much).
pub(crate) fn checked_len(tag: i8, data: &[u8]) -> Result<u64, String> {
    let (offset, len) = location(tag, data)?;
    with_lent(|reader| reader.check(offset, len))?;
    Ok(len)
}

/// Copies the bytes an ext value stands for into `dst` (of their length).
pub(crate) fn read_into(tag: i8, data: &[u8], dst: &mut [u8]) -> Result<(), String> {
    let (offset, len) = location(tag, data)?;
    if len != dst.len() as u64 {
        return Err(format!(
            "{len} out-of-line bytes into a buffer of {}",
            dst.len()
        ));
    }
    with_lent(|reader| reader.read_into(offset, dst))
}

/// The location (offset, length) an ext value of type `tag` holds.
pub(crate) fn location(tag: i8, data: &[u8]) -> Result<(u64, u64), String> {
    if tag != EXT_TYPE || data.len() != LOCATION_LEN {
        return Err(format!(
            "a MessagePack ext value of type {tag} and {} bytes where bytes were expected \
             (an out-of-line byte string is type {EXT_TYPE}, {LOCATION_LEN} bytes)",
            data.len()
        ));
    }
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or([0; 8]));
    Ok((word(0), word(8)))
}

/// Decodes `raw` as `T`, resolving out-of-line byte strings (see the
/// module docs): straight from the pool when `T` reads them through
/// [`Bin`](crate::Bin), else from a copy with them in line.
pub(crate) fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let lent = INBOUND.with(|c| c.borrow().is_some());
    if !lent {
        return rmp_serde::from_slice(raw);
    }
    let expected = match scan(raw, &mut |_, _, _| Ok(())) {
        Ok(0) | Err(_) => return rmp_serde::from_slice(raw),
        Ok(n) => n,
    };
    let before = RESOLVED.with(|r| r.replace(0));
    let direct = rmp_serde::from_slice::<T>(raw);
    let resolved = RESOLVED.with(|r| r.replace(before));
    if direct.is_ok() && resolved == expected {
        return direct;
    }
    match inline(raw) {
        Ok(copy) => rmp_serde::from_slice(&copy),
        Err(e) => Err(rmp_serde::decode::Error::Syntax(e)),
    }
}

/// Whether `raw` holds ext values of [`EXT_TYPE`] and a pool is lent.
pub(crate) fn holds(raw: &[u8]) -> bool {
    INBOUND.with(|c| c.borrow().is_some()) && scan(raw, &mut |_, _, _| Ok(())).is_ok_and(|n| n > 0)
}

/// `raw` with every out-of-line byte string put back in line as bin, read
/// from the lent pool (a plain copy if it has none).
pub(crate) fn inline(raw: &[u8]) -> Result<Vec<u8>, String> {
    if INBOUND.with(|c| c.borrow().is_none()) {
        return Ok(raw.to_vec()); // no pool: nothing can be out of line
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut copied = 0;
    scan(raw, &mut |start, data, end| {
        out.extend_from_slice(&raw[copied..start]);
        let bytes = resolve(EXT_TYPE, &raw[data..end])?;
        let _ = rmp::encode::write_bin_len(&mut out, bytes.len() as u32);
        out.extend_from_slice(&bytes);
        copied = end;
        Ok(())
    })?;
    out.extend_from_slice(&raw[copied..]);
    Ok(out)
}

/// Walks one MessagePack value (`msgpack::walk`), calling `found(start,
/// data, end)` for each ext value of type [`EXT_TYPE`] (whatever its
/// encoding: a well-formed one is a `fixext 16`, any other is refused when
/// resolved, as a `Bin` refuses it), with where it starts, where its
/// payload starts and where it ends, in order; returns how many it found.
/// Malformed input is an error (the caller then leaves decoding, and its
/// error, to rmp_serde).
fn scan(
    raw: &[u8],
    found: &mut dyn FnMut(usize, usize, usize) -> Result<(), String>,
) -> Result<usize, String> {
    let mut count = 0;
    let mut refused = None;
    let walked = crate::msgpack::walk(raw, |ext| {
        if ext.tag != EXT_TYPE {
            return Ok(());
        }
        count += 1;
        found(ext.start, ext.data.start, ext.data.end).map_err(|e| {
            refused = Some(e);
            crate::Error::Protocol(crate::error::ProtocolError::OutOfLine(String::new()))
        })
    });
    match (walked, refused) {
        (Ok(_), _) => Ok(count),
        (Err(_), Some(why)) => Err(why),
        (Err(e), None) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
