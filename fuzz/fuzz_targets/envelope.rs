//! Fuzz target `envelope`: the bytes a service decodes on every request,
//! and the bytes a client decodes on every reply.
//!
//! One input is used five ways:
//! 1. as one MessagePack value: the crate's skipper (`value_len`) must agree
//!    with rmpv, a full decoder, on where the value ends;
//! 2. as a request map (`envelope::decode_request`): a decoded request must
//!    re-encode (both client encoders) to bytes that decode to the same
//!    request;
//! 3. as a response map (`decode_response`, `decode_result`): no panic, and
//!    the fast path of `decode_result` agrees with the full decode;
//! 4. as one or two requests handed to a real dispatcher (a small service
//!    with a constructor and sync, async, aliased and dynamic endpoints, so
//!    argument binding is fuzzed too): every answer is a well-formed response
//!    envelope, and the per-connection fast path (a request shaped like the
//!    previous one skips the decode) answers exactly as the full path;
//! 5. against the same service with a token: whatever is not a request
//!    carrying the token is refused, on the fast path too.
//!
//! Endpoints must not panic here on purpose: libFuzzer's panic hook aborts
//! on any panic, even one the dispatcher would catch and answer as `Panic`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metabridge::__fuzz as mp;
use metabridge::envelope::{self, RequestKind, Response};
use metabridge::local::LocalDispatcher;
use metabridge::{Args, CallError, Reply, Service};
use std::collections::HashMap;

const TOKEN: &str = "t0k";

/// The instance state: the constructor arguments of the interop tests'
/// Python service (`Service("py:", 3)`).
struct Svc {
    prefix: String,
    scale: i64,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Point {
    x: f64,
    y: f64,
    label: Option<String>,
}

fn service(token: Option<&str>) -> Service<Svc> {
    Service::<Svc>::new("fuzz")
        .configure(|c| {
            // Small, so that fuzzed constructor arguments evict instances
            // and the eviction epoch of the fast path changes.
            c.cache_capacity = 4;
            c.workers = 1;
            c.token = token.map(str::to_owned);
        })
        .constructor(|a: &mut Args<'_>| {
            let prefix: String = a.next("prefix")?;
            let scale: i64 = a.next("scale")?;
            a.finish(&["prefix", "scale"])?;
            Ok(Svc { prefix, scale })
        })
        .endpoint("echo", |s: &Svc, a: &mut Args<'_>, out: &mut Reply<'_>| {
            let text: String = a.next("text")?;
            a.finish(&["text"])?;
            out.ok(&format!("{}{text}", s.prefix))
        })
        .alias("original", "echo")
        .endpoint(
            "scaled",
            |s: &Svc, a: &mut Args<'_>, out: &mut Reply<'_>| {
                let x: i64 = a.next("x")?;
                a.finish(&["x"])?;
                out.ok(&x.wrapping_mul(s.scale))
            },
        )
        .endpoint("value", |_: &Svc, a: &mut Args<'_>, out: &mut Reply<'_>| {
            // Any value, decoded and encoded again: the dynamic path.
            let v: rmpv::Value = a.next("v")?;
            a.finish(&["v"])?;
            out.ok(&v)
        })
        .endpoint("mixed", |_: &Svc, a: &mut Args<'_>, out: &mut Reply<'_>| {
            let name: Option<String> = a.next("name")?;
            let table: HashMap<String, Vec<i32>> = a.next("table")?;
            let pair: (bool, f64) = a.next("pair")?;
            let p: Point = a.next("p")?;
            a.finish(&["name", "table", "pair", "p"])?;
            out.ok(&(name, table.len(), pair, p))
        })
        .endpoint("check", |_: &Svc, a: &mut Args<'_>, out: &mut Reply<'_>| {
            let n: i32 = a.next("n")?;
            a.finish(&["n"])?;
            out.result(if n < 0 {
                Err(format!("refused: {n} is negative"))
            } else {
                Ok(n)
            })
        })
        .endpoint_async("later", |s, a: &mut Args<'_>| {
            let ms: u32 = a.next("ms")?;
            a.finish(&["ms"])?;
            Ok(Box::pin(async move {
                Reply::encode_ok(&format!("{}after {ms} ms", s.prefix))
            }))
        })
        .endpoint("fail", |_: &Svc, _: &mut Args<'_>, _: &mut Reply<'_>| {
            Err(CallError::new("Refused", "always"))
        })
}

/// A valid call, sent before each input so that the connection's
/// remembered shape is the same whatever the previous input was.
fn reset_request(auth: Option<&str>) -> Vec<u8> {
    let mut buf = Vec::new();
    // echo("x") with constructor ("py:", 3), as the Python client sends it.
    let ctor = envelope::encode_ctor(b"\x92\xa3py:\x03", b"\x80");
    envelope::encode_call(&mut buf, "echo", b"\x91\xa1x", b"\x80", &ctor, auth);
    buf
}

struct Dispatchers {
    open: LocalDispatcher,
    guarded: LocalDispatcher,
    reset_open: Vec<u8>,
    reset_guarded: Vec<u8>,
}

thread_local! {
    // Built once per process: a dispatcher owns a tokio runtime, too costly
    // to build per input.
    static D: Dispatchers = Dispatchers {
        open: LocalDispatcher::new(service(None)),
        guarded: LocalDispatcher::new(service(Some(TOKEN))),
        reset_open: reset_request(None),
        reset_guarded: reset_request(Some(TOKEN)),
    };
}

/// 1. The skipper against a full decoder.
fn check_value_len(data: &[u8]) {
    let ours = mp::value_len(data);
    let mut rd = data;
    match rmpv::decode::read_value(&mut rd) {
        Ok(v) => {
            let consumed = data.len() - rd.len();
            // rmpv reads the reserved marker 0xc1 as nil; the skipper
            // (rightly: the format says it is never used, and Python's
            // msgpack refuses it) rejects it. Only that may make them differ.
            if ours.is_err() && data[..consumed].contains(&0xc1) {
                return;
            }
            assert_eq!(
                ours.as_ref().ok(),
                Some(&consumed),
                "value_len disagrees with rmpv on {v:?}"
            );
            let mut again = Vec::new();
            rmpv::encode::write_value(&mut again, &v).expect("encode to a Vec");
            assert_eq!(mp::value_len(&again).ok(), Some(again.len()));
        }
        Err(e) => {
            // The only value rmpv may refuse that the skipper accepts is one
            // nested deeper than rmpv's recursion limit.
            if ours.is_ok() {
                assert!(
                    matches!(e, rmpv::decode::Error::DepthLimitExceeded),
                    "value_len accepted what rmpv refused: {e:?}"
                );
            }
        }
    }
    if let Ok(n) = ours {
        assert!(n >= 1 && n <= data.len());
    }
}

/// True if `part` is one complete MessagePack value.
fn one_value(part: &[u8]) -> bool {
    mp::value_len(part).ok() == Some(part.len())
}

/// 2. A decoded request re-encodes to itself.
fn check_request(data: &[u8]) {
    let Ok(req) = envelope::decode_request(data) else {
        return;
    };
    for (what, part, is_array) in [
        ("args", req.args, true),
        ("kwargs", req.kwargs, false),
        ("ctor_args", req.ctor_args, true),
        ("ctor_kwargs", req.ctor_kwargs, false),
    ] {
        assert!(one_value(part), "{what} is not one value");
        if is_array {
            assert!(mp::array_header(part).is_some(), "{what} is not an array");
        } else {
            assert!(mp::map_header(part).is_some(), "{what} is not a map");
        }
    }
    let ctor = envelope::encode_ctor(req.ctor_args, req.ctor_kwargs);
    let mut buf = Vec::new();
    match req.kind {
        RequestKind::Call => {
            envelope::encode_call(
                &mut buf,
                req.endpoint,
                req.args,
                req.kwargs,
                &ctor,
                req.auth,
            );
            // The client's hot-path encoder writes the same bytes.
            let mut hot = Vec::new();
            envelope::encode_call_with(
                &mut hot,
                req.endpoint,
                |b| {
                    b.extend_from_slice(req.args);
                    Ok::<(), ()>(())
                },
                req.kwargs,
                &envelope::ctor_tail(&ctor),
                req.auth,
            )
            .expect("infallible writer");
            assert_eq!(hot, buf, "encode_call_with differs from encode_call");
        }
        RequestKind::ListEndpoints => envelope::encode_list(&mut buf, &ctor, req.auth),
    }
    let again = envelope::decode_request(&buf).expect("a re-encoded request decodes");
    assert_eq!(again.kind, req.kind);
    if req.kind == RequestKind::Call {
        assert_eq!(again.endpoint, req.endpoint);
        assert_eq!(again.args, req.args);
        assert_eq!(again.kwargs, req.kwargs);
    }
    assert_eq!(again.ctor_args, req.ctor_args);
    assert_eq!(again.ctor_kwargs, req.ctor_kwargs);
    assert_eq!(again.auth, req.auth);
}

/// 3. The client's reply decoders.
fn check_response(data: &[u8]) {
    let full = envelope::decode_response(data);
    if let Ok(Response::Ok(raw)) = &full {
        assert!(one_value(raw), "a result is not one value");
    }
    let dynamic = envelope::decode_result::<rmpv::Value>(data);
    if dynamic.is_ok() {
        assert!(
            matches!(full, Ok(Response::Ok(_))),
            "decode_result succeeded on what decode_response calls {full:?}"
        );
    }
    let _ = envelope::decode_result::<String>(data);
    let _ = envelope::decode_result::<Vec<String>>(data);
    let _ = envelope::decode_result::<(Option<u8>, HashMap<String, Point>)>(data);
}

/// Every answer of the dispatcher is a response envelope.
fn well_formed(out: &[u8]) -> Response<'_> {
    assert!(one_value(out), "the answer is not one MessagePack value");
    envelope::decode_response(out).expect("the answer is a response envelope")
}

fn refused(out: &[u8]) -> bool {
    matches!(well_formed(out), Response::Err { kind, .. } if kind == "Unauthorized")
}

/// 4 and 5. Real dispatch.
fn check_dispatch(data: &[u8]) {
    // Two requests back to back: the first value, then whatever follows.
    let (first, second) = match mp::value_len(data) {
        Ok(n) => data.split_at(n),
        Err(_) => (data, &data[data.len()..]),
    };
    D.with(|d| {
        let (mut out, mut cached, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
        d.open.handle(&d.reset_open, &mut out);
        assert!(matches!(well_formed(&out), Response::Ok(_)));
        d.open.handle(first, &mut out);
        well_formed(&out);
        d.open.handle(second, &mut cached);
        d.open.handle_fresh(second, &mut fresh);
        assert_eq!(
            cached, fresh,
            "the fast path answered differently from the full path"
        );
        // The whole input as one request, right after the reset call: the
        // fast path is taken whenever the input has the reset's shape.
        d.open.handle(&d.reset_open, &mut out);
        d.open.handle(data, &mut cached);
        d.open.handle_fresh(data, &mut fresh);
        assert_eq!(cached, fresh, "fast path differs (after the reset call)");

        // A request that decodes but lacks the token must be refused (one
        // that does not decode is a ProtocolError before any token check).
        let unauthorized = envelope::decode_request(data)
            .map(|r| r.auth != Some(TOKEN))
            .unwrap_or(false);
        d.guarded.handle_fresh(data, &mut fresh);
        d.guarded.handle(&d.reset_guarded, &mut out);
        assert!(matches!(well_formed(&out), Response::Ok(_)));
        d.guarded.handle(data, &mut cached);
        assert_eq!(cached, fresh, "fast path differs (with a token)");
        if unauthorized {
            assert!(
                refused(&fresh),
                "a request without the token was not refused"
            );
        }
    });
}

fuzz_target!(|data: &[u8]| {
    check_value_len(data);
    check_request(data);
    check_response(data);
    check_dispatch(data);
});
