//! Clients outlive their service: after it stops, calls fail with one kind
//! of error naming the service, and after it restarts under the same name
//! the same client finds the new one on its next call.

mod common;

use common::{sigterm, TestEnv};
use metabridge::{Error, TransportKind};
use std::time::Duration;

fn gone_names(e: &Error, name: &str) -> bool {
    match e {
        Error::ServiceNotFound { name: n, .. } => n == name,
        Error::PeerGone(why) => why.to_string().contains(&format!("{name:?}")),
        _ => false,
    }
}

fn survive_a_restart(kind: TransportKind, tag: &str) {
    let mut env = TestEnv::new(tag);
    let first = env.start_service("svc", &[]);
    let client = env.client("svc", kind, "p:");
    assert_eq!(client.call::<u32>("pid", ()).unwrap(), first);
    sigterm(first);
    assert_eq!(env.wait_exit(first, Duration::from_secs(30)), Some(0));
    // Gone: every call says so, naming the service, never a bare Io error.
    for _ in 0..3 {
        match client.call::<u32>("pid", ()) {
            Err(e) => assert!(gone_names(&e, "svc"), "{kind:?}: {e:?}"),
            Ok(pid) => panic!("{kind:?}: a stopped service answered (pid {pid})"),
        }
    }
    match client.call::<u32>("pid", ()) {
        Err(Error::ServiceNotFound { name, .. }) => assert_eq!(name, "svc"),
        other => panic!("{kind:?}: expected ServiceNotFound, got {other:?}"),
    }
    // Back under the same name: the same client reaches the new process,
    // over the same kind of transport.
    let second = env.start_service("svc", &[]);
    assert_ne!(first, second);
    assert_eq!(client.call::<u32>("pid", ()).unwrap(), second);
    assert_eq!(client.call::<String>("echo", ("x",)).unwrap(), "p:x");
    let expected = match kind {
        TransportKind::Tcp => "tcp",
        _ => "shm",
    };
    assert_eq!(client.transport_name(), expected);
}

#[test]
fn a_shared_memory_client_survives_a_restart() {
    survive_a_restart(TransportKind::Auto, "restart-shm");
}

#[test]
fn a_tcp_client_survives_a_restart() {
    survive_a_restart(TransportKind::Tcp, "restart-tcp");
}
