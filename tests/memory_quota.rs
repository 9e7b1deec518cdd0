//! A full memory quota (a memory cgroup; memfds ignore tmpfs size limits)
//! is a clear `NoSpace` when a channel segment is reserved, never a
//! SIGBUS on a later touch nor a hang, and the process recovers once
//! memory is free again.
//!
//! The cgroup is created by the test (tests run as root), with its OOM
//! killer off: with it on, the kernel kills a process of the cgroup
//! instead of failing the reservation, which is its policy, not ours.

mod common;

use common::TestEnv;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A memory cgroup of the test's own, removed on drop (after its process
/// is gone).
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let root = PathBuf::from("/sys/fs/cgroup/memory");
        assert!(
            root.join("memory.limit_in_bytes").exists(),
            "no cgroup v1 memory controller at {}: this test needs one",
            root.display()
        );
        let dir = root.join(format!("mb-quota-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("create a memory cgroup (as root)");
        let cg = MemoryCgroup(dir);
        std::fs::write(cg.0.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        std::fs::write(cg.0.join("memory.oom_control"), "1").unwrap();
        cg
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once its processes are gone (they are
        // reaped before this runs); its pages are freed with them.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_full_memory_quota_is_no_space_then_recovers() {
    let mut env = TestEnv::new("quota");
    env.start_service("svc", &[]);
    let cgroup = MemoryCgroup::new(256 << 20);
    // The shell joins the cgroup, then becomes the probe (same pid).
    let mut child = env
        .command("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cgroup.0)
        .arg(common::TEST_SERVICE)
        .args(["quota-probe", "svc"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let pid = child.id();
    env.adopt(child);
    let reader = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let status = env.wait_exit(pid, Duration::from_secs(60));
    if status.is_none() {
        common::sigkill(pid);
    }
    let printed = reader.join().unwrap();
    assert_eq!(
        status,
        Some(0),
        "the probe failed or hung; it printed:\n{printed}"
    );
    let nospace = printed
        .lines()
        .find_map(|l| l.strip_prefix("nospace: "))
        .unwrap_or_else(|| panic!("no NoSpace reported:\n{printed}"));
    println!("{printed}");
    assert!(nospace.contains("channel segment"), "names what: {nospace}");
    assert!(printed.contains("recovered: q:x"), "{printed}");
    drop(env);
    drop(cgroup);
}
