//! The few MessagePack facts the envelope needs that rmp does not give:
//! the byte extent of one encoded value, found without decoding it.

use crate::error::{Error, ProtocolError, Result};

fn truncated() -> Error {
    Error::Protocol(ProtocolError::TruncatedValue)
}

/// Reads a big-endian unsigned integer of `n` bytes at `pos`.
#[inline]
fn be(buf: &[u8], pos: usize, n: usize) -> Result<u64> {
    let bytes = buf.get(pos..pos + n).ok_or_else(truncated)?;
    Ok(bytes.iter().fold(0u64, |acc, &b| acc << 8 | b as u64))
}

/// Length in bytes of the single MessagePack value at the start of `buf`.
///
/// Iterative (a count of values still to skip, not recursion), so deep
/// nesting cannot overflow the stack, and every declared length is checked
/// against the bytes present, so a lying header costs no time or memory.
#[inline]
pub fn value_len(buf: &[u8]) -> Result<usize> {
    walk(buf, |_| Ok(()))
}

/// An ext value met by [`walk`]: its type, where its marker starts, and
/// the range of its payload.
pub(crate) struct ExtValue {
    pub(crate) tag: i8,
    pub(crate) start: usize,
    pub(crate) data: std::ops::Range<usize>,
}

/// [`value_len`], calling `on_ext` for every ext value inside the value,
/// in order (for the out-of-line byte strings of a shared-memory message).
#[inline]
pub(crate) fn walk(buf: &[u8], mut on_ext: impl FnMut(ExtValue) -> Result<()>) -> Result<usize> {
    // Fast paths: a one-byte value, or a short string, needs no loop.
    match buf.first() {
        Some(&m)
            if m <= 0x7f
                || m >= 0xe0
                || m == 0xc0
                || m == 0xc2
                || m == 0xc3
                || m == 0x80
                || m == 0x90 =>
        {
            return Ok(1)
        }
        Some(&m) if (0xa0..=0xbf).contains(&m) => {
            let n = 1 + (m & 0x1f) as usize;
            return if n <= buf.len() {
                Ok(n)
            } else {
                Err(truncated())
            };
        }
        _ => {}
    }
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let m = *buf.get(pos).ok_or_else(truncated)?;
        pos += 1;
        // Bytes of an ext value's length field (before its type byte).
        let ext_len_bytes = match m {
            0xc7 => Some(1),
            0xc8 => Some(2),
            0xc9 => Some(4),
            0xd4..=0xd8 => Some(0),
            _ => None,
        };
        let (skip, more): (u64, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * (m & 0x0f) as u64),
            0x90..=0x9f => (0, (m & 0x0f) as u64),
            0xa0..=0xbf => ((m & 0x1f) as u64, 0),
            0xc4 | 0xd9 => (1 + be(buf, pos, 1)?, 0),
            0xc5 | 0xda => (2 + be(buf, pos, 2)?, 0),
            0xc6 | 0xdb => (4 + be(buf, pos, 4)?, 0),
            0xc7 => (2 + be(buf, pos, 1)?, 0),
            0xc8 => (3 + be(buf, pos, 2)?, 0),
            0xc9 => (5 + be(buf, pos, 4)?, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(buf, pos, 2)?),
            0xdd => (4, be(buf, pos, 4)?),
            0xde => (2, 2 * be(buf, pos, 2)?),
            0xdf => (4, 2 * be(buf, pos, 4)?),
            0xc1 => return Err(Error::Protocol(ProtocolError::InvalidMarker(0xc1))),
        };
        let rest = (buf.len() - pos) as u64;
        if skip > rest {
            return Err(truncated());
        }
        if let Some(n) = ext_len_bytes {
            // In bounds: `skip` covers the length field, the type and the
            // payload, and was checked against the bytes present.
            on_ext(ExtValue {
                tag: buf[pos + n] as i8,
                start: pos - 1,
                data: pos + n + 1..pos + skip as usize,
            })?;
        }
        pos += skip as usize;
        pending += more;
        // Every pending value takes at least one byte.
        if pending > (buf.len() - pos) as u64 {
            return Err(truncated());
        }
    }
    Ok(pos)
}

/// Splits the value at the start of `buf` from what follows it.
#[inline]
pub fn split_value(buf: &[u8]) -> Result<(&[u8], &[u8])> {
    let n = value_len(buf)?;
    Ok(buf.split_at(n))
}

/// If `buf` starts with an array header: (element count, the elements).
#[inline]
pub fn array_header(buf: &[u8]) -> Option<(u32, &[u8])> {
    match *buf.first()? {
        m @ 0x90..=0x9f => Some(((m & 0x0f) as u32, &buf[1..])),
        0xdc => Some((be(buf, 1, 2).ok()? as u32, buf.get(3..)?)),
        0xdd => Some((be(buf, 1, 4).ok()? as u32, buf.get(5..)?)),
        _ => None,
    }
}

/// If `buf` starts with a map header: (entry count, the entries).
#[inline]
pub fn map_header(buf: &[u8]) -> Option<(u32, &[u8])> {
    match *buf.first()? {
        m @ 0x80..=0x8f => Some(((m & 0x0f) as u32, &buf[1..])),
        0xde => Some((be(buf, 1, 2).ok()? as u32, buf.get(3..)?)),
        0xdf => Some((be(buf, 1, 4).ok()? as u32, buf.get(5..)?)),
        _ => None,
    }
}

/// If `buf` starts with a string: (its raw bytes, what follows), without
/// checking UTF-8 (for comparing keys against known ASCII names).
#[inline]
pub fn read_str_bytes(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, start): (usize, usize) = match *buf.first()? {
        m @ 0xa0..=0xbf => ((m & 0x1f) as usize, 1),
        0xd9 => (be(buf, 1, 1).ok()? as usize, 2),
        0xda => (be(buf, 1, 2).ok()? as usize, 3),
        0xdb => (be(buf, 1, 4).ok()? as usize, 5),
        _ => return None,
    };
    let bytes = buf.get(start..start.checked_add(len)?)?;
    Some((bytes, &buf[start + len..]))
}

/// What the value at the start of `buf` is, in words for an error message
/// ("a string", "an array of 3 elements", "a map of 2 entries", ...),
/// from its first marker only.
pub(crate) fn describe(buf: &[u8]) -> String {
    let plural = |n: u64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let Some(&m) = buf.first() else {
        return "nothing".into();
    };
    let sized = |len: Result<u64>, what: &str, unit: &str| match len {
        Ok(n) => format!("{what} of {}", plural(n, unit)).replace("entrys", "entries"),
        Err(_) => what.to_owned(),
    };
    match m {
        0x00..=0x7f | 0xcc..=0xd3 | 0xe0..=0xff => "an integer".into(),
        0xc0 => "nil (None)".into(),
        0xc2 | 0xc3 => "a boolean".into(),
        0xca | 0xcb => "a float".into(),
        0xa0..=0xbf => sized(Ok((m & 0x1f) as u64), "a string", "byte"),
        0xd9..=0xdb => sized(be(buf, 1, 1 << (m - 0xd9)), "a string", "byte"),
        0xc4..=0xc6 => sized(be(buf, 1, 1 << (m - 0xc4)), "bytes", "byte"),
        0x90..=0x9f => sized(Ok((m & 0x0f) as u64), "an array", "element"),
        0xdc | 0xdd => sized(be(buf, 1, 2 << (m - 0xdc)), "an array", "element"),
        0x80..=0x8f => sized(Ok((m & 0x0f) as u64), "a map", "entry"),
        0xde | 0xdf => sized(be(buf, 1, 2 << (m - 0xde)), "a map", "entry"),
        0xc7..=0xc9 | 0xd4..=0xd8 => "an ext value".into(),
        0xc1 => "an invalid byte (0xc1)".into(),
    }
}

/// If `buf` starts with a string: (the string, what follows).
#[inline]
pub fn read_str(buf: &[u8]) -> Option<(&str, &[u8])> {
    let (bytes, rest) = read_str_bytes(buf)?;
    Some((std::str::from_utf8(bytes).ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_of_every_kind() {
        let v = rmpv::Value::Map(vec![
            (
                "a".into(),
                rmpv::Value::Array(vec![
                    1.into(),
                    (-70000i64).into(),
                    1.5f64.into(),
                    rmpv::Value::Nil,
                ]),
            ),
            ("b".into(), rmpv::Value::Binary(vec![0; 300])),
            ("c".into(), rmpv::Value::String("x".repeat(70000).into())),
            ("d".into(), rmpv::Value::Ext(3, vec![1, 2, 3, 4])),
            ("e".into(), (u64::MAX).into()),
            ("f".into(), true.into()),
            ("g".into(), 1.5f32.into()),
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        let full = buf.len();
        buf.extend_from_slice(&[0xc0, 0xc0]);
        assert_eq!(value_len(&buf).unwrap(), full);
    }

    #[test]
    fn lying_headers_are_errors() {
        assert!(value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err()); // 4G-element array, no bytes
        assert!(value_len(&[0xdb, 0xff, 0xff, 0xff, 0xff, 1]).is_err()); // 4 GiB string
        assert!(value_len(&[0x92, 0x01]).is_err());
        assert!(value_len(&[]).is_err());
        assert!(value_len(&[0xc1]).is_err());
        let deep = vec![0x91u8; 1_000_000];
        assert!(value_len(&deep).is_err()); // no stack overflow either
    }

    #[test]
    fn headers() {
        assert_eq!(array_header(&[0x92, 1, 2]), Some((2, &[1u8, 2][..])));
        assert_eq!(
            map_header(&[0xde, 0, 1, 0xa1, b'k', 1]).map(|x| x.0),
            Some(1)
        );
        assert_eq!(read_str(&[0xa2, b'h', b'i', 7]), Some(("hi", &[7u8][..])));
        assert_eq!(read_str(&[0xa2, 0xff, 0xfe]), None);
        assert_eq!(read_str(&[0xa5, b'h']), None);
    }
}
