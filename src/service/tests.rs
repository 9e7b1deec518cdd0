//! A service's definition and configuration: the defaults of
//! `ServiceConfig` and the environment variables that change them (read
//! in a child process of this test binary, so no other test sees them),
//! what `host`/`port` mean for the token guard, and the name rule.

use super::*;

/// The `METABRIDGE_*` variables a child starts without, unless given.
const SERVICE_VARS: &[&str] = &[
    "METABRIDGE_WORKERS",
    "METABRIDGE_TOKEN",
    "METABRIDGE_TCP_AUTH_TIMEOUT_MS",
    "METABRIDGE_TCP_STALL_TIMEOUT_MS",
    "METABRIDGE_LOG_FILE",
    "METABRIDGE_MAX_MESSAGE",
    "METABRIDGE_MAX_FRAME",
];

fn in_child(name: &str, envs: &[(&str, &str)]) {
    crate::test_support::in_child(name, SERVICE_VARS, envs)
}

fn is_child() -> bool {
    crate::test_support::is_child()
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

#[test]
fn defaults_without_any_environment() {
    if !is_child() {
        return in_child("service::tests::defaults_without_any_environment", &[]);
    }
    let c = ServiceConfig::default();
    assert_eq!(c.host, "127.0.0.1");
    assert_eq!(c.port, 0);
    assert_eq!(c.workers, cpus());
    assert_eq!(c.cache_capacity, 128);
    assert_eq!(c.cache_key_bytes, 64 << 20);
    assert_eq!(c.token, None);
    assert!(!c.tcp_exposed);
    assert!(c.allow_uids.is_empty());
    assert_eq!(c.max_channels, 1024);
    assert_eq!(c.max_extra_workers, 16);
    assert_eq!(c.max_message, 256 << 20);
    assert_eq!(c.tcp_auth_timeout, metabridge_tcp::server::AUTH_TIMEOUT);
    assert_eq!(c.tcp_stall_timeout, metabridge_tcp::server::STALL_TIMEOUT);
    assert_eq!(c.shutdown_timeout, std::time::Duration::from_secs(5));
    assert!(!c.logger);
    assert_eq!(c.log_file, None);
    assert!(c.tcp_is_default());
}

#[test]
fn environment_variables_set_workers_token_timeouts_and_log_file() {
    if !is_child() {
        return in_child(
            "service::tests::environment_variables_set_workers_token_timeouts_and_log_file",
            &[
                ("METABRIDGE_WORKERS", "3"),
                ("METABRIDGE_TOKEN", "s3cret"),
                ("METABRIDGE_TCP_AUTH_TIMEOUT_MS", "250"),
                ("METABRIDGE_TCP_STALL_TIMEOUT_MS", "1500"),
                ("METABRIDGE_LOG_FILE", "/dev/shm/mbu-service.log"),
            ],
        );
    }
    let c = ServiceConfig::default();
    assert_eq!(c.workers, 3);
    assert_eq!(c.token.as_deref(), Some("s3cret"));
    assert_eq!(c.tcp_auth_timeout, std::time::Duration::from_millis(250));
    assert_eq!(c.tcp_stall_timeout, std::time::Duration::from_millis(1500));
    assert_eq!(
        c.log_file.as_deref(),
        Some(std::path::Path::new("/dev/shm/mbu-service.log"))
    );
}

#[test]
fn empty_zero_or_unparsable_variables_leave_the_defaults() {
    if !is_child() {
        return in_child(
            "service::tests::empty_zero_or_unparsable_variables_leave_the_defaults",
            &[
                ("METABRIDGE_WORKERS", "0"),
                ("METABRIDGE_TOKEN", ""),
                ("METABRIDGE_TCP_AUTH_TIMEOUT_MS", "soon"),
                ("METABRIDGE_TCP_STALL_TIMEOUT_MS", "-5"),
                ("METABRIDGE_LOG_FILE", ""),
            ],
        );
    }
    let c = ServiceConfig::default();
    assert_eq!(c.workers, cpus(), "0 workers is no configuration");
    assert_eq!(c.token, None, "an empty token is no token");
    assert_eq!(c.tcp_auth_timeout, metabridge_tcp::server::AUTH_TIMEOUT);
    assert_eq!(c.tcp_stall_timeout, metabridge_tcp::server::STALL_TIMEOUT);
    assert_eq!(c.log_file, None);
}

#[test]
fn a_host_or_port_chosen_by_the_operator_exposes_tcp() {
    let plain = Service::<()>::new("svc");
    assert!(!plain.config.tcp_exposed);
    let by_host = Service::<()>::new("svc").host("127.0.0.1");
    assert!(by_host.config.tcp_exposed);
    assert!(
        !by_host.config.tcp_is_default(),
        "chosen, even if it is the default"
    );
    let by_port = Service::<()>::new("svc").port(4000);
    assert_eq!(by_port.config.port, 4000);
    assert!(!by_port.config.tcp_is_default());
    let other_host = ServiceConfig {
        host: "0.0.0.0".into(),
        ..ServiceConfig::default()
    };
    assert!(!other_host.tcp_is_default());
}

#[test]
fn service_names_follow_the_one_rule() {
    let longest = "x".repeat(MAX_SERVICE_NAME_LEN);
    for good in ["demo-service", "serviço de teste", "a", longest.as_str()] {
        assert!(validate_service_name(good).is_ok(), "{good:?}");
    }
    let too_long = "x".repeat(MAX_SERVICE_NAME_LEN + 1);
    // 33 two-byte characters: 66 bytes, over the limit in bytes.
    let too_long_utf8 = "é".repeat(33);
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "a\0b",
        "line\nbreak",
        " padded",
        "padded ",
        "zero\u{200B}width",
        "right\u{202E}left",
        "no\u{00A0}break",
        too_long.as_str(),
        too_long_utf8.as_str(),
    ] {
        match validate_service_name(bad) {
            Err(Error::InvalidServiceName { name, problem }) => {
                assert_eq!(name, bad);
                assert!(!problem.is_empty());
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn try_new_and_validate_name_apply_the_rule() {
    assert!(Service::<()>::try_new("ok").is_ok());
    assert!(matches!(
        Service::<()>::try_new("a/b"),
        Err(Error::InvalidServiceName { .. })
    ));
    // `new` does not check; `validate_name` does, after a rename too.
    let renamed = Service::<()>::new("ok").rename("..");
    assert_eq!(renamed.name(), "..");
    assert!(renamed.validate_name().is_err());
}
