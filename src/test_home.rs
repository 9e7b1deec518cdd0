//! A private directory per unit test, under /dev/shm, mode 0700, removed
//! when the test ends (even when it fails).

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
