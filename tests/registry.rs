//! The registry and the home directory with real processes: services
//! found by name from unrelated processes, a live name refused to a second
//! service, stale entries reported and reclaimed, an entry that vanished
//! registered again, sockets of killed services collected, and a full home
//! reported clearly.
//!
//! Each test has its own `METABRIDGE_HOME`; its `TestEnv` kills and reaps
//! every process it started and removes the home, even on failure.

mod common;

use common::{sigkill, TestEnv};
use metabridge::Error;
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// Someone truncates the registry while a service runs: the service
/// notices its entry is gone and registers again.
#[test]
fn a_live_service_whose_entry_vanished_registers_again() {
    let mut env = TestEnv::new("reregister");
    let pid = env.start_service("svc", &[]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(env.home.join("registry"))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(matches!(
        metabridge::registry::Registry::open(&env.home)
            .unwrap()
            .lookup("svc"),
        Err(Error::ServiceNotFound { .. })
    ));
    env.wait_registered("svc", pid);
    let c = env.connect("svc").arg("a").arg(1).open().unwrap();
    assert_eq!(c.call::<String>("echo", ("b",)).unwrap(), "ab");
}

/// A SIGKILLed service leaves its control socket; the next service to
/// start (and `metabridge::gc`) removes it, and never a live one's.
#[test]
fn sockets_of_killed_services_are_collected() {
    let mut env = TestEnv::new("leaks");
    let mut killed = Vec::new();
    for i in 0..3 {
        let pid = env.start_service(&format!("victim{i}"), &[]);
        sigkill(pid);
        env.wait_exit(pid, Duration::from_secs(20));
        killed.push(pid);
    }
    let live = env.start_service("survivor", &[]);
    let names = env.leftovers();
    for pid in &killed {
        assert!(
            !names.iter().any(|n| n.contains(&format!("-{pid}.sock"))),
            "a dead service's socket is left: {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.contains(&format!("-{live}.sock"))),
        "{names:?}"
    );
    // gc() run by hand keeps the live one too.
    std::env::set_var("METABRIDGE_HOME", &env.home);
    let report = metabridge::gc().unwrap();
    std::env::remove_var("METABRIDGE_HOME");
    assert!(
        report.kept.iter().any(|k| k.contains("survivor")),
        "{report:?}"
    );
    assert!(env
        .leftovers()
        .iter()
        .any(|n| n.contains(&format!("-{live}.sock"))));
}

/// A home on a full filesystem: the service does not start, and says why
/// (the registry's size, its path, the space left), instead of dying of
/// SIGBUS at the first touch of a page that was never there.
#[test]
fn a_full_home_is_a_clear_error_not_a_crash() {
    let env = TestEnv::new("fullhome");
    let home = env.home.join("tiny");
    std::fs::create_dir(&home).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&home)
        .status()
        .expect("mount(8) runs");
    assert!(mounted.success(), "mounting a tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(home.clone());
    let mut cmd = env.command(common::TEST_SERVICE);
    cmd.args(["serve", "svc"])
        .env("METABRIDGE_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "pid {pid}: {text}");
    assert!(text.contains("no space"), "{text}");
    assert!(
        text.contains(&home.join("registry").display().to_string()),
        "{text}"
    );
    assert!(text.contains("bytes left"), "{text}");
}
