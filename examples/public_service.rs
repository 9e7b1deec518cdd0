//! The seed's `public_service.py`: a service exposed on every interface.
//!
//! `METABRIDGE_TOKEN=... cargo run --example public_service` serves until
//! Ctrl+C; without a token it warns that anyone on the network can call it.
//! Call it from another host with the `remote_client` example.

pub struct PublicApi;

impl Default for PublicApi {
    fn default() -> Self {
        PublicApi
    }
}

#[metabridge::service(name = "public-service", host = "0.0.0.0")]
impl PublicApi {
    #[metabridge::function]
    pub fn status(&self) -> String {
        "Serviço público está operacional!".to_string()
    }
}

fn main() -> metabridge::Result<()> {
    let handle = PublicApi::run()?;
    println!(
        "public-service on {} (PID {}); Ctrl+C to stop.",
        handle.tcp_addr(),
        handle.pid()
    );
    handle.join()?;
    Ok(())
}
