//! Request and response envelopes: the MessagePack maps of the original
//! protocol, read in place.
//!
//! Decoding a request does not decode its arguments: it finds the byte
//! range of each field (`args`, `kwargs`, `ctor_args`, `ctor_kwargs`) and
//! leaves them to the endpoint's parameter binding ([`crate::Args`]) and to
//! the instance cache, whose first level keys instances by the raw
//! constructor bytes.
//!
//! ```
//! use metabridge::envelope::{self, RequestKind};
//! let mut buf = Vec::new();
//! envelope::encode_call(&mut buf, "get", &[0x91, 0xa1, b'x'], &[0x80], &[0x90, 0x80], None);
//! let req = envelope::decode_request(&buf).unwrap();
//! assert_eq!(req.kind, RequestKind::Call);
//! assert_eq!(req.endpoint, "get");
//! ```

use crate::error::{CallError, Error, ProtocolError, Result};
use crate::msgpack::{array_header, map_header, read_str, read_str_bytes, split_value};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `"call"`: call an endpoint.
    Call,
    /// `"list_endpoints"`: the sorted endpoint names.
    ListEndpoints,
}

/// A decoded request whose argument sections are still raw MessagePack.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Call or list.
    pub kind: RequestKind,
    /// Endpoint name (empty for a list).
    pub endpoint: &'a str,
    /// Raw array of positional arguments.
    pub args: &'a [u8],
    /// Raw map of keyword arguments.
    pub kwargs: &'a [u8],
    /// Raw array of constructor arguments.
    pub ctor_args: &'a [u8],
    /// Raw map of constructor keyword arguments.
    pub ctor_kwargs: &'a [u8],
    /// The `auth` token, if the client sent one.
    pub auth: Option<&'a str>,
}

/// An empty array and an empty map, for missing sections.
pub(crate) const EMPTY_ARRAY: &[u8] = &[0x90];
pub(crate) const EMPTY_MAP: &[u8] = &[0x80];

/// Why a request could not be decoded; answered as a `ProtocolError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl From<Error> for BadRequest {
    fn from(e: Error) -> Self {
        BadRequest(e.to_string())
    }
}

/// Decodes a request map. Unknown keys are ignored (a newer client may send
/// more); a missing section means empty, as in the original.
pub fn decode_request(buf: &[u8]) -> Result<Request<'_>, BadRequest> {
    let (n, mut rest) = map_header(buf).ok_or_else(|| BadRequest("request is not a map".into()))?;
    let mut kind: Option<&str> = None;
    let mut req = Request {
        kind: RequestKind::Call,
        endpoint: "",
        args: EMPTY_ARRAY,
        kwargs: EMPTY_MAP,
        ctor_args: EMPTY_ARRAY,
        ctor_kwargs: EMPTY_MAP,
        auth: None,
    };
    for _ in 0..n {
        // Keys are matched as bytes; the UTF-8 of a key is only looked at
        // to word an error.
        let (key, after_key) = read_str_bytes(rest)
            .ok_or_else(|| BadRequest("request keys must be strings".into()))?;
        let (value, after) = split_value(after_key)?;
        rest = after;
        match key {
            b"type" => kind = Some(string_field(key, value)?),
            b"endpoint" => req.endpoint = string_field(key, value)?,
            b"auth" => req.auth = Some(string_field(key, value)?),
            b"args" => req.args = shaped(key, value, array_header(value).is_some(), "an array")?,
            b"ctor_args" => {
                req.ctor_args = shaped(key, value, array_header(value).is_some(), "an array")?
            }
            b"kwargs" => req.kwargs = shaped(key, value, map_header(value).is_some(), "a map")?,
            b"ctor_kwargs" => {
                req.ctor_kwargs = shaped(key, value, map_header(value).is_some(), "a map")?
            }
            _ => {}
        }
    }
    req.kind = match kind {
        Some("call") => RequestKind::Call,
        Some("list_endpoints") => RequestKind::ListEndpoints,
        _ => return Err(BadRequest("Unknown command".into())),
    };
    Ok(req)
}

fn field_error(key: &[u8], what: &str) -> BadRequest {
    BadRequest(format!(
        "field '{}' must be {what}",
        String::from_utf8_lossy(key)
    ))
}

fn string_field<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a str, BadRequest> {
    read_str(value)
        .map(|(s, _)| s)
        .ok_or_else(|| field_error(key, "a string"))
}

fn shaped<'a>(key: &[u8], value: &'a [u8], ok: bool, what: &str) -> Result<&'a [u8], BadRequest> {
    if ok {
        Ok(value)
    } else {
        Err(field_error(key, what))
    }
}

#[inline]
fn write_str(buf: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_str(buf, s);
}

/// Encodes a call request; the four sections are raw MessagePack (an
/// array, a map, and the constructor's `[array, map]` pair as prepared by
/// [`encode_ctor`]).
pub fn encode_call(
    buf: &mut Vec<u8>,
    endpoint: &str,
    args: &[u8],
    kwargs: &[u8],
    ctor: &[u8],
    auth: Option<&str>,
) {
    let _ = rmp::encode::write_map_len(buf, if auth.is_some() { 7 } else { 6 });
    write_str(buf, "type");
    write_str(buf, "call");
    write_str(buf, "endpoint");
    write_str(buf, endpoint);
    write_str(buf, "args");
    buf.extend_from_slice(args);
    write_str(buf, "kwargs");
    buf.extend_from_slice(kwargs);
    write_ctor(buf, ctor);
    if let Some(token) = auth {
        write_str(buf, "auth");
        write_str(buf, token);
    }
}

/// Encodes a `list_endpoints` request.
pub fn encode_list(buf: &mut Vec<u8>, ctor: &[u8], auth: Option<&str>) {
    let _ = rmp::encode::write_map_len(buf, if auth.is_some() { 4 } else { 3 });
    write_str(buf, "type");
    write_str(buf, "list_endpoints");
    write_ctor(buf, ctor);
    if let Some(token) = auth {
        write_str(buf, "auth");
        write_str(buf, token);
    }
}

/// Encodes a call request whose positional arguments are written straight
/// into `buf` by `write_args` (one MessagePack array), and whose
/// constructor part is a prepared [`ctor_tail`]: the client's hot path,
/// with no intermediate buffer.
pub fn encode_call_with<E>(
    buf: &mut Vec<u8>,
    endpoint: &str,
    write_args: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    kwargs: &[u8],
    ctor_tail: &[u8],
    auth: Option<&str>,
) -> Result<(), E> {
    let _ = rmp::encode::write_map_len(buf, if auth.is_some() { 7 } else { 6 });
    write_str(buf, "type");
    write_str(buf, "call");
    write_str(buf, "endpoint");
    write_str(buf, endpoint);
    write_str(buf, "args");
    write_args(buf)?;
    write_str(buf, "kwargs");
    buf.extend_from_slice(kwargs);
    buf.extend_from_slice(ctor_tail);
    if let Some(token) = auth {
        write_str(buf, "auth");
        write_str(buf, token);
    }
    Ok(())
}

/// The constructor part of a request, encoded once per client: the
/// `ctor_args` key and raw array, the `ctor_kwargs` key and raw map.
pub fn ctor_tail(ctor: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(ctor.len() + 24);
    write_ctor(&mut buf, ctor);
    buf
}

/// `ctor` is the raw array immediately followed by the raw map.
fn write_ctor(buf: &mut Vec<u8>, ctor: &[u8]) {
    let (args, kwargs) = split_value(ctor).unwrap_or((EMPTY_ARRAY, EMPTY_MAP));
    write_str(buf, "ctor_args");
    buf.extend_from_slice(args);
    write_str(buf, "ctor_kwargs");
    buf.extend_from_slice(if kwargs.is_empty() { EMPTY_MAP } else { kwargs });
}

/// Joins a raw constructor array and map into the form `encode_call` takes.
pub fn encode_ctor(args: &[u8], kwargs: &[u8]) -> Vec<u8> {
    [args, kwargs].concat()
}

/// Encodes a success response whose result `write` appends to the buffer
/// as one MessagePack value (for hosts that encode values themselves).
/// On error the buffer is left as it was.
pub fn encode_ok_with(
    buf: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), CallError>,
) -> Result<(), CallError> {
    let start = buf.len();
    buf.extend_from_slice(OK_PREFIX);
    write(buf).inspect_err(|_| buf.truncate(start))
}

/// Encodes `{"status": "ok", "result": value}`.
pub fn encode_ok<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), CallError> {
    let start = buf.len();
    let _ = rmp::encode::write_map_len(buf, 2);
    write_str(buf, "status");
    write_str(buf, "ok");
    write_str(buf, "result");
    value
        .serialize(&mut rmp_serde::Serializer::new(&mut *buf).with_struct_map())
        .map_err(|e| {
            buf.truncate(start);
            CallError::new("SerializationError", e.to_string())
        })
}

/// Encodes `{"status": "error", "error": {"type": kind, "message": message}}`.
pub fn encode_error(buf: &mut Vec<u8>, kind: &str, message: &str) {
    encode_error_with(buf, kind, message, None)
}

/// Encodes an endpoint's error: as [`encode_error`], with the error's
/// value under `data` when it carries one (docs/PROTOCOL.md).
pub fn encode_call_error(buf: &mut Vec<u8>, e: &crate::CallError) {
    encode_error_with(buf, &e.kind, &e.message, e.data())
}

fn encode_error_with(buf: &mut Vec<u8>, kind: &str, message: &str, data: Option<&[u8]>) {
    let _ = rmp::encode::write_map_len(buf, 2);
    write_str(buf, "status");
    write_str(buf, "error");
    write_str(buf, "error");
    let _ = rmp::encode::write_map_len(buf, 2 + data.is_some() as u32);
    write_str(buf, "type");
    write_str(buf, kind);
    write_str(buf, "message");
    write_str(buf, message);
    if let Some(data) = data {
        write_str(buf, "data");
        buf.extend_from_slice(data);
    }
}

/// A decoded response: the raw result, or the remote error.
#[derive(Debug)]
pub enum Response<'a> {
    /// `status: ok`; the raw MessagePack result.
    Ok(&'a [u8]),
    /// `status: error`.
    Err {
        /// The error's type.
        kind: String,
        /// Its message.
        message: String,
        /// The error's value (MessagePack), when the endpoint sent one.
        data: Option<&'a [u8]>,
    },
}

/// Decodes a response map.
pub fn decode_response(buf: &[u8]) -> Result<Response<'_>> {
    let bad = |what: &'static str| Error::Protocol(ProtocolError::MalformedResponse(what));
    let (n, mut rest) = map_header(buf).ok_or_else(|| bad("not a map"))?;
    let (mut status, mut result, mut error) = (None, None, None);
    for _ in 0..n {
        let (key, after_key) = read_str(rest).ok_or_else(|| bad("non-string key"))?;
        let (value, after) = split_value(after_key)?;
        rest = after;
        match key {
            "status" => status = read_str(value).map(|(s, _)| s),
            "result" => result = Some(value),
            "error" => error = Some(value),
            _ => {}
        }
    }
    match status {
        Some("ok") => Ok(Response::Ok(result.unwrap_or(&[0xc0]))),
        Some("error") => {
            #[derive(serde::Deserialize)]
            struct Wire {
                #[serde(rename = "type", default)]
                kind: String,
                #[serde(default)]
                message: String,
            }
            let w: Wire = error
                .and_then(|e| rmp_serde::from_slice(e).ok())
                .unwrap_or(Wire {
                    kind: "Unknown".into(),
                    message: String::new(),
                });
            Ok(Response::Err {
                kind: w.kind,
                message: w.message,
                data: error.and_then(error_data),
            })
        }
        _ => Err(bad("no status")),
    }
}

/// The raw value under `data` of an error map, if any.
fn error_data(error: &[u8]) -> Option<&[u8]> {
    let (n, mut rest) = map_header(error)?;
    for _ in 0..n {
        let (key, after_key) = read_str(rest)?;
        let (value, after) = split_value(after_key).ok()?;
        if key == "data" {
            return Some(value);
        }
        rest = after;
    }
    None
}

/// Decodes a response into `Ok(result)` or, for an error whose data
/// `decode_error` turns into an `E`, `Err(e)`; any other error is an
/// [`Error::Remote`].
pub fn decode_fallible<R: DeserializeOwned, E>(
    buf: &[u8],
    decode_error: fn(&[u8]) -> Option<E>,
) -> Result<std::result::Result<R, E>> {
    if let Some(raw) = buf.strip_prefix(OK_PREFIX) {
        if let Ok(v) = crate::out_of_line::decode(raw) {
            return Ok(Ok(v));
        }
    }
    match decode_response(buf)? {
        Response::Err {
            data: Some(data),
            kind,
            message,
        } => match decode_error(data) {
            Some(e) => Ok(Err(e)),
            None => Err(Error::Remote { kind, message }),
        },
        _ => decode_result(buf).map(Ok),
    }
}

/// `{"status": "ok", "result": ` as this crate and the original write it
/// (status first): the prefix of every successful response.
const OK_PREFIX: &[u8] = b"\x82\xa6status\xa2ok\xa6result";

/// The result of a response, still encoded (a copy of its MessagePack
/// bytes), or its error as [`Error::Remote`].
pub fn decode_result_raw(buf: &[u8]) -> Result<Vec<u8>> {
    in_line(result_bytes(buf)?)
}

/// The encoded result of a response (in place), or its error as
/// [`Error::Remote`].
pub fn result_bytes(buf: &[u8]) -> Result<&[u8]> {
    // A two-key map, status first: the rest is the result.
    if let Some(raw) = buf.strip_prefix(OK_PREFIX) {
        if crate::msgpack::split_value(raw).is_ok_and(|(_, rest)| rest.is_empty()) {
            return Ok(raw);
        }
    }
    match decode_response(buf)? {
        Response::Ok(raw) => Ok(raw),
        Response::Err { kind, message, .. } => Err(Error::Remote { kind, message }),
    }
}

/// A copy of an encoded result with its out-of-line byte strings in line
/// (for a caller that decodes it later, away from the channel's pool).
fn in_line(raw: &[u8]) -> Result<Vec<u8>> {
    crate::out_of_line::inline(raw).map_err(|e| Error::Protocol(ProtocolError::OutOfLine(e)))
}

/// Decodes a response into the caller's result type.
pub fn decode_result<R: DeserializeOwned>(buf: &[u8]) -> Result<R> {
    // Fast path: a success in the usual key order is decoded straight
    // from the bytes after the prefix, with no pass over the map.
    if let Some(raw) = buf.strip_prefix(OK_PREFIX) {
        if let Ok(v) = crate::out_of_line::decode(raw) {
            return Ok(v);
        }
    }
    match decode_response(buf)? {
        Response::Ok(raw) => crate::out_of_line::decode(raw).map_err(|source| {
            Error::Protocol(ProtocolError::ResultType {
                expected: crate::args::user_type_name::<R>(),
                source,
            })
        }),
        Response::Err { kind, message, .. } => Err(Error::Remote { kind, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The protocol document's example request, as Python's msgpack 1.x
    /// packs the dict (`msgpack.packb(req)`, insertion order, str keys).
    const PY_REQUEST: &str = "86 a4 74797065 a4 63616c6c a8 656e64706f696e74 a3 676574 \
        a4 61726773 91 a6 6d756e646f21 a6 6b7761726773 80 a9 63746f725f61726773 90 \
        ab 63746f725f6b7761726773 81 a9 617267756d656e746f a5 4f6cc3a12c";

    #[test]
    fn decodes_a_request_packed_by_python() {
        let bytes = hex(PY_REQUEST);
        let r = decode_request(&bytes).unwrap();
        assert_eq!(r.kind, RequestKind::Call);
        assert_eq!(r.endpoint, "get");
        assert_eq!(
            rmp_serde::from_slice::<(String,)>(r.args).unwrap().0,
            "mundo!"
        );
        assert_eq!(r.kwargs, &[0x80]);
        assert_eq!(r.ctor_args, &[0x90]);
        let kw: std::collections::HashMap<String, String> =
            rmp_serde::from_slice(r.ctor_kwargs).unwrap();
        assert_eq!(kw["argumento"], "Olá,");
    }

    #[test]
    fn our_encoding_matches_python_byte_for_byte() {
        let mut buf = Vec::new();
        let ctor = encode_ctor(&[0x90], &hex("81 a9 617267756d656e746f a5 4f6cc3a12c"));
        encode_call(
            &mut buf,
            "get",
            &hex("91 a6 6d756e646f21"),
            &[0x80],
            &ctor,
            None,
        );
        assert_eq!(buf, hex(PY_REQUEST));
    }

    #[test]
    fn responses_match_python_bytes() {
        // msgpack.packb({"status": "ok", "result": "Olá, mundo!"})
        let mut buf = Vec::new();
        encode_ok(&mut buf, "Olá, mundo!").unwrap();
        assert_eq!(
            buf,
            hex("82 a6 737461747573 a2 6f6b a6 726573756c74 ac 4f6cc3a12c206d756e646f21")
        );
        assert_eq!(decode_result::<String>(&buf).unwrap(), "Olá, mundo!");
        // msgpack.packb({"status": "error", "error": {"type": "NotFound", "message": "x"}})
        buf.clear();
        encode_error(&mut buf, "NotFound", "x");
        assert_eq!(buf, hex("82 a6 737461747573 a5 6572726f72 a5 6572726f72 82 a4 74797065 a8 4e6f74466f756e64 a7 6d657373616765 a1 78"));
        match decode_result::<String>(&buf) {
            Err(Error::Remote { kind, message }) => {
                assert_eq!((kind.as_str(), message.as_str()), ("NotFound", "x"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_and_missing_sections() {
        // msgpack.packb({"type": "list_endpoints"})
        let list = hex("81 a4 74797065 ae 6c6973745f656e64706f696e7473");
        let r = decode_request(&list).unwrap();
        assert_eq!(r.kind, RequestKind::ListEndpoints);
        assert_eq!(
            (r.args, r.kwargs, r.ctor_args, r.ctor_kwargs),
            (EMPTY_ARRAY, EMPTY_MAP, EMPTY_ARRAY, EMPTY_MAP)
        );
        let mut buf = Vec::new();
        encode_list(&mut buf, &encode_ctor(&[0x90], &[0x80]), Some("tok"));
        let r = decode_request(&buf).unwrap();
        assert_eq!((r.kind, r.auth), (RequestKind::ListEndpoints, Some("tok")));
    }

    #[test]
    fn every_bad_request_is_a_typed_error() {
        let cases: &[(&str, &str)] = &[
            ("", "not a map"),
            ("91 01", "not a map"),
            ("81 01 01", "keys must be strings"),
            ("81 a4 74797065 a3 666f6f", "Unknown command"),
            ("80", "Unknown command"),
            ("81 a4 74797065 01", "must be a string"),
            (
                "82 a4 74797065 a4 63616c6c a4 61726773 01",
                "must be an array",
            ),
            (
                "82 a4 74797065 a4 63616c6c a6 6b7761726773 90",
                "must be a map",
            ),
            (
                "82 a4 74797065 a4 63616c6c a4 61726773 dd ffffffff",
                "truncated",
            ),
            ("83 a4 74797065", "truncated"),
        ];
        for (h, want) in cases {
            let err = decode_request(&hex(h)).unwrap_err();
            assert!(err.0.contains(want), "{h}: {err:?} should mention {want}");
        }
    }

    #[test]
    fn malformed_responses_are_protocol_errors() {
        for h in [
            "",
            "01",
            "81 a6 737461747573 a3 626164",
            "82 a6 737461747573 a2 6f6b a6 726573756c74",
        ] {
            assert!(
                matches!(decode_result::<String>(&hex(h)), Err(Error::Protocol(_))),
                "{h}"
            );
        }
        let mut buf = Vec::new();
        encode_ok(&mut buf, &42u8).unwrap();
        assert!(matches!(
            decode_result::<String>(&buf),
            Err(Error::Protocol(_))
        ));
    }
}
