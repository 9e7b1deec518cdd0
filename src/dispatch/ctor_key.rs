//! The two keys of a constructor argument set: the raw bytes of a
//! request's constructor sections (the instance cache's alias key) and
//! the arguments bound to the constructor's parameters, canonically
//! re-encoded (the key that owns an instance).
//!
//! Invariants: the raw key is the same bytes whether borrowed from the
//! request or built from its parts; a canonical key of arguments that
//! bind begins with an array header, and one of arguments that do not
//! bind begins with `0xc1` (never a MessagePack marker), so the two kinds
//! never collide.

use super::canonical::canonical_value;
use crate::msgpack::{array_header, map_header, read_str, split_value, value_len};
use std::borrow::Cow;

/// The bytes that identify a constructor argument set: the raw
/// `ctor_args` value, the `ctor_kwargs` key, the raw `ctor_kwargs` value.
/// Clients (ours and the original) write exactly that sequence, so on the
/// hot path the key is a borrowed slice of the request.
pub(super) fn ctor_key<'a>(buf: &'a [u8], args: &'a [u8], kwargs: &'a [u8]) -> Cow<'a, [u8]> {
    const KEY: &[u8] = b"\xabctor_kwargs";
    let base = buf.as_ptr() as usize;
    let (a, k) = (args.as_ptr() as usize, kwargs.as_ptr() as usize);
    if a >= base && k >= base && k + kwargs.len() <= base + buf.len() {
        let (a_off, k_off) = (a - base, k - base);
        if a_off + args.len() + KEY.len() == k_off && &buf[a_off + args.len()..k_off] == KEY {
            return Cow::Borrowed(&buf[a_off..k_off + kwargs.len()]);
        }
    }
    Cow::Owned([args, KEY, kwargs].concat())
}

/// The key of the second level of the instance cache: the constructor
/// arguments bound to `params` (positional first, then by name) and
/// re-encoded canonically (integers and headers in their shortest form,
/// map entries sorted), as a MessagePack array in parameter order; so
/// `("a", 1)`, `(prefix="a", scale=1)` and `("a", scale=1)` are one key.
/// Without parameter names, the positional array and the keyword map
/// (sorted). Arguments that do not bind (missing, unknown, too many, not
/// MessagePack) give a key of their raw bytes: the constructor will reject
/// them anyway.
pub(super) fn canonical_ctor_key(params: Option<&[String]>, args: &[u8], kwargs: &[u8]) -> Vec<u8> {
    bound_key(params, args, kwargs).unwrap_or_else(|| {
        let mut raw = vec![0xc1]; // never the first byte of a bound key
        raw.extend_from_slice(args);
        raw.extend_from_slice(kwargs);
        raw
    })
}

fn bound_key(params: Option<&[String]>, args: &[u8], kwargs: &[u8]) -> Option<Vec<u8>> {
    let whole = |b: &[u8]| value_len(b).ok() == Some(b.len());
    if !whole(args) || !whole(kwargs) {
        return None;
    }
    let (n_args, mut positional) = array_header(args)?;
    let (n_kwargs, mut named) = map_header(kwargs)?;
    let mut out = Vec::with_capacity(args.len() + kwargs.len());
    match params {
        Some(params) => {
            if n_args as usize > params.len() {
                return None;
            }
            let mut bound: Vec<Option<&[u8]>> = vec![None; params.len()];
            for slot in bound.iter_mut().take(n_args as usize) {
                let (value, rest) = split_value(positional).ok()?;
                *slot = Some(value);
                positional = rest;
            }
            for _ in 0..n_kwargs {
                let (key, rest) = read_str(named)?;
                let (value, rest) = split_value(rest).ok()?;
                named = rest;
                let i = params.iter().position(|p| p == key)?;
                if bound[i].replace(value).is_some() {
                    return None; // given twice
                }
            }
            let _ = rmp::encode::write_array_len(&mut out, params.len() as u32);
            for value in bound {
                canonical_value(&mut value?, &mut out, 0)?;
            }
        }
        None => {
            let _ = rmp::encode::write_array_len(&mut out, 2);
            canonical_value(&mut &args[..], &mut out, 0)?;
            canonical_value(&mut &kwargs[..], &mut out, 0)?;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope;

    #[test]
    fn ctor_keys_agree_whether_borrowed_or_built() {
        let mut buf = Vec::new();
        let ctor = envelope::encode_ctor(&[0x90], &[0x81, 0xa1, b'k', 1]);
        envelope::encode_call(&mut buf, "e", &[0x90], &[0x80], &ctor, None);
        let req = envelope::decode_request(&buf).unwrap();
        let borrowed = ctor_key(&buf, req.ctor_args, req.ctor_kwargs);
        assert!(matches!(borrowed, Cow::Borrowed(_)));
        let built = ctor_key(&[], &[0x90], &[0x81, 0xa1, b'k', 1]);
        assert_eq!(borrowed, built);
    }
}
