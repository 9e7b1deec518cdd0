//! Fuzz target `registry`: the machine-wide registry file, as a crashed or
//! hostile process of the same user could leave it.
//!
//! The input is the whole content of `$home/registry` (mode 0600, in a 0700
//! home private to this process); a short input is a file the registry
//! grows, as it does a fresh one. Only the public API is used (`open`,
//! `list`, `lookup`, `register`), so the target keeps working whatever the
//! file layout becomes: it is about the bytes, not the layout.
//!
//! Every call must return a value or a typed error: no panic, no hang, no
//! read outside the mapping. `list` must return only live entries, and an
//! entry this process registers must then be found by `lookup`, whatever
//! was in the file before.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metabridge::registry::{Entry, Registry};
use metabridge_fuzz::scratch_dir;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

fn me() -> Entry {
    let id = metabridge_shm::ProcessIdentity::current();
    Entry {
        name: "fuzz-self".into(),
        pid: id.pid,
        start_time: id.start_time,
        registered_at: 1,
        control_socket: "/nonexistent/ctl".into(),
        tcp: "127.0.0.1:1".into(),
        endpoints: vec!["a".into(), "b".into()],
        token_required: false,
        token: None,
        tls_fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
    }
}

fuzz_target!(|data: &[u8]| {
    let home = scratch_dir().join("home");
    // `Registry::open` makes the home (0700) on first use; the file is ours
    // to write before it.
    metabridge::registry::ensure_home(&home).expect("home");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(home.join("registry"))
            .expect("create the registry file");
        f.write_all(data).expect("write the registry file");
    }
    let Ok(reg) = Registry::open(&home) else {
        return;
    };
    for e in reg.list() {
        assert!(e.process().is_alive(), "list returned a dead entry: {e:?}");
        let _ = reg.lookup(&e.name);
    }
    let _ = reg.lookup("x");
    let _ = reg.lookup("");
    let entry = me();
    if reg.register(&entry).is_ok() {
        assert_eq!(
            reg.lookup(&entry.name).ok().as_ref(),
            Some(&entry),
            "a registered entry is not found"
        );
        let _ = reg.unregister(&entry.name, entry.pid);
    }
});
