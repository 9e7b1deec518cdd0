//! Values and errors end to end, with real service processes: one
//! instance per constructor value whatever its encoding, bytes as
//! MessagePack bin, errors that name what the user wrote.

mod common;

use common::TestEnv;
use metabridge::rmpv::Value;
use metabridge::{Bin, CallArgs, Error, Service};
use std::process::Stdio;

fn remote(r: metabridge::Result<impl std::fmt::Debug>) -> (String, String) {
    match r {
        Err(Error::Remote { kind, message }) => (kind, message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Starts `values_service serve <name>` and waits until it is registered.
fn start_values(env: &mut TestEnv, name: &str, envs: &[(&str, &str)]) -> u32 {
    let mut cmd = env.command(common::VALUES_SERVICE);
    cmd.args(["serve", name]).stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let pid = env.spawn(&mut cmd);
    env.wait_registered(name, pid);
    pid
}

/// Runs `values_service <args>` (a client mode of the fixture) with `envs`,
/// and returns what it printed; it must succeed.
fn run_values_client(env: &TestEnv, args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut cmd = env.command(common::VALUES_SERVICE);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An `Option<T>` parameter is `None` when the caller leaves it out, by
/// position or by keyword; a required one is still required.
#[test]
fn an_option_parameter_may_be_left_out() {
    let mut env = TestEnv::new("optional");
    env.start_service("svc", &[]);
    let c = env.connect("svc").arg("p").arg(1).open().unwrap();
    let describe = |args: CallArgs| c.call_with::<String>("describe", &args);
    let none = "side 5, max None";
    assert_eq!(c.call::<String>("describe", (5,)).unwrap(), none);
    assert_eq!(c.call::<String>("describe", (5, ())).unwrap(), none, "nil");
    assert_eq!(
        c.call::<String>("describe", (5, 9)).unwrap(),
        "side 5, max Some(9)"
    );
    let kw = |args: &[(&str, u32)]| {
        args.iter()
            .fold(CallArgs::new(), |a, (k, v)| a.kwarg(k, v).unwrap())
    };
    assert_eq!(describe(kw(&[("side", 5)])).unwrap(), none);
    assert_eq!(
        describe(kw(&[("max_side", 9), ("side", 5)])).unwrap(),
        "side 5, max Some(9)"
    );
    let (kind, msg) = remote(c.call::<String>("describe", ()));
    assert_eq!(kind, "TypeError");
    assert_eq!(msg, "describe() missing required argument 'side'");
    let (_, msg) = remote(describe(kw(&[("max_side", 9)])));
    assert_eq!(msg, "describe() missing required argument 'side'");
    let (_, msg) = remote(c.call::<String>("describe", (5, 9, 1)));
    assert_eq!(
        msg,
        "describe() takes 2 positional arguments but 3 were given"
    );
}

#[test]
fn one_instance_per_constructor_value_whether_sent_by_keyword_or_position() {
    // The existing fixture: `new(prefix: String, scale: i64)`.
    let mut env = TestEnv::new("ctorvalue");
    env.start_service("svc", &[]);
    let id = |c: metabridge::Connect| c.open().unwrap().call::<u64>("instance_id", ()).unwrap();
    // As the typed client sends them (by keyword) ...
    let by_name = id(env.connect("svc").kwarg("prefix", "a").kwarg("scale", 2));
    // ... as Python and the dynamic client send them (by position) ...
    let positional = id(env.connect("svc").arg("a").arg(2));
    // ... mixed, keywords in the other order, and 2 as a wide integer.
    let mixed = id(env.connect("svc").arg("a").kwarg("scale", 2));
    let reordered = id(env.connect("svc").kwarg("scale", 2).kwarg("prefix", "a"));
    let wide = id(env
        .connect("svc")
        .arg("a")
        .arg(metabridge::rmpv::Value::from(2u64)));
    assert_eq!(positional, by_name, "one value, one instance");
    assert_eq!(mixed, by_name);
    assert_eq!(reordered, by_name);
    assert_eq!(wide, by_name);
    assert_ne!(id(env.connect("svc").arg("a").arg(3)), by_name);
}

#[test]
fn state_is_shared_by_every_encoding_of_one_constructor_value() {
    let mut env = TestEnv::new("ctorstate");
    start_values(&mut env, "values", &[]);
    let clients = [
        env.connect("values")
            .kwarg("prefix", "p")
            .kwarg("fail", false),
        env.connect("values").arg("p").arg(false),
        env.connect("values").kwarg("fail", false).arg("p"),
    ];
    let mut counts = Vec::new();
    for c in clients {
        let c = c.open().unwrap();
        counts.push(c.call::<u64>("bump", ()).unwrap());
        counts.push(c.call::<u64>("bump", ()).unwrap());
    }
    assert_eq!(counts, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn the_instance_lru_evicts_instances_not_encodings() {
    let mut env = TestEnv::new("ctorlru");
    start_values(&mut env, "values", &[("VALUES_CACHE", "2")]);
    let id = |prefix: &str, by_name: bool| {
        let c = if by_name {
            env.connect("values")
                .kwarg("prefix", prefix)
                .kwarg("fail", false)
        } else {
            env.connect("values").arg(prefix).arg(false)
        };
        c.open().unwrap().call::<u64>("instance_id", ()).unwrap()
    };
    let a = id("a", true);
    assert_eq!(id("a", false), a);
    let b = id("b", false);
    assert_eq!(id("b", true), b);
    assert_eq!(id("a", true), a); // a is the most recent
    let c = id("c", true); // capacity 2: evicts b, whatever its encodings
    assert_ne!(c, a);
    assert_eq!(id("a", false), a);
    assert_ne!(id("b", true), b, "b was evicted and rebuilt");
}

#[test]
fn bytes_travel_as_bin_both_ways() {
    let mut env = TestEnv::new("bin");
    start_values(&mut env, "values", &[]);
    let c = env.connect("values").arg("b").arg(false).open().unwrap();
    // The result arrives as a MessagePack bin (rmpv's Binary), not an array.
    let echoed: Value = c.call("blob_echo", (Bin(vec![1u8, 2, 3]),)).unwrap();
    assert_eq!(echoed, Value::Binary(vec![1, 2, 3]));
    let made: Value = c.call("blob_make", (4, 9)).unwrap();
    assert_eq!(made, Value::Binary(vec![9; 4]));
    // bytes::Bytes and Box<[u8]> parameters and results, async too.
    assert_eq!(
        c.call::<u64>("blob_sum", (Bin(vec![1u8, 2, 3]),)).unwrap(),
        6
    );
    let reversed: Value = c.call("blob_reverse", (Bin(vec![1u8, 2, 3]),)).unwrap();
    assert_eq!(reversed, Value::Binary(vec![3, 2, 1]));
    // Older clients that send an array of integers are still understood.
    assert_eq!(c.call::<usize>("blob_len", (vec![1u8, 2, 3],)).unwrap(), 3);
    // A bin is half the size of the array of the same bytes 128-255.
    let high = vec![200u8; 1000];
    let (mut bin, mut array) = (Vec::new(), Vec::new());
    metabridge::IntoArgs::encode_args(&(Bin(&high),), &mut bin).unwrap();
    metabridge::IntoArgs::encode_args(&(&high,), &mut array).unwrap();
    assert_eq!(
        bin.len(),
        1 + 3 + 1000,
        "bin 16: a 3-byte header, then the bytes"
    );
    assert_eq!(
        array.len(),
        1 + 3 + 2000,
        "an array: 2 bytes per integer over 127"
    );
    // Something that is not bytes is a TypeError that says what was expected.
    let (kind, msg) = remote(c.call::<usize>("blob_len", (12,)));
    assert_eq!(kind, "TypeError");
    assert!(msg.contains("'data'") && msg.contains("bytes"), "{msg}");
}

#[test]
fn fifty_megabytes_round_trip_over_shared_memory() {
    let mut env = TestEnv::new("bin50");
    start_values(&mut env, "values", &[]);
    let c = env.connect("values").arg("big").arg(false).open().unwrap();
    assert_eq!(c.transport_name(), "shm");
    let len = 50 << 20;
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let back: Bin<Vec<u8>> = c.call("blob_echo", (Bin(&data),)).unwrap();
    assert!(back.0 == data, "50 MB came back intact");
    let made: Bin<Vec<u8>> = c.call("blob_make", (len, 7)).unwrap();
    assert_eq!(made.0.len(), len);
    assert!(made.0.iter().all(|&b| b == 7));
}

#[test]
fn the_typed_client_sends_and_receives_bytes_and_builds_its_instance_at_connect() {
    let mut env = TestEnv::new("typed");
    start_values(&mut env, "values", &[]);
    let run = |fail: &str| run_values_client(&env, &["connect", "t", fail], &[]);
    assert_eq!(run("false"), "connected: bump 1\nbytes: [3, 2, 1] sum 6\n");
    // A constructor that panics fails `connect`, clearly.
    let out = run("true");
    assert!(
        out.starts_with("connect failed: remote error Panic: "),
        "{out}"
    );
    assert!(
        out.contains("the constructor of service 'values' panicked")
            && out.contains("constructor refused on purpose (t)"),
        "{out}"
    );
}

/// An endpoint's own error type (`Serialize + Deserialize`) comes back to
/// the typed client as that type, variants and fields intact, on both
/// transports and from sync and async endpoints; an error type that is
/// not data stays a remote error; the wire keeps `type` and `message`.
#[test]
fn typed_errors_round_trip_on_both_transports() {
    let mut env = TestEnv::new("typed-errors");
    start_values(&mut env, "values", &[]);
    for transport in ["shm", "tcp"] {
        let out = run_values_client(
            &env,
            &["typed-errors"],
            &[("METABRIDGE_TRANSPORT", transport)],
        );
        assert_eq!(
            out,
            "ok: Ok(100)\n\
             too large: 5000 over 4096\n\
             empty\n\
             async: TooLarge { side: 5000, max: 4096 }\n\
             not data: ParseIntError\n\
             through ?: remote error ThumbError: an empty image\n",
            "over {transport}"
        );
    }
    // The dynamic client: the same error as data, or as type and message.
    #[derive(Debug, PartialEq, serde::Deserialize)]
    enum Mirror {
        TooLarge { side: u32, max: u32 },
        Empty,
    }
    let c = env.connect("values").arg("t").arg(false).open().unwrap();
    match c.call_fallible::<u32, Mirror>("thumb", (5000,)) {
        Err(metabridge::Failure::Endpoint(e)) => {
            assert_eq!(
                e,
                Mirror::TooLarge {
                    side: 5000,
                    max: 4096
                }
            )
        }
        other => panic!("{other:?}"),
    }
    let (kind, msg) = remote(c.call::<u32>("thumb", (0,)));
    assert_eq!(
        (kind.as_str(), msg.as_str()),
        ("ThumbError", "an empty image")
    );
}

/// The typed client's builder takes the connection's options, then
/// connects as `connect` does.
#[test]
fn the_typed_client_builder_applies_its_options() {
    let mut env = TestEnv::new("typed-builder");
    start_values(&mut env, "values", &[]);
    let out = run_values_client(&env, &["builder"], &[]);
    assert_eq!(out, "b over tcp\n");
}

#[test]
fn a_panicking_constructor_runs_once_per_arguments_not_once_per_call() {
    let mut env = TestEnv::new("ctorpanic");
    start_values(&mut env, "values", &[]);
    let bad = env.connect("values").arg("x").arg(true).open().unwrap();
    let first = remote(bad.call::<u64>("bump", ()));
    assert_eq!(first.0, "Panic");
    assert!(
        first.1.contains("constructor refused on purpose (x)"),
        "{first:?}"
    );
    // Every later call, by any encoding, gets the same error ...
    for _ in 0..3 {
        assert_eq!(remote(bad.call::<u64>("bump", ())), first);
    }
    let by_name = env
        .connect("values")
        .kwarg("prefix", "x")
        .kwarg("fail", true)
        .open()
        .unwrap();
    assert_eq!(remote(by_name.call::<u64>("instance_id", ())), first);
    // ... without running the constructor again.
    let good = env.connect("values").arg("ok").arg(false).open().unwrap();
    assert_eq!(good.call::<u64>("failed_constructions", ()).unwrap(), 1);
    // Other arguments are other constructions.
    let other = env.connect("values").arg("y").arg(true).open().unwrap();
    assert_eq!(remote(other.call::<u64>("bump", ())).0, "Panic");
    assert_eq!(good.call::<u64>("failed_constructions", ()).unwrap(), 2);
}

#[test]
fn errors_name_the_unknown_keyword_and_the_types_as_written() {
    let mut env = TestEnv::new("errnames");
    start_values(&mut env, "values", &[]);
    let c = env.connect("values").arg("e").arg(false).open().unwrap();
    // A misspelt keyword is named, not reported as the parameter it missed.
    let args = CallArgs::new()
        .kwarg("first", 1)
        .unwrap()
        .kwarg("secnd", 2)
        .unwrap();
    let (kind, msg) = remote(c.call_with::<i64>("add", &args));
    assert_eq!(kind, "TypeError");
    assert_eq!(msg, "add() got an unexpected keyword argument 'secnd'");
    // Also in constructor arguments.
    let typo = env
        .connect("values")
        .kwarg("prefx", "e")
        .kwarg("fail", false)
        .open()
        .unwrap();
    let (kind, msg) = remote(typo.call::<u64>("bump", ()));
    assert_eq!(kind, "TypeError");
    assert_eq!(msg, "__init__() got an unexpected keyword argument 'prefx'");
    // Type names as the user writes them.
    let (kind, msg) = remote(c.call::<usize>("count", ("not a list",)));
    assert_eq!(kind, "TypeError");
    assert!(msg.contains("must be a Vec<String>, got a string"), "{msg}");
    assert!(!msg.contains("alloc::"), "{msg}");
}

#[test]
fn invalid_service_names_are_rejected_with_a_typed_error() {
    for bad in [
        "",
        "a/b",
        "nul\0inside",
        "..",
        " padded",
        &"x".repeat(65),
        // Invisible or direction-changing: would look like another name.
        "pay\u{202E}knl.exe",
        "demo\u{200B}-service",
        "\u{FEFF}demo-service",
    ] {
        match Service::<()>::try_new(bad) {
            Err(Error::InvalidServiceName { name, problem }) => {
                assert_eq!(name, bad);
                assert!(problem.contains("1 to 64 bytes"), "{problem}");
            }
            Err(e) => panic!("{bad:?}: unexpected {e}"),
            Ok(_) => panic!("{bad:?} was accepted"),
        }
        assert!(Service::<()>::new(bad).validate_name().is_err());
        // `serve` and `run` refuse it before starting anything.
        assert!(matches!(
            metabridge::serve(Service::<()>::new(bad)),
            Err(Error::InvalidServiceName { .. })
        ));
        assert!(matches!(
            metabridge::run(Service::<()>::new(bad)),
            Err(Error::InvalidServiceName { .. })
        ));
    }
    assert!(Service::<()>::try_new("demo-service").is_ok());
    assert!(Service::<()>::try_new(&"x".repeat(64)).is_ok());
}

/// The original protocol from Python: positional constructor arguments
/// share the instance of the typed client's keyword ones, and bytes are
/// Python `bytes` both ways.
#[test]
fn python_clients_share_instances_and_get_bytes() {
    let python_has_msgpack = std::process::Command::new("python3")
        .args(["-c", "import msgpack"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        python_has_msgpack,
        "this test needs python3 with the msgpack package (scripts/test-all.sh runs it with its virtualenv first on PATH; or: source scripts/python-env.sh)"
    );
    const SCRIPT: &str = r#"
import socket, struct, sys, msgpack
host, port = sys.argv[1].rsplit(":", 1)
token = sys.argv[2]
def recv(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        assert chunk, "connection closed"
        b += chunk
    return b
def call(endpoint, args, ctor_args):
    s = socket.create_connection((host, int(port)))
    req = {"type": "call", "endpoint": endpoint, "args": args, "kwargs": {},
           "ctor_args": ctor_args, "ctor_kwargs": {}, "auth": token}
    body = msgpack.packb(req, use_bin_type=True)
    s.sendall(struct.pack(">I", len(body)) + body)
    n = struct.unpack(">I", recv(s, 4))[0]
    resp = msgpack.unpackb(recv(s, n), raw=False)
    s.close()
    assert resp["status"] == "ok", resp
    return resp["result"]
print(call("bump", [], ["py", False]))
echoed = call("blob_echo", [b"\x00\xffpy"], ["py", False])
print(type(echoed).__name__, echoed.hex())
print(call("blob_len", [[1, 2, 3]], ["py", False]))
"#;
    let mut env = TestEnv::new("pyvalues");
    start_values(&mut env, "values", &[]);
    let entry = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("values")
        .unwrap();
    // The typed client's way first: by keyword.
    let rust = env
        .connect("values")
        .kwarg("prefix", "py")
        .kwarg("fail", false)
        .open()
        .unwrap();
    assert_eq!(rust.call::<u64>("bump", ()).unwrap(), 1);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &entry.tcp,
            entry.token.as_deref().unwrap_or(""),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2\nbytes 00ff7079\n3\n",
        "Python's positional arguments reached the same instance; bytes came back as bytes"
    );
    assert_eq!(rust.call::<u64>("bump", ()).unwrap(), 3);
}
