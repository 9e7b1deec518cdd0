//! TLS over the TCP transport, between real processes over real sockets:
//! a call verified by a CA or a pin; each refusal a typed error naming its
//! cause within the call's timeout (a wrong CA, an expired or misnamed
//! certificate, a wrong pin, a plaintext client on a TLS port, a TLS
//! client on a plaintext port, a handshake that stalls either way); the
//! checks on key files; a certificate renewed without a restart (SIGHUP);
//! mutual TLS, with an allow-list of clients in place of a token; a
//! certificate given in code; and a local client that trusts what its own
//! registry says.

mod support;

use metabridge::tls::{ClientTls, TlsError};
use metabridge::{Error, TransportKind};
use std::io::Read;
use std::time::{Duration, Instant};
use support::{TestCa, TestEnv};

/// A TLS service started with a certificate for 127.0.0.1 and localhost
/// signed by `ca`; returns its address.
fn tls_service(env: &mut TestEnv, name: &str, ca: &TestCa) -> (String, support::Issued) {
    let issued = ca.issue(&["127.0.0.1", "localhost"], false);
    let (cert, key) = env.identity(name, &issued);
    env.start_service(
        name,
        &[("METABRIDGE_TLS_CERT", &cert), ("METABRIDGE_TLS_KEY", &key)],
    );
    (env.tcp_addr(name), issued)
}

fn echo(client: &metabridge::Client, text: &str) -> metabridge::Result<String> {
    client.call::<String>("echo", (text,))
}

#[test]
fn a_call_over_tls_is_verified_by_the_ca_or_by_a_pin() {
    let mut env = TestEnv::new("tls-ok");
    let ca = TestCa::new("net-test CA");
    let (addr, issued) = tls_service(&mut env, "svc", &ca);
    let by_ca = env
        .at("svc", &addr)
        .tls(ClientTls::ca_pem(ca.pem().as_bytes()).unwrap())
        .open()
        .unwrap();
    assert_eq!(by_ca.transport_name(), "tcp");
    assert_eq!(echo(&by_ca, "over TLS").unwrap(), "over TLS");
    // Many calls on the pooled connection: the handshake is paid once.
    for i in 0..50 {
        assert_eq!(
            echo(&by_ca, &format!("call {i}")).unwrap(),
            format!("call {i}")
        );
    }
    let pinned = env
        .at("svc", &addr)
        .tls(ClientTls::pinned(&issued.fingerprint).unwrap())
        .open()
        .unwrap();
    assert_eq!(echo(&pinned, "pinned").unwrap(), "pinned");
    // A large argument crosses TLS whole.
    let big = "x".repeat(3 << 20);
    assert_eq!(echo(&by_ca, &big).unwrap(), big);
}

#[test]
fn each_refused_certificate_is_a_typed_error_naming_its_cause() {
    let mut env = TestEnv::new("tls-refused");
    let ca = TestCa::new("net-test CA");
    let (addr, _) = tls_service(&mut env, "svc", &ca);
    // Another CA.
    let stranger = TestCa::new("another CA");
    let started = Instant::now();
    match env
        .at("svc", &addr)
        .tls(ClientTls::ca_pem(stranger.pem().as_bytes()).unwrap())
        .open()
    {
        Err(Error::Tls(TlsError::UnknownIssuer)) => {}
        other => panic!("expected an unknown issuer, got {:?}", other.map(|_| ())),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the call's timeout"
    );
    // A pin of another certificate.
    let other = ca.issue(&["127.0.0.1"], false);
    match env
        .at("svc", &addr)
        .tls(ClientTls::pinned(&other.fingerprint).unwrap())
        .open()
    {
        Err(Error::Tls(TlsError::PinMismatch { want, got })) => {
            assert_eq!(want, other.fingerprint);
            assert_ne!(got, want);
        }
        other => panic!("expected a pin mismatch, got {:?}", other.map(|_| ())),
    }
    // The right CA, another name.
    match env
        .at("svc", &addr)
        .tls(
            ClientTls::ca_pem(ca.pem().as_bytes())
                .unwrap()
                .server_name("db.example.org"),
        )
        .open()
    {
        Err(Error::Tls(TlsError::WrongName { name, .. })) => assert_eq!(name, "db.example.org"),
        other => panic!("expected a wrong name, got {:?}", other.map(|_| ())),
    }
    let text = env
        .at("svc", &addr)
        .tls(ClientTls::ca_pem(stranger.pem().as_bytes()).unwrap())
        .open()
        .err()
        .unwrap()
        .to_string();
    assert!(
        text.contains("not signed by a CA this client trusts"),
        "{text}"
    );
}

#[test]
fn an_expired_certificate_is_refused_as_expired() {
    let mut env = TestEnv::new("tls-expired");
    let ca = TestCa::new("net-test CA");
    let issued = ca.issue(&["127.0.0.1"], true);
    let (cert, key) = env.identity("service", &issued);
    env.start_service(
        "svc",
        &[("METABRIDGE_TLS_CERT", &cert), ("METABRIDGE_TLS_KEY", &key)],
    );
    let addr = env.tcp_addr("svc");
    match env
        .at("svc", &addr)
        .tls(ClientTls::ca_pem(ca.pem().as_bytes()).unwrap())
        .open()
    {
        Err(Error::Tls(TlsError::Expired(_))) => {}
        other => panic!(
            "expected an expired certificate, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn plaintext_and_tls_never_mix_on_one_port() {
    let mut env = TestEnv::new("tls-mix");
    let ca = TestCa::new("net-test CA");
    let (tls_addr, _) = tls_service(&mut env, "secure", &ca);
    // A plaintext client (as the original library's) on the TLS port is
    // told so in the original protocol's own error.
    let plain = env.at("secure", &tls_addr).open();
    let err = match plain {
        Ok(client) => echo(&client, "hello?").unwrap_err(),
        Err(e) => e,
    };
    match &err {
        Error::Remote { kind, message } => {
            assert_eq!(kind, "ProtocolError");
            assert!(message.contains("speaks TLS only"), "{message}");
        }
        other => panic!("expected the TLS port's refusal, got {other:?}"),
    }
    // A TLS client on a plaintext port.
    env.start_service("plain", &[]);
    let plain_addr = env.tcp_addr("plain");
    let started = Instant::now();
    match env
        .at("plain", &plain_addr)
        .tls(ClientTls::ca_pem(ca.pem().as_bytes()).unwrap())
        .open()
    {
        Err(Error::Tls(TlsError::NotTls | TlsError::ClosedInHandshake)) => {}
        other => panic!(
            "expected a peer that does not speak TLS, got {:?}",
            other.map(|_| ())
        ),
    }
    // The bound is the behaviour: a refusal within the client's 5 s
    // timeout (it comes in milliseconds), never a retry loop or a hang.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_stalled_handshake_ends_within_the_deadline_on_both_sides() {
    // Client side: a peer that accepts and never answers the hello.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let env = TestEnv::new("tls-stall");
    let ca = TestCa::new("net-test CA");
    let started = Instant::now();
    let r = metabridge::connect("nobody")
        .home(&env.home)
        .at(&addr)
        .timeout(Duration::from_millis(600))
        .tls(ClientTls::ca_pem(ca.pem().as_bytes()).unwrap())
        .open();
    match r {
        Err(Error::Tls(TlsError::HandshakeTimeout(_))) => {}
        other => panic!("expected a handshake timeout, got {:?}", other.map(|_| ())),
    }
    // The handshake's limit is the 600 ms timeout; 10 s only tells a
    // deadline obeyed from one ignored (a hang), even on a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(silent);

    // Service side: a client that connects and never says hello is closed
    // after the time it has to authenticate.
    let mut env = TestEnv::new("tls-stall-server");
    let issued = ca.issue(&["127.0.0.1"], false);
    let (cert, key) = env.identity("service", &issued);
    env.start_service(
        "svc",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &key),
            (
                "METABRIDGE_TCP_AUTH_TIMEOUT_MS",
                std::path::Path::new("300"),
            ),
        ],
    );
    let mut idle = std::net::TcpStream::connect(env.tcp_addr("svc")).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        idle.read(&mut byte).unwrap(),
        0,
        "the service closes a connection that never starts its handshake"
    );
}

#[test]
fn key_and_certificate_files_are_checked_before_the_service_starts() {
    let mut env = TestEnv::new("tls-files");
    let ca = TestCa::new("net-test CA");
    let issued = ca.issue(&["127.0.0.1"], false);
    let cert = env.file("cert.pem", &issued.cert, 0o644);
    let open_key = env.file("key-0644.pem", &issued.key, 0o644);
    let (code, err) = env.failed_start(
        "svc",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &open_key),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("key-0644.pem") && err.contains("readable"),
        "{err}"
    );
    // A symlink to a good key is refused too.
    let key = env.file("key.pem", &issued.key, 0o600);
    let link = env.home.join("key-link.pem");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let (code, err) = env.failed_start(
        "svc",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &link),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("symlink"), "{err}");
    // A certificate alone.
    let (code, err) = env.failed_start("svc", &[("METABRIDGE_TLS_CERT", &cert)]);
    assert_eq!(code, 1);
    assert!(err.contains("METABRIDGE_TLS_KEY"), "{err}");
    // A key of another certificate.
    let other = ca.issue(&["127.0.0.1"], false);
    let wrong_key = env.file("other-key.pem", &other.key, 0o600);
    let (code, err) = env.failed_start(
        "svc",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &wrong_key),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_without_a_restart() {
    let mut env = TestEnv::new("tls-reload");
    let ca = TestCa::new("net-test CA");
    let first = ca.issue(&["127.0.0.1"], false);
    let (cert, key) = env.identity("service", &first);
    let pid = env.start_service(
        "svc",
        &[("METABRIDGE_TLS_CERT", &cert), ("METABRIDGE_TLS_KEY", &key)],
    );
    let addr = env.tcp_addr("svc");
    let old = env
        .at("svc", &addr)
        .tls(ClientTls::pinned(&first.fingerprint).unwrap())
        .open()
        .unwrap();
    assert_eq!(echo(&old, "before").unwrap(), "before");
    let renewed = ca.issue(&["127.0.0.1"], false);
    // The same paths: the service reads them again.
    assert_eq!(env.identity("service", &renewed), (cert, key));
    env.signal(pid, nix::sys::signal::Signal::SIGHUP);
    // New connections get the renewed certificate once the service has
    // read it (its serving loop looks for SIGHUP every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = env
            .at("svc", &addr)
            .tls(ClientTls::pinned(&renewed.fingerprint).unwrap())
            .open()
            .and_then(|c| echo(&c, "after"));
        match attempt {
            Ok(s) => {
                assert_eq!(s, "after");
                break;
            }
            Err(Error::Tls(TlsError::PinMismatch { .. })) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the renewed certificate was not served: {e}"),
        }
    }
    // The same process: no restart.
    let c = env
        .at("svc", &addr)
        .tls(ClientTls::pinned(&renewed.fingerprint).unwrap())
        .open()
        .unwrap();
    assert_eq!(c.call::<u32>("pid", ()).unwrap(), pid);
    // The old pin no longer matches a new connection.
    match env
        .at("svc", &addr)
        .tls(ClientTls::pinned(&first.fingerprint).unwrap())
        .open()
    {
        Err(Error::Tls(TlsError::PinMismatch { .. })) => {}
        other => panic!("expected the old pin refused, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_of_its_ca() {
    let mut env = TestEnv::new("tls-mutual");
    let ca = TestCa::new("net-test CA");
    let clients_ca = TestCa::new("clients CA");
    let issued = ca.issue(&["127.0.0.1"], false);
    let (cert, key) = env.identity("service", &issued);
    let client_ca = env.file("clients-ca.pem", &clients_ca.pem(), 0o644);
    env.start_service(
        "svc",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &key),
            ("METABRIDGE_TLS_CLIENT_CA", &client_ca),
        ],
    );
    let addr = env.tcp_addr("svc");
    let trust = || ClientTls::ca_pem(ca.pem().as_bytes()).unwrap();
    // No client certificate: refused (in TLS 1.3 the refusal comes with
    // the first read, so it may surface at the first call).
    let refused = env
        .at("svc", &addr)
        .tls(trust())
        .open()
        .and_then(|c| echo(&c, "let me in"));
    match refused {
        Err(Error::Tls(TlsError::ClientCertRefused(_))) => {}
        other => panic!("expected the client certificate refused, got {other:?}"),
    }
    // A certificate of the clients' CA: served.
    let mine = clients_ca.issue(&["client.example"], false);
    let (my_cert, my_key) = env.identity("client", &mine);
    let client = env
        .at("svc", &addr)
        .tls(trust().client_cert_files(&my_cert, &my_key).unwrap())
        .open()
        .unwrap();
    assert_eq!(echo(&client, "mutual").unwrap(), "mutual");
    // One of another CA: refused.
    let stranger = TestCa::new("stranger").issue(&["client.example"], false);
    let (s_cert, s_key) = env.identity("s", &stranger);
    let refused = env
        .at("svc", &addr)
        .tls(trust().client_cert_files(&s_cert, &s_key).unwrap())
        .open()
        .and_then(|c| echo(&c, "let me in"));
    match refused {
        Err(Error::Tls(TlsError::ClientCertRefused(_))) => {}
        other => panic!("expected the stranger's certificate refused, got {other:?}"),
    }
}

/// Mutual TLS as the alternative to a token: the service (exposed, no
/// token) admits the clients of its allow-list, by a name their
/// certificate is valid for or by fingerprint; another client of the same
/// CA is refused in the handshake, a typed error.
#[test]
fn mutual_tls_admits_only_the_clients_of_its_allow_list() {
    let mut env = TestEnv::new("tls-allow");
    let ca = TestCa::new("net-test CA");
    let clients_ca = TestCa::new("clients CA");
    let issued = ca.issue(&["127.0.0.1"], false);
    let (cert, key) = env.identity("service", &issued);
    let client_ca = env.file("clients-ca.pem", &clients_ca.pem(), 0o644);
    let by_name = clients_ca.issue(&["reports.example"], false);
    let by_print = clients_ca.issue(&["other.example"], false);
    let intruder = clients_ca.issue(&["intruder.example"], false);
    let allow = format!("reports.example, {}", by_print.fingerprint);
    env.start_service(
        "svc",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &key),
            ("METABRIDGE_TLS_CLIENT_CA", &client_ca),
            ("METABRIDGE_TLS_CLIENT_ALLOW", std::path::Path::new(&allow)),
        ],
    );
    let addr = env.tcp_addr("svc");
    let mut n = 0;
    let mut as_client = |who: &support::Issued| {
        n += 1;
        let (c, k) = env.identity(&format!("client{n}"), who);
        let tls = ClientTls::ca_pem(ca.pem().as_bytes())
            .unwrap()
            .client_cert_files(&c, &k)
            .unwrap();
        env.at("svc", &addr)
            .tls(tls)
            .open()
            .and_then(|client| echo(&client, "hello"))
    };
    assert_eq!(as_client(&by_name).unwrap(), "hello");
    assert_eq!(as_client(&by_print).unwrap(), "hello");
    match as_client(&intruder) {
        Err(Error::Tls(TlsError::ClientCertRefused(_))) => {}
        other => panic!("expected the intruder's certificate refused, got {other:?}"),
    }
}

/// An allow-list without a client CA, or with an entry that is neither a
/// fingerprint nor a name, stops the service at start with an error
/// naming it.
#[test]
fn a_bad_allow_list_stops_the_service_at_start() {
    let mut env = TestEnv::new("tls-allow-bad");
    let ca = TestCa::new("net-test CA");
    let issued = ca.issue(&["127.0.0.1"], false);
    let (cert, key) = env.identity("service", &issued);
    let client_ca = env.file("clients-ca.pem", &ca.pem(), 0o644);
    let (code, err) = env.failed_start(
        "no-ca",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &key),
            (
                "METABRIDGE_TLS_CLIENT_ALLOW",
                std::path::Path::new("reports.example"),
            ),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("METABRIDGE_TLS_CLIENT_ALLOW"), "{err}");
    let (code, err) = env.failed_start(
        "bad-entry",
        &[
            ("METABRIDGE_TLS_CERT", &cert),
            ("METABRIDGE_TLS_KEY", &key),
            ("METABRIDGE_TLS_CLIENT_CA", &client_ca),
            (
                "METABRIDGE_TLS_CLIENT_ALLOW",
                std::path::Path::new("sha256:abc"),
            ),
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("sha256:abc"), "{err}");
}

/// A certificate and key given in code as PEM bytes (`Service::tls_pem`)
/// serve like files.
#[test]
fn a_certificate_given_in_code_serves_tls() {
    let mut env = TestEnv::new("tls-pem");
    let ca = TestCa::new("net-test CA");
    let issued = ca.issue(&["127.0.0.1"], false);
    let (cert, key) = env.identity("service", &issued);
    env.start_service("svc", &[("MB_PEM_CERT", &cert), ("MB_PEM_KEY", &key)]);
    let addr = env.tcp_addr("svc");
    let client = env
        .at("svc", &addr)
        .tls(ClientTls::pinned(&issued.fingerprint).unwrap())
        .open()
        .unwrap();
    assert_eq!(echo(&client, "from bytes").unwrap(), "from bytes");
}

#[test]
fn a_local_client_by_name_trusts_the_fingerprint_in_its_registry() {
    let mut env = TestEnv::new("tls-local");
    let ca = TestCa::new("net-test CA");
    let (_, issued) = tls_service(&mut env, "svc", &ca);
    let entry = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("svc")
        .unwrap();
    assert_eq!(
        entry.tls_fingerprint.as_deref(),
        Some(issued.fingerprint.as_str())
    );
    let client = metabridge::connect("svc")
        .home(&env.home)
        .token("net-test-token")
        .transport(TransportKind::Tcp)
        .open()
        .unwrap();
    assert_eq!(echo(&client, "by name").unwrap(), "by name");
}
