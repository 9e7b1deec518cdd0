//! One message limit for both transports: the same call passes or fails
//! the same way over shared memory and TCP, and the error names the limit
//! and how to raise it.

mod common;

use common::TestEnv;
use metabridge::{Error, TransportKind};

const KINDS: [TransportKind; 2] = [TransportKind::Shm, TransportKind::Tcp];

/// 70 MiB passes on both (TCP alone used to stop at 64 MiB).
#[test]
fn a_large_call_passes_on_both_transports_alike() {
    let mut env = TestEnv::new("limits-same");
    env.start_service("svc", &[]);
    let big = "b".repeat(70 << 20);
    for kind in KINDS {
        let c = env.client("svc", kind, "");
        let back: String = c.call("echo", (big.as_str(),)).unwrap();
        assert_eq!(back.len(), big.len(), "{kind:?}");
    }
}

/// Past the limit: the client refuses to send (its own limit), and the
/// service refuses a request (its limit) and a result (its limit), each
/// time naming the numbers and the settings that raise them.
#[test]
fn past_the_limit_both_transports_give_the_same_clear_error() {
    let mut env = TestEnv::new("limits-past");
    env.start_service("svc", &[("METABRIDGE_MAX_MESSAGE", "1048576")]);
    let two_mib = "c".repeat(2 << 20);
    for kind in KINDS {
        // The client's own limit.
        let strict = env
            .connect("svc")
            .transport(kind)
            .max_message(1 << 20)
            .arg("")
            .arg(1)
            .open()
            .unwrap();
        match strict.call::<String>("echo", (two_mib.as_str(),)) {
            Err(Error::MessageTooLarge { len, max }) => {
                assert!(len > 2 << 20, "{kind:?}: {len}");
                assert_eq!(max, 1 << 20);
            }
            other => panic!("{kind:?}: expected MessageTooLarge, got {other:?}"),
        }
        // The service's limit, for a client that allows more.
        let loose = env
            .connect("svc")
            .transport(kind)
            .max_message(64 << 20)
            .arg("")
            .arg(1)
            .open()
            .unwrap();
        match loose.call::<String>("echo", (two_mib.as_str(),)) {
            Err(Error::Remote { kind: k, message }) => {
                assert_eq!(k, "ProtocolError", "{kind:?}: {message}");
                assert!(
                    message.contains("maximum of 1048576"),
                    "{kind:?}: {message}"
                );
                assert!(message.contains("max_message"), "{kind:?}: {message}");
            }
            other => panic!("{kind:?}: expected a ProtocolError reply, got {other:?}"),
        }
        // A small request whose result is too large: an error reply too.
        let half = "d".repeat(600 << 10);
        let fits: String = loose.call("echo", (half.as_str(),)).unwrap();
        assert_eq!(fits.len(), half.len());
        let text = Error::MessageTooLarge { len: 1, max: 1 }.to_string();
        assert!(text.contains("METABRIDGE_MAX_MESSAGE"), "{text}");
    }
}
