//! JSON on the command line ↔ MessagePack on the wire (`rmpv::Value`).
//!
//! JSON → MessagePack: numbers become integers when they are integers,
//! floats otherwise; an object of the one key `$bytes` holding a base64
//! string is bytes (MessagePack bin). MessagePack → JSON: bytes become
//! that same object, `{"$bytes": "<base64>"}`, so that a result printed
//! can be sent back as it is; non-string map keys become their JSON
//! text, extension values `{"ext": type, "data": base64}`.

use crate::fail::{usage, Fail};
use rmpv::Value;

/// The key of the JSON object that stands for bytes.
pub const BYTES_KEY: &str = "$bytes";

/// Parses `text` (the value of `what` on the command line) as JSON.
pub fn parse(text: &str, what: &str) -> Result<Value, Fail> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| usage(format!("{what} is not valid JSON ({e}): {text}")))?;
    from_json(v).map_err(|e| usage(format!("{what}: {e}")))
}

/// A JSON value as MessagePack; an error for a `{"$bytes": ..}` object
/// that does not hold base64.
pub fn from_json(v: serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Object(m) if m.len() == 1 && m.contains_key(BYTES_KEY) => match &m[BYTES_KEY] {
            J::String(s) => Value::Binary(unbase64(s).ok_or_else(|| {
                format!("{{\"{BYTES_KEY}\": ..}} holds {s:?}, which is not standard base64")
            })?),
            other => {
                return Err(format!(
                    "{{\"{BYTES_KEY}\": ..}} must hold a base64 string, not {other}"
                ))
            }
        },
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s),
        J::Array(a) => Value::Array(a.into_iter().map(from_json).collect::<Result<_, _>>()?),
        J::Object(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| Ok((Value::from(k), from_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// A MessagePack value as JSON.
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => {
            if let Some(n) = i.as_i64() {
                J::from(n)
            } else {
                J::from(i.as_u64().unwrap_or(0))
            }
        }
        Value::F32(f) => serde_json::Number::from_f64(*f as f64).map_or(J::Null, J::Number),
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::String(s) => match s.as_str() {
            Some(s) => J::String(s.to_owned()),
            None => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        },
        Value::Binary(b) => serde_json::json!({ BYTES_KEY: base64(b) }),
        Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.as_str().map(str::to_owned),
                        _ => None,
                    }
                    .unwrap_or_else(|| to_json(k).to_string());
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(t, data) => serde_json::json!({"ext": t, "data": base64(data)}),
    }
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if it is not.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn json_round_trips_through_messagepack() {
        let j: serde_json::Value =
            serde_json::from_str(r#"{"a":[1,-2,1.5,"x",null,true],"b":{}}"#).unwrap();
        assert_eq!(to_json(&from_json(j.clone()).unwrap()), j);
    }

    #[test]
    fn bytes_print_as_they_are_read() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"hi", &[0, 255, 7, 128, 1]] {
            let printed = to_json(&Value::Binary(bytes.to_vec()));
            assert_eq!(printed, serde_json::json!({ "$bytes": base64(bytes) }));
            assert_eq!(from_json(printed).unwrap(), Value::Binary(bytes.to_vec()));
        }
        // A string stays a string, even one that looks like base64.
        let s = serde_json::json!("aGk=");
        assert_eq!(from_json(s).unwrap(), Value::from("aGk="));
        // A $bytes key beside others is a plain map; a bad payload an error.
        let two = serde_json::json!({"$bytes": "aGk=", "x": 1});
        assert!(matches!(from_json(two).unwrap(), Value::Map(_)));
        let bad = from_json(serde_json::json!({"$bytes": "a"})).unwrap_err();
        assert!(bad.contains("not standard base64"), "{bad}");
        let bad = from_json(serde_json::json!({"$bytes": 3})).unwrap_err();
        assert!(bad.contains("must hold a base64 string"), "{bad}");
    }
}
