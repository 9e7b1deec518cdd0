//! The seed's `service_daemon.py`, in Rust: a service with a constructor,
//! an endpoint under another name, a plain one and an async one.
//!
//! Run it alone with `cargo run --example service_daemon`: it serves in a
//! background daemon until Ctrl+C.

use std::time::Duration;

/// Our service: groups related endpoints. The constructor takes the
/// arguments a client gives when it connects.
pub struct Service {
    argumento: String,
}

#[metabridge::service(name = "demo-service")]
impl Service {
    pub fn new(argumento: String) -> Self {
        Service { argumento }
    }

    /// Exposed as `teste` (and under its own name, `home`).
    #[metabridge::endpoint("teste")]
    pub fn home(&self) -> String {
        "Mensagem da home do serviço!".to_string()
    }

    /// Exposed under its own name.
    #[metabridge::function]
    pub fn get(&self, outro_argumento: String) -> String {
        format!("{} {}", self.argumento, outro_argumento)
    }

    /// Async endpoints run on the service's tokio runtime.
    #[metabridge::function]
    pub async fn soma(&self, a: i64, b: i64) -> String {
        tokio::time::sleep(Duration::from_millis(10)).await;
        format!("A soma é: {}", a + b)
    }
}

/// Starts the service in the background, as the seed does on import.
pub fn start() -> metabridge::Result<metabridge::DaemonHandle> {
    Service::run()
}

#[allow(dead_code)]
fn main() -> metabridge::Result<()> {
    let handle = start()?;
    println!(
        "Serviço 'demo-service' executando em background (PID {}). Pressione Ctrl+C para finalizar.",
        handle.pid()
    );
    // Ctrl+C reaches the daemon too (same process group): it stops
    // gracefully, and join returns.
    handle.join()?;
    println!("Serviço finalizado com sucesso.");
    Ok(())
}
