//! Three (or more) "hosts": network namespaces on one bridge, each with
//! its own `METABRIDGE_HOME`, and the processes the tests run in them;
//! a CA for the replicas' certificates. Everything is removed on drop,
//! also when the test fails.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub const TOKEN: &str = "mesh-test-token";
const REPLICA: &str = env!("CARGO_BIN_EXE_mb-mesh-replica");
const CALLER: &str = env!("CARGO_BIN_EXE_mb-mesh-caller");
const LIST_TOOL: &str = env!("CARGO_BIN_EXE_metabridge-mesh");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One host: a namespace, its address, its home.
pub struct Host {
    pub ns: String,
    pub ip: String,
    pub home: PathBuf,
}

/// Hosts on one bridge.
pub struct Lan {
    pub hosts: Vec<Host>,
    bridge: String,
    children: Vec<Child>,
    /// Daemons the children forked (killed too at the end).
    daemons: Vec<u32>,
    dir: PathBuf,
    pub ca_pem: PathBuf,
    ca: (rcgen::Certificate, rcgen::KeyPair),
}

impl Lan {
    pub fn new(n: usize) -> Lan {
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{:x}{k}", pid % 0xfffff);
        let dir = std::env::temp_dir().join(format!("mb-mesh-lan-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bridge = format!("mbb{id}");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh test CA");
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        let mut lan = Lan {
            hosts: Vec::new(),
            bridge: bridge.clone(),
            children: Vec::new(),
            daemons: Vec::new(),
            dir: dir.clone(),
            ca_pem,
            ca: (cert, key),
        };
        // Registered in `lan` before each step: a failure still cleans up.
        ip(&["link", "add", "name", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let net = format!("10.{}.{}", 150 + pid % 100, k % 250);
        for i in 0..n {
            let ns = format!("mbm-{id}-{i}");
            let (outer, inner) = (format!("mbm{id}h{i}"), format!("mbm{id}p{i}"));
            let home = dir.join(format!("home{i}"));
            std::fs::create_dir_all(&home).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
            let host_ip = format!("{net}.{}", i + 2);
            ip(&["netns", "add", &ns]);
            lan.hosts.push(Host {
                ns: ns.clone(),
                ip: host_ip.clone(),
                home,
            });
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "master", &bridge]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    /// The mesh setting of a replica on host `i`: it listens on its own
    /// address (port 7447), and the replicas' hosts are the seeds.
    pub fn mesh(&self, i: usize, seeds: &[usize], lease_ms: u64) -> String {
        self.mesh_on(i, 7447, seeds, lease_ms)
    }

    /// The mesh setting of a caller on host `i` (port 7448).
    pub fn client_mesh(&self, i: usize, seeds: &[usize], lease_ms: u64) -> String {
        self.mesh_on(i, 7448, seeds, lease_ms)
    }

    /// The mesh setting of a member on host `i` listening on `port`.
    pub fn mesh_on(&self, i: usize, port: u16, seeds: &[usize], lease_ms: u64) -> String {
        let mut items = vec![format!("listen=tcp/{}:{port}", self.hosts[i].ip)];
        items.extend(
            seeds
                .iter()
                .filter(|&&s| s != i || port != 7447)
                .map(|&s| format!("tcp/{}:7447", self.hosts[s].ip)),
        );
        items.push(format!("lease={lease_ms}"));
        items.join(",")
    }

    /// A certificate of this CA (or of a CA of its own when `forged`) for
    /// host `i`'s address: (cert, key) files.
    pub fn certificate(&self, i: usize, tag: &str, forged: bool) -> (PathBuf, PathBuf) {
        let host = &self.hosts[i];
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![host.ip.clone()]).unwrap();
        let cert = if forged {
            params.self_signed(&key).unwrap()
        } else {
            params.signed_by(&key, &self.ca.0, &self.ca.1).unwrap()
        };
        let (c, k) = (
            self.dir.join(format!("{tag}.pem")),
            self.dir.join(format!("{tag}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }

    /// Starts a replica of `service` on host `i`; returns its pid and its
    /// ledger file once it is registered on its host. `forged`: its
    /// certificate is not of the clients' CA.
    pub fn replica(
        &mut self,
        i: usize,
        service: &str,
        mesh: &str,
        tag: &str,
        forged: bool,
    ) -> (u32, PathBuf) {
        self.replica_with(i, service, mesh, tag, forged, &[])
    }

    /// As [`replica`](Self::replica), with environment variables.
    pub fn replica_with(
        &mut self,
        i: usize,
        service: &str,
        mesh: &str,
        tag: &str,
        forged: bool,
        envs: &[(&str, &str)],
    ) -> (u32, PathBuf) {
        let (cert, key) = self.certificate(i, tag, forged);
        let ledger = self.dir.join(format!("{tag}.ledger"));
        let host = &self.hosts[i];
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, REPLICA, service, &host.ip, mesh])
            .arg(&cert)
            .arg(&key)
            .arg(TOKEN)
            .arg(&ledger)
            .env("METABRIDGE_HOME", &host.home)
            .env_remove("METABRIDGE_TOKEN")
            .env_remove("METABRIDGE_MESH")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("start a replica");
        // `ip netns exec` execs the program: the pid is the replica's.
        let pid = child.id();
        self.children.push(child);
        let registry = metabridge::registry::Registry::open(&host.home).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if registry.lookup(service).is_ok_and(|e| e.pid == pid) {
                return (pid, ledger);
            }
            if let Ok(Some(status)) = self.children.last_mut().unwrap().try_wait() {
                panic!("the replica on host {i} exited during startup: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the replica on host {i} did not register"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a caller on host `i` (see `mb-mesh-caller`), once it sees
    /// `replicas` replicas.
    pub fn caller(
        &mut self,
        i: usize,
        service: &str,
        mesh: &str,
        threads: usize,
        replicas: usize,
        envs: &[(&str, &str)],
    ) -> Caller {
        let threads = threads.to_string();
        self.caller_mode(i, service, mesh, "call", &threads, replicas, envs)
    }

    /// A caller in another mode (`once:<endpoint>`, its id `prefix`).
    #[allow(clippy::too_many_arguments)]
    pub fn caller_mode(
        &mut self,
        i: usize,
        service: &str,
        mesh: &str,
        prefix: &str,
        mode: &str,
        replicas: usize,
        envs: &[(&str, &str)],
    ) -> Caller {
        let host = &self.hosts[i];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &host.ns, CALLER, service, mesh])
            .arg(&self.ca_pem)
            .args([TOKEN, prefix, mode])
            .env("METABRIDGE_HOME", &host.home)
            .env("MB_WAIT_REPLICAS", replicas.to_string())
            .env_remove("METABRIDGE_TRANSPORT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the caller");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = child.id();
        self.children.push(child);
        let first = lines
            .recv_timeout(Duration::from_secs(40))
            .expect("the caller saw its replicas");
        assert_eq!(first, "ready");
        Caller {
            pid,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts the Python ledger service (`tests/python/ledger_service.py`,
    /// `create(..., mesh=...)`) on host `i`; returns its daemon's pid and
    /// its ledger once it is registered on its host. It serves until the
    /// test ends (its standard input closes).
    pub fn python_replica(
        &mut self,
        i: usize,
        service: &str,
        mesh: &str,
        tag: &str,
    ) -> (u32, PathBuf) {
        let (cert, key) = self.certificate(i, tag, false);
        let ledger = self.dir.join(format!("{tag}.ledger"));
        let host = &self.hosts[i];
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/ledger_service.py"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &host.ns, "python3", script])
            .env("METABRIDGE_HOME", &host.home)
            .env("METABRIDGE_TOKEN", TOKEN)
            .env("METABRIDGE_MESH_TOOL", LIST_TOOL)
            .env_remove("METABRIDGE_MESH")
            .env("MB_SERVICE", service)
            .env("MB_HOST", &host.ip)
            .env("MB_MESH", mesh)
            .env("MB_CERT", &cert)
            .env("MB_KEY", &key)
            .env("MB_LEDGER", &ledger)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3 (the tests' virtualenv first on PATH)");
        let stdout = child.stdout.take().unwrap();
        self.children.push(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the Python service did not start: {line:?}"));
        self.daemons.push(pid);
        let registry = metabridge::registry::Registry::open(&host.home).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !registry.lookup(service).is_ok_and(|e| e.pid == pid) {
            assert!(
                Instant::now() < deadline,
                "the Python service did not register"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (pid, ledger)
    }

    /// Runs `program args` on host `i` with `envs` (and the test token);
    /// its output.
    pub fn run_on(
        &self,
        i: usize,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, program])
            .args(args)
            .env("METABRIDGE_HOME", &self.hosts[i].home)
            .env("METABRIDGE_TOKEN", TOKEN)
            .env("METABRIDGE_MESH_TOOL", LIST_TOOL)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// `metabridge-mesh list --json` run on host `i` with host `seed` as
    /// its seed: every replica of the mesh.
    pub fn list(&self, i: usize, seed: usize) -> Vec<serde_json::Value> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[i].ns,
                LIST_TOOL,
                "list",
                "--json",
            ])
            .arg(format!(
                "listen=tcp/{}:7449,tcp/{}:7447",
                self.hosts[i].ip, self.hosts[seed].ip
            ))
            .output()
            .expect("run metabridge-mesh list");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the list's JSON")
    }

    /// Lists the mesh (see [`list`](Self::list)) until the pids of the
    /// replicas listed satisfy `done`, or panics after `within`.
    pub fn until_listed(
        &self,
        i: usize,
        seed: usize,
        within: Duration,
        mut done: impl FnMut(&[u32]) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let pids: Vec<u32> = self
                .list(i, seed)
                .iter()
                .filter_map(|r| r["instance"].as_str()?.split('-').next()?.parse().ok())
                .collect();
            if done(&pids) {
                return;
            }
            assert!(Instant::now() < deadline, "the mesh lists {pids:?}");
        }
    }

    /// Waits for process `pid` (started here) to exit.
    pub fn wait(&mut self, pid: u32) {
        if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
            let _ = c.wait();
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for pid in &self.daemons {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One call's outcome, as the caller printed it.
#[derive(Clone, Debug)]
pub enum Outcome {
    Ok {
        id: String,
        pid: u32,
    },
    Err {
        id: String,
        kind: String,
        message: String,
    },
}

/// A running caller and what it printed so far.
pub struct Caller {
    pub pid: u32,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<Outcome>,
}

impl Caller {
    /// Reads outcomes until `done(outcomes so far)` holds, or panics after `within`.
    pub fn until(&mut self, within: Duration, mut done: impl FnMut(&[Outcome]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting; outcomes so far: {}",
                summary(&self.seen)
            );
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => self.seen.push(parse(&line)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the caller ended; outcomes: {}", summary(&self.seen))
                }
            }
        }
    }

    /// Writes a line to the caller's stdin (`once` mode: the call starts).
    pub fn go(&mut self) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(b"go\n").unwrap();
        s.flush().unwrap();
    }

    /// Stops the caller and reads the rest of what it printed.
    pub fn finish(&mut self, lan: &mut Lan) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        lan.wait(self.pid);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(parse(&line));
        }
    }
}

fn parse(line: &str) -> Outcome {
    let mut parts = line.splitn(4, ' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ok"), Some(id), Some(pid), None) => Outcome::Ok {
            id: id.into(),
            pid: pid.parse().unwrap(),
        },
        (Some("err"), Some(id), Some(kind), message) => Outcome::Err {
            id: id.into(),
            kind: kind.into(),
            message: message.unwrap_or("").into(),
        },
        _ => panic!("a caller line that is not an outcome: {line:?}"),
    }
}

/// Calls answered by each pid.
pub fn by_pid(outcomes: &[Outcome]) -> HashMap<u32, usize> {
    let mut m = HashMap::new();
    for o in outcomes {
        if let Outcome::Ok { pid, .. } = o {
            *m.entry(*pid).or_default() += 1;
        }
    }
    m
}

pub fn summary(outcomes: &[Outcome]) -> String {
    let errors: Vec<String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Err { kind, message, .. } => Some(format!("{kind}: {message}")),
            _ => None,
        })
        .take(5)
        .collect();
    format!(
        "{} calls, by pid {:?}, errors {errors:?}",
        outcomes.len(),
        by_pid(outcomes)
    )
}

/// Every execution in the ledgers, counted by id.
pub fn executions(ledgers: &[&PathBuf]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in ledgers {
        for id in std::fs::read_to_string(l).unwrap_or_default().lines() {
            *m.entry(id.to_string()).or_default() += 1;
        }
    }
    m
}
