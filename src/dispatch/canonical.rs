//! Canonical MessagePack: one byte sequence for each value, whatever
//! encoding a client chose.
//!
//! Invariants: two encodings of the same value (integer widths, string,
//! binary, array and map header widths, map key order) re-encode to the
//! same bytes, and different values to different bytes; floats and
//! extensions are kept as they are (so `1.0` and `1` stay distinct);
//! nesting deeper than [`MAX_DEPTH`] and bytes that are not MessagePack
//! give `None`, never a panic, and recursion never goes deeper than that.

use crate::msgpack::{array_header, map_header, split_value};

/// Deepest nesting canonicalised (deeper values do not bind: raw key).
const MAX_DEPTH: u32 = 64;

/// Re-encodes the MessagePack value at the start of `input` canonically
/// into `out`, advancing `input`: integers, strings, binaries, arrays and
/// maps with the shortest headers (non-negative integers as unsigned),
/// map entries sorted by their canonical keys; floats and extensions as
/// they are. `None` for bytes that are not MessagePack.
pub(super) fn canonical_value(input: &mut &[u8], out: &mut Vec<u8>, depth: u32) -> Option<()> {
    use rmp::encode as enc;
    use rmp::Marker as M;
    if depth > MAX_DEPTH {
        return None;
    }
    let raw = split_value(input).ok()?.0;
    let whole = raw;
    let mut rd = &raw[1..];
    let take = |rd: &mut &[u8], n: usize| -> Option<u64> {
        let (head, rest) = (rd.get(..n)?, rd.get(n..)?);
        *rd = rest;
        Some(head.iter().fold(0u64, |acc, &b| acc << 8 | b as u64))
    };
    let bytes = |rd: &mut &[u8], n: u64| -> Option<Vec<u8>> {
        let n = usize::try_from(n).ok()?;
        let (head, rest) = (rd.get(..n)?, rd.get(n..)?);
        *rd = rest;
        Some(head.to_vec())
    };
    match M::from_u8(raw[0]) {
        M::FixPos(_) | M::FixNeg(_) | M::Null | M::True | M::False => out.push(raw[0]),
        M::U8 | M::U16 | M::U32 | M::U64 => {
            let width = 1 << (raw[0] - 0xcc);
            let _ = enc::write_uint(out, take(&mut rd, width)?);
        }
        M::I8 | M::I16 | M::I32 | M::I64 => {
            let width = 1usize << (raw[0] - 0xd0);
            let bits = take(&mut rd, width)?;
            let shift = 64 - 8 * width as u32;
            let v = ((bits << shift) as i64) >> shift; // sign-extend
            if v >= 0 {
                let _ = enc::write_uint(out, v as u64);
            } else {
                let _ = enc::write_sint(out, v);
            }
        }
        M::FixStr(n) => {
            let _ = enc::write_str_len(out, n as u32);
            out.extend_from_slice(&bytes(&mut rd, n as u64)?);
        }
        M::Str8 | M::Str16 | M::Str32 | M::Bin8 | M::Bin16 | M::Bin32 => {
            let is_str = raw[0] <= 0xdb && raw[0] >= 0xd9;
            let width = 1 << ((raw[0] - if is_str { 0xd9 } else { 0xc4 }) as usize);
            let len = take(&mut rd, width)?;
            let len32 = u32::try_from(len).ok()?;
            let _ = if is_str {
                enc::write_str_len(out, len32).map(drop)
            } else {
                enc::write_bin_len(out, len32).map(drop)
            };
            out.extend_from_slice(&bytes(&mut rd, len)?);
        }
        M::FixArray(_) | M::Array16 | M::Array32 => {
            let (len, mut items) = array_header(raw)?;
            let _ = enc::write_array_len(out, len);
            for _ in 0..len {
                canonical_value(&mut items, out, depth + 1)?;
            }
        }
        M::FixMap(_) | M::Map16 | M::Map32 => {
            let (len, mut items) = map_header(raw)?;
            let mut entries = Vec::with_capacity(len.min(1024) as usize);
            for _ in 0..len {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                canonical_value(&mut items, &mut k, depth + 1)?;
                canonical_value(&mut items, &mut v, depth + 1)?;
                entries.push((k, v));
            }
            entries.sort();
            let _ = enc::write_map_len(out, len);
            for (k, v) in entries {
                out.extend_from_slice(&k);
                out.extend_from_slice(&v);
            }
        }
        // Floats and extensions: as they are.
        _ => out.extend_from_slice(whole),
    }
    *input = &input[raw.len()..];
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_values_use_the_shortest_headers_and_sorted_maps() {
        let canon = |b: &[u8]| {
            let mut out = Vec::new();
            let mut input = b;
            canonical_value(&mut input, &mut out, 0).map(|()| (out, input.len()))
        };
        let same = |a: &[u8], b: &[u8]| assert_eq!(canon(a), canon(b), "{a:x?} vs {b:x?}");
        same(&[0xd1, 0xff, 0xff], &[0xff]); // -1 as int16
        same(&[0xd3, 0, 0, 0, 0, 0, 0, 1, 0], &[0xcd, 1, 0]); // 256 as int64
        same(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 5], &[0x05]);
        same(&[0xd9, 1, b'a'], &[0xa1, b'a']); // str8 → fixstr
        same(&[0xc5, 0, 1, 9], &[0xc4, 1, 9]); // bin16 → bin8
        same(&[0xdc, 0, 1, 0xc0], &[0x91, 0xc0]); // array16 → fixarray
                                                  // Maps (nested too) in any key order.
        same(
            &[0x82, 0xa1, b'b', 0x81, 0xa1, b'y', 1, 0xa1, b'a', 2],
            &[
                0x82, 0xa1, b'a', 0xd0, 2, 0xa1, b'b', 0x81, 0xd9, 1, b'y', 1,
            ],
        );
        // Floats stay as they are; what follows is left in the input.
        assert_eq!(
            canon(&[0xca, 0, 0, 0, 0, 7]),
            Some((vec![0xca, 0, 0, 0, 0], 1))
        );
        assert_eq!(canon(&[0xc1]), None);
        assert_eq!(canon(&[0x92, 1]), None, "truncated");
    }
}
