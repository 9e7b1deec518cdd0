//! Calls end to end, with real service processes and real clients: constructor
//! arguments, keyword arguments, remote errors, many threads on one client,
//! large arguments, and the same answers over shared memory and TCP (and
//! the fall back to TCP when the segments cannot be mapped).
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure.

mod common;

use common::TestEnv;
use metabridge::{CallArgs, Error, TransportKind};
use std::process::Stdio;

fn remote_kind(r: metabridge::Result<impl std::fmt::Debug>) -> (String, String) {
    match r {
        Err(Error::Remote { kind, message }) => (kind, message),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn seed_client_example_prints_the_expected_output_and_leaves_nothing() {
    let env = TestEnv::new("seed");
    let out = env
        .command(common::demo_example("client"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let expected = "Conectando ao serviço 'demo-service'...\n\
        Resposta do endpoint 'teste()': Mensagem da home do serviço!\n\
        Resposta do endpoint 'get('mundo!')': Olá, mundo!\n\
        Resposta do endpoint 'soma(10, 20)': A soma é: 30\n\
        Cliente finalizado. A conexão foi fechada.\n";
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    assert_eq!(
        env.leftovers(),
        Vec::<String>::new(),
        "segments or sockets left behind"
    );
    let reg = metabridge::registry::Registry::open(&env.home).unwrap();
    assert!(reg.list().is_empty(), "the daemon unregistered");
}

#[test]
fn constructor_arguments_positional_and_named_and_calls_with_kwargs() {
    let mut env = TestEnv::new("ctor");
    env.start_service("svc", &[]);
    let positional = env.connect("svc").arg("a:").arg(3).open().unwrap();
    assert_eq!(positional.transport_name(), "shm");
    assert_eq!(positional.call::<String>("echo", ("x",)).unwrap(), "a:x");
    assert_eq!(positional.call::<i64>("scaled", (5,)).unwrap(), 15);
    let named = env
        .connect("svc")
        .kwarg("scale", 2)
        .kwarg("prefix", "k:")
        .open()
        .unwrap();
    assert_eq!(named.call::<i64>("scaled", (5,)).unwrap(), 10);
    let kw = CallArgs::new().kwarg("text", "y").unwrap();
    assert_eq!(named.call_with::<String>("echo", &kw).unwrap(), "k:y");
    let mixed = env
        .connect("svc")
        .arg("m:")
        .kwarg("scale", 7)
        .open()
        .unwrap();
    assert_eq!(mixed.call::<i64>("scaled", (1,)).unwrap(), 7);
    // Under its endpoint name and its own name.
    assert_eq!(
        mixed.call::<String>("renamed", ()).unwrap(),
        "renamed and original"
    );
    assert_eq!(
        mixed.call::<String>("original", ()).unwrap(),
        "renamed and original"
    );
    let mut names = mixed.endpoints().unwrap();
    names.sort();
    assert!(names.contains(&"renamed".to_string()) && names.contains(&"original".to_string()));
    // A bad constructor argument is a TypeError, not a crash.
    let bad = env.connect("svc").arg(1).arg("x").open().unwrap();
    let (kind, msg) = remote_kind(bad.call::<String>("echo", ("x",)));
    assert_eq!(kind, "TypeError");
    assert!(msg.contains("prefix"), "{msg}");
}

#[test]
fn errors_panics_wrong_types_and_unknown_endpoints_are_remote_errors() {
    let mut env = TestEnv::new("errors");
    env.start_service("svc", &[]);
    let c = env.connect("svc").arg("p").arg(1).open().unwrap();
    let (kind, msg) = remote_kind(c.call::<String>("boom", ()));
    assert_eq!(kind, "Panic");
    assert!(msg.contains("boom on purpose"), "{msg}");
    let (kind, msg) = remote_kind(c.call::<i64>("check", (-4,)));
    assert_eq!(
        (kind.as_str(), msg.as_str()),
        ("Refused", "refused: -4 is negative")
    );
    assert_eq!(c.call::<i64>("check", (4,)).unwrap(), 4);
    let (kind, msg) = remote_kind(c.call::<i64>("scaled", ("not a number",)));
    assert_eq!(kind, "TypeError");
    assert!(msg.contains("scaled") && msg.contains("'x'"), "{msg}");
    let (kind, msg) = remote_kind(c.call::<i64>("scaled", (1, 2)));
    assert_eq!(kind, "TypeError");
    assert!(msg.contains("positional"), "{msg}");
    let (kind, msg) = remote_kind(c.call::<i64>("nope", ()));
    assert_eq!(
        (kind.as_str(), msg.as_str()),
        ("NotFound", "Endpoint 'nope' not found")
    );
    // The service kept serving through all of it.
    assert_eq!(c.call::<String>("echo", ("ok",)).unwrap(), "pok");
    assert_eq!(c.call::<String>("later", (5,)).unwrap(), "pafter 5 ms");
}

#[test]
fn sixteen_threads_share_one_client() {
    let mut env = TestEnv::new("threads");
    env.start_service("svc", &[]);
    let client = env.connect("svc").arg("t").arg(1).open().unwrap();
    std::thread::scope(|s| {
        for t in 0..16 {
            let client = client.clone();
            s.spawn(move || {
                for i in 0..300 {
                    let text = format!("{t}-{i}");
                    assert_eq!(
                        client.call::<String>("echo", (&text,)).unwrap(),
                        format!("t{text}")
                    );
                }
            });
        }
    });
    assert!(client.open_channels() <= 16, "at most 16 channels");
    assert!(client.open_channels() >= 1);
    client.close();
    assert!(
        client.call::<String>("echo", ("x",)).is_err(),
        "a closed client refuses calls"
    );
}

#[test]
fn tcp_transport_gives_the_same_answers() {
    let mut env = TestEnv::new("tcp");
    env.start_service("svc", &[]);
    let c = env
        .connect("svc")
        .arg("t:")
        .arg(2)
        .transport(TransportKind::Tcp)
        .open()
        .unwrap();
    assert_eq!(c.transport_name(), "tcp");
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "t:x");
    assert_eq!(c.call::<i64>("scaled", (21,)).unwrap(), 42);
    assert_eq!(c.call::<String>("later", (1,)).unwrap(), "t:after 1 ms");
    assert_eq!(remote_kind(c.call::<String>("boom", ())).0, "Panic");
    // By address, as a remote client would (given the token the service
    // published to its owner).
    let entry = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("svc")
        .unwrap();
    let remote = metabridge::connect("svc")
        .at(&entry.tcp)
        .token(entry.token.as_deref().unwrap())
        .arg("r:")
        .arg(1)
        .open()
        .unwrap();
    assert_eq!(remote.call::<String>("echo", ("x",)).unwrap(), "r:x");
}

#[test]
fn large_arguments_stream_through_the_rings() {
    let mut env = TestEnv::new("large");
    env.start_service("svc", &[]);
    let c = env.connect("svc").arg("l").arg(1).open().unwrap();
    let blob = serde_bytes::ByteBuf::from(vec![7u8; 8 << 20]);
    assert_eq!(c.call::<usize>("blob", (&blob,)).unwrap(), 8 << 20);
}

#[test]
fn a_client_that_cannot_map_the_segments_falls_back_to_tcp() {
    let mut env = TestEnv::new("fallback");
    env.start_service("svc", &[]);
    // Take the service's control socket away, as a client that cannot
    // reach it would see it (root ignores file modes, so remove it).
    let socket = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("svc")
        .unwrap()
        .control_socket;
    std::fs::remove_file(socket).unwrap();
    let c = env.connect("svc").arg("f:").arg(1).open().unwrap();
    assert_eq!(c.transport_name(), "tcp");
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "f:x");
    // Forcing shared memory says why it cannot.
    assert!(env
        .connect("svc")
        .transport(TransportKind::Shm)
        .open()
        .is_err());
}

#[test]
fn clients_and_handles_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<metabridge::Client>();
    assert_send_sync::<metabridge::DaemonHandle>();
    assert_send_sync::<metabridge::Error>();
}
