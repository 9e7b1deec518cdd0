//! Wire compatibility with the original Python MetaBridge, both ways, over
//! real TCP; and the TCP transport's defences (oversized frames, malformed
//! bodies, tokens). Needs `python3` with PyPI's `msgpack` (`scripts/test-all.sh` puts
//! its virtualenv, which has it, first on PATH); a missing one fails the
//! test with that message.

mod common;

use common::{rss_kib, tcp_addr, TestEnv};
use metabridge::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn python_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

fn require_python_msgpack() {
    let ok = Command::new("python3")
        .args(["-c", "import msgpack"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "these tests need python3 with the msgpack package (scripts/test-all.sh runs them with its virtualenv first on PATH; or: source scripts/python-env.sh)"
    );
}

#[test]
fn an_original_protocol_python_client_calls_a_rust_service() {
    require_python_msgpack();
    let mut env = TestEnv::new("pyclient");
    // Exposed on purpose without a token, as the original's services are.
    env.start_service("svc", &[("FIXTURE_EXPOSE", "1")]);
    let out = Command::new("python3")
        .arg(python_script("interop_client.py"))
        .arg(tcp_addr(&env, "svc"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "OK",
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct PyServer(std::process::Child);
impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_rust_client_calls_an_original_protocol_python_service() {
    require_python_msgpack();
    let mut child = Command::new("python3")
        .arg(python_script("original_server.py"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = PyServer(child);
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .expect("the server prints its port");
    let addr = format!("127.0.0.1:{port}");
    let client = metabridge::connect("demo-service")
        .at(&addr)
        .kwarg("argumento", "Olá,")
        .open()
        .unwrap();
    assert_eq!(client.transport_name(), "tcp");
    assert_eq!(
        client.call::<String>("teste", ()).unwrap(),
        "Mensagem da home do serviço!"
    );
    assert_eq!(
        client.call::<String>("get", ("mundo!",)).unwrap(),
        "Olá, mundo!"
    );
    assert_eq!(
        client.call::<String>("soma", (10, 20)).unwrap(),
        "A soma é: 30"
    );
    assert_eq!(
        client.endpoints().unwrap(),
        vec!["fail", "get", "home", "soma", "teste"]
    );
    let kw = metabridge::CallArgs::new()
        .kwarg("outro_argumento", "kw")
        .unwrap();
    assert_eq!(client.call_with::<String>("get", &kw).unwrap(), "Olá, kw");
    match client.call::<String>("fail", ()) {
        Err(Error::Remote { kind, message }) => assert_eq!(
            (kind.as_str(), message.as_str()),
            ("ValueError", "falhou de propósito")
        ),
        other => panic!("{other:?}"),
    }
    match client.call::<String>("nope", ()) {
        Err(Error::Remote { kind, .. }) => assert_eq!(kind, "NotFound"),
        other => panic!("{other:?}"),
    }
    // Positional constructor arguments reach the original too.
    let positional = metabridge::connect("demo-service")
        .at(&addr)
        .arg("Oi,")
        .open()
        .unwrap();
    assert_eq!(positional.call::<String>("get", ("tu",)).unwrap(), "Oi, tu");
}

fn raw_frame(stream: &mut TcpStream, body: &[u8]) -> Vec<u8> {
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .unwrap();
    stream.write_all(body).unwrap();
    read_frame(stream)
}

fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).unwrap();
    body
}

fn error_kind(body: &[u8]) -> String {
    match metabridge::envelope::decode_result::<metabridge::rmpv::Value>(body) {
        Err(Error::Remote { kind, .. }) => kind,
        other => panic!("expected an error response, got {other:?}"),
    }
}

#[test]
fn a_4_gib_declared_length_neither_allocates_nor_stalls_other_clients() {
    let mut env = TestEnv::new("huge");
    let pid = env.start_service("svc", &[("FIXTURE_EXPOSE", "1")]);
    let addr = tcp_addr(&env, "svc");
    let rss_before = rss_kib(pid);
    let mut liar = TcpStream::connect(&addr).unwrap();
    liar.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    liar.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(error_kind(&read_frame(&mut liar)), "ProtocolError");
    let mut rest = Vec::new();
    let _ = liar.read_to_end(&mut rest); // the server closed the connection
                                         // Meanwhile and after, others are served.
    let client = env
        .connect("svc")
        .arg("a")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    assert_eq!(client.call::<String>("echo", ("b",)).unwrap(), "ab");
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn malformed_bodies_get_protocol_errors_and_the_connection_lives_on() {
    let mut env = TestEnv::new("malformed");
    env.start_service("svc", &[("FIXTURE_EXPOSE", "1")]);
    let mut s = TcpStream::connect(tcp_addr(&env, "svc")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for body in [
        &b"\xc1"[..],
        b"\x91\x01",
        b"\x81\xa4type\xa5dance",
        b"\x82\xa4type\xa4call\xa4args\x01",
        b"",
    ] {
        assert_eq!(
            error_kind(&raw_frame(&mut s, body)),
            "ProtocolError",
            "{body:?}"
        );
    }
    let mut ok = Vec::new();
    let ctor = metabridge::envelope::encode_ctor(&[0x92, 0xa1, b'p', 1], &[0x80]);
    metabridge::envelope::encode_call(&mut ok, "echo", &[0x91, 0xa1, b'x'], &[0x80], &ctor, None);
    let answer = raw_frame(&mut s, &ok);
    assert_eq!(
        metabridge::envelope::decode_result::<String>(&answer).unwrap(),
        "px"
    );
}

#[test]
fn a_token_protected_service_refuses_clients_without_it() {
    require_python_msgpack();
    let mut env = TestEnv::new("token");
    env.start_service("svc", &[("METABRIDGE_TOKEN", "s3cret")]);
    for kind in [
        metabridge::TransportKind::Shm,
        metabridge::TransportKind::Tcp,
    ] {
        let anonymous = env
            .connect("svc")
            .arg("a")
            .arg(1)
            .transport(kind)
            .open()
            .unwrap();
        match anonymous.call::<String>("echo", ("x",)) {
            Err(Error::Remote { kind, .. }) => assert_eq!(kind, "Unauthorized"),
            other => panic!("{other:?}"),
        }
        let wrong = env
            .connect("svc")
            .arg("a")
            .arg(1)
            .transport(kind)
            .token("s3creT")
            .open()
            .unwrap();
        assert!(matches!(
            wrong.call::<String>("echo", ("x",)),
            Err(Error::Remote { .. })
        ));
        let good = env
            .connect("svc")
            .arg("a")
            .arg(1)
            .transport(kind)
            .token("s3cret")
            .open()
            .unwrap();
        assert_eq!(good.call::<String>("echo", ("x",)).unwrap(), "ax");
    }
    // An original-protocol client satisfies it with an `auth` key.
    let out = Command::new("python3")
        .arg(python_script("interop_client.py"))
        .arg(tcp_addr(&env, "svc"))
        .arg("s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Loopback TCP is open to every user of the machine. A service on the
/// default address therefore makes up a token, published only in this
/// user's registry: this user's clients use it without being told, and
/// another user (uid 65534 here), who cannot read the registry, is refused
/// every endpoint, `list_endpoints` included.
#[test]
fn a_default_service_refuses_tcp_callers_without_its_published_token() {
    require_python_msgpack();
    let mut env = TestEnv::new("autotoken");
    env.start_service("svc", &[]);
    let entry = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("svc")
        .unwrap();
    assert!(entry.token_required);
    let token = entry
        .token
        .clone()
        .expect("the token is published to the owner");
    assert!(token.len() >= 32, "{token}");
    // Our own client, forced onto TCP, finds the token by itself.
    let ours = env
        .connect("svc")
        .arg("a")
        .arg(1)
        .transport(metabridge::TransportKind::Tcp)
        .open()
        .unwrap();
    assert_eq!(ours.call::<String>("echo", ("x",)).unwrap(), "ax");
    // A raw original-protocol request without `auth`: refused.
    let mut s = TcpStream::connect(&entry.tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut list = Vec::new();
    metabridge::envelope::encode_list(
        &mut list,
        &metabridge::envelope::encode_ctor(&[0x90], &[0x80]),
        None,
    );
    assert_eq!(error_kind(&raw_frame(&mut s, &list)), "Unauthorized");
    // Another user (this test binary again, as uid 65534) speaking the
    // original protocol: refused, endpoint list included.
    let stranger = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stranger_probe",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MB_STRANGER_ADDR", &entry.tcp)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stranger.stdout);
    assert!(
        stranger.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    assert!(
        text.contains("STRANGER list_endpoints=Unauthorized echo=Unauthorized"),
        "{text}"
    );
    // Given the token, the original protocol's client is served.
    let friend = Command::new("python3")
        .arg(python_script("interop_client.py"))
        .arg(&entry.tcp)
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        friend.status.success(),
        "{}{}",
        String::from_utf8_lossy(&friend.stdout),
        String::from_utf8_lossy(&friend.stderr)
    );
}

/// The other user's side of the test above: does nothing unless that test
/// started this binary with `MB_STRANGER_ADDR` (and another uid).
#[test]
fn stranger_probe() {
    let Ok(addr) = std::env::var("MB_STRANGER_ADDR") else {
        return;
    };
    assert_eq!(nix::unistd::geteuid().as_raw(), 65534);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let ctor = metabridge::envelope::encode_ctor(&[0x92, 0xa1, b'p', 1], &[0x80]);
    let mut list = Vec::new();
    metabridge::envelope::encode_list(&mut list, &ctor, None);
    let listed = error_kind(&raw_frame(&mut s, &list));
    let mut call = Vec::new();
    metabridge::envelope::encode_call(&mut call, "echo", &[0x91, 0xa1, b'x'], &[0x80], &ctor, None);
    let called = error_kind(&raw_frame(&mut s, &call));
    println!("STRANGER list_endpoints={listed} echo={called}");
}

/// The documented Python client (examples/python_client.py) finds a
/// default service's address and token in the registry and calls it over
/// TCP with nothing but PyPI's msgpack.
#[test]
fn the_python_example_finds_the_service_through_the_registry() {
    require_python_msgpack();
    let mut env = TestEnv::new("pyexample");
    env.start_service("svc", &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["svc", "echo", r#"["olá"]"#, r#"["p:", 1]"#])
        .env("METABRIDGE_HOME", &env.home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"p:olá\"");
    let missing = Command::new("python3")
        .arg(&script)
        .args(["svc", "nope"])
        .env("METABRIDGE_HOME", &env.home)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
}
