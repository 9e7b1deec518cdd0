//! Support of the unit tests: a private directory per test, under
//! /dev/shm, mode 0700, removed when the test ends (even when it fails),
//! and running one test alone in a child process with its own
//! environment (so no other test sees the variables it sets).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `/dev/shm/mbu-<module>-<tag>-<pid>-<n>`, removed on drop.
pub(crate) struct TestHome(pub(crate) PathBuf);

impl TestHome {
    pub(crate) fn new(module: &str, tag: &str) -> TestHome {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!(
            "/dev/shm/mbu-{module}-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .unwrap();
        TestHome(dir)
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs test `name` of this binary alone in a child process (one thread:
/// `--test-threads 1` runs it on the main thread) with `envs`, without the
/// variables `cleared` unless given, and `MB_UNIT_CHILD=1` telling it that
/// it is the child; panics with the child's output if it failed.
pub(crate) fn in_child(name: &str, cleared: &[&str], envs: &[(&str, &str)]) {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--test-threads", "1", "--nocapture"])
        .env("MB_UNIT_CHILD", "1");
    for var in cleared {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The child ran the test (and did not filter it out).
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// True in the child of [`in_child`].
pub(crate) fn is_child() -> bool {
    std::env::var_os("MB_UNIT_CHILD").is_some()
}
