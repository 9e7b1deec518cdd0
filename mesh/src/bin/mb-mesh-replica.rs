//! A replica for the mesh tests and benchmarks: `mb-mesh-replica <service>
//! <host-ip> <mesh-setting> <cert.pem> <key.pem> <token> <ledger-file>`
//! serves the `ledger` endpoints in the foreground (this process is the
//! service: killing it kills the replica), exposed on `<host-ip>` with TLS
//! and the token, joined to the mesh. `record(id)` appends `id` to the
//! ledger file (each execution one line: the tests count duplicates) and
//! answers this process's pid; `whoami` (idempotent) answers the pid;
//! `hold(id)` and `hold_idempotent(id)` record and, with `MB_HOLD` set,
//! wait a minute;
//! `echo(bytes)` answers its argument. With `MB_VIA_AGENT` set it joins
//! through the `metabridge-mesh agent` helper (`metabridge::MeshAgent`)
//! instead of in process.

use metabridge_mesh::{MeshConfig, ServiceMesh};
use std::io::Write;
use std::sync::Mutex;

/// The ledger's endpoints.
pub struct Ledger {
    file: Mutex<std::fs::File>,
}

#[metabridge::service(name = "ledger")]
impl Ledger {
    fn new() -> Self {
        let path = std::env::var("MB_LEDGER").expect("MB_LEDGER");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the ledger");
        Ledger {
            file: Mutex::new(file),
        }
    }

    /// Records one execution of call `id`; answers this replica's pid.
    #[metabridge::function]
    pub fn record(&self, id: String) -> u32 {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // One write of one line: the ledger shows every execution.
        let _ = f.write_all(format!("{id}\n").as_bytes());
        std::process::id()
    }

    /// This replica's pid.
    #[metabridge::function(idempotent)]
    pub fn whoami(&self) -> u32 {
        std::process::id()
    }

    /// Records `id`, then, on a replica started with `MB_HOLD` set, waits
    /// 60 s before answering (a call surely in flight); answers the pid.
    #[metabridge::function]
    pub fn hold(&self, id: String) -> u32 {
        self.held(id)
    }

    /// As `hold`, marked idempotent.
    #[metabridge::function(idempotent)]
    pub fn hold_idempotent(&self, id: String) -> u32 {
        self.held(id)
    }

    /// Its argument, back.
    #[metabridge::function]
    pub fn echo(&self, data: metabridge::Bin<Vec<u8>>) -> metabridge::Bin<Vec<u8>> {
        data
    }
}

impl Ledger {
    fn held(&self, id: String) -> u32 {
        let pid = self.record(id);
        if std::env::var_os("MB_HOLD").is_some() {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        pid
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, service, host, mesh, cert, key, token, ledger] = &args[..] else {
        eprintln!("usage: mb-mesh-replica <service> <host-ip> <mesh-setting> <cert> <key> <token> <ledger>");
        std::process::exit(2);
    };
    std::env::set_var("MB_LEDGER", ledger);
    let setting = mesh.clone();
    let mesh = MeshConfig::from_setting(mesh).unwrap_or_else(|e| {
        eprintln!("mb-mesh-replica: {e}");
        std::process::exit(2)
    });
    let token = token.clone();
    let service = Ledger::service()
        .rename(service)
        .host(host)
        .tls(metabridge::TlsFiles {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
        })
        .configure(|c| c.token = Some(token));
    let service = if std::env::var_os("MB_VIA_AGENT").is_some() {
        service.announce(metabridge::MeshAgent::new(&setting))
    } else {
        service.mesh(mesh)
    };
    if let Err(e) = metabridge::serve(service) {
        eprintln!("mb-mesh-replica: {e}");
        std::process::exit(1);
    }
}
