//! The seed's `client.py`, in Rust: starts the demo service in a daemon,
//! calls it through the typed client over shared memory, and closes.
//!
//! `cargo run --example client` prints exactly the seed's expected output.

#[path = "service_daemon.rs"]
#[allow(dead_code)]
mod service_daemon;

use service_daemon::ServiceClient;

fn main() -> metabridge::Result<()> {
    // 1. Start the service (the seed does it by importing the module).
    let daemon = service_daemon::start()?;

    println!("Conectando ao serviço 'demo-service'...");

    // 2. The client is closed when it goes out of scope.
    {
        let client = ServiceClient::connect("Olá,")?;
        // 3. Call remote methods as if they were local.
        println!("Resposta do endpoint 'teste()': {}", client.teste()?);
        println!(
            "Resposta do endpoint 'get('mundo!')': {}",
            client.get("mundo!")?
        );
        println!(
            "Resposta do endpoint 'soma(10, 20)': {}",
            client.soma(10, 20)?
        );
        client.close();
    }

    println!("Cliente finalizado. A conexão foi fechada.");
    // Stop the daemon: it drains, unregisters and removes its segments.
    daemon.stop()?;
    Ok(())
}
