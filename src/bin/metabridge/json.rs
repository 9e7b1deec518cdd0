//! JSON on the command line ↔ MessagePack on the wire (`rmpv::Value`).
//!
//! JSON → MessagePack: numbers become integers when they are integers,
//! floats otherwise. MessagePack → JSON: bytes become base64 strings,
//! non-string map keys their JSON text, extension values
//! `{"ext": type, "data": base64}`.

use crate::fail::{usage, Fail};
use rmpv::Value;

/// Parses `text` (the value of `what` on the command line) as JSON.
pub fn parse(text: &str, what: &str) -> Result<Value, Fail> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| usage(format!("{what} is not valid JSON ({e}): {text}")))?;
    Ok(from_json(v))
}

/// A JSON value as MessagePack.
pub fn from_json(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
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
        J::Array(a) => Value::Array(a.into_iter().map(from_json).collect()),
        J::Object(m) => Value::Map(
            m.into_iter()
                .map(|(k, v)| (Value::from(k), from_json(v)))
                .collect(),
        ),
    }
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
        Value::Binary(b) => J::String(base64(b)),
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
        assert_eq!(to_json(&from_json(j.clone())), j);
    }
}
