//! The runtime end to end: real service processes, real clients, through
//! the registry, over shared memory and TCP.

mod common;

use common::{sigkill, sigterm, TestEnv};
use metabridge::{CallArgs, Error, TransportKind};
use std::process::Stdio;
use std::time::{Duration, Instant};

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
fn unrelated_processes_find_each_other_through_the_registry() {
    let mut env = TestEnv::new("unrelated");
    let service_pid = env.start_service("svc", &[]);
    // A second, separate process (not the service's parent or child) calls it.
    let out = env
        .command(common::TEST_SERVICE)
        .args(["call", "svc", "echo", "olá"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"p:olá\" via shm"
    );
    let out = env
        .command(common::TEST_SERVICE)
        .args(["call", "svc", "pid"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{service_pid} via shm")
    );
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
fn instances_are_cached_per_constructor_arguments_and_evicted_past_capacity() {
    let mut env = TestEnv::new("lru");
    env.start_service("svc", &[("FIXTURE_CACHE", "2")]);
    let id = |prefix: &str| {
        env.connect("svc")
            .arg(prefix)
            .arg(1)
            .open()
            .unwrap()
            .call::<u64>("instance_id", ())
            .unwrap()
    };
    let a = id("a");
    assert_eq!(id("a"), a, "equal constructor arguments reuse the instance");
    let b = id("b");
    assert_ne!(a, b);
    assert_eq!(id("a"), a);
    let c = id("c"); // capacity 2: evicts b, the least recently used
    assert_ne!(c, a);
    assert_eq!(id("a"), a);
    assert_ne!(id("b"), b, "b was evicted and rebuilt");
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
fn a_second_service_with_a_live_name_gets_service_already_exists() {
    let mut env = TestEnv::new("dup");
    env.start_service("svc", &[]);
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", "svc"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

#[test]
fn a_killed_service_leaves_a_stale_entry_that_is_reported_and_reclaimed() {
    let mut env = TestEnv::new("stale");
    let pid = env.start_service("svc", &[]);
    sigkill(pid);
    env.wait_exit(pid, Duration::from_secs(5))
        .unwrap_or_default();
    match env.connect("svc").open() {
        Err(Error::ServiceNotFound { reason, .. }) => assert!(reason.contains("died"), "{reason}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to a dead service"),
    }
    // The name is free again.
    env.start_service("svc", &[]);
    let c = env.connect("svc").arg("n").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "nx");
}

#[test]
fn a_service_killed_mid_call_gives_peer_gone_not_a_hang() {
    let mut env = TestEnv::new("midcall");
    let pid = env.start_service("svc", &[]);
    let c = env.connect("svc").arg("n").arg(1).open().unwrap();
    assert_eq!(c.call::<u64>("sleep_ms", (1,)).unwrap(), 1);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        sigkill(pid);
    });
    let r = c.call::<u64>("sleep_ms", (10_000,));
    killer.join().unwrap();
    // PeerGone (not the 20 s call timeout, nor the 10 s reply that never
    // comes) shows the death was noticed; how fast is measured elsewhere.
    assert!(matches!(r, Err(Error::PeerGone(_))), "{r:?}");
}

#[test]
fn sigterm_stops_gracefully_unregisters_and_removes_segments() {
    let mut env = TestEnv::new("term");
    let pid = env.start_service("svc", &[]);
    let c = env.connect("svc").arg("n").arg(1).open().unwrap();
    // An in-flight call is drained, not cut.
    let slow = std::thread::spawn(move || c.call::<u64>("sleep_ms", (300,)));
    std::thread::sleep(Duration::from_millis(100));
    sigterm(pid);
    assert_eq!(slow.join().unwrap().unwrap(), 300);
    assert_eq!(env.wait_exit(pid, Duration::from_secs(10)), Some(0));
    assert_eq!(env.leftovers(), Vec::<String>::new());
    assert!(matches!(
        env.connect("svc").open(),
        Err(Error::ServiceNotFound { .. })
    ));
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

fn alive(pid: u32) -> bool {
    metabridge_shm::ProcessIdentity::of_pid(pid).is_some_and(|p| p.is_alive())
}

#[test]
fn a_daemon_ends_with_its_parent_unless_detached() {
    let env = TestEnv::new("detach");
    // Not detached: the parent exits, the kernel sends the daemon SIGTERM,
    // it stops gracefully and unregisters.
    let orphan = fixture_daemon(&env, "orphan", "orphan");
    assert!(wait_dead(orphan), "the daemon outlived its parent");
    assert!(matches!(
        env.connect("orphan").open(),
        Err(Error::ServiceNotFound { .. })
    ));

    // Detached: it outlives its parent and keeps serving.
    let free = fixture_daemon(&env, "detach", "free");
    struct Reap(u32);
    impl Drop for Reap {
        fn drop(&mut self) {
            sigkill(self.0);
        }
    }
    let _reap = Reap(free);
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(free));
    let c = env.connect("free").arg("d:").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("x",)).unwrap(), "d:x");
    assert_eq!(c.call::<u32>("pid", ()).unwrap(), free);
    drop(c);
    sigterm(free);
    assert!(wait_dead(free), "SIGTERM stops a detached daemon");
}

/// Runs `test_service <mode> <name>`, which starts a daemon and exits;
/// returns the daemon's pid, which it printed.
fn fixture_daemon(env: &TestEnv, mode: &str, name: &str) -> u32 {
    let out = env
        .command(common::TEST_SERVICE)
        .args([mode, name])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "test_service {mode} failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Waits up to 10 s for `pid` to end; true if it did.
fn wait_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

#[test]
fn run_in_a_multithreaded_program_re_executes_the_binary() {
    let env = TestEnv::new("reexec");
    let out = env
        .command(common::TEST_SERVICE)
        .args(["reexec", "rx"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{text}");
    let (parent, daemon, served_by) = (pids[0], pids[1], pids[2]);
    assert_ne!(parent, daemon);
    assert_eq!(
        daemon, served_by,
        "the call was served by the re-executed daemon"
    );
    assert!(!alive(daemon), "stop() ended it");
    assert_eq!(env.leftovers(), Vec::<String>::new());
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
