//! Writes the seed inputs of every fuzz target into `<dir>/<target>/`
//! (default `corpus`): meaningful starting points that the fuzzer would take
//! long to find alone, made with the crate's own encoders and APIs.
//!
//! - `envelope`: the requests of the interop test's Python client
//!   (tests/python/interop_client.py) and of the protocol document, requests
//!   with a token, two requests back to back, and response envelopes;
//! - `tcp_frame`: streams of frames, trickled, empty, cut, and with lying
//!   lengths under and over the maximum;
//! - `segment`: a real segment file with frames in it, and structured inputs
//!   with one frame, a message of two frames, a pad frame, a full ring;
//! - `ring`: scripts of sends and receives, with and without corruption;
//! - `registry`: registry files written by `Registry::register`.
//!
//! Run from `fuzz/`: `cargo +nightly run --example make_seeds -- corpus`
//! (then `cargo fuzz cmin` each target; the committed corpus is minimized).

use metabridge::envelope;
use metabridge::registry::{Entry, Registry};
use metabridge_shm::{segment_path, Channel, ChannelConfig};
use rmpv::Value;
use std::path::{Path, PathBuf};

fn mp(v: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).expect("encode to a Vec");
    buf
}

fn s(x: &str) -> Value {
    Value::from(x)
}

fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(pairs.iter().map(|(k, v)| (s(k), v.clone())).collect())
}

fn arr(items: &[Value]) -> Value {
    Value::Array(items.to_vec())
}

/// A request as the Python client builds it (a dict in this key order).
fn py_call(
    endpoint: &str,
    args: Value,
    kwargs: Value,
    ctor: (Value, Value),
    auth: Option<&str>,
) -> Vec<u8> {
    let mut buf = Vec::new();
    let c = envelope::encode_ctor(&mp(&ctor.0), &mp(&ctor.1));
    envelope::encode_call(&mut buf, endpoint, &mp(&args), &mp(&kwargs), &c, auth);
    buf
}

fn default_ctor() -> (Value, Value) {
    (arr(&[s("py:"), Value::from(3)]), map(&[]))
}

struct Out {
    dir: PathBuf,
}

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let d = self.dir.join(target);
        std::fs::create_dir_all(&d).expect("corpus dir");
        std::fs::write(d.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

fn envelope_seeds(o: &Out) {
    let t = "envelope";
    let c = default_ctor;
    let none = || arr(&[]);
    let nomap = || map(&[]);
    let calls: Vec<(&str, Vec<u8>)> = vec![
        (
            "protocol-example",
            py_call(
                "get",
                arr(&[s("mundo!")]),
                nomap(),
                (none(), map(&[("argumento", s("Olá,"))])),
                None,
            ),
        ),
        (
            "echo",
            py_call("echo", arr(&[s("olá")]), nomap(), c(), None),
        ),
        (
            "echo-kw",
            py_call("echo", none(), map(&[("text", s("kw"))]), c(), None),
        ),
        (
            "scaled-ctor-kw",
            py_call(
                "scaled",
                arr(&[Value::from(2)]),
                nomap(),
                (
                    none(),
                    map(&[("prefix", s("x")), ("scale", Value::from(5))]),
                ),
                None,
            ),
        ),
        (
            "alias",
            py_call("original", arr(&[s("a")]), nomap(), c(), None),
        ),
        (
            "async",
            py_call("later", arr(&[Value::from(1)]), nomap(), c(), None),
        ),
        ("not-found", py_call("nope", none(), nomap(), c(), None)),
        (
            "type-error",
            py_call("scaled", arr(&[s("x")]), nomap(), c(), None),
        ),
        (
            "endpoint-error",
            py_call("check", arr(&[Value::from(-1)]), nomap(), c(), None),
        ),
        ("fail", py_call("fail", none(), nomap(), c(), None)),
        (
            "value-all-types",
            py_call(
                "value",
                arr(&[arr(&[
                    Value::Nil,
                    Value::from(true),
                    Value::from(-70000i64),
                    Value::from(u64::MAX),
                    Value::F32(1.5),
                    Value::F64(-2.25),
                    Value::Binary(vec![0, 1, 2]),
                    Value::Ext(3, vec![1, 2, 3, 4]),
                    map(&[("k", arr(&[Value::from(1)]))]),
                    s(&"x".repeat(40)),
                ])]),
                nomap(),
                c(),
                None,
            ),
        ),
        (
            "mixed",
            py_call(
                "mixed",
                arr(&[
                    s("n"),
                    map(&[("t", arr(&[Value::from(1), Value::from(2)]))]),
                    arr(&[Value::from(true), Value::F64(0.5)]),
                ]),
                map(&[(
                    "p",
                    map(&[
                        ("x", Value::F64(1.0)),
                        ("y", Value::F64(2.0)),
                        ("label", Value::Nil),
                    ]),
                )]),
                c(),
                None,
            ),
        ),
        (
            "auth",
            py_call("echo", arr(&[s("t")]), nomap(), c(), Some("t0k")),
        ),
        (
            "auth-wrong",
            py_call("echo", arr(&[s("t")]), nomap(), c(), Some("nope")),
        ),
    ];
    for (name, bytes) in &calls {
        o.put(t, name, bytes);
    }
    // Two requests back to back: the second has the first's shape (the
    // dispatcher's fast path), and one with another shape.
    let a = py_call("echo", arr(&[s("one")]), nomap(), c(), None);
    let b = py_call("echo", arr(&[s("two")]), nomap(), c(), None);
    o.put(t, "two-same-shape", &[a.clone(), b].concat());
    let d = py_call("scaled", arr(&[Value::from(7)]), nomap(), c(), None);
    o.put(t, "two-shapes", &[a, d].concat());
    // The reset call's shape with other arguments (fast path, one request).
    o.put(
        t,
        "reset-shape",
        &py_call("echo", arr(&[s("y")]), nomap(), c(), None),
    );
    // {"type": "dance"}, list requests (as Python sends them: no sections).
    o.put(t, "unknown-type", &mp(&map(&[("type", s("dance"))])));
    o.put(t, "list", &mp(&map(&[("type", s("list_endpoints"))])));
    o.put(
        t,
        "list-auth",
        &mp(&map(&[("type", s("list_endpoints")), ("auth", s("t0k"))])),
    );
    let mut list = Vec::new();
    envelope::encode_list(
        &mut list,
        &envelope::encode_ctor(b"\x90", b"\x80"),
        Some("t0k"),
    );
    o.put(t, "list-ours", &list);
    // Responses, for the client's decoders.
    let mut r = Vec::new();
    envelope::encode_ok(&mut r, "Olá, mundo!").expect("encode");
    o.put(t, "response-ok", &r);
    r.clear();
    envelope::encode_ok(&mut r, &vec!["a", "b"]).expect("encode");
    o.put(t, "response-list", &r);
    r.clear();
    envelope::encode_error(&mut r, "NotFound", "Endpoint 'nope' not found");
    o.put(t, "response-error", &r);
    o.put(
        t,
        "response-ok-reordered",
        &mp(&map(&[("result", Value::from(1)), ("status", s("ok"))])),
    );
}

/// A `tcp_frame` input: max selector, read sizes, stream.
fn frame_input(max: u8, sizes: [u8; 4], stream: &[u8]) -> Vec<u8> {
    [&[max][..], &sizes, stream].concat()
}

fn frames(payloads: &[&[u8]]) -> Vec<u8> {
    let mut w = Vec::new();
    for p in payloads {
        metabridge_tcp::write_frame_blocking(&mut w, p).expect("write");
    }
    w
}

fn tcp_seeds(o: &Out) {
    let t = "tcp_frame";
    let req = py_call("echo", arr(&[s("olá")]), map(&[]), default_ctor(), None);
    let two = frames(&[&req, b"\x81\xa4type\xa5dance"]);
    o.put(t, "two-requests", &frame_input(7, [0; 4], &two));
    o.put(t, "trickled", &frame_input(7, [1, 3, 2, 7], &two));
    o.put(
        t,
        "empty-frame",
        &frame_input(4, [0; 4], &frames(&[b"", b"x"])),
    );
    o.put(t, "closed", &frame_input(7, [0; 4], b""));
    o.put(t, "cut-prefix", &frame_input(7, [1, 1, 1, 1], b"\0\0"));
    o.put(t, "cut-body", &frame_input(7, [0; 4], b"\0\0\0\x10abc"));
    // A declared 4 GiB (over every maximum) and a declared 60 MiB under the
    // 64 MiB default with three bytes behind it.
    o.put(
        t,
        "declared-4g",
        &frame_input(7, [0; 4], b"\xff\xff\xff\xffabc"),
    );
    o.put(
        t,
        "declared-60m",
        &frame_input(7, [0; 4], b"\x03\xc0\x00\x00abc"),
    );
    o.put(
        t,
        "over-small-max",
        &frame_input(3, [0; 4], &frames(&[&[7; 65]])),
    );
    let big = vec![9u8; 70_000];
    o.put(
        t,
        "over-chunk",
        &frame_input(6, [0, 200, 0, 0], &frames(&[&big[..66_000]])),
    );
}

fn segment_seeds(o: &Out, scratch: &Path) {
    let t = "segment";
    let config = ChannelConfig {
        capacity: 4096,
        dir: scratch.to_path_buf(),
        ..Default::default()
    };
    // Raw: a real segment with a message of one frame and one of two.
    let mut a = Channel::create("seed", &config).expect("create");
    a.send(b"hello").expect("send");
    a.send(&[5u8; 1500]).expect("send");
    let file = std::fs::read(segment_path(&config.dir, "seed")).expect("read");
    drop(a);
    o.put(t, "raw-real", &[&[0u8][..], &file].concat());
    o.put(
        t,
        "raw-short",
        &[&[0u8][..], b"MBRIDGE1 and not much more"].concat(),
    );
    o.put(t, "raw-zeros", &[0u8; 5000]);

    // Structured: mode (bit 0 set; capacity exponents in bits 1-3 and 4-6),
    // `small`, tail0, head0, tail1, head1, patch count, cut, data.
    let structured = |mode: u8, small: u8, w: [u64; 4], data: &[u8]| {
        let mut v = vec![mode, small];
        for x in w {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.push(0); // no patches
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(data);
        v
    };
    let hdr = |len: u32, flags: u32| (len as u64 | (flags as u64) << 32).to_le_bytes();
    let cap64 = 1; // both rings 64 bytes
    let one = [&hdr(5, 0)[..], b"hello\0\0\0"].concat();
    o.put(
        t,
        "one-frame",
        &structured(cap64, 0x0f, [16, 0, 0, 0], &one),
    );
    let two = [
        &hdr(3, 1)[..],
        b"abc\0\0\0\0\0",
        &hdr(2, 0),
        b"de\0\0\0\0\0\0",
    ]
    .concat();
    o.put(
        t,
        "two-frames",
        &structured(cap64, 0x0f, [32, 0, 0, 0], &two),
    );
    // A pad frame at offset 48 covering the end, then a frame at 0.
    let mut ring = vec![0u8; 64];
    ring[48..56].copy_from_slice(&hdr(8, 2));
    ring[0..8].copy_from_slice(&hdr(2, 0));
    ring[8..10].copy_from_slice(b"hi");
    o.put(
        t,
        "pad-frame",
        &structured(cap64, 0x0f, [80, 48, 0, 0], &ring),
    );
    // Ring 1 full: the creator never read what the opener "sent".
    o.put(
        t,
        "ring1-full",
        &structured(cap64, 0x0f, [0, 0, 64, 0], &[]),
    );
    o.put(
        t,
        "small-max",
        &structured(cap64 | 0x80, 0x0f, [32, 0, 0, 0], &two),
    );
}

fn ring_seeds(o: &Out) {
    let t = "ring";
    // Capacity 4096; ops: 0 = send (side bit 7), 28 = try_recv, 20 = send
    // with timeout (several frames), 60 = recv_timeout, 70 = control word
    // nudge, 90 = data word, 110 = header word.
    o.put(t, "ping-pong", &[6, 0, 5, 0, 28 | 128, 128, 4, 0, 28]);
    o.put(t, "multi-frame", &[6, 20, 0x10, 0x0b, 28 | 128, 60 | 128]);
    o.put(
        t,
        "wrap",
        &[
            0,
            0,
            7,
            0,
            28 | 128,
            0,
            7,
            0,
            28 | 128,
            0,
            7,
            0,
            28 | 128,
            0,
            7,
            0,
            28 | 128,
        ],
    );
    o.put(t, "nudge-tail", &[6, 0, 5, 0, 70, 0, 8, 0, 28 | 128]);
    o.put(
        t,
        "bad-header",
        &[6, 0, 5, 0, 90, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 28 | 128],
    );
    o.put(t, "doorbell", &[6, 66 | 128, 0, 5, 0, 28 | 128]);
}

fn registry_seeds(o: &Out, scratch: &Path) {
    let t = "registry";
    let home = scratch.join("home");
    let reg = Registry::open(&home).expect("open registry");
    let entry = |name: &str, endpoints: usize| Entry {
        name: name.into(),
        pid: std::process::id(),
        start_time: metabridge_shm::ProcessIdentity::current().start_time,
        registered_at: 1_700_000_000,
        control_socket: format!("/dev/shm/metabridge-0/{name}.sock"),
        tcp: "127.0.0.1:40000".into(),
        endpoints: (0..endpoints).map(|i| format!("endpoint_{i}")).collect(),
        token_required: endpoints % 2 == 1,
        token: None,
    };
    let file = home.join("registry");
    // The table holds one slot per service: keep only the used prefix (the
    // target's registry grows a short file with zeros, as a fresh one).
    let trimmed = |bytes: Vec<u8>| {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        bytes[..end.div_ceil(8) * 8].to_vec()
    };
    reg.register(&entry("demo", 3)).expect("register");
    o.put(
        t,
        "one-entry",
        &trimmed(std::fs::read(&file).expect("read")),
    );
    reg.register(&entry("x", 0)).expect("register");
    reg.register(&entry("many-endpoints", 40))
        .expect("register");
    o.put(
        t,
        "three-entries",
        &trimmed(std::fs::read(&file).expect("read")),
    );
    reg.unregister("x", std::process::id()).expect("unregister");
    o.put(
        t,
        "with-hole",
        &trimmed(std::fs::read(&file).expect("read")),
    );
    o.put(t, "empty", b"");
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let scratch = metabridge_fuzz::scratch_dir();
    let o = Out { dir };
    envelope_seeds(&o);
    tcp_seeds(&o);
    segment_seeds(&o, scratch);
    ring_seeds(&o);
    registry_seeds(&o, scratch);
    let _ = std::fs::remove_dir_all(scratch);
    println!("seeds written to {}", o.dir.display());
}
