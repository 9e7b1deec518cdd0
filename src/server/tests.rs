//! The server's helpers that shape what lands in the home directory and
//! on the wire: file-safe names, the random token, the guard of default
//! loopback TCP, and the control socket's file (0600, a real socket,
//! removed when the service stops).

use super::shm_side::bind_control_socket;
use super::*;
use crate::config::ServiceConfig;
use crate::test_support::TestHome;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;

#[test]
fn file_safe_keeps_ascii_letters_digits_dashes_and_underscores_only() {
    assert_eq!(file_safe("demo-service_2"), "demo-service_2");
    assert_eq!(file_safe("a/b\\c..d e"), "a_b_c__d_e");
    // One `_` per character, not per byte: no half of a UTF-8 sequence.
    assert_eq!(file_safe("serviço"), "servi_o");
    assert_eq!(file_safe("日本"), "__");
    assert!(!file_safe("../../etc/passwd").contains('/'));
}

#[test]
fn file_safe_names_are_cut_at_64_characters() {
    let long = "x".repeat(100);
    assert_eq!(file_safe(&long).len(), 64);
    let wide = "é".repeat(100);
    assert_eq!(file_safe(&wide), "_".repeat(64));
}

#[test]
fn random_tokens_are_128_bits_of_lowercase_hex_and_differ() {
    let a = random_token().unwrap();
    let b = random_token().unwrap();
    for t in [&a, &b] {
        assert_eq!(t.len(), 32, "{t}");
        assert!(
            t.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{t}"
        );
    }
    assert_ne!(a, b, "two tokens from the kernel's generator");
}

#[test]
fn default_loopback_tcp_gets_a_token_of_its_own() {
    let mut config = ServiceConfig {
        token: None,
        ..ServiceConfig::default()
    };
    let made = guard_default_tcp(&mut config)
        .unwrap()
        .expect("a token is made");
    assert_eq!(config.token.as_deref(), Some(made.as_str()));
    assert_eq!(made.len(), 32);
}

#[test]
fn an_operators_token_or_address_is_left_alone() {
    let mut given = ServiceConfig {
        token: Some("theirs".into()),
        ..ServiceConfig::default()
    };
    assert_eq!(guard_default_tcp(&mut given).unwrap(), None);
    assert_eq!(given.token.as_deref(), Some("theirs"));

    let mut exposed = ServiceConfig {
        token: None,
        tcp_exposed: true,
        ..ServiceConfig::default()
    };
    assert_eq!(guard_default_tcp(&mut exposed).unwrap(), None);
    assert_eq!(
        exposed.token, None,
        "an address chosen on purpose needs no token"
    );
}

#[test]
fn the_control_socket_is_a_socket_readable_by_its_owner_only() {
    let home = TestHome::new("server", "sock");
    let control = bind_control_socket(&home.0, "svc").unwrap();
    assert_eq!(control.path, home.0.join("svc.sock"));
    let meta = std::fs::symlink_metadata(&control.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Non-blocking, for the accept loop.
    match control.listener.accept() {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
        Ok(_) => panic!("a connection from nowhere"),
    }
    // Reachable: a client of this user connects.
    std::os::unix::net::UnixStream::connect(&control.path).unwrap();
}

#[test]
fn the_control_socket_replaces_a_stale_file_and_is_removed_when_dropped() {
    let home = TestHome::new("server", "stale");
    let path = home.0.join("svc.sock");
    std::fs::write(&path, b"left by a killed service").unwrap();
    let control = bind_control_socket(&home.0, "svc").unwrap();
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    drop(control);
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "the socket file goes with the service"
    );
}
