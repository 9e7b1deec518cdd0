//! What the network tests share: a test's own home (its registry, its
//! certificate files) whose services are killed and reaped and whose files
//! are removed when it drops, even when the test fails; and certificates
//! made with rcgen.

#![allow(dead_code)]

use metabridge::registry::Registry;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const TLS_SERVICE: &str = env!("CARGO_BIN_EXE_mb-tls-service");

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct TestEnv {
    pub home: PathBuf,
    children: Vec<Child>,
}

impl TestEnv {
    pub fn new(tag: &str) -> TestEnv {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let home = PathBuf::from(format!("/dev/shm/mbn-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&home)
            .unwrap();
        TestEnv {
            home,
            children: Vec::new(),
        }
    }

    /// A file of this test's home with `contents` and `mode`.
    pub fn file(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.home.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Writes `issued` as `<stem>-cert.pem` (0644) and `<stem>-key.pem`
    /// (0600) in the home; returns their paths.
    pub fn identity(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        (
            self.file(&format!("{stem}-cert.pem"), &issued.cert, 0o644),
            self.file(&format!("{stem}-key.pem"), &issued.key, 0o600),
        )
    }

    /// Starts `mb-tls-service name` with `envs` (and no TLS, token or
    /// transport inherited); returns its pid once it is registered.
    pub fn start_service(&mut self, name: &str, envs: &[(&str, &Path)]) -> u32 {
        let child = self.spawn_service(name, envs);
        let pid = child.id();
        self.children.push(child);
        self.wait_registered(name, pid);
        pid
    }

    /// Starts it and waits for it to exit (a start that must fail): its
    /// exit status and standard error.
    pub fn failed_start(&mut self, name: &str, envs: &[(&str, &Path)]) -> (i32, String) {
        let mut child = self.spawn_service(name, envs);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code().unwrap_or(-1), err);
            }
            if Instant::now() > deadline {
                self.children.push(child);
                panic!("the service with a bad TLS set-up did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn_service(&self, name: &str, envs: &[(&str, &Path)]) -> Child {
        let mut cmd = Command::new(TLS_SERVICE);
        cmd.arg(name)
            .env("METABRIDGE_HOME", &self.home)
            .env("METABRIDGE_TOKEN", "net-test-token")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in [
            "METABRIDGE_TRANSPORT",
            "METABRIDGE_TLS_CERT",
            "METABRIDGE_TLS_KEY",
            "METABRIDGE_TLS_CLIENT_CA",
            "METABRIDGE_TLS_CA",
            "METABRIDGE_TLS_PIN",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn().expect("spawn mb-tls-service")
    }

    fn wait_registered(&mut self, name: &str, pid: u32) {
        let reg = Registry::open(&self.home).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(e) = reg.lookup(name) {
                if e.pid == pid {
                    return;
                }
            }
            if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
                if let Ok(Some(status)) = c.try_wait() {
                    let mut err = String::new();
                    use std::io::Read;
                    if let Some(mut e) = c.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!("service {name} exited during startup: {status}: {err}");
                }
            }
            assert!(Instant::now() < deadline, "service {name} did not register");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Its TCP address, from the registry.
    pub fn tcp_addr(&self, name: &str) -> String {
        Registry::open(&self.home)
            .unwrap()
            .lookup(name)
            .unwrap()
            .tcp
    }

    /// A client of `addr` (given by address: nothing taken from the
    /// registry), with the service's token and a short timeout.
    pub fn at(&self, name: &str, addr: &str) -> metabridge::Connect {
        metabridge::connect(name)
            .home(&self.home)
            .at(addr)
            .token("net-test-token")
            .timeout(Duration::from_secs(5))
    }

    pub fn signal(&self, pid: u32, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
    /// What a client pins (`sha256:...`).
    pub fingerprint: String,
}

/// A CA that signs the tests' certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses), valid now
    /// unless `expired`.
    pub fn issue(&self, names: &[&str], expired: bool) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            fingerprint: metabridge::tls::fingerprint(cert.der()),
        }
    }
}
