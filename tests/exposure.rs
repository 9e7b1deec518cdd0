//! What another user of the machine could read or change, and names that
//! could fool a person: the daemon's log file (symbolic links, modes,
//! files of others), the live-counters segment a reader is handed (made
//! writable again through `/proc`), and service names with invisible or
//! direction-changing characters. Real processes, and a real second user
//! (uid 65534) where one is involved; every process and file is removed
//! even when a test fails.

mod common;

use metabridge::{Error, Service};

/// Names that would look identical to another in `metabridge list`
/// (a zero-width space, a right-to-left override that shows "payexe.lnk"
/// reversed, a byte-order mark, a no-break space for a space, an isolate)
/// are refused with a typed error naming the code point. (That `serve`
/// and `run` refuse them too, before starting anything, is
/// `invalid_service_names_are_rejected_with_a_typed_error` in values.rs.)
#[test]
fn service_names_with_invisible_or_bidi_characters_are_refused() {
    for (bad, code) in [
        ("pay\u{202E}knl.exe", "U+202E"),
        ("demo\u{200B}-service", "U+200B"),
        ("\u{FEFF}demo-service", "U+FEFF"),
        ("demo\u{00A0}service", "U+00A0"),
        ("demo\u{2066}service\u{2069}", "U+2066"),
    ] {
        match metabridge::validate_service_name(bad) {
            Err(Error::InvalidServiceName { name, problem }) => {
                assert_eq!(name, bad);
                assert!(problem.contains(code), "{bad:?}: {problem}");
                assert!(problem.contains("invisible"), "{bad:?}: {problem}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // Visible names in any script, and inner ASCII spaces, stay valid.
    for good in ["serviço de teste", "сервис", "サービス", "خدمة"] {
        assert!(Service::<()>::try_new(good).is_ok(), "{good:?}");
    }
}

/// The live counters a reader is handed are read-only, but memfd inodes
/// are mode 0777: opening `/proc/<pid>/fd/N` again for writing gives a
/// writable file description. The service seals the segment against
/// future writes once it has mapped it, so that reopened descriptor can
/// neither write, nor map the segment writable (directly, or read-only and
/// then `mprotect`), nor punch holes in it; the service's own counts stay
/// true. The reopen is done on the service's descriptor (as root, any
/// same-uid reader can do it on the one it received).
#[test]
fn the_counters_cannot_be_rewritten_through_a_reopened_descriptor() {
    use std::os::unix::fs::FileExt;
    let mut env = common::TestEnv::new("statseal");
    let pid = env.start_service("statseal", &[]);
    let client = env.client("statseal", metabridge::TransportKind::Shm, "p");
    for _ in 0..3 {
        assert_eq!(client.call::<String>("echo", ("x",)).unwrap(), "px");
    }
    let entry = metabridge::registry::Registry::open(&env.home)
        .unwrap()
        .lookup("statseal")
        .unwrap();
    let calls = |e: &metabridge::registry::Entry| {
        let snap = metabridge::stats::fetch(e, std::time::Duration::from_secs(10)).unwrap();
        snap.calls()
    };
    assert_eq!(calls(&entry), 3);
    // The service's descriptor of the counters segment.
    let stats_fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_link(p)
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:metabridge-stats"))
        })
        .expect("the service holds its counters segment");
    let reopened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&stats_fd);
    let mut broke_in = Vec::new();
    if let Ok(f) = reopened {
        let len = f.metadata().unwrap().len();
        let mut word = [0u8; 8];
        f.read_exact_at(&mut word, 6 * 8).unwrap(); // header word 6: where the blocks start
        let blocks = u64::from_le_bytes(word);
        assert!(blocks > 0 && blocks < len, "{blocks} of {len}");
        // Every counter word of every block set to 10^12.
        let forged: Vec<u8> = std::iter::repeat(1_000_000_000_000u64.to_le_bytes())
            .take(((len - blocks) / 8) as usize)
            .flatten()
            .collect();
        if f.write_all_at(&forged, blocks).is_ok() {
            broke_in.push(format!("write (then {} calls)", calls(&entry)));
        }
        // SAFETY: a mapping of a memfd sealed against shrinking; it is
        // expected to be refused, and dropped at once if not.
        if unsafe { memmap2::MmapOptions::new().map_mut(&f) }.is_ok() {
            broke_in.push("writable shared mapping".into());
        }
        // SAFETY: as above; read-only, then asked to become writable.
        let ro = unsafe { memmap2::MmapOptions::new().map(&f) }.unwrap();
        if ro.make_mut().is_ok() {
            broke_in.push("mprotect of a read-only mapping".into());
        }
        let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if nix::fcntl::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            punch,
            blocks as i64,
            (len - blocks) as i64,
        )
        .is_ok()
        {
            broke_in.push(format!("hole punched (then {} calls)", calls(&entry)));
        }
    }
    assert_eq!(
        (broke_in, calls(&entry)),
        (Vec::<String>::new(), 3),
        "the counters were rewritten"
    );
    // The service still counts on.
    assert_eq!(client.call::<String>("echo", ("y",)).unwrap(), "py");
    assert_eq!(calls(&entry), 4);
}

/// A directory like /tmp (sticky, writable by all) inside the test's
/// directory, which is opened to traversal (0711) for as long as the test
/// runs (the services' own home is a private directory inside it); and a
/// way to act in it as another user.
struct SharedDir {
    env: common::TestEnv,
    dir: std::path::PathBuf,
    home: std::path::PathBuf,
}

impl SharedDir {
    fn new(tag: &str) -> SharedDir {
        use std::os::unix::fs::PermissionsExt;
        let env = common::TestEnv::new(tag);
        std::fs::set_permissions(&env.home, std::fs::Permissions::from_mode(0o711)).unwrap();
        let dir = env.home.join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let home = env.home.join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        SharedDir { env, dir, home }
    }

    /// Runs `sh -c script` as uid 65534 in the shared directory.
    fn as_other_user(&self, script: &str) {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(&self.dir)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A root-only file (0600) outside the shared directory, with `text`.
    fn private_file(&self, name: &str, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.env.home.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        path
    }

    /// Runs the fixture's logging daemon (`run` with `logger` on and its
    /// log in `log`, then one call and a stop): its exit code and stderr.
    fn run_logged(&self, name: &str, log: &std::path::Path) -> (Option<i32>, String) {
        let out = self
            .env
            .command(common::TEST_SERVICE)
            .args(["logged", name])
            .env("METABRIDGE_HOME", &self.home)
            .env("FIXTURE_LOG_FILE", log)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.env.home, std::fs::Permissions::from_mode(0o700));
    }
}

/// `METABRIDGE_LOG_FILE` (here the fixture's `log_file`) pointing at
/// something another user prepared: a symbolic link of theirs into a
/// root-only file, a file of theirs that they can read, a directory of
/// theirs on the way (with a link in it), a second hard link to a private
/// file, or a file of ours that others can read. Each is refused: the
/// daemon does not start, and the error names the path, the owner and the
/// mode; nothing is written to the file, and nothing falls back to stderr.
#[test]
fn a_log_file_another_user_could_read_or_redirect_is_refused() {
    let shared = SharedDir::new("logrefuse");
    let secret = shared.private_file("secret", "root only\n");
    let private_dir = shared.env.home.join("private");
    std::fs::create_dir(&private_dir).unwrap();
    let app_log = private_dir.join("app.log");
    std::fs::write(&app_log, "").unwrap();
    std::fs::set_permissions(
        &app_log,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    shared.as_other_user(&format!(
        "ln -s {} link.log && touch theirs.log && chmod 666 theirs.log \
         && mkdir theirs && ln -s {} theirs/d",
        secret.display(),
        private_dir.display()
    ));
    let linked = shared.dir.join("hard.log");
    std::fs::hard_link(&secret, &linked).unwrap();
    let ours_open = shared.dir.join("ours-0644.log");
    std::fs::write(&ours_open, "").unwrap();
    std::fs::set_permissions(
        &ours_open,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();

    let cases = [
        (shared.dir.join("link.log"), "symbolic link", "uid 65534"),
        (shared.dir.join("theirs.log"), "uid 65534", "mode 0666"),
        (shared.dir.join("theirs/d/app.log"), "uid 65534", "theirs"),
        (linked.clone(), "2 hard links", "mode 0600"),
        (ours_open.clone(), "mode 0644", "chmod 600"),
    ];
    // Every case is tried before the verdict, so that a failure lists all.
    let mut wrong = Vec::new();
    for (i, (log, why, detail)) in cases.iter().enumerate() {
        let (code, stderr) = shared.run_logged(&format!("logrefuse-{i}"), log);
        if code != Some(1) {
            wrong.push(format!("{}: exit {code:?}, started anyway", log.display()));
            continue;
        }
        for needle in [&log.display().to_string(), *why, *detail] {
            if !stderr.contains(needle) {
                wrong.push(format!("{needle:?} not in: {stderr}"));
            }
        }
        // No log anywhere: not in the file, not on stderr.
        if stderr.contains("echo(") {
            wrong.push(format!("logged to stderr: {stderr}"));
        }
    }
    // Nothing reached the files.
    for (file, was) in [
        (&secret, "root only\n".len()),
        (&app_log, 0),
        (&shared.dir.join("theirs.log"), 0),
        (&ours_open, 0),
    ] {
        let now = std::fs::metadata(file).unwrap().len() as usize;
        if now != was {
            wrong.push(format!("{}: {} bytes of log", file.display(), now - was));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A log file the daemon creates is 0600 (whatever the umask lets
/// through), so another user cannot read the call arguments in it; an
/// existing private file of ours is appended to.
#[test]
fn a_new_log_file_is_private_to_its_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shared = SharedDir::new("lognew");
    let log = shared.dir.join("new.log");
    let (code, stderr) = shared.run_logged("lognew", &log);
    assert_eq!(code, Some(0), "{stderr}");
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("echo(\"hello\")"), "{text}");
    // Appended to the second time.
    let (code, stderr) = shared.run_logged("lognew-2", &log);
    assert_eq!(code, Some(0), "{stderr}");
    let again = std::fs::read_to_string(&log).unwrap();
    assert!(again.starts_with(&text) && again.len() > text.len());
    // And the other user cannot read it.
    use std::os::unix::process::CommandExt;
    let peek = std::process::Command::new("cat")
        .arg(&log)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!peek.status.success(), "another user read the log");
}
