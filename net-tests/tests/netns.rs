//! A second host for real: the service runs in a network namespace of its
//! own, joined to the test's by a veth pair, each side with its own
//! `METABRIDGE_HOME`; the client is given the address, so every call
//! crosses the veth and another network stack (never shared memory or
//! loopback). A TLS call, a refused certificate, a service killed
//! mid-call, a link cut and restored.
//!
//! Needs root (CI runs as root); a namespace that cannot be made fails
//! the test, never skips it. Each test removes its namespace (and with it
//! the veth pair) even when it fails.

mod support;

use metabridge::tls::{ClientTls, TlsError};
use metabridge::Error;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use support::{TestCa, TestEnv, TLS_SERVICE};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth pair to the test's namespace:
/// `host_ip` on our side, `peer_ip` inside.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
    peer_ip: String,
    service: Option<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{:x}{n}", pid % 0xfffff);
        let name = format!("mbn-{id}");
        let (host_if, peer_if) = (format!("mbh{id}"), format!("mbp{id}"));
        // A /30 of its own: 10.<pid>.<n>.0.
        let net = format!("10.{}.{}", 100 + pid % 150, n % 250);
        let ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: format!("{net}.1"),
            peer_ip: format!("{net}.2"),
            service: None,
        };
        // Registered for removal first: a failure below still cleans up.
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &host_if,
        ]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.peer_ip),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Starts the TLS service inside, on its veth address, with its own
    /// home; returns its pid and address once it is registered there.
    fn start_service(&mut self, home: &Path, cert: &Path, key: &Path) -> (u32, String) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, TLS_SERVICE, "svc"])
            .env("METABRIDGE_HOME", home)
            .env("METABRIDGE_TOKEN", "net-test-token")
            .env("METABRIDGE_TLS_CERT", cert)
            .env("METABRIDGE_TLS_KEY", key)
            .env("MB_HOST", &self.peer_ip)
            .env_remove("METABRIDGE_TLS_CA")
            .env_remove("METABRIDGE_TLS_PIN")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the service in its namespace");
        // `ip netns exec` runs the program in its own process: the pid is
        // the service's.
        let pid = child.id();
        self.service = Some(child);
        let registry = metabridge::registry::Registry::open(home).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(entry) = registry.lookup("svc") {
                if entry.pid == pid {
                    return (pid, entry.tcp);
                }
            }
            if let Some(status) = self.service.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the service in {} exited during startup: {status}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "the service in {} did not register",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Bytes our end of the veth has sent.
    fn sent_bytes(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", self.host_if);
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut child) = self.service.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// A service's home (the service's side) and the client's, the CA and the
/// service's certificate files.
struct TwoHosts {
    client: TestEnv,
    service_home: TestEnv,
    ca: TestCa,
    ns: Netns,
    pid: u32,
    addr: String,
}

fn two_hosts(tag: &str) -> TwoHosts {
    let client = TestEnv::new(&format!("{tag}-client"));
    let service_home = TestEnv::new(&format!("{tag}-service"));
    let mut ns = Netns::new();
    let ca = TestCa::new("netns CA");
    let issued = ca.issue(&[&ns.peer_ip], false);
    let cert = service_home.file("cert.pem", &issued.cert, 0o644);
    let key = service_home.file("key.pem", &issued.key, 0o600);
    let (pid, addr) = ns.start_service(&service_home.home, &cert, &key);
    assert!(
        addr.starts_with(&ns.peer_ip),
        "bound to its veth address: {addr}"
    );
    TwoHosts {
        client,
        service_home,
        ca,
        ns,
        pid,
        addr,
    }
}

impl TwoHosts {
    fn connect(&self, timeout: Duration) -> metabridge::Result<metabridge::Client> {
        metabridge::connect("svc")
            .home(&self.client.home)
            .at(&self.addr)
            .token("net-test-token")
            .timeout(timeout)
            .tls(ClientTls::ca_pem(self.ca.pem().as_bytes()).unwrap())
            .open()
    }
}

#[test]
fn a_tls_call_crosses_the_veth_to_another_network_stack() {
    let hosts = two_hosts("ns-call");
    let before = hosts.ns.sent_bytes();
    let client = hosts.connect(Duration::from_secs(10)).unwrap();
    assert_eq!(client.transport_name(), "tcp");
    let text = "y".repeat(64 << 10);
    assert_eq!(client.call::<String>("echo", (&text,)).unwrap(), text);
    assert_eq!(client.call::<u32>("pid", ()).unwrap(), hosts.pid);
    assert!(
        hosts.ns.sent_bytes() >= before + (64 << 10),
        "the call went over the veth"
    );
    // The client's home knows nothing of the service: it was reached by
    // its address alone.
    assert!(metabridge::registry::Registry::open(&hosts.client.home)
        .unwrap()
        .lookup("svc")
        .is_err());
    let _ = &hosts.service_home;
}

#[test]
fn a_certificate_of_another_ca_is_refused_across_the_veth() {
    let hosts = two_hosts("ns-refused");
    let stranger = TestCa::new("not the netns CA");
    let r = metabridge::connect("svc")
        .home(&hosts.client.home)
        .at(&hosts.addr)
        .token("net-test-token")
        .timeout(Duration::from_secs(10))
        .tls(ClientTls::ca_pem(stranger.pem().as_bytes()).unwrap())
        .open();
    match r {
        Err(Error::Tls(TlsError::UnknownIssuer)) => {}
        other => panic!("expected an unknown issuer, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_service_killed_mid_call_is_peer_gone() {
    let hosts = two_hosts("ns-killed");
    let client = hosts.connect(Duration::from_secs(30)).unwrap();
    assert_eq!(client.call::<u64>("sleep_ms", (1u64,)).unwrap(), 1);
    let pid = hosts.pid;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let started = Instant::now();
    match client.call::<u64>("sleep_ms", (20_000u64,)) {
        Err(Error::PeerGone(_)) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not the sleep's end"
    );
    killer.join().unwrap();
}

#[test]
fn a_cut_link_times_out_within_the_deadline_and_calls_recover_when_it_returns() {
    let hosts = two_hosts("ns-cut");
    let client = hosts.connect(Duration::from_millis(1500)).unwrap();
    assert_eq!(client.call::<String>("echo", ("up",)).unwrap(), "up");
    ip(&["link", "set", &hosts.ns.host_if, "down"]);
    let started = Instant::now();
    match client.call::<String>("echo", ("cut",)) {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a timeout on a cut link, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the call's deadline"
    );
    ip(&["link", "set", &hosts.ns.host_if, "up"]);
    // Back: the next calls get through (a new connection; the timed-out
    // one was never reused).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.call::<String>("echo", ("back",)) {
            Ok(s) => {
                assert_eq!(s, "back");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("calls did not recover once the link came back: {e}"),
        }
    }
}
