//! The client's builder and bookkeeping: `Connect`'s defaults and the
//! environment variables that change them (read in a child process of
//! this test binary, so no other test sees them), what counts as "the
//! service is gone", a constructor argument that cannot be encoded, a
//! name nobody registered, and the fork generation a connection is
//! checked against (a real `fork()`).

use super::*;
use crate::platform::{self, WaitStatus};

/// The `METABRIDGE_*` variables a child starts without, unless given.
const CLIENT_VARS: &[&str] = &[
    "METABRIDGE_TRANSPORT",
    "METABRIDGE_TOKEN",
    "METABRIDGE_MAX_MESSAGE",
    "METABRIDGE_MAX_FRAME",
];

fn in_child(name: &str, envs: &[(&str, &str)]) {
    crate::test_support::in_child(name, CLIENT_VARS, envs)
}

fn is_child() -> bool {
    crate::test_support::is_child()
}

#[test]
fn connect_defaults_without_any_environment() {
    if !is_child() {
        return in_child(
            "client::tests::connect_defaults_without_any_environment",
            &[],
        );
    }
    let c = connect("svc");
    assert_eq!(c.name, "svc");
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert_eq!(c.transport, TransportKind::Auto);
    assert_eq!(c.address, None);
    assert_eq!(c.token, None);
    assert!(!c.token_given);
    assert_eq!(c.max_channels, 16);
    assert_eq!(c.max_message, 256 << 20);
    assert!(c.error.is_none());
    assert_eq!(c.home, None);
}

#[test]
fn metabridge_transport_overrides_the_code_and_token_sets_the_default() {
    const NAME: &str =
        "client::tests::metabridge_transport_overrides_the_code_and_token_sets_the_default";
    if !is_child() {
        in_child(
            NAME,
            &[
                ("METABRIDGE_TRANSPORT", "tcp"),
                ("METABRIDGE_TOKEN", "t0k"),
                ("METABRIDGE_MAX_MESSAGE", "4096"),
                ("MB_UNIT_EXPECT", "tcp"),
            ],
        );
        in_child(
            NAME,
            &[("METABRIDGE_TRANSPORT", "SHM"), ("MB_UNIT_EXPECT", "shm")],
        );
        in_child(
            NAME,
            &[
                ("METABRIDGE_TRANSPORT", ""),
                ("METABRIDGE_TOKEN", ""),
                ("MB_UNIT_EXPECT", "unset"),
            ],
        );
        in_child(
            NAME,
            &[
                ("METABRIDGE_TRANSPORT", "carrier-pigeon"),
                ("MB_UNIT_EXPECT", "bad"),
            ],
        );
        return;
    }
    // The code's explicit choice, which the environment overrides.
    let c = connect("svc").transport(TransportKind::Auto);
    let chosen = c.effective_transport();
    match std::env::var("MB_UNIT_EXPECT").unwrap().as_str() {
        "tcp" => {
            assert_eq!(chosen.unwrap(), TransportKind::Tcp);
            assert_eq!(c.token.as_deref(), Some("t0k"));
            assert!(!c.token_given, "from the environment, not given");
            assert_eq!(c.max_message, 4096);
        }
        "shm" => assert_eq!(chosen.unwrap(), TransportKind::Shm, "in any case"),
        "unset" => {
            assert_eq!(chosen.unwrap(), TransportKind::Auto, "empty is unset");
            assert_eq!(c.token, None, "an empty token is no token");
        }
        _ => {
            let e = chosen.unwrap_err().to_string();
            assert!(
                e.contains("METABRIDGE_TRANSPORT=\"carrier-pigeon\"")
                    && e.contains("shm, tcp or auto"),
                "{e}"
            );
            // And it is what opening the client says, before any lookup.
            let e = connect("svc").open().err().expect("refused").to_string();
            assert!(e.contains("carrier-pigeon"), "{e}");
        }
    }
}

#[test]
fn the_builder_records_each_choice() {
    let c = connect("svc")
        .timeout(Duration::from_millis(1500))
        .token("given")
        .home("/dev/shm/elsewhere")
        .max_channels(0)
        .max_message(1024);
    assert_eq!(c.timeout, Duration::from_millis(1500));
    assert_eq!(c.token.as_deref(), Some("given"));
    assert!(c.token_given);
    assert_eq!(
        c.home.as_deref(),
        Some(std::path::Path::new("/dev/shm/elsewhere"))
    );
    assert_eq!(c.max_channels, 1, "at least one channel");
    assert_eq!(c.max_message, 1024);
    let remote = connect("svc")
        .transport(TransportKind::Shm)
        .at("10.0.0.1:4000");
    assert_eq!(remote.address.as_deref(), Some("10.0.0.1:4000"));
    assert_eq!(remote.transport, TransportKind::Tcp, "an address means TCP");
}

struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("cannot be encoded"))
    }
}

#[test]
fn a_constructor_argument_that_cannot_be_encoded_fails_open_with_its_reason() {
    for c in [
        connect("svc").arg(1).arg(Unencodable).arg(2),
        connect("svc").kwarg("k", Unencodable),
    ] {
        match c.home("/nonexistent").open() {
            Err(Error::Protocol(why)) => {
                assert!(why.to_string().contains("constructor argument"), "{why}");
                assert!(why.to_string().contains("cannot be encoded"), "{why}");
            }
            Err(e) => panic!("expected a protocol error, got {e}"),
            Ok(_) => panic!("opened with an argument that cannot be encoded"),
        }
    }
}

#[test]
fn a_name_nobody_registered_is_not_found_and_counts_as_gone() {
    let home = std::path::PathBuf::from(format!(
        "/dev/shm/mbu-client-notfound-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&home);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&home)
        .unwrap();
    let result = connect("nobody-here")
        .home(&home)
        .timeout(Duration::from_secs(5))
        .open();
    let _ = std::fs::remove_dir_all(&home);
    match result {
        Err(e @ Error::ServiceNotFound { .. }) => {
            assert!(e.to_string().contains("nobody-here"), "{e}");
            assert!(is_gone(&e));
        }
        Err(e) => panic!("expected service not found, got {e}"),
        Ok(_) => panic!("found a service nobody registered"),
    }
}

#[test]
fn is_gone_means_this_incarnation_of_the_service_is_gone() {
    use std::io::ErrorKind::*;
    assert!(is_gone(&Error::PeerGone(PeerGone::TcpClosed)));
    assert!(is_gone(&Error::ServiceNotFound {
        name: "svc".into(),
        reason: "never registered".into(),
    }));
    for kind in [
        NotFound,
        ConnectionRefused,
        ConnectionReset,
        BrokenPipe,
        UnexpectedEof,
    ] {
        assert!(is_gone(&Error::Io(kind.into())), "{kind:?}");
    }
    // A slow, refusing or confused service is still there.
    for kind in [TimedOut, PermissionDenied, Interrupted, WouldBlock] {
        assert!(!is_gone(&Error::Io(kind.into())), "{kind:?}");
    }
    assert!(!is_gone(&Error::Timeout(crate::error::TimedOut::TcpReply)));
    assert!(!is_gone(&Error::Refused(crate::error::Refusal::new("no"))));
    assert!(!is_gone(&Error::Protocol(
        crate::error::ProtocolError::TruncatedValue
    )));
    assert!(!is_gone(&Error::MessageTooLarge { len: 2, max: 1 }));
}

#[test]
#[allow(unsafe_code)]
fn a_forked_child_is_of_the_next_fork_generation() {
    platform::watch_forks();
    let before = platform::fork_generation();
    // SAFETY: the child of this multi-threaded harness only loads an
    // atomic and calls `_exit`, both async-signal-safe, as a child of a
    // multi-threaded parent must.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = if platform::fork_generation() == before + 1 {
            0
        } else {
            1
        };
        platform::exit_now(code);
    }
    match platform::wait_child(platform::Pid::from_raw(pid), true).unwrap() {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0, "the child's generation is the next"),
        other => panic!("child: {other:?}"),
    }
    assert_eq!(
        platform::fork_generation(),
        before,
        "the parent's is unchanged"
    );
}
