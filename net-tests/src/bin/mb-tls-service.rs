//! A service for the network-mode tests: `mb-tls-service <name>` serves
//! until SIGTERM, on TCP exposed at 127.0.0.1 (any port), with the TLS and
//! the token the environment gives (`METABRIDGE_TLS_CERT`,
//! `METABRIDGE_TLS_KEY`, `METABRIDGE_TLS_CLIENT_CA`, `METABRIDGE_TOKEN`);
//! `MB_HOST` exposes it on another address; `MB_PEM_CERT` and `MB_PEM_KEY`
//! name PEM files this program reads itself and gives to the service as
//! bytes (`Service::tls_pem`), in place of the TLS variables. A failure to
//! start is printed and exits 1.

use std::time::Duration;

pub struct Echo;

#[metabridge::service(name = "tls-echo")]
impl Echo {
    pub fn new() -> Self {
        Echo
    }

    #[metabridge::function]
    pub fn echo(&self, text: String) -> String {
        text
    }

    #[metabridge::function]
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    #[metabridge::function]
    pub fn sleep_ms(&self, ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
}

impl Default for Echo {
    fn default() -> Self {
        Echo::new()
    }
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "tls-echo".into());
    let host = std::env::var("MB_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let mut service = Echo::service().rename(&name).host(&host);
    if let (Ok(cert), Ok(key)) = (std::env::var("MB_PEM_CERT"), std::env::var("MB_PEM_KEY")) {
        let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        service = service.tls_pem(&read(&cert), &read(&key));
    }
    if let Err(e) = metabridge::serve(service) {
        eprintln!("mb-tls-service: {e}");
        std::process::exit(1);
    }
}
